//! The PostgreSQL backend under the store's contract, with the capability of being shared by
//! the replicas of a pool.

use async_trait::async_trait;

use super::*;
use crate::cluster::Ownership;
use crate::store::contract::{Backend, Health, PoolStore, Shared};

#[async_trait]
impl Backend for PgQueue {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError> {
        PgQueue::enqueue(self, events).await
    }
    async fn woken_tenants(&self) -> Vec<TenantId> {
        PgQueue::woken_tenants(self).await
    }
    /// Every write answers once its transaction committed: nothing waits to be made durable.
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn stats(&self) -> QueueStats {
        PgQueue::stats(self)
    }
    fn flush_stats(&self) -> FlushStats {
        PgQueue::flush_stats(self)
    }
    async fn size(&self) -> u64 {
        PgQueue::size(self).await.unwrap_or(0)
    }
    fn health(&self) -> Health {
        match self.unavailable() {
            Some(why) => Health::Unavailable(why),
            None => Health::Ok,
        }
    }
    async fn recount(&self) -> Result<(u64, u64), StoreError> {
        PgQueue::recount(self).await
    }
    async fn compact(&self, now_ms: i64) -> Result<usize, StoreError> {
        PgQueue::compact(self, now_ms).await
    }

    async fn event(&self, id: &Uuid) -> Result<Option<EventRecord>, StoreError> {
        PgQueue::event(self, id).await
    }
    fn pending_tenants(&self) -> Vec<TenantId> {
        PgQueue::pending_tenants(self)
    }
    fn has_pending(&self, tenant: &TenantId) -> bool {
        PgQueue::has_pending(self, tenant)
    }
    async fn pending_count(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        PgQueue::pending_count(self, tenant).await
    }
    fn head_account(&self, tenant: &TenantId) -> Option<String> {
        PgQueue::head_account(self, tenant)
    }
    async fn pending_records(&self) -> Result<Vec<EventRecord>, StoreError> {
        PgQueue::pending_records(self).await
    }
    async fn pending_events(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        PgQueue::pending_events(self, tenant, limit).await
    }
    async fn take_batch(
        &self,
        tenant: &TenantId,
        max: usize,
        skip: &[String],
    ) -> Result<Take, StoreError> {
        self.take_batch_skipping(tenant, max, skip).await
    }
    async fn ack_delivered(&self, batch: &Batch) -> Result<(), StoreError> {
        PgQueue::ack_delivered(self, batch).await
    }
    fn superseded(&self) -> u64 {
        self.inner
            .superseded
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    async fn mark_failed(
        &self,
        batch: &Batch,
        error: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError> {
        PgQueue::mark_failed(self, batch, error, next_attempt_at_ms).await
    }
    async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<(), StoreError> {
        PgQueue::dead_letter(self, batch, reason).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        PgQueue::dead_letters(self, limit).await
    }
    async fn requeue_dead(&self, ids: Option<&[Uuid]>) -> Result<usize, StoreError> {
        PgQueue::requeue_dead(self, ids.map(<[Uuid]>::to_vec)).await
    }
    async fn purge_dead(&self, id: &Uuid) -> Result<bool, StoreError> {
        PgQueue::purge_dead(self, id).await
    }

    async fn tenant_state(&self, tenant: &TenantId) -> Result<Option<TenantState>, StoreError> {
        PgQueue::tenant_state(self, tenant).await
    }
    async fn tenant_states(&self) -> Result<Vec<TenantState>, StoreError> {
        PgQueue::tenant_states(self).await
    }
    async fn inventory(&self, tenant: &TenantId) -> Result<Option<InventoryTenant>, StoreError> {
        PgQueue::inventory(self, tenant).await
    }
    async fn inventory_all(&self) -> Result<Vec<InventoryTenant>, StoreError> {
        PgQueue::inventory_all(self).await
    }
    async fn inventory_len(&self) -> Result<usize, StoreError> {
        PgQueue::inventory_len(self).await
    }
    async fn write_inventory(
        &self,
        tenants: &[InventoryTenant],
        account: Option<&str>,
    ) -> Result<(), StoreError> {
        PgQueue::write_inventory(self, tenants, account).await
    }
    async fn get_doc(&self, name: &str) -> Result<Option<serde_json::Value>, StoreError> {
        PgQueue::get_doc(self, name).await
    }
    async fn put_doc(&self, name: &str, value: serde_json::Value) -> Result<(), StoreError> {
        PgQueue::put_doc(self, name, &value).await
    }

    async fn stored_accounts(&self) -> Result<Vec<StoredAccount>, StoreError> {
        PgQueue::stored_accounts(self).await
    }
    async fn stored_account(&self, id: &str) -> Result<Option<StoredAccount>, StoreError> {
        PgQueue::stored_account(self, id).await
    }
    async fn write_account(
        &self,
        change: AccountWrite,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        PgQueue::write_account(self, change, events).await
    }
    async fn account_events(&self, id: &str) -> Result<AccountEvents, StoreError> {
        PgQueue::account_events(self, id).await
    }
    async fn account_counts(&self) -> Result<AccountCounts, StoreError> {
        PgQueue::account_counts(self).await
    }
    async fn remove_account(&self, id: &str, force: bool) -> Result<Removal, StoreError> {
        PgQueue::remove_account(self, id, force).await
    }

    fn shared(&self) -> Option<&dyn Shared> {
        Some(self)
    }

    fn close(&self) {
        PgQueue::close(self)
    }
}

impl Shared for PgQueue {
    fn leases(&self) -> Arc<PoolStore> {
        Arc::new(self.clone())
    }
    fn fence_by(&self, own: Arc<Ownership>) {
        self.set_ownership(own)
    }
    fn ownership(&self) -> Option<&Arc<Ownership>> {
        PgQueue::ownership(self)
    }
}
