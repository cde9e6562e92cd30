//! The durable store: pending events per tenant, event states, dead letters, tenant state,
//! idempotency keys and the tenant inventory. **The only module that imports sled.**
//!
//! Promises:
//! - `enqueue` (and `ack_delivered`) return only after a flush covering their writes has
//!   completed. Concurrent calls are written together by one committer thread as one sled batch;
//!   a flusher thread makes each group durable while the committer writes the next (group
//!   commit in two stages). Each tenant's oldest pending event is kept in memory (rebuilt on
//!   open) for the oldest-pending figure, so no global order index is written.
//! - An event and every index pointing at it are written in one atomic sled batch, under one
//!   writer lock, so a crash never leaves an event that is stored but not dispatchable.
//! - Per tenant, events leave in acceptance order; a tenant has at most one batch in flight.
//! - Being in flight is kept in memory: taking a batch writes nothing, and after a crash every
//!   event that was in flight is simply `queued` again in its place (its pending key stays until
//!   it is settled). Stores of layout 1 (with `o` and `f` keys) are migrated on open.
//!
//! Layout (one sled tree, one-byte key prefixes, big-endian integers so keys sort by arrival):
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `e` | event uuid | event record (JSON) |
//! | `p` | tenant uuid + seq | event uuid (pending: queued or in flight) |
//! | `d` | event uuid | (dead letters) |
//! | `c` | delivered ms + event uuid | (delivered, for compaction) |
//! | `x` | event uuid | delivered ms + attempts (the record itself is not rewritten) |
//! | `i` | idempotency key | event uuid + accepted ms |
//! | `j` | accepted ms + idempotency key | (expiry index) |
//! | `t` | tenant uuid | tenant state (JSON) |
//! | `n` | tenant uuid | inventory record (JSON) |
//! | `m` | name | metadata: schema version, counters, reconciler documents |

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

pub type TenantId = Uuid;

/// The layout version written by this build; opening a store with a newer one is refused.
/// Layout version. 2: no `o` (order) or `f` (in-flight) keys; version 1 stores are migrated
/// on open.
pub const SCHEMA_VERSION: u64 = 2;

/// How long idempotency keys are remembered at least.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Sled(#[from] sled::Error),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error("store at {path} has schema version {found}; this statusd understands up to {SCHEMA_VERSION}")]
    SchemaTooNew { path: String, found: u64 },
    #[error("store flush failed: {0}")]
    Flush(String),
    #[error("store write failed: {0}")]
    Write(String),
    #[error("store is closed")]
    Closed,
    #[error("it is in use by another process (another statusd with the same store.path?)")]
    Locked { path: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Activation,
    Deactivation,
    Custom,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Activation => "activation",
            EventKind::Deactivation => "deactivation",
            EventKind::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    Queued,
    InFlight,
    Delivered,
    Dead,
}

/// The integration state of a tenant, as intended by the vendor or as last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntegrationState {
    Active,
    Inactive,
}

/// An event as the API hands it to the store, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub tenant_id: TenantId,
    pub kind: EventKind,
    pub category: String,
    pub action: String,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: Uuid,
    pub tenant_id: TenantId,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub category: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub idempotency_key: Option<String>,
    /// Unix milliseconds.
    pub accepted_at_ms: i64,
    pub state: EventState,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_attempt_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delivered_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dead_reason: Option<String>,
    /// Position in the tenant's queue (changes when a dead letter is retried).
    pub seq: u64,
}

/// What happened to one event handed to `enqueue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored and durable.
    Accepted(Uuid),
    /// The idempotency key was seen before; nothing new was stored.
    Duplicate(Uuid),
}

