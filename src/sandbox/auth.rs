//! Client-credentials tokens and the API client's own record.

use super::*;

#[derive(Deserialize)]
pub(super) struct TokenForm {
    #[serde(default)]
    pub(super) grant_type: Option<String>,
    #[serde(default)]
    pub(super) client_id: Option<String>,
    #[serde(default)]
    pub(super) client_secret: Option<String>,
}

pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

pub(super) async fn token(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = content_type(&headers);
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        );
    }
    let form: TokenForm = match serde_urlencoded_parse(&body) {
        Some(f) => f,
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "malformed form body",
            )
        }
    };
    if form.grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type must be client_credentials",
        );
    }
    let creds = basic_credentials(&headers).or(match (form.client_id, form.client_secret) {
        (Some(i), Some(s)) => Some((i, s)),
        _ => None,
    });
    let mut s = state.lock().expect("sandbox lock");
    let client = creds.as_ref().and_then(|(i, p)| {
        s.clients
            .get(i)
            .filter(|c| c.secret == *p)
            .map(|_| i.clone())
    });
    let Some(client) = client else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    };
    let token: String = (0..4)
        .map(|_| format!("{:016x}", s.rng.random::<u64>()))
        .collect();
    let ttl = s.opts.token_ttl.as_secs() as i64;
    let expires_on = chrono::Utc::now().timestamp() + ttl;
    s.tokens.insert(token.clone(), (expires_on, client));
    s.issued.push(token.clone());
    s.stats.tokens_issued += 1;
    Json(json!({
        "access_token": token,
        "token_type": "bearer",
        "id_token": "sandbox-id-token",
        "expires_on": expires_on,
    }))
    .into_response()
}

pub(super) fn serde_urlencoded_parse(body: &[u8]) -> Option<TokenForm> {
    std::str::from_utf8(body).ok()?;
    let mut map = Map::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        map.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    serde_json::from_value(Value::Object(map)).ok()
}

pub(super) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let encoded = v.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

/// Check the bearer token; `Err` is the 401 answer.
/// A request that carried a live bearer token; handlers that take it answer 401 otherwise.
pub(super) struct Authorized;

impl axum::extract::FromRequestParts<Shared> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Shared,
    ) -> Result<Self, Response> {
        authorize(state, &parts.headers).map(|()| Authorized)
    }
}

fn authorize(state: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let s = state.lock().expect("sandbox lock");
    let now = chrono::Utc::now().timestamp();
    match token.and_then(|t| s.tokens.get(t)) {
        Some((exp, _)) if *exp > now => Ok(()),
        Some(_) => Err(envelope(
            StatusCode::UNAUTHORIZED,
            json!("unauthorized"),
            "access token expired",
        )),
        None => Err(envelope(
            StatusCode::UNAUTHORIZED,
            json!("unauthorized"),
            "missing or unknown access token",
        )),
    }
}

pub(super) async fn client_info(
    _auth: Authorized,
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Response {
    let s = state.lock().expect("sandbox lock");
    let Some(c) = s.clients.get(&id) else {
        return envelope(StatusCode::NOT_FOUND, json!(1003), "client not found");
    };
    Json(json!({"id": id, "tenant_id": c.tenant_id, "status": "enabled", "type": "api_client"}))
        .into_response()
}

/// `POST /_sandbox/clients` `{"client_id"?, "tenant_id"?}`: an API client created in a tenant
/// (the root by default), as a partner creates one in its portal. Answers its secret once.
pub(super) async fn sb_create_client(State(state): State<Shared>, body: Bytes) -> Response {
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Create {
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        tenant_id: Option<Uuid>,
    }
    let req: Create = if body.is_empty() {
        Create::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return bad_request(&format!("expected {{client_id?, tenant_id?}}: {e}")),
        }
    };
    let mut s = state.lock().expect("sandbox lock");
    let tenant_id = req.tenant_id.unwrap_or(s.root);
    if !s.index.contains_key(&tenant_id) {
        return envelope(StatusCode::NOT_FOUND, json!(1003), "tenant not found");
    }
    let id = req
        .client_id
        .unwrap_or_else(|| Uuid::from_u128(s.rng.random()).to_string());
    if s.clients.contains_key(&id) {
        return envelope(StatusCode::CONFLICT, json!(1009), "client exists");
    }
    let secret = s.add_client(id.clone(), tenant_id);
    (
        StatusCode::CREATED,
        Json(json!({"client_id": id, "client_secret": secret, "tenant_id": tenant_id})),
    )
        .into_response()
}

/// `POST /_sandbox/clients/{id}/reset-secret`: a new secret; the old one and every token
/// issued to the client stop working.
pub(super) async fn sb_reset_client(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Response {
    let secret = state.lock().expect("sandbox lock").reset_client(&id);
    match secret {
        Some(secret) => Json(json!({"client_id": id, "client_secret": secret})).into_response(),
        None => envelope(StatusCode::NOT_FOUND, json!(1003), "client not found"),
    }
}

impl SbState {
    /// A new API client in `tenant`; answers its secret.
    pub(super) fn add_client(&mut self, id: String, tenant_id: Uuid) -> String {
        let secret: String = (0..2)
            .map(|_| format!("{:016x}", self.rng.random::<u64>()))
            .collect();
        self.clients.insert(
            id,
            super::state::SbClient {
                secret: secret.clone(),
                tenant_id,
            },
        );
        secret
    }

    /// A new secret for a client: the old one and its tokens stop working.
    pub(super) fn reset_client(&mut self, id: &str) -> Option<String> {
        let tenant = self.clients.get(id)?.tenant_id;
        let secret = self.add_client(id.to_string(), tenant);
        self.tokens.retain(|_, (_, owner)| owner != id);
        Some(secret)
    }
}
