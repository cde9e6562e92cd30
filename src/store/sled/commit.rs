//! The write path: one writer thread writes each group of jobs as one sled batch, makes it
//! durable and answers everyone waiting for it.

use super::*;

pub(super) type FlushWaiter = oneshot::Sender<Result<(), String>>;
pub(super) type EnqueueReply = oneshot::Sender<Result<Vec<Enqueued>, StoreError>>;

/// Work for the writer thread.
pub(super) enum Job {
    /// The clock: nothing to write (see [`ticker`]).
    Tick,
    /// Answer after a flush that starts after this job was sent.
    Sync(FlushWaiter),
    /// Write these events (all or none), flush, then answer.
    Enqueue(Vec<NewEvent>, EnqueueReply),
    /// Record a delivered batch, flush, then answer.
    Ack(AckJob, oneshot::Sender<Result<(), StoreError>>),
    /// Any other write (a failed attempt, dead letters, inventory, documents, compaction): run
    /// by the writer thread with the counters in hand, flushed with its group, then answered.
    Write(WriteFn, WriteReply),
}

/// A write run on the writer thread. It applies its own sled batch and updates the counters
/// only once that batch is applied.
pub(super) type WriteFn = Box<dyn FnOnce(&Core, &mut Counters) -> Result<Wrote, StoreError> + Send>;
pub(super) type WriteReply = oneshot::Sender<Result<usize, StoreError>>;

/// What a write did: how many items it touched, and the tenants to wake once it is durable.
#[derive(Debug, Default)]
pub(super) struct Wrote {
    pub(super) count: usize,
    pub(super) wake: Vec<TenantId>,
}

/// What a written group gives back: each enqueue's outcomes, and the tenants that got events.
pub(super) type GroupWritten = (Vec<Vec<Enqueued>>, Vec<TenantId>);

/// What the writer thread needs of a delivered batch.
pub(super) struct AckJob {
    pub(super) tenant: TenantId,
    /// The batch's account (every event of a batch is of one).
    pub(super) account: Option<String>,
    /// seq, id, kind and attempts before this delivery, of each event.
    pub(super) items: Vec<(u64, Uuid, EventKind, u32)>,
    /// When the newest decision of the batch was taken (none: the batch has no decision).
    pub(super) decided_at: Option<i64>,
}

impl Core {
    /// Remember the first failed write: the store must be opened again to write once more.
    pub(super) fn note_write_error(&self, error: &str) {
        let mut first = lock(&self.write_error);
        if first.is_none() {
            tracing::error!(message = "the store cannot write; intake answers 503 and delivery pauses until it is opened again", error = %error);
            *first = Some(error.to_string());
        }
    }

    pub(super) fn get_json<T: DeserializeOwned>(
        &self,
        key: Vec<u8>,
    ) -> Result<Option<T>, StoreError> {
        self.tree.get(key)?.map(|v| from_json(&v)).transpose()
    }