impl Enqueued {
    pub fn id(self) -> Uuid {
        match self {
            Enqueued::Accepted(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantState {
    pub tenant_id: TenantId,
    #[serde(default)]
    pub intended: Option<IntegrationState>,
    #[serde(default)]
    pub intended_at_ms: Option<i64>,
    #[serde(default)]
    pub last_reported: Option<IntegrationState>,
    #[serde(default)]
    pub last_reported_at_ms: Option<i64>,
}

/// A tenant as the last tenant reconcile saw it on the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryTenant {
    pub id: TenantId,
    pub parent_id: Option<TenantId>,
    pub name: Option<String>,
    pub kind: Option<String>,
    pub enabled: Option<bool>,
    pub deleted: bool,
    pub version: i64,
}

/// The oldest pending events of one tenant, taken for delivery.
#[derive(Debug, Clone)]
pub struct Batch {
    pub tenant_id: TenantId,
    pub events: Vec<EventRecord>,
}

impl Batch {
    pub fn ids(&self) -> Vec<Uuid> {
        self.events.iter().map(|e| e.id).collect()
    }
    /// When the oldest event of the batch was accepted.
    pub fn oldest_accepted_ms(&self) -> i64 {
        self.events
            .iter()
            .map(|e| e.accepted_at_ms)
            .min()
            .unwrap_or(0)
    }
    pub fn max_attempts(&self) -> u32 {
        self.events.iter().map(|e| e.attempts).max().unwrap_or(0)
    }
}

/// The answer of `take_batch`.
#[derive(Debug)]
pub enum Take {
    Ready(Batch),
    /// The head is in backoff until this Unix millisecond.
    NotBefore(i64),
    /// A batch of this tenant is already in flight.
    Busy,
    Empty,
}

/// Counters the rest needs cheaply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub depth: u64,
    pub in_flight: u64,
    pub dead_letters: u64,
    pub oldest_pending_accepted_ms: Option<i64>,
}

/// Group-commit figures, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushStats {
    pub flushes: u64,
    pub waiters: u64,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub cache_capacity_mb: u64,
    pub delivered_retention: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_mb: 64,
            delivered_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Counters {
    seq: u64,
    depth: u64,
    dead: u64,
    heads: Heads,
}

/// The oldest pending event of each tenant with pending events, kept in memory (built on open
/// from the pending keys) so the oldest pending event overall is found without an index that
/// every enqueue and acknowledgement would have to write.
#[derive(Default)]
struct Heads {
    by_seq: std::collections::BTreeSet<(u64, TenantId)>,
    by_tenant: std::collections::HashMap<TenantId, u64>,
}

impl Heads {
    /// A tenant got a pending event with `seq`; it is the head if the tenant had none.
    fn add(&mut self, tenant: TenantId, seq: u64) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.by_tenant.entry(tenant) {
            e.insert(seq);
            self.by_seq.insert((seq, tenant));
        }
    }

    /// The tenant's head is now `seq` (None: no pending events left).
    fn set(&mut self, tenant: TenantId, seq: Option<u64>) {
        if let Some(old) = self.by_tenant.remove(&tenant) {
            self.by_seq.remove(&(old, tenant));
        }
        if let Some(seq) = seq {
            self.by_tenant.insert(tenant, seq);
            self.by_seq.insert((seq, tenant));
        }
    }

    fn oldest(&self) -> Option<(u64, TenantId)> {
        self.by_seq.first().copied()
    }
}

type FlushWaiter = oneshot::Sender<Result<(), String>>;
type EnqueueReply = oneshot::Sender<Result<Vec<Enqueued>, StoreError>>;

/// Work for the committer thread.
enum Job {
    /// Answer after a flush that starts after this job was sent.
    Sync(FlushWaiter),
    /// Write these events (all or none), flush, then answer.
    Enqueue(Vec<NewEvent>, EnqueueReply),
    /// Record a delivered batch, flush, then answer.
    Ack(AckJob, oneshot::Sender<Result<(), StoreError>>),
}

/// What a written group gives back: each enqueue's outcomes, and the tenants that got events.
type GroupWritten = (Vec<Vec<Enqueued>>, Vec<TenantId>);

/// What the committer needs of a delivered batch.
struct AckJob {
    tenant: TenantId,
    /// seq, id, kind and attempts before this delivery, of each event.
    items: Vec<(u64, Uuid, EventKind, u32)>,
}

/// A group stops growing at this many events, so one slow group cannot hold many callers.
const MAX_GROUP_EVENTS: usize = 8192;

/// Everything the committer thread shares with the handles.
struct Core {
    db: sled::Db,
    tree: sled::Tree,
    writer: Mutex<Counters>,
    in_flight_tenants: Mutex<HashSet<TenantId>>,
    /// Events taken and not yet settled. Being in flight is kept in memory only: after a crash
    /// the pending keys (never removed while in flight) put every such event back in order.
    in_flight_ids: Mutex<HashSet<Uuid>>,
    flushes: AtomicU64,
    flush_waiters: AtomicU64,
    woken: Mutex<HashSet<TenantId>>,
    wake: Notify,
    options: StoreOptions,
}

struct Inner {
    core: Arc<Core>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// The committer, then the flusher: joined in this order (the committer's end stops the
    /// flusher).
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::ops::Deref for Inner {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.jobs.lock().expect("job sender lock").take();
        for handle in self.threads.lock().expect("threads lock").drain(..) {
            let _ = handle.join();
        }
        let _ = self.core.db.flush();
    }
}

// Key helpers ---------------------------------------------------------------------------------

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn event_key(id: &Uuid) -> Vec<u8> {
    key(b'e', &[id.as_bytes()])
}

fn pending_key(tenant: &TenantId, seq: u64) -> Vec<u8> {
    key(b'p', &[tenant.as_bytes(), &seq.to_be_bytes()])
}

fn dead_key(id: &Uuid) -> Vec<u8> {
    key(b'd', &[id.as_bytes()])
}

/// `x` + id: when an event was delivered and after how many attempts (a small value, so an
/// acknowledgement does not rewrite the event's record).
fn delivered_marker_key(id: &Uuid) -> Vec<u8> {
    key(b'x', &[id.as_bytes()])
}

fn delivered_marker(at_ms: i64, attempts: u32) -> Vec<u8> {
    let mut v = at_ms.to_be_bytes().to_vec();
    v.extend_from_slice(&attempts.to_be_bytes());
    v
}

fn delivered_key(at_ms: i64, id: &Uuid) -> Vec<u8> {
    key(b'c', &[&(at_ms.max(0) as u64).to_be_bytes(), id.as_bytes()])
}

fn idem_key(k: &str) -> Vec<u8> {
    key(b'i', &[k.as_bytes()])
}

fn idem_expiry_key(at_ms: i64, k: &str) -> Vec<u8> {
    key(b'j', &[&(at_ms.max(0) as u64).to_be_bytes(), k.as_bytes()])
}

fn tenant_key(t: &TenantId) -> Vec<u8> {
    key(b't', &[t.as_bytes()])
}

fn inventory_key(t: &TenantId) -> Vec<u8> {
    key(b'n', &[t.as_bytes()])
}

fn meta_key(name: &str) -> Vec<u8> {
    key(b'm', &[name.as_bytes()])
}

fn uuid_from(bytes: &[u8]) -> Result<Uuid, StoreError> {
    Uuid::from_slice(bytes)
        .map_err(|_| StoreError::Corrupt(format!("bad uuid of {} bytes", bytes.len())))
}

fn u64_from(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("bad integer".into()))?;
    Ok(u64::from_be_bytes(arr))
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialize")
}

fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Remove the indexes of layout 1 (`o` order keys, `f` in-flight keys), in chunks. Records
/// that layout 1 marked `in_flight` (taken when the process stopped) become `queued` again;
/// their pending keys kept their place.
fn migrate_to_2(tree: &sled::Tree) -> Result<(), StoreError> {
    let mut requeued = sled::Batch::default();
    for item in tree.scan_prefix([b'f']) {
        let (k, _) = item?;
        let id = uuid_from(&k[1..])?;
        if let Some(v) = tree.get(event_key(&id))? {
            let mut rec: EventRecord = from_json(&v)?;
            if rec.state == EventState::InFlight {
                rec.state = EventState::Queued;
                requeued.insert(event_key(&id), to_json(&rec));
            }
        }
    }
    tree.apply_batch(requeued)?;
    for prefix in [b'o', b'f'] {
        loop {
            let keys: Vec<sled::IVec> = tree
                .scan_prefix([prefix])
                .keys()
                .take(10_000)
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                break;
            }
            let mut b = sled::Batch::default();
            for k in keys {
                b.remove(k);
            }
            tree.apply_batch(b)?;
        }
    }
    Ok(())
}

/// The first pending key of each tenant: one seek per tenant with pending events.
fn read_heads(tree: &sled::Tree) -> Result<Heads, StoreError> {
    let mut heads = Heads::default();
    let mut from = vec![b'p'];
    loop {
        let mut range = tree.range(from.clone()..vec![b'q']);
        let Some(item) = range.next() else { break };
        let (k, _) = item?;
        let (tenant, seq) = parse_pending_key(&k)?;
        heads.add(tenant, seq);
        let mut next = key(b'p', &[tenant.as_bytes()]);
        next.extend_from_slice(&[0xff; 9]);
        from = next;
    }
    Ok(heads)
}

fn parse_pending_key(k: &[u8]) -> Result<(TenantId, u64), StoreError> {
    if k.len() != 25 {
        return Err(StoreError::Corrupt("bad pending key".into()));
    }
    Ok((uuid_from(&k[1..17])?, u64_from(&k[17..25])?))
}

/// The seq of the tenant's first pending event, if any.
fn first_pending(tree: &sled::Tree, tenant: &TenantId) -> Result<Option<u64>, StoreError> {
    match tree
        .scan_prefix(key(b'p', &[tenant.as_bytes()]))
        .keys()
        .next()
    {
        Some(k) => Ok(Some(parse_pending_key(&k?)?.1)),
        None => Ok(None),
    }
}

