//! The PostgreSQL write path: group commit of intake, settling batches, dead letters,
//! inventory, documents and accounts.

use deadpool_postgres::Transaction;

use super::*;
use crate::store::accounts::removal_stops;

/// One enqueue waiting for the committer.
pub(super) struct Intake {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Enqueued>, StoreError>>,
}

/// The committer: takes every enqueue waiting (up to `MAX_GROUP_EVENTS` events) and writes
/// them in one transaction; everyone is answered after COMMIT.
pub(super) async fn committer(
    pg: std::sync::Weak<Pg>,
    mut rx: tokio::sync::mpsc::Receiver<Intake>,
) {
    while let Some(first) = rx.recv().await {
        let mut n = first.events.len();
        let mut jobs = vec![first];
        while n < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.events.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let Some(pg) = pg.upgrade() else {
            for j in jobs {
                let _ = j.reply.send(Err(StoreError::Closed));
            }
            return;
        };
        let (requests, replies): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|j| (j.events, j.reply)).unzip();
        let result = pg.insert_events(requests, None).await;
        pg.commits.fetch_add(1, Ordering::Relaxed);
        pg.waiters
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        match result {
            Ok(outcomes) => {
                for (reply, out) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(out));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(match &e {
                        StoreError::Unavailable(_) => StoreError::Unavailable(message.clone()),
                        _ => StoreError::Write(message.clone()),
                    }));
                }
            }
        }
    }
}

/// An event about to be inserted.
struct Row {
    id: Uuid,
    ev: NewEvent,
    /// The shard of the event's account, worked out once.
    shard: u32,
}

