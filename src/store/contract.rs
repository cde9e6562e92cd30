//! The contract every store backend keeps. `Queue` holds one backend behind it; a third backend
//! is one more folder beside `sled/` and `pg/` implementing this trait.
//!
//! Methods are async wherever either backend needs it (PostgreSQL answers over the network,
//! sled's scans run on blocking threads); what both keep in memory (the heads of the tenants'
//! queues, the counters) is read synchronously. A feature only one backend has is a capability,
//! asked for through a method answering `None` by default: a size bound (`bound`), a store the
//! replicas of a pool share (`shared`).

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use super::*;
use crate::cluster::{LeaseStore, Ownership};

/// Whether a store can take writes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// It cannot write until it is opened again (a full disk, an I/O error, a stopped writer).
    Broken(String),
    /// Its database cannot be reached now; it resumes by itself.
    Unavailable(String),
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The name `store.backend` gives it.
    fn name(&self) -> &'static str;

    // Intake and state ---------------------------------------------------------------------------

    /// Accept events: all are stored, or none; answered once durable (flushed, or committed).
    /// Events with a known idempotency key are not stored again.
    async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError>;
    /// Wait until events were accepted (or retried) for some tenant, and return those tenants.
    async fn woken_tenants(&self) -> Vec<TenantId>;
    /// Wait until every write answered before this call is durable.
    async fn sync(&self) -> Result<(), StoreError>;
    fn stats(&self) -> QueueStats;
    fn flush_stats(&self) -> FlushStats;
    /// Bytes the store occupies (files, or tables and indexes).
    async fn size(&self) -> u64;
    fn health(&self) -> Health;
    /// Pending events and dead letters, counted from the records (not the kept counters).
    async fn recount(&self) -> Result<(u64, u64), StoreError>;
    /// Remove delivered events past their retention; answers how many.
    async fn compact(&self, now_ms: i64) -> Result<usize, StoreError>;

    // Delivery -----------------------------------------------------------------------------------

    async fn event(&self, id: &Uuid) -> Result<Option<EventRecord>, StoreError>;
    /// Tenants with pending events (from memory).
    fn pending_tenants(&self) -> Vec<TenantId>;
    fn has_pending(&self, tenant: &TenantId) -> bool;
    async fn pending_count(&self, tenant: &TenantId) -> Result<usize, StoreError>;
    /// The account of a tenant's oldest pending event (from memory).
    fn head_account(&self, tenant: &TenantId) -> Option<String>;
    async fn pending_records(&self) -> Result<Vec<EventRecord>, StoreError>;
    async fn pending_events(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError>;
    /// A batch of at most `max` of the tenant's oldest events, of one account not in `skip`
    /// (cut by [`cut_batch`](super::batches::cut_batch)).
    async fn take_batch(
        &self,
        tenant: &TenantId,
        max: usize,
        skip: &[String],
    ) -> Result<Take, StoreError>;
    async fn ack_delivered(&self, batch: &Batch) -> Result<(), StoreError>;
    async fn mark_failed(
        &self,
        batch: &Batch,
        error: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError>;
    async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<(), StoreError>;

    // Dead letters -------------------------------------------------------------------------------

    async fn dead_letters(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
    /// Queue dead letters again (these, or every one); answers how many.
    async fn requeue_dead(&self, ids: Option<&[Uuid]>) -> Result<usize, StoreError>;
    async fn purge_dead(&self, id: &Uuid) -> Result<bool, StoreError>;

    // Tenants, inventory, documents --------------------------------------------------------------

    async fn tenant_state(&self, tenant: &TenantId) -> Result<Option<TenantState>, StoreError>;
    async fn tenant_states(&self) -> Result<Vec<TenantState>, StoreError>;
    async fn inventory(&self, tenant: &TenantId) -> Result<Option<InventoryTenant>, StoreError>;
    async fn inventory_all(&self) -> Result<Vec<InventoryTenant>, StoreError>;
    async fn inventory_len(&self) -> Result<usize, StoreError>;
    /// Write inventory records; with an account, its whole inventory is replaced (other
    /// accounts' records stay).
    async fn write_inventory(
        &self,
        tenants: &[InventoryTenant],
        account: Option<&str>,
    ) -> Result<(), StoreError>;
    async fn get_doc(&self, name: &str) -> Result<Option<serde_json::Value>, StoreError>;
    async fn put_doc(&self, name: &str, value: serde_json::Value) -> Result<(), StoreError>;

    // Accounts -----------------------------------------------------------------------------------

    async fn stored_accounts(&self) -> Result<Vec<StoredAccount>, StoreError>;
    async fn stored_account(&self, id: &str) -> Result<Option<StoredAccount>, StoreError>;
    async fn write_account(
        &self,
        change: AccountWrite,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Enqueued>, StoreError>;
    async fn account_events(&self, id: &str) -> Result<AccountEvents, StoreError>;
    /// Every account's pending events and dead letters, without reading the events.
    async fn account_counts(&self) -> Result<AccountCounts, StoreError>;
    async fn remove_account(&self, id: &str, force: bool) -> Result<Removal, StoreError>;

    /// Decisions this handle set aside since the store was opened (older than one already
    /// reported: recorded as delivered, never sent).
    fn superseded(&self) -> u64;

    // Capabilities -------------------------------------------------------------------------------

    /// A bound on the store's size (`store.max_size`), when the backend keeps one.
    fn bound(&self) -> Option<&dyn SizeBound> {
        None
    }

    /// The store as replicas of a pool share it, when it can be shared.
    fn shared(&self) -> Option<&dyn Shared> {
        None
    }

    /// Stop the backend's own tasks; the handle answers `Closed` from then on.
    fn close(&self) {}
}

/// A store with a bound on its size: past it, intake is refused and delivery goes on.
#[async_trait]
pub trait SizeBound: Send + Sync {
    fn set_max_size(&self, max: Option<u64>);
    fn is_full(&self) -> bool;
    /// Measure the size against the bound (and change `is_full` accordingly).
    async fn check_bound(&self) -> Result<BoundState, StoreError>;
}

/// The leases of a shared store, as the membership loop uses them.
pub type PoolStore = dyn LeaseStore<Error = StoreError>;

/// A store the replicas of a pool share: its leases, and the fence on its writes.
pub trait Shared: Send + Sync {
    fn leases(&self) -> Arc<PoolStore>;
    /// From now on, write a shard's state only while `own` holds it (set once, on joining).
    fn fence_by(&self, own: Arc<Ownership>);
    fn ownership(&self) -> Option<&Arc<Ownership>>;
}
