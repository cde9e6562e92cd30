//! The dead-letter store.

use super::*;

impl Queue {
    /// Dead letters, oldest first, up to `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix([b'd']).take(limit) {
            let (k, _) = item?;
            let id = uuid_from(&k[1..])?;
            if let Some(rec) = self.get_event_raw(&id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Put a dead letter back at the tail of its tenant's queue. `Ok(false)` if it is not a
    /// dead letter.
    pub async fn retry_dead(&self, id: &Uuid) -> Result<bool, StoreError> {
        let tenant = self.retry_dead_unsynced(id)?;
        match tenant {
            Some(t) => {
                self.sync().await?;
                self.inner.wake_tenants([t]);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(super) fn retry_dead_unsynced(&self, id: &Uuid) -> Result<Option<TenantId>, StoreError> {
        let mut w = lock(&self.inner.writer);
        if self.inner.tree.get(dead_key(id))?.is_none() {
            return Ok(None);
        }
        let Some(mut rec) = self.get_event_raw(id)? else {
            return Ok(None);
        };
        let seq = w.seq + 1;
        rec.state = EventState::Queued;
        rec.attempts = 0;
        rec.next_attempt_at_ms = None;
        rec.dead_reason = None;
        rec.seq = seq;
        let mut b = sled::Batch::default();
        b.insert(event_key(id), to_json(&rec));
        b.remove(dead_key(id));
        b.insert(pending_key(&rec.tenant_id, seq), id.as_bytes().as_slice());
        let depth = w.depth + 1;
        let dead = w.dead.saturating_sub(1);
        b.insert(meta_key("seq"), &seq.to_be_bytes());
        b.insert(meta_key("depth"), &depth.to_be_bytes());
        b.insert(meta_key("dead"), &dead.to_be_bytes());
        self.inner.tree.apply_batch(b)?;
        w.seq = seq;
        w.depth = depth;
        w.dead = dead;
        w.heads.add(rec.tenant_id, seq);
        Ok(Some(rec.tenant_id))
    }

    /// Retry every dead letter; returns how many went back to their queues.
    pub async fn retry_all_dead(&self) -> Result<usize, StoreError> {
        let ids: Vec<Uuid> = self
            .inner
            .tree
            .scan_prefix([b'd'])
            .keys()
            .map(|k| k.map_err(StoreError::from).and_then(|k| uuid_from(&k[1..])))
            .collect::<Result<_, _>>()?;
        let mut tenants = Vec::new();
        for id in &ids {
            if let Some(t) = self.retry_dead_unsynced(id)? {
                tenants.push(t);
            }
        }
        self.sync().await?;
        let n = tenants.len();
        self.inner.wake_tenants(tenants);
        Ok(n)
    }

    /// Delete a dead letter for good. `Ok(false)` if it is not a dead letter.
    pub async fn purge_dead(&self, id: &Uuid) -> Result<bool, StoreError> {
        {
            let mut w = lock(&self.inner.writer);
            if self.inner.tree.get(dead_key(id))?.is_none() {
                return Ok(false);
            }
            let dead = w.dead.saturating_sub(1);
            let mut b = sled::Batch::default();
            b.remove(dead_key(id));
            b.remove(event_key(id));
            b.insert(meta_key("dead"), &dead.to_be_bytes());
            self.inner.tree.apply_batch(b)?;
            w.dead = dead;
        }
        self.sync().await?;
        Ok(true)
    }
}