impl PgQueue {
    pub async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let sender = lock(&self.inner.jobs).clone().ok_or(StoreError::Closed)?;
        if let Some(why) = self.unavailable() {
            return Err(StoreError::Unavailable(why));
        }
        sender
            .send(Intake { events, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn woken_tenants(&self) -> Vec<TenantId> {
        self.inner.wakeup.next().await
    }

    /// Write an account change with these events in one transaction.
    pub async fn write_account(
        &self,
        change: AccountWrite,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let mut out = self.inner.insert_events(vec![events], Some(change)).await?;
        Ok(out.pop().unwrap_or_default())
    }

    /// The batch reached the platform: delivered, with the tenant's reported state.
    pub async fn ack_delivered(&self, batch: &Batch) -> Result<(), StoreError> {
        self.settle(batch, Settle::Delivered).await
    }

    /// The report failed and will be retried at `next_attempt_at_ms`, in place.
    pub async fn mark_failed(
        &self,
        batch: &Batch,
        error: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.settle(batch, Settle::Failed(error, next_attempt_at_ms))
            .await
    }

    pub async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<(), StoreError> {
        self.settle(batch, Settle::Dead(reason)).await
    }

    /// Settle a batch in one transaction that first checks the shard's epoch (on a shared
    /// store) and, when events leave the queue, reads the tenant's next head; the memory
    /// follows once committed, and the batch is released whatever happened.
    async fn settle(&self, batch: &Batch, how: Settle<'_>) -> Result<(), StoreError> {
        let pg = &self.inner;
        let ids = batch.ids();
        let tenant = batch.tenant_id;
        let now = now_ms();
        let result = pg
            .timed(async {
                let mut client = pg.client().await?;
                let tx = pg.begin(&mut client).await?;
                check_fence(pg, &tx, batch).await?;
                let n = match how {
                    Settle::Delivered => delivered(&tx, batch, &ids, now).await?,
                    Settle::Failed(error, next) => {
                        tx.execute(
                            "UPDATE events SET attempts = attempts + 1, last_error = $1,
                             next_attempt_at_ms = $2 WHERE id = ANY($3) AND state = 'queued'",
                            &[&error, &next, &ids],
                        )
                        .await
                        .map_err(pg_error)?;
                        tx.commit().await.map_err(pg_error)?;
                        return Ok(None);
                    }
                    Settle::Dead(reason) => tx
                        .execute(
                            "UPDATE events SET state = 'dead', attempts = attempts + 1,
                             dead_reason = $1, last_error = $1, next_attempt_at_ms = NULL
                             WHERE id = ANY($2) AND state = 'queued'",
                            &[&reason, &ids],
                        )
                        .await
                        .map_err(pg_error)?,
                };
                let head = head_of(&tx, &tenant).await?;
                tx.commit().await.map_err(pg_error)?;
                Ok(Some((n, head)))
            })
            .await;
        fenced(pg, &result);
        if let Err(StoreError::Fenced(shard)) = &result {
            pg.note_late_report(tenant, *shard).await;
        }
        if let Ok(Some((n, head))) = result.as_ref() {
            let mut mem = lock(&pg.mem);
            mem.depth = mem.depth.saturating_sub(*n);
            if matches!(how, Settle::Dead(_)) {
                mem.dead += n;
            }
            mem.set_head(tenant, head.clone());
        }
        batch.release();
        result.map(|_| ())
    }

    /// Put dead letters back at the tail of their tenants' queues (all of them with `None`).
    pub async fn requeue_dead(&self, ids: Option<Vec<Uuid>>) -> Result<usize, StoreError> {
        let pg = &self.inner;
        let _order = pg.insert_lock.lock().await;
        let requeued = pg
            .timed(async {
                let mut client = pg.client().await?;
                let tx = pg.begin(&mut client).await?;
                let rows = match &ids {
                    Some(ids) => tx
                        .query(
                            "SELECT id FROM events WHERE id = ANY($1) AND state = 'dead' ORDER BY seq",
                            &[ids],
                        )
                        .await,
                    None => {
                        tx.query("SELECT id FROM events WHERE state = 'dead' ORDER BY seq", &[])
                            .await
                    }
                }
                .map_err(pg_error)?;
                let dead = rows
                    .iter()
                    .map(|r| col::<Uuid>(r, 0))
                    .collect::<Result<Vec<_>, _>>()?;
                let seqs = next_seqs(&tx, dead.len()).await?;
                let rows = tx
                    .query(
                        "UPDATE events SET state = 'queued', attempts = 0, next_attempt_at_ms = NULL,
                         dead_reason = NULL, seq = u.seq
                         FROM unnest($1::uuid[], $2::bigint[]) AS u(id, seq)
                         WHERE events.id = u.id AND events.state = 'dead'
                         RETURNING events.seq, events.accepted_at_ms, events.account, events.tenant_id",
                        &[&dead, &seqs],
                    )
                    .await
                    .map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)?;
                rows.iter()
                    .map(|r| Ok((col::<Uuid>(r, 3)?, Head::of_row(r)?)))
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await?;
        let tenants: Vec<TenantId> = {
            let mut mem = lock(&pg.mem);
            let n = requeued.len() as u64;
            mem.depth += n;
            mem.dead = mem.dead.saturating_sub(n);
            for (tenant, head) in &requeued {
                mem.add(*tenant, head.clone());
            }
            requeued.iter().map(|r| r.0).collect()
        };
        pg.wake_tenants(tenants);
        Ok(requeued.len())
    }

    pub async fn purge_dead(&self, id: &Uuid) -> Result<bool, StoreError> {
        let pg = &self.inner;
        let n = pg
            .exec("DELETE FROM events WHERE id = $1 AND state = 'dead'", &[id])
            .await?;
        let mut mem = lock(&pg.mem);
        mem.dead = mem.dead.saturating_sub(n);
        Ok(n == 1)
    }

    /// Insert or replace inventory records; with `replace`, that account's other records go.
    pub async fn write_inventory(
        &self,
        tenants: &[InventoryTenant],
        replace: Option<&str>,
    ) -> Result<(), StoreError> {
        let pg = &self.inner;
        let ids: Vec<Uuid> = tenants.iter().map(|t| t.id).collect();
        let accounts: Vec<String> = tenants
            .iter()
            .map(|t| account_of(t.account.as_deref()).to_string())
            .collect();
        let records: Vec<serde_json::Value> = tenants.iter().map(value_of).collect();
        pg.timed(async {
            let mut client = pg.client().await?;
            let tx = pg.begin(&mut client).await?;
            if let Some(account) = replace {
                tx.execute(
                    "DELETE FROM inventory WHERE account = $1 AND NOT (tenant_id = ANY($2))",
                    &[&account, &ids],
                )
                .await
                .map_err(pg_error)?;
            }
            tx.execute(
                "INSERT INTO inventory (tenant_id, account, record)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[])
                 ON CONFLICT (tenant_id) DO UPDATE SET account = EXCLUDED.account, record = EXCLUDED.record",
                &[&ids, &accounts, &records],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
        .await
    }

    pub async fn put_doc<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let pg = &self.inner;
        let value = value_of(value);
        pg.exec(
            "INSERT INTO documents (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            &[&name, &value],
        )
        .await
        .map(|_| ())
    }

    /// Remove a stored account (with `force`, its events, tenant states and inventory too).
    pub async fn remove_account(&self, id: &str, force: bool) -> Result<Removal, StoreError> {
        let pg = &self.inner;
        let _order = pg.insert_lock.lock().await;
        let in_flight = lock(&pg.in_flight_ids).clone();
        let outcome = pg
            .timed(async {
                let mut client = pg.client().await?;
                let tx = pg.begin(&mut client).await?;
                if tx
                    .query_opt("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", &[&id])
                    .await
                    .map_err(pg_error)?
                    .is_none()
                {
                    return Ok((Removal::NotStored, Vec::new()));
                }
                let rows = tx
                    .query(
                        "SELECT id, tenant_id, state FROM events
                         WHERE coalesce(account, 'default') = $1 AND state IN ('queued', 'dead')",
                        &[&id],
                    )
                    .await
                    .map_err(pg_error)?;
                let mut pending: Vec<(Uuid, TenantId)> = Vec::new();
                for r in &rows {
                    if col::<&str>(r, 2)? == "queued" {
                        pending.push((col(r, 0)?, col(r, 1)?));
                    }
                }
                let dead = rows.len() - pending.len();
                let ids: Vec<Uuid> = pending.iter().map(|p| p.0).collect();
                if let Some(stop) = removal_stops(id, &ids, dead, force, &in_flight)? {
                    return Ok((stop, Vec::new()));
                }
                tx.execute(
                    "DELETE FROM events WHERE coalesce(account, 'default') = $1 AND state IN ('queued', 'dead')",
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
                let tenant_states = tx
                    .execute("DELETE FROM tenants WHERE coalesce(account, 'default') = $1", &[&id])
                    .await
                    .map_err(pg_error)?;
                let inventory = tx
                    .execute("DELETE FROM inventory WHERE account = $1", &[&id])
                    .await
                    .map_err(pg_error)?;
                tx.execute("DELETE FROM accounts WHERE id = $1", &[&id])
                    .await
                    .map_err(pg_error)?;
                let mut tenants: Vec<TenantId> = pending.iter().map(|p| p.1).collect();
                tenants.sort();
                tenants.dedup();
                let mut heads = Vec::new();
                for t in tenants {
                    heads.push((t, head_of(&tx, &t).await?));
                }
                tx.commit().await.map_err(pg_error)?;
                Ok((
                    Removal::Removed(AccountDropped {
                        pending_events: pending.len() as u64,
                        dead_letters: dead as u64,
                        tenant_states,
                        inventory,
                    }),
                    heads,
                ))
            })
            .await?;
        let (removal, heads) = outcome;
        if let Removal::Removed(d) = &removal {
            let mut mem = lock(&pg.mem);
            mem.depth = mem.depth.saturating_sub(d.pending_events);
            mem.dead = mem.dead.saturating_sub(d.dead_letters);
            for (t, h) in heads {
                mem.set_head(t, h);
            }
        }
        Ok(removal)
    }

    /// Delete delivered events past the retention and idempotency keys past their window, in
    /// chunks. Returns how many events went.
    pub async fn compact(&self, now_ms: i64) -> Result<usize, StoreError> {
        let pg = &self.inner;
        let (cutoff, idem_cutoff) = compaction_cutoffs(now_ms, pg.options.delivered_retention);
        let mut removed = 0usize;
        let chunk = |sql: &'static str, cutoff: i64| async move { pg.exec(sql, &[&cutoff]).await };
        loop {
            let n = chunk(
                "DELETE FROM events WHERE id IN (SELECT id FROM events
                 WHERE state = 'delivered' AND delivered_at_ms < $1 LIMIT 1000)",
                cutoff,
            )
            .await?;
            removed += n as usize;
            if n == 0 {
                break;
            }
        }
        while chunk(
            "DELETE FROM idempotency_keys WHERE key IN (SELECT key FROM idempotency_keys
             WHERE accepted_at_ms < $1 LIMIT 1000)",
            idem_cutoff,
        )
        .await?
            > 0
        {}
        Ok(removed)
    }
}

/// How a batch is settled.
#[derive(Clone, Copy)]
enum Settle<'a> {
    Delivered,
    /// The error, and when to try again (Unix ms).
    Failed(&'a str, i64),
    /// The reason.
    Dead(&'a str),
}

/// Mark the batch delivered and record the tenant's reported state (and its newest decision,
/// for ordering across replicas); answers how many events left the queue.
async fn delivered(
    tx: &Transaction<'_>,
    batch: &Batch,
    ids: &[Uuid],
    now: i64,
) -> Result<u64, StoreError> {
    let n = tx
        .execute(
            "UPDATE events SET state = 'delivered', delivered_at_ms = $1,
             attempts = attempts + 1, next_attempt_at_ms = NULL
             WHERE id = ANY($2) AND state = 'queued'",
            &[&now, &ids],
        )
        .await
        .map_err(pg_error)?;
    let reported = batch
        .events
        .iter()
        .filter_map(|e| e.kind.intended_state())
        .next_back();
    let decided = crate::store::newest_decision_at(&batch.events);
    if let Some(state) = reported {
        tx.execute(
            "INSERT INTO tenants (tenant_id, last_reported, last_reported_at_ms, last_sent_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO UPDATE SET
             last_reported = EXCLUDED.last_reported,
             last_reported_at_ms = EXCLUDED.last_reported_at_ms,
             last_sent_at_ms = greatest(tenants.last_sent_at_ms, EXCLUDED.last_sent_at_ms)",
            &[&batch.tenant_id, &state_text(Some(state)), &now, &decided],
        )
        .await
        .map_err(pg_error)?;
    }
    Ok(n)
}

/// In a shared store, the shard's record must still name this replica at the batch's epoch,
/// locked until COMMIT so no claim slips in between: else the write is refused.
async fn check_fence(pg: &Pg, tx: &Transaction<'_>, batch: &Batch) -> Result<(), StoreError> {
    let (Some((shard, epoch)), Some(own)) = (batch.fence, pg.ownership.get()) else {
        return Ok(());
    };
    let held = tx
        .query_opt(
            "SELECT 1 FROM shards WHERE shard = $1 AND epoch = $2 AND owner = $3 FOR SHARE",
            &[&(shard as i32), &(epoch as i64), &own.me],
        )
        .await
        .map_err(pg_error)?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::Fenced(shard)),
    }
}

impl Pg {
    /// A report of `tenant` went out while this replica held its shard, and was settled only
    /// after it lost it: it may have reached the platform after the new owner's last report
    /// of the tenant. Noted in the store (outside the fence: any replica may note it), so the
    /// owner reports the tenant's latest decision again.
    async fn note_late_report(&self, tenant: TenantId, shard: u32) {
        let noted = self
            .exec(
                "INSERT INTO late_reports (tenant_id, shard) VALUES ($1, $2)
                 ON CONFLICT (tenant_id) DO UPDATE SET shard = EXCLUDED.shard, noted_at = now()",
                &[&tenant, &(shard as i32)],
            )
            .await;
        match noted {
            Ok(_) => tracing::warn!(
                message = "a report went out before this replica lost its shard and was answered after: its owner reports the tenant's latest decision again",
                tenant_id = %tenant,
                shard
            ),
            Err(e) => tracing::warn!(
                message = "a report answered after this replica lost its shard could not be noted; the owner's takeover re-assertion covers it only if it came later",
                tenant_id = %tenant,
                shard,
                error = %e
            ),
        }
    }
}

/// A refused (fenced) write: counted, and the shard dropped at once.
fn fenced<T>(pg: &Pg, result: &Result<T, StoreError>) {
    if let (Err(StoreError::Fenced(shard)), Some(own)) = (result, pg.ownership.get()) {
        own.fenced(*shard);
    }
}

/// The tenant's oldest pending event (seq, accepted ms), read in the transaction.
pub(super) async fn head_of(
    tx: &Transaction<'_>,
    tenant: &TenantId,
) -> Result<Option<Head>, StoreError> {
    tx.query_opt(
        "SELECT seq, accepted_at_ms, account FROM events
             WHERE tenant_id = $1 AND state = 'queued' ORDER BY seq LIMIT 1",
        &[tenant],
    )
    .await
    .map_err(pg_error)?
    .map(|r| Head::of_row(&r))
    .transpose()
}

/// `n` new sequence numbers, ascending.
pub(super) async fn next_seqs(tx: &Transaction<'_>, n: usize) -> Result<Vec<i64>, StoreError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows = tx
        .query(
            "SELECT nextval('event_seq') FROM generate_series(1, $1::bigint)",
            &[&(n as i64)],
        )
        .await
        .map_err(pg_error)?;
    let mut seqs = rows
        .iter()
        .map(|r| col::<i64>(r, 0))
        .collect::<Result<Vec<_>, _>>()?;
    seqs.sort_unstable();
    Ok(seqs)
}

impl Pg {
    /// Write groups of events (and an account change, whose refusal writes nothing) in one transaction, in sequence order
    /// with every other insert; answer each group's outcomes once committed.
    pub(super) async fn insert_events(
        &self,
        requests: Vec<Vec<NewEvent>>,
        account: Option<AccountWrite>,
    ) -> Result<Vec<Vec<Enqueued>>, StoreError> {
        let _order = self.insert_lock.lock().await;
        let now = now_ms();
        let (outcomes, accepted) = self
            .timed(async {
                let mut client = self.client().await?;
                let tx = self.begin(&mut client).await?;
                if let Some(change) = &account {
                    write_account_row(&tx, change).await?;
                }
                let keys: Vec<String> = requests
                    .iter()
                    .flatten()
                    .filter_map(|e| e.idempotency_key.clone())
                    .collect();
                let mut known: HashMap<String, Uuid> = HashMap::new();
                if !keys.is_empty() {
                    for r in tx
                        .query(
                            "SELECT key, event_id FROM idempotency_keys WHERE key = ANY($1)",
                            &[&keys],
                        )
                        .await
                        .map_err(pg_error)?
                    {
                        known.insert(col(&r, 0)?, col(&r, 1)?);
                    }
                }
                let mut outcomes = Vec::with_capacity(requests.len());
                let mut rows: Vec<Row> = Vec::new();
                for events in &requests {
                    let mut outs = Vec::with_capacity(events.len());
                    for ev in events {
                        if let Some(id) = ev.idempotency_key.as_ref().and_then(|k| known.get(k)) {
                            outs.push(Enqueued::Duplicate(*id));
                            continue;
                        }
                        let id = Uuid::now_v7();
                        if let Some(k) = &ev.idempotency_key {
                            known.insert(k.clone(), id);
                        }
                        outs.push(Enqueued::Accepted(id));
                        let shard = self.shards.of(ev.account.as_deref());
                        rows.push(Row {
                            id,
                            ev: ev.clone(),
                            shard,
                        });
                    }
                    outcomes.push(outs);
                }
                let seqs = next_seqs(&tx, rows.len()).await?;
                let wake_up = self.wake_up_for(&rows);
                insert_rows(&tx, &rows, &seqs, now, wake_up).await?;
                tx.commit().await.map_err(pg_error)?;
                let accepted: Vec<(TenantId, Head, u32)> = rows
                    .iter()
                    .zip(&seqs)
                    .map(|(r, s)| {
                        let head = Head {
                            seq: *s as u64,
                            accepted_ms: now,
                            account: r.ev.account.clone(),
                        };
                        (r.ev.tenant_id, head, r.shard)
                    })
                    .collect();
                Ok((outcomes, accepted))
            })
            .await?;
        let mut tenants = Vec::new();
        {
            let mut mem = lock(&self.mem);
            mem.depth += accepted.len() as u64;
            for (tenant, head, shard) in accepted {
                // In a pool, only tenants with events of a shard held are woken here: the
                // owner of the others is woken by the NOTIFY sent with them, and a lane here
                // would only read them to find it may not take them.
                let ours = self
                    .ownership
                    .get()
                    .is_none_or(|own| own.may_act(shard).is_some());
                mem.add(tenant, head);
                if ours && !tenants.contains(&tenant) {
                    tenants.push(tenant);
                }
            }
        }
        self.wake_tenants(tenants);
        Ok(outcomes)
    }
}

impl Pg {
    /// In a pool, the wake-up for the owners of the shards of `rows` this replica does not
    /// hold: one `NOTIFY` naming their tenants, sent in the intake's transaction (so delivered
    /// at COMMIT, and only then).
    fn wake_up_for(&self, rows: &[Row]) -> Option<String> {
        let own = self.ownership.get()?;
        let mut tenants: Vec<(TenantId, u32)> = rows
            .iter()
            .filter(|r| own.may_act(r.shard).is_none())
            .map(|r| (r.ev.tenant_id, r.shard))
            .collect();
        if tenants.is_empty() {
            return None;
        }
        tenants.sort_unstable();
        tenants.dedup();
        Some(wake::payload(&self.schema, &tenants))
    }
}

/// Insert the events, their idempotency keys and the tenants' intended states, and send
/// `notify` (a wake-up payload) with them: the statements are independent, so they are sent
/// together (pipelined) and the transaction waits for one round of answers, not one each.
async fn insert_rows(
    tx: &Transaction<'_>,
    rows: &[Row],
    seqs: &[i64],
    now: i64,
    notify: Option<String>,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let tenants: Vec<Uuid> = rows.iter().map(|r| r.ev.tenant_id).collect();
    let accounts: Vec<Option<String>> = rows.iter().map(|r| r.ev.account.clone()).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.ev.kind.as_str()).collect();
    let categories: Vec<&str> = rows.iter().map(|r| r.ev.category.as_str()).collect();
    let actions: Vec<&str> = rows.iter().map(|r| r.ev.action.as_str()).collect();
    let keys: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.ev.idempotency_key.as_deref())
        .collect();
    let occurred: Vec<Option<i64>> = rows.iter().map(|r| r.ev.occurred_at_ms).collect();
    let shards: Vec<i32> = rows.iter().map(|r| r.shard as i32).collect();
    let event_params: [Param; 11] = [
        &ids,
        &seqs,
        &tenants,
        &accounts,
        &kinds,
        &categories,
        &actions,
        &keys,
        &occurred,
        &shards,
        &now,
    ];
    let (key_texts, key_ids): (Vec<&str>, Vec<Uuid>) = rows
        .iter()
        .filter_map(|r| r.ev.idempotency_key.as_deref().map(|k| (k, r.id)))
        .unzip();
    let key_params: [Param; 3] = [&key_texts, &key_ids, &now];
    let intended = intended_states(rows, now);
    let t: Vec<Uuid> = intended.iter().map(|d| d.tenant).collect();
    let a: Vec<Option<String>> = intended.iter().map(|d| d.account.clone()).collect();
    let st: Vec<&str> = intended.iter().map(|d| d.state).collect();
    let at: Vec<Option<i64>> = intended.iter().map(|d| d.occurred).collect();
    let intended_params: [Param; 5] = [&t, &a, &st, &at, &now];
    let notify_params: Option<[Param; 2]> = notify.as_ref().map(|p| [&wake::CHANNEL as Param, p]);
    // A decision with no `occurred_at` is dated at acceptance, but never before the tenant's
    // decisions already stored (see `intended_states`).
    let mut statements = vec![tx.execute(
        "INSERT INTO events (id, seq, tenant_id, account, kind, category, action,
             idempotency_key, occurred_at_ms, shard, accepted_at_ms, state)
         SELECT u.*,
             CASE WHEN u.kind IN ('activation', 'deactivation') AND u.occurred IS NULL
                 THEN greatest($11, (SELECT greatest(t.intended_at_ms, t.last_sent_at_ms)
                     FROM tenants t WHERE t.tenant_id = u.tenant))
                 ELSE $11 END,
             'queued'
         FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[],
             $7::text[], $8::text[], $9::bigint[], $10::integer[])
             AS u(id, seq, tenant, account, kind, category, action, ikey, occurred, shard)",
        &event_params,
    )];
    if !key_texts.is_empty() {
        statements.push(tx.execute(
            "INSERT INTO idempotency_keys (key, event_id, accepted_at_ms)
             SELECT k, e, $3 FROM unnest($1::text[], $2::uuid[]) AS u(k, e)",
            &key_params,
        ));
    }
    if !intended.is_empty() {
        statements.push(tx.execute(
            "INSERT INTO tenants (tenant_id, account, intended, intended_at_ms)
             SELECT t, a, s, coalesce(d, greatest($5, (SELECT greatest(x.intended_at_ms,
                     x.last_sent_at_ms) FROM tenants x WHERE x.tenant_id = u.t)))
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[]) AS u(t, a, s, d)
             ON CONFLICT (tenant_id) DO UPDATE SET account = EXCLUDED.account,
                 intended = EXCLUDED.intended, intended_at_ms = EXCLUDED.intended_at_ms
             WHERE tenants.intended_at_ms IS NULL
                 OR EXCLUDED.intended_at_ms >= tenants.intended_at_ms",
            &intended_params,
        ));
    }
    if let Some(params) = &notify_params {
        statements.push(tx.execute("SELECT pg_notify($1, $2)", params));
    }
    // Answers come in order: after a refused statement the others are refused as "the
    // transaction is aborted", so the first error seen is the cause.
    for result in futures_util::future::join_all(statements).await {
        result.map_err(pg_error)?;
    }
    Ok(())
}

