//! The sandbox platform: a strict emulation of the platform endpoints statusd uses, for the
//! tests, `statusd demo` and integration developers without platform credentials.
//!
//! It validates what it receives as the platform documents it, keeps what it received for
//! inspection under `/_sandbox/`, and takes fault injection there. It knows nothing of the
//! daemon's internals: it is a separate HTTP server that only speaks the wire protocol.

// Handlers return early with a ready answer; the size of `Response` on that cold path is fine.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::event::limits;

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub client_id: String,
    pub client_secret: String,
    pub token_ttl: Duration,
    pub tenants: usize,
    pub page_limit: usize,
    pub seed: u64,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            client_id: Uuid::new_v4().to_string(),
            client_secret: Uuid::new_v4().simple().to_string(),
            token_ttl: Duration::from_secs(7200),
            tenants: 50,
            page_limit: 100,
            seed: 42,
        }
    }
}

/// A fault to inject into the next matching requests.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Fault {
    /// Answer with this status (with the error envelope) instead of handling the request.
    #[serde(default)]
    pub status: Option<u16>,
    /// `Retry-After` header to send with `status` (seconds, or an HTTP date as text).
    #[serde(default)]
    pub retry_after: Option<String>,
    /// Wait this long before answering (or before dropping).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Close the connection without an answer.
    #[serde(default)]
    pub drop_connection: bool,
    /// Invalidate every issued token before handling the request.
    #[serde(default)]
    pub expire_tokens: bool,
    /// Apply to this many matching requests (default: unlimited until cleared).
    #[serde(default)]
    pub count: Option<u64>,
    /// Apply to this fraction (0..1) of matching requests (default: all).
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Only requests whose path contains this text.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Only requests whose query contains this text (e.g. a tenant id).
    #[serde(default)]
    pub query_contains: Option<String>,
}

/// One status report the sandbox accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceivedReport {
    pub seq: u64,
    pub tenant_id: Uuid,
    pub body: Value,
    pub received_at: String,
}

#[derive(Debug, Clone, Serialize)]
struct SbTenant {
    id: Uuid,
    parent_id: Uuid,
    version: i64,
    name: String,
    kind: String,
    enabled: bool,
    brand_enabled: bool,
    created_at: String,
    updated_at: String,
    #[serde(skip)]
    updated_ms: i64,
    deleted_at: Option<String>,
    customer_type: String,
    language: String,
    has_children: bool,
}

struct Cursor {
    remaining: Vec<Uuid>,
}

#[derive(Default, Debug, Clone, Serialize)]
pub struct SandboxStats {
    pub requests: u64,
    pub by_endpoint: HashMap<String, u64>,
    pub by_status: HashMap<u16, u64>,
    pub tokens_issued: u64,
    pub faults_applied: u64,
    pub in_flight: u64,
    pub max_in_flight: u64,
}

struct SbState {
    opts: SandboxOptions,
    root: Uuid,
    tokens: HashMap<String, i64>,
    issued: Vec<String>,
    tenants: Vec<SbTenant>,
    index: HashMap<Uuid, usize>,
    brands: HashMap<Uuid, Map<String, Value>>,
    logos: HashMap<Uuid, Vec<u8>>,
    reports: Vec<ReceivedReport>,
    faults: VecDeque<Fault>,
    cursors: HashMap<String, Cursor>,
    stats: SandboxStats,
    rng: rand::rngs::StdRng,
    smtp_password_writes: u64,
}

