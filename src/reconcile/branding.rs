//! The branding reconciler: enable custom branding where allowed, compare managed fields
//! (`null == ""`), write the difference with versioned partial writes, upload the logo when its
//! hash changes.

use super::*;

impl Reconcilers {
    async fn branding_targets(&self) -> Result<Vec<Uuid>, ReconcileError> {
        let mut out = Vec::new();
        for t in &self.inner.settings.reconcile.branding.targets {
            match t {
                BrandingTarget::Tenant(id) => out.push(*id),
                BrandingTarget::Partners => {
                    let inv = self.inner.queue.inventory_all()?;
                    if inv.is_empty() {
                        let root = self.root().await?;
                        let listing = self
                            .inner
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

    pub(super) async fn reconcile_branding(
        &self,
        report: &mut Report,
        scheduled: bool,
    ) -> Result<(), ReconcileError> {
        let targets = self.branding_targets().await?;
        report
            .details
            .insert("targets".into(), json!(targets.len()));
        let logo = match &self.inner.settings.branding.logo_file {
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
            let (t, result) = joined.map_err(|e| ReconcileError::Task(e.to_string()))?;
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
                Err(error) => {
                    if !dry_run {
                        let mut b = self.inner.backoff.lock().expect("backoff lock");
                        let e = b.entry((Kind::Branding, t)).or_default();
                        e.failures += 1;
                        let delay = ITEM_BACKOFF.delay(e.failures, &mut rand::rng());
                        e.not_before_ms = now_ms() + delay.as_millis() as i64;
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
    ) -> Result<BrandOutcome, ReconcileError> {
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
            let t = c.get_tenant(tenant).await?;
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
                    Err(e) => return Err(e.into()),
                }
                version = c.get_tenant(tenant).await?.version;
            }
            let brand = c.get_brand(tenant).await?;
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
            let uploaded: Option<String> = self.inner.queue.get_doc(&logo_key)?;
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
                    Err(e) => return Err(ReconcileError::from_write(e, MAX_CONFLICT_RETRIES)),
                }
            }
            if let Some(l) = logo_drift {
                let v = c.get_tenant(tenant).await?.version;
                match c.upload_logo(tenant, v, l.0.clone()).await {
                    Ok(()) => {
                        self.inner.queue.put_doc(&logo_key, &l.1).await?;
                        out.actions.push(format!("{tenant}: uploaded logo"));
                    }
                    Err(e) if e.class == ErrorClass::Conflict && attempt < MAX_CONFLICT_RETRIES => {
                        continue
                    }
                    Err(e) => return Err(ReconcileError::from_write(e, MAX_CONFLICT_RETRIES)),
                }
            }
            return Ok(out);
        }
        Err(ReconcileError::TooManyConflicts {
            retries: MAX_CONFLICT_RETRIES,
        })
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

fn ms_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}
