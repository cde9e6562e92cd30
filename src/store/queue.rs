//! The store contract the daemon uses, over either backend: sled on this machine's disk, or
//! a PostgreSQL database. Everything outside `store/` goes through `Queue`.

use super::pg::{PgOptions, PgQueue};
use super::*;

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    backend: Backend,
}

/// The backend behind a `Queue`.
#[derive(Clone)]
pub enum Backend {
    Sled(SledQueue),
    Postgres(PgQueue),
}

/// One call on either backend: `$s` is the sled store, `$p` the Postgres one.
macro_rules! on {
    ($self:ident, $s:ident => $sled:expr, $p:ident => $pg:expr) => {
        match &$self.backend {
            Backend::Sled($s) => $sled,
            Backend::Postgres($p) => $pg,
        }
    };
}

impl Queue {
    /// Open (or create) the sled store at `path`.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Queue, StoreError> {
        Ok(Queue {
            backend: Backend::Sled(SledQueue::open(path, options)?),
        })
    }

    /// Connect to the PostgreSQL store, migrating its schema to this build's version.
    pub async fn open_postgres(pg: &PgOptions, options: StoreOptions) -> Result<Queue, StoreError> {
        Ok(Queue {
            backend: Backend::Postgres(PgQueue::open(pg, options).await?),
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The backend's name, as `store.backend` writes it.
    pub fn backend_name(&self) -> &'static str {
        on!(self, _s => "sled", _p => "postgres")
    }

    /// Accept events: all are stored, or none; answered once durable (flushed, or committed).
    pub async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError> {
        on!(self, s => s.enqueue(events).await, p => p.enqueue(events).await)
    }

    /// Wait until events were accepted (or retried) for some tenant, and return those tenants.
    pub async fn woken_tenants(&self) -> Vec<TenantId> {
        on!(self, s => s.woken_tenants().await, p => p.woken_tenants().await)
    }

    /// Wait until every write made before this call is durable.
    pub async fn sync(&self) -> Result<(), StoreError> {
        on!(self, s => s.sync().await, _p => Ok(()))
    }

    pub fn stats(&self) -> QueueStats {
        on!(self, s => s.stats(), p => p.stats())
    }

    pub fn flush_stats(&self) -> FlushStats {
        on!(self, s => s.flush_stats(), p => p.flush_stats())
    }

    /// Bytes the store occupies (sled: its files; Postgres: its tables and indexes).
    pub async fn size(&self) -> u64 {
        on!(self, s => s.size_on_disk(), p => p.size().await.unwrap_or(0))
    }

    /// Whether events can be accepted durably now.
    pub fn healthy(&self) -> bool {
        on!(self, s => s.healthy(), p => p.unavailable().is_none())
    }

    /// Why the store cannot write any more until it is opened again (sled only: a full disk,
    /// an I/O error).
    pub fn write_error(&self) -> Option<String> {
        on!(self, s => s.write_error(), _p => None)
    }

    /// Why the store's database cannot be reached now (Postgres only; it resumes by itself).
    pub fn unavailable(&self) -> Option<String> {
        on!(self, _s => None, p => p.unavailable())
    }

    pub async fn recount(&self) -> Result<(u64, u64), StoreError> {
        on!(self, s => s.recount(), p => p.recount().await)
    }

    // Bound on the size (sled: `store.max_size`) ---------------------------------------------

    pub fn set_max_size(&self, max: Option<u64>) {
        on!(self, s => s.set_max_size(max), _p => ())
    }

    pub fn is_full(&self) -> bool {
        on!(self, s => s.is_full(), _p => false)
    }

    pub async fn check_bound(&self) -> Result<BoundState, StoreError> {
        on!(self, s => s.check_bound().await, _p => Ok(BoundState::Unbounded))
    }

    pub async fn compact(&self, now_ms: i64) -> Result<usize, StoreError> {
        on!(self, s => s.compact(now_ms).await, p => p.compact(now_ms).await)
    }

    // Delivery ----------------------------------------------------------------------------------

    pub async fn event(&self, id: &Uuid) -> Result<Option<EventRecord>, StoreError> {
        on!(self, s => s.event(id), p => p.event(id).await)
    }

    /// Tenants that have pending events (from memory).
    pub fn pending_tenants(&self) -> Vec<TenantId> {
        on!(self, s => s.pending_tenants(), p => p.pending_tenants())
    }

    /// Whether a tenant has pending events (from memory).
    pub fn has_pending(&self, tenant: &TenantId) -> bool {
        on!(self, s => s.has_pending(tenant), p => p.has_pending(tenant))
    }

    pub async fn pending_count(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        on!(self, s => Ok(s.pending_count(tenant)), p => p.pending_count(tenant).await)
    }

    /// The account of a tenant's oldest pending event.
    pub fn head_account(&self, tenant: &TenantId) -> Option<String> {
        on!(self, s => s.head_account(tenant), p => p.head_account(tenant))
    }

    /// Every pending event's record.
    pub async fn pending_records(&self) -> Result<Vec<EventRecord>, StoreError> {
        on!(self, s => s.scan(|q| q.pending_records()).await, p => p.pending_records().await)
    }

    pub async fn pending_events(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        on!(self, s => s.pending_events(tenant, limit), p => p.pending_events(tenant, limit).await)
    }

    pub async fn take_batch(&self, tenant: &TenantId, max: usize) -> Result<Take, StoreError> {
        on!(self, s => s.take_batch(tenant, max), p => p.take_batch(tenant, max).await)
    }

    /// A batch of the tenant's oldest events of an account not in `skip` (accounts that cannot
    /// send now): their events wait in place while another account's go.
    pub async fn take_batch_skipping(
        &self,
        tenant: &TenantId,
        max: usize,
        skip: &[String],
    ) -> Result<Take, StoreError> {
        on!(self, s => s.take_batch_skipping(tenant, max, skip), p => p.take_batch_skipping(tenant, max, skip).await)
    }

    pub async fn ack_delivered(&self, batch: &Batch) -> Result<(), StoreError> {
        on!(self, s => s.ack_delivered(batch).await, p => p.ack_delivered(batch).await)
    }

    pub async fn mark_failed(
        &self,
        batch: &Batch,
        error: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError> {
        on!(self,
            s => s.mark_failed(batch, error, next_attempt_at_ms).await,
            p => p.mark_failed(batch, error, next_attempt_at_ms).await)
    }

    /// Give the batch back untouched.
    pub fn return_batch(&self, batch: &Batch) {
        batch.release();
    }

    pub async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<(), StoreError> {
        on!(self, s => s.dead_letter(batch, reason).await, p => p.dead_letter(batch, reason).await)
    }

    // Dead letters --------------------------------------------------------------------------------

    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        on!(self, s => s.scan(move |q| q.dead_letters(limit)).await, p => p.dead_letters(limit).await)
    }

    pub async fn retry_dead(&self, id: &Uuid) -> Result<bool, StoreError> {
        on!(self, s => s.retry_dead(id).await, p => Ok(p.requeue_dead(Some(vec![*id])).await? == 1))
    }

    pub async fn retry_all_dead(&self) -> Result<usize, StoreError> {
        on!(self, s => s.retry_all_dead().await, p => p.requeue_dead(None).await)
    }

    pub async fn purge_dead(&self, id: &Uuid) -> Result<bool, StoreError> {
        on!(self, s => s.purge_dead(id).await, p => p.purge_dead(id).await)
    }

    // Tenants, inventory, documents -------------------------------------------------------------

    pub async fn tenant_state(&self, tenant: &TenantId) -> Result<Option<TenantState>, StoreError> {
        on!(self, s => s.tenant_state(tenant), p => p.tenant_state(tenant).await)
    }

    pub async fn tenant_states(&self) -> Result<Vec<TenantState>, StoreError> {
        on!(self, s => s.scan(|q| q.tenant_states()).await, p => p.tenant_states().await)
    }

    pub async fn inventory(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<InventoryTenant>, StoreError> {
        on!(self, s => s.inventory(tenant), p => p.inventory(tenant).await)
    }

    pub async fn inventory_all(&self) -> Result<Vec<InventoryTenant>, StoreError> {
        on!(self, s => s.scan(|q| q.inventory_all()).await, p => p.inventory_all().await)
    }

    pub async fn inventory_len(&self) -> Result<usize, StoreError> {
        on!(self, s => Ok(s.inventory_len()), p => p.inventory_len().await)
    }

    pub async fn put_inventory(&self, tenants: &[InventoryTenant]) -> Result<(), StoreError> {
        on!(self, s => s.put_inventory(tenants).await, p => p.write_inventory(tenants, None).await)
    }

    /// Replace an account's whole inventory; other accounts' records stay.
    pub async fn replace_inventory(
        &self,
        account: &str,
        tenants: &[InventoryTenant],
    ) -> Result<(), StoreError> {
        on!(self,
            s => s.replace_inventory(account, tenants).await,
            p => p.write_inventory(tenants, Some(account)).await)
    }

    pub async fn get_doc<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        on!(self, s => s.get_doc(name), p => p.get_doc(name).await)
    }

    pub async fn put_doc<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        on!(self, s => s.put_doc(name, value).await, p => p.put_doc(name, value).await)
    }

    // Accounts ----------------------------------------------------------------------------------

    pub async fn stored_accounts(&self) -> Result<Vec<StoredAccount>, StoreError> {
        on!(self, s => s.scan(|q| q.stored_accounts()).await, p => p.stored_accounts().await)
    }

    pub async fn stored_account(&self, id: &str) -> Result<Option<StoredAccount>, StoreError> {
        on!(self, s => s.stored_account(id), p => p.stored_account(id).await)
    }

    pub async fn write_account(
        &self,
        change: AccountWrite,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        on!(self, s => s.write_account(change, events).await, p => p.write_account(change, events).await)
    }

    pub async fn account_events(&self, id: &str) -> Result<AccountEvents, StoreError> {
        let id = id.to_string();
        on!(self, s => s.account_events(&id), p => p.account_events(&id).await)
    }

    /// Every account's pending events and dead letters, without reading the events (sled
    /// keeps them as it writes; PostgreSQL counts them in one grouped query).
    pub async fn account_counts(&self) -> Result<AccountCounts, StoreError> {
        on!(self, s => Ok(s.account_counts()), p => p.account_counts().await)
    }

    pub async fn remove_account(&self, id: &str, force: bool) -> Result<Removal, StoreError> {
        on!(self, s => s.remove_account(id, force).await, p => p.remove_account(id, force).await)
    }

    // Replicas on one store -------------------------------------------------------------------

    /// Whether this replica acts for an account's work now (its shard is held). Always, with
    /// sled or a PostgreSQL store used by one statusd alone.
    pub fn acts_for(&self, account: Option<&str>) -> bool {
        on!(self, _s => true, p => p.ownership().is_none_or(|o| o.owns_account(account)))
    }

    /// Claim a reconciler's scheduled slot for an account's shard: false when another replica
    /// already ran it (after a failover). Always true with one process.
    pub async fn claim_slot(&self, name: &str, account: Option<&str>, slot: i64) -> bool {
        match &self.backend {
            Backend::Postgres(p) => match p.ownership() {
                Some(o) => {
                    let shard = o.map.of(account);
                    p.claim_slot(name, shard, slot, &o.me)
                        .await
                        .unwrap_or(false)
                }
                None => true,
            },
            Backend::Sled(_) => true,
        }
    }

    /// Stop the store's own tasks (Postgres: its committer and probe). sled closes on drop.
    pub fn close(&self) {
        on!(self, _s => (), p => p.close())
    }
}