type Shared = Arc<Mutex<SbState>>;

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    pub url: String,
    pub addr: SocketAddr,
    pub client_id: String,
    pub client_secret: String,
    pub root_tenant: Uuid,
    state: Shared,
    stop: CancellationToken,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Sandbox {
    /// Start on 127.0.0.1 with a free port.
    pub async fn start(opts: SandboxOptions) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, opts).await
    }

    pub async fn start_on(listener: TcpListener, opts: SandboxOptions) -> std::io::Result<Sandbox> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(SbState::new(opts.clone())));
        let root = state.lock().expect("sandbox lock").root;
        let stop = CancellationToken::new();
        let router = router(state.clone());
        tokio::spawn(serve(listener, router, state.clone(), stop.clone()));
        Ok(Sandbox {
            url: format!("http://{addr}"),
            addr,
            client_id: opts.client_id,
            client_secret: opts.client_secret,
            root_tenant: root,
            state,
            stop,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut SbState) -> T) -> T {
        f(&mut self.state.lock().expect("sandbox lock"))
    }

    pub fn reports(&self) -> Vec<ReceivedReport> {
        self.with(|s| s.reports.clone())
    }

    pub fn inject(&self, fault: Fault) {
        self.with(|s| s.faults.push_back(fault));
    }

    pub fn clear_faults(&self) {
        self.with(|s| s.faults.clear());
    }

    pub fn stats(&self) -> SandboxStats {
        self.with(|s| s.stats.clone())
    }

    /// Requests whose endpoint name contains `what` (e.g. "status", "token", "tenants").
    pub fn requests_to(&self, what: &str) -> u64 {
        self.with(|s| {
            s.stats
                .by_endpoint
                .iter()
                .filter(|(k, _)| k.contains(what))
                .map(|(_, v)| v)
                .sum()
        })
    }

    /// Every access token issued so far, expired ones included.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.with(|s| s.issued.clone())
    }

    pub fn expire_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    /// Every tenant id, with its kind, live or deleted.
    pub fn tenant_ids(&self, kind: Option<&str>) -> Vec<Uuid> {
        self.with(|s| {
            s.tenants
                .iter()
                .filter(|t| t.deleted_at.is_none())
                .filter(|t| kind.is_none_or(|k| t.kind == k))
                .map(|t| t.id)
                .collect()
        })
    }

    pub fn brand(&self, tenant: Uuid) -> Option<Map<String, Value>> {
        self.with(|s| s.brands.get(&tenant).cloned())
    }

    pub fn logo(&self, tenant: Uuid) -> Option<Vec<u8>> {
        self.with(|s| s.logos.get(&tenant).cloned())
    }

    pub fn tenant_version(&self, tenant: Uuid) -> Option<i64> {
        self.with(|s| s.index.get(&tenant).map(|i| s.tenants[*i].version))
    }

    /// Times a brand write carried `smtp_password` (a client must never send the empty read-back).
    pub fn smtp_password_writes(&self) -> u64 {
        self.with(|s| s.smtp_password_writes)
    }

    /// Change a tenant as an operator would on the platform (bumps version and updated_at).
    pub fn mutate_tenant(&self, tenant: Uuid, change: TenantChange) -> bool {
        self.with(|s| s.mutate(tenant, change))
    }

    /// Add a child tenant under `parent`.
    pub fn add_tenant(&self, parent: Uuid, kind: &str, name: &str) -> Uuid {
        self.with(|s| {
            let id = Uuid::from_u128(s.rng.random());
            s.push_tenant(id, parent, kind, name.to_string());
            id
        })
    }
}

/// A change made through `/_sandbox/tenants/{id}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TenantChange {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub deleted: Option<bool>,
    #[serde(default)]
    pub name: Option<String>,
}

impl SbState {
    fn new(opts: SandboxOptions) -> SbState {
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        let root = Uuid::from_u128(rng.random());
        let mut s = SbState {
            opts: opts.clone(),
            root,
            tokens: HashMap::new(),
            issued: Vec::new(),
            tenants: Vec::new(),
            index: HashMap::new(),
            brands: HashMap::new(),
            logos: HashMap::new(),
            reports: Vec::new(),
            faults: VecDeque::new(),
            cursors: HashMap::new(),
            stats: SandboxStats::default(),
            rng,
            smtp_password_writes: 0,
        };
        s.push_tenant(root, root, "partner", "Sandbox Partner".into());
        s.generate(opts.tenants);
        s
    }

