//! The branding reconciler: enable custom branding where allowed, compare managed fields
//! (`null == ""`), write the difference with versioned partial writes, upload the logo when its
//! hash changes.

use super::*;
use crate::platform::PlatformError;

/// The branding reconciler (run once per account), with its items' backoff.
#[derive(Default)]
pub(super) struct Branding {
    items: ItemBackoffs,
}

#[async_trait::async_trait]
impl Reconciler for Branding {
    fn kind(&self) -> Kind {
        Kind::Branding
    }

    async fn reconcile(
        &self,
        cx: &Context,
        report: &mut Report,
        run: &Run<'_>,
    ) -> Result<(), ReconcileError> {
        per_account(cx, report, run, self).await
    }
}

/// The account's targets: its partners, and the tenants named whose inventory record is
/// its own (a tenant not in any inventory counts for the first account).
async fn branding_targets(cx: &Context, account: &Account) -> Result<Vec<Uuid>, ReconcileError> {
    let all = cx.queue.inventory_all().await?;
    let default = crate::config::DEFAULT_ACCOUNT;
    let is_first = cx.accounts.first().is_some_and(|f| f.id == account.id);
    let inv: Vec<InventoryTenant> = all
        .into_iter()
        .filter(|t| t.account.as_deref().unwrap_or(default) == account.id)
        .collect();
    let mut out = Vec::new();
    let targets = account
        .branding_targets
        .as_ref()
        .unwrap_or(&cx.settings.reconcile.branding.targets);
    for t in targets {
        match t {
            BrandingTarget::Tenant(id) => {
                let known = cx.queue.inventory(id).await?;
                let mine = match known.as_ref().and_then(|k| k.account.as_deref()) {
                    Some(owner) => owner == account.id,
                    None if known.is_some() => account.id == default,
                    None => is_first,
                };
                if mine {
                    out.push(*id);
                }
            }
            BrandingTarget::Partners => {
                if inv.is_empty() {
                    let root = root(account).await?;
                    let listing = account
                        .client
                        .list_tenants(&TenantSelector::SubtreeRoot(root), None, false)
                        .await?;
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

#[async_trait::async_trait]
impl ForAccount for Branding {
    async fn for_account(
        &self,
        cx: &Context,
        report: &mut Report,
        account: &Account,
        scheduled: bool,
    ) -> Result<(), ReconcileError> {
        let targets = branding_targets(cx, account).await?;
        report.details.targets = Some(targets.len());
        let logo = match &branding_of(cx, account).logo_file {
            Some(p) => {
                let bytes = tokio::fs::read(p)
                    .await
                    .map_err(|source| ReconcileError::Logo {
                        path: p.display().to_string(),
                        source,
                    })?;
                let sha = format!("{:x}", sha2::Sha256::digest(&bytes));
                Some(Arc::new((bytes, sha)))
            }
            None => None,
        };
        let now = now_ms();
        let mut set: JoinSet<(Uuid, Result<BrandOutcome, ReconcileError>)> = JoinSet::new();
        let limit = cx.settings.platform.max_concurrency.max(1);
        let mut pending = targets.into_iter();
        let dry_run = report.dry_run;
        loop {
            while set.len() < limit {
                let Some(t) = pending.next() else { break };
                if scheduled && !dry_run {
                    if let Some(note) = self.items.skip_note(t, now) {
                        report.skipped.push(note);
                        continue;
                    }
                }
                let cx = cx.clone();
                let logo = logo.clone();
                let account = account.clone();
                set.spawn(async move { (t, brand_one(&cx, &account, t, dry_run, logo).await) });
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let (t, result) = joined.map_err(|e| ReconcileError::Task(e.to_string()))?;
            match result {
                Ok(o) => {
                    self.items.succeeded(t);
                    report.drift.extend(o.drift);
                    report.actions.extend(o.actions);
                    if let Some(s) = o.skipped {
                        report.skipped.push(ItemNote {
                            tenant_id: t,
                            message: s,
                        });
                    }
                }
                Err(error) => {
                    if !dry_run {
                        self.items.failed(t);
                    }
                    report.errors.push(ItemNote {
                        tenant_id: t,
                        message: error.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The account's brand intent, or the global one.
fn branding_of<'a>(cx: &'a Context, account: &'a Account) -> &'a crate::config::BrandingSettings {
    account.branding.as_ref().unwrap_or(&cx.settings.branding)
}

/// The brand intent of an account's tenant: the account's own `[accounts.<id>.branding]`,
/// else the global `[branding]`, with the tenant's overrides.
fn intended_brand(cx: &Context, account: &Account, tenant: Uuid) -> Map<String, Value> {
    let b = branding_of(cx, account);
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
    cx: &Context,
    account: &Account,
    tenant: Uuid,
    dry_run: bool,
    logo: Option<Arc<(Vec<u8>, String)>>,
) -> Result<BrandOutcome, ReconcileError> {
    let intended = intended_brand(cx, account, tenant);
    if intended.is_empty() && logo.is_none() {
        return Ok(BrandOutcome {
            skipped: Some("no brand fields or logo configured".into()),
            ..Default::default()
        });
    }
    for attempt in 0..=MAX_CONFLICT_RETRIES {
        if attempt > 0 {
            // Every retry waits: another writer holds the brand; give it time to finish.
            let wait = CONFLICT_BACKOFF.delay(attempt as u32 - 1, &mut rand::rng());
            tokio::time::sleep(wait).await;
        }
        match brand_attempt(cx, account, tenant, dry_run, &intended, logo.as_deref()).await? {
            BrandAttempt::Done(out) => return Ok(out),
            BrandAttempt::Conflict(e) if attempt == MAX_CONFLICT_RETRIES => {
                return Err(ReconcileError::from_write(e, MAX_CONFLICT_RETRIES))
            }
            BrandAttempt::Conflict(_) => {
                tracing::info!(message = "brand version conflict; re-reading", tenant_id = %tenant, attempt);
            }
        }
    }
    Err(ReconcileError::TooManyConflicts {
        retries: MAX_CONFLICT_RETRIES,
    })
}

/// Read the tenant and its brand, report the drift, and (unless a dry run) enable branding,
/// write the changed fields and upload the logo, each at the version just read.
async fn brand_attempt(
    cx: &Context,
    account: &Account,
    tenant: Uuid,
    dry_run: bool,
    intended: &Map<String, Value>,
    logo: Option<&(Vec<u8>, String)>,
) -> Result<BrandAttempt, ReconcileError> {
    let c = &account.client;
    let mut out = BrandOutcome::default();
    let t = c.get_tenant(tenant).await?;
    if t.kind_is("customer") || t.kind_is("unit") {
        out.skipped = Some(format!(
            "{} tenant: the platform allows custom branding only on partner and folder tenants",
            t.kind.as_deref().unwrap_or("?")
        ));
        return Ok(BrandAttempt::Done(out));
    }
    let mut version = t.version;
    if t.brand_enabled != Some(true) {
        if !cx.settings.reconcile.branding.enable {
            out.skipped =
                Some("custom branding is off and reconcile.branding.enable = false".into());
            return Ok(BrandAttempt::Done(out));
        }
        out.drift.push(DriftItem {
            tenant_id: tenant,
            field: "brand_enabled".into(),
            platform: json!(false),
            intended: json!(true),
        });
        if dry_run {
            // Nothing more can be read until branding is on: every managed field is drift.
            for (k, v) in intended {
                out.drift.push(DriftItem {
                    tenant_id: tenant,
                    field: k.clone(),
                    platform: Value::Null,
                    intended: v.clone(),
                });
            }
            return Ok(BrandAttempt::Done(out));
        }
        if let Some(e) = conflict(c.enable_brand(tenant, version).await)? {
            return Ok(BrandAttempt::Conflict(e));
        }
        out.actions
            .push(format!("{tenant}: enabled custom branding"));
        version = c.get_tenant(tenant).await?.version;
    }
    let changes = brand_drift(account, tenant, intended, &mut out).await?;
    let logo_key = format!("branding.logo.{tenant}");
    let uploaded: Option<String> = cx.queue.get_doc(&logo_key).await?;
    let logo_drift = logo.filter(|l| uploaded.as_deref() != Some(l.1.as_str()));
    if let Some(l) = logo_drift {
        out.drift.push(DriftItem {
            tenant_id: tenant,
            field: "logo".into(),
            platform: json!(uploaded),
            intended: json!(l.1),
        });
    }
    if dry_run {
        return Ok(BrandAttempt::Done(out));
    }
    if !changes.is_empty() {
        if let Some(e) = conflict(c.update_brand(tenant, version, &changes).await)? {
            return Ok(BrandAttempt::Conflict(e));
        }
        let fields: Vec<&str> = changes.keys().map(String::as_str).collect();
        out.actions
            .push(format!("{tenant}: updated {}", fields.join(", ")));
    }
    if let Some(l) = logo_drift {
        let v = c.get_tenant(tenant).await?.version;
        if let Some(e) = conflict(c.upload_logo(tenant, v, l.0.clone()).await)? {
            return Ok(BrandAttempt::Conflict(e));
        }
        cx.queue.put_doc(&logo_key, &l.1).await?;
        out.actions.push(format!("{tenant}: uploaded logo"));
    }
    Ok(BrandAttempt::Done(out))
}

/// The managed fields whose platform value differs from the intent, each also reported as
/// drift (`null == ""`; fields not managed are left alone).
async fn brand_drift(
    account: &Account,
    tenant: Uuid,
    intended: &Map<String, Value>,
    out: &mut BrandOutcome,
) -> Result<Map<String, Value>, ReconcileError> {
    let brand = account.client.get_brand(tenant).await?;
    let mut changes = Map::new();
    for (k, want) in intended {
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
    Ok(changes)
}

/// What one attempt at a tenant's brand ended with.
enum BrandAttempt {
    Done(BrandOutcome),
    /// A versioned write lost to another writer: read again and retry.
    Conflict(PlatformError),
}

/// A write's result: `None` done, `Some` a version conflict to retry after a wait.
fn conflict(r: Result<(), PlatformError>) -> Result<Option<PlatformError>, ReconcileError> {
    match r {
        Ok(()) => Ok(None),
        Err(e) if e.class == ErrorClass::Conflict => Ok(Some(e)),
        Err(e) => Err(e.into()),
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

pub(super) fn ms_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}
