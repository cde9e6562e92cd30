//! The Fusion endpoints statusd uses (seed 001): login with a second factor for a caller the
//! platform does not trust (the code is printed at start), access tokens that expire and are
//! renewed with the refresh token, subscriptions with paging, branding parts whose secret-named
//! properties read back masked, and a 400 for any write that carries the mask.

use std::collections::BTreeMap;

use super::*;
use crate::config::FUSION_MASK;

/// The DRaaS instance the sandbox serves.
pub const FUSION_INSTANCE: &str = "draas_v1";

pub(super) struct FusionSb {
    pub(super) username: String,
    pub(super) password: String,
    pub(super) trusted: bool,
    pub(super) code: String,
    pub(super) access_ttl: Duration,
    pub(super) access: HashMap<String, i64>,
    pub(super) refresh: std::collections::HashSet<String>,
    pub(super) payloads: std::collections::HashSet<String>,
    /// Each tenant's subscriptions, by id.
    pub(super) tenants: BTreeMap<Uuid, Vec<i64>>,
    pub(super) config: HashMap<(Uuid, i64, String), Map<String, Value>>,
    pub(super) logins: u64,
    pub(super) writes: u64,
}

/// The parts as the platform starts them (the seed's examples, and a secret under `general`).
pub(super) fn default_part(part: &str) -> Map<String, Value> {
    let v = match part {
        "general" => json!({"companyName": "Fusion", "supportEmail": "support@example.net",
            "smtp": {"host": "smtp.example.net", "port": 587, "password": "smtp-secret"}, "apiToken": "tok-123"}),
        "pages" => json!({"subscription": {"subscriptionNumbers": {"tabs": {
            "myNumbers": {"enabled": true}, "porting": {"enabled": true},
            "releasedNumbers": {"enabled": true}, "reservedNumbers": {"enabled": true}}}}}),
        "styling.font" => {
            json!({"allowed": ["Avenir Next Cyr", "Roboto", "Ubuntu", "Montserrat"], "name": "Avenir Next Cyr"})
        }
        "styling.image" => json!({"favicon": "/branding/default/favicon/favicon.ico",
            "login": {"bg": "/branding/default/img/Loginbackground.png", "logo": "/branding/default/img/LoginLogo.svg"},
            "main": {"bg": "/branding/default/img/MainBackground.png", "logo": "/branding/default/img/Logo.svg"}}),
        _ => json!({"allowed": ["blue", "red", "green"], "selected": "blue",
            "themes": {"blue": "/branding/default/theme.blue.json", "green": "/branding/default/theme.green.json", "red": "/branding/default/theme.red.json"}}),
    };
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

impl FusionSb {
    pub(super) fn new(opts: &SandboxOptions, rng: &mut rand::rngs::StdRng) -> FusionSb {
        let mut tenants = BTreeMap::new();
        let mut next = 1;
        for _ in 0..opts.fusion_tenants {
            let subs: Vec<i64> = (0..opts.fusion_subscriptions)
                .map(|i| next + i as i64)
                .collect();
            next += opts.fusion_subscriptions as i64;
            tenants.insert(Uuid::from_u128(rng.random()), subs);
        }
        FusionSb {
            username: opts.fusion_username.clone(),
            password: opts.fusion_password.clone(),
            trusted: opts.fusion_trusted,
            code: format!("{:06}", rng.random_range(0..1_000_000u32)),
            access_ttl: opts.fusion_access_ttl,
            access: HashMap::new(),
            refresh: Default::default(),
            payloads: Default::default(),
            tenants,
            config: HashMap::new(),
            logins: 0,
            writes: 0,
        }
    }

    pub(super) fn part(&self, t: Uuid, sub: i64, part: &str) -> Map<String, Value> {
        self.config
            .get(&(t, sub, part.to_string()))
            .cloned()
            .unwrap_or_else(|| default_part(part))
    }

    fn tokens(&mut self, rng: &mut rand::rngs::StdRng) -> Value {
        let access = format!("fa-{:032x}", rng.random::<u128>());
        let refresh = format!("fr-{:032x}", rng.random::<u128>());
        let exp = chrono::Utc::now().timestamp_millis() + self.access_ttl.as_millis() as i64;
        self.access.insert(access.clone(), exp);
        self.refresh.insert(refresh.clone());
        json!({"access_token": access, "refresh_token": refresh})
    }
}

fn secret_name(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("password") || k.contains("token")
}

fn masked(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Object(o) => Value::Object(masked(o)),
                _ if secret_name(k) => json!(FUSION_MASK),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn carries_mask(m: &Map<String, Value>) -> bool {
    m.values().any(|v| match v {
        Value::String(s) => s == FUSION_MASK,
        Value::Object(o) => carries_mask(o),
        _ => false,
    })
}

/// The written object, with the secret-named properties it leaves out kept from `old`.
fn keep_secrets(new: &mut Map<String, Value>, old: &Map<String, Value>) {
    for (k, v) in old {
        match (new.get_mut(k), v) {
            (Some(Value::Object(n)), Value::Object(o)) => keep_secrets(n, o),
            (None, _) if secret_name(k) => {
                new.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
}

fn fusion_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
}

fn json_body(body: &Bytes) -> Option<Map<String, Value>> {
    match serde_json::from_slice(body).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

pub(super) async fn fusion_login(State(state): State<Shared>, body: Bytes) -> Response {
    let Some(b) = json_body(&body) else {
        return fusion_error(StatusCode::BAD_REQUEST, "expected {username, password}");
    };
    let mut s = state.lock().expect("sandbox lock");
    s.fusion.logins += 1;
    let ok = b.get("username").and_then(Value::as_str) == Some(s.fusion.username.as_str())
        && b.get("password").and_then(Value::as_str) == Some(s.fusion.password.as_str());
    if !ok {
        return fusion_error(StatusCode::UNAUTHORIZED, "invalid credentials");
    }
    if s.fusion.trusted {
        let st = &mut *s;
        let t = st.fusion.tokens(&mut st.rng);
        return Json(t).into_response();
    }
    let payload = format!("2fa-{:032x}", s.rng.random::<u128>());
    s.fusion.payloads.insert(payload.clone());
    Json(json!({"2fa_payload": payload})).into_response()
}

pub(super) async fn fusion_2fa(State(state): State<Shared>, body: Bytes) -> Response {
    let Some(b) = json_body(&body) else {
        return fusion_error(
            StatusCode::BAD_REQUEST,
            "expected {code, trust, 2fa_payload}",
        );
    };
    let mut s = state.lock().expect("sandbox lock");
    let payload = b.get("2fa_payload").and_then(Value::as_str).unwrap_or("");
    let code = b.get("code").and_then(Value::as_str).unwrap_or("");
    if !s.fusion.payloads.contains(payload) || code != s.fusion.code {
        return fusion_error(StatusCode::UNAUTHORIZED, "invalid code");
    }
    s.fusion.payloads.remove(payload);
    let st = &mut *s;
    let t = st.fusion.tokens(&mut st.rng);
    Json(t).into_response()
}

pub(super) async fn fusion_access_token(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().expect("sandbox lock");
    match bearer(&headers) {
        Some(r) if s.fusion.refresh.contains(&r) => {
            let access = format!("fa-{:032x}", s.rng.random::<u128>());
            let exp =
                chrono::Utc::now().timestamp_millis() + s.fusion.access_ttl.as_millis() as i64;
            s.fusion.access.insert(access.clone(), exp);
            Json(json!({"access_token": access})).into_response()
        }
        _ => fusion_error(StatusCode::UNAUTHORIZED, "invalid refresh token"),
    }
}

pub(super) async fn fusion_logout(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let mut s = state.lock().expect("sandbox lock");
    if let Some(t) = bearer(&headers) {
        s.fusion.access.remove(&t);
    }
    StatusCode::NO_CONTENT.into_response()
}

fn authorized(s: &SbState, headers: &HeaderMap) -> Result<(), Response> {
    let now = chrono::Utc::now().timestamp_millis();
    match bearer(headers).and_then(|t| s.fusion.access.get(&t).copied()) {
        Some(exp) if exp > now => Ok(()),
        Some(_) => Err(fusion_error(
            StatusCode::UNAUTHORIZED,
            "access token expired",
        )),
        None => Err(fusion_error(
            StatusCode::UNAUTHORIZED,
            "missing or unknown access token",
        )),
    }
}

#[derive(Deserialize)]
pub(super) struct SubsQuery {
    #[serde(default)]
    page: Option<usize>,
    #[serde(default)]
    page_size: Option<usize>,
}

pub(super) async fn fusion_subscriptions(
    State(state): State<Shared>,
    Path((instance, tenant)): Path<(String, Uuid)>,
    Query(q): Query<SubsQuery>,
    headers: HeaderMap,
) -> Response {
    let s = state.lock().expect("sandbox lock");
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    if instance != FUSION_INSTANCE {
        return fusion_error(StatusCode::NOT_FOUND, "unknown draas instance");
    }
    let Some(subs) = s.fusion.tenants.get(&tenant).filter(|s| !s.is_empty()) else {
        return fusion_error(StatusCode::NOT_FOUND, "No subscription found");
    };
    let size = q.page_size.unwrap_or(10).clamp(1, 1000);
    let page = q.page.unwrap_or(1).max(1);
    let pages = subs.len().div_ceil(size);
    let items: Vec<Value> = subs
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|id| json!({"id": id, "name": format!("Subscription {id}"), "billingId": format!("sandbox::{id}"),
            "licenses": {"msTeamsUsers": 10, "sipTrunkChannels": 0}, "uc": "msteams"}))
        .collect();
    Json(json!({"results": subs.len(), "pages": pages, "page": page, "subscriptions": items}))
        .into_response()
}

#[derive(Deserialize)]
pub(super) struct PartQuery {
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// The part a request names: `general`, `pages`, or `styling.<type>`.
fn part_of(name: &str, kind: Option<&str>) -> Result<String, Response> {
    match (name, kind) {
        ("general" | "pages", _) => Ok(name.to_string()),
        ("styling", Some(t @ ("font" | "image" | "theme"))) => Ok(format!("styling.{t}")),
        ("styling", _) => Err(fusion_error(
            StatusCode::BAD_REQUEST,
            "type must be font, image or theme",
        )),
        _ => Err(fusion_error(StatusCode::NOT_FOUND, "unknown configuration")),
    }
}

fn subscription_known(
    s: &SbState,
    instance: &str,
    tenant: &Uuid,
    sub: i64,
) -> Result<(), Response> {
    if instance != FUSION_INSTANCE {
        return Err(fusion_error(
            StatusCode::NOT_FOUND,
            "unknown draas instance",
        ));
    }
    match s.fusion.tenants.get(tenant) {
        Some(subs) if subs.contains(&sub) => Ok(()),
        _ => Err(fusion_error(StatusCode::NOT_FOUND, "No tenant found")),
    }
}

pub(super) async fn fusion_get_part(
    State(state): State<Shared>,
    Path((instance, tenant, sub, name)): Path<(String, Uuid, i64, String)>,
    Query(q): Query<PartQuery>,
    headers: HeaderMap,
) -> Response {
    let s = state.lock().expect("sandbox lock");
    if let Err(r) =
        authorized(&s, &headers).and_then(|()| subscription_known(&s, &instance, &tenant, sub))
    {
        return r;
    }
    let part = match part_of(&name, q.kind.as_deref()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    Json(Value::Object(masked(&s.fusion.part(tenant, sub, &part)))).into_response()
}

pub(super) async fn fusion_put_part(
    State(state): State<Shared>,
    Path((instance, tenant, sub, name)): Path<(String, Uuid, i64, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().expect("sandbox lock");
    if let Err(r) =
        authorized(&s, &headers).and_then(|()| subscription_known(&s, &instance, &tenant, sub))
    {
        return r;
    }
    let Some(mut b) = json_body(&body) else {
        return fusion_error(
            StatusCode::BAD_REQUEST,
            "expected a JSON object of properties",
        );
    };
    let kind = match b.remove("type") {
        Some(Value::String(t)) => Some(t),
        _ => None,
    };
    let part = match part_of(&name, kind.as_deref()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if carries_mask(&b) {
        return fusion_error(
            StatusCode::BAD_REQUEST,
            "a property carries the mask ******** (a secret read back is not a value)",
        );
    }
    let old = s.fusion.part(tenant, sub, &part);
    keep_secrets(&mut b, &old);
    s.fusion.config.insert((tenant, sub, part), b);
    s.fusion.writes += 1;
    StatusCode::NO_CONTENT.into_response()
}