    fn push_tenant(&mut self, id: Uuid, parent: Uuid, kind: &str, name: String) {
        let n = self.tenants.len();
        let now = chrono::Utc::now() - chrono::Duration::days(1);
        // Half the timestamps carry no zone, as some platform answers do.
        let stamp = if n % 2 == 0 {
            now.format("%Y-%m-%dT%H:%M:%S").to_string()
        } else {
            now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        self.tenants.push(SbTenant {
            id,
            parent_id: parent,
            version: 1,
            name,
            kind: kind.to_string(),
            enabled: true,
            brand_enabled: false,
            created_at: stamp.clone(),
            updated_at: stamp,
            updated_ms: now.timestamp_millis(),
            deleted_at: None,
            customer_type: "default".into(),
            language: "en".into(),
            has_children: false,
        });
        self.index.insert(id, n);
        if let Some(&p) = self.index.get(&parent) {
            if p != n {
                self.tenants[p].has_children = true;
            }
        }
    }

    /// A tree: partners and folders under the root and under each other, customers under those,
    /// units under customers; a few disabled and a few deleted.
    fn generate(&mut self, count: usize) {
        let mut containers = vec![self.root];
        let mut customers = Vec::new();
        for i in 0..count {
            let roll: f64 = self.rng.random();
            let (kind, parent) = if roll < 0.12 || containers.len() < 2 {
                let p = containers[self.rng.random_range(0..containers.len())];
                ("partner", p)
            } else if roll < 0.17 {
                let p = containers[self.rng.random_range(0..containers.len())];
                ("folder", p)
            } else if roll < 0.92 || customers.is_empty() {
                let p = containers[self.rng.random_range(0..containers.len())];
                ("customer", p)
            } else {
                let p = customers[self.rng.random_range(0..customers.len())];
                ("unit", p)
            };
            let id = Uuid::from_u128(self.rng.random());
            self.push_tenant(id, parent, kind, format!("{kind} {i}"));
            match kind {
                "partner" | "folder" => containers.push(id),
                "customer" => customers.push(id),
                _ => {}
            }
            let idx = self.tenants.len() - 1;
            if i % 23 == 7 {
                self.tenants[idx].enabled = false;
            }
            if i % 37 == 11 && kind != "partner" && kind != "folder" {
                self.tenants[idx].deleted_at = Some(self.tenants[idx].updated_at.clone());
            }
        }
    }

    fn bump(&mut self, idx: usize) {
        let now = chrono::Utc::now();
        let t = &mut self.tenants[idx];
        t.version += 1;
        t.updated_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        t.updated_ms = now.timestamp_millis();
    }

    fn mutate(&mut self, tenant: Uuid, change: TenantChange) -> bool {
        let Some(&idx) = self.index.get(&tenant) else {
            return false;
        };
        if let Some(e) = change.enabled {
            self.tenants[idx].enabled = e;
        }
        if let Some(n) = change.name {
            self.tenants[idx].name = n;
        }
        if let Some(d) = change.deleted {
            self.tenants[idx].deleted_at = d.then(now_text);
        }
        self.bump(idx);
        true
    }

    fn tenant_json(&self, idx: usize) -> Value {
        let t = &self.tenants[idx];
        let mut v = serde_json::to_value(t).expect("tenant serializes");
        let m = v.as_object_mut().expect("object");
        m.insert("mfa_status".into(), json!("disabled"));
        m.insert("pricing_mode".into(), json!("production"));
        m.insert("ancestral_access".into(), json!(true));
        m.insert("contact".into(), json!({}));
        m.insert("update_lock".into(), json!({"enabled": false}));
        v
    }

    /// Tenant + all descendants, level by level.
    fn subtree(&self, root: Uuid) -> Vec<Uuid> {
        let mut children: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for t in &self.tenants {
            if t.id != t.parent_id {
                children.entry(t.parent_id).or_default().push(t.id);
            }
        }
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            if let Some(c) = children.get(&out[i]) {
                out.extend(c.iter().copied());
            }
            i += 1;
        }
        out
    }
}

