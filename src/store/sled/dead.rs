//! The dead-letter store.

use super::*;

impl SledQueue {
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
        let id = *id;
        let n = self
            .write(move |core, w| core.requeue_dead(w, &[id]))
            .await?;
        Ok(n == 1)
    }

    /// Retry every dead letter; returns how many went back to their queues.
    pub async fn retry_all_dead(&self) -> Result<usize, StoreError> {
        self.write(|core, w| {
            let ids: Vec<Uuid> = core
                .tree
                .scan_prefix([b'd'])
                .keys()
                .map(|k| k.map_err(StoreError::from).and_then(|k| uuid_from(&k[1..])))
                .collect::<Result<_, _>>()?;
            core.requeue_dead(w, &ids)
        })
        .await
    }

    /// Delete a dead letter for good. `Ok(false)` if it is not a dead letter.
    pub async fn purge_dead(&self, id: &Uuid) -> Result<bool, StoreError> {
        let id = *id;
        let n = self
            .write(move |core, w| {
                if core.tree.get(dead_key(&id))?.is_none() {
                    return Ok(Wrote::default());
                }
                let account = core
                    .get_json::<EventRecord>(event_key(&id))?
                    .and_then(|r| r.account);
                let dead = w.dead.saturating_sub(1);
                let mut b = ::sled::Batch::default();
                b.remove(dead_key(&id));
                b.remove(event_key(&id));
                b.insert(meta_key("dead"), &dead.to_be_bytes());
                let mut shift = counts::Shift::default();
                shift.add(account.as_deref(), 0, -1);
                put_account_counts(&mut b, shift.after(&w.accounts));
                core.tree.apply_batch(b)?;
                w.dead = dead;
                shift.apply(&mut w.accounts);
                Ok(Wrote {
                    count: 1,
                    wake: Vec::new(),
                })
            })
            .await?;
        Ok(n == 1)
    }
}

impl Core {
    /// Put these dead letters (those that still are) at the tail of their tenants' queues, in
    /// one batch.
    fn requeue_dead(&self, w: &mut Counters, ids: &[Uuid]) -> Result<Wrote, StoreError> {
        let mut b = ::sled::Batch::default();
        let mut seq = w.seq;
        let mut requeued: Vec<(TenantId, u64)> = Vec::new();
        let mut shift = counts::Shift::default();
        for id in ids {
            if self.tree.get(dead_key(id))?.is_none() {
                continue;
            }
            let Some(mut rec) = self.get_json::<EventRecord>(event_key(id))? else {
                continue;
            };
            seq += 1;
            rec.state = EventState::Queued;
            rec.attempts = 0;
            rec.next_attempt_at_ms = None;
            rec.dead_reason = None;
            rec.seq = seq;
            b.insert(event_key(id), to_json(&rec));
            b.remove(dead_key(id));
            b.insert(pending_key(&rec.tenant_id, seq), id.as_bytes().as_slice());
            shift.add(rec.account.as_deref(), 1, -1);
            requeued.push((rec.tenant_id, seq));
        }
        if requeued.is_empty() {
            return Ok(Wrote::default());
        }
        let n = requeued.len() as u64;
        let depth = w.depth + n;
        let dead = w.dead.saturating_sub(n);
        b.insert(meta_key("seq"), &seq.to_be_bytes());
        b.insert(meta_key("depth"), &depth.to_be_bytes());
        b.insert(meta_key("dead"), &dead.to_be_bytes());
        put_account_counts(&mut b, shift.after(&w.accounts));
        self.tree.apply_batch(b)?;
        w.seq = seq;
        w.depth = depth;
        w.dead = dead;
        shift.apply(&mut w.accounts);
        for (tenant, seq) in &requeued {
            w.heads.add(*tenant, *seq);
        }
        let mut wake: Vec<TenantId> = requeued.iter().map(|(t, _)| *t).collect();
        wake.dedup();
        Ok(Wrote {
            count: requeued.len(),
            wake,
        })
    }
}
