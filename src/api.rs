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

use crate::event::{clip, limits, parse_event, FieldError};

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
    pub client: Option<PlatformClient>,
    pub reconcilers: Option<Reconcilers>,
}

/// A refusal: `{"error": {"code", "message", "field"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    fn field(mut self, f: impl Into<String>) -> Self {
        self.field = Some(f.into());
        self
    }
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message).field(field)
    }
    fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({"code": self.code, "message": self.message});
        if let Some(f) = self.field {
            err["field"] = json!(f);
        }
        (self.status, Json(json!({ "error": err }))).into_response()
    }
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    tracing::error!(message = "store error", error = %e);
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("the store cannot take this now: {e}"),
    )
}

pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
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

/// Compare without leaking the position of the first difference through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    if let Some(expected) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
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

// Intake ----------------------------------------------------------------------------------------

async fn post_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !state.accepting.load(Ordering::Acquire) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "statusd is shutting down; retry against the next instance",
        ));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be application/json, got {:?}", clip(ct)),
        )
        .field("Content-Type"));
    }
    let bytes: Bytes = axum::body::to_bytes(body, limits::BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is over {} bytes", limits::BODY_BYTES),
            )
            .field("body")
        })?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("body", format!("malformed JSON: {e}")))?;
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key", "not visible ASCII"))?;
            if k.is_empty() || k.len() > limits::IDEMPOTENCY_KEY {
                return Err(ApiError::invalid(
                    "Idempotency-Key",
                    format!("must be 1 to {} characters", limits::IDEMPOTENCY_KEY),
                ));
            }
            Some(k.to_string())
        }
    };
    let (events, is_array) = match &value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::invalid("body", "the array is empty"));
            }
            if items.len() > limits::EVENTS_PER_REQUEST {
                return Err(ApiError::invalid(
                    "body",
                    format!(
                        "at most {} events per request, got {}",
                        limits::EVENTS_PER_REQUEST,
                        items.len()
                    ),
                ));
            }
            if header_key.is_some() {
                return Err(ApiError::invalid("Idempotency-Key", "the header is for single events; give each array element its own idempotency_key"));
            }
            let events = items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_event(v, &format!("[{i}]."), None))
                .collect::<Result<Vec<_>, _>>()?;
            (events, true)
        }
        Value::Object(_) => (vec![parse_event(&value, "", header_key.as_deref())?], false),
        _ => {
            return Err(ApiError::invalid(
                "body",
                "expected an event object or an array of events",
            ))
        }
    };
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    let outcomes = state.queue.enqueue(events).await.map_err(store_error)?;
    for (o, k) in outcomes.iter().zip(&kinds) {
        if matches!(o, Enqueued::Accepted(_)) {
            state
                .metrics
                .events_accepted
                .get_or_create(&label("type", k.as_str()))
                .inc();
        }
    }
    if is_array {
        let ids: Vec<String> = outcomes.iter().map(|o| o.id().to_string()).collect();
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"ids": ids, "status": "queued"})),
        )
            .into_response());
    }
    Ok(match outcomes[0] {
        Enqueued::Accepted(id) => (
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "status": "queued"})),
        )
            .into_response(),
        Enqueued::Duplicate(id) => {
            let status = state
                .queue
                .event(&id)
                .ok()
                .flatten()
                .map(|e| serde_json::to_value(e.state).unwrap_or(json!("unknown")))
                .unwrap_or(json!("delivered"));
            (
                StatusCode::OK,
                Json(json!({"id": id, "status": status, "duplicate": true})),
            )
                .into_response()
        }
    })
}

// Lookups ---------------------------------------------------------------------------------------

fn parse_id(s: &str, field: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s)
        .map_err(|_| ApiError::invalid(field, format!("{field} is not a UUID: {}", clip(s))))
}

fn event_json(e: &crate::store::EventRecord) -> Value {
    let ms = |v: Option<i64>| {
        v.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339())
    };
    json!({
        "id": e.id,
        "tenant_id": e.tenant_id,
        "type": e.kind,
        "category": e.category,
        "action": e.action,
        "idempotency_key": e.idempotency_key,
        "status": e.state,
        "attempts": e.attempts,
        "last_error": e.last_error,
        "accepted_at": ms(Some(e.accepted_at_ms)),
        "next_attempt_at": ms(e.next_attempt_at_ms),
        "delivered_at": ms(e.delivered_at_ms),
        "dead_reason": e.dead_reason,
    })
}

async fn get_event(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "id")?;
    match state.queue.event(&id).map_err(store_error)? {
        Some(e) => Ok(Json(event_json(&e))),
        None => Err(ApiError::not_found("event")),
    }
}

async fn get_tenant(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "tenant_id")?;
    let st = state.queue.tenant_state(&id).map_err(store_error)?;
    let inv = state.queue.inventory(&id).map_err(store_error)?;
    let pending = state.queue.pending_count(&id);
    if st.is_none() && inv.is_none() && pending == 0 {
        return Err(ApiError::not_found("tenant"));
    }
    let ms = |v: Option<i64>| {
        v.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339())
    };
    Ok(Json(json!({
        "tenant_id": id,
        "intended": st.as_ref().and_then(|s| s.intended),
        "intended_at": ms(st.as_ref().and_then(|s| s.intended_at_ms)),
        "last_reported": st.as_ref().and_then(|s| s.last_reported),
        "last_reported_at": ms(st.as_ref().and_then(|s| s.last_reported_at_ms)),
        "pending": pending,
        "known_to_inventory": inv.is_some(),
        "inventory": inv,
    })))
}