/// 415 with the envelope unless the body is declared as JSON.
fn require_json(headers: &HeaderMap) -> Result<(), Response> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/json") {
        Ok(())
    } else {
        Err(envelope(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!(1015),
            "Content-Type must be application/json",
        ))
    }
}

fn envelope(status: StatusCode, code: Value, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {
            "code": code,
            "message": message,
            "domain": "PlatformAccountServer",
            "context": {},
            "details": {"info": message},
        }})),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    envelope(StatusCode::BAD_REQUEST, json!(1006), message)
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/2/idp/token", post(token))
        .route("/api/2/clients/{id}", get(client_info))
        .route("/api/integration_management/v2/status", post(status_report))
        .route("/api/2/tenants", get(list_tenants))
        .route("/api/2/tenants/{id}", get(get_tenant))
        .route(
            "/api/2/tenants/{id}/brand",
            get(get_brand)
                .post(enable_brand)
                .put(put_brand)
                .delete(delete_brand),
        )
        .route(
            "/api/2/tenants/{id}/brand/logo",
            get(get_logo).post(post_logo),
        )
        .route("/_sandbox/reports", get(sb_reports))
        .route("/_sandbox/stats", get(sb_stats))
        .route(
            "/_sandbox/faults",
            post(sb_add_fault).delete(sb_clear_faults).get(sb_faults),
        )
        .route("/_sandbox/tenants", get(sb_tenants))
        .route("/_sandbox/tenants/{id}", post(sb_mutate_tenant))
        .route("/_sandbox/tenants/{id}/brand", get(sb_brand))
        .fallback(|| async {
            envelope(
                StatusCode::NOT_FOUND,
                json!("not_found"),
                "unknown endpoint",
            )
        })
        .with_state(state)
}

/// Name an endpoint for request counting.
fn endpoint_name(method: &str, path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    let shape: Vec<&str> = parts
        .iter()
        .map(|p| {
            if Uuid::parse_str(p).is_ok() {
                "{id}"
            } else {
                p
            }
        })
        .collect();
    let shape = shape.join("/");
    let name = if shape.ends_with("/idp/token") {
        "token"
    } else if shape.contains("/integration_management/v2/status") {
        "status"
    } else if shape.ends_with("/brand/logo") {
        "brand_logo"
    } else if shape.ends_with("/brand") {
        "brand"
    } else if shape.contains("/clients/") {
        "client"
    } else if shape.ends_with("/tenants") {
        "tenants_list"
    } else if shape.contains("/tenants/") {
        "tenant"
    } else {
        "other"
    };
    format!("{method} {name}")
}

enum FaultAction {
    Pass,
    Respond(Response),
    Drop,
}

async fn apply_faults(state: &Shared, method: &str, path: &str, query: &str) -> FaultAction {
    let chosen = {
        let mut s = state.lock().expect("sandbox lock");
        let mut chosen = None;
        let mut exhausted = None;
        let roll: f64 = s.rng.random();
        for (i, f) in s.faults.iter_mut().enumerate() {
            if f.path_contains
                .as_deref()
                .is_some_and(|p| !path.contains(p))
            {
                continue;
            }
            if f.query_contains
                .as_deref()
                .is_some_and(|q| !query.contains(q))
            {
                continue;
            }
            if f.fraction.is_some_and(|fr| roll >= fr) {
                continue;
            }
            if let Some(c) = f.count.as_mut() {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    exhausted = Some(i);
                }
            }
            chosen = Some(f.clone());
            break;
        }
        if let Some(i) = exhausted {
            s.faults.remove(i);
        }
        if chosen.is_some() {
            s.stats.faults_applied += 1;
        }
        if chosen.as_ref().is_some_and(|f| f.expire_tokens) {
            s.tokens.clear();
        }
        chosen
    };
    let Some(f) = chosen else {
        return FaultAction::Pass;
    };
    tracing::debug!(message = "sandbox fault applied", method, path, fault = ?f);
    if let Some(ms) = f.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if f.drop_connection {
        return FaultAction::Drop;
    }
    if let Some(code) = f.status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut resp = envelope(status, json!(code), "injected fault");
        if let Some(ra) = f.retry_after {
            if let Ok(v) = ra.parse() {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        return FaultAction::Respond(resp);
    }
    FaultAction::Pass
}

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}
impl std::error::Error for Dropped {}