impl Queue {
    /// Open (or create) the store at `path`: migrate an older layout, rebuild each tenant's
    /// oldest pending event, and start the committer and flusher threads.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Queue, StoreError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity_mb.saturating_mul(1024 * 1024))
            .mode(sled::Mode::HighThroughput);
        // sled's own background flusher releases the directory lock shortly after the last
        // handle is dropped; a reopen in the same process waits for it (briefly) rather than
        // failing. Another process holding the store still fails after the wait.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked {
                            path: path.display().to_string(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let tree = db.open_tree("statusd")?;
        let read_u64 = |name: &str| -> Result<Option<u64>, StoreError> {
            tree.get(meta_key(name))?.map(|v| u64_from(&v)).transpose()
        };
        match read_u64("schema")? {
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    path: path.display().to_string(),
                    found,
                })
            }
            Some(found) if found < SCHEMA_VERSION => {
                migrate_to_2(&tree)?;
                tree.insert(meta_key("schema"), &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
                tracing::info!(
                    message = "store migrated",
                    from = found,
                    to = SCHEMA_VERSION
                );
            }
            Some(_) => {}
            None => {
                tree.insert(meta_key("schema"), &SCHEMA_VERSION.to_be_bytes())?;
            }
        }
        let counters = Counters {
            heads: read_heads(&tree)?,
            seq: read_u64("seq")?.unwrap_or(0),
            depth: read_u64("depth")?.unwrap_or(0),
            dead: read_u64("dead")?.unwrap_or(0),
        };

        let core = Arc::new(Core {
            db,
            tree,
            writer: Mutex::new(counters),
            in_flight_tenants: Mutex::new(HashSet::new()),
            in_flight_ids: Mutex::new(HashSet::new()),
            flushes: AtomicU64::new(0),
            flush_waiters: AtomicU64::new(0),
            woken: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            options,
        });
        let (jobs, rx) = mpsc::channel::<Job>();
        let (to_flusher, flush_rx) = mpsc::channel::<Written>();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| StoreError::Flush(format!("cannot start the {name} thread: {e}")))
        };
        let flush_thread = {
            let core = core.clone();
            spawn("statusd-flush", Box::new(move || flusher(core, flush_rx)))?
        };
        let commit_thread = {
            let core = core.clone();
            spawn(
                "statusd-commit",
                Box::new(move || committer(core, rx, to_flusher)),
            )?
        };
        let queue = Queue {
            inner: Arc::new(Inner {
                core,
                jobs: Mutex::new(Some(jobs)),
                threads: Mutex::new(vec![commit_thread, flush_thread]),
            }),
        };
        Ok(queue)
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let guard = self.inner.jobs.lock().expect("job sender lock");
        let sender = guard.as_ref().ok_or(StoreError::Closed)?;
        sender.send(job).map_err(|_| StoreError::Closed)
    }

    /// Wait for a flush that starts after this call (covers every write made before it).
    pub async fn sync(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Sync(tx))?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Flush)
    }

    /// Accept events: all are stored in one atomic batch, or none. Returns after they are
    /// durable. Events with a known idempotency key are not stored again. Concurrent calls are
    /// written together: one sled batch and one flush for the whole group.
    pub async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Enqueue(events, tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Wait until events were accepted (or retried) for some tenant, and return those tenants.
    pub async fn woken_tenants(&self) -> Vec<TenantId> {
        loop {
            let notified = self.inner.wake.notified();
            {
                let mut woken = self.inner.woken.lock().expect("woken lock");
                if !woken.is_empty() {
                    return woken.drain().collect();
                }
            }
            notified.await;
        }
    }

    fn get_event_raw(&self, id: &Uuid) -> Result<Option<EventRecord>, StoreError> {
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
        } else if rec.state == EventState::Queued
            && self
                .inner
                .in_flight_ids
                .lock()
                .expect("in-flight lock")
                .contains(id)
        {
            rec.state = EventState::InFlight;
        }
        Ok(Some(rec))
    }

    /// Tenants that have pending events, in key order. Used by the dispatcher at start.
    pub fn pending_tenants(&self) -> Vec<TenantId> {
        let w = self.inner.writer.lock().expect("writer lock");
        let mut out: Vec<TenantId> = w.heads.by_tenant.keys().copied().collect();
        out.sort();
        out
    }

    /// Number of pending events of a tenant.
    pub fn pending_count(&self, tenant: &TenantId) -> usize {
        self.inner
            .tree
            .scan_prefix(key(b'p', &[tenant.as_bytes()]))
            .count()
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

    /// Take up to `max` of the tenant's oldest pending events and mark them in flight. Nothing
    /// else of this tenant can be taken until the batch is settled (delivered, failed or dead).
    pub fn take_batch(&self, tenant: &TenantId, max: usize) -> Result<Take, StoreError> {
        let now = now_ms();
        {
            let mut busy = self.inner.in_flight_tenants.lock().expect("in-flight lock");
            if busy.contains(tenant) {
                return Ok(Take::Busy);
            }
            busy.insert(*tenant);
        }
        let result = self.take_batch_inner(tenant, max, now);
        if !matches!(result, Ok(Take::Ready(_))) {
            self.inner
                .in_flight_tenants
                .lock()
                .expect("in-flight lock")
                .remove(tenant);
        }
        result
    }

    fn take_batch_inner(
        &self,
        tenant: &TenantId,
        max: usize,
        now: i64,
    ) -> Result<Take, StoreError> {
        let mut events = Vec::new();
        for item in self
            .inner
            .tree
            .scan_prefix(key(b'p', &[tenant.as_bytes()]))
            .take(max.max(1))
        {
            let (_, v) = item?;
            let id = uuid_from(&v)?;
            let rec = self
                .get_event_raw(&id)?
                .ok_or_else(|| StoreError::Corrupt(format!("pending event {id} has no record")))?;
            if events.is_empty() {
                if let Some(at) = rec.next_attempt_at_ms {
                    if at > now {
                        return Ok(Take::NotBefore(at));
                    }
                }
            }
            events.push(rec);
        }
        if events.is_empty() {
            return Ok(Take::Empty);
        }
        let mut ids = self.inner.in_flight_ids.lock().expect("in-flight lock");
        for rec in &mut events {
            rec.state = EventState::InFlight;
            ids.insert(rec.id);
        }
        drop(ids);
        Ok(Take::Ready(Batch {
            tenant_id: *tenant,
            events,
        }))
    }

    fn release(&self, batch: &Batch) {
        self.inner
            .in_flight_tenants
            .lock()
            .expect("in-flight lock")
            .remove(&batch.tenant_id);
        let mut ids = self.inner.in_flight_ids.lock().expect("in-flight lock");
        for rec in &batch.events {
            ids.remove(&rec.id);
        }
    }

    /// The batch reached the platform. Durable before it returns, so a crash after this never
    /// re-sends it.
    pub async fn ack_delivered(&self, batch: &Batch) -> Result<(), StoreError> {
        let job = AckJob {
            tenant: batch.tenant_id,
            items: batch
                .events
                .iter()
                .map(|e| (e.seq, e.id, e.kind, e.attempts))
                .collect(),
        };
        let (tx, rx) = oneshot::channel();
        let result = match self.send(Job::Ack(job, tx)) {
            Ok(()) => rx.await.map_err(|_| StoreError::Closed).and_then(|r| r),
            Err(e) => Err(e),
        };
        // Released only now: the tenant's next batch must not see these events again.
        self.release(batch);
        result
    }

    /// The report failed and will be retried at `next_attempt_at_ms`. The events keep their place.
    pub fn mark_failed(
        &self,
        batch: &Batch,
        error: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError> {
        {
            let _w = self.inner.writer.lock().expect("writer lock");
            let mut b = sled::Batch::default();
            for rec in &batch.events {
                let mut rec = rec.clone();
                rec.state = EventState::Queued;
                rec.attempts += 1;
                rec.last_error = Some(error.to_string());
                rec.next_attempt_at_ms = Some(next_attempt_at_ms);
                b.insert(event_key(&rec.id), to_json(&rec));
            }
            self.inner.tree.apply_batch(b)?;
        }
        self.release(batch);
        Ok(())
    }

    /// Give the batch back untouched (shutdown before it was sent, or a send abandoned).
    pub fn return_batch(&self, batch: &Batch) -> Result<(), StoreError> {
        // Nothing was written when it was taken, so nothing is undone.
        self.release(batch);
        Ok(())
    }

    /// Park the batch in the dead-letter store with its reason. Durable before it returns.
    pub async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<(), StoreError> {
        {
            let mut w = self.inner.writer.lock().expect("writer lock");
            let mut b = sled::Batch::default();
            for rec in &batch.events {
                let mut rec = rec.clone();
                rec.state = EventState::Dead;
                rec.attempts += 1;
                rec.dead_reason = Some(reason.to_string());
                rec.last_error = Some(reason.to_string());
                rec.next_attempt_at_ms = None;
                b.insert(event_key(&rec.id), to_json(&rec));
                b.remove(pending_key(&batch.tenant_id, rec.seq));
                b.insert(dead_key(&rec.id), &[]);
            }
            let n = batch.events.len() as u64;
            let depth = w.depth.saturating_sub(n);
            let dead = w.dead + n;
            b.insert(meta_key("depth"), &depth.to_be_bytes());
            b.insert(meta_key("dead"), &dead.to_be_bytes());
            self.inner.tree.apply_batch(b)?;
            w.depth = depth;
            w.dead = dead;
            let head = first_pending(&self.inner.tree, &batch.tenant_id)?;
            w.heads.set(batch.tenant_id, head);
        }
        self.release(batch);
        self.sync().await
    }

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

    fn retry_dead_unsynced(&self, id: &Uuid) -> Result<Option<TenantId>, StoreError> {
        let mut w = self.inner.writer.lock().expect("writer lock");
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
            let mut w = self.inner.writer.lock().expect("writer lock");
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

    /// Remove delivered events older than the retention and idempotency keys older than
    /// `max(retention, 24h)`. Returns how many events were removed.
    pub fn compact(&self, now_ms: i64) -> Result<usize, StoreError> {
        let retention = self.inner.options.delivered_retention.as_millis() as i64;
        let cutoff = now_ms - retention;
        let idem_cutoff = now_ms - retention.max(IDEMPOTENCY_WINDOW.as_millis() as i64);
        let mut removed = 0;
        loop {
            // Chunks keep the writer lock short so intake is not stalled.
            let keys: Vec<sled::IVec> = self
                .inner
                .tree
                .range(key(b'c', &[])..key(b'c', &[&(cutoff.max(0) as u64).to_be_bytes()]))
                .keys()
                .take(1000)
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                break;
            }
            let _w = self.inner.writer.lock().expect("writer lock");
            let mut b = sled::Batch::default();
            for k in &keys {
                let id = uuid_from(&k[9..])?;
                b.remove(event_key(&id));
                b.remove(delivered_marker_key(&id));
                b.remove(k.clone());
            }
            self.inner.tree.apply_batch(b)?;
            removed += keys.len();
        }
        loop {
            let keys: Vec<sled::IVec> = self
                .inner
                .tree
                .range(key(b'j', &[])..key(b'j', &[&(idem_cutoff.max(0) as u64).to_be_bytes()]))
                .keys()
                .take(1000)
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                break;
            }
            let _w = self.inner.writer.lock().expect("writer lock");
            let mut b = sled::Batch::default();
            for k in &keys {
                b.remove(key(b'i', &[&k[9..]]));
                b.remove(k.clone());
            }
            self.inner.tree.apply_batch(b)?;
        }
        Ok(removed)
    }

    pub fn stats(&self) -> QueueStats {
        let (depth, dead, head) = {
            let w = self.inner.writer.lock().expect("writer lock");
            (w.depth, w.dead, w.heads.oldest())
        };
        let oldest = head
            .and_then(|(seq, tenant)| {
                self.inner
                    .tree
                    .get(pending_key(&tenant, seq))
                    .ok()
                    .flatten()
            })
            .and_then(|v| uuid_from(&v).ok())
            .and_then(|id| self.get_event_raw(&id).ok().flatten())
            .map(|rec| rec.accepted_at_ms);
        QueueStats {
            depth,
            in_flight: self
                .inner
                .in_flight_ids
                .lock()
                .expect("in-flight lock")
                .len() as u64,
            dead_letters: dead,
            oldest_pending_accepted_ms: oldest,
        }
    }

    pub fn flush_stats(&self) -> FlushStats {
        FlushStats {
            flushes: self.inner.flushes.load(Ordering::Relaxed),
            waiters: self.inner.flush_waiters.load(Ordering::Relaxed),
        }
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    // Tenant state and inventory ---------------------------------------------------------------

    fn scan_json<T: DeserializeOwned>(&self, prefix: u8) -> Result<Vec<T>, StoreError> {
        self.inner
            .tree
            .scan_prefix([prefix])
            .values()
            .map(|v| v.map_err(StoreError::from).and_then(|v| from_json(&v)))
            .collect()
    }

    pub fn tenant_state(&self, tenant: &TenantId) -> Result<Option<TenantState>, StoreError> {
        self.inner.get_json(tenant_key(tenant))
    }

    /// Every tenant with a recorded intended or reported state.
    pub fn tenant_states(&self) -> Result<Vec<TenantState>, StoreError> {
        self.scan_json(b't')
    }

    pub fn inventory(&self, tenant: &TenantId) -> Result<Option<InventoryTenant>, StoreError> {
        self.inner.get_json(inventory_key(tenant))
    }

    pub fn inventory_all(&self) -> Result<Vec<InventoryTenant>, StoreError> {
        self.scan_json(b'n')
    }

    pub fn inventory_len(&self) -> usize {
        self.inner.tree.scan_prefix([b'n']).count()
    }

    /// Insert or replace inventory records (one atomic batch), then flush.
    pub async fn put_inventory(&self, tenants: &[InventoryTenant]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for t in tenants {
            b.insert(inventory_key(&t.id), to_json(t));
        }
        self.inner.tree.apply_batch(b)?;
        self.sync().await
    }

    /// Replace the whole inventory (after a full walk).
    pub async fn replace_inventory(&self, tenants: &[InventoryTenant]) -> Result<(), StoreError> {
        let keep: HashSet<TenantId> = tenants.iter().map(|t| t.id).collect();
        let mut b = sled::Batch::default();
        for k in self.inner.tree.scan_prefix([b'n']).keys() {
            let k = k?;
            if !keep.contains(&uuid_from(&k[1..])?) {
                b.remove(k);
            }
        }
        for t in tenants {
            b.insert(inventory_key(&t.id), to_json(t));
        }
        self.inner.tree.apply_batch(b)?;
        self.sync().await
    }

    /// A small named document (reconciler cursors, logo hash, ...).
    pub fn get_doc<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.inner.get_json(meta_key(&format!("doc/{name}")))
    }

    pub async fn put_doc<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        self.inner
            .tree
            .insert(meta_key(&format!("doc/{name}")), to_json(value))?;
        self.sync().await
    }

    /// A cheap health probe of the store: the committer and flusher threads are running, and a
    /// metadata key reads. False means no event can be accepted durably any more.
    pub fn healthy(&self) -> bool {
        let threads_running = self
            .inner
            .threads
            .lock()
            .expect("threads lock")
            .iter()
            .all(|t| !t.is_finished());
        threads_running && self.inner.tree.get(meta_key("schema")).is_ok()
    }

    /// Recount the persisted counters from the indexes (tests and `statusd doctor`-style checks).
    pub fn recount(&self) -> Result<(u64, u64), StoreError> {
        let depth = self.inner.tree.scan_prefix([b'p']).count() as u64;
        let dead = self.inner.tree.scan_prefix([b'd']).count() as u64;
        Ok((depth, dead))
    }
}

