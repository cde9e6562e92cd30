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

use crate::backoff::Backoff;
use crate::config::{BrandingTarget, OnRemoved, Settings};
use crate::metrics::{label, Metrics};
use crate::platform::{ErrorClass, PlatformClient, PlatformError, Tenant, TenantSelector};
use crate::store::{
    now_ms, EventKind, IntegrationState, InventoryTenant, NewEvent, Queue, StoreError,
};

/// How often a brand write is retried after a version conflict.
/// Backoff of one reconciled item that failed: from 30 s up to 6 h.
const ITEM_BACKOFF: Backoff =
    Backoff::fixed(Duration::from_secs(30), Duration::from_secs(6 * 3600));
/// The wait before re-reading a brand after a version conflict.
pub const CONFLICT_BACKOFF: Backoff =
    Backoff::fixed(Duration::from_millis(500), Duration::from_secs(4));
const MAX_CONFLICT_RETRIES: usize = 3;
/// How long an on-demand run waits for a running one before answering "already running".
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tenants,
    Status,
    Branding,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Tenants, Kind::Status, Kind::Branding];
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "tenants" => Some(Kind::Tenants),
            "status" => Some(Kind::Status),
            "branding" => Some(Kind::Branding),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tenants => "tenants",
            Kind::Status => "status",
            Kind::Branding => "branding",
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

/// The result of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub reconciler: Kind,
    pub dry_run: bool,
    /// `success`, `partial` (some items failed), or `error` (the run could not be done).
    pub outcome: String,
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
            outcome: "success".into(),
            started_at: chrono::Utc::now().to_rfc3339(),
            duration_ms: 0,
            drift: Vec::new(),
            actions: Vec::new(),
            skipped: Vec::new(),
            errors: Vec::new(),
            details: Map::new(),
        }
    }
    fn fail(&mut self, message: String) {
        self.outcome = "error".into();
        self.errors.push(ItemNote {
            tenant_id: Uuid::nil(),
            message,
        });
    }
}