    pub(super) fn tenant_state(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<TenantState>, StoreError> {
        self.get_json(tenant_key(tenant))
    }

    pub(super) fn wake_tenants(&self, tenants: impl IntoIterator<Item = TenantId>) {
        self.wakeup.wake(tenants);
    }

    /// Write a group of enqueue requests and acknowledgements as one sled batch (not yet
    /// flushed). Each request's outcome is returned in order, with the tenants that got events.
    ///
    /// The group is built (idempotency keys and tenant states read) without the writer lock:
    /// only this thread changes the counters, so the sequence read first stays the store's
    /// until the batch is applied. The lock is held only to apply it and change the counters
    /// and heads with it, so a reader of the heads (delivery, a probe) waits for no disk read.
    pub(super) fn write_group(
        &self,
        requests: Vec<Vec<NewEvent>>,
        acks: &[AckJob],
    ) -> Result<GroupWritten, StoreError> {
        let seq = lock(&self.writer).seq;
        let mut group = Group::new(seq);
        let mut outcomes = Vec::with_capacity(requests.len());
        for events in requests {
            let outs = events
                .into_iter()
                .map(|ev| group.enqueue(self, ev))
                .collect::<Result<Vec<_>, _>>()?;
            outcomes.push(outs);
        }
        for ack in acks {
            group.ack(self, ack)?;
        }
        if group.added == 0 && group.removed == 0 {
            return Ok((outcomes, group.touched));
        }
        let mut w = lock(&self.writer);
        debug_assert_eq!(w.seq, seq, "only the writer thread changes the counters");
        group.apply(self, &mut w)?;
        for ack in acks {
            settled(&mut w.heads, &self.tree, ack.tenant)?;
        }
        for (tenant, seq) in &group.new_pending {
            w.heads.add(*tenant, *seq);
        }
        Ok((outcomes, group.touched))
    }

    /// Write events with other keys (`None`: removed) in one sled batch, from a `Write` job:
    /// the events are stored exactly as `enqueue` stores them. Returns each event's outcome and
    /// the tenants to wake once durable.
    pub(super) fn write_events_with(
        &self,
        w: &mut Counters,
        events: Vec<NewEvent>,
        extra: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(Vec<Enqueued>, Vec<TenantId>), StoreError> {
        let mut group = Group::new(w.seq);
        let outcomes = events
            .into_iter()
            .map(|ev| group.enqueue(self, ev))
            .collect::<Result<Vec<_>, _>>()?;
        for (k, v) in extra {
            match v {
                Some(v) => group.batch.insert(k, v),
                None => group.batch.remove(k),
            }
        }
        group.apply(self, w)?;
        for (tenant, seq) in &group.new_pending {
            w.heads.add(*tenant, *seq);
        }
        Ok((outcomes, group.touched))
    }

    /// The group's pending update of a tenant's state, loaded from the store the first time.
    pub(super) fn tenant_entry<'a>(
        &self,
        updates: &'a mut Vec<TenantState>,
        tenant: TenantId,
    ) -> Result<&'a mut TenantState, StoreError> {
        let pos = match updates.iter().position(|t| t.tenant_id == tenant) {
            Some(i) => i,
            None => {
                let current = self.tenant_state(&tenant)?.unwrap_or(TenantState {
                    tenant_id: tenant,
                    ..Default::default()
                });
                updates.push(current);
                updates.len() - 1
            }
        };
        Ok(&mut updates[pos])
    }
}

/// One group's writes as they are gathered: a sled batch, the sequence it reaches, and what the
/// in-memory state learns once the batch is applied.
struct Group {
    now: i64,
    batch: ::sled::Batch,
    seq: u64,
    added: u64,
    removed: u64,
    /// Idempotency keys first seen in this group.
    keys: Vec<(String, Uuid)>,
    tenant_updates: Vec<TenantState>,
    new_pending: Vec<(TenantId, u64)>,
    /// Tenants that got events, to wake once durable.
    touched: Vec<TenantId>,
    /// What the group does to each account's counts.
    shift: counts::Shift,
}

impl Group {
    fn new(seq: u64) -> Group {
        Group {
            now: now_ms(),
            batch: ::sled::Batch::default(),
            seq,
            added: 0,
            removed: 0,
            keys: Vec::new(),
            tenant_updates: Vec::new(),
            new_pending: Vec::new(),
            touched: Vec::new(),
            shift: Default::default(),
        }
    }