/// The accept loop: hyper directly (not `axum::serve`) so a fault can close a connection
/// without any answer, as a crashing load balancer would.
async fn serve(listener: TcpListener, router: Router, state: Shared, stop: CancellationToken) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt;
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        let router = router.clone();
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let router = router.clone();
                let state = state.clone();
                async move {
                    let method = req.method().to_string();
                    let path = req.uri().path().to_string();
                    let query = req.uri().query().unwrap_or("").to_string();
                    let counted = !path.starts_with("/_sandbox");
                    if counted {
                        let mut s = state.lock().expect("sandbox lock");
                        s.stats.requests += 1;
                        *s.stats
                            .by_endpoint
                            .entry(endpoint_name(&method, &path))
                            .or_default() += 1;
                        s.stats.in_flight += 1;
                        s.stats.max_in_flight = s.stats.max_in_flight.max(s.stats.in_flight);
                    }
                    let action = if counted {
                        apply_faults(&state, &method, &path, &query).await
                    } else {
                        FaultAction::Pass
                    };
                    let result = match action {
                        FaultAction::Drop => Err(Dropped),
                        FaultAction::Respond(r) => Ok(r),
                        FaultAction::Pass => {
                            let req = req.map(Body::new);
                            Ok(router.oneshot(req).await.unwrap_or_else(|e| match e {}))
                        }
                    };
                    if counted {
                        let mut s = state.lock().expect("sandbox lock");
                        s.stats.in_flight -= 1;
                        if let Ok(r) = &result {
                            *s.stats.by_status.entry(r.status().as_u16()).or_default() += 1;
                        }
                    }
                    result
                }
            });
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let io = TokioIo::new(stream);
            tokio::select! {
                _ = conn.serve_connection(io, service) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

// Authentication ------------------------------------------------------------------------------

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    grant_type: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn token(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
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
    let ok = creds
        .as_ref()
        .is_some_and(|(i, p)| *i == s.opts.client_id && *p == s.opts.client_secret);
    if !ok {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    let token: String = (0..4)
        .map(|_| format!("{:016x}", s.rng.random::<u64>()))
        .collect();
    let ttl = s.opts.token_ttl.as_secs() as i64;
    let expires_on = chrono::Utc::now().timestamp() + ttl;
    s.tokens.insert(token.clone(), expires_on);
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

fn serde_urlencoded_parse(body: &[u8]) -> Option<TokenForm> {
    std::str::from_utf8(body).ok()?;
    let mut map = Map::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        map.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    serde_json::from_value(Value::Object(map)).ok()
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
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
fn authorize(state: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let s = state.lock().expect("sandbox lock");
    let now = chrono::Utc::now().timestamp();
    match token.and_then(|t| s.tokens.get(t)) {
        Some(exp) if *exp > now => Ok(()),
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

async fn client_info(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let s = state.lock().expect("sandbox lock");
    if id != s.opts.client_id {
        return envelope(StatusCode::NOT_FOUND, json!(1003), "client not found");
    }
    Json(json!({"id": id, "tenant_id": s.root, "status": "enabled", "type": "api_client"}))
        .into_response()
}

// Status reports --------------------------------------------------------------------------------

fn check_len(
    obj: &Map<String, Value>,
    field: &str,
    path: &str,
    min: usize,
    max: usize,
    required: bool,
) -> Result<(), String> {
    match obj.get(field) {
        None | Some(Value::Null) if !required => Ok(()),
        None | Some(Value::Null) => Err(format!("{path}{field} is required")),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n < min || n > max {
                Err(format!(
                    "{path}{field} must be {min} to {max} characters, got {n}"
                ))
            } else {
                Ok(())
            }
        }
        Some(_) => Err(format!("{path}{field} must be a string")),
    }
}

fn check_bool(obj: &Map<String, Value>, field: &str, path: &str) -> Result<bool, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("{path}{field} must be a boolean")),
    }
}

/// The field table of the status endpoint, checked strictly.
pub fn validate_status_body(body: &Value) -> Result<(), String> {
    let obj = body.as_object().ok_or("body must be a JSON object")?;
    let code = obj.get("application_code").filter(|v| !v.is_null());
    let id = obj.get("application_id").filter(|v| !v.is_null());
    match (code, id) {
        (Some(_), Some(_)) => {
            return Err("send exactly one of application_code and application_id".into())
        }
        (None, None) => return Err("application_code or application_id is required".into()),
        (Some(_), None) => check_len(
            obj,
            "application_code",
            "",
            1,
            limits::APPLICATION_CODE,
            true,
        )?,
        (None, Some(v)) => {
            if v.as_str().is_none_or(|s| Uuid::parse_str(s).is_err()) {
                return Err("application_id must be a UUID".into());
            }
        }
    }
    let module = obj
        .get("module")
        .and_then(Value::as_object)
        .ok_or("module is required and must be an object")?;
    check_len(module, "name", "module.", 1, limits::NAME, true)?;
    check_len(module, "version", "module.", 0, limits::NAME, false)?;
    match obj.get("vendor_system") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vs)) => {
            check_len(vs, "name", "vendor_system.", 1, limits::NAME, true)?;
            check_len(vs, "version", "vendor_system.", 0, limits::NAME, false)?;
        }
        Some(_) => return Err("vendor_system must be an object".into()),
    }
    for field in ["activated_at", "deactivated_at"] {
        if let Some(v) = obj.get(field).filter(|v| !v.is_null()) {
            if v.as_str()
                .is_none_or(|s| chrono::DateTime::parse_from_rfc3339(s).is_err())
            {
                return Err(format!("{field} must be an RFC 3339 timestamp"));
            }
        }
    }
    match obj.get("events") {
        None | Some(Value::Null) => {}
        Some(Value::Array(events)) => {
            for (i, e) in events.iter().enumerate() {
                let path = format!("events[{i}].");
                let e = e
                    .as_object()
                    .ok_or(format!("events[{i}] must be an object"))?;
                check_len(e, "category", &path, 1, limits::CATEGORY, true)?;
                check_len(e, "action", &path, 1, limits::ACTION, true)?;
                let a = check_bool(e, "activation_event", &path)?;
                let d = check_bool(e, "deactivation_event", &path)?;
                if a && d {
                    return Err(format!(
                        "{path}activation_event and deactivation_event are both true"
                    ));
                }
            }
        }
        Some(_) => return Err("events must be an array".into()),
    }
    Ok(())
}

