//! The delivery engine: one lane per tenant, each sending its oldest pending events as one
//! report and nothing else until that report is settled; lanes run in parallel, bounded.
//!
//! Retry policy: exponential backoff with full jitter per lane, `Retry-After` honoured, and a
//! platform-wide breaker: when reports fail for lack of an answer (connection errors, timeouts,
//! 5xx) on consecutive lanes, the whole engine backs off and then probes with one lane at a time
//! until a report succeeds, so an outage costs a bounded number of requests.
//!
//! Dead letters do not block their tenant: a report the platform refuses for good is parked
//! and the tenant's later events go on. Integration status is level state (the latest
//! activation or deactivation wins, and the status reconciler re-asserts it), so progress
//! serves users better than holding every later event behind one the platform will never take.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::{label, Metrics};
use crate::platform::{ErrorClass, PlatformClient, PlatformError, ReportEvent};
use crate::store::{now_ms, Batch, EventKind, Queue, Take, TenantId};

#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    pub max_batch_events: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_age: Duration,
    pub shutdown_grace: Duration,
    /// Lanes sending at once (the platform client also bounds requests of every kind).
    pub lanes: usize,
}

impl DeliveryOptions {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        DeliveryOptions {
            max_batch_events: s.delivery.max_batch_events,
            initial_backoff: s.delivery.initial_backoff,
            max_backoff: s.delivery.max_backoff,
            max_age: s.delivery.max_age,
            shutdown_grace: s.delivery.shutdown_grace,
            lanes: s.platform.max_concurrency,
        }
    }
}

/// Full-jitter exponential backoff: a random delay in `[0, min(max, initial * 2^attempt)]`,
/// never below a floor of a tenth of `initial` so a retry never fires in a hot loop.
pub fn backoff_delay(
    attempt: u32,
    initial: Duration,
    max: Duration,
    rng: &mut impl Rng,
) -> Duration {
    let ceiling = initial
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let floor = (initial / 10).min(ceiling);
    let span = ceiling.saturating_sub(floor).as_millis() as u64;
    floor
        + Duration::from_millis(if span == 0 {
            0
        } else {
            rng.random_range(0..=span)
        })
}

/// Platform-wide outage state shared by the lanes.
#[derive(Debug, Default)]
struct Breaker {
    consecutive_outages: u32,
    open_until_ms: i64,
}

/// What the engine is doing, for `/v1/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeliverySnapshot {
    pub lanes_running: usize,
    pub lanes_waiting_backoff: usize,
    /// Scheduled wake-ups (at most one per tenant in backoff).
    pub timers: usize,
    pub platform_backoff_until_ms: Option<i64>,
    pub consecutive_outage_failures: u32,
}

enum LaneOutcome {
    /// A report was settled (delivered or dead-lettered); the tenant may have more.
    Settled,
    Empty,
    Busy,
    RetryAt(i64),
    /// Shutdown came before the report was settled; the batch went back to the queue.
    Returned,
}

#[derive(Clone)]
pub struct Delivery {
    queue: Queue,
    client: PlatformClient,
    metrics: Arc<Metrics>,
    opts: DeliveryOptions,
    breaker: Arc<Mutex<Breaker>>,
    snapshot: Arc<Mutex<DeliverySnapshot>>,
}

impl Delivery {
    pub fn new(
        queue: Queue,
        client: PlatformClient,
        metrics: Arc<Metrics>,
        opts: DeliveryOptions,
    ) -> Self {
        Delivery {
            queue,
            client,
            metrics,
            opts,
            breaker: Arc::new(Mutex::new(Breaker::default())),
            snapshot: Arc::new(Mutex::new(DeliverySnapshot::default())),
        }
    }

    pub fn snapshot(&self) -> DeliverySnapshot {
        self.snapshot.lock().expect("snapshot lock").clone()
    }

