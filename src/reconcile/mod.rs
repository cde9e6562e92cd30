//! Reconcilers: tenants, integration status and branding. Level-triggered and idempotent: each
//! run compares what is intended with what the platform holds, acts on the difference (unless it
//! is a dry run) and reports the drift. Cron only triggers them (see `schedule`); a reconciler
//! never runs twice at once; an on-demand run follows a running one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Digest;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::accounts::{Account, Accounts};
use crate::backoff::Backoff;
use crate::config::{BrandingTarget, OnRemoved, Settings};
use crate::metrics::{label, Metrics};
use crate::platform::{ErrorClass, Tenant, TenantSelector};
use crate::store::{now_ms, IntegrationState, InventoryTenant, NewEvent, Queue};

mod branding;
mod error;
mod fusion;
pub use fusion::reseal_session;
mod status;
mod tenants;

pub use error::ReconcileError;

/// Backoff of one reconciled item that failed: from 30 s up to 6 h.
const ITEM_BACKOFF: Backoff =
    Backoff::fixed(Duration::from_secs(30), Duration::from_secs(6 * 3600));
/// The wait before re-reading a brand after a version conflict.
pub const CONFLICT_BACKOFF: Backoff =
    Backoff::fixed(Duration::from_millis(500), Duration::from_secs(4));