/// Each tenant's latest decision among `rows`, ordering decisions by `occurred_at`
/// (acceptance when absent) as delivery does, sorted by tenant: in one order in every
/// transaction (of every replica), so two groups with the same tenants wait for each other
/// instead of deadlocking. The upsert leaves a tenant that holds a newer decision (a
/// re-assertion that raced a newer decision, a late `occurred_at`) as it is.
///
/// Its date is `occurred_at`, or `None` when the vendor gave none: the statement then dates
/// it as its event is dated, at acceptance but never before the tenant's decisions already
/// stored (intended or reported). A wall clock set back, or a replica whose clock is behind a
/// peer's, must not make a new decision look older than the one before it: it would be set
/// aside unsent, and the intended state left at the older one.
fn intended_states(rows: &[Row], now: i64) -> Vec<Decision> {
    let mut intended: Vec<Decision> = Vec::new();
    // For choosing among the group's decisions: `occurred_at`, else acceptance.
    let at = |d: &Decision| d.occurred.unwrap_or(now);
    for r in rows {
        if let Some(state) = r.ev.kind.intended_state() {
            let decision = Decision {
                tenant: r.ev.tenant_id,
                account: r.ev.account.clone(),
                state: state_text(Some(state)).expect("a state"),
                occurred: r.ev.occurred_at_ms,
            };
            match intended.iter_mut().find(|d| d.tenant == r.ev.tenant_id) {
                Some(d) if at(&decision) < at(d) => {}
                Some(d) => *d = decision,
                None => intended.push(decision),
            }
        }
    }
    intended.sort_unstable_by_key(|d| d.tenant);
    intended
}

/// A tenant's latest decision in a group of intake.
struct Decision {
    tenant: Uuid,
    account: Option<String>,
    state: &'static str,
    /// `occurred_at` as the vendor gave it.
    occurred: Option<i64>,
}

/// Apply an account change in the transaction, or refuse it (`StoreError::Account`).
async fn write_account_row(tx: &Transaction<'_>, change: &AccountWrite) -> Result<(), StoreError> {
    let id = change.id();
    let current: Option<StoredAccount> = tx
        .query_opt(
            "SELECT record FROM accounts WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(pg_error)?
        .map(|r| json_of(col(&r, 0)?))
        .transpose()?;
    let record = change.apply(current)?;
    tx.execute(
        "INSERT INTO accounts (id, record) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
        &[&id, &value_of(&record)],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}