    /// Run until `stop` fires; then let reports in flight finish within the grace period and
    /// return the rest to the queue.
    pub async fn run(self, stop: CancellationToken) {
        let hard_stop = CancellationToken::new();
        let mut ready: VecDeque<TenantId> = VecDeque::new();
        let mut in_ready: HashSet<TenantId> = HashSet::new();
        let mut timers: BinaryHeap<Reverse<(i64, TenantId)>> = BinaryHeap::new();
        // Tenants in backoff and when they may go again. A wake-up for such a tenant is ignored
        // (its timer takes the new events too), so intake during an outage adds nothing here.
        let mut backoff: HashMap<TenantId, i64> = HashMap::new();
        let mut running: HashSet<TenantId> = HashSet::new();
        let mut woken_while_running: HashSet<TenantId> = HashSet::new();
        let mut lanes: JoinSet<(TenantId, LaneOutcome)> = JoinSet::new();

        let pending = self.queue.pending_tenants();
        tracing::info!(
            message = "delivery started",
            tenants_pending = pending.len()
        );
        for t in pending {
            in_ready.insert(t);
            ready.push_back(t);
        }

        loop {
            // Start lanes while there is room and the breaker allows.
            let now = now_ms();
            let (open_until, probing) = {
                let b = self.breaker.lock().expect("breaker lock");
                (b.open_until_ms, b.consecutive_outages >= 2)
            };
            let limit = if probing { 1 } else { self.opts.lanes.max(1) };
            if now >= open_until {
                while running.len() < limit {
                    let Some(t) = ready.pop_front() else { break };
                    in_ready.remove(&t);
                    running.insert(t);
                    let this = self.clone();
                    let hard = hard_stop.clone();
                    lanes.spawn(async move { (t, this.lane(t, hard).await) });
                }
            }
            {
                let mut snap = self.snapshot.lock().expect("snapshot lock");
                snap.lanes_running = running.len();
                snap.lanes_waiting_backoff = backoff.len();
                snap.timers = timers.len();
                snap.platform_backoff_until_ms = (open_until > now).then_some(open_until);
                snap.consecutive_outage_failures = self
                    .breaker
                    .lock()
                    .expect("breaker lock")
                    .consecutive_outages;
            }
            let next_timer = timers.peek().map(|Reverse((at, _))| *at);
            let wake_at = match (next_timer, open_until > now && !ready.is_empty()) {
                (Some(t), true) => Some(t.min(open_until)),
                (Some(t), false) => Some(t),
                (None, true) => Some(open_until),
                (None, false) => None,
            };
            let sleep = async {
                match wake_at {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis((at - now_ms()).max(0) as u64))
                            .await
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                woken = self.queue.woken_tenants() => {
                    for t in woken {
                        if running.contains(&t) {
                            woken_while_running.insert(t);
                        } else if !backoff.contains_key(&t) && in_ready.insert(t) {
                            ready.push_back(t);
                        }
                    }
                }
                Some(joined) = lanes.join_next(), if !lanes.is_empty() => {
                    let (t, outcome) = match joined {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::error!(message = "delivery lane panicked", error = %e);
                            continue;
                        }
                    };
                    running.remove(&t);
                    let woken = woken_while_running.remove(&t);
                    match outcome {
                        LaneOutcome::Settled => {
                            if in_ready.insert(t) { ready.push_back(t); }
                        }
                        LaneOutcome::Empty | LaneOutcome::Busy | LaneOutcome::Returned => {
                            if woken && in_ready.insert(t) { ready.push_back(t); }
                        }
                        LaneOutcome::RetryAt(at) => {
                            backoff.insert(t, at);
                            timers.push(Reverse((at, t)));
                        }
                    }
                }
                _ = sleep => {
                    let now = now_ms();
                    while let Some(Reverse((at, t))) = timers.peek().copied() {
                        if at > now { break; }
                        timers.pop();
                        if backoff.get(&t) != Some(&at) {
                            continue; // superseded
                        }
                        backoff.remove(&t);
                        if !running.contains(&t) && in_ready.insert(t) {
                            ready.push_back(t);
                        }
                    }
                }
            }
        }

