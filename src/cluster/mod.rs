//! Several replicas on one PostgreSQL store: each account's work belongs to a shard, and each
//! shard to exactly one replica at a time, by lease. With sled nothing of this runs: one
//! process owns everything.
//!
//! - `lease`: the rules (what to renew, claim, give back; whether a replica may act).
//! - `Ownership`: what this replica holds now, read by the store before every state change of a
//!   shard (the fence), and by delivery and the reconcilers before they act.
//! - `run`: the loop that heartbeats, renews, claims and gives back each `retry_period`.

pub mod lease;
pub mod member;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub use lease::Timing;
pub use member::{leave, run, ClusterView};

/// A member as the shared store shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberRow {
    pub id: String,
    pub api: String,
    /// Raised by each heartbeat.
    pub version: u64,
    /// Seconds since its last heartbeat, by the database's clock (for display only).
    pub heartbeat_age_s: f64,
}

/// A shard's record as the shared store shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardRow {
    pub shard: u32,
    pub owner: Option<String>,
    pub epoch: u64,
    pub version: u64,
    /// Seconds since its last change, by the database's clock (for display only).
    pub changed_age_s: f64,
}

impl ShardRow {
    pub fn record(&self) -> lease::Record {
        lease::Record {
            owner: self.owner.clone(),
            epoch: self.epoch,
            version: self.version,
        }
    }
}

/// What the pool needs of the store its replicas share: membership records, and shard records
/// claimed, renewed and given back by compare-and-swap (the store's transactions are the
/// arbiter), every claim raising the shard's epoch.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync {
    type Error: std::fmt::Display + Send;

    /// Create the shard records (once per store) and check the store's shard count.
    async fn init_shards(&self, shards: u32) -> Result<(), Self::Error>;
    async fn heartbeat(&self, me: &str, api: &str) -> Result<(), Self::Error>;
    async fn leave(&self, me: &str) -> Result<(), Self::Error>;
    async fn members(&self) -> Result<Vec<MemberRow>, Self::Error>;
    async fn shard_rows(&self) -> Result<Vec<ShardRow>, Self::Error>;
    /// Renew these `(shard, epoch)` leases; answers the shards renewed.
    async fn renew(&self, me: &str, leases: &[(u32, u64)]) -> Result<Vec<u32>, Self::Error>;
    /// Claim a shard whose record still has `version`; answers its new epoch and the former
    /// owner.
    async fn claim(
        &self,
        me: &str,
        shard: u32,
        version: u64,
    ) -> Result<Option<(u64, Option<String>)>, Self::Error>;
    async fn release(&self, me: &str, leases: &[(u32, u64)]) -> Result<(), Self::Error>;
    /// Claim a reconciler's scheduled slot for a shard: true for the one replica that gets it.
    async fn claim_slot(
        &self,
        name: &str,
        shard: u32,
        slot: i64,
        me: &str,
    ) -> Result<bool, Self::Error>;
    /// Take in the work of these shards (held now): their pending tenants, read afresh (a
    /// cost that follows the tenants waiting, not the events).
    async fn load_shards(&self, shards: &[u32]) -> Result<(), Self::Error>;
    /// Read the store's counters afresh (a cost that grows with the backlog: never part of a
    /// round, which must renew in time).
    async fn recount(&self) -> Result<(), Self::Error>;
    /// Whether events other replicas accept for the shards held arrive as wake-ups (then a
    /// round need not read every held shard's heads).
    fn hears_wake_ups(&self) -> bool {
        false
    }
    /// Tenants of these shards that a replica reported to after it had lost their shard (its
    /// settle was refused by the fence): their latest decision must be reported again.
    async fn late_reports(&self, shards: &[u32]) -> Result<Vec<uuid::Uuid>, Self::Error>;
    /// Those late reports were overwritten by a report of the latest decision.
    async fn forget_late(&self, tenants: &[uuid::Uuid]) -> Result<(), Self::Error>;
}

/// The stable hash of an account id: 64-bit FNV-1a of its UTF-8 bytes. Documented and fixed:
/// changing it would move accounts between shards.
pub fn stable_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Which shard each account's work belongs to: `hash(account id) mod shards`, or its pin
/// (`accounts.<id>.shard`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    pub shards: u32,
    pub pins: HashMap<String, u32>,
}

impl Default for ShardMap {
    fn default() -> ShardMap {
        ShardMap {
            shards: 64,
            pins: HashMap::new(),
        }
    }
}

impl ShardMap {
    /// Which shard each configured account belongs to (its pin, else its hash).
    pub fn of_settings(settings: &crate::config::Settings) -> ShardMap {
        ShardMap {
            shards: settings.cluster.shards,
            pins: settings
                .accounts
                .iter()
                .filter_map(|a| a.shard.map(|s| (a.id.clone(), s)))
                .collect(),
        }
    }

