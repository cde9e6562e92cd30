//! This replica as a member of the pool: heartbeat, then renew, claim and give back shards
//! each `retry_period`, by the rules of `lease`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lease::{self, Observer};
use super::{LeaseStore, MemberRow, Ownership};

/// Called with the shards taken over from another replica (not free ones).
pub type OnTakeover = Box<dyn Fn(Vec<u32>) + Send + Sync>;
/// Every this many rounds, a replica reads the heads of every shard held even while it hears
/// wake-ups: the safety net for one lost (30 s with the default retry period). The counters are
/// recounted as often, apart from the rounds.
const FULL_READ_ROUNDS: u64 = 15;

/// What the membership loop calls back.
pub struct Hooks {
    pub on_takeover: OnTakeover,
    pub on_late: OnLate,
}

/// Called with the tenants of shards held that another replica reported to late (after it
/// lost their shard); returns once their latest decision is queued to be reported again.
pub type OnLate = Box<
    dyn Fn(Vec<uuid::Uuid>) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

/// The members' liveness: a member is live while its heartbeat record keeps changing (judged
/// on this replica's monotonic clock, like the leases).
#[derive(Default)]
struct Members {
    seen: HashMap<String, (u64, Instant)>,
}

impl Members {
    fn live(
        &mut self,
        rows: &[MemberRow],
        me: &str,
        now: Instant,
        lease: std::time::Duration,
    ) -> usize {
        let mut live = 0;
        for m in rows {
            let entry = self.seen.entry(m.id.clone()).or_insert((m.version, now));
            if entry.0 != m.version {
                *entry = (m.version, now);
            }
            if m.id == me || now.duration_since(entry.1) < lease {
                live += 1;
            }
        }
        self.seen.retain(|id, _| rows.iter().any(|m| &m.id == id));
        live.max(1)
    }
}

/// Run the membership loop until `stop`; the shards stay held (give them back with `leave`
/// once the reports in flight have ended).
pub async fn run<S: LeaseStore + ?Sized + 'static>(
    queue: std::sync::Arc<S>,
    own: Arc<Ownership>,
    api: String,
    stop: CancellationToken,
    hooks: Hooks,
) {
    tokio::spawn(recount_loop(
        queue.clone(),
        own.timing.retry * FULL_READ_ROUNDS as u32,
        stop.clone(),
    ));
    let mut observer = Observer::default();
    let mut members = Members::default();
    let shards = own.map.shards;
    let mut rounds: u64 = 0;
    loop {
        rounds += 1;
        let now = Instant::now();
        for s in own.snapshot().lapsed(now, own.timing.renew_deadline) {
            own.lost(
                s,
                "its renew deadline passed (the store could not be reached in time)",
            );
        }
        if let Err(e) = round(
            &*queue,
            &own,
            &api,
            &mut observer,
            &mut members,
            now,
            shards,
            &hooks,
            rounds % FULL_READ_ROUNDS == 0,
        )
        .await
        {
            tracing::warn!(message = "cluster round failed; shards are kept until their renew deadline", error = %e);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(own.timing.retry) => {}
        }
    }
}