impl Core {
    fn get_json<T: DeserializeOwned>(&self, key: Vec<u8>) -> Result<Option<T>, StoreError> {
        self.tree.get(key)?.map(|v| from_json(&v)).transpose()
    }

    fn tenant_state(&self, tenant: &TenantId) -> Result<Option<TenantState>, StoreError> {
        self.get_json(tenant_key(tenant))
    }

    fn wake_tenants(&self, tenants: impl IntoIterator<Item = TenantId>) {
        let mut woken = self.woken.lock().expect("woken lock");
        woken.extend(tenants);
        drop(woken);
        self.wake.notify_one();
    }

    /// Write a group of enqueue requests as one sled batch (not yet flushed). Each request's
    /// outcome is returned in order, with the tenants that got new events.
    fn write_group(
        &self,
        requests: Vec<Vec<NewEvent>>,
        acks: &[AckJob],
    ) -> Result<GroupWritten, StoreError> {
        let now = now_ms();
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut tenants_touched = Vec::new();
        let mut w = self.writer.lock().expect("writer lock");
        let mut batch = sled::Batch::default();
        let mut seen_in_batch: Vec<(String, Uuid)> = Vec::new();
        let mut tenant_updates: Vec<TenantState> = Vec::new();
        let mut seq = w.seq;
        let mut added = 0u64;
        let mut new_heads: Vec<(TenantId, u64)> = Vec::new();
        for events in requests {
            let mut outs = Vec::with_capacity(events.len());
            for ev in events {
                if let Some(k) = &ev.idempotency_key {
                    if let Some((_, id)) = seen_in_batch.iter().find(|(s, _)| s == k) {
                        outs.push(Enqueued::Duplicate(*id));
                        continue;
                    }
                    if let Some(v) = self.tree.get(idem_key(k))? {
                        outs.push(Enqueued::Duplicate(uuid_from(&v[..16])?));
                        continue;
                    }
                }
                seq += 1;
                let id = Uuid::now_v7();
                let rec = EventRecord {
                    id,
                    tenant_id: ev.tenant_id,
                    kind: ev.kind,
                    category: ev.category,
                    action: ev.action,
                    idempotency_key: ev.idempotency_key.clone(),
                    accepted_at_ms: now,
                    state: EventState::Queued,
                    attempts: 0,
                    last_error: None,
                    next_attempt_at_ms: None,
                    delivered_at_ms: None,
                    dead_reason: None,
                    seq,
                };
                batch.insert(event_key(&id), to_json(&rec));
                batch.insert(pending_key(&ev.tenant_id, seq), id.as_bytes().as_slice());
                new_heads.push((ev.tenant_id, seq));
                if let Some(k) = &ev.idempotency_key {
                    let mut v = id.as_bytes().to_vec();
                    v.extend_from_slice(&now.to_be_bytes());
                    batch.insert(idem_key(k), v);
                    batch.insert(idem_expiry_key(now, k), &[]);
                    seen_in_batch.push((k.clone(), id));
                }
                let intended = match ev.kind {
                    EventKind::Activation => Some(IntegrationState::Active),
                    EventKind::Deactivation => Some(IntegrationState::Inactive),
                    EventKind::Custom => None,
                };
                if let Some(intended) = intended {
                    let state = self.tenant_entry(&mut tenant_updates, ev.tenant_id)?;
                    state.intended = Some(intended);
                    state.intended_at_ms = Some(now);
                }
                if !tenants_touched.contains(&ev.tenant_id) {
                    tenants_touched.push(ev.tenant_id);
                }
                outs.push(Enqueued::Accepted(id));
                added += 1;
            }
            outcomes.push(outs);
        }
        let mut removed = 0u64;
        for ack in acks {
            let mut reported = None;
            for (seq, id, kind, attempts) in &ack.items {
                match kind {
                    EventKind::Activation => reported = Some(IntegrationState::Active),
                    EventKind::Deactivation => reported = Some(IntegrationState::Inactive),
                    EventKind::Custom => {}
                }
                batch.remove(pending_key(&ack.tenant, *seq));
                batch.insert(
                    delivered_marker_key(id),
                    delivered_marker(now, attempts + 1),
                );
                batch.insert(delivered_key(now, id), &[]);
            }
            removed += ack.items.len() as u64;
            if let Some(state) = reported {
                let t = self.tenant_entry(&mut tenant_updates, ack.tenant)?;
                t.last_reported = Some(state);
                t.last_reported_at_ms = Some(now);
            }
        }
        if added == 0 && removed == 0 {
            return Ok((outcomes, tenants_touched));
        }
        for t in &tenant_updates {
            batch.insert(tenant_key(&t.tenant_id), to_json(t));
        }
        let depth = (w.depth + added).saturating_sub(removed);
        batch.insert(meta_key("seq"), &seq.to_be_bytes());
        batch.insert(meta_key("depth"), &depth.to_be_bytes());
        self.tree.apply_batch(batch)?;
        w.seq = seq;
        w.depth = depth;
        for ack in acks {
            let head = first_pending(&self.tree, &ack.tenant)?;
            w.heads.set(ack.tenant, head);
        }
        for (tenant, seq) in new_heads {
            w.heads.add(tenant, seq);
        }
        Ok((outcomes, tenants_touched))
    }

