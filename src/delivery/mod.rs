//! The delivery engine: one lane per tenant, each sending its oldest pending events as one
//! report and nothing else until that report is settled; lanes run in parallel, bounded.
//!
//! Each report goes to the data center of its account, with that account's client and token.
//!
//! Retry policy: exponential backoff with full jitter per lane, `Retry-After` honoured, and a
//! breaker per data center: when reports fail for lack of an answer (connection errors,
//! timeouts, 5xx) on consecutive lanes, every report to that data center waits, and then one at a
//! time probes until one succeeds, so an outage costs a bounded number of requests and one data
//! center down does not slow the others.
//!
//! Dead letters do not block their tenant: a report the platform refuses for good is parked
//! and the tenant's later events go on. Integration status is level state (the latest
//! activation or deactivation wins, and the status reconciler re-asserts it), so progress
//! serves users better than holding every later event behind one the platform will never take.

mod breaker;
mod dispatcher;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::accounts::{Account, Accounts};
use crate::backoff::{Backoff, InvalidBackoff};
use crate::metrics::{label, AttemptOutcome, DeadLetterReason, Metrics};
use crate::platform::{ErrorClass, PlatformError, ReportEvent, ReportTimes};
use crate::store::{now_ms, Batch, EventKind, Queue, Take, TenantId};

pub use breaker::{Breaker, OUTAGE_THRESHOLD};
use dispatcher::Dispatcher;

/// How soon a report whose account is being changed is tried again.
const ACCOUNT_CHANGE_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    pub max_batch_events: usize,
    pub backoff: Backoff,
    pub max_age: Duration,
    pub shutdown_grace: Duration,
    /// Lanes sending at once (the platform client also bounds requests of every kind).
    pub lanes: usize,
}

impl DeliveryOptions {
    pub fn from_settings(s: &crate::config::Settings) -> Result<Self, InvalidBackoff> {
        Ok(DeliveryOptions {
            max_batch_events: s.delivery.max_batch_events,
            backoff: Backoff::try_new(s.delivery.initial_backoff, s.delivery.max_backoff)?,
            max_age: s.delivery.max_age,
            shutdown_grace: s.delivery.shutdown_grace,
            lanes: s.platform.max_concurrency,
        })
    }
}

/// What the engine is doing, for `/v1/status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DeliverySnapshot {
    pub lanes_running: usize,
    pub lanes_waiting_backoff: usize,
    /// Scheduled wake-ups (at most one per tenant in backoff).
    pub timers: usize,
    pub platform_backoff_until_ms: Option<i64>,
    pub consecutive_outage_failures: u32,
}

/// How one lane ended.
#[derive(Debug)]
enum LaneOutcome {
    /// A report was settled (delivered or dead-lettered); the tenant may have more.
    Settled,
    Empty,
    Busy,
    /// The tenant waits until then (its head is in backoff, or settling failed).
    RetryAt(Instant),
    /// Shutdown came before the report was settled; the batch went back to the queue.
    Returned,
}

#[derive(Clone)]
pub struct Delivery {
    queue: Queue,
    accounts: Accounts,
    metrics: Arc<Metrics>,
    opts: DeliveryOptions,
    /// One breaker per data center (host of its URL).
    breakers: Arc<Mutex<std::collections::HashMap<String, Breaker>>>,
    snapshot: Arc<Mutex<DeliverySnapshot>>,
    /// Per tenant and account in failure, when this process first failed its oldest report.
    #[allow(clippy::type_complexity)]
    failing_since: Arc<Mutex<std::collections::HashMap<(TenantId, Option<String>), FirstFailure>>>,
}

/// When a tenant's oldest report first failed in this process, and its wall-clock age then.
#[derive(Debug, Clone, Copy)]
struct FirstFailure {
    head: u64,
    at: Instant,
    age: Duration,
}

impl FirstFailure {
    fn now(head: u64, age: Duration) -> FirstFailure {
        FirstFailure {
            head,
            at: Instant::now(),
            age,
        }
    }
}