    /// An event with its pending key and idempotency key, or the event its key names already.
    fn enqueue(&mut self, core: &Core, ev: NewEvent) -> Result<Enqueued, StoreError> {
        if let Some(k) = &ev.idempotency_key {
            if let Some((_, id)) = self.keys.iter().find(|(s, _)| s == k) {
                return Ok(Enqueued::Duplicate(*id));
            }
            if let Some(v) = core.tree.get(idem_key(k))? {
                return Ok(Enqueued::Duplicate(idem_target(&v)?));
            }
        }
        let now = self.now;
        self.seq += 1;
        let seq = self.seq;
        let id = Uuid::now_v7();
        let tenant = ev.tenant_id;
        if let Some(k) = &ev.idempotency_key {
            let mut v = id.as_bytes().to_vec();
            v.extend_from_slice(&now.to_be_bytes());
            self.batch.insert(idem_key(k), v);
            self.batch.insert(idem_expiry_key(now, k), &[]);
            self.keys.push((k.clone(), id));
        }
        // A decision is dated by `occurred_at`, else by its acceptance, but never before the
        // tenant's decisions already stored: a clock set back cannot make it look older than
        // the decision before it. The tenant's intended state is its latest decision by date.
        let mut accepted_at = now;
        if let Some(intended) = ev.kind.intended_state() {
            let state = core.tenant_entry(&mut self.tenant_updates, tenant)?;
            if ev.occurred_at_ms.is_none() {
                let stored = state.intended_at_ms.max(state.last_sent_at_ms);
                accepted_at = stored.map_or(now, |at| at.max(now));
            }
            let decided = ev.occurred_at_ms.unwrap_or(accepted_at);
            if !state.dated || state.intended_at_ms.is_none_or(|at| decided >= at) {
                state.intended = Some(intended);
                state.intended_at_ms = Some(decided);
                state.account = ev.account.clone();
                state.dated = true;
            }
        }
        self.shift.add(ev.account.as_deref(), 1, 0);
        let rec = EventRecord {
            id,
            tenant_id: tenant,
            kind: ev.kind,
            category: ev.category,
            action: ev.action,
            idempotency_key: ev.idempotency_key,
            accepted_at_ms: accepted_at,
            occurred_at_ms: ev.occurred_at_ms,
            account: ev.account.clone(),
            state: EventState::Queued,
            attempts: 0,
            last_error: None,
            next_attempt_at_ms: None,
            delivered_at_ms: None,
            dead_reason: None,
            seq,
        };
        self.batch.insert(event_key(&id), to_json(&rec));
        self.batch
            .insert(pending_key(&tenant, seq), id.as_bytes().as_slice());
        self.new_pending.push((tenant, seq));
        if !self.touched.contains(&tenant) {
            self.touched.push(tenant);
        }
        self.added += 1;
        Ok(Enqueued::Accepted(id))
    }

    /// A delivered batch: its pending keys go, delivery markers come, and the tenant's last
    /// reported state is the newest activation or deactivation in it.
    fn ack(&mut self, core: &Core, ack: &AckJob) -> Result<(), StoreError> {
        let now = self.now;
        let mut reported = None;
        for (seq, id, kind, attempts) in &ack.items {
            if let Some(state) = kind.intended_state() {
                reported = Some(state);
            }
            self.batch.remove(pending_key(&ack.tenant, *seq));
            self.batch.insert(
                delivered_marker_key(id),
                delivered_marker(now, attempts + 1),
            );
            self.batch.insert(delivered_key(now, id), &[]);
        }
        self.removed += ack.items.len() as u64;
        self.shift
            .add(ack.account.as_deref(), -(ack.items.len() as i64), 0);
        if let Some(state) = reported {
            let t = core.tenant_entry(&mut self.tenant_updates, ack.tenant)?;
            t.last_reported = Some(state);
            t.last_reported_at_ms = Some(now);
            t.last_sent_at_ms = t.last_sent_at_ms.max(ack.decided_at);
        }
        Ok(())
    }

    /// Apply the batch with the tenant states and counters, then move the counters on.
    fn apply(&mut self, core: &Core, w: &mut Counters) -> Result<(), StoreError> {
        let mut batch = std::mem::take(&mut self.batch);
        for t in &self.tenant_updates {
            batch.insert(tenant_key(&t.tenant_id), to_json(t));
        }
        let depth = (w.depth + self.added).saturating_sub(self.removed);
        batch.insert(meta_key("seq"), &self.seq.to_be_bytes());
        batch.insert(meta_key("depth"), &depth.to_be_bytes());
        put_account_counts(&mut batch, self.shift.after(&w.accounts));
        core.tree.apply_batch(batch)?;
        w.seq = self.seq;
        w.depth = depth;
        std::mem::take(&mut self.shift).apply(&mut w.accounts);
        Ok(())
    }
}

/// A written group, with everyone waiting for its flush.
pub(super) struct Written {
    pub(super) syncs: Vec<FlushWaiter>,
    pub(super) replies: Vec<EnqueueReply>,
    pub(super) ack_replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// Each enqueue's outcomes and the tenants that got events, or why the write failed.
    pub(super) result: Result<GroupWritten, String>,
    /// The other writes of the group, each with its own result.
    pub(super) writes: Vec<(Result<Wrote, StoreError>, WriteReply)>,
    /// The store's sequence once the group was written: durable with its flush.
    pub(super) seq: u64,
}

