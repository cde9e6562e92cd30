//! The PostgreSQL read path: events, tenants' heads, dead letters, tenants, inventory,
//! documents and accounts.

use super::*;

impl PgQueue {
    /// Run one query under the store's timeout.
    pub(super) async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.inner.rows(sql, params).await
    }

    async fn events_where(
        &self,
        clause: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<EventRecord>, StoreError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events {clause}");
        self.rows(&sql, params)
            .await?
            .iter()
            .map(row_event)
            .collect()
    }

    pub async fn event(&self, id: &Uuid) -> Result<Option<EventRecord>, StoreError> {
        let mut rec = self.events_where("WHERE id = $1", &[id]).await?;
        let Some(mut rec) = rec.pop() else {
            return Ok(None);
        };
        if rec.state == EventState::Queued && lock(&self.inner.in_flight_ids).contains(id) {
            rec.state = EventState::InFlight;
        }
        Ok(Some(rec))
    }

    pub fn pending_tenants(&self) -> Vec<TenantId> {
        let mut out: Vec<TenantId> = lock(&self.inner.mem).heads.tenants().copied().collect();
        out.sort();
        out
    }

    pub fn has_pending(&self, tenant: &TenantId) -> bool {
        lock(&self.inner.mem).heads.has(tenant)
    }

    pub async fn pending_count(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let rows = self
            .rows(
                "SELECT count(*) FROM events WHERE tenant_id = $1 AND state = 'queued'",
                &[tenant],
            )
            .await?;
        Ok(count_of(&rows)? as usize)
    }

    /// The account of the tenant's oldest pending event (from memory).
    pub fn head_account(&self, tenant: &TenantId) -> Option<String> {
        lock(&self.inner.mem).heads.get(tenant)?.account.clone()
    }

    pub async fn pending_records(&self) -> Result<Vec<EventRecord>, StoreError> {
        self.events_where("WHERE state = 'queued' ORDER BY tenant_id, seq", &[])
            .await
    }

    pub async fn pending_events(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.events_where(
            "WHERE tenant_id = $1 AND state = 'queued' ORDER BY seq LIMIT $2",
            &[tenant, &limit],
        )
        .await
    }

    /// A batch of the tenant's oldest events, passing over the events of the accounts in `skip`.
    pub async fn take_batch_skipping(
        &self,
        tenant: &TenantId,
        max: usize,
        skip: &[String],
    ) -> Result<Take, StoreError> {
        let pg = &self.inner;
        if !pg.claim(tenant) {
            return Ok(Take::Busy);
        }
        let result: Result<Cut, StoreError> = async {
            // Decisions older than one already reported for the tenant (sent late, or accepted
            // by another replica at nearly the same moment) are set aside first.
            for _ in 0..8 {
                // The batch's worth first; past it only when records were passed over.
                let mut limit = max.max(1);
                let cut = loop {
                    let records = self.pending_events(tenant, limit).await?;
                    let all = records.len() < limit;
                    let horizon = pg.options.max_retry_delay.as_millis() as i64;
                    let cut = cut_batch(
                        tenant,
                        records.into_iter().map(Ok),
                        now_ms(),
                        horizon,
                        max,
                        skip,
                    )?;
                    if matches!(cut, Cut::Events(_)) || all || limit > max.max(1) {
                        break cut;
                    }
                    limit = crate::store::batches::scan_limit(max);
                };
                match (&cut, pg.ownership.get()) {
                    // On a shared store only the owner of the shard sets decisions aside (a
                    // write): another replica takes nothing of it.
                    (Cut::Events(events), Some(own))
                        if own
                            .may_act(pg.shards.of(events[0].account.as_deref()))
                            .is_none() =>
                    {
                        return Ok(Cut::Empty)
                    }
                    (Cut::Events(events), _) if self.supersede(tenant, events).await? > 0 => {
                        continue
                    }
                    _ => return Ok(cut),
                }
            }
            Ok(Cut::Empty)
        }
        .await;
        // A shared store: only the batches of shards this replica holds, under their epoch.
        let fence = match (&result, pg.ownership.get()) {
            (Ok(Cut::Events(events)), Some(own)) => {
                let shard = pg.shards.of(events[0].account.as_deref());
                match own.may_act(shard) {
                    Some(epoch) => {
                        own.flight_started(shard);
                        Some((shard, epoch))
                    }
                    None => {
                        pg.unclaim(tenant);
                        return Ok(Take::Empty);
                    }
                }
            }
            _ => None,
        };
        match result {
            Ok(Cut::Events(events)) => {
                let store = pg.clone() as Arc<dyn InFlight>;
                Ok(Take::Ready(Batch::taken(store, *tenant, events, fence)))
            }
            other => {
                pg.unclaim(tenant);
                match other? {
                    Cut::NotBefore(at) => Ok(Take::NotBefore(at)),
                    _ => Ok(Take::Empty),
                }
            }
        }
    }

    /// Record as superseded (delivered, never sent) the activations and deactivations of
    /// `events` older than the tenant's newest decision already reported, or than a decision
    /// ahead of them in the batch, ordering decisions by `occurred_at` (acceptance time when
    /// absent). Answers how many of `events` are older: the
    /// batch must be read again without them, even when another writer settled them first.
    async fn supersede(
        &self,
        tenant: &TenantId,
        events: &[EventRecord],
    ) -> Result<u64, StoreError> {
        let pg = &self.inner;
        // A batch without a decision has nothing to set aside: no query on the hot path.
        if !crate::store::has_decision(events) {
            return Ok(0);
        }
        let last: Option<i64> = self
            .rows(
                "SELECT last_sent_at_ms FROM tenants WHERE tenant_id = $1",
                &[tenant],
            )
            .await?
            .first()
            .map(|r| col::<Option<i64>>(r, 0))
            .transpose()?
            .flatten();
        let old = crate::store::older_decisions(events, last);
        if old.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        // With the tenant's next head, as every settlement reads it: when these were its last
        // pending events, the tenant leaves the heads (and the oldest pending age).
        let (n, head) = pg
            .timed(async {
                let mut client = pg.client().await?;
                let tx = pg.begin(&mut client).await?;
                let n = tx
                    .execute(
                        "UPDATE events SET state = 'delivered', delivered_at_ms = $1,
                         last_error = $3 WHERE id = ANY($2) AND state = 'queued'",
                        &[&now, &old, &crate::store::SUPERSEDED],
                    )
                    .await
                    .map_err(pg_error)?;
                let head = super::write::head_of(&tx, tenant).await?;
                tx.commit().await.map_err(pg_error)?;
                Ok((n, head))
            })
            .await?;
        let mut mem = lock(&pg.mem);
        mem.depth = mem.depth.saturating_sub(n);
        mem.set_head(*tenant, head);
        pg.superseded
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            tracing::info!(message = "reports superseded by a newer decision already reported: recorded, not sent", tenant_id = %tenant, events = n);
        }
        Ok(old.len() as u64)
    }

    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.events_where("WHERE state = 'dead' ORDER BY seq LIMIT $1", &[&limit])
            .await
    }

    pub fn stats(&self) -> QueueStats {
        let pg = &self.inner;
        let (depth, dead, head) = {
            let mem = lock(&pg.mem);
            let head = mem.heads.oldest().map(|(seq, t)| {
                (
                    seq,
                    t,
                    mem.heads.get(&t).map(|h| h.accepted_ms).unwrap_or(0),
                )
            });
            (mem.depth, mem.dead, head)
        };
        let oldest = head.map(|h| h.2);
        QueueStats {
            depth,
            in_flight: lock(&pg.in_flight_ids).len() as u64,
            dead_letters: dead,
            oldest_pending_accepted_ms: oldest,
            oldest_pending_age_ms: pending_age(&pg.ages, head),
        }
    }

    /// The counters recounted from the tables.
    pub async fn recount(&self) -> Result<(u64, u64), StoreError> {
        let rows = self
            .rows(
                "SELECT (SELECT count(*) FROM events WHERE state = 'queued'),
                        (SELECT count(*) FROM events WHERE state = 'dead')",
                &[],
            )
            .await?;
        let r = rows.first().ok_or(StoreError::Closed)?;
        Ok((col::<i64>(r, 0)? as u64, col::<i64>(r, 1)? as u64))
    }

    pub async fn tenant_state(&self, tenant: &TenantId) -> Result<Option<TenantState>, StoreError> {
        self
            .rows(
                "SELECT tenant_id, account, intended, intended_at_ms, last_reported, last_reported_at_ms,
                 last_sent_at_ms
                 FROM tenants WHERE tenant_id = $1",
                &[tenant],
            )
            .await?
            .first()
            .map(row_tenant)
            .transpose()
    }

    pub async fn tenant_states(&self) -> Result<Vec<TenantState>, StoreError> {
        self
            .rows(
                "SELECT tenant_id, account, intended, intended_at_ms, last_reported, last_reported_at_ms,
                 last_sent_at_ms
                 FROM tenants ORDER BY tenant_id",
                &[],
            )
            .await?
            .iter()
            .map(row_tenant)
            .collect()
    }

    async fn json_rows<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<T>, StoreError> {
        self.rows(sql, params)
            .await?
            .into_iter()
            .map(|r| json_of(col(&r, 0)?))
            .collect()
    }

    pub async fn inventory(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<InventoryTenant>, StoreError> {
        Ok(self
            .json_rows(
                "SELECT record FROM inventory WHERE tenant_id = $1",
                &[tenant],
            )
            .await?
            .pop())
    }

    pub async fn inventory_all(&self) -> Result<Vec<InventoryTenant>, StoreError> {
        self.json_rows("SELECT record FROM inventory ORDER BY tenant_id", &[])
            .await
    }

    pub async fn inventory_len(&self) -> Result<usize, StoreError> {
        let rows = self.rows("SELECT count(*) FROM inventory", &[]).await?;
        Ok(count_of(&rows)? as usize)
    }

    pub async fn get_doc<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        Ok(self
            .json_rows("SELECT value FROM documents WHERE name = $1", &[&name])
            .await?
            .pop())
    }

    pub async fn stored_accounts(&self) -> Result<Vec<StoredAccount>, StoreError> {
        self.json_rows("SELECT record FROM accounts ORDER BY id", &[])
            .await
    }

    pub async fn stored_account(&self, id: &str) -> Result<Option<StoredAccount>, StoreError> {
        Ok(self
            .json_rows("SELECT record FROM accounts WHERE id = $1", &[&id])
            .await?
            .pop())
    }

    pub async fn account_events(&self, id: &str) -> Result<AccountEvents, StoreError> {
        let rows = self
            .rows(
                "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'dead')
                 FROM events WHERE coalesce(account, 'default') = $1 AND state IN ('queued', 'dead')",
                &[&id],
            )
            .await?;
        let r = rows.first().ok_or(StoreError::Closed)?;
        Ok(AccountEvents {
            pending: col::<i64>(r, 0)? as u64,
            dead: col::<i64>(r, 1)? as u64,
        })
    }

    /// Every account's pending events and dead letters, counted by the database (one grouped
    /// count over the queued and dead events; nothing of them crosses the wire).
    pub async fn account_counts(&self) -> Result<AccountCounts, StoreError> {
        let rows = self
            .rows(
                "SELECT coalesce(account, 'default'), count(*) FILTER (WHERE state = 'queued'),
                        count(*) FILTER (WHERE state = 'dead')
                 FROM events WHERE state IN ('queued', 'dead') GROUP BY 1",
                &[],
            )
            .await?;
        let mut counts = AccountCounts::default();
        for r in rows {
            let account: String = r
                .try_get(0)
                .map_err(|e| StoreError::Corrupt(format!("an account's counts: {e}")))?;
            let n = |i: usize| -> Result<u64, StoreError> {
                r.try_get::<_, i64>(i)
                    .map(|v| v.max(0) as u64)
                    .map_err(|e| StoreError::Corrupt(format!("an account's counts: {e}")))
            };
            counts.set(
                &account,
                AccountEvents {
                    pending: n(1)?,
                    dead: n(2)?,
                },
            );
        }
        Ok(counts)
    }

    /// Bytes the store's tables and indexes occupy.
    pub async fn size(&self) -> Result<u64, StoreError> {
        let schema = self.inner.schema.clone();
        let rows = self
            .rows(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind = 'r'",
                &[&schema],
            )
            .await?;
        Ok(count_of(&rows)? as u64)
    }
}
