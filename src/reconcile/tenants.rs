//! The tenants reconciler: walk the tree under the root (in full, then by `updated_since`
//! deltas), keep the inventory, and deactivate (or report) active tenants gone on the platform.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TenantCursor {
    root: Uuid,
    updated_since: Option<String>,
}

/// The tenants reconciler (run once per account).
pub(super) struct Tenants;

#[async_trait::async_trait]
impl Reconciler for Tenants {
    fn kind(&self) -> Kind {
        Kind::Tenants
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

#[async_trait::async_trait]
impl ForAccount for Tenants {
    async fn for_account(
        &self,
        cx: &Context,
        report: &mut Report,
        account: &Account,
        _scheduled: bool,
    ) -> Result<(), ReconcileError> {
        let q = &cx.queue;
        let root = root(account).await?;
        let cursor_doc = cursor_doc(&account.id);
        let cursor: Option<TenantCursor> = q.get_doc(&cursor_doc).await?;
        let since = cursor
            .filter(|c| c.root == root)
            .and_then(|c| c.updated_since);
        let listing = account
            .client
            .list_tenants(&TenantSelector::SubtreeRoot(root), since.as_deref(), true)
            .await?;
        let mode = if since.is_some() {
            ListMode::Delta
        } else {
            ListMode::Full
        };
        report.details.mode = Some(mode);
        report.details.root_tenant_id = Some(root);
        report.details.fetched = Some(listing.items.len());
        report.details.pages = Some(listing.pages);
        let records: Vec<InventoryTenant> = listing
            .items
            .iter()
            .map(|t| inventory_record(t, &account.id))
            .collect();

        let deactivations = removed_tenants(cx, &listing.items, report, account).await?;
        if report.dry_run {
            report.details.would_store = Some(records.len());
            return Ok(());
        }
        if !deactivations.is_empty() {
            let n = deactivations.len();
            q.enqueue(deactivations).await?;
            report.actions.push(format!(
                "enqueued {n} deactivation(s) for removed or disabled tenants"
            ));
        }
        if since.is_some() {
            q.put_inventory(&records).await?;
        } else {
            q.replace_inventory(&account.id, &records).await?;
        }
        report.actions.push(format!(
            "inventory {} sync: {} tenant(s) stored",
            mode.as_str(),
            records.len()
        ));
        q.put_doc(
            &cursor_doc,
            &TenantCursor {
                root,
                updated_since: listing.timestamp.or(since),
            },
        )
        .await?;
        report.details.inventory_size = Some(q.inventory_len().await?);
        Ok(())
    }
}

/// Tenants gone or disabled on the platform whose integration is active: each is drift, and
/// gets a deactivation (`on_removed = "deactivate"`) or is only reported.
async fn removed_tenants(
    cx: &Context,
    listing: &[Tenant],
    report: &mut Report,
    account: &Account,
) -> Result<Vec<NewEvent>, ReconcileError> {
    let on_removed = cx.settings.reconcile.tenants.on_removed;
    let mut deactivations = Vec::new();
    for t in listing {
        if !(t.is_deleted() || t.enabled == Some(false)) {
            continue;
        }
        let state = cx.queue.tenant_state(&t.id).await?;
        if state.and_then(|s| s.intended) != Some(IntegrationState::Active) {
            continue;
        }
        let (field, platform) = if t.is_deleted() {
            ("deleted", json!(true))
        } else {
            ("enabled", json!(false))
        };
        report.drift.push(DriftItem {
            tenant_id: t.id,
            field: field.into(),
            platform,
            intended: json!("integration active"),
        });
        if on_removed == OnRemoved::Deactivate {
            let mut ev = NewEvent::state_change(
                t.id,
                IntegrationState::Inactive,
                Some(format!("statusd:removed:{}:{}", t.id, t.version)),
            );
            ev.account = Some(account.id.clone());
            deactivations.push(ev);
        } else {
            report.skipped.push(ItemNote {
                tenant_id: t.id,
                message: format!(
                    "tenant {field} on the platform; on_removed = report, so only reported"
                ),
            });
        }
    }
    Ok(deactivations)
}

/// Where an account's tenant walk resumes (the account `default` keeps the older name).
fn cursor_doc(account: &str) -> String {
    if account == crate::config::DEFAULT_ACCOUNT {
        "tenants.cursor".into()
    } else {
        format!("tenants.cursor.{account}")
    }
}

fn inventory_record(t: &Tenant, account: &str) -> InventoryTenant {
    InventoryTenant {
        id: t.id,
        account: Some(account.to_string()),
        parent_id: (t.parent_id != t.id).then_some(t.parent_id),
        name: t.name.clone(),
        kind: t.kind.clone(),
        enabled: t.enabled,
        deleted: t.is_deleted(),
        version: t.version,
    }
}
