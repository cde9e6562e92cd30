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
pub use fusion::{reseal_session, ResealError};
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
    pub details: Details,
}

/// How the tenant reconciler listed the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListMode {
    /// Every tenant of the subtree.
    Full,
    /// Only those changed since the last run.
    Delta,
}

impl ListMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ListMode::Full => "full",
            ListMode::Delta => "delta",
        }
    }
}

/// A run's own figures, each set by the reconciler it belongs to (unset ones are left out of
/// the JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Details {
    /// Why the run failed, as `statusd_reconcile_errors_total` labels it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// No account of the run is this replica's: another replica runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_elsewhere: Option<bool>,
    /// Tenants: how the tree was listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ListMode>,
    /// Tenants: the subtree listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_tenant_id: Option<Uuid>,
    /// Tenants: the records fetched, over this many pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<usize>,
    /// Tenants, dry run: the records a run would store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_store: Option<usize>,
    /// Tenants: the inventory's size after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_size: Option<usize>,
    /// Status and Fusion: the tenants looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<usize>,
    /// Branding: the tenants branded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<usize>,
    /// Fusion: the subscriptions looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<usize>,
    /// With several accounts: each account's figures, by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts: Option<BTreeMap<String, Details>>,
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
            details: Details::default(),
        }
    }
    fn fail(&mut self, error: &ReconcileError) {
        self.outcome = Outcome::Error;
        self.details.error_class = Some(error.metric_label().to_string());
        self.errors.push(ItemNote {
            tenant_id: Uuid::nil(),
            message: error.to_string(),
        });
    }
}

#[derive(Debug)]
pub enum RunError {
    AlreadyRunning,
    /// That reconciler is not configured (`fusion-branding` without `[fusion]`).
    NotConfigured,
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

/// A reconciler's policy for the items that failed (as kube-rs separates `error_policy` from
/// `reconcile`): an item that failed waits a growing time before scheduled runs try it again.
#[derive(Default)]
pub(crate) struct ItemBackoffs(Mutex<HashMap<Uuid, ItemBackoff>>);

impl ItemBackoffs {
    /// The backoff of an item that failed, while it lasts.
    fn waiting(&self, item: Uuid, now: i64) -> Option<ItemBackoff> {
        self.0
            .lock()
            .expect("backoff lock")
            .get(&item)
            .copied()
            .filter(|b| b.not_before_ms > now)
    }

    fn succeeded(&self, item: Uuid) {
        self.0.lock().expect("backoff lock").remove(&item);
    }

    /// One more failure of an item.
    fn failed(&self, item: Uuid) {
        let mut b = self.0.lock().expect("backoff lock");
        let e = b.entry(item).or_default();
        e.failures += 1;
        let delay = ITEM_BACKOFF.delay(e.failures, &mut rand::rng());
        e.not_before_ms = now_ms() + delay.as_millis() as i64;
    }

    /// A note for an item skipped by a scheduled run while its backoff lasts.
    fn skip_note(&self, item: Uuid, now: i64) -> Option<ItemNote> {
        self.waiting(item, now).map(|b| ItemNote {
            tenant_id: item,
            message: format!(
                "in backoff after {} failure(s); next try at {}",
                b.failures,
                branding::ms_text(b.not_before_ms)
            ),
        })
    }
}

/// What every reconciler reads and acts through; cheap to clone (into the tasks of a run).
#[derive(Clone)]
pub(crate) struct Context {
    queue: Queue,
    accounts: Accounts,
    metrics: Arc<Metrics>,
    settings: Arc<Settings>,
}

/// How a run was asked for.
pub(crate) struct Run<'a> {
    /// By the schedule (items in backoff wait; on a shared store, one replica runs a slot).
    scheduled: bool,
    /// One account's part only (`None`: every account).
    only: Option<&'a str>,
}

/// One reconciler: compare what is intended with what the platform holds, act on the difference
/// (unless the report is a dry run) and put the drift, the actions, the items skipped and the
/// errors in the report. `Reconcilers` gives each its own lock (one run at a time), its last run
/// and its schedule; the scheduler and the API reach them through it.
#[async_trait::async_trait]
pub(crate) trait Reconciler: Send + Sync {
    fn kind(&self) -> Kind;
    async fn reconcile(
        &self,
        cx: &Context,
        report: &mut Report,
        run: &Run<'_>,
    ) -> Result<(), ReconcileError>;
}