async fn list_tenants(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let items = state.queue.inventory_all().map_err(store_error)?;
    Ok(Json(json!({"count": items.len(), "items": items})))
}

/// What `statusd status` prints.
pub async fn status_report(state: &ApiState) -> Value {
    let q = state.queue.stats();
    let now = crate::store::now_ms();
    let oldest_age = q
        .oldest_pending_accepted_ms
        .map(|t| ((now - t).max(0) as f64) / 1000.0);
    let reconcilers = match &state.reconcilers {
        Some(r) => r.status_json().await,
        None => json!({}),
    };
    let unknown = match &state.reconcilers {
        Some(_) => unknown_tenants(state).unwrap_or_default(),
        None => Vec::new(),
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "accepting": state.accepting.load(Ordering::Acquire),
        "queue": {
            "depth": q.depth,
            "in_flight": q.in_flight,
            "oldest_pending_age_seconds": oldest_age,
            "dead_letters": q.dead_letters,
        },
        "delivery": state.delivery.as_ref().map(|d| d.snapshot()),
        "platform": {
            "base_url": state.client.as_ref().map(|c| c.base_url().to_string()),
            "reachable": state.client.as_ref().map(|c| c.is_up()),
        },
        "reconcilers": reconcilers,
        "unknown_tenants": {"count": unknown.len(), "sample": unknown.iter().take(20).collect::<Vec<_>>()},
    })
}

/// Tenants with a recorded state that the last inventory does not know (only once an inventory
/// exists).
fn unknown_tenants(state: &ApiState) -> Result<Vec<Uuid>, crate::store::StoreError> {
    if state.queue.inventory_len() == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for t in state.queue.tenant_states()? {
        if state.queue.inventory(&t.tenant_id)?.is_none() {
            out.push(t.tenant_id);
        }
    }
    Ok(out)
}

async fn get_status(State(state): State<ApiState>) -> Json<Value> {
    Json(status_report(&state).await)
}

// Dead letters ----------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_dead(
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let items: Vec<Value> = state
        .queue
        .dead_letters(limit)
        .map_err(store_error)?
        .iter()
        .map(event_json)
        .collect();
    Ok(Json(
        json!({"count": items.len(), "total": state.queue.stats().dead_letters, "items": items}),
    ))
}

async fn show_dead(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "id")?;
    match state.queue.event(&id).map_err(store_error)? {
        Some(e) if e.state == crate::store::EventState::Dead => Ok(Json(event_json(&e))),
        _ => Err(ApiError::not_found("dead letter")),
    }
}

async fn retry_dead(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "id")?;
    if state.queue.retry_dead(&id).await.map_err(store_error)? {
        Ok(Json(json!({"id": id, "status": "queued"})))
    } else {
        Err(ApiError::not_found("dead letter"))
    }
}

async fn retry_all_dead(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let n = state.queue.retry_all_dead().await.map_err(store_error)?;
    Ok(Json(json!({"retried": n})))
}

async fn purge_dead(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "id")?;
    if state.queue.purge_dead(&id).await.map_err(store_error)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("dead letter"))
    }
}

// Reconcile -------------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct ReconcileQuery {
    #[serde(default)]
    dry_run: Option<String>,
}

async fn run_reconcile(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<ReconcileQuery>,
) -> Result<Response, ApiError> {
    let kind = crate::reconcile::Kind::parse(&name).ok_or_else(|| {
        ApiError::invalid(
            "name",
            format!(
                "unknown reconciler {:?} (expected tenants, status or branding)",
                clip(&name)
            ),
        )
    })?;
    let dry_run = match q.dry_run.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "dry_run",
                format!("expected true or false, got {:?}", clip(other)),
            ))
        }
    };
    let Some(r) = &state.reconcilers else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "reconcilers are not running",
        ));
    };
    match r.run_now(kind, dry_run).await {
        Ok(report) => Ok((StatusCode::OK, Json(serde_json::to_value(report).unwrap_or(json!({}))))
            .into_response()),
        Err(crate::reconcile::RunError::AlreadyRunning) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_running",
            format!("the {name} reconciler is running a dry run or a real run now; try again when it ends"),
        )),
    }
}

// Health and metrics ----------------------------------------------------------------------------

async fn readyz(State(state): State<ApiState>) -> Response {
    if !state.accepting.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unready", "failing": "shutting_down"})),
        )
            .into_response();
    }
    if !state.queue.healthy() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unready", "failing": "store"})),
        )
            .into_response();
    }
    (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
}

/// Refresh the gauges that are read from the store, then encode.
pub fn refresh_gauges(state: &ApiState) {
    let q = state.queue.stats();
    state.metrics.queue_depth.set(q.depth as i64);
    state.metrics.dead_letters.set(q.dead_letters as i64);
    let age = q
        .oldest_pending_accepted_ms
        .map(|t| ((crate::store::now_ms() - t).max(0) as f64) / 1000.0)
        .unwrap_or(0.0);
    state.metrics.queue_oldest_event_age.set(age);
    state
        .metrics
        .store_size
        .set(i64::try_from(state.queue.size_on_disk()).unwrap_or(i64::MAX));
}

async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    refresh_gauges(&state);
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state.metrics.encode_openmetrics(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.encode_classic(),
        )
            .into_response()
    }
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        include_str!("../docs/openapi.yaml"),
    )
        .into_response()
}