#[derive(Debug)]
pub enum RunError {
    AlreadyRunning,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LastRun {
    pub last_run_at: Option<String>,
    pub outcome: Option<String>,
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

struct Inner {
    queue: Queue,
    client: PlatformClient,
    metrics: Arc<Metrics>,
    settings: Arc<Settings>,
    locks: [tokio::sync::Mutex<()>; 3],
    last: Mutex<BTreeMap<Kind, LastRun>>,
    /// The cron schedule of each reconciler that runs on one, to tell its next run.
    schedules: Mutex<HashMap<Kind, crate::schedule::CronSchedule>>,
    backoff: Mutex<HashMap<(Kind, Uuid), ItemBackoff>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TenantCursor {
    root: Uuid,
    updated_since: Option<String>,
}

impl Reconcilers {
    pub fn new(
        queue: Queue,
        client: PlatformClient,
        metrics: Arc<Metrics>,
        settings: Arc<Settings>,
    ) -> Self {
        Reconcilers {
            inner: Arc::new(Inner {
                queue,
                client,
                metrics,
                settings,
                locks: Default::default(),
                last: Mutex::new(Kind::ALL.iter().map(|k| (*k, LastRun::default())).collect()),
                schedules: Mutex::new(HashMap::new()),
                backoff: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The reconciler runs on this schedule (its next run is shown in the status).
    pub fn set_schedule(&self, kind: Kind, schedule: crate::schedule::CronSchedule) {
        self.inner
            .schedules
            .lock()
            .expect("schedules lock")
            .insert(kind, schedule);
    }

    pub async fn status_json(&self) -> Value {
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
        let mut out = Map::new();
        for (k, mut v) in last {
            v.next_run_at = next.get(&k).cloned();
            v.running = self.inner.locks[k.index()].try_lock().is_err();
            out.insert(
                k.as_str().into(),
                serde_json::to_value(v).unwrap_or(Value::Null),
            );
        }
        Value::Object(out)
    }

    /// A scheduled trigger: runs unless a run is already going (then it is skipped, not queued,
    /// so slow runs never pile up).
    pub async fn trigger(&self, kind: Kind) {
        let Ok(guard) = self.inner.locks[kind.index()].try_lock() else {
            tracing::info!(
                message = "reconciler still running; scheduled run skipped",
                reconciler = kind.as_str()
            );
            return;
        };
        self.run_locked(kind, false, true).await;
        drop(guard);
    }

    /// An on-demand run: follows a running one (waits for it to end, then runs).
    pub async fn run_now(&self, kind: Kind, dry_run: bool) -> Result<Report, RunError> {
        let guard = tokio::time::timeout(FOLLOW_TIMEOUT, self.inner.locks[kind.index()].lock())
            .await
            .map_err(|_| RunError::AlreadyRunning)?;
        let report = self.run_locked(kind, dry_run, false).await;
        drop(guard);
        Ok(report)
    }

    async fn run_locked(&self, kind: Kind, dry_run: bool, scheduled: bool) -> Report {
        let started = tokio::time::Instant::now();
        let mut report = Report::new(kind, dry_run);
        tracing::info!(
            message = "reconcile started",
            reconciler = kind.as_str(),
            dry_run
        );
        let result = match kind {
            Kind::Tenants => self.reconcile_tenants(&mut report).await,
            Kind::Status => self.reconcile_status(&mut report).await,
            Kind::Branding => self.reconcile_branding(&mut report, scheduled).await,
        };
        if let Err(e) = result {
            report.fail(e);
        } else if !report.errors.is_empty() {
            report.outcome = "partial".into();
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        let m = &self.inner.metrics;
        let r = kind.as_str();
        m.reconcile_runs
            .get_or_create(&[
                ("reconciler", r.to_string()),
                ("outcome", report.outcome.clone()),
            ])
            .inc();
        m.reconcile_duration
            .get_or_create(&label("reconciler", r))
            .observe(started.elapsed().as_secs_f64());
        m.reconcile_drift_items
            .get_or_create(&label("reconciler", r))
            .set(report.drift.len() as i64);
        if report.outcome != "error" {
            m.reconcile_last_success
                .get_or_create(&label("reconciler", r))
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
        {
            let mut last = self.inner.last.lock().expect("last lock");
            let entry = last.entry(kind).or_default();
            entry.last_run_at = Some(report.started_at.clone());
            entry.outcome = Some(report.outcome.clone());
            entry.drift_items = report.drift.len();
            entry.errors = report.errors.len();
            entry.duration_ms = report.duration_ms;
            if report.outcome != "error" {
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

    async fn root(&self) -> Result<Uuid, String> {
        match self.inner.settings.reconcile.tenants.root_tenant_id {
            Some(r) => Ok(r),
            None => self
                .inner
                .client
                .own_tenant_id()
                .await
                .map_err(|e| format!("cannot learn the API client's tenant: {e}")),
        }
    }

    // Tenants -------------------------------------------------------------------------------------

    async fn reconcile_tenants(&self, report: &mut Report) -> Result<(), String> {
        let q = &self.inner.queue;
        let root = self.root().await?;
        let cursor: Option<TenantCursor> = q.get_doc("tenants.cursor").map_err(se)?;
        let since = cursor
            .filter(|c| c.root == root)
            .and_then(|c| c.updated_since);
        let listing = self
            .inner
            .client
            .list_tenants(&TenantSelector::SubtreeRoot(root), since.as_deref(), true)
            .await
            .map_err(|e| e.to_string())?;
        let mode = if since.is_some() { "delta" } else { "full" };
        report.details.insert("mode".into(), json!(mode));
        report.details.insert("root_tenant_id".into(), json!(root));
        report
            .details
            .insert("fetched".into(), json!(listing.items.len()));
        report.details.insert("pages".into(), json!(listing.pages));
        let records: Vec<InventoryTenant> = listing.items.iter().map(inventory_record).collect();

        // Active integrations on tenants that are gone or disabled.
        let on_removed = self.inner.settings.reconcile.tenants.on_removed;
        let mut deactivations = Vec::new();
        for t in &listing.items {
            let removed = t.is_deleted() || t.enabled == Some(false);
            if !removed {
                continue;
            }
            let state = q.tenant_state(&t.id).map_err(se)?;
            if state.and_then(|s| s.intended) != Some(IntegrationState::Active) {
                continue;
            }
            let field = if t.is_deleted() { "deleted" } else { "enabled" };
            let platform = if t.is_deleted() {
                json!(true)
            } else {
                json!(false)
            };
            report.drift.push(DriftItem {
                tenant_id: t.id,
                field: field.into(),
                platform,
                intended: json!("integration active"),
            });
            if on_removed == OnRemoved::Deactivate {
                deactivations.push(NewEvent {
                    tenant_id: t.id,
                    kind: EventKind::Deactivation,
                    category: "activation".into(),
                    action: "deactivated integration".into(),
                    idempotency_key: Some(format!("statusd:removed:{}:{}", t.id, t.version)),
                });
            } else {
                report.skipped.push(ItemNote {
                    tenant_id: t.id,
                    message: format!(
                        "tenant {field} on the platform; on_removed = report, so only reported"
                    ),
                });
            }
        }
        if report.dry_run {
            report
                .details
                .insert("would_store".into(), json!(records.len()));
            return Ok(());
        }
        if !deactivations.is_empty() {
            let n = deactivations.len();
            q.enqueue(deactivations).await.map_err(se)?;
            report.actions.push(format!(
                "enqueued {n} deactivation(s) for removed or disabled tenants"
            ));
        }
        if since.is_some() {
            q.put_inventory(&records).await.map_err(se)?;
        } else {
            q.replace_inventory(&records).await.map_err(se)?;
        }
        report.actions.push(format!(
            "inventory {mode} sync: {} tenant(s) stored",
            records.len()
        ));
        q.put_doc(
            "tenants.cursor",
            &TenantCursor {
                root,
                updated_since: listing.timestamp.or(since),
            },
        )
        .await
        .map_err(se)?;
        report
            .details
            .insert("inventory_size".into(), json!(q.inventory_len()));
        Ok(())
    }

    // Status --------------------------------------------------------------------------------------

    async fn reconcile_status(&self, report: &mut Report) -> Result<(), String> {
        let q = &self.inner.queue;
        let states = q.tenant_states().map_err(se)?;
        let mut events = Vec::new();
        for s in states {
            let Some(intended) = s.intended else { continue };
            if let Some(inv) = q.inventory(&s.tenant_id).map_err(se)? {
                if inv.deleted {
                    report.skipped.push(ItemNote {
                        tenant_id: s.tenant_id,
                        message: "deleted on the platform".into(),
                    });
                    continue;
                }
            }
            if s.last_reported != Some(intended) {
                report.drift.push(DriftItem {
                    tenant_id: s.tenant_id,
                    field: "integration".into(),
                    platform: json!(s.last_reported),
                    intended: json!(intended),
                });
            }
            // A tenant with events still pending will report its latest state anyway.
            if q.pending_count(&s.tenant_id) > 0 {
                continue;
            }
            let (kind, action) = match intended {
                IntegrationState::Active => (EventKind::Activation, "activated integration"),
                IntegrationState::Inactive => (EventKind::Deactivation, "deactivated integration"),
            };
            events.push(NewEvent {
                tenant_id: s.tenant_id,
                kind,
                category: "activation".into(),
                action: action.into(),
                idempotency_key: None,
            });
        }
        report.details.insert("tenants".into(), json!(events.len()));
        if report.dry_run || events.is_empty() {
            return Ok(());
        }
        let n = events.len();
        for chunk in events.chunks(1000) {
            q.enqueue(chunk.to_vec()).await.map_err(se)?;
        }
        report
            .actions
            .push(format!("re-asserted the intended state of {n} tenant(s)"));
        Ok(())
    }

    // Branding ------------------------------------------------------------------------------------

    async fn branding_targets(&self) -> Result<Vec<Uuid>, String> {
        let mut out = Vec::new();
        for t in &self.inner.settings.reconcile.branding.targets {
            match t {
                BrandingTarget::Tenant(id) => out.push(*id),
                BrandingTarget::Partners => {
                    let inv = self.inner.queue.inventory_all().map_err(se)?;
                    if inv.is_empty() {
                        let root = self.root().await?;
                        let listing = self
                            .inner
                            .client
                            .list_tenants(&TenantSelector::SubtreeRoot(root), None, false)
                            .await
                            .map_err(|e| e.to_string())?;
                        out.extend(
                            listing
                                .items
                                .iter()
                                .filter(|t| t.kind_is("partner") && !t.is_deleted())
                                .map(|t| t.id),
                        );
                    } else {
                        out.extend(
                            inv.iter()
                                .filter(|t| t.kind.as_deref() == Some("partner") && !t.deleted)
                                .map(|t| t.id),
                        );
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn reconcile_branding(&self, report: &mut Report, scheduled: bool) -> Result<(), String> {
        let targets = self.branding_targets().await?;
        report
            .details
            .insert("targets".into(), json!(targets.len()));
        let logo = match &self.inner.settings.branding.logo_file {
            Some(p) => {
                let bytes = tokio::fs::read(p)
                    .await
                    .map_err(|e| format!("branding.logo_file: cannot read {}: {e}", p.display()))?;
                let sha = format!("{:x}", sha2::Sha256::digest(&bytes));
                Some(Arc::new((bytes, sha)))
            }
            None => None,
        };
        let now = now_ms();
        let mut set: JoinSet<(Uuid, Result<BrandOutcome, String>)> = JoinSet::new();
        let limit = self.inner.settings.platform.max_concurrency.max(1);
        let mut pending = targets.into_iter();
        let dry_run = report.dry_run;
        loop {
            while set.len() < limit {
                let Some(t) = pending.next() else { break };
                if scheduled && !dry_run {
                    let b = self
                        .inner
                        .backoff
                        .lock()
                        .expect("backoff lock")
                        .get(&(Kind::Branding, t))
                        .copied();
                    if let Some(b) = b.filter(|b| b.not_before_ms > now) {
                        report.skipped.push(ItemNote {
                            tenant_id: t,
                            message: format!(
                                "in backoff after {} failure(s); next try at {}",
                                b.failures,
                                ms_text(b.not_before_ms)
                            ),
                        });
                        continue;
                    }
                }
                let this = self.clone();
                let logo = logo.clone();
                set.spawn(async move { (t, this.brand_one(t, dry_run, logo).await) });
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let (t, result) = joined.map_err(|e| format!("branding task failed: {e}"))?;
            match result {
                Ok(o) => {
                    self.inner
                        .backoff
                        .lock()
                        .expect("backoff lock")
                        .remove(&(Kind::Branding, t));
                    report.drift.extend(o.drift);
                    report.actions.extend(o.actions);
                    if let Some(s) = o.skipped {
                        report.skipped.push(ItemNote {
                            tenant_id: t,
                            message: s,
                        });
                    }
                }
                Err(message) => {
                    if !dry_run {
                        let mut b = self.inner.backoff.lock().expect("backoff lock");
                        let e = b.entry((Kind::Branding, t)).or_default();
                        e.failures += 1;
                        let delay = ITEM_BACKOFF.delay(e.failures, &mut rand::rng());
                        e.not_before_ms = now_ms() + delay.as_millis() as i64;
                    }
                    report.errors.push(ItemNote {
                        tenant_id: t,
                        message,
                    });
                }
            }
        }
        Ok(())
    }

    fn intended_brand(&self, tenant: Uuid) -> Map<String, Value> {
        let b = &self.inner.settings.branding;
        let mut m: Map<String, Value> = b
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(over) = b.tenants.get(&tenant) {
            for (k, v) in over {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    }

    async fn brand_one(
        &self,
        tenant: Uuid,
        dry_run: bool,
        logo: Option<Arc<(Vec<u8>, String)>>,
    ) -> Result<BrandOutcome, String> {
        let c = &self.inner.client;
        let mut out = BrandOutcome::default();
        let intended = self.intended_brand(tenant);
        if intended.is_empty() && logo.is_none() {
            out.skipped = Some("no brand fields or logo configured".into());
            return Ok(out);
        }
        for attempt in 0..=MAX_CONFLICT_RETRIES {
            if attempt > 0 {
                // Every retry waits: another writer holds the brand; give it time to finish.
                let wait = CONFLICT_BACKOFF.delay(attempt as u32 - 1, &mut rand::rng());
                tokio::time::sleep(wait).await;
            }
            let t = c.get_tenant(tenant).await.map_err(|e| e.to_string())?;
            if t.kind_is("customer") || t.kind_is("unit") {
                out.skipped = Some(format!(
                    "{} tenant: the platform allows custom branding only on partner and folder tenants",
                    t.kind.as_deref().unwrap_or("?")
                ));
                return Ok(out);
            }
            out.drift.clear();
            out.actions.clear();
            let mut version = t.version;
            if t.brand_enabled != Some(true) {
                if !self.inner.settings.reconcile.branding.enable {
                    out.skipped =
                        Some("custom branding is off and reconcile.branding.enable = false".into());
                    return Ok(out);
                }
                out.drift.push(DriftItem {
                    tenant_id: tenant,
                    field: "brand_enabled".into(),
                    platform: json!(false),
                    intended: json!(true),
                });
                if dry_run {
                    // Nothing more can be read until branding is on: every managed field is drift.
                    for (k, v) in &intended {
                        out.drift.push(DriftItem {
                            tenant_id: tenant,
                            field: k.clone(),
                            platform: Value::Null,
                            intended: v.clone(),
                        });
                    }
                    return Ok(out);
                }
                match c.enable_brand(tenant, version).await {
                    Ok(()) => out
                        .actions
                        .push(format!("{tenant}: enabled custom branding")),
                    Err(e) if e.class == ErrorClass::Conflict && attempt < MAX_CONFLICT_RETRIES => {
                        continue
                    }
                    Err(e) => return Err(e.to_string()),
                }
                version = c
                    .get_tenant(tenant)
                    .await
                    .map_err(|e| e.to_string())?
                    .version;
            }
            let brand = c.get_brand(tenant).await.map_err(|e| e.to_string())?;
            let mut changes = Map::new();
            for (k, want) in &intended {
                let have = brand.get(k).cloned().unwrap_or(Value::Null);
                if !brand_equal(&have, want) {
                    out.drift.push(DriftItem {
                        tenant_id: tenant,
                        field: k.clone(),
                        platform: have,
                        intended: want.clone(),
                    });
                    changes.insert(k.clone(), want.clone());
                }
            }
            let logo_key = format!("branding.logo.{tenant}");
            let uploaded: Option<String> = self.inner.queue.get_doc(&logo_key).map_err(se)?;
            let logo_drift = logo
                .as_ref()
                .filter(|l| uploaded.as_deref() != Some(l.1.as_str()));
            if let Some(l) = logo_drift {
                out.drift.push(DriftItem {
                    tenant_id: tenant,
                    field: "logo".into(),
                    platform: json!(uploaded),
                    intended: json!(l.1),
                });
            }
            if dry_run {
                return Ok(out);
            }
            if !changes.is_empty() {
                match c.update_brand(tenant, version, &changes).await {
                    Ok(()) => {
                        let fields: Vec<&String> = changes.keys().collect();
                        out.actions.push(format!(
                            "{tenant}: updated {}",
                            fields
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    Err(e) if e.class == ErrorClass::Conflict && attempt < MAX_CONFLICT_RETRIES => {
                        tracing::info!(message = "brand version conflict; re-reading", tenant_id = %tenant, attempt);
                        continue;
                    }
                    Err(e) => return Err(conflict_note(e)),
                }
            }
            if let Some(l) = logo_drift {
                let v = c
                    .get_tenant(tenant)
                    .await
                    .map_err(|e| e.to_string())?
                    .version;
                match c.upload_logo(tenant, v, l.0.clone()).await {
                    Ok(()) => {
                        self.inner
                            .queue
                            .put_doc(&logo_key, &l.1)
                            .await
                            .map_err(se)?;
                        out.actions.push(format!("{tenant}: uploaded logo"));
                    }
                    Err(e) if e.class == ErrorClass::Conflict && attempt < MAX_CONFLICT_RETRIES => {
                        continue
                    }
                    Err(e) => return Err(conflict_note(e)),
                }
            }
            return Ok(out);
        }
        Err(format!(
            "gave up after {MAX_CONFLICT_RETRIES} version conflicts"
        ))
    }
}

fn conflict_note(e: PlatformError) -> String {
    if e.class == ErrorClass::Conflict {
        format!("gave up after {MAX_CONFLICT_RETRIES} version conflicts: {e}")
    } else {
        e.to_string()
    }
}

#[derive(Default)]
struct BrandOutcome {
    drift: Vec<DriftItem>,
    actions: Vec<String>,
    skipped: Option<String>,
}

/// Platform `null` and `""` mean the same; everything else compares as JSON.
pub fn brand_equal(have: &Value, want: &Value) -> bool {
    let norm = |v: &Value| match v {
        Value::Null => Value::String(String::new()),
        other => other.clone(),
    };
    norm(have) == norm(want)
}

fn inventory_record(t: &Tenant) -> InventoryTenant {
    InventoryTenant {
        id: t.id,
        parent_id: (t.parent_id != t.id).then_some(t.parent_id),
        name: t.name.clone(),
        kind: t.kind.clone(),
        enabled: t.enabled,
        deleted: t.is_deleted(),
        version: t.version,
    }
}

fn se(e: StoreError) -> String {
    e.to_string()
}

fn ms_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}
