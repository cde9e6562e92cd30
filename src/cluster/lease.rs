//! The lease rules, apart from any store: what a replica renews, claims and gives back, and
//! whether it may act for a shard. The store is the arbiter (compare-and-swap on each shard's
//! record); these rules only decide what to ask of it.
//!
//! As in client-go's leader election: expiry is judged by each candidate's own monotonic clock
//! from the last change of the record it observed, never by comparing wall clocks; a holder acts
//! only until its last successful renew (timed from when the renew was sent) plus the renew
//! deadline, which ends before any candidate may take the shard over (lease > renew deadline).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

pub use crate::config::LeaseTiming as Timing;

/// A shard's lease record as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub owner: Option<String>,
    /// Raised by every claim: the fencing token of the current owner.
    pub epoch: u64,
    /// Raised by every change (claim, renew, release).
    pub version: u64,
}

/// What this replica observed of each shard: the record, and when (on its own monotonic clock)
/// it last saw it change.
#[derive(Debug, Default)]
pub struct Observer {
    seen: HashMap<u32, (Record, Instant)>,
}

impl Observer {
    pub fn observe(&mut self, shard: u32, record: Record, now: Instant) {
        match self.seen.get_mut(&shard) {
            Some((r, _)) if *r == record => {}
            _ => {
                self.seen.insert(shard, (record, now));
            }
        }
    }

    /// Free, or held by someone whose record has not changed for a whole lease.
    pub fn claimable(&self, shard: u32, now: Instant, lease: Duration) -> Option<&Record> {
        let (r, changed) = self.seen.get(&shard)?;
        let free = r.owner.is_none();
        (free || now.duration_since(*changed) >= lease).then_some(r)
    }
}

/// The shards this replica holds: each with its epoch and when its last successful renew (or
/// claim) was sent.
#[derive(Debug, Default, Clone)]
pub struct Held {
    pub shards: BTreeMap<u32, (u64, Instant)>,
}

impl Held {
    /// The epoch to write with, while this replica may act for the shard: before its last
    /// successful renew plus the renew deadline.
    pub fn may_act(&self, shard: u32, now: Instant, deadline: Duration) -> Option<u64> {
        let (epoch, renewed) = self.shards.get(&shard)?;
        (now < *renewed + deadline).then_some(*epoch)
    }

    /// Shards past their deadline: to be dropped (stepping down before anyone may take over).
    pub fn lapsed(&self, now: Instant, deadline: Duration) -> Vec<u32> {
        self.shards
            .iter()
            .filter(|(_, (_, renewed))| now >= *renewed + deadline)
            .map(|(s, _)| *s)
            .collect()
    }
}

/// The most shards one replica holds with `live` members: ceil(shards / live) + 1.
pub fn bound(shards: u32, live: usize) -> usize {
    (shards as usize).div_ceil(live.max(1)) + 1
}

/// What to ask of the store in one round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// (shard, epoch) to renew.
    pub renew: Vec<(u32, u64)>,
    /// (shard, observed version) to claim.
    pub claim: Vec<(u32, u64)>,
    /// (shard, epoch) to give back.
    pub release: Vec<(u32, u64)>,
}

