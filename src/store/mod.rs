//! The durable store: pending events per tenant, event states, dead letters, tenant state,
//! idempotency keys, the tenant inventory and the accounts added at run time.
//!
//! One contract ([`Backend`], in `contract.rs`) and two backends beside each other: `sled/` (a
//! sled tree on this machine's disk; the only module that imports sled) and `pg/` (a PostgreSQL
//! database, possibly shared by replicas; the only module that imports tokio-postgres). What is
//! the same rule for both lives here, above them: the records and their states (`records.rs`),
//! how a batch is cut (`batches.rs`), the accounts' records and counts (`accounts.rs`,
//! `counts.rs`), the export format (`export.rs`), each tenant's head in memory (`heads.rs`),
//! the age of the oldest pending event and the wake-up of delivery (below). Everything outside `store/` goes through [`Queue`] and never
//! names a backend; a feature only one backend has is a capability `Queue` answers `None` for on
//! the other (`Queue::pool`, `Queue::bound`).
//!
//! Promises of every backend:
//! - `enqueue` (and every write) answers only once its writes are durable (flushed, or
//!   committed); all events of one call are stored, or none.
//! - An event and every index pointing at it are written atomically, so a crash never leaves an
//!   event that is stored but not dispatchable.
//! - Per tenant, events leave in acceptance order; a tenant has at most one batch in flight.
//! - Being in flight is kept in memory: after a crash every event that was in flight is simply
//!   `queued` again in its place.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

pub type TenantId = Uuid;

/// A write group (sled's committer, PostgreSQL's) stops growing at this many events, so one
/// slow group cannot hold many callers.
pub(crate) const MAX_GROUP_EVENTS: usize = 8192;

/// How long idempotency keys are remembered at least.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What a compaction at `now_ms` removes, the same on every backend: delivered events delivered
/// before the first time (older than the retention), idempotency keys accepted before the
/// second (older than the retention or the idempotency window, whichever is longer).
pub(crate) fn compaction_cutoffs(now_ms: i64, retention: Duration) -> (i64, i64) {
    let retention = retention.as_millis() as i64;
    (
        now_ms - retention,
        now_ms - retention.max(IDEMPOTENCY_WINDOW.as_millis() as i64),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Sled(#[from] ::sled::Error),
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
    #[error("the store at {path} is damaged: {reason}. A restart cannot repair it: restore the store from a backup, or start with `statusd run --accept-damaged-store` to run on what is left (what is missing is logged)")]
    Damaged { path: String, reason: String },
    /// An account change that does not apply: the id, and why.
    #[error("account {0:?}: {1}")]
    Account(String, &'static str),
    #[error("it is in use by another process (another statusd with the same store.path?)")]
    Locked { path: String },
    /// The PostgreSQL store cannot be reached now (down, unreachable, too slow); operations
    /// resume by themselves once it answers.
    #[error("the store's database cannot be reached: {0}")]
    Unavailable(String),
    /// PostgreSQL refused a statement.
    #[error("the store's database refused a write: {0}")]
    Postgres(String),
    #[error("the PostgreSQL store was made with cluster.shards = {stored}; it is fixed for a store (set cluster.shards = {stored}, or use a new store.postgres.schema)")]
    ShardsFixed { stored: u32, configured: u32 },
    /// A state change of a shard this replica no longer holds (another holds a newer epoch).
    #[error("refused: shard {0} is held by another replica at a newer epoch")]
    Fenced(u32),
    #[error("the PostgreSQL store (schema {schema:?}) has schema version {found}; this statusd understands up to {}, and a migration past it does not only add (a rolling update must stop the older replicas before that version): upgrade statusd, or use another store.postgres.schema", pg::PG_SCHEMA_VERSION)]
    PgSchemaTooNew { schema: String, found: i32 },
}

/// What a store error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The store cannot answer now (its database unreachable, a disk that failed a write, a
    /// store being closed): try again later (503 with Retry-After).
    Unavailable = 0,
    /// A record or the store's layout is not what it must be: a retry does not help (500,
    /// counted in `statusd_store_errors_total{kind="damaged"}`, alerted).
    Damaged = 1,
    /// The store refused this request (an account change that does not apply, a write fenced
    /// off, a statement the database refused).
    Refused = 2,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 3] = [
        ErrorKind::Unavailable,
        ErrorKind::Damaged,
        ErrorKind::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Damaged => "damaged",
            ErrorKind::Refused => "refused",
        }
    }
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Sled(_)
            | StoreError::Flush(_)
            | StoreError::Write(_)
            | StoreError::Closed
            | StoreError::Locked { .. }
            | StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::Corrupt(_)
            | StoreError::Damaged { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::PgSchemaTooNew { .. }
            | StoreError::ShardsFixed { .. } => ErrorKind::Damaged,
            StoreError::Account(..) | StoreError::Fenced(_) | StoreError::Postgres(_) => {
                ErrorKind::Refused
            }
        }
    }
}