async fn status_report(
    State(state): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    if let Err(r) = require_json(&headers) {
        return r;
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("body is not JSON: {e}")),
    };
    if let Err(m) = validate_status_body(&body) {
        return bad_request(&m);
    }
    let mut s = state.lock().expect("sandbox lock");
    let tenant = match q.get("tenantID") {
        None => s.root,
        Some(t) => match Uuid::parse_str(t) {
            Ok(u) => u,
            Err(_) => return bad_request("tenantID must be a UUID"),
        },
    };
    if !s.index.contains_key(&tenant) {
        return envelope(StatusCode::NOT_FOUND, json!(1003), "tenant not found");
    }
    let seq = s.reports.len() as u64 + 1;
    s.reports.push(ReceivedReport {
        seq,
        tenant_id: tenant,
        body,
        received_at: now_text(),
    });
    StatusCode::NO_CONTENT.into_response()
}

// Tenants ---------------------------------------------------------------------------------------

async fn list_tenants(
    State(state): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let mut s = state.lock().expect("sandbox lock");
    let selectors: Vec<&str> = ["uuids", "parent_id", "subtree_root_id", "after"]
        .into_iter()
        .filter(|k| q.contains_key(*k))
        .collect();
    if selectors.len() != 1 {
        return bad_request("exactly one of uuids, parent_id, subtree_root_id, after is required");
    }
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 5000,
        Some(Ok(l)) if l >= 1 => l,
        _ => return bad_request("limit must be a whole number of at least 1"),
    }
    .min(s.opts.page_limit);
    let ids: Vec<Uuid> = if let Some(cursor) = q.get("after") {
        if q.len() != 1 {
            return bad_request("after must be sent alone: the cursor carries the filters");
        }
        match s.cursors.remove(cursor) {
            Some(c) => c.remaining,
            None => return bad_request("unknown or used cursor"),
        }
    } else {
        let parse =
            |v: &str| Uuid::parse_str(v).map_err(|_| bad_request(&format!("not a UUID: {v}")));
        let mut ids: Vec<Uuid> = if let Some(u) = q.get("uuids") {
            let parts: Vec<&str> = u.split(',').filter(|p| !p.is_empty()).collect();
            if parts.len() > 100 {
                return bad_request("uuids takes at most 100 ids");
            }
            let mut out = Vec::new();
            for p in parts {
                match parse(p) {
                    Ok(id) => out.push(id),
                    Err(r) => return r,
                }
            }
            out
        } else if let Some(p) = q.get("parent_id") {
            let parent = match parse(p) {
                Ok(id) => id,
                Err(r) => return r,
            };
            s.tenants
                .iter()
                .filter(|t| t.parent_id == parent && t.id != parent)
                .map(|t| t.id)
                .collect()
        } else {
            let root = match parse(&q["subtree_root_id"]) {
                Ok(id) => id,
                Err(r) => return r,
            };
            if !s.index.contains_key(&root) {
                return envelope(StatusCode::NOT_FOUND, json!(1003), "tenant not found");
            }
            s.subtree(root)
        };
        let allow_deleted = q
            .get("allow_deleted")
            .is_some_and(|v| v == "true" || v == "1");
        let since = match q.get("updated_since") {
            None => None,
            Some(t) => match crate::platform::parse_platform_time(t) {
                Some(t) => Some(t.timestamp_millis()),
                None => return bad_request("updated_since must be an RFC 3339 timestamp"),
            },
        };
        ids.retain(|id| match s.index.get(id) {
            None => false,
            Some(&i) => {
                let t = &s.tenants[i];
                (allow_deleted || t.deleted_at.is_none())
                    && since.is_none_or(|ms| t.updated_ms > ms)
            }
        });
        ids
    };
    let take = limit.min(ids.len());
    let page: Vec<Value> = ids[..take]
        .iter()
        .filter_map(|id| s.index.get(id).map(|&i| s.tenant_json(i)))
        .collect();
    let rest = ids[take..].to_vec();
    let mut resp = json!({"items": page, "timestamp": now_text()});
    if !rest.is_empty() {
        let cursor = format!("{:032x}", s.rng.random::<u128>());
        s.cursors.insert(cursor.clone(), Cursor { remaining: rest });
        resp["paging"] = json!({"cursors": {"after": cursor}});
    }
    Json(resp).into_response()
}

