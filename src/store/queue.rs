//! The store handle the daemon uses, over whichever backend the settings chose. Everything
//! outside `store/` goes through `Queue`; none of it names a backend.

use std::sync::Arc;

use super::contract::{Backend, Health, PoolStore, Shared, SizeBound};
use super::pg::{PgOptions, PgQueue};
use super::sled::SledQueue;
use super::*;
use crate::cluster::Ownership;

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    backend: Arc<dyn Backend>,
    /// Errors answered, by kind (`statusd_store_errors_total`).
    errors: Arc<[std::sync::atomic::AtomicU64; 3]>,
}

/// A replica's place in the pool sharing its store: the leases, and what it holds.
#[derive(Clone)]
pub struct Pool {
    pub leases: Arc<PoolStore>,
    pub ownership: Arc<Ownership>,
}

impl Queue {
    /// Open (or create) the sled store at `path`.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Queue, StoreError> {
        Ok(Queue::on(SledQueue::open(path, options)?))
    }

    /// Connect to the PostgreSQL store, migrating its schema to this build's version.
    pub async fn open_postgres(pg: &PgOptions, options: StoreOptions) -> Result<Queue, StoreError> {
        Ok(Queue::on(PgQueue::open(pg, options).await?))
    }

    /// A handle on any backend.
    pub fn on(backend: impl Backend) -> Queue {
        Queue {
            backend: Arc::new(backend),
            errors: Arc::default(),
        }
    }

    /// Count an error by its kind on its way out.
    fn seen<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            let kind = e.kind();
            self.errors[kind as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if kind == ErrorKind::Damaged {
                tracing::error!(message = "the store holds a damaged record", error = %e);
            }
        }
        result
    }

    /// Errors the store answered since it was opened, by kind.
    pub fn error_counts(&self) -> [(ErrorKind, u64); 3] {
        use std::sync::atomic::Ordering::Relaxed;
        ErrorKind::ALL.map(|k| (k, self.errors[k as usize].load(Relaxed)))
    }

    /// Decisions set aside since the store was opened (older than one already reported).
    pub fn superseded(&self) -> u64 {
        self.backend.superseded()
    }

    /// The backend's name, as `store.backend` writes it.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Accept events: all are stored, or none; answered once durable (flushed, or committed).
    pub async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError> {
        self.seen(self.backend.enqueue(events).await)
    }

    /// Wait until events were accepted (or retried) for some tenant, and return those tenants.
    pub async fn woken_tenants(&self) -> Vec<TenantId> {
        self.backend.woken_tenants().await
    }

    /// Wait until every write made before this call is durable.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.seen(self.backend.sync().await)
    }

    pub fn stats(&self) -> QueueStats {
        self.backend.stats()
    }

    pub fn flush_stats(&self) -> FlushStats {
        self.backend.flush_stats()
    }

    /// Bytes the store occupies (sled: its files; Postgres: its tables and indexes).
    pub async fn size(&self) -> u64 {
        self.backend.size().await
    }

    pub fn health(&self) -> Health {
        self.backend.health()
    }

    /// Whether events can be accepted durably now.
    pub fn healthy(&self) -> bool {
        self.health() == Health::Ok
    }

    /// Why the store cannot write any more until it is opened again (a full disk, an I/O error).
    pub fn write_error(&self) -> Option<String> {
        match self.health() {
            Health::Broken(why) => Some(why),
            _ => None,
        }
    }

    /// Why the store's database cannot be reached now (it resumes by itself).
    pub fn unavailable(&self) -> Option<String> {
        match self.health() {
            Health::Unavailable(why) => Some(why),
            _ => None,
        }
    }

    pub async fn recount(&self) -> Result<(u64, u64), StoreError> {
        self.seen(self.backend.recount().await)
    }

    /// The bound on the store's size, when its backend keeps one (sled: `store.max_size`).
    pub fn bound(&self) -> Option<&dyn SizeBound> {
        self.backend.bound()
    }

    /// Whether the store is past its bound (intake refused).
    pub fn is_full(&self) -> bool {
        self.bound().is_some_and(|b| b.is_full())
    }

    pub async fn compact(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.seen(self.backend.compact(now_ms).await)
    }

    // Delivery ----------------------------------------------------------------------------------

    pub async fn event(&self, id: &Uuid) -> Result<Option<EventRecord>, StoreError> {
        self.seen(self.backend.event(id).await)
    }

    /// Tenants that have pending events (from memory).
    pub fn pending_tenants(&self) -> Vec<TenantId> {
        self.backend.pending_tenants()
    }

    /// Whether a tenant has pending events (from memory).
    pub fn has_pending(&self, tenant: &TenantId) -> bool {
        self.backend.has_pending(tenant)
    }

    pub async fn pending_count(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        self.seen(self.backend.pending_count(tenant).await)
    }

    /// The account of a tenant's oldest pending event.
    pub fn head_account(&self, tenant: &TenantId) -> Option<String> {
        self.backend.head_account(tenant)
    }

    /// Every pending event's record.
    pub async fn pending_records(&self) -> Result<Vec<EventRecord>, StoreError> {
        self.seen(self.backend.pending_records().await)
    }

    pub async fn pending_events(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.seen(self.backend.pending_events(tenant, limit).await)
    }

    pub async fn take_batch(&self, tenant: &TenantId, max: usize) -> Result<Take, StoreError> {
        self.seen(self.backend.take_batch(tenant, max, &[]).await)
    }

    /// A batch of the tenant's oldest events of an account not in `skip` (accounts that cannot
    /// send now): their events wait in place while another account's go.
    pub async fn take_batch_skipping(
        &self,
        tenant: &TenantId,
        max: usize,
        skip: &[String],
    ) -> Result<Take, StoreError> {
        self.seen(self.backend.take_batch(tenant, max, skip).await)
    }

    pub async fn ack_delivered(&self, batch: &Batch) -> Result<(), StoreError> {
        self.seen(self.backend.ack_delivered(batch).await)
    }

    pub async fn mark_failed(
        &self,
        batch: &Batch,
        error: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.seen(
            self.backend
                .mark_failed(batch, error, next_attempt_at_ms)
                .await,
        )
    }

    /// Give the batch back untouched.
    pub fn return_batch(&self, batch: &Batch) {
        batch.release();
    }

    pub async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<(), StoreError> {
        self.seen(self.backend.dead_letter(batch, reason).await)
    }

    // Dead letters --------------------------------------------------------------------------------

    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.seen(self.backend.dead_letters(limit).await)
    }

    pub async fn retry_dead(&self, id: &Uuid) -> Result<bool, StoreError> {
        Ok(self.seen(self.backend.requeue_dead(Some(&[*id])).await)? == 1)
    }

    pub async fn retry_all_dead(&self) -> Result<usize, StoreError> {
        self.seen(self.backend.requeue_dead(None).await)
    }

    pub async fn purge_dead(&self, id: &Uuid) -> Result<bool, StoreError> {
        self.seen(self.backend.purge_dead(id).await)
    }

    // Tenants, inventory, documents -------------------------------------------------------------

    pub async fn tenant_state(&self, tenant: &TenantId) -> Result<Option<TenantState>, StoreError> {
        self.seen(self.backend.tenant_state(tenant).await)
    }

    pub async fn tenant_states(&self) -> Result<Vec<TenantState>, StoreError> {
        self.seen(self.backend.tenant_states().await)
    }

    pub async fn inventory(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<InventoryTenant>, StoreError> {
        self.seen(self.backend.inventory(tenant).await)
    }

    pub async fn inventory_all(&self) -> Result<Vec<InventoryTenant>, StoreError> {
        self.seen(self.backend.inventory_all().await)
    }

    pub async fn inventory_len(&self) -> Result<usize, StoreError> {
        self.seen(self.backend.inventory_len().await)
    }

    pub async fn put_inventory(&self, tenants: &[InventoryTenant]) -> Result<(), StoreError> {
        self.seen(self.backend.write_inventory(tenants, None).await)
    }

    /// Replace an account's whole inventory; other accounts' records stay.
    pub async fn replace_inventory(
        &self,
        account: &str,
        tenants: &[InventoryTenant],
    ) -> Result<(), StoreError> {
        self.seen(self.backend.write_inventory(tenants, Some(account)).await)
    }

    /// A document (a reconciler's last run, the intended branding): JSON under a name.
    pub async fn get_doc<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let doc = self.seen(self.backend.get_doc(name).await)?;
        self.seen(
            doc.map(|v| {
                serde_json::from_value(v)
                    .map_err(|e| StoreError::Corrupt(format!("document {name:?}: {e}")))
            })
            .transpose(),
        )
    }

    pub async fn put_doc<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let value = serde_json::to_value(value)
            .map_err(|e| StoreError::Write(format!("document {name:?}: {e}")))?;
        self.seen(self.backend.put_doc(name, value).await)
    }

    // Accounts ----------------------------------------------------------------------------------

    pub async fn stored_accounts(&self) -> Result<Vec<StoredAccount>, StoreError> {
        self.seen(self.backend.stored_accounts().await)
    }

    pub async fn stored_account(&self, id: &str) -> Result<Option<StoredAccount>, StoreError> {
        self.seen(self.backend.stored_account(id).await)
    }

    pub async fn write_account(
        &self,
        change: AccountWrite,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        self.seen(self.backend.write_account(change, events).await)
    }

    pub async fn account_events(&self, id: &str) -> Result<AccountEvents, StoreError> {
        self.seen(self.backend.account_events(id).await)
    }

    /// Every account's pending events and dead letters, without reading the events (sled
    /// keeps them as it writes; PostgreSQL counts them in one grouped query).
    pub async fn account_counts(&self) -> Result<AccountCounts, StoreError> {
        self.seen(self.backend.account_counts().await)
    }

    pub async fn remove_account(&self, id: &str, force: bool) -> Result<Removal, StoreError> {
        self.seen(self.backend.remove_account(id, force).await)
    }

    // Replicas on one store -------------------------------------------------------------------

    /// The store as the replicas of a pool share it, when its backend can be shared.
    pub fn shared(&self) -> Option<&dyn Shared> {
        self.backend.shared()
    }

    /// This replica's place in the pool, once it joined one.
    pub fn pool(&self) -> Option<Pool> {
        let shared = self.shared()?;
        Some(Pool {
            ownership: shared.ownership()?.clone(),
            leases: shared.leases(),
        })
    }

    /// Whether this replica acts for an account's work now (its shard is held). Always, with
    /// a store no pool shares.
    pub fn acts_for(&self, account: Option<&str>) -> bool {
        self.shared()
            .and_then(|s| s.ownership())
            .is_none_or(|o| o.owns_account(account))
    }

    /// Whether a batch may still be sent now: on a shared store, its shard is still held at the
    /// epoch it was taken under (a replica paused between taking and sending finds it lost).
    pub fn may_send(&self, batch: &Batch) -> bool {
        match (batch.fence, self.shared().and_then(|s| s.ownership())) {
            (Some((shard, epoch)), Some(own)) => own.may_act(shard) == Some(epoch),
            _ => true,
        }
    }

    /// Claim a reconciler's scheduled slot for an account's shard: false when another replica
    /// already ran it (after a failover). Always true with one process.
    pub async fn claim_slot(&self, name: &str, account: Option<&str>, slot: i64) -> bool {
        let Some(pool) = self.pool() else {
            return true;
        };
        let o = &pool.ownership;
        pool.leases
            .claim_slot(name, o.map.of(account), slot, &o.me)
            .await
            .unwrap_or(false)
    }

    /// Stop the store's own tasks (Postgres: its committer and probe). sled closes on drop.
    pub fn close(&self) {
        self.backend.close()
    }
}
