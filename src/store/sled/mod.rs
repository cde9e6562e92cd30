//! The sled backend: one sled tree on this machine's disk. **The only module that imports sled.**
//!
//! Promises:
//! - `enqueue` (and `ack_delivered`) return only after a flush covering their writes has
//!   completed. Concurrent calls are written together by one writer thread as one sled batch,
//!   which that thread then flushes before it answers them all (group commit). Each tenant's
//!   oldest pending event is kept in memory (rebuilt on open) for the oldest-pending figure,
//!   so no global order index is written.
//! - An event and every index pointing at it are written in one atomic sled batch, under one
//!   writer lock, so a crash never leaves an event that is stored but not dispatchable.
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
//! | `a` | account id | an account added at run time (JSON; its secret sealed) |
//! | `m` | name | metadata: schema version, counters, reconciler documents |
//! | `k` | account id | its pending and dead events (two big-endian u64), written with `depth` |

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::*;

mod accounts;
mod backend;
mod batches;
mod bound;
mod commit;
mod compact;
mod control;
pub(crate) mod copy;
mod dead;
mod heads;
mod keys;
mod migrate;
mod open;
mod tenants;
mod verify;

pub use bound::BoundState;
use commit::*;
pub use copy::{check_room_to_compact, dir_size, import, Compacted};
use heads::*;
use keys::*;
use migrate::*;
use open::*;
pub use verify::{Check, Offline, Verification};

/// Jobs waiting for the writer thread at most (each an enqueue, an acknowledgement or a write);
/// past it, callers wait for room, as with the PostgreSQL store's committer.
const JOB_QUEUE: usize = 4096;

/// The layout version written by this build; opening a store with a newer one is refused.
/// Layout version. 2: no `o` (order) or `f` (in-flight) keys; version 1 stores are migrated
/// on open.
pub const SCHEMA_VERSION: u64 = 2;

impl InFlight for Core {
    fn in_flight(&self) -> (&Mutex<HashSet<TenantId>>, &Mutex<HashSet<Uuid>>) {
        (&self.in_flight_tenants, &self.in_flight_ids)
    }
}

/// The sled store handle; cheap to clone.
#[derive(Clone)]
pub struct SledQueue {
    inner: Arc<Inner>,
}

struct Counters {
    seq: u64,
    depth: u64,
    dead: u64,
    heads: Heads,
    /// Each account's pending and dead events (persisted under `k`, beside `depth` and `dead`).
    accounts: AccountCounts,
}
/// Everything the writer thread shares with the handles.
struct Core {
    db: ::sled::Db,
    tree: ::sled::Tree,
    /// sled's log, synced after each flush (see [`open::LogFile`]).
    log: open::LogFile,
    /// The store's directory, where the control file lives.
    path: std::path::PathBuf,
    store_id: Uuid,
    writer: Mutex<Counters>,
    in_flight_tenants: Mutex<HashSet<TenantId>>,
    /// Events taken and not yet settled. Being in flight is kept in memory only: after a crash
    /// the pending keys (never removed while in flight) put every such event back in order.
    in_flight_ids: Mutex<HashSet<Uuid>>,
    flushes: AtomicU64,
    /// When `stats` first saw the current oldest pending event, and its age then.
    ages: Ages,
    /// The first write or flush that failed. sled keeps an I/O error for good, so from then on
    /// nothing can be written until the store is opened again.
    write_error: Mutex<Option<String>>,
    flush_waiters: AtomicU64,
    /// Decisions set aside since the store was opened.
    superseded: AtomicU64,
    wakeup: Wakeup,
    options: StoreOptions,
    bound: bound::Bound,
}

struct Inner {
    core: Arc<Core>,
    jobs: Mutex<Option<tokio::sync::mpsc::Sender<Job>>>,
    /// The writer thread, joined at close.
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
        lock(&self.jobs).take();
        for handle in lock(&self.threads).drain(..) {
            let _ = handle.join();
        }
        if self.core.log.flush(&self.core.db).is_ok() {
            let seq = lock(&self.core.writer).seq;
            if let Err(e) = control::write(
                &self.core.path,
                &control::Control::new(self.core.store_id, seq, true),
            ) {
                tracing::error!(message = "cannot write the store's control file", error = %e);
            }
        }
    }
}

impl SledQueue {
    /// Open (or create) the store at `path`: migrate an older layout, rebuild each tenant's
    /// oldest pending event, and start the writer thread.
    pub fn open(path: &Path, options: StoreOptions) -> Result<SledQueue, StoreError> {
        copy::finish_interrupted(path)?;
        create_private_dir(path)?;
        let control = control::read(path)?;
        let (db, tree) = open_sled_checked(path, &options)?;
        let schema = migrate_schema(&db, &tree, path)?;
        let (counters, store_id) =
            read_checked_counters(&tree, path, control.as_ref(), schema, &options)?;
        let seq_at_open = counters.seq;
        if schema.is_none() {
            tree.insert(meta_key("schema"), &SCHEMA_VERSION.to_be_bytes())?;
        }
        let log = open::LogFile::open(path)?;
        log.flush(&db)?;
        // Running: until a clean close says otherwise, the next open recounts.
        control::write(path, &control::Control::new(store_id, counters.seq, false))
            .map_err(|e| StoreError::Write(format!("cannot write the control file: {e}")))?;
        SledQueue::start(Core {
            db,
            tree,
            log,
            path: path.to_path_buf(),
            store_id,
            writer: Mutex::new(counters),
            in_flight_tenants: Mutex::new(HashSet::new()),
            in_flight_ids: Mutex::new(HashSet::new()),
            flushes: AtomicU64::new(0),
            write_error: Mutex::new(None),
            ages: Ages::new(seq_at_open),
            flush_waiters: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
            wakeup: Wakeup::default(),
            options,
            bound: Default::default(),
        })
    }