fn tenant_index(s: &SbState, id: &str) -> Result<usize, Response> {
    Uuid::parse_str(id)
        .ok()
        .and_then(|u| s.index.get(&u).copied())
        .ok_or_else(|| envelope(StatusCode::NOT_FOUND, json!(1003), "tenant not found"))
}

async fn get_tenant(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let s = state.lock().expect("sandbox lock");
    match tenant_index(&s, &id) {
        Ok(i) if s.tenants[i].deleted_at.is_none() => Json(s.tenant_json(i)).into_response(),
        Ok(_) => envelope(StatusCode::NOT_FOUND, json!(1003), "tenant deleted"),
        Err(r) => r,
    }
}

// Branding --------------------------------------------------------------------------------------

const BRAND_WRITABLE: &[&str] = &[
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

fn default_brand() -> Map<String, Value> {
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
fn brand_target(
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

fn check_version(s: &SbState, idx: usize, q: &HashMap<String, String>) -> Result<(), Response> {
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

async fn get_brand(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
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

async fn enable_brand(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
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

async fn put_brand(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
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

async fn delete_brand(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let mut s = state.lock().expect("sandbox lock");
    let idx = match brand_target(&s, &id, &q, true) {
        Ok(i) => i,
        Err(r) => return r,
    };
    s.tenants[idx].brand_enabled = false;
    s.bump(idx);
    StatusCode::NO_CONTENT.into_response()
}

async fn get_logo(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
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

async fn post_logo(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
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

// Inspection and fault injection --------------------------------------------------------------

#[derive(Deserialize)]
struct ReportsQuery {
    #[serde(default)]
    tenant_id: Option<Uuid>,
}

async fn sb_reports(State(state): State<Shared>, Query(q): Query<ReportsQuery>) -> Response {
    let s = state.lock().expect("sandbox lock");
    let items: Vec<&ReceivedReport> = s
        .reports
        .iter()
        .filter(|r| q.tenant_id.is_none_or(|t| r.tenant_id == t))
        .collect();
    Json(json!({"count": items.len(), "items": items})).into_response()
}

async fn sb_stats(State(state): State<Shared>) -> Response {
    let s = state.lock().expect("sandbox lock");
    Json(json!({
        "stats": s.stats,
        "reports": s.reports.len(),
        "tenants": s.tenants.len(),
        "root_tenant_id": s.root,
        "faults_pending": s.faults.len(),
    }))
    .into_response()
}

async fn sb_add_fault(State(state): State<Shared>, body: Bytes) -> Response {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return bad_request(&format!("not a fault: {e}")),
    };
    if fault.fraction.is_some_and(|f| !(0.0..=1.0).contains(&f)) {
        return bad_request("fraction must be between 0 and 1");
    }
    state.lock().expect("sandbox lock").faults.push_back(fault);
    StatusCode::CREATED.into_response()
}

async fn sb_faults(State(state): State<Shared>) -> Response {
    let s = state.lock().expect("sandbox lock");
    Json(json!({"items": s.faults})).into_response()
}

async fn sb_clear_faults(State(state): State<Shared>) -> Response {
    state.lock().expect("sandbox lock").faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn sb_tenants(State(state): State<Shared>) -> Response {
    let s = state.lock().expect("sandbox lock");
    let items: Vec<Value> = (0..s.tenants.len()).map(|i| s.tenant_json(i)).collect();
    Json(json!({"root_tenant_id": s.root, "items": items})).into_response()
}

async fn sb_mutate_tenant(
    State(state): State<Shared>,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Response {
    let change: TenantChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return bad_request(&format!("not a tenant change: {e}")),
    };
    if state.lock().expect("sandbox lock").mutate(id, change) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        envelope(StatusCode::NOT_FOUND, json!(1003), "tenant not found")
    }
}

async fn sb_brand(State(state): State<Shared>, Path(id): Path<Uuid>) -> Response {
    let s = state.lock().expect("sandbox lock");
    let logo_sha = s.logos.get(&id).map(|b| {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(b))
    });
    match s.brands.get(&id) {
        Some(b) => Json(json!({"brand": b, "logo_sha256": logo_sha})).into_response(),
        None => envelope(StatusCode::NOT_FOUND, json!(1003), "no brand"),
    }
}
