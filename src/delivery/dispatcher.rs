//! The dispatcher: which tenant's lane runs next. Its fields are the state of the delivery loop
//! and its methods the things that happen to it (tenants woken, a lane done, timers due, stop).
//!
//! A tenant is in at most one of: the ready queue, running (one lane), or backoff (a timer).
//! A wake-up for a tenant in backoff is ignored: its timer takes the new events too, so intake
//! during an outage adds no timers or lanes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Delivery, LaneOutcome};
use crate::store::{now_ms, TenantId};

/// How often a dispatcher paused by a store that cannot write looks again.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Ready tenants by account: each account's queue in order, the accounts in turn.
#[derive(Default)]
struct Ready {
    by_account: HashMap<Option<String>, VecDeque<TenantId>>,
    turns: VecDeque<Option<String>>,
}

impl Ready {
    fn push(&mut self, account: Option<String>, t: TenantId) {
        let queue = self.by_account.entry(account.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(account);
        }
        queue.push_back(t);
    }

    /// The next tenant: the head of the account whose turn it is.
    fn pop(&mut self) -> Option<TenantId> {
        let account = self.turns.pop_front()?;
        let queue = self.by_account.get_mut(&account)?;
        let t = queue.pop_front();
        if queue.is_empty() {
            self.by_account.remove(&account);
        } else {
            self.turns.push_back(account);
        }
        t
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_account.values().map(VecDeque::len).sum()
    }
}

pub(super) struct Dispatcher {
    delivery: Delivery,
    /// Cancels lanes still sending when the shutdown grace has run out.
    hard_stop: CancellationToken,
    /// Ready tenants, one queue per account, served in turn so that an account with many
    /// pending tenants cannot hold back one with few.
    ready: Ready,
    in_ready: HashSet<TenantId>,
    timers: BinaryHeap<Reverse<(Instant, TenantId)>>,
    /// Tenants in backoff and when they may go again (a timer whose time differs is stale).
    backoff: HashMap<TenantId, Instant>,
    running: HashSet<TenantId>,
    /// Which tenant each lane task serves, so a lane that panicked still frees its tenant.
    lane_tenants: HashMap<Id, TenantId>,
    woken_while_running: HashSet<TenantId>,
    lanes: JoinSet<LaneOutcome>,
}

impl Dispatcher {
    pub(super) fn new(delivery: Delivery) -> Dispatcher {
        let mut d = Dispatcher {
            delivery,
            hard_stop: CancellationToken::new(),
            ready: Ready::default(),
            in_ready: HashSet::new(),
            timers: BinaryHeap::new(),
            backoff: HashMap::new(),
            running: HashSet::new(),
            lane_tenants: HashMap::new(),
            woken_while_running: HashSet::new(),
            lanes: JoinSet::new(),
        };
        let pending = d.delivery.queue.pending_tenants();
        tracing::info!(
            message = "delivery started",
            tenants_pending = pending.len()
        );
        for t in pending {
            d.make_ready(t);
        }
        d
    }

    pub(super) async fn run(mut self, stop: CancellationToken) {
        loop {
            self.start_lanes();
            self.publish_snapshot();
            let wake_at = self.next_wake();
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            let queue = self.delivery.queue.clone();
            tokio::select! {
                _ = stop.cancelled() => break,
                woken = queue.woken_tenants() => self.on_woken(woken),
                Some(joined) = self.lanes.join_next_with_id(), if !self.lanes.is_empty() => {
                    self.on_lane_done(joined)
                }
                _ = sleep => self.on_timers_due(),
            }
        }
        self.drain().await;
    }

    fn make_ready(&mut self, t: TenantId) {
        if self.in_ready.insert(t) {
            let account = self.delivery.queue.head_account(&t);
            self.ready.push(account, t);
        }
    }

    fn wait_until(&mut self, t: TenantId, at: Instant) {
        self.backoff.insert(t, at);
        self.timers.push(Reverse((at, t)));
    }

