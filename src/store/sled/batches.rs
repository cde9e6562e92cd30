//! Delivery's side of the store: taking a tenant's oldest events and settling them.

use super::*;

impl SledQueue {
    pub(super) fn get_event_raw(&self, id: &Uuid) -> Result<Option<EventRecord>, StoreError> {
        self.inner.get_json(event_key(id))
    }

    /// One event's record.
    pub fn event(&self, id: &Uuid) -> Result<Option<EventRecord>, StoreError> {
        let Some(mut rec) = self.get_event_raw(id)? else {
            return Ok(None);
        };
        // Delivery is recorded by a small marker and being in flight in memory, so neither
        // taking nor acknowledging a batch rewrites the records.
        if let Some(v) = self.inner.tree.get(delivered_marker_key(id))? {
            if v.len() != 12 {
                return Err(StoreError::Corrupt(format!("bad delivery marker of {id}")));
            }
            rec.state = EventState::Delivered;
            rec.delivered_at_ms = Some(i64::from_be_bytes(v[..8].try_into().expect("8 bytes")));
            rec.attempts = u32::from_be_bytes(v[8..].try_into().expect("4 bytes"));
            rec.next_attempt_at_ms = None;
        } else if rec.state == EventState::Queued && lock(&self.inner.in_flight_ids).contains(id) {
            rec.state = EventState::InFlight;
        }
        Ok(Some(rec))
    }

    /// Tenants that have pending events, in key order. Used by the dispatcher at start.
    pub fn pending_tenants(&self) -> Vec<TenantId> {
        let w = lock(&self.inner.writer);
        let mut out: Vec<TenantId> = w.heads.tenants().copied().collect();
        out.sort();
        out
    }

    /// Number of pending events of a tenant (a scan of that tenant's pending keys).
    pub fn pending_count(&self, tenant: &TenantId) -> usize {
        self.inner
            .tree
            .scan_prefix(key(b'p', &[tenant.as_bytes()]))
            .count()
    }

    /// The account of a tenant's oldest pending event (`None`: the tenant has none, or it was
    /// stored without an account).
    pub fn head_account(&self, tenant: &TenantId) -> Option<String> {
        let head = *lock(&self.inner.writer).heads.get(tenant)?;
        let id = self.inner.tree.get(pending_key(tenant, head)).ok()??;
        self.get_event_raw(&uuid_from(&id).ok()?).ok()??.account
    }

    /// Whether a tenant has pending events (from memory, no scan).
    pub fn has_pending(&self, tenant: &TenantId) -> bool {
        lock(&self.inner.writer).heads.has(tenant)
    }