impl Written {
    /// Answer everyone once the flush that covers the group has ended.
    pub(super) fn settle(self, core: &Core, flushed: &Result<(), String>) {
        let error = |flush: bool, message: &str| {
            if flush {
                StoreError::Flush(message.to_string())
            } else {
                StoreError::Write(message.to_string())
            }
        };
        match (self.result, flushed) {
            (Ok((outcomes, touched)), Ok(())) => {
                core.wake_tenants(touched);
                for (reply, out) in self.replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(out));
                }
                for reply in self.ack_replies {
                    let _ = reply.send(Ok(()));
                }
            }
            (result, flushed) => {
                // Every caller of the group gets the error: the write's, or the flush's.
                let (flush, message) = match (result, flushed) {
                    (Err(e), _) => (false, e),
                    (Ok(_), Err(e)) => (true, e.clone()),
                    (Ok(_), Ok(())) => unreachable!("handled above"),
                };
                for reply in self.replies {
                    let _ = reply.send(Err(error(flush, &message)));
                }
                for reply in self.ack_replies {
                    let _ = reply.send(Err(error(flush, &message)));
                }
            }
        }
        for (result, reply) in self.writes {
            let _ = reply.send(match (result, flushed) {
                (Ok(wrote), Ok(())) => {
                    core.wake_tenants(wrote.wake);
                    Ok(wrote.count)
                }
                (Ok(_), Err(e)) => Err(StoreError::Flush(e.clone())),
                (Err(e), _) => Err(e),
            });
        }
        for w in self.syncs {
            let _ = w.send(flushed.clone());
        }
    }

    fn waiters(&self) -> usize {
        self.syncs.len() + self.replies.len() + self.ack_replies.len() + self.writes.len()
    }
}

/// The writer: takes every job waiting, writes the enqueues and acknowledgements of the group
/// as one sled batch and flushes it, then hands it to the syncer. While it flushes, new jobs
/// wait in the channel without waking anyone, so the next group is all of them: a caller wakes
/// this thread only when it was idle. While the syncer makes one group durable, this thread
/// writes the next.
pub(super) fn writer(core: Arc<Core>, mut rx: tokio::sync::mpsc::Receiver<Job>) {
    let (to_syncer, groups) = std::sync::mpsc::channel::<Flushed>();
    let syncer = {
        let core = core.clone();
        std::thread::Builder::new()
            .name("statusd-sync".into())
            .spawn(move || syncer(core, groups))
    };
    let syncer = match syncer {
        Ok(handle) => handle,
        Err(e) => {
            core.note_write_error(&format!("cannot start the statusd-sync thread: {e}"));
            return;
        }
    };
    while let Some(first) = rx.blocking_recv() {
        let flushed = match write_jobs(&core, first, &mut rx) {
            // Only the clock's tick: idle, so the control file may be brought up to date.
            None => Flushed::Idle,
            Some(written) => {
                let sled = core.db.flush().map(|_| ()).map_err(|e| e.to_string());
                Flushed::Group(written, sled)
            }
        };
        if to_syncer.send(flushed).is_err() {
            break;
        }
    }
    drop(to_syncer);
    let _ = syncer.join();
}

/// A group sled has flushed (or failed to), on its way to the syncer; or word that the writer
/// is idle.
enum Flushed {
    Group(Written, Result<(), String>),
    Idle,
}

/// The syncer: takes every group sled has flushed, makes them durable with one `fdatasync` of
/// the log ([`LogFile`]) and answers everyone in them. Nobody is answered before the sync that
/// covers their writes has ended, and tenants are woken for delivery only then. After a sync
/// fails, no later group is answered as durable: the kernel reports a failed write-back once,
/// and what it dropped is gone even if a later sync succeeds.
fn syncer(core: Arc<Core>, groups: std::sync::mpsc::Receiver<Flushed>) {
    let mut control = ControlWriter::new(&core);
    let mut failed: Option<String> = None;
    // A test hook: `STATUSD_FAILPOINT=log-sync` fails every sync here, as a drive that cannot
    // write back would.
    let fail_syncs = std::env::var("STATUSD_FAILPOINT").is_ok_and(|v| v == "log-sync");
    while let Ok(first) = groups.recv() {
        let mut flushed = Vec::new();
        for item in std::iter::once(first).chain(groups.try_iter()) {
            if let Flushed::Group(written, sled) = item {
                flushed.push((written, sled));
            }
        }
        if flushed.is_empty() {
            control.write_if_behind(&core);
            continue;
        }
        if failed.is_none() {
            let synced = if fail_syncs {
                Err(StoreError::Flush(
                    "cannot sync the store's log: failpoint log-sync".into(),
                ))
            } else {
                core.log.sync()
            };
            failed = match synced {
                Ok(()) => None,
                // Said once: `settle` names it a failed flush.
                Err(StoreError::Flush(why)) => Some(why),
                Err(other) => Some(other.to_string()),
            };
        }
        for (written, sled) in flushed {
            let result = match (&failed, sled) {
                (Some(e), _) => Err(e.clone()),
                (None, sled) => sled,
            };
            if let Err(e) = &result {
                core.note_write_error(e);
            }
            core.flushes.fetch_add(1, Ordering::Relaxed);
            core.flush_waiters
                .fetch_add(written.waiters() as u64, Ordering::Relaxed);
            if result.is_ok() {
                control.durable(written.seq);
            }
            written.settle(&core, &result);
        }
        if control.due() {
            control.write_if_behind(&core);
        }
    }
    control.write_if_behind(&core);
}

