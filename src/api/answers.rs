//! The answers of the local API as types: the server writes them and `statusd`'s own client
//! commands read them, so both sides agree by construction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::delivery::DeliverySnapshot;
use crate::reconcile::LastRun;
use crate::store::{EventKind, EventRecord, EventState, IntegrationState, InventoryTenant};

fn rfc3339(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339())
}

/// One event (`GET /v1/events/{id}`, dead letters).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventView {
    pub id: Uuid,
    pub tenant_id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub category: String,
    pub action: String,
    pub idempotency_key: Option<String>,
    pub status: EventState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub accepted_at: Option<String>,
    /// When the vendor said it happened, if it said.
    #[serde(default)]
    pub occurred_at: Option<String>,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub dead_reason: Option<String>,
}

impl From<&EventRecord> for EventView {
    fn from(e: &EventRecord) -> EventView {
        EventView {
            id: e.id,
            tenant_id: e.tenant_id,
            kind: e.kind,
            category: e.category.clone(),
            action: e.action.clone(),
            idempotency_key: e.idempotency_key.clone(),
            status: e.state,
            attempts: e.attempts,
            last_error: e.last_error.clone(),
            accepted_at: rfc3339(Some(e.accepted_at_ms)),
            occurred_at: rfc3339(e.occurred_at_ms),
            next_attempt_at: rfc3339(e.next_attempt_at_ms),
            delivered_at: rfc3339(e.delivered_at_ms),
            dead_reason: e.dead_reason.clone(),
        }
    }
}

/// `GET /v1/dead-letters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetters {
    pub count: usize,
    pub total: u64,
    pub items: Vec<EventView>,
}

/// `GET /v1/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tenants {
    pub count: usize,
    pub items: Vec<InventoryTenant>,
}

/// `GET /v1/tenants/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantView {
    pub tenant_id: Uuid,
    pub intended: Option<IntegrationState>,
    pub intended_at: Option<String>,
    pub last_reported: Option<IntegrationState>,
    pub last_reported_at: Option<String>,
    pub pending: usize,
    pub known_to_inventory: bool,
    pub inventory: Option<InventoryTenant>,
}

impl TenantView {
    pub fn new(
        tenant_id: Uuid,
        state: Option<crate::store::TenantState>,
        inventory: Option<InventoryTenant>,
        pending: usize,
    ) -> TenantView {
        TenantView {
            tenant_id,
            intended: state.as_ref().and_then(|s| s.intended),
            intended_at: rfc3339(state.as_ref().and_then(|s| s.intended_at_ms)),
            last_reported: state.as_ref().and_then(|s| s.last_reported),
            last_reported_at: rfc3339(state.as_ref().and_then(|s| s.last_reported_at_ms)),
            pending,
            known_to_inventory: inventory.is_some(),
            inventory,
        }
    }
}

/// `POST /v1/events` with one event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    pub id: Uuid,
    /// `queued`, or the event's state when its idempotency key was seen before.
    pub status: EventState,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `POST /v1/events` with an array.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcceptedMany {
    pub ids: Vec<Uuid>,
    pub status: EventState,
}

/// `POST /v1/dead-letters/retry-all`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Retried {
    pub retried: usize,
}

/// `GET /v1/accounts/{id}`, and each item of `GET /v1/accounts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountView {
    pub id: String,
    pub datacenter_url: String,
    pub datacenter: String,
    /// `file` (the configuration file: fixed) or `api` (added at run time, kept in the store).
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub client_id: String,
    /// The API client's tenant and its name, as the data center answered when it was added.
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    #[serde(default)]
    pub tenant_name: Option<String>,
    /// A deactivation asked for it to go once its events are settled.
    #[serde(default)]
    pub retiring: bool,
    pub root_tenant_id: Option<Uuid>,
    /// `ok`, `failing` (with `token_error`) or `unknown` (not used yet).
    pub token: String,
    pub token_error: Option<crate::platform::AuthFailure>,
    pub pending_events: u64,
    pub dead_letters: u64,
    pub tenants_known: u64,
}

/// `POST /v1/accounts` and `PUT /v1/accounts/{id}/credentials`: the account, and the
/// activation stored with it (`?activate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountChanged {
    #[serde(flatten)]
    pub account: AccountView,
    #[serde(default)]
    pub activation: Option<Accepted>,
}

/// `DELETE /v1/accounts/{id}`: what went with the account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountRemoved {
    pub id: String,
    pub removed: bool,
    pub dropped: crate::store::AccountDropped,
}

/// `GET /v1/accounts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountsList {
    pub count: usize,
    pub items: Vec<AccountView>,
}

/// `GET /v1/status`: what `statusd status` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub accepting: bool,
    /// Why the store cannot write, while it cannot (intake answers 503, delivery pauses).
    #[serde(default)]
    pub store_write_error: Option<String>,
    /// The store is at `store.max_size`: intake answers 507 until delivery frees room.
    #[serde(default)]
    pub store_full: bool,
    pub queue: QueueStatus,
    pub delivery: Option<DeliverySnapshot>,
    pub platform: PlatformStatus,
    /// Each data center of the configured accounts.
    #[serde(default)]
    pub datacenters: Vec<DatacenterStatus>,
    pub reconcilers: BTreeMap<String, LastRun>,
    /// The Fusion session (`logged_in`, `code_required`, `refused`, `unknown`), when configured.
    #[serde(default)]
    pub fusion: Option<crate::platform::FusionState>,
    pub unknown_tenants: UnknownTenants,
    /// The store's backend, and on a shared PostgreSQL store the pool as this replica sees it.
    #[serde(default)]
    pub store: Option<StoreStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreStatus {
    pub backend: String,
    /// Why the database cannot be reached, while it cannot.
    #[serde(default)]
    pub unavailable: Option<String>,
    #[serde(default)]
    pub member: Option<String>,
    #[serde(default)]
    pub live_members: Option<u64>,
    #[serde(default)]
    pub shards: Option<u32>,
    #[serde(default)]
    pub shards_owned: Option<usize>,
    #[serde(default)]
    pub shards_unowned: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueStatus {
    pub depth: u64,
    pub in_flight: u64,
    pub oldest_pending_age_seconds: Option<f64>,
    pub dead_letters: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlatformStatus {
    pub base_url: Option<String>,
    pub reachable: Option<bool>,
    /// Set while the token endpoint refuses the credentials ("authentication failing").
    #[serde(default)]
    pub authentication_failing: Option<crate::platform::AuthFailure>,
}

/// One data center as `statusd status` summarises it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatacenterStatus {
    pub datacenter: String,
    pub accounts: usize,
    /// Accounts whose credentials the data center refuses.
    pub accounts_failing: usize,
    /// Whether the last call of any of its accounts got an answer.
    pub reachable: bool,
}

/// Tenants with a recorded state that the last inventory does not know.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UnknownTenants {
    pub count: usize,
    pub sample: Vec<Uuid>,
}