/// The account of a batch (every event of a batch is of one).
fn batch_account(batch: &Batch) -> Option<String> {
    batch.events.first().and_then(|e| e.account.clone())
}

/// The most accounts a lane passes over on one tenant before it sends for the next one.
const MAX_SKIPPED_ACCOUNTS: usize = 8;

impl Delivery {
    pub fn new(
        queue: Queue,
        accounts: Accounts,
        metrics: Arc<Metrics>,
        opts: DeliveryOptions,
    ) -> Self {
        Delivery {
            queue,
            accounts,
            metrics,
            opts,
            breakers: Default::default(),
            snapshot: Arc::new(Mutex::new(DeliverySnapshot::default())),
            failing_since: Default::default(),
        }
    }

    pub fn snapshot(&self) -> DeliverySnapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Work on the breaker of a data center.
    fn breaker<T>(&self, datacenter: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut all = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        f(all.entry(datacenter.to_string()).or_default())
    }

    /// The latest end of any data center's window, and the most outage failures in a row.
    fn breakers_summary(&self, now: Instant) -> (Option<Instant>, u32) {
        let all = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        let until = all.values().filter_map(|b| b.open_until(now)).max();
        let outages = all
            .values()
            .map(Breaker::consecutive_outages)
            .max()
            .unwrap_or(0);
        (until, outages)
    }

    /// Run until `stop` fires; then let reports in flight finish within the grace period and
    /// return the rest to the queue.
    pub async fn run(self, stop: CancellationToken) {
        Dispatcher::new(self).run(stop).await
    }

    /// When a tenant whose settling failed is tried again.
    fn soon(&self) -> LaneOutcome {
        LaneOutcome::RetryAt(Instant::now() + self.opts.backoff.initial())
    }

    /// One report of one tenant.
    async fn lane(&self, tenant: TenantId, hard_stop: CancellationToken) -> LaneOutcome {
        // Accounts that cannot send now are passed over: their events wait in place while
        // another account's events to this tenant go.
        let mut skip: Vec<String> = Vec::new();
        let mut held_until: Option<Instant> = None;
        let (batch, account) = loop {
            let batch = match self
                .queue
                .take_batch_skipping(&tenant, self.opts.max_batch_events, &skip)
                .await
            {
                Ok(Take::Ready(b)) => b,
                Ok(Take::Empty) => {
                    return match held_until {
                        Some(until) => LaneOutcome::RetryAt(until),
                        None => LaneOutcome::Empty,
                    }
                }
                Ok(Take::Busy) => return LaneOutcome::Busy,
                Ok(Take::NotBefore(at_ms)) => {
                    let wait = Duration::from_millis((at_ms - now_ms()).max(0) as u64);
                    // The store trusts a persisted time only up to the longest retry wait.
                    let at = Instant::now() + wait;
                    return LaneOutcome::RetryAt(held_until.map_or(at, |u| u.min(at)));
                }
                Err(e) => {
                    tracing::error!(message = "cannot take a batch", tenant_id = %tenant, error = %e);
                    return self.soon();
                }
            };
            let Some(account) = self.accounts.of_event(batch.events[0].account.as_deref()) else {
                return self.without_account(&batch).await;
            };
            // Credentials refused, or its data center's breaker closed to it (no report while
            // the window is open, one while probing): the account waits, the others go on.
            let wait = account.client.refused_until().map(Err).unwrap_or_else(|| {
                self.breaker(&account.datacenter, |b| {
                    b.admit(Instant::now(), self.opts.backoff.initial())
                })
            });
            match wait {
                Err(until) if skip.len() < MAX_SKIPPED_ACCOUNTS => {
                    // Given back untouched (dropped unsettled), and taken again without it.
                    drop(batch);
                    skip.push(account.id.clone());
                    held_until = Some(held_until.map_or(until, |u| u.min(until)));
                }
                Err(until) => return LaneOutcome::RetryAt(until),
                Ok(()) => break (batch, account),
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
        let times = report_times(&batch);
        // Held still? A replica paused since it took the batch may have lost the shard: its
        // new owner sends these events, and this report would land after the owner's.
        if !self.queue.may_send(&batch) {
            self.breaker(&account.datacenter, Breaker::probe_ended);
            return LaneOutcome::Empty;
        }
        let started = Instant::now();
        let result = tokio::select! {
            r = account.client.report_status_at(tenant, &events, &times) => r,
            // Dropping the batch unsettled gives its events back in their place.
            _ = hard_stop.cancelled() => {
                self.breaker(&account.datacenter, Breaker::probe_ended);
                return LaneOutcome::Returned;
            }
        };
        self.metrics
            .delivery_request_duration
            .get_or_create(&label("datacenter", account.datacenter.as_str()))
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => self.on_success(&batch, &account).await,
            Err(e) => self.on_failure(&batch, &account, e).await,
        }
    }

    /// How long a report has waited, for `delivery.max_age`: its age on the wall clock when
    /// this process first failed to send it, then on the monotonic clock, and never more than
    /// the wall clock says. A clock jumped forward cannot dead-letter it early; one set back
    /// only makes it younger.
    fn report_age(&self, batch: &Batch) -> Duration {
        let wall = Duration::from_millis((now_ms() - batch.oldest_accepted_ms()).max(0) as u64);
        let head = batch.events.first().map_or(0, |e| e.seq);
        let mut failing = self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let first = failing
            .entry((batch.tenant_id, batch_account(batch)))
            .and_modify(|f| {
                if f.head != head {
                    *f = FirstFailure::now(head, wall);
                }
            })
            .or_insert_with(|| FirstFailure::now(head, wall));
        wall.min(first.age + first.at.elapsed())
    }

    /// The report was settled: forget when it first failed.
    fn settled(&self, batch: &Batch) {
        self.failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(batch.tenant_id, batch_account(batch)));
    }

