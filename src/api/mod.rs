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

#[derive(Clone)]
pub struct ApiState {
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub token: Option<Secret>,
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
}

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

/// A store that cannot answer: 503 `store_unavailable`, to be retried after a moment (nothing
/// was stored, or the same request with the same idempotency key answers what was).
pub(super) fn store_error(e: crate::store::StoreError) -> ApiError {
    tracing::error!(message = "store error", error = %e);
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("the store cannot take this now: {e}"),
    );
    err.retry_after = Some(STORE_RETRY_AFTER_SECS);
    err
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

pub(super) async fn require_token(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        let ok =
            given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.expose().as_bytes()));
        if !ok {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer <api.token>)",
            )
            .field("Authorization")
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    next.run(req).await
}
