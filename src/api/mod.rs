//! The local API (spec §3): event intake, lookups, status, dead letters, reconcile triggers,
//! health and metrics. Knows nothing of sled: it goes through [`Queue`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::config::Secret;
use crate::delivery::Delivery;
use crate::metrics::{label, Metrics};
use crate::platform::PlatformClient;
use crate::reconcile::Reconcilers;
use crate::store::{Enqueued, EventKind, Queue};

use crate::event::{clip, limits, FieldError};

mod accounts;
pub mod answers;
mod dead;
mod health;
mod intake;
mod lookups;
mod reconcile;
mod serve;

use accounts::*;
use dead::*;
pub use health::refresh_gauges;
use health::*;
use intake::*;
pub use lookups::status_report;
use lookups::*;
use reconcile::*;
pub use serve::{serve, ServeLimits};

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        ApiError::invalid(e.field, e.message)
    }
}

/// What every handler shares, behind one `Arc` ([`ApiState`]): a request clones a pointer,
/// not a struct of many handles.
#[derive(Clone)]
pub struct ApiState(Arc<ApiParts>);

impl From<ApiParts> for ApiState {
    fn from(parts: ApiParts) -> ApiState {
        ApiState(Arc::new(parts))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiParts;
    fn deref(&self) -> &ApiParts {
        &self.0
    }
}

pub struct ApiParts {
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    /// The intake and read role's token.
    pub token: Option<Secret>,
    /// The admin role's token (unset: `token` has both roles).
    pub admin_token: Option<Secret>,
    /// False while shutting down: intake answers 503 and `/readyz` fails.
    pub accepting: Arc<AtomicBool>,
    pub delivery: Option<Delivery>,
    /// The first account's client (the status page's platform).
    pub client: Option<PlatformClient>,
    pub accounts: crate::accounts::Accounts,
    pub reconcilers: Option<Reconcilers>,
    /// How long a client may take to send a request body.
    pub read_timeout: std::time::Duration,
    /// The key that seals the secrets of accounts added here (none: adding is refused).
    pub secret_key: Option<crate::vault::SecretKey>,
    /// Taken while an account change is checked and written (never while a data center is
    /// asked), so two changes of one id cannot interleave.
    pub account_changes: Arc<tokio::sync::Mutex<()>>,
    /// `cluster.shards` (with sled this one process owns them all).
    pub shards: u32,
    /// When a Fusion login without a code (which sends the user a second factor's code) was
    /// last asked for: at most one per [`FUSION_LOGIN_EVERY`].
    pub fusion_login_at: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

/// The least time between two Fusion logins that may send the user a new code.
pub const FUSION_LOGIN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A refusal: `{"error": {"code", "message", "field"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }
    pub(super) fn field(mut self, f: impl Into<String>) -> Self {
        self.field = Some(f.into());
        self
    }
    pub(super) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message).field(field)
    }
    pub(super) fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
}

/// A query string read into `T`, refused as JSON naming the query when it does not parse.
pub(super) struct JsonQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for JsonQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(JsonQuery(q)),
            Err(e) => Err(ApiError::invalid("query", e.body_text())),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({"code": self.code, "message": self.message});
        if let Some(f) = self.field {
            err["field"] = json!(f);
        }
        let mut response = (self.status, Json(json!({ "error": err }))).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        response
    }
}

/// A store error as an answer, by what it means: the store cannot answer now (503 with
/// Retry-After: nothing was stored, or the same request with the same idempotency key answers
/// what was), a damaged record (500: a retry does not help), or a refusal (a write fenced off
/// by another replica: 409; a statement the database refused: 500).
pub(super) fn store_error(e: crate::store::StoreError) -> ApiError {
    use crate::store::{ErrorKind, StoreError};
    tracing::error!(message = "store error", error = %e, kind = e.kind().as_str());
    match e.kind() {
        ErrorKind::Unavailable => {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("the store cannot take this now: {e}"),
            );
            err.retry_after = Some(STORE_RETRY_AFTER_SECS);
            err
        }
        ErrorKind::Damaged => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_damaged",
            format!("the store holds a damaged record: {e}"),
        ),
        ErrorKind::Refused if matches!(e, StoreError::Fenced(_)) => ApiError::new(
            StatusCode::CONFLICT,
            "fenced",
            format!("{e}: that replica acts for it now"),
        ),
        ErrorKind::Refused => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_refused",
            format!("the store refused the request: {e}"),
        ),
    }
}

/// The `Retry-After` of a 503 for a store that cannot answer.
const STORE_RETRY_AFTER_SECS: u64 = 2;

pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/accounts", get(list_accounts).post(add_account))
        .route("/accounts/{id}", get(get_account).delete(remove_account))
        .route(
            "/accounts/{id}/credentials",
            axum::routing::put(rotate_credentials),
        )
        .route("/events", post(post_events))
        .route("/events/{id}", get(get_event))
        .route("/tenants/{id}", get(get_tenant))
        .route("/tenants", get(list_tenants))
        .route("/status", get(get_status))
        .route("/dead-letters", get(list_dead))
        .route("/dead-letters/retry-all", post(retry_all_dead))
        .route("/dead-letters/{id}", get(show_dead).delete(purge_dead))
        .route("/dead-letters/{id}/retry", post(retry_dead))
        .route("/reconcile/{name}", post(run_reconcile))
        .route("/fusion/login", post(fusion_login))
        .route("/cluster", get(get_cluster))
        .route("/openapi.json", get(openapi))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .nest("/v1", v1)
        .route("/livez", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        // The body limit is enforced by the handler so the refusal is a JSON error.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Compare without leaking the position of the first difference through timing.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a request needs: the intake and read role, or the admin role (changes to accounts,
/// dead letters, reconcilers, the Fusion login).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Intake,
    Admin,
}

/// The role a route of `/v1` needs: every read, and posting events, is intake; every other
/// change is admin.
fn role_of(method: &axum::http::Method, path: &str) -> Role {
    let path = path.trim_start_matches("/v1");
    if method == axum::http::Method::GET
        || method == axum::http::Method::HEAD
        || (method == axum::http::Method::POST && path == "/events")
    {
        Role::Intake
    } else {
        Role::Admin
    }
}

/// A `Host` header naming this machine: `localhost`, a loopback address, with or without a
/// port. A request from a web page (DNS rebinding) names the page's host instead.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or("")
    } else {
        host
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn unauthorized(role: Role) -> Response {
    let which = match role {
        Role::Intake => "api.token",
        Role::Admin => "api.admin_token",
    };
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("missing or wrong bearer token (Authorization: Bearer <{which}>)"),
    )
    .field("Authorization")
    .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

pub(super) async fn require_token(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let role = role_of(req.method(), req.uri().path());
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let is = |t: Option<&Secret>| {
        t.zip(given)
            .is_some_and(|(t, g)| constant_time_eq(g.as_bytes(), t.expose().as_bytes()))
    };
    // The token that guards the role: intake has `api.token`; admin has `api.admin_token`,
    // else `api.token` (one token with both roles).
    let guard = match role {
        Role::Intake => state.token.as_ref(),
        Role::Admin => state.admin_token.as_ref().or(state.token.as_ref()),
    };
    let Some(expected) = guard else {
        // Open (the settings allow that on loopback only), but never to a request addressed
        // to another host.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !loopback_host(host) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                "without api.token, statusd answers only requests addressed to this machine (Host: localhost or a loopback address)",
            )
            .field("Host")
            .into_response();
        }
        return next.run(req).await;
    };
    // The admin token has the intake role too.
    if is(Some(expected)) || (role == Role::Intake && is(state.admin_token.as_ref())) {
        return next.run(req).await;
    }
    if role == Role::Admin && state.admin_token.is_some() && is(state.token.as_ref()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token has the intake role; changing accounts, dead letters, reconcilers or the Fusion login needs the admin role (Authorization: Bearer <api.admin_token>)",
        )
        .field("Authorization")
        .into_response();
    }
    unauthorized(role)
}

#[cfg(test)]
mod role_tests {
    use super::*;

    #[test]
    fn reads_and_intake_need_the_intake_role_every_change_the_admin_role() {
        use axum::http::Method;
        assert_eq!(role_of(&Method::POST, "/v1/events"), Role::Intake);
        assert_eq!(role_of(&Method::GET, "/v1/accounts"), Role::Intake);
        for (m, p) in [
            (Method::POST, "/v1/accounts"),
            (Method::PUT, "/v1/accounts/a/credentials"),
            (Method::DELETE, "/v1/accounts/a"),
            (Method::POST, "/v1/dead-letters/retry-all"),
            (Method::DELETE, "/v1/dead-letters/x"),
            (Method::POST, "/v1/reconcile/tenants"),
            (Method::POST, "/v1/fusion/login"),
        ] {
            assert_eq!(role_of(&m, p), Role::Admin, "{m} {p}");
        }
    }

    #[test]
    fn only_loopback_hosts_are_this_machine() {
        for h in [
            "localhost",
            "LOCALHOST:8750",
            "127.0.0.1",
            "127.0.0.1:8750",
            "[::1]:8750",
            "::1",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8750",
            "10.0.0.1:80",
            "",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }
}
