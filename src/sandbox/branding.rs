//! Branding: versioned reads and writes with 409 on a stale version, enable and disable,
//! the logo.

use super::*;

pub(super) const BRAND_WRITABLE: &[&str] = &[
    "company_name",
    "service_name",
    "color",
    "color_scheme",
    "upsell_url",
    "home_url",
    "support_url",
    "support_phone",
    "knowledgebase_url",
    "help_url",
    "user_guide_url",
    "mobile_app_android_download_url",
    "mobile_app_ios_download_url",
    "terms_url",
    "platform_terms_url",
    "privacy_policy_url",
    "owns_custom_legal_docs",
    "account_server_url",
    "backup_console_url",
    "router_url",
    "reg_server_url",
    "agent_gateway_url",
    "white_labeled_agent",
    "smtp_override",
    "smtp_server",
    "smtp_port",
    "smtp_user",
    "smtp_password",
    "smtp_reply_address",
    "smtp_encryption",
    "hide_predefined",
];

pub(super) fn default_brand() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(Uuid::new_v4()));
    for f in BRAND_WRITABLE {
        m.insert((*f).into(), Value::Null);
    }
    m.insert("color_scheme".into(), json!("default"));
    m.insert(
        "backup_console_url".into(),
        json!("https://backup.example.invalid"),
    );
    m.insert("white_labeled_agent".into(), json!(false));
    m.insert("owns_custom_legal_docs".into(), json!(false));
    m.insert("smtp_override".into(), json!(0));
    m.insert("hide_predefined".into(), json!(0));
    m.insert("smtp_password".into(), json!(""));
    m.insert("logotype".into(), Value::Null);
    m
}

/// The `version` query parameter of a brand write, checked against the tenant.
/// The tenant of a versioned brand write: known, `version` matching, and (when asked) with
/// custom branding enabled.
pub(super) fn brand_target(
    s: &SbState,
    id: &str,
    q: &HashMap<String, String>,
    must_be_enabled: bool,
) -> Result<usize, Response> {
    let idx = tenant_index(s, id)?;
    check_version(s, idx, q)?;
    if must_be_enabled && !s.tenants[idx].brand_enabled {
        return Err(bad_request(
            "custom branding is not enabled for this tenant",
        ));
    }
    Ok(idx)
}

pub(super) fn check_version(
    s: &SbState,
    idx: usize,
    q: &HashMap<String, String>,
) -> Result<(), Response> {
    let v = q
        .get("version")
        .ok_or_else(|| bad_request("version query parameter is required"))?
        .parse::<i64>()
        .map_err(|_| bad_request("version must be an integer"))?;
    if v != s.tenants[idx].version {
        return Err(envelope(
            StatusCode::CONFLICT,
            json!(1009),
            "the object was changed by someone else (stale version)",
        ));
    }
    Ok(())
}

pub(super) async fn get_brand(
    _auth: Authorized,
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Response {
    let s = state.lock().expect("sandbox lock");
    let idx = match tenant_index(&s, &id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let t = &s.tenants[idx];
    match s.brands.get(&t.id) {
        Some(b) if t.brand_enabled => Json(b.clone()).into_response(),
        _ => envelope(
            StatusCode::NOT_FOUND,
            json!(1003),
            "custom branding is not enabled for this tenant",
        ),
    }
}

pub(super) async fn enable_brand(
    _auth: Authorized,
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().expect("sandbox lock");
    let idx = match brand_target(&s, &id, &q, false) {
        Ok(i) => i,
        Err(r) => return r,
    };
    if matches!(s.tenants[idx].kind.as_str(), "customer" | "unit") {
        return bad_request("custom branding cannot be enabled for customer or unit tenants");
    }
    if s.tenants[idx].brand_enabled {
        return envelope(
            StatusCode::CONFLICT,
            json!(1009),
            "the same object already exists",
        );
    }
    let tid = s.tenants[idx].id;
    s.tenants[idx].brand_enabled = true;
    s.brands.entry(tid).or_insert_with(default_brand);
    s.bump(idx);
    (StatusCode::CREATED, Json(s.tenant_json(idx))).into_response()
}

pub(super) async fn put_brand(
    _auth: Authorized,
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = require_json(&headers) {
        return r;
    }
    let mut s = state.lock().expect("sandbox lock");
    let idx = match brand_target(&s, &id, &q, true) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let changes: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return bad_request(&format!("body must be a JSON object: {e}")),
    };
    for (k, v) in &changes {
        if !BRAND_WRITABLE.contains(&k.as_str()) {
            return bad_request(&format!("unknown or read-only brand property: {k}"));
        }
        let bad_color = match v {
            Value::Null => false,
            Value::String(c) => c.len() != 6 || !c.chars().all(|c| c.is_ascii_hexdigit()),
            _ => true,
        };
        if k == "color" && bad_color {
            return bad_request("color must be 6 hex digits without '#'");
        }
    }
    if changes.contains_key("smtp_password") {
        s.smtp_password_writes += 1;
    }
    let tid = s.tenants[idx].id;
    let brand = s.brands.entry(tid).or_insert_with(default_brand);
    for (k, v) in changes {
        if k == "smtp_password" {
            continue; // write-only: reads always return ""
        }
        brand.insert(k, v);
    }
    let out = brand.clone();
    s.bump(idx);
    Json(out).into_response()
}

pub(super) async fn delete_brand(
    _auth: Authorized,
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().expect("sandbox lock");
    let idx = match brand_target(&s, &id, &q, true) {
        Ok(i) => i,
        Err(r) => return r,
    };
    s.tenants[idx].brand_enabled = false;
    s.bump(idx);
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn get_logo(
    _auth: Authorized,
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Response {
    let s = state.lock().expect("sandbox lock");
    let idx = match tenant_index(&s, &id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    match s.logos.get(&s.tenants[idx].id) {
        Some(bytes) => (
            [
                ("content-type", "image/png"),
                ("cache-control", "max-age=3600"),
            ],
            bytes.clone(),
        )
            .into_response(),
        None => bad_request("no logo uploaded"),
    }
}

pub(super) async fn post_logo(
    _auth: Authorized,
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = content_type(&headers);
    if ct != "image/png" {
        return bad_request("Content-Type must be image/png");
    }
    if headers.get("content-length").is_none() {
        return bad_request("Content-Length is required");
    }
    if !body.starts_with(b"\x89PNG\r\n\x1a\n") {
        return bad_request("body is not a PNG image");
    }
    let mut s = state.lock().expect("sandbox lock");
    let idx = match brand_target(&s, &id, &q, true) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let tid = s.tenants[idx].id;
    s.logos.insert(tid, body.to_vec());
    let logo_id = Uuid::new_v4();
    s.brands
        .entry(tid)
        .or_insert_with(default_brand)
        .insert("logotype".into(), json!(logo_id));
    s.bump(idx);
    (StatusCode::CREATED, Json(s.tenant_json(idx))).into_response()
}