/// A reconciler that runs once per account (`per_account` runs it for each).
#[async_trait::async_trait]
pub(crate) trait ForAccount: Send + Sync {
    async fn for_account(
        &self,
        cx: &Context,
        report: &mut Report,
        account: &Account,
        scheduled: bool,
    ) -> Result<(), ReconcileError>;
}

/// One reconciler as the scheduler and the API hold it.
struct Slot {
    reconciler: Arc<dyn Reconciler>,
    /// Held while it runs: a scheduled run is skipped, an on-demand one follows.
    lock: tokio::sync::Mutex<()>,
    last: Mutex<LastRun>,
    /// Its cron schedule, to tell its next run.
    schedule: Mutex<Option<crate::config::CronSchedule>>,
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
    cx: Context,
    slots: BTreeMap<Kind, Slot>,
    /// Fusion's reconciler, when `[fusion]` is configured (its session is the API's too).
    fusion: Option<Arc<fusion::FusionReconciler>>,
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
        let fusion = settings.fusion.as_ref().map(|f| {
            Arc::new(fusion::FusionReconciler::new(
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
                ),
            ))
        });
        let mut list: Vec<Arc<dyn Reconciler>> = vec![
            Arc::new(tenants::Tenants),
            Arc::new(status::Status),
            Arc::new(branding::Branding::default()),
        ];
        if let Some(f) = &fusion {
            list.push(f.clone());
        }
        let names: Vec<&str> = list.iter().map(|r| r.kind().metric_name()).collect();
        let outcomes: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        metrics.expose_reconcilers(&names, &outcomes);
        let slots = list
            .into_iter()
            .map(|reconciler| {
                (
                    reconciler.kind(),
                    Slot {
                        reconciler,
                        lock: Default::default(),
                        last: Default::default(),
                        schedule: Default::default(),
                    },
                )
            })
            .collect();
        Reconcilers {
            inner: Arc::new(Inner {
                cx: Context {
                    queue,
                    accounts,
                    metrics,
                    settings,
                },
                slots,
                fusion,
                detached: Default::default(),
            }),
        }
    }

    pub fn downgrade(&self) -> WeakReconcilers {
        WeakReconcilers(Arc::downgrade(&self.inner))
    }

    fn slot(&self, kind: Kind) -> Option<&Slot> {
        self.inner.slots.get(&kind)
    }

    /// The reconciler runs on this schedule (its next run is shown in the status).
    pub fn set_schedule(&self, kind: Kind, schedule: crate::config::CronSchedule) {
        if let Some(slot) = self.slot(kind) {
            *slot.schedule.lock().expect("schedule lock") = Some(schedule);
        }
    }

    /// Each reconciler's last run, whether it is running, and its next scheduled run.
    pub async fn status(&self) -> BTreeMap<String, LastRun> {
        let now = chrono::Utc::now();
        self.inner
            .slots
            .iter()
            .map(|(k, slot)| {
                let mut v = slot.last.lock().expect("last lock").clone();
                v.next_run_at = slot
                    .schedule
                    .lock()
                    .expect("schedule lock")
                    .as_ref()
                    .and_then(|s| s.next_after(now))
                    .map(|t| t.to_rfc3339());
                v.running = slot.lock.try_lock().is_err();
                (k.as_str().to_string(), v)
            })
            .collect()
    }

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

    /// A scheduled trigger: runs unless a run is already going (then it is skipped, not queued,
    /// so slow runs never pile up).
    pub async fn trigger(&self, kind: Kind) {
        let Some(slot) = self.slot(kind) else { return };
        let Ok(guard) = slot.lock.try_lock() else {
            tracing::info!(
                message = "reconciler still running; scheduled run skipped",
                reconciler = kind.as_str()
            );
            return;
        };
        let run = Run {
            scheduled: true,
            only: None,
        };
        self.run_locked(slot, false, &run).await;
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
        let slot = self.slot(kind).ok_or(RunError::NotConfigured)?;
        let guard = tokio::time::timeout(FOLLOW_TIMEOUT, slot.lock.lock())
            .await
            .map_err(|_| RunError::AlreadyRunning)?;
        let run = Run {
            scheduled: false,
            only: account,
        };
        let report = self.run_locked(slot, dry_run, &run).await;
        drop(guard);
        Ok(report)
    }

    async fn run_locked(&self, slot: &Slot, dry_run: bool, run: &Run<'_>) -> Report {
        let kind = slot.reconciler.kind();
        let started = tokio::time::Instant::now();
        let mut report = Report::new(kind, dry_run);
        tracing::info!(
            message = "reconcile started",
            reconciler = kind.as_str(),
            dry_run
        );
        let result = slot
            .reconciler
            .reconcile(&self.inner.cx, &mut report, run)
            .await;
        if let Err(e) = result {
            report.fail(&e);
        } else if !report.errors.is_empty() {
            report.outcome = Outcome::Partial;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        self.record(slot, &report, started.elapsed());
        report
    }

    /// A finished run in the metrics, the last run and the log.
    fn record(&self, slot: &Slot, report: &Report, took: Duration) {
        let m = &self.inner.cx.metrics;
        let r = report.reconciler.metric_name();
        m.reconcile_runs
            .get_or_create(&[
                ("reconciler", r.to_string()),
                ("outcome", report.outcome.as_str().to_string()),
            ])
            .inc();
        m.reconcile_duration
            .get_or_create(&label("reconciler", r))
            .observe(took.as_secs_f64());
        m.reconcile_drift_items
            .get_or_create(&label("reconciler", r))
            .set(report.drift.len() as i64);
        if report.outcome != Outcome::Error {
            m.reconcile_last_success
                .get_or_create(&label("reconciler", r))
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
        {
            let mut entry = slot.last.lock().expect("last lock");
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
            dry_run = report.dry_run,
            outcome = %report.outcome,
            drift = report.drift.len(),
            actions = report.actions.len(),
            errors = report.errors.len(),
            duration_ms = report.duration_ms
        );
    }

    /// `statusd fusion login`: log in now (with the second factor's code, if given).
    pub async fn fusion_login(
        &self,
        code: Option<&str>,
    ) -> Result<crate::platform::LoginOutcome, ReconcileError> {
        let f = self
            .inner
            .fusion
            .as_ref()
            .ok_or(ReconcileError::NotConfigured("[fusion]"))?;
        f.login(&self.inner.cx, code).await
    }

    /// The Fusion session's state, when Fusion is configured.
    pub async fn fusion_state(&self) -> Option<crate::platform::FusionState> {
        match &self.inner.fusion {
            Some(f) => Some(f.state().await),
            None => None,
        }
    }
}

/// Run a reconciler once per account. An account that fails fails only its own part (an error
/// of the report, naming it); the run is an error when every account failed. With several
/// accounts, each account's figures are under `details.accounts.<id>`.
async fn per_account(
    cx: &Context,
    report: &mut Report,
    run: &Run<'_>,
    reconciler: &dyn ForAccount,
) -> Result<(), ReconcileError> {
    let queue = &cx.queue;
    let kind = report.reconciler;
    // On a shared store: the accounts of the shards this replica holds, and of a scheduled run
    // only the slots no other replica ran (after a failover).
    let slot = (crate::store::now_ms() + 500) / 1000;
    let mut accounts: Vec<Account> = Vec::new();
    for a in cx.accounts.iter() {
        if run.only.is_some_and(|id| id != a.id) || !queue.acts_for(Some(&a.id)) {
            continue;
        }
        if run.scheduled && !queue.claim_slot(kind.as_str(), Some(&a.id), slot).await {
            continue;
        }
        accounts.push((*a).clone());
    }
    if accounts.is_empty() {
        report.details.owned_elsewhere = Some(true);
        return Ok(());
    }
    let several = accounts.len() > 1;
    let mut failures = Vec::new();
    let mut per_account = BTreeMap::new();
    for account in &accounts {
        let saved = std::mem::take(&mut report.details);
        let result = reconciler
            .for_account(cx, report, account, run.scheduled)
            .await;
        let details = std::mem::replace(&mut report.details, saved);
        if several {
            per_account.insert(account.id.clone(), details);
        } else {
            report.details = details;
        }
        if let Err(e) = result {
            failures.push((account.id.clone(), e));
        }
    }
    if several {
        report.details.accounts = Some(per_account);
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

/// The root of an account's tree: configured, or its API client's own tenant.
async fn root(account: &Account) -> Result<Uuid, ReconcileError> {
    match account.root_tenant_id {
        Some(r) => Ok(r),
        None => account
            .client
            .own_tenant_id()
            .await
            .map_err(ReconcileError::Root),
    }
}
