//! The dead-letter store over HTTP.

use super::answers::{DeadLetters, EventView, Retried};
use super::lookups::parse_id;
use super::*;

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
}

pub(super) async fn list_dead(
    State(state): State<ApiState>,
    JsonQuery(q): JsonQuery<ListQuery>,
) -> Result<Json<DeadLetters>, ApiError> {
    let limit = match q.limit {
        None => 100,
        Some(n @ 1..=10_000) => n,
        Some(n) => {
            return Err(ApiError::invalid(
                "limit",
                format!("must be 1 to 10000, got {n}"),
            ))
        }
    };
    let items: Vec<EventView> = state
        .queue
        .dead_letters(limit)
        .await
        .map_err(store_error)?
        .iter()
        .map(EventView::from)
        .collect();
    Ok(Json(DeadLetters {
        count: items.len(),
        total: state.queue.stats().dead_letters,
        items,
    }))
}

pub(super) async fn show_dead(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    let id = parse_id(&id, "id")?;
    match state.queue.event(&id).await.map_err(store_error)? {
        Some(e) if e.state == crate::store::EventState::Dead => Ok(Json(EventView::from(&e))),
        _ => Err(ApiError::not_found("dead letter")),
    }
}

pub(super) async fn retry_dead(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<answers::Accepted>, ApiError> {
    let id = parse_id(&id, "id")?;
    if state.queue.retry_dead(&id).await.map_err(store_error)? {
        Ok(Json(answers::Accepted {
            id,
            status: crate::store::EventState::Queued,
            duplicate: false,
        }))
    } else {
        Err(ApiError::not_found("dead letter"))
    }
}

pub(super) async fn retry_all_dead(
    State(state): State<ApiState>,
) -> Result<Json<Retried>, ApiError> {
    let n = state.queue.retry_all_dead().await.map_err(store_error)?;
    Ok(Json(Retried { retried: n }))
}

pub(super) async fn purge_dead(
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
