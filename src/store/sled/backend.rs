//! The sled backend under the store's contract. Every read of sled runs on a blocking thread
//! ([`SledQueue::scan`]): a key not in sled's cache is a disk read, which must not stall an
//! async worker. What is kept in memory (heads, counters) answers in place.

use async_trait::async_trait;

use super::*;
use crate::store::contract::{Backend, Health, SizeBound};

#[async_trait]
impl Backend for SledQueue {
    fn name(&self) -> &'static str {
        "sled"
    }

    async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError> {
        SledQueue::enqueue(self, events).await
    }
    async fn woken_tenants(&self) -> Vec<TenantId> {
        SledQueue::woken_tenants(self).await
    }
    async fn sync(&self) -> Result<(), StoreError> {
        SledQueue::sync(self).await
    }
    fn stats(&self) -> QueueStats {
        SledQueue::stats(self)
    }
    fn flush_stats(&self) -> FlushStats {
        SledQueue::flush_stats(self)
    }
    async fn size(&self) -> u64 {
        self.size_on_disk()
    }
    fn health(&self) -> Health {
        if let Some(e) = self.write_error() {
            return Health::Broken(e);
        }
        if !self.healthy() {
            return Health::Broken("the store's writer threads stopped".into());
        }
        Health::Ok
    }
    async fn recount(&self) -> Result<(u64, u64), StoreError> {
        self.scan(|q| q.recount()).await
    }
    async fn compact(&self, now_ms: i64) -> Result<usize, StoreError> {
        SledQueue::compact(self, now_ms).await
    }

    async fn event(&self, id: &Uuid) -> Result<Option<EventRecord>, StoreError> {
        let id = *id;
        self.scan(move |q| q.event(&id)).await
    }
    fn pending_tenants(&self) -> Vec<TenantId> {
        SledQueue::pending_tenants(self)
    }
    fn has_pending(&self, tenant: &TenantId) -> bool {
        SledQueue::has_pending(self, tenant)
    }
    async fn pending_count(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let tenant = *tenant;
        self.scan(move |q| Ok(q.pending_count(&tenant))).await
    }
    fn head_account(&self, tenant: &TenantId) -> Option<String> {
        SledQueue::head_account(self, tenant)
    }
    async fn pending_records(&self) -> Result<Vec<EventRecord>, StoreError> {
        self.scan(|q| q.pending_records()).await
    }
    async fn pending_events(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let tenant = *tenant;
        self.scan(move |q| q.pending_events(&tenant, limit)).await
    }
    async fn take_batch(
        &self,
        tenant: &TenantId,
        max: usize,
        skip: &[String],
    ) -> Result<Take, StoreError> {
        let tenant = *tenant;
        // Decisions older than one already reported for the tenant are set aside first.
        for _ in 0..8 {
            let skip = skip.to_vec();
            // The tenant's newest decision sent is read only for a batch with a decision.
            let (take, last_sent) = self
                .scan(move |q| {
                    let take = q.take_batch_skipping(&tenant, max, &skip)?;
                    let last_sent = match &take {
                        Take::Ready(b) if has_decision(&b.events) => {
                            q.tenant_state(&tenant)?.and_then(|t| t.last_sent_at_ms)
                        }
                        _ => None,
                    };
                    Ok((take, last_sent))
                })
                .await?;
            let Take::Ready(batch) = &take else {
                return Ok(take);
            };
            let old = older_decisions(&batch.events, last_sent);
            if old.is_empty() {
                return Ok(take);
            }
            self.supersede(batch, &old).await?;
        }
        Ok(Take::Empty)
    }
    async fn ack_delivered(&self, batch: &Batch) -> Result<(), StoreError> {
        SledQueue::ack_delivered(self, batch).await
    }
    fn superseded(&self) -> u64 {
        self.inner.superseded.load(Ordering::Relaxed)
    }
    async fn mark_failed(
        &self,
        batch: &Batch,
        error: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError> {
        SledQueue::mark_failed(self, batch, error, next_attempt_at_ms).await
    }
    async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<(), StoreError> {
        SledQueue::dead_letter(self, batch, reason).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.scan(move |q| q.dead_letters(limit)).await
    }
    async fn requeue_dead(&self, ids: Option<&[Uuid]>) -> Result<usize, StoreError> {
        match ids {
            None => self.retry_all_dead().await,
            Some(ids) => {
                let mut n = 0;
                for id in ids {
                    n += usize::from(self.retry_dead(id).await?);
                }
                Ok(n)
            }
        }
    }
    async fn purge_dead(&self, id: &Uuid) -> Result<bool, StoreError> {
        SledQueue::purge_dead(self, id).await
    }

    async fn tenant_state(&self, tenant: &TenantId) -> Result<Option<TenantState>, StoreError> {
        let tenant = *tenant;
        self.scan(move |q| q.tenant_state(&tenant)).await
    }
    async fn tenant_states(&self) -> Result<Vec<TenantState>, StoreError> {
        self.scan(|q| q.tenant_states()).await
    }
    async fn inventory(&self, tenant: &TenantId) -> Result<Option<InventoryTenant>, StoreError> {
        let tenant = *tenant;
        self.scan(move |q| q.inventory(&tenant)).await
    }
    async fn inventory_all(&self) -> Result<Vec<InventoryTenant>, StoreError> {
        self.scan(|q| q.inventory_all()).await
    }
    async fn inventory_len(&self) -> Result<usize, StoreError> {
        Ok(SledQueue::inventory_len(self))
    }
    async fn write_inventory(
        &self,
        tenants: &[InventoryTenant],
        account: Option<&str>,
    ) -> Result<(), StoreError> {
        match account {
            None => self.put_inventory(tenants).await,
            Some(account) => self.replace_inventory(account, tenants).await,
        }
    }
    async fn get_doc(&self, name: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let name = name.to_string();
        self.scan(move |q| q.get_doc(&name)).await
    }
    async fn put_doc(&self, name: &str, value: serde_json::Value) -> Result<(), StoreError> {
        SledQueue::put_doc(self, name, &value).await
    }

    async fn stored_accounts(&self) -> Result<Vec<StoredAccount>, StoreError> {
        self.scan(|q| q.stored_accounts()).await
    }
    async fn stored_account(&self, id: &str) -> Result<Option<StoredAccount>, StoreError> {
        let id = id.to_string();
        self.scan(move |q| q.stored_account(&id)).await
    }
    async fn write_account(
        &self,
        change: AccountWrite,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        SledQueue::write_account(self, change, events).await
    }
    async fn account_events(&self, id: &str) -> Result<AccountEvents, StoreError> {
        SledQueue::account_events(self, id)
    }
    async fn account_counts(&self) -> Result<AccountCounts, StoreError> {
        Ok(SledQueue::account_counts(self))
    }
    async fn remove_account(&self, id: &str, force: bool) -> Result<Removal, StoreError> {
        SledQueue::remove_account(self, id, force).await
    }

    fn bound(&self) -> Option<&dyn SizeBound> {
        Some(self)
    }
}

#[async_trait]
impl SizeBound for SledQueue {
    fn set_max_size(&self, max: Option<u64>) {
        SledQueue::set_max_size(self, max)
    }
    fn is_full(&self) -> bool {
        SledQueue::is_full(self)
    }
    async fn check_bound(&self) -> Result<BoundState, StoreError> {
        SledQueue::check_bound(self).await
    }
}
