//! The Prometheus registry and every metric of spec §5. An explicit registry, no globals.
//! No label ever carries a tenant id.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub type Label = [(&'static str, String); 1];
pub type Labels2 = [(&'static str, String); 2];
type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub events_accepted: Family<Label, Counter>,
    /// By `datacenter` (the host of the account's data-center URL).
    pub events_delivered: Family<Label, Counter>,
    pub events_dead_lettered: Family<Label, Counter>,
    /// Not in the spec's list: decisions set aside as older than one already reported.
    pub events_superseded: Counter,
    /// By `outcome` and `datacenter`.
    pub delivery_attempts: Family<Labels2, Counter>,
    /// By `datacenter`.
    pub delivery_request_duration: Family<Label, Histogram>,
    pub event_delivery_lag: Histogram,
    pub queue_depth: Gauge,
    pub queue_oldest_event_age: FloatGauge,
    pub dead_letters: Gauge,
    /// Not in the spec's list: the store's files on disk, since sled reuses freed space but
    /// never shrinks them, so the volume's size is worth watching.
    pub store_size: Gauge,
    /// Not in the spec's list: 0 while the store cannot write (a full disk), until it is
    /// opened again.
    pub store_writable: Gauge,
    pub store_errors: Family<Label, Counter>,
    pub store_full: Gauge,
    pub fusion_login_required: Gauge,
    /// Replicas on one store: live members, shards held here, shards nobody holds.
    pub cluster_members: Gauge,
    pub shards_owned: Gauge,
    pub shards_unowned: Gauge,
    pub lease_transitions: Counter,
    pub fenced_writes: Counter,
    /// The ownership's own counts when last copied into the two counters.
    cluster_seen: std::sync::Mutex<(u64, u64)>,
    /// By `datacenter`.
    pub platform_up: Family<Label, Gauge>,
    /// By `outcome` and `datacenter`.
    pub token_refreshes: Family<Labels2, Counter>,
    /// Accounts by the `state` of their token (`ok`, `failing`, `unknown`).
    pub accounts: Family<Label, Gauge>,
    /// Totals over every data center, for the demo's progress and the tests.
    delivered_total: AtomicU64,
    attempts_total: [AtomicU64; 4],
    pub reconcile_runs: Family<Labels2, Counter>,
    pub reconcile_duration: Family<Label, Histogram>,
    pub reconcile_drift_items: Family<Label, Gauge>,
    pub reconcile_last_success: Family<Label, FloatGauge>,
    pub build_info: Family<Label, Gauge>,
}

pub fn label(key: &'static str, value: impl Into<String>) -> Label {
    [(key, value.into())]
}

/// The labels of an outcome at a data center.
fn outcome_at(outcome: &str, datacenter: &str) -> Labels2 {
    [
        ("outcome", outcome.to_string()),
        ("datacenter", datacenter.to_string()),
    ]
}

/// Label values known in advance. Each family is created with all of them at zero, so it is
/// exposed from the first scrape (`rate()` and "never happened" alerts see a healthy daemon).
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

label_values! {
    /// `outcome` of `statusd_delivery_attempts_total`.
    AttemptOutcome {
        Success => "success",
        Retryable => "retryable",
        Permanent => "permanent",
        Auth => "auth",
    }
}

label_values! {
    /// `reason` of `statusd_events_dead_lettered_total`.
    DeadLetterReason {
        Permanent => "permanent",
        MaxAge => "max_age",
    }
}

label_values! {
    /// `outcome` of `statusd_token_refreshes_total`.
    TokenOutcome {
        Success => "success",
        Retryable => "retryable",
        Failure => "failure",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Register `metric` under `name` and hand it back.
impl Metrics {
    /// Copy the pool's figures: members, shards held and unheld, and the ownership's two
    /// counts (added as the difference since the last copy).
    pub fn set_cluster(
        &self,
        members: u64,
        owned: u64,
        unowned: u64,
        transitions: u64,
        fenced: u64,
    ) {
        self.cluster_members.set(members as i64);
        self.shards_owned.set(owned as i64);
        self.shards_unowned.set(unowned as i64);
        let mut seen = self.cluster_seen.lock().unwrap_or_else(|e| e.into_inner());
        self.lease_transitions
            .inc_by(transitions.saturating_sub(seen.0));
        self.fenced_writes.inc_by(fenced.saturating_sub(seen.1));
        *seen = (transitions.max(seen.0), fenced.max(seen.1));
    }
}

fn reg<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    r.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let events_accepted = reg(
            &mut r,
            "statusd_events_accepted",
            "Events accepted durably, by type",
            Family::<Label, Counter>::default(),
        );
        let events_delivered = reg(
            &mut r,
            "statusd_events_delivered",
            "Events the platform acknowledged, by data center",
            Family::<Label, Counter>::default(),
        );
        let events_dead_lettered = reg(
            &mut r,
            "statusd_events_dead_lettered",
            "Events moved to the dead-letter store, by reason",
            Family::<Label, Counter>::default(),
        );
        let events_superseded = reg(
            &mut r,
            "statusd_events_superseded",
            "Activations and deactivations set aside, never sent, as older than one already reported for the tenant",
            Counter::default(),
        );
        let delivery_attempts = reg(
            &mut r,
            "statusd_delivery_attempts",
            "Status reports sent, by outcome (success, retryable, permanent, auth) and data center",
            Family::<Labels2, Counter>::default(),
        );
        let delivery_request_duration = reg(
            &mut r,
            "statusd_delivery_request_duration_seconds",
            "Duration of status report requests, by data center",
            Family::<Label, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.5, 14))
            }),
        );
        let event_delivery_lag = reg(
            &mut r,
            "statusd_event_delivery_lag_seconds",
            "Time from acceptance to delivery of each event",
            Histogram::new(exponential_buckets(0.01, 3.0, 16)),
        );
        let queue_depth = reg(
            &mut r,
            "statusd_queue_depth",
            "Events waiting for delivery (queued or in flight)",
            Gauge::default(),
        );
        let queue_oldest_event_age = reg(
            &mut r,
            "statusd_queue_oldest_event_age_seconds",
            "Age of the oldest pending event (0 when none)",
            FloatGauge::default(),
        );
        let dead_letters = reg(
            &mut r,
            "statusd_dead_letters",
            "Events in the dead-letter store",
            Gauge::default(),
        );
        let store_size = reg(
            &mut r,
            "statusd_store_size_bytes",
            "Bytes the store's files take on disk",
            Gauge::default(),
        );
        let store_writable = reg(
            &mut r,
            "statusd_store_writable",
            "1 while the store takes writes, 0 once a write or flush failed (a full disk)",
            Gauge::default(),
        );
        store_writable.set(1);
        let store_errors = reg(
            &mut r,
            "statusd_store_errors",
            "Errors the store answered, by kind: unavailable (try again later), damaged (a record or the layout is not what it must be), refused",
            Family::<Label, Counter>::default(),
        );
        let fusion_login_required = reg(
            &mut r,
            "statusd_fusion_login_required",
            "1 while Fusion needs `statusd fusion login` (a second factor asked for, or the password refused)",
            Gauge::default(),
        );
        let cluster_members = reg(
            &mut r,
            "statusd_cluster_members",
            "Live members of the pool sharing this store (1 with sled)",
            Gauge::default(),
        );
        let shards_owned = reg(
            &mut r,
            "statusd_shards_owned",
            "Shards this replica holds (all of them with sled)",
            Gauge::default(),
        );
        let shards_unowned = reg(
            &mut r,
            "statusd_shards_unowned",
            "Shards no live member holds: their accounts' work waits",
            Gauge::default(),
        );
        let lease_transitions = reg(
            &mut r,
            "statusd_lease_transitions",
            "Shards this replica took, gave back or lost",
            Counter::default(),
        );
        let fenced_writes = reg(
            &mut r,
            "statusd_fenced_writes",
            "State changes refused because another replica holds the shard at a newer epoch",
            Counter::default(),
        );
        let store_full = reg(
            &mut r,
            "statusd_store_full",
            "1 while the store is at store.max_size (intake answers 507 store_full)",
            Gauge::default(),
        );
        let platform_up = reg(
            &mut r,
            "statusd_platform_up",
            "1 when the last call to the data center got an answer, 0 when it did not",
            Family::<Label, Gauge>::default(),
        );
        let token_refreshes = reg(
            &mut r,
            "statusd_token_refreshes",
            "Access token requests, by outcome and data center",
            Family::<Labels2, Counter>::default(),
        );
        let accounts = reg(
            &mut r,
            "statusd_accounts",
            "Partner accounts, by the state of their token (ok, failing, unknown)",
            Family::<Label, Gauge>::default(),
        );
        let reconcile_runs = reg(
            &mut r,
            "statusd_reconcile_runs",
            "Reconciler runs, by reconciler and outcome",
            Family::<Labels2, Counter>::default(),
        );
        let reconcile_duration = reg(
            &mut r,
            "statusd_reconcile_duration_seconds",
            "Duration of reconciler runs",
            Family::<Label, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 3.0, 12))
            }),
        );
        let reconcile_drift_items = reg(
            &mut r,
            "statusd_reconcile_drift_items",
            "Drift items found by the last run of each reconciler",
            Family::<Label, Gauge>::default(),
        );
        let reconcile_last_success = reg(
            &mut r,
            "statusd_reconcile_last_success_timestamp_seconds",
            "Unix time of the last successful run of each reconciler",
            Family::<Label, FloatGauge>::default(),
        );
        let build_info = reg(
            &mut r,
            "statusd_build_info",
            "Build information; always 1",
            Family::<Label, Gauge>::default(),
        );
        build_info
            .get_or_create(&label("version", env!("CARGO_PKG_VERSION")))
            .set(1);
        // Make every labelled family visible from the first scrape.
        for t in ["activation", "deactivation", "custom"] {
            let _ = events_accepted.get_or_create(&label("type", t));
        }
        for r in DeadLetterReason::ALL {
            let _ = events_dead_lettered.get_or_create(&label("reason", r.as_str()));
        }
        for state in ["ok", "failing", "unknown"] {
            let _ = accounts.get_or_create(&label("state", state));
        }
        Metrics {
            registry: r,
            events_accepted,
            events_delivered,
            events_dead_lettered,
            delivery_attempts,
            delivery_request_duration,
            event_delivery_lag,
            queue_depth,
            queue_oldest_event_age,
            dead_letters,
            store_size,
            store_writable,
            store_errors,
            store_full,
            fusion_login_required,
            cluster_members,
            shards_owned,
            shards_unowned,
            lease_transitions,
            fenced_writes,
            events_superseded,
            cluster_seen: Default::default(),
            platform_up,
            token_refreshes,
            accounts,
            delivered_total: AtomicU64::new(0),
            attempts_total: Default::default(),
            reconcile_runs,
            reconcile_duration,
            reconcile_drift_items,
            reconcile_last_success,
            build_info,
        }
    }

    /// Expose the reconciler families from the first scrape: every reconciler and outcome at
    /// zero (a last success of 0 means "never").
    pub fn expose_reconcilers(&self, reconcilers: &[&str], outcomes: &[&str]) {
        for r in reconcilers {
            for o in outcomes {
                let _ = self
                    .reconcile_runs
                    .get_or_create(&[("reconciler", r.to_string()), ("outcome", o.to_string())]);
            }
            let _ = self
                .reconcile_duration
                .get_or_create(&label("reconciler", *r));
            let _ = self
                .reconcile_drift_items
                .get_or_create(&label("reconciler", *r));
            let _ = self
                .reconcile_last_success
                .get_or_create(&label("reconciler", *r));
        }
    }

    /// Expose the data-center families from the first scrape: every data center of the
    /// configured accounts, each outcome at zero.
    pub fn expose_datacenters<'a>(&self, datacenters: impl IntoIterator<Item = &'a str>) {
        for dc in datacenters {
            for o in AttemptOutcome::ALL {
                let _ = self
                    .delivery_attempts
                    .get_or_create(&outcome_at(o.as_str(), dc));
            }
            for o in TokenOutcome::ALL {
                let _ = self
                    .token_refreshes
                    .get_or_create(&outcome_at(o.as_str(), dc));
            }
            let _ = self
                .events_delivered
                .get_or_create(&label("datacenter", dc));
            let _ = self
                .delivery_request_duration
                .get_or_create(&label("datacenter", dc));
            let _ = self.platform_up.get_or_create(&label("datacenter", dc));
        }
    }

    pub fn count_attempt(&self, outcome: AttemptOutcome, datacenter: &str) {
        self.delivery_attempts
            .get_or_create(&outcome_at(outcome.as_str(), datacenter))
            .inc();
        let i = AttemptOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .expect("a known outcome");
        self.attempts_total[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Reports sent so far with this outcome, to every data center.
    pub fn attempts(&self, outcome: AttemptOutcome) -> u64 {
        let i = AttemptOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .expect("a known outcome");
        self.attempts_total[i].load(Ordering::Relaxed)
    }

    pub fn count_delivered(&self, events: u64, datacenter: &str) {
        self.events_delivered
            .get_or_create(&label("datacenter", datacenter))
            .inc_by(events);
        self.delivered_total.fetch_add(events, Ordering::Relaxed);
    }

    /// Events delivered so far, to every data center.
    pub fn delivered(&self) -> u64 {
        self.delivered_total.load(Ordering::Relaxed)
    }

    pub fn count_dead_lettered(&self, reason: DeadLetterReason, events: u64) {
        self.events_dead_lettered
            .get_or_create(&label("reason", reason.as_str()))
            .inc_by(events);
    }

    pub fn count_token_request(&self, outcome: TokenOutcome, datacenter: &str) {
        self.token_refreshes
            .get_or_create(&outcome_at(outcome.as_str(), datacenter))
            .inc();
    }

    /// OpenMetrics text (for scrapers that ask for it).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The classic Prometheus text format (0.0.4), which every promtool reads.
    pub fn encode_classic(&self) -> String {
        openmetrics_to_classic(&self.encode_openmetrics())
    }
}

/// Convert OpenMetrics text to the classic format: counter families are named by their `_total`
/// sample, `# UNIT` and `# EOF` lines go, `_created` samples go.
pub fn openmetrics_to_classic(text: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rename = |prefix: &str| -> Option<String> {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters.contains(name).then(|| {
                format!("{prefix}{name}_total {tail}")
                    .trim_end()
                    .to_string()
            })
        };
        if let Some(l) = rename("# HELP ").or_else(|| rename("# TYPE ")) {
            out.push_str(&l);
        } else if line
            .split(['{', ' '])
            .next()
            .is_some_and(|n| n.ends_with("_created"))
        {
            continue;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}
