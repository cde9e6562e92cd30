//! The status reconciler: re-assert each tenant's intended state through the delivery path
//! (the platform has no read-back of the integration status).

use super::*;

/// The status reconciler (one run covers every account's tenants).
pub(super) struct Status;

#[async_trait::async_trait]
impl Reconciler for Status {
    fn kind(&self) -> Kind {
        Kind::Status
    }

    async fn reconcile(
        &self,
        cx: &Context,
        report: &mut Report,
        run: &Run<'_>,
    ) -> Result<(), ReconcileError> {
        let q = &cx.queue;
        let only = run.only;
        let states = q.tenant_states().await?;
        let mut events = Vec::new();
        let default = crate::config::DEFAULT_ACCOUNT;
        for s in states {
            let Some(intended) = s.intended else { continue };
            // On a shared store, each replica reconciles the tenants of the shards it holds.
            if !q.acts_for(s.account.as_deref()) {
                continue;
            }
            if only.is_some_and(|id| id != s.account.as_deref().unwrap_or(default)) {
                continue;
            }
            if let Some(inv) = q.inventory(&s.tenant_id).await? {
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
            if q.has_pending(&s.tenant_id) {
                continue;
            }
            // Re-asserted through the account of the tenant's latest decision, dated as that
            // decision: should a newer one be accepted meanwhile (by another replica, or
            // between this read and the enqueue), the re-assertion is the older of the two,
            // and is set aside instead of ending the platform at the state it repeats.
            events.extend(s.reassertion());
        }
        report.details.tenants = Some(events.len());
        if report.dry_run || events.is_empty() {
            return Ok(());
        }
        let n = events.len();
        for chunk in events.chunks(1000) {
            q.enqueue(chunk.to_vec()).await?;
        }
        report
            .actions
            .push(format!("re-asserted the intended state of {n} tenant(s)"));
        Ok(())
    }
}