    /// The group's pending update of a tenant's state, loaded from the store the first time.
    fn tenant_entry<'a>(
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

/// A written group on its way to the flusher, with everyone waiting for it.
struct Written {
    syncs: Vec<FlushWaiter>,
    replies: Vec<EnqueueReply>,
    ack_replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// Each enqueue's outcomes and the tenants that got events, or why the write failed.
    result: Result<GroupWritten, String>,
}

impl Written {
    /// Answer everyone once the flush that covers the group has ended.
    fn settle(self, core: &Core, flushed: &Result<(), String>) {
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
        for w in self.syncs {
            let _ = w.send(flushed.clone());
        }
    }
}

/// The committer: takes every job waiting, writes the enqueues and acks of the group as one
/// sled batch, and hands the group to the flusher. While the flusher makes one group durable,
/// the committer writes the next (a two-stage group commit). Nobody is answered before the
/// flush that covers their writes has ended, and tenants are woken for delivery only then.
fn committer(core: Arc<Core>, rx: mpsc::Receiver<Job>, to_flusher: mpsc::Sender<Written>) {
    while let Ok(first) = rx.recv() {
        let mut syncs = Vec::new();
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        let mut acks = Vec::new();
        let mut ack_replies = Vec::new();
        let mut events = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
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
            }
            if events < MAX_GROUP_EVENTS {
                next = rx.try_recv().ok();
            }
        }
        let result = if requests.is_empty() && acks.is_empty() {
            Ok((Vec::new(), Vec::new()))
        } else {
            core.write_group(requests, &acks).map_err(|e| e.to_string())
        };
        let written = Written {
            syncs,
            replies,
            ack_replies,
            result,
        };
        if let Err(mpsc::SendError(w)) = to_flusher.send(written) {
            // The flusher is gone (it cannot be while the committer runs); answer with an error
            // rather than leave callers waiting.
            w.settle(&core, &Err("the store flusher stopped".into()));
        }
    }
}

/// The flusher: one sled flush for every group written since the last one, then the answers.
fn flusher(core: Arc<Core>, rx: mpsc::Receiver<Written>) {
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        while let Ok(g) = rx.try_recv() {
            groups.push(g);
        }
        let flushed = core.db.flush().map(|_| ()).map_err(|e| e.to_string());
        if let Err(e) = &flushed {
            tracing::error!(message = "store flush failed", error = %e);
        }
        core.flushes.fetch_add(1, Ordering::Relaxed);
        let waiters: usize = groups
            .iter()
            .map(|g| g.syncs.len() + g.replies.len() + g.ack_replies.len())
            .sum();
        core.flush_waiters
            .fetch_add(waiters as u64, Ordering::Relaxed);
        for g in groups {
            g.settle(&core, &flushed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_committer_makes_the_store_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(q.healthy());
        // Closing the job channel ends the committer (and with it the flusher), as a panic in
        // either would.
        q.inner.jobs.lock().unwrap().take();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while q.healthy() {
            assert!(std::time::Instant::now() < deadline, "still healthy");
            std::thread::yield_now();
        }
    }
}