    /// Start the writer thread (and its clock) on an opened store.
    fn start(core: Core) -> Result<SledQueue, StoreError> {
        let core = Arc::new(core);
        let (jobs, rx) = tokio::sync::mpsc::channel::<Job>(JOB_QUEUE);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| StoreError::Flush(format!("cannot start the {name} thread: {e}")))
        };
        let write_thread = {
            let core = core.clone();
            spawn("statusd-write", Box::new(move || writer(core, rx)))?
        };
        // Not joined: it sleeps at most one interval and ends once the channel is gone.
        let weak = jobs.downgrade();
        spawn("statusd-clock", Box::new(move || ticker(weak)))?;
        Ok(SledQueue {
            inner: Arc::new(Inner {
                core,
                jobs: Mutex::new(Some(jobs)),
                threads: Mutex::new(vec![write_thread]),
            }),
        })
    }

    /// Hand a job to the writer thread, waiting (without blocking a thread) while its queue is
    /// full: callers slow down to the rate the disk takes.
    async fn send(&self, job: Job) -> Result<(), StoreError> {
        let sender = lock(&self.inner.jobs).clone().ok_or(StoreError::Closed)?;
        sender.send(job).await.map_err(|_| StoreError::Closed)
    }

    /// Wait for a flush that starts after this call (covers every write made before it).
    pub async fn sync(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Sync(tx)).await?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Flush)
    }

    /// Run a write on the writer thread, in its turn with enqueues and acknowledgements, and
    /// answer once the flush that covers it has ended: the one write path of the store.
    async fn write(
        &self,
        f: impl FnOnce(&Core, &mut Counters) -> Result<Wrote, StoreError> + Send + 'static,
    ) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Write(Box::new(f), tx)).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A write that also answers a value (what it stored, what it removed), taken out once the
    /// flush that covers it has ended.
    async fn write_answering<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Core, &mut Counters) -> Result<(T, Wrote), StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let slot = Arc::new(Mutex::new(None));
        let out = slot.clone();
        self.write(move |core, w| {
            let (value, wrote) = f(core, w)?;
            *lock(&out) = Some(value);
            Ok(wrote)
        })
        .await?;
        let value = lock(&slot).take();
        value.ok_or_else(|| StoreError::Corrupt("a store write gave no answer".into()))
    }

    /// Accept events: all are stored in one atomic batch, or none. Returns after they are
    /// durable. Events with a known idempotency key are not stored again. Concurrent calls are
    /// written together: one sled batch and one flush for the whole group.
    pub async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Enqueue(events, tx)).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Wait until events were accepted (or retried) for some tenant, and return those tenants.
    pub async fn woken_tenants(&self) -> Vec<TenantId> {
        self.inner.wakeup.next().await
    }

    pub fn stats(&self) -> QueueStats {
        let (depth, dead, head) = {
            let w = lock(&self.inner.writer);
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
        let age = pending_age(
            &self.inner.ages,
            head.zip(oldest)
                .map(|((seq, tenant), at)| (seq, tenant, at)),
        );
        QueueStats {
            depth,
            in_flight: lock(&self.inner.in_flight_ids).len() as u64,
            dead_letters: dead,
            oldest_pending_accepted_ms: oldest,
            oldest_pending_age_ms: age,
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

    /// A cheap health probe of the store: the writer thread is running, and a
    /// metadata key reads. False means no event can be accepted durably any more.
    pub fn healthy(&self) -> bool {
        let threads_running = lock(&self.inner.threads).iter().all(|t| !t.is_finished());
        threads_running && self.inner.tree.get(meta_key("schema")).is_ok()
    }

    /// Run a read that scans many keys off the async workers.
    pub async fn scan<T: Send + 'static>(
        &self,
        read: impl FnOnce(&SledQueue) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let queue = self.clone();
        tokio::task::spawn_blocking(move || read(&queue))
            .await
            .map_err(|e| StoreError::Corrupt(format!("a store read failed: {e}")))?
    }

    /// Why the store cannot write any more (a full disk, an I/O error), if it cannot.
    pub fn write_error(&self) -> Option<String> {
        lock(&self.inner.write_error).clone()
    }

    /// Recount the persisted counters from the indexes (tests and `statusd doctor`-style checks).
    pub fn recount(&self) -> Result<(u64, u64), StoreError> {
        let depth = self.inner.tree.scan_prefix([b'p']).count() as u64;
        let dead = self.inner.tree.scan_prefix([b'd']).count() as u64;
        Ok((depth, dead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_committer_makes_the_store_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let q = SledQueue::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(q.healthy());
        // Closing the job channel ends the writer thread, as a panic in it would.
        q.inner.jobs.lock().unwrap().take();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while q.healthy() {
            assert!(std::time::Instant::now() < deadline, "still healthy");
            std::thread::yield_now();
        }
    }
}