    /// Start lanes while there is room and the breaker allows (one probing lane after an
    /// outage, none while its window is open).
    fn start_lanes(&mut self) {
        if self.delivery.queue.write_error().is_some() {
            // A result that cannot be recorded would be sent again and again: pause.
            return;
        }
        // Each lane asks its data center's breaker before it sends.
        let limit = self.delivery.opts.lanes.max(1);
        while self.running.len() < limit {
            let Some(t) = self.ready.pop() else {
                break;
            };
            self.in_ready.remove(&t);
            let this = self.delivery.clone();
            let hard = self.hard_stop.clone();
            self.spawn_lane(t, async move { this.lane(t, hard).await });
        }
    }

    fn spawn_lane(
        &mut self,
        t: TenantId,
        lane: impl std::future::Future<Output = LaneOutcome> + Send + 'static,
    ) {
        self.running.insert(t);
        let handle = self.lanes.spawn(lane);
        self.lane_tenants.insert(handle.id(), t);
    }

    fn publish_snapshot(&self) {
        let now = Instant::now();
        let (until, outages) = self.delivery.breakers_summary(now);
        let until_ms = until.map(|until| now_ms() + (until - now).as_millis() as i64);
        let mut snap = self
            .delivery
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        snap.lanes_running = self.running.len();
        snap.lanes_waiting_backoff = self.backoff.len();
        snap.timers = self.timers.len();
        snap.platform_backoff_until_ms = until_ms;
        snap.consecutive_outage_failures = outages;
    }