/// Plan a round: renew every shard held, give back what is over the bound (highest first), and
/// claim free or expired shards up to the bound (free first, lowest first).
pub fn plan(
    shards: u32,
    live: usize,
    observer: &Observer,
    held: &Held,
    now: Instant,
    timing: &Timing,
) -> Plan {
    let limit = bound(shards, live);
    let mut out = Plan::default();
    let mut mine: Vec<u32> = held.shards.keys().copied().collect();
    while mine.len() > limit {
        let s = mine.pop().expect("over the bound");
        out.release.push((s, held.shards[&s].0));
    }
    for s in &mine {
        out.renew.push((*s, held.shards[s].0));
    }
    let room = limit.saturating_sub(mine.len());
    let mut free = Vec::new();
    let mut expired = Vec::new();
    for s in 0..shards {
        if held.shards.contains_key(&s) {
            continue;
        }
        // A record naming this replica that it does not hold (it restarted) is expired like any
        // other before it is taken again.
        if let Some(r) = observer.claimable(s, now, timing.lease) {
            if r.owner.is_none() {
                free.push((s, r.version));
            } else {
                expired.push((s, r.version));
            }
        }
    }
    out.claim = free.into_iter().chain(expired).take(room).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_are_checked_as_client_go_does() {
        assert!(Timing::default().check().is_ok());
        let t = |l, d, r| Timing {
            lease: Duration::from_millis(l),
            renew_deadline: Duration::from_millis(d),
            retry: Duration::from_millis(r),
        };
        assert!(t(3000, 2000, 500).check().is_ok());
        assert!(t(2000, 2000, 500)
            .check()
            .unwrap_err()
            .contains("lease_duration"));
        assert!(t(3000, 1200, 1000)
            .check()
            .unwrap_err()
            .contains("retry_period"));
    }

    /// A store of lease records with compare-and-swap, as the database's transactions are.
    #[derive(Default)]
    struct Store {
        records: HashMap<u32, Record>,
    }

    impl Store {
        fn get(&self, s: u32) -> Record {
            self.records.get(&s).cloned().unwrap_or(Record {
                owner: None,
                epoch: 0,
                version: 0,
            })
        }
        fn renew(&mut self, s: u32, me: &str, epoch: u64) -> bool {
            let r = self.get(s);
            if r.owner.as_deref() == Some(me) && r.epoch == epoch {
                self.records.insert(
                    s,
                    Record {
                        version: r.version + 1,
                        ..r
                    },
                );
                true
            } else {
                false
            }
        }
        fn claim(&mut self, s: u32, me: &str, version: u64) -> Option<u64> {
            let r = self.get(s);
            (r.version == version).then(|| {
                let epoch = r.epoch + 1;
                self.records.insert(
                    s,
                    Record {
                        owner: Some(me.into()),
                        epoch,
                        version: version + 1,
                    },
                );
                epoch
            })
        }
        fn release(&mut self, s: u32, me: &str, epoch: u64) {
            let r = self.get(s);
            if r.owner.as_deref() == Some(me) && r.epoch == epoch {
                self.records.insert(
                    s,
                    Record {
                        owner: None,
                        epoch,
                        version: r.version + 1,
                    },
                );
            }
        }
    }

    struct Replica {
        name: String,
        observer: Observer,
        held: Held,
    }

    const SHARDS: u32 = 8;

    /// One round of a replica at `now`: the store is read and written `delay` later.
    fn round(
        r: &mut Replica,
        store: &mut Store,
        now: Instant,
        delay: Duration,
        live: usize,
        t: &Timing,
    ) {
        for s in r.held.lapsed(now, t.renew_deadline) {
            r.held.shards.remove(&s);
        }
        let at = now + delay;
        for s in 0..SHARDS {
            r.observer.observe(s, store.get(s), at);
        }
        let p = plan(SHARDS, live, &r.observer, &r.held, at, t);
        for (s, epoch) in p.release {
            store.release(s, &r.name, epoch);
            r.held.shards.remove(&s);
        }
        for (s, epoch) in p.renew {
            if store.renew(s, &r.name, epoch) {
                // Timed from when the renew was sent, not when it was answered.
                r.held.shards.insert(s, (epoch, now));
            } else {
                r.held.shards.remove(&s);
            }
        }
        for (s, version) in p.claim {
            if let Some(epoch) = store.claim(s, &r.name, version) {
                r.held.shards.insert(s, (epoch, now));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]
        /// Random rounds, pauses and store delays of three replicas on one controlled clock:
        /// whoever may act for a shard is its owner in the store at that epoch, so there are
        /// never two holders with unexpired deadlines, and a write with a stale epoch is refused.
        #[test]
        fn never_two_holders_and_stale_epochs_are_refused(
            steps in proptest::collection::vec((0usize..3, 0u64..900, 0u64..400, proptest::bool::ANY), 1..300)
        ) {
            let t = Timing {
                lease: Duration::from_millis(3000),
                renew_deadline: Duration::from_millis(2000),
                retry: Duration::from_millis(500),
            };
            let base = Instant::now();
            let mut clock = Duration::ZERO;
            let mut store = Store::default();
            let mut replicas: Vec<Replica> = (0..3)
                .map(|i| Replica { name: format!("r{i}"), observer: Observer::default(), held: Held::default() })
                .collect();
            for (who, dt, delay, acts) in steps {
                clock += Duration::from_millis(dt);
                let now = base + clock;
                if acts {
                    round(&mut replicas[who], &mut store, now, Duration::from_millis(delay), 3, &t);
                }
                for r in &replicas {
                    for s in 0..SHARDS {
                        if let Some(epoch) = r.held.may_act(s, now, t.renew_deadline) {
                            let rec = store.get(s);
                            proptest::prop_assert_eq!(rec.owner.as_deref(), Some(r.name.as_str()), "shard {} acted on by a replica that is not its owner", s);
                            proptest::prop_assert_eq!(rec.epoch, epoch, "shard {}: a stale epoch may act", s);
                        }
                    }
                }
                // A fenced write with any epoch but the store's is refused.
                for s in 0..SHARDS {
                    let rec = store.get(s);
                    if let Some(owner) = rec.owner.clone() {
                        let mut copy = Store { records: store.records.clone() };
                        proptest::prop_assert!(!copy.renew(s, &owner, rec.epoch.wrapping_sub(1)));
                        proptest::prop_assert!(copy.renew(s, &owner, rec.epoch));
                    }
                }
            }
        }
    }

    #[test]
    fn replicas_share_the_shards_within_the_bound() {
        let t = Timing::default();
        let base = Instant::now();
        let mut store = Store::default();
        let mut replicas: Vec<Replica> = (0..3)
            .map(|i| Replica {
                name: format!("r{i}"),
                observer: Observer::default(),
                held: Held::default(),
            })
            .collect();
        for step in 0..20u64 {
            let now = base + t.retry * step as u32;
            for r in &mut replicas {
                round(r, &mut store, now, Duration::ZERO, 3, &t);
            }
        }
        let counts: Vec<usize> = replicas.iter().map(|r| r.held.shards.len()).collect();
        assert_eq!(counts.iter().sum::<usize>(), SHARDS as usize, "{counts:?}");
        assert!(counts.iter().all(|c| *c <= bound(SHARDS, 3)), "{counts:?}");
    }

    #[test]
    fn the_bound_leaves_one_spare() {
        assert_eq!(bound(64, 1), 65);
        assert_eq!(bound(64, 2), 33);
        assert_eq!(bound(64, 3), 23);
        assert_eq!(bound(64, 0), 65);
    }
}