/// How often a brand write is retried after a version conflict.
const MAX_CONFLICT_RETRIES: usize = 3;
/// How long an on-demand run waits for a running one before answering "already running".
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tenants,
    Status,
    Branding,
    /// Subscription branding on the second platform, Netaxis Fusion.
    #[serde(rename = "fusion-branding")]
    FusionBranding,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Tenants,
        Kind::Status,
        Kind::Branding,
        Kind::FusionBranding,
    ];
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "tenants" => Some(Kind::Tenants),
            "status" => Some(Kind::Status),
            "branding" => Some(Kind::Branding),
            "fusion-branding" => Some(Kind::FusionBranding),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tenants => "tenants",
            Kind::Status => "status",
            Kind::Branding => "branding",
            Kind::FusionBranding => "fusion-branding",
        }
    }
    /// The `reconciler` label of the metrics.
    pub fn metric_name(self) -> &'static str {
        match self {
            Kind::FusionBranding => "fusion_branding",
            other => other.as_str(),
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// One difference between intent and the platform.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DriftItem {
    pub tenant_id: Uuid,
    pub field: String,
    pub platform: Value,
    pub intended: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ItemNote {
    pub tenant_id: Uuid,
    pub message: String,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    /// Some items failed; the others were reconciled.
    Partial,
    /// The run could not be done.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Success, Outcome::Partial, Outcome::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Partial => "partial",
            Outcome::Error => "error",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for Outcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The result of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub reconciler: Kind,
    pub dry_run: bool,
    pub outcome: Outcome,
    pub started_at: String,
    pub duration_ms: u64,
    pub drift: Vec<DriftItem>,
    pub actions: Vec<String>,
    pub skipped: Vec<ItemNote>,
    pub errors: Vec<ItemNote>,
    /// Reconciler-specific figures (tenants fetched, pages, mode, ...).
    pub details: Map<String, Value>,
}

impl Report {
    fn new(kind: Kind, dry_run: bool) -> Report {
        Report {
            reconciler: kind,
            dry_run,
            outcome: Outcome::Success,
            started_at: chrono::Utc::now().to_rfc3339(),
            duration_ms: 0,
            drift: Vec::new(),
            actions: Vec::new(),
            skipped: Vec::new(),
            errors: Vec::new(),
            details: Map::new(),
        }
    }
    fn fail(&mut self, error: &ReconcileError) {
        self.outcome = Outcome::Error;
        self.details
            .insert("error_class".into(), json!(error.metric_label()));
        self.errors.push(ItemNote {
            tenant_id: Uuid::nil(),
            message: error.to_string(),
        });
    }
}

#[derive(Debug)]
pub enum RunError {
    AlreadyRunning,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LastRun {
    pub last_run_at: Option<String>,
    pub outcome: Option<Outcome>,
    pub drift_items: usize,
    pub errors: usize,
    pub duration_ms: u64,
    pub last_success_at: Option<String>,
    pub next_run_at: Option<String>,
    pub running: bool,
}

/// Per-item retry state: an item that failed is skipped by scheduled runs until its time.
#[derive(Debug, Clone, Copy, Default)]
struct ItemBackoff {
    failures: u32,
    not_before_ms: i64,
}

#[derive(Clone)]
pub struct Reconcilers {
    inner: Arc<Inner>,
}

/// A reference to the reconcilers that does not keep them (nor the store) alive: what the cron
/// jobs hold, so a stopped daemon's store can be opened again in the same process.
#[derive(Clone)]
pub struct WeakReconcilers(std::sync::Weak<Inner>);

impl WeakReconcilers {
    pub fn upgrade(&self) -> Option<Reconcilers> {
        self.0.upgrade().map(|inner| Reconcilers { inner })
    }
}

struct Inner {
    queue: Queue,
    accounts: Accounts,
    metrics: Arc<Metrics>,
    settings: Arc<Settings>,
    locks: [tokio::sync::Mutex<()>; 4],
    /// The Fusion client, when `[fusion]` is configured.
    fusion: Option<crate::platform::FusionClient>,
    /// Set once the kept Fusion session was read from the store.
    fusion_session: tokio::sync::OnceCell<()>,
    last: Mutex<BTreeMap<Kind, LastRun>>,
    /// The cron schedule of each reconciler that runs on one, to tell its next run.
    schedules: Mutex<HashMap<Kind, crate::config::CronSchedule>>,
    backoff: Mutex<HashMap<(Kind, Uuid), ItemBackoff>>,
    /// Scheduled runs, each apart from the scheduler's tick: stopped with the daemon.
    detached: crate::tasks::Detached,
}

impl Reconcilers {
    /// The reconcilers of every account: tenants and branding walk each account's tree with its
    /// client; status re-asserts each tenant through its own account.
    pub fn new(
        queue: Queue,
        accounts: Accounts,
        metrics: Arc<Metrics>,
        settings: Arc<Settings>,
    ) -> Self {
        let kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::FusionBranding || settings.fusion.is_some())
            .collect();
        let names: Vec<&str> = kinds.iter().map(|k| k.metric_name()).collect();
        let fusion = settings.fusion.as_ref().map(|f| {
            crate::platform::FusionClient::new(
                crate::platform::FusionOptions {
                    base_url: f.base_url.clone(),
                    draas_instance: f.draas_instance.clone(),
                    username: f.username.clone(),
                    password: f.password.clone(),
                },
                accounts.http().unwrap_or_else(|| {
                    crate::platform::http_client(&(&settings.platform).into(), None)
                        .expect("the HTTP client builds with these settings")
                }),
                settings.platform.max_concurrency,
            )
        });
        let outcomes: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        metrics.expose_reconcilers(&names, &outcomes);
        Reconcilers {
            inner: Arc::new(Inner {
                queue,
                accounts,
                metrics,
                settings,
                locks: Default::default(),
                fusion,
                last: Mutex::new(kinds.iter().map(|k| (*k, LastRun::default())).collect()),
                fusion_session: tokio::sync::OnceCell::new(),
                schedules: Mutex::new(HashMap::new()),
                backoff: Mutex::new(HashMap::new()),
                detached: Default::default(),
            }),
        }
    }

    pub fn downgrade(&self) -> WeakReconcilers {
        WeakReconcilers(Arc::downgrade(&self.inner))
    }

    /// The reconciler runs on this schedule (its next run is shown in the status).
    pub fn set_schedule(&self, kind: Kind, schedule: crate::config::CronSchedule) {
        self.inner
            .schedules
            .lock()
            .expect("schedules lock")
            .insert(kind, schedule);
    }

    /// Each reconciler's last run, whether it is running, and its next scheduled run.
    pub async fn status(&self) -> BTreeMap<String, LastRun> {
        let last = self.inner.last.lock().expect("last lock").clone();
        let now = chrono::Utc::now();
        let next: HashMap<Kind, String> = self
            .inner
            .schedules
            .lock()
            .expect("schedules lock")
            .iter()
            .filter_map(|(k, s)| Some((*k, s.next_after(now)?.to_rfc3339())))
            .collect();
        last.into_iter()
            .map(|(k, mut v)| {
                v.next_run_at = next.get(&k).cloned();
                v.running = self.inner.locks[k.index()].try_lock().is_err();
                (k.as_str().to_string(), v)
            })
            .collect()
    }

    /// A scheduled trigger: runs unless a run is already going (then it is skipped, not queued,
    /// so slow runs never pile up).
    /// A scheduled run, apart from the scheduler's tick (so a slow run never blocks it), tracked
    /// so that a shutdown or a reopening of the store cancels it and waits for it.
    pub fn trigger_detached(&self, kind: Kind) {
        let r = self.clone();
        self.inner
            .detached
            .spawn(async move { r.trigger(kind).await });
    }

    /// Cancel the scheduled runs under way and wait for them to end.
    pub async fn stop_runs(&self) {
        self.inner.detached.stop().await;
    }

    pub async fn trigger(&self, kind: Kind) {
        let Ok(guard) = self.inner.locks[kind.index()].try_lock() else {
            tracing::info!(
                message = "reconciler still running; scheduled run skipped",
                reconciler = kind.as_str()
            );
            return;
        };
        self.run_locked(kind, false, true, None).await;
        drop(guard);
    }

    /// An on-demand run: follows a running one (waits for it to end, then runs).
    pub async fn run_now(&self, kind: Kind, dry_run: bool) -> Result<Report, RunError> {
        self.run_now_for(kind, dry_run, None).await
    }

    /// An on-demand run for one account (`None`: every account).
    pub async fn run_now_for(
        &self,
        kind: Kind,
        dry_run: bool,
        account: Option<&str>,
    ) -> Result<Report, RunError> {
        let guard = tokio::time::timeout(FOLLOW_TIMEOUT, self.inner.locks[kind.index()].lock())
            .await
            .map_err(|_| RunError::AlreadyRunning)?;
        let report = self.run_locked(kind, dry_run, false, account).await;
        drop(guard);
        Ok(report)
    }

    async fn run_locked(
        &self,
        kind: Kind,
        dry_run: bool,
        scheduled: bool,
        only: Option<&str>,
    ) -> Report {
        let started = tokio::time::Instant::now();
        let mut report = Report::new(kind, dry_run);
        tracing::info!(
            message = "reconcile started",
            reconciler = kind.as_str(),
            dry_run
        );
        let result = match kind {
            Kind::Status => self.reconcile_status(&mut report, only).await,
            Kind::Tenants | Kind::Branding => {
                self.per_account(&mut report, kind, scheduled, only).await
            }
            Kind::FusionBranding => self.reconcile_fusion(&mut report, scheduled).await,
        };
        if let Err(e) = result {
            report.fail(&e);
        } else if !report.errors.is_empty() {
            report.outcome = Outcome::Partial;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        let m = &self.inner.metrics;
        let r = kind.metric_name();
        m.reconcile_runs
            .get_or_create(&[
                ("reconciler", r.to_string()),
                ("outcome", report.outcome.as_str().to_string()),
            ])
            .inc();
        m.reconcile_duration
            .get_or_create(&label("reconciler", r))
            .observe(started.elapsed().as_secs_f64());
        m.reconcile_drift_items
            .get_or_create(&label("reconciler", r))
            .set(report.drift.len() as i64);
        if report.outcome != Outcome::Error {
            m.reconcile_last_success
                .get_or_create(&label("reconciler", r))
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
        {
            let mut last = self.inner.last.lock().expect("last lock");
            let entry = last.entry(kind).or_default();
            entry.last_run_at = Some(report.started_at.clone());
            entry.outcome = Some(report.outcome);
            entry.drift_items = report.drift.len();
            entry.errors = report.errors.len();
            entry.duration_ms = report.duration_ms;
            if report.outcome != Outcome::Error {
                entry.last_success_at = Some(chrono::Utc::now().to_rfc3339());
            }
        }
        tracing::info!(
            message = "reconcile finished",
            reconciler = r,
            dry_run,
            outcome = %report.outcome,
            drift = report.drift.len(),
            actions = report.actions.len(),
            errors = report.errors.len(),
            duration_ms = report.duration_ms
        );
        report
    }

    /// Run a reconciler once per account. An account that fails fails only its own part (an
    /// error of the report, naming it); the run is an error when every account failed. With
    /// several accounts, each account's figures are under `details.accounts.<id>`.
    async fn per_account(
        &self,
        report: &mut Report,
        kind: Kind,
        scheduled: bool,
        only: Option<&str>,
    ) -> Result<(), ReconcileError> {
        let queue = &self.inner.queue;
        // On a shared store: the accounts of the shards this replica holds, and of a scheduled
        // run only the slots no other replica ran (after a failover).
        let slot = (crate::store::now_ms() + 500) / 1000;
        let mut accounts: Vec<Account> = Vec::new();
        for a in self.inner.accounts.iter() {
            if only.is_some_and(|id| id != a.id) || !queue.acts_for(Some(&a.id)) {
                continue;
            }
            if scheduled && !queue.claim_slot(kind.as_str(), Some(&a.id), slot).await {
                continue;
            }
            accounts.push((*a).clone());
        }
        if accounts.is_empty() {
            report
                .details
                .insert("owned_elsewhere".into(), Value::Bool(true));
            return Ok(());
        }
        let several = accounts.len() > 1;
        let mut failures = Vec::new();
        let mut per_account = Map::new();
        for account in &accounts {
            let saved = std::mem::take(&mut report.details);
            let result = match kind {
                Kind::Tenants => self.reconcile_tenants(report, account).await,
                _ => self.reconcile_branding(report, account, scheduled).await,
            };
            let details = std::mem::replace(&mut report.details, saved);
            if several {
                per_account.insert(account.id.clone(), Value::Object(details));
            } else {
                report.details = details;
            }
            if let Err(e) = result {
                failures.push((account.id.clone(), e));
            }
        }
        if several {
            report
                .details
                .insert("accounts".into(), Value::Object(per_account));
        }
        if failures.len() == accounts.len() && !several {
            return Err(failures.pop().expect("one account failed").1);
        }
        for (id, e) in &failures {
            report.errors.push(ItemNote {
                tenant_id: Uuid::nil(),
                message: format!("account {id}: {e}"),
            });
        }
        if !failures.is_empty() && failures.len() == accounts.len() {
            report.outcome = Outcome::Error;
        }
        Ok(())
    }

    /// The backoff of an item that failed, while it lasts.
    fn item_waiting(&self, kind: Kind, item: Uuid, now: i64) -> Option<ItemBackoff> {
        self.inner
            .backoff
            .lock()
            .expect("backoff lock")
            .get(&(kind, item))
            .copied()
            .filter(|b| b.not_before_ms > now)
    }

    fn item_succeeded(&self, kind: Kind, item: Uuid) {
        self.inner
            .backoff
            .lock()
            .expect("backoff lock")
            .remove(&(kind, item));
    }

    /// One more failure of an item: it waits a growing time before scheduled runs try it again.
    fn item_failed(&self, kind: Kind, item: Uuid) {
        let mut b = self.inner.backoff.lock().expect("backoff lock");
        let e = b.entry((kind, item)).or_default();
        e.failures += 1;
        let delay = ITEM_BACKOFF.delay(e.failures, &mut rand::rng());
        e.not_before_ms = now_ms() + delay.as_millis() as i64;
    }

    async fn root(&self, account: &Account) -> Result<Uuid, ReconcileError> {
        match account.root_tenant_id {
            Some(r) => Ok(r),
            None => account
                .client
                .own_tenant_id()
                .await
                .map_err(ReconcileError::Root),
        }
    }
}