    async fn on_success(&self, batch: &Batch, account: &Account) -> LaneOutcome {
        self.breaker(&account.datacenter, Breaker::on_success);
        self.metrics
            .count_attempt(AttemptOutcome::Success, &account.datacenter);
        if let Err(e) = self.queue.ack_delivered(batch).await {
            // The report reached the platform; if the ack is lost it will be sent again, which
            // the platform tolerates.
            tracing::error!(message = "cannot record delivery", tenant_id = %batch.tenant_id, error = %e);
            return self.soon();
        }
        self.settled(batch);
        let now = now_ms();
        self.metrics
            .count_delivered(batch.events.len() as u64, &account.datacenter);
        for e in &batch.events {
            self.metrics
                .event_delivery_lag
                .observe(((now - e.accepted_at_ms).max(0) as f64) / 1000.0);
        }
        tracing::debug!(message = "report delivered", tenant_id = %batch.tenant_id, events = batch.events.len());
        LaneOutcome::Settled
    }

    async fn on_failure(&self, batch: &Batch, account: &Account, e: PlatformError) -> LaneOutcome {
        self.breaker(&account.datacenter, Breaker::probe_ended);
        let outcome = match e.class {
            ErrorClass::Retryable => AttemptOutcome::Retryable,
            ErrorClass::Auth => AttemptOutcome::Auth,
            ErrorClass::Permanent | ErrorClass::Conflict => AttemptOutcome::Permanent,
        };
        self.metrics.count_attempt(outcome, &account.datacenter);
        if matches!(e.class, ErrorClass::Permanent | ErrorClass::Conflict) {
            return self
                .park(batch, DeadLetterReason::Permanent, &e.to_string())
                .await;
        }
        let age = self.report_age(batch);
        if age >= self.opts.max_age {
            return self
                .park(
                    batch,
                    DeadLetterReason::MaxAge,
                    &format!(
                        "retries exhausted after {}: {e}",
                        humantime::format_duration(self.opts.max_age)
                    ),
                )
                .await;
        }
        let now = Instant::now();
        let delay = self.breaker(&account.datacenter, |breaker| {
            let mut rng = rand::rng();
            if e.is_outage() {
                breaker.on_outage(now, &self.opts.backoff, e.retry_after, &mut rng);
            } else if let Some(ra) = e.retry_after {
                breaker.on_throttle(now, ra);
            }
            let delay = self.opts.backoff.delay(batch.max_attempts(), &mut rng);
            delay.max(e.retry_after.unwrap_or_default())
        });
        if e.class == ErrorClass::Auth {
            // The platform client logs a refusal of the credentials once per wait; each lane
            // waiting on it is no news.
            tracing::debug!(message = "report waits for the credentials to be accepted", tenant_id = %batch.tenant_id, retry_in_ms = delay.as_millis() as u64);
        } else {
            tracing::warn!(
                message = "report failed, will retry",
                tenant_id = %batch.tenant_id,
                events = batch.events.len(),
                attempt = batch.max_attempts() + 1,
                retry_in_ms = delay.as_millis() as u64,
                error = %e
            );
        }
        let at_ms = now_ms() + delay.as_millis() as i64;
        if let Err(err) = self.queue.mark_failed(batch, &e.to_string(), at_ms).await {
            tracing::error!(message = "cannot record a failed attempt", tenant_id = %batch.tenant_id, error = %err);
        }
        LaneOutcome::RetryAt(now + delay)
    }