        // Drain: reports in flight may finish within the grace period.
        if !lanes.is_empty() {
            tracing::info!(
                message = "draining delivery",
                lanes = lanes.len(),
                grace_s = self.opts.shutdown_grace.as_secs_f64()
            );
            let drained = tokio::time::timeout(self.opts.shutdown_grace, async {
                while lanes.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    message = "shutdown grace expired; returning unsettled reports to the queue"
                );
                hard_stop.cancel();
                while lanes.join_next().await.is_some() {}
            }
        }
        tracing::info!(message = "delivery stopped");
    }

    /// One report of one tenant.
    async fn lane(&self, tenant: TenantId, hard_stop: CancellationToken) -> LaneOutcome {
        let batch = match self.queue.take_batch(&tenant, self.opts.max_batch_events) {
            Ok(Take::Ready(b)) => b,
            Ok(Take::Empty) => return LaneOutcome::Empty,
            Ok(Take::Busy) => return LaneOutcome::Busy,
            Ok(Take::NotBefore(at)) => return LaneOutcome::RetryAt(at),
            Err(e) => {
                tracing::error!(message = "cannot take a batch", tenant_id = %tenant, error = %e);
                return LaneOutcome::RetryAt(
                    now_ms() + self.opts.initial_backoff.as_millis() as i64,
                );
            }
        };
        let events: Vec<ReportEvent> = batch
            .events
            .iter()
            .map(|e| ReportEvent {
                category: e.category.clone(),
                action: e.action.clone(),
                activation_event: e.kind == EventKind::Activation,
                deactivation_event: e.kind == EventKind::Deactivation,
            })
            .collect();
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = self.client.report_status(tenant, &events) => r,
            _ = hard_stop.cancelled() => {
                if let Err(e) = self.queue.return_batch(&batch) {
                    tracing::error!(message = "cannot return a batch", tenant_id = %tenant, error = %e);
                }
                return LaneOutcome::Returned;
            }
        };
        self.metrics
            .delivery_request_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => self.on_success(&batch).await,
            Err(e) => self.on_failure(&batch, e).await,
        }
    }

    async fn on_success(&self, batch: &Batch) -> LaneOutcome {
        {
            let mut b = self.breaker.lock().expect("breaker lock");
            b.consecutive_outages = 0;
            b.open_until_ms = 0;
        }
        self.metrics
            .delivery_attempts
            .get_or_create(&label("outcome", "success"))
            .inc();
        if let Err(e) = self.queue.ack_delivered(batch).await {
            // The report reached the platform; if the ack is lost it will be sent again, which
            // the platform tolerates.
            tracing::error!(message = "cannot record delivery", tenant_id = %batch.tenant_id, error = %e);
            return LaneOutcome::RetryAt(now_ms() + self.opts.initial_backoff.as_millis() as i64);
        }
        let now = now_ms();
        self.metrics
            .events_delivered
            .inc_by(batch.events.len() as u64);
        for e in &batch.events {
            self.metrics
                .event_delivery_lag
                .observe(((now - e.accepted_at_ms).max(0) as f64) / 1000.0);
        }
        tracing::debug!(message = "report delivered", tenant_id = %batch.tenant_id, events = batch.events.len());
        LaneOutcome::Settled
    }

    async fn on_failure(&self, batch: &Batch, e: PlatformError) -> LaneOutcome {
        let outcome = match e.class {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Auth => "auth",
            ErrorClass::Permanent | ErrorClass::Conflict => "permanent",
        };
        self.metrics
            .delivery_attempts
            .get_or_create(&label("outcome", outcome))
            .inc();
        if matches!(e.class, ErrorClass::Permanent | ErrorClass::Conflict) {
            return self.park(batch, "permanent", &e.to_string()).await;
        }
        let now = now_ms();
        let age = Duration::from_millis((now - batch.oldest_accepted_ms()).max(0) as u64);
        if age >= self.opts.max_age {
            return self
                .park(
                    batch,
                    "max_age",
                    &format!(
                        "retries exhausted after {}: {e}",
                        humantime::format_duration(self.opts.max_age)
                    ),
                )
                .await;
        }
        let mut rng = rand::rng();
        let mut delay = backoff_delay(
            batch.max_attempts(),
            self.opts.initial_backoff,
            self.opts.max_backoff,
            &mut rng,
        );
        if let Some(ra) = e.retry_after {
            delay = delay.max(ra);
        }
        // No answer or a server error: count towards a platform-wide outage.
        let outage =
            e.class == ErrorClass::Retryable && e.status.is_none_or(|s| s >= 500 || s == 429);
        {
            let mut b = self.breaker.lock().expect("breaker lock");
            if outage {
                b.consecutive_outages += 1;
                if b.consecutive_outages >= 2 {
                    let global = backoff_delay(
                        b.consecutive_outages - 2,
                        self.opts.initial_backoff,
                        self.opts.max_backoff,
                        &mut rng,
                    )
                    .max(e.retry_after.unwrap_or_default());
                    b.open_until_ms = b.open_until_ms.max(now + global.as_millis() as i64);
                }
            } else if let Some(ra) = e.retry_after {
                b.open_until_ms = b.open_until_ms.max(now + ra.as_millis() as i64);
            }
        }
        let at = now + delay.as_millis() as i64;
        tracing::warn!(
            message = "report failed, will retry",
            tenant_id = %batch.tenant_id,
            events = batch.events.len(),
            attempt = batch.max_attempts() + 1,
            retry_in_ms = delay.as_millis() as u64,
            error = %e
        );
        if let Err(err) = self.queue.mark_failed(batch, &e.to_string(), at) {
            tracing::error!(message = "cannot record a failed attempt", tenant_id = %batch.tenant_id, error = %err);
        }
        LaneOutcome::RetryAt(at)
    }

    async fn park(&self, batch: &Batch, reason: &'static str, message: &str) -> LaneOutcome {
        tracing::error!(
            message = "report dead-lettered",
            tenant_id = %batch.tenant_id,
            events = batch.events.len(),
            reason,
            error = %message
        );
        if let Err(e) = self.queue.dead_letter(batch, message).await {
            tracing::error!(message = "cannot dead-letter a batch", tenant_id = %batch.tenant_id, error = %e);
            return LaneOutcome::RetryAt(now_ms() + self.opts.initial_backoff.as_millis() as i64);
        }
        self.metrics
            .events_dead_lettered
            .get_or_create(&label("reason", reason))
            .inc_by(batch.events.len() as u64);
        LaneOutcome::Settled
    }
}