mod accounts;
mod batches;
pub mod chosen;
mod contract;
mod counts;
pub(crate) mod export;
mod heads;
pub mod pg;
mod queue;
mod records;
pub mod sled;

pub use self::sled::{
    check_room_to_compact, dir_size, BoundState, Check, Compacted, Offline, Verification,
    SCHEMA_VERSION,
};
pub use accounts::{
    AccountDropped, AccountEvents, AccountWrite, Removal, StoredAccount, IN_FLIGHT,
};
use batches::{cut_batch, scan_limit, Cut};
pub use contract::{Backend, Health, SizeBound};
use counts::account_of;
pub use counts::AccountCounts;
pub use export::{Moved, Progress};
use heads::{HeadIndex, Place};
pub use queue::{Pool, Queue};
pub use records::*;

/// Lock a mutex, through a poisoned one: every value kept under a lock here stays whole across
/// a panic (each change is one assignment or one collection operation).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct OldestSeen {
    seq: u64,
    tenant: TenantId,
    at: std::time::Instant,
    age: Duration,
}

/// What the age of the oldest pending event is read from: when this process first saw each
/// head, and when it opened the store with which events already pending.
pub(crate) struct Ages {
    seen: Mutex<Option<OldestSeen>>,
    opened: std::time::Instant,
    /// The store's sequence at open: every event up to it was pending (or settled) then.
    seq_at_open: AtomicU64,
}

impl Ages {
    pub(crate) fn new(seq_at_open: u64) -> Ages {
        Ages {
            seen: Mutex::new(None),
            opened: std::time::Instant::now(),
            seq_at_open: AtomicU64::new(seq_at_open),
        }
    }

    /// The sequence at open, when it is known only after the open began (set once).
    pub(crate) fn set_seq_at_open(&self, seq: u64) {
        let _ = self
            .seq_at_open
            .compare_exchange(0, seq, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// How long the oldest pending event `(seq, tenant, accepted ms)` has waited: from the wall
/// clock when this process first saw it as the oldest, then on the monotonic clock, so a clock
/// set back (or forward) later neither hides a stale event nor ages one; and never less than
/// this process has seen it pending (an event already pending at open has waited at least since
/// then, whatever the wall clock said when it was accepted).
pub(super) fn pending_age(ages: &Ages, head: Option<(u64, TenantId, i64)>) -> Option<u64> {
    let (seq, tenant, accepted_ms) = head?;
    let mut seen = lock(&ages.seen);
    let first = match *seen {
        Some(s) if s.seq == seq && s.tenant == tenant => s,
        _ => {
            let s = OldestSeen {
                seq,
                tenant,
                at: std::time::Instant::now(),
                age: Duration::from_millis((now_ms() - accepted_ms).max(0) as u64),
            };
            *seen = Some(s);
            s
        }
    };
    let mut age = first.age + first.at.elapsed();
    if seq <= ages.seq_at_open.load(Ordering::Relaxed) {
        age = age.max(ages.opened.elapsed());
    }
    Some(age.as_millis() as u64)
}

/// Tenants that got events (accepted, retried, found), for delivery to take up: both backends
/// wake it once their writes are durable.
#[derive(Default)]
pub(super) struct Wakeup {
    woken: Mutex<HashSet<TenantId>>,
    notify: Notify,
}

impl Wakeup {
    pub(super) fn wake(&self, tenants: impl IntoIterator<Item = TenantId>) {
        lock(&self.woken).extend(tenants);
        self.notify.notify_one();
    }

    /// Wait until some tenant was woken, and take every one woken since.
    pub(super) async fn next(&self) -> Vec<TenantId> {
        loop {
            let notified = self.notify.notified();
            {
                let mut woken = lock(&self.woken);
                if !woken.is_empty() {
                    return woken.drain().collect();
                }
            }
            notified.await;
        }
    }
}