    /// The next time something is due: a tenant's timer (lanes that met an open breaker wait
    /// on theirs).
    fn next_wake(&self) -> Option<Instant> {
        if self.delivery.queue.write_error().is_some() {
            return Some(Instant::now() + STORE_RETRY);
        }
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    fn on_woken(&mut self, woken: Vec<TenantId>) {
        for t in woken {
            if self.running.contains(&t) {
                self.woken_while_running.insert(t);
            } else if !self.backoff.contains_key(&t) {
                self.make_ready(t);
            }
        }
    }

    fn on_lane_done(&mut self, joined: Result<(Id, LaneOutcome), JoinError>) {
        let (id, outcome) = match joined {
            Ok(done) => done,
            Err(e) => {
                // The lane's batch was dropped unsettled and went back to the queue; its tenant
                // waits one initial backoff so a lane that keeps panicking is no hot loop.
                let tenant = self.lane_tenants.get(&e.id()).copied();
                tracing::error!(
                    message = "delivery lane failed",
                    tenant_id = ?tenant,
                    error = %e
                );
                (
                    e.id(),
                    LaneOutcome::RetryAt(Instant::now() + self.delivery.opts.backoff.initial()),
                )
            }
        };
        let Some(t) = self.lane_tenants.remove(&id) else {
            return;
        };
        self.running.remove(&t);
        let woken = self.woken_while_running.remove(&t);
        match outcome {
            LaneOutcome::Settled => self.make_ready(t),
            LaneOutcome::Empty | LaneOutcome::Busy | LaneOutcome::Returned => {
                if woken {
                    self.make_ready(t);
                }
            }
            LaneOutcome::RetryAt(at) => self.wait_until(t, at),
        }
    }

    fn on_timers_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, t))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.backoff.get(&t) != Some(&at) {
                continue; // superseded
            }
            self.backoff.remove(&t);
            if !self.running.contains(&t) {
                self.make_ready(t);
            }
        }
    }

    /// Reports in flight may finish within the grace period; the rest go back to the queue.
    async fn drain(mut self) {
        if !self.lanes.is_empty() {
            let grace = self.delivery.opts.shutdown_grace;
            tracing::info!(
                message = "draining delivery",
                lanes = self.lanes.len(),
                grace_s = grace.as_secs_f64()
            );
            let drained = tokio::time::timeout(grace, async {
                while self.lanes.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    message = "shutdown grace expired; returning unsettled reports to the queue"
                );
                self.hard_stop.cancel();
                while self.lanes.join_next().await.is_some() {}
            }
        }
        tracing::info!(message = "delivery stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::DeliveryOptions;
    use crate::platform::{ClientOptions, PlatformClient};
    use crate::store::{EventKind, NewEvent, Queue, StoreOptions};
    use std::sync::Arc;
    use std::time::Duration;

    fn delivery(queue: Queue) -> Delivery {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let client = PlatformClient::new(
            ClientOptions {
                // Nothing listens there; these tests never reach the lanes' requests.
                base_url: "http://127.0.0.1:9".into(),
                client_id: "id".into(),
                client_secret: crate::config::Secret::new("secret"),
                credentials: Default::default(),
                request_timeout: Duration::from_secs(1),
                max_concurrency: 2,
                integration: crate::config::Settings::local_defaults().integration,
            },
            metrics.clone(),
        )
        .unwrap();
        let opts = DeliveryOptions {
            max_batch_events: 10,
            backoff: crate::backoff::Backoff::try_new(
                Duration::from_secs(1),
                Duration::from_secs(60),
            )
            .unwrap(),
            max_age: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(1),
            lanes: 2,
        };
        let account = crate::accounts::Account {
            id: "default".into(),
            datacenter_url: "http://127.0.0.1:9".into(),
            datacenter: "127.0.0.1:9".into(),
            client_id: "test".into(),
            credentials: Default::default(),
            client,
            root_tenant_id: None,
            branding: None,
            branding_targets: None,
            source: crate::accounts::AccountSource::File,
            tenant_id: None,
            tenant_name: None,
            retiring: false,
            updated_at_ms: 0,
        };
        Delivery::new(
            queue,
            crate::accounts::Accounts::from_accounts([account]),
            metrics,
            opts,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_that_panics_frees_its_tenant_and_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path(), StoreOptions::default()).unwrap();
        let tenant = uuid::Uuid::from_u128(5);
        queue
            .enqueue(vec![NewEvent {
                tenant_id: tenant,
                kind: EventKind::Activation,
                category: "activation".into(),
                action: "activated integration".into(),
                idempotency_key: None,
                occurred_at_ms: None,
                account: None,
            }])
            .await
            .unwrap();
        let mut d = Dispatcher::new(delivery(queue.clone()));
        assert_eq!(d.ready.pop(), Some(tenant));
        d.in_ready.remove(&tenant);
        let q = queue.clone();
        d.spawn_lane(tenant, async move {
            let _batch = q.take_batch(&tenant, 10).await.unwrap();
            panic!("a lane bug");
        });
        let joined = d.lanes.join_next_with_id().await.unwrap();
        assert!(joined.as_ref().is_err_and(|e| e.is_panic()));
        d.on_lane_done(joined);
        assert!(d.running.is_empty(), "the tenant is no longer running");
        assert!(d.lane_tenants.is_empty());
        assert_eq!(queue.stats().in_flight, 0, "the batch went back");
        // It waits one initial backoff, then is ready again.
        assert!(d.backoff.contains_key(&tenant));
        assert!(d.ready.is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        d.on_timers_due();
        assert_eq!(d.ready.pop(), Some(tenant));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_in_backoff_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path(), StoreOptions::default()).unwrap();
        let mut d = Dispatcher::new(delivery(queue));
        let t = uuid::Uuid::from_u128(6);
        d.wait_until(t, Instant::now() + Duration::from_secs(30));
        for _ in 0..100 {
            d.on_woken(vec![t]);
        }
        assert!(d.ready.is_empty());
        assert_eq!(d.timers.len(), 1);
        tokio::time::advance(Duration::from_secs(30)).await;
        d.on_timers_due();
        assert_eq!(d.ready.len(), 1);
        assert!(d.backoff.is_empty());
    }
}
