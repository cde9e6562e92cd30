//! `/readyz`, `/metrics` and the API's own description.

use super::*;

pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    if !state.accepting.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unready", "failing": "shutting_down"})),
        )
            .into_response();
    }
    // Anyone may probe: the reason codes are public, the texts (the store's and the
    // platform's errors) are for token holders, in /v1/status.
    // One look at the store's health (sled's reads a key) for the whole probe.
    let health = state.queue.health();
    let failing = match health {
        crate::store::Health::Broken(_) => Some("store"),
        _ if state.queue.is_full() => Some("store_full"),
        crate::store::Health::Unavailable(_) => Some("store_unavailable"),
        crate::store::Health::Ok => None,
    };
    if let Some(failing) = failing {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unready", "failing": failing})),
        )
            .into_response();
    }
    // Refused credentials do not make the daemon unready (it still accepts events durably),
    // but the probe says so.
    let mut body = json!({"status": "ready"});
    if let Some(client) = &state.client {
        if client.auth_failure().await.is_some() {
            body["authentication"] = json!("failing");
        }
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// Refresh the gauges that are read from the store, then encode.
pub async fn refresh_gauges(state: &ApiState) {
    let q = state.queue.stats();
    state.metrics.queue_depth.set(q.depth as i64);
    state.metrics.dead_letters.set(q.dead_letters as i64);
    let age = q.oldest_pending_age_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
    state.metrics.queue_oldest_event_age.set(age);
    for (kind, n) in state.queue.error_counts() {
        let counter = state
            .metrics
            .store_errors
            .get_or_create(&[("kind", kind.as_str().to_string())]);
        counter.inc_by(n.saturating_sub(counter.get()));
    }
    let superseded = state.queue.superseded();
    let counter = &state.metrics.events_superseded;
    counter.inc_by(superseded.saturating_sub(counter.get()));
    state
        .metrics
        .store_writable
        .set(i64::from(state.queue.healthy()));
    state
        .metrics
        .store_full
        .set(i64::from(state.queue.is_full()));
    state
        .metrics
        .store_size
        .set(i64::try_from(state.queue.size().await).unwrap_or(i64::MAX));
    match state.queue.pool() {
        Some(pool) => {
            let o = &pool.ownership;
            use std::sync::atomic::Ordering::Relaxed;
            state.metrics.set_cluster(
                o.live_members.load(Relaxed),
                o.owned().len() as u64,
                o.unowned.load(Relaxed),
                o.transitions.load(Relaxed),
                o.fenced_writes.load(Relaxed),
            );
        }
        None => state
            .metrics
            .set_cluster(1, u64::from(state.shards), 0, 0, 0),
    }
}

/// `GET /v1/cluster`: the members and their heartbeat ages, the shards each holds, the epochs,
/// and the shards nobody holds. With sled, this one process owns every shard.
pub(super) async fn get_cluster(State(state): State<ApiState>) -> Result<Response, ApiError> {
    match state.queue.pool() {
        Some(pool) => {
            let view = crate::cluster::ClusterView::read(
                &*pool.leases,
                &pool.ownership,
                state.queue.backend_name(),
            )
            .await
            .map_err(super::store_error)?;
            Ok(Json(view).into_response())
        }
        None => Ok(Json(json!({
            "backend": state.queue.backend_name(),
            "shards": state.shards,
            "members": [{"id": "local", "me": true, "shards_owned": state.shards}],
            "unowned": [],
        }))
        .into_response()),
    }
}

/// Count the accounts by the state of their token.
async fn refresh_accounts(state: &ApiState) {
    let mut counts = std::collections::HashMap::new();
    for a in state.accounts.iter() {
        *counts.entry(a.client.token_state().await).or_insert(0i64) += 1;
    }
    for s in ["ok", "failing", "unknown"] {
        state
            .metrics
            .accounts
            .get_or_create(&label("state", s))
            .set(counts.get(s).copied().unwrap_or(0));
    }
}

pub(super) async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    refresh_gauges(&state).await;
    refresh_accounts(&state).await;
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

/// The API's description, as deployed: the accounts an event may name are this daemon's.
pub(super) async fn openapi(State(state): State<ApiState>) -> Response {
    let mut doc: Value = serde_json::from_str(include_str!("../../docs/openapi.json"))
        .expect("docs/openapi.json is JSON");
    let ids: Vec<Value> = state.accounts.iter().map(|a| json!(a.id)).collect();
    // An event may leave its account out (null): nullable with an enum needs null listed too.
    let nullable_ids: Vec<Value> = ids.iter().cloned().chain([Value::Null]).collect();
    if !ids.is_empty() {
        if let Some(shapes) = doc
            .pointer_mut("/components/schemas/Event/oneOf")
            .and_then(Value::as_array_mut)
        {
            for shape in shapes {
                shape["properties"]["account"]["enum"] = json!(nullable_ids);
            }
        }
        if let Some(param) = doc.pointer_mut("/paths/~1v1~1accounts~1{id}/get/parameters/0/schema")
        {
            param["enum"] = json!(ids);
        }
    }
    Json(doc).into_response()
}