    /// Every pending event's record (a scan of the whole queue: run it with `scan`).
    pub fn pending_records(&self) -> Result<Vec<EventRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix([b'p']) {
            let (_, v) = item?;
            if let Some(rec) = self.get_event_raw(&uuid_from(&v)?)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// The tenant's pending events in delivery order, up to `limit` (read only).
    pub fn pending_events(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .inner
            .tree
            .scan_prefix(key(b'p', &[tenant.as_bytes()]))
            .take(limit)
        {
            let (_, v) = item?;
            let id = uuid_from(&v)?;
            if let Some(rec) = self.get_event_raw(&id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Take up to `max` of the tenant's oldest pending events and mark them in flight, passing
    /// over the events of the accounts in `skip` (accounts
    /// that cannot send now: their events wait in place while another account's go).
    pub fn take_batch_skipping(
        &self,
        tenant: &TenantId,
        max: usize,
        skip: &[String],
    ) -> Result<Take, StoreError> {
        let now = now_ms();
        if !self.inner.core.claim(tenant) {
            return Ok(Take::Busy);
        }
        let result = self.take_batch_inner(tenant, max, now, skip);
        if !matches!(result, Ok(Take::Ready(_))) {
            self.inner.core.unclaim(tenant);
        }
        result
    }

    pub(super) fn take_batch_inner(
        &self,
        tenant: &TenantId,
        max: usize,
        now: i64,
        skip: &[String],
    ) -> Result<Take, StoreError> {
        let records = self
            .inner
            .tree
            .scan_prefix(key(b'p', &[tenant.as_bytes()]))
            .take(scan_limit(max))
            .map(|item| {
                let (_, v) = item?;
                let id = uuid_from(&v)?;
                self.get_event_raw(&id)?
                    .ok_or_else(|| StoreError::Corrupt(format!("pending event {id} has no record")))
            });
        let horizon = self.inner.options.max_retry_delay.as_millis() as i64;
        let events = match cut_batch(tenant, records, now, horizon, max, skip)? {
            Cut::Events(events) => events,
            Cut::NotBefore(at) => return Ok(Take::NotBefore(at)),
            Cut::Empty => return Ok(Take::Empty),
        };
        let store = self.inner.core.clone() as Arc<dyn InFlight>;
        Ok(Take::Ready(Batch::taken(store, *tenant, events, None)))
    }

    /// The batch reached the platform. Durable before it returns, so a crash after this never
    /// re-sends it.
    pub async fn ack_delivered(&self, batch: &Batch) -> Result<(), StoreError> {
        let job = AckJob {
            tenant: batch.tenant_id,
            account: batch.events.first().and_then(|e| e.account.clone()),
            items: batch
                .events
                .iter()
                .map(|e| (e.seq, e.id, e.kind, e.attempts))
                .collect(),
            decided_at: newest_decision_at(&batch.events),
        };
        let (tx, rx) = oneshot::channel();
        let result = match self.send(Job::Ack(job, tx)).await {
            Ok(()) => rx.await.map_err(|_| StoreError::Closed).and_then(|r| r),
            Err(e) => Err(e),
        };
        // Released only now: the tenant's next batch must not see these events again.
        batch.release();
        result
    }

    /// The report failed and will be retried at `next_attempt_at_ms`. The events keep their
    /// place. Durable before it returns.
    pub async fn mark_failed(
        &self,
        batch: &Batch,
        error: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError> {
        let records = changed(
            batch,
            |_| true,
            |rec| {
                rec.state = EventState::Queued;
                rec.attempts += 1;
                rec.last_error = Some(error.to_string());
                rec.next_attempt_at_ms = Some(next_attempt_at_ms);
            },
        );
        let result = self
            .write(move |core, _| {
                let mut b = ::sled::Batch::default();
                for rec in &records {
                    b.insert(event_key(&rec.id), to_json(rec));
                }
                core.tree.apply_batch(b)?;
                Ok(Wrote::default())
            })
            .await;
        batch.release();
        result.map(|_| ())
    }

    /// Give the batch back untouched (shutdown before it was sent, or a send abandoned).
    pub fn return_batch(&self, batch: &Batch) -> Result<(), StoreError> {
        // Nothing was written when it was taken, so nothing is undone.
        batch.release();
        Ok(())
    }

    /// Record as superseded (delivered, never sent) the events `old` of a batch taken: decisions
    /// older than one already reported for the tenant. Gives the batch back; durable before it
    /// returns.
    pub async fn supersede(&self, batch: &Batch, old: &[Uuid]) -> Result<(), StoreError> {
        let tenant = batch.tenant_id;
        let records = changed(
            batch,
            |e| old.contains(&e.id),
            |rec| {
                rec.last_error = Some(SUPERSEDED.to_string());
                rec.next_attempt_at_ms = None;
            },
        );
        let result = self
            .write(move |core, w| {
                let now = now_ms();
                let mut b = ::sled::Batch::default();
                let mut shift = counts::Shift::default();
                for rec in &records {
                    b.insert(event_key(&rec.id), to_json(rec));
                    b.remove(pending_key(&tenant, rec.seq));
                    b.insert(
                        delivered_marker_key(&rec.id),
                        delivered_marker(now, rec.attempts),
                    );
                    b.insert(delivered_key(now, &rec.id), &[]);
                    shift.add(rec.account.as_deref(), -1, 0);
                }
                let depth = w.depth.saturating_sub(records.len() as u64);
                b.insert(meta_key("depth"), &depth.to_be_bytes());
                put_account_counts(&mut b, shift.after(&w.accounts));
                core.tree.apply_batch(b)?;
                w.depth = depth;
                shift.apply(&mut w.accounts);
                settled(&mut w.heads, &core.tree, tenant)?;
                Ok(Wrote::default())
            })
            .await;
        batch.release();
        if result.is_ok() {
            self.inner
                .superseded
                .fetch_add(old.len() as u64, Ordering::Relaxed);
            tracing::info!(
                message = "reports superseded by a newer decision already reported: recorded, not sent",
                tenant_id = %tenant,
                events = old.len()
            );
        }
        result.map(|_| ())
    }

    /// Park the batch in the dead-letter store with its reason. Durable before it returns.
    pub async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<(), StoreError> {
        let tenant = batch.tenant_id;
        let records = changed(
            batch,
            |_| true,
            |rec| {
                rec.state = EventState::Dead;
                rec.attempts += 1;
                rec.dead_reason = Some(reason.to_string());
                rec.last_error = Some(reason.to_string());
                rec.next_attempt_at_ms = None;
            },
        );
        let result = self
            .write(move |core, w| {
                let mut b = ::sled::Batch::default();
                for rec in &records {
                    b.insert(event_key(&rec.id), to_json(rec));
                    b.remove(pending_key(&tenant, rec.seq));
                    b.insert(dead_key(&rec.id), &[]);
                }
                let n = records.len() as u64;
                let depth = w.depth.saturating_sub(n);
                let dead = w.dead + n;
                b.insert(meta_key("depth"), &depth.to_be_bytes());
                b.insert(meta_key("dead"), &dead.to_be_bytes());
                let mut shift = counts::Shift::default();
                for rec in &records {
                    shift.add(rec.account.as_deref(), -1, 1);
                }
                put_account_counts(&mut b, shift.after(&w.accounts));
                core.tree.apply_batch(b)?;
                w.depth = depth;
                w.dead = dead;
                shift.apply(&mut w.accounts);
                settled(&mut w.heads, &core.tree, tenant)?;
                Ok(Wrote::default())
            })
            .await;
        batch.release();
        result.map(|_| ())
    }
}

/// Copies of the batch's records that `keep` picks, each changed by `change`, to be written.
fn changed(
    batch: &Batch,
    keep: impl Fn(&EventRecord) -> bool,
    change: impl Fn(&mut EventRecord),
) -> Vec<EventRecord> {
    batch
        .events
        .iter()
        .filter(|e| keep(e))
        .map(|e| {
            let mut rec = e.clone();
            change(&mut rec);
            rec
        })
        .collect()
}
