//! The partner accounts: where each reports, its token, and its events.

use super::answers::{AccountView, AccountsList};
use super::lookups::parse_id_text;
use super::*;
use crate::accounts::Account;
use crate::config::DEFAULT_ACCOUNT;

/// Events and tenants per account, counted in one pass over the store.
#[derive(Default, Clone, Copy)]
struct Counts {
    pending: u64,
    dead: u64,
    tenants: u64,
}

fn counts(
    queue: &Queue,
) -> Result<std::collections::HashMap<String, Counts>, crate::store::StoreError> {
    let mut out: std::collections::HashMap<String, Counts> = Default::default();
    let key = |a: Option<String>| a.unwrap_or_else(|| DEFAULT_ACCOUNT.to_string());
    for e in queue.pending_records()? {
        out.entry(key(e.account)).or_default().pending += 1;
    }
    for e in queue.dead_letters(usize::MAX)? {
        out.entry(key(e.account)).or_default().dead += 1;
    }
    for t in queue.inventory_all()? {
        out.entry(key(t.account)).or_default().tenants += 1;
    }
    Ok(out)
}

async fn view(a: &Account, c: Counts) -> AccountView {
    AccountView {
        id: a.id.clone(),
        datacenter_url: a.datacenter_url.clone(),
        datacenter: a.datacenter.clone(),
        root_tenant_id: a.root_tenant_id,
        token: a.client.token_state().await.to_string(),
        token_error: a.client.auth_failure().await,
        pending_events: c.pending,
        dead_letters: c.dead,
        tenants_known: c.tenants,
    }
}

pub(super) async fn list_accounts(
    State(state): State<ApiState>,
) -> Result<Json<AccountsList>, ApiError> {
    let counts = state.queue.scan(counts).await.map_err(store_error)?;
    let mut items = Vec::new();
    for a in state.accounts.iter() {
        items.push(view(a, counts.get(&a.id).copied().unwrap_or_default()).await);
    }
    Ok(Json(AccountsList {
        count: items.len(),
        items,
    }))
}

pub(super) async fn get_account(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let id = parse_id_text(&id)?;
    let Some(a) = state.accounts.get(&id) else {
        return Err(ApiError::not_found("account"));
    };
    let counts = state.queue.scan(counts).await.map_err(store_error)?;
    Ok(Json(
        view(a, counts.get(&a.id).copied().unwrap_or_default()).await,
    ))
}