/// Read the store's counters afresh every `period` until `stop`, apart from the rounds (with a
/// backlog of millions, a count takes longer than a round may).
async fn recount_loop<S: LeaseStore + ?Sized>(
    queue: std::sync::Arc<S>,
    period: std::time::Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if let Err(e) = queue.recount().await {
            tracing::debug!(message = "the store's counters could not be recounted; kept as they were", error = %e);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn round<S: LeaseStore + ?Sized>(
    queue: &S,
    own: &Ownership,
    api: &str,
    observer: &mut Observer,
    members: &mut Members,
    now: Instant,
    shards: u32,
    hooks: &Hooks,
    full_read: bool,
) -> Result<(), S::Error> {
    queue.heartbeat(&own.me, api).await?;
    let rows = queue.members().await?;
    let live = members.live(&rows, &own.me, Instant::now(), own.timing.lease);
    own.live_members
        .store(live as u64, std::sync::atomic::Ordering::Relaxed);
    let shard_rows = queue.shard_rows().await?;
    let unowned = shard_rows
        .iter()
        .filter(|r| match &r.owner {
            None => true,
            Some(o) => {
                observer
                    .claimable(r.shard, Instant::now(), own.timing.lease)
                    .is_some()
                    && o != &own.me
            }
        })
        .count();
    own.unowned
        .store(unowned as u64, std::sync::atomic::Ordering::Relaxed);
    for r in shard_rows {
        observer.observe(r.shard, r.record(), Instant::now());
    }
    let plan = lease::plan(
        shards,
        live,
        observer,
        &own.snapshot(),
        Instant::now(),
        &own.timing,
    );
    if !plan.release.is_empty() {
        give_back(queue, own, &plan.release, live).await?;
    }
    let renewed = queue.renew(&own.me, &plan.renew).await?;
    for (s, epoch) in &plan.renew {
        if renewed.contains(s) {
            own.set(*s, *epoch, now);
        } else {
            own.lost(*s, "its renew was refused: another replica holds it");
        }
    }
    let mut claimed = Vec::new();
    let mut taken_over = Vec::new();
    for (s, version) in &plan.claim {
        if let Some((epoch, previous)) = queue.claim(&own.me, *s, *version).await? {
            own.set(*s, epoch, now);
            claimed.push(*s);
            if previous.is_some_and(|p| p != own.me) {
                taken_over.push(*s);
            }
        }
    }
    if !claimed.is_empty() {
        tracing::info!(
            message = "shards claimed",
            shards = claimed.len(),
            taken_over = taken_over.len(),
            live_members = live
        );
    }
    // The heads of the shards just claimed; of every shard held while wake-ups are not heard
    // (events other replicas accepted for them come only this way then), and every
    // FULL_READ_ROUNDS rounds whatever.
    if full_read || !queue.hears_wake_ups() {
        queue.load_shards(&own.owned()).await?;
    } else if !claimed.is_empty() {
        queue.load_shards(&claimed).await?;
    }
    if !taken_over.is_empty() {
        (hooks.on_takeover)(taken_over);
    }
    // Reports another replica sent before it lost a shard held now, answered after: the
    // latest decision of each tenant goes out again, after them.
    let late = queue.late_reports(&own.owned()).await?;
    if !late.is_empty() && (hooks.on_late)(late.clone()).await {
        queue.forget_late(&late).await?;
    }
    Ok(())
}

/// A shard and the epoch it is held at.
type Lease = (u32, u64);

/// Give back shards over this replica's share, as a graceful stop does: stop acting for them,
/// wait (up to one retry period) for their reports in flight to be settled, then release them.
/// A shard whose reports are still out is not released: its lease runs out instead, after
/// they have ended, and a peer claims it then.
async fn give_back<S: LeaseStore + ?Sized>(
    queue: &S,
    own: &Ownership,
    release: &[(u32, u64)],
    live: usize,
) -> Result<(), S::Error> {
    for (s, _) in release {
        own.give_up(*s);
    }
    let deadline = Instant::now() + own.timing.retry;
    while release.iter().any(|(s, _)| own.in_flight(*s) > 0) && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (free, busy): (Vec<Lease>, Vec<Lease>) =
        release.iter().partition(|(s, _)| own.in_flight(*s) == 0);
    if !free.is_empty() {
        queue.release(&own.me, &free).await?;
    }
    tracing::info!(
        message = "shards given back (over this replica's share)",
        shards = free.len(),
        left_to_expire = busy.len(),
        live_members = live
    );
    Ok(())
}

/// Give back every shard held and leave the pool (a graceful stop): peers take over at once.
pub async fn leave<S: LeaseStore + ?Sized>(queue: &S, own: &Ownership) {
    let held: Vec<(u32, u64)> = own
        .snapshot()
        .shards
        .iter()
        .map(|(s, (e, _))| (*s, *e))
        .collect();
    for (s, _) in &held {
        own.give_up(*s);
    }
    if let Err(e) = queue.release(&own.me, &held).await {
        tracing::warn!(message = "could not give the shards back; peers take them once the lease expires", error = %e);
    }
    let _ = queue.leave(&own.me).await;
    tracing::info!(
        message = "left the pool: shards given back",
        shards = held.len()
    );
}

/// What `GET /v1/cluster` shows.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub backend: &'static str,
    pub me: String,
    pub shards: u32,
    pub members: Vec<serde_json::Value>,
    pub unowned: Vec<u32>,
    pub epochs: Vec<serde_json::Value>,
}

impl ClusterView {
    pub async fn read<S: LeaseStore + ?Sized>(
        queue: &S,
        own: &Ownership,
        backend: &'static str,
    ) -> Result<ClusterView, S::Error> {
        let members = queue.members().await?;
        let shards = queue.shard_rows().await?;
        let mut by_owner: HashMap<String, Vec<u32>> = HashMap::new();
        for s in &shards {
            if let Some(o) = &s.owner {
                by_owner.entry(o.clone()).or_default().push(s.shard);
            }
        }
        Ok(ClusterView {
            backend,
            me: own.me.clone(),
            shards: own.map.shards,
            members: members
                .iter()
                .map(|m| {
                    let owned = by_owner.get(&m.id).cloned().unwrap_or_default();
                    serde_json::json!({
                        "id": m.id,
                        "api": m.api,
                        "heartbeat_age_s": (m.heartbeat_age_s * 1000.0).round() / 1000.0,
                        "shards_owned": owned.len(),
                        "shards": owned,
                        "me": m.id == own.me,
                    })
                })
                .collect(),
            unowned: shards
                .iter()
                .filter(|s| {
                    !members.iter().any(|m| {
                        Some(&m.id) == s.owner.as_ref()
                            && m.heartbeat_age_s < own.timing.lease.as_secs_f64()
                    })
                })
                .map(|s| s.shard)
                .collect(),
            epochs: shards
                .iter()
                .map(|s| serde_json::json!({"shard": s.shard, "owner": s.owner, "epoch": s.epoch, "changed_age_s": (s.changed_age_s * 1000.0).round() / 1000.0}))
                .collect(),
        })
    }
}
