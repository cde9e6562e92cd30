//! Events, tenants and the daemon's status.

use super::answers::{
    DatacenterStatus, EventView, PlatformStatus, QueueStatus, Status, TenantView, Tenants,
};
use super::*;

pub(super) fn parse_id(s: &str, field: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s)
        .map_err(|_| ApiError::invalid(field, format!("{field} is not a UUID: {}", clip(s))))
}

/// An account id from a path.
pub(super) fn parse_id_text(s: &str) -> Result<String, ApiError> {
    if crate::config::valid_account_id(s) {
        Ok(s.to_string())
    } else {
        Err(ApiError::invalid(
            "id",
            format!("not an account id: {}", clip(s)),
        ))
    }
}

pub(super) async fn get_event(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    let id = parse_id(&id, "id")?;
    match state.queue.event(&id).await.map_err(store_error)? {
        Some(e) => Ok(Json(EventView::from(&e))),
        None => Err(ApiError::not_found("event")),
    }
}

pub(super) async fn get_tenant(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let id = parse_id(&id, "tenant_id")?;
    let st = state.queue.tenant_state(&id).await.map_err(store_error)?;
    let inv = state.queue.inventory(&id).await.map_err(store_error)?;
    let pending = state.queue.pending_count(&id).await.map_err(store_error)?;
    if st.is_none() && inv.is_none() && pending == 0 {
        return Err(ApiError::not_found("tenant"));
    }
    Ok(Json(TenantView::new(id, st, inv, pending)))
}

pub(super) async fn list_tenants(State(state): State<ApiState>) -> Result<Json<Tenants>, ApiError> {
    let items = state.queue.inventory_all().await.map_err(store_error)?;
    Ok(Json(Tenants {
        count: items.len(),
        items,
    }))
}

/// What `statusd status` prints.
fn store_status(state: &ApiState) -> answers::StoreStatus {
    let mut out = answers::StoreStatus {
        backend: state.queue.backend_name().into(),
        unavailable: state.queue.unavailable(),
        ..Default::default()
    };
    if let Some(pool) = state.queue.pool() {
        {
            let o = &pool.ownership;
            use std::sync::atomic::Ordering::Relaxed;
            out.member = Some(o.me.clone());
            out.live_members = Some(o.live_members.load(Relaxed));
            out.shards = Some(o.map.shards);
            out.shards_owned = Some(o.owned().len());
            out.shards_unowned = Some(o.unowned.load(Relaxed));
        }
    }
    out
}

pub async fn status_report(state: &ApiState) -> Status {
    let q = state.queue.stats();
    let reconcilers = match &state.reconcilers {
        Some(r) => r.status().await,
        None => Default::default(),
    };
    // The inventory check reads every tenant state: off the async workers.
    let unknown = match &state.reconcilers {
        Some(_) => unknown_tenants(&state.queue).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let write_error = state.queue.write_error();
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        accepting: state.accepting.load(Ordering::Acquire)
            && write_error.is_none()
            && !state.queue.is_full(),
        store_write_error: write_error,
        store_full: state.queue.is_full(),
        queue: QueueStatus {
            depth: q.depth,
            in_flight: q.in_flight,
            oldest_pending_age_seconds: q.oldest_pending_age_ms.map(|ms| ms as f64 / 1000.0),
            dead_letters: q.dead_letters,
        },
        delivery: state.delivery.as_ref().map(|d| d.snapshot()),
        platform: PlatformStatus {
            base_url: state.client.as_ref().map(|c| c.base_url().to_string()),
            reachable: state.client.as_ref().map(|c| c.is_up()),
            authentication_failing: match &state.client {
                Some(c) => c.auth_failure().await,
                None => None,
            },
        },
        datacenters: datacenters(state).await,
        reconcilers,
        fusion: match &state.reconcilers {
            Some(r) => r.fusion_state().await,
            None => None,
        },
        store: Some(store_status(state)),
        unknown_tenants: answers::UnknownTenants {
            count: unknown.len(),
            sample: unknown.into_iter().take(20).collect(),
        },
    }
}

/// The configured accounts grouped by data center.
async fn datacenters(state: &ApiState) -> Vec<DatacenterStatus> {
    let mut out: Vec<DatacenterStatus> = Vec::new();
    for a in state.accounts.iter() {
        let failing = a.client.token_state().await == "failing";
        let up = a.client.is_up();
        match out.iter_mut().find(|d| d.datacenter == a.datacenter) {
            Some(d) => {
                d.accounts += 1;
                d.accounts_failing += usize::from(failing);
                d.reachable |= up;
            }
            None => out.push(DatacenterStatus {
                datacenter: a.datacenter.clone(),
                accounts: 1,
                accounts_failing: usize::from(failing),
                reachable: up,
            }),
        }
    }
    out
}

/// Tenants with a recorded state that the last inventory does not know (only once an inventory
/// exists).
async fn unknown_tenants(queue: &Queue) -> Result<Vec<Uuid>, crate::store::StoreError> {
    let known: std::collections::HashSet<Uuid> = queue
        .inventory_all()
        .await?
        .into_iter()
        .map(|t| t.id)
        .collect();
    if known.is_empty() {
        return Ok(Vec::new());
    }
    Ok(queue
        .tenant_states()
        .await?
        .into_iter()
        .map(|t| t.tenant_id)
        .filter(|id| !known.contains(id))
        .collect())
}

pub(super) async fn get_status(State(state): State<ApiState>) -> Json<Status> {
    Json(status_report(&state).await)
}