    /// The shard of an account (`None`: `default`).
    pub fn of(&self, account: Option<&str>) -> u32 {
        let id = account.unwrap_or(crate::config::DEFAULT_ACCOUNT);
        match self.pins.get(id) {
            Some(s) => *s,
            None => (stable_hash(id) % u64::from(self.shards.max(1))) as u32,
        }
    }
}

/// How many losses of shards within a minute make a replica exit for its supervisor to restart
/// it (shards lost within one retry period count once).
const LOSSES_BEFORE_EXIT: usize = 3;

/// What this replica holds now.
pub struct Ownership {
    pub map: ShardMap,
    pub me: String,
    pub timing: Timing,
    held: Mutex<lease::Held>,
    pub fenced_writes: AtomicU64,
    pub transitions: AtomicU64,
    /// Live members and shards no live member holds, as the last round saw them.
    pub live_members: AtomicU64,
    pub unowned: AtomicU64,
    losses: Mutex<VecDeque<Instant>>,
    /// Set once this replica kept losing shards: `run` ends with an error.
    pub failing: tokio_util::sync::CancellationToken,
    /// Batches taken and not yet settled, by shard: a shard given back waits for them.
    flights: Mutex<HashMap<u32, usize>>,
}

impl Ownership {
    pub fn new(map: ShardMap, me: String, timing: Timing) -> Ownership {
        Ownership {
            map,
            me,
            timing,
            held: Mutex::new(lease::Held::default()),
            fenced_writes: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            live_members: AtomicU64::new(1),
            unowned: AtomicU64::new(0),
            losses: Mutex::new(VecDeque::new()),
            failing: Default::default(),
            flights: Mutex::new(HashMap::new()),
        }
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<u32, usize>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch of `shard` was taken (its report goes out under the shard's epoch).
    pub fn flight_started(&self, shard: u32) {
        *self.flights().entry(shard).or_default() += 1;
    }

    /// A batch of `shard` was settled, or given back.
    pub fn flight_ended(&self, shard: u32) {
        let mut f = self.flights();
        if let Some(n) = f.get_mut(&shard) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                f.remove(&shard);
            }
        }
    }

    /// Batches of `shard` taken and not yet settled.
    pub fn in_flight(&self, shard: u32) -> usize {
        self.flights().get(&shard).copied().unwrap_or(0)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, lease::Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch to write a shard's state changes with, while this replica may act for it.
    pub fn may_act(&self, shard: u32) -> Option<u64> {
        self.held()
            .may_act(shard, Instant::now(), self.timing.renew_deadline)
    }

    /// Whether this replica may act for an account now.
    pub fn owns_account(&self, account: Option<&str>) -> bool {
        self.may_act(self.map.of(account)).is_some()
    }

    pub fn owned(&self) -> Vec<u32> {
        self.held().shards.keys().copied().collect()
    }

    pub(crate) fn snapshot(&self) -> lease::Held {
        self.held().clone()
    }

    pub(crate) fn set(&self, shard: u32, epoch: u64, renewed: Instant) {
        let fresh = self.held().shards.insert(shard, (epoch, renewed)).is_none();
        if fresh {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stop acting for a shard given back by choice.
    pub(crate) fn give_up(&self, shard: u32) {
        if self.held().shards.remove(&shard).is_some() {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stop acting for a shard that was lost (a refused renew or write, a lapsed deadline).
    /// Losing shards again and again (3 within a minute) marks the replica failing.
    pub fn lost(&self, shard: u32, why: &str) {
        if self.held().shards.remove(&shard).is_none() {
            return;
        }
        self.transitions.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            message = "shard lost: this replica stops acting for it",
            shard,
            why
        );
        let now = Instant::now();
        let mut losses = self.losses.lock().unwrap_or_else(|e| e.into_inner());
        // Shards lost together (a round's refusals, deadlines lapsing while the store is away)
        // are one loss.
        if losses
            .back()
            .is_some_and(|t| now.duration_since(*t) < self.timing.retry)
        {
            return;
        }
        losses.push_back(now);
        while losses
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            losses.pop_front();
        }
        if losses.len() >= LOSSES_BEFORE_EXIT && !self.failing.is_cancelled() {
            tracing::error!(message = "this replica keeps losing shards (3 within a minute): exiting so that its supervisor restarts it");
            self.failing.cancel();
        }
    }

    /// A write refused by the store's epoch check: counted, and the shard dropped.
    pub fn fenced(&self, shard: u32) {
        self.fenced_writes.fetch_add(1, Ordering::Relaxed);
        self.lost(
            shard,
            "a write was refused: another replica holds it at a newer epoch",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable_and_pins_win() {
        // FNV-1a 64 of "" and "a", as published.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let mut map = ShardMap::default();
        assert_eq!(map.of(Some("eu")), (stable_hash("eu") % 64) as u32);
        assert_eq!(map.of(None), map.of(Some("default")));
        map.pins.insert("eu".into(), 5);
        assert_eq!(map.of(Some("eu")), 5);
    }
}