    /// A batch whose account is not in use here. While the store still holds the account it is
    /// being changed (a removal under way, which may yet be refused, or an account a peer
    /// added that this process has not loaded yet): the batch goes back untouched and is
    /// tried again. Only an account neither configured nor stored dead-letters it.
    async fn without_account(&self, batch: &Batch) -> LaneOutcome {
        let id = batch.events[0]
            .account
            .as_deref()
            .unwrap_or(crate::config::DEFAULT_ACCOUNT);
        match self.queue.stored_account(id).await {
            Ok(None) => {
                let message =
                    format!("account {id:?} is not configured (statusd has no credentials for it)");
                self.park(batch, DeadLetterReason::Permanent, &message)
                    .await
            }
            Ok(Some(_)) => {
                tracing::debug!(message = "report waits for its account to be in use", tenant_id = %batch.tenant_id, account = %id);
                LaneOutcome::RetryAt(Instant::now() + ACCOUNT_CHANGE_WAIT)
            }
            Err(e) => {
                tracing::error!(message = "cannot look up a report's account", tenant_id = %batch.tenant_id, account = %id, error = %e);
                self.soon()
            }
        }
    }

    async fn park(&self, batch: &Batch, reason: DeadLetterReason, message: &str) -> LaneOutcome {
        tracing::error!(
            message = "report dead-lettered",
            tenant_id = %batch.tenant_id,
            events = batch.events.len(),
            reason = reason.as_str(),
            error = %message
        );
        if let Err(e) = self.queue.dead_letter(batch, message).await {
            tracing::error!(message = "cannot dead-letter a batch", tenant_id = %batch.tenant_id, error = %e);
            return self.soon();
        }
        self.settled(batch);
        self.metrics
            .count_dead_lettered(reason, batch.events.len() as u64);
        LaneOutcome::Settled
    }
}

/// The times a report carries: when its newest activation and newest deactivation happened,
/// as the vendor said (`occurred_at`) or else when statusd accepted them.
fn report_times(batch: &Batch) -> ReportTimes {
    let text = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let mut times = ReportTimes::default();
    for e in &batch.events {
        let at = text(e.occurred_at_ms.unwrap_or(e.accepted_at_ms));
        match e.kind {
            EventKind::Activation => times.activated_at = at,
            EventKind::Deactivation => times.deactivated_at = at,
            EventKind::Custom => {}
        }
    }
    times
}