/// Take `first` and every job waiting after it (up to [`MAX_GROUP_EVENTS`]) and write them;
/// `None` when there was nothing but ticks.
fn write_jobs(
    core: &Core,
    first: Job,
    rx: &mut tokio::sync::mpsc::Receiver<Job>,
) -> Option<Written> {
    let mut syncs = Vec::new();
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    let mut acks = Vec::new();
    let mut ack_replies = Vec::new();
    let mut writes = Vec::new();
    let mut events = 0;
    let mut next = Some(first);
    while let Some(job) = next.take() {
        match job {
            Job::Tick => {}
            Job::Sync(w) => syncs.push(w),
            Job::Enqueue(evs, reply) => {
                events += evs.len();
                requests.push(evs);
                replies.push(reply);
            }
            Job::Ack(ack, reply) => {
                events += ack.items.len();
                acks.push(ack);
                ack_replies.push(reply);
            }
            Job::Write(f, reply) => {
                events += 1;
                writes.push((f, reply));
            }
        }
        if events < MAX_GROUP_EVENTS {
            next = rx.try_recv().ok();
        }
    }
    if syncs.is_empty() && replies.is_empty() && ack_replies.is_empty() && writes.is_empty() {
        return None;
    }
    let result = if requests.is_empty() && acks.is_empty() {
        Ok((Vec::new(), Vec::new()))
    } else {
        core.write_group(requests, &acks).map_err(|e| {
            if matches!(e, StoreError::Sled(_)) {
                core.note_write_error(&e.to_string());
            }
            e.to_string()
        })
    };
    let writes = writes
        .into_iter()
        .map(|(f, reply)| {
            let result = f(core, &mut lock(&core.writer));
            if let Err(e @ StoreError::Sled(_)) = &result {
                core.note_write_error(&e.to_string());
            }
            (result, reply)
        })
        .collect();
    Some(Written {
        syncs,
        replies,
        ack_replies,
        result,
        writes,
        seq: lock(&core.writer).seq,
    })
}

/// The writer's clock: a tick every [`control::CONTROL_INTERVAL`], so an idle store records
/// the durable sequence in the control file. It holds only a weak handle of the job channel and
/// ends with it.
pub(super) fn ticker(jobs: tokio::sync::mpsc::WeakSender<Job>) {
    loop {
        std::thread::sleep(control::CONTROL_INTERVAL);
        let Some(tx) = jobs.upgrade() else { return };
        // A full queue means the writer is busy and will look at the control file itself.
        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = tx.try_send(Job::Tick) {
            return;
        }
    }
}

/// The syncer's record of the highest durable sequence, written to the control file at most
/// once per interval and when idle.
struct ControlWriter {
    durable: u64,
    written: u64,
    at: std::time::Instant,
}

impl ControlWriter {
    fn new(core: &Core) -> ControlWriter {
        let seq = lock(&core.writer).seq;
        ControlWriter {
            durable: seq,
            written: seq,
            at: std::time::Instant::now(),
        }
    }

    fn durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
    }

    fn due(&self) -> bool {
        self.at.elapsed() >= control::CONTROL_INTERVAL
    }

    fn write_if_behind(&mut self, core: &Core) {
        if self.durable == self.written {
            return;
        }
        self.at = std::time::Instant::now();
        match control::write(
            &core.path,
            &control::Control::new(core.store_id, self.durable, false),
        ) {
            Ok(()) => self.written = self.durable,
            Err(e) => {
                tracing::error!(message = "cannot write the store's control file", error = %e)
            }
        }
    }
}
