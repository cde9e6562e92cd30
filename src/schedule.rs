//! Cron triggers for the reconcilers. tokio-cron-scheduler only *triggers*: each job calls
//! [`Reconcilers::trigger`], which skips a run while the previous one is still going.

use tokio_cron_scheduler::{Job, JobScheduler};

pub use crate::config::CronSchedule;
use crate::config::Settings;
use crate::reconcile::{Kind, Reconcilers};

pub struct Schedules {
    scheduler: JobScheduler,
}

/// The setting that holds a reconciler's schedule.
fn schedule_key(kind: Kind) -> String {
    match kind {
        Kind::FusionBranding => "fusion.schedule".into(),
        k => format!("reconcile.{}.schedule", k.as_str()),
    }
}

impl Schedules {
    /// Register one job per reconciler from the cron strings of the settings (UTC).
    pub async fn start(settings: &Settings, reconcilers: Reconcilers) -> Result<Schedules, String> {
        let scheduler = JobScheduler::new()
            .await
            .map_err(|e| format!("cannot start the scheduler: {e}"))?;
        let mut plan = vec![
            (Kind::Tenants, settings.reconcile.tenants.schedule.clone()),
            (Kind::Status, settings.reconcile.status.schedule.clone()),
            (Kind::Branding, settings.reconcile.branding.schedule.clone()),
        ];
        if let Some(f) = &settings.fusion {
            plan.push((Kind::FusionBranding, f.schedule.clone()));
        }
        for (kind, cron) in plan {
            reconcilers.set_schedule(
                kind,
                CronSchedule::parse(&cron).map_err(|e| format!("{}: {e}", schedule_key(kind)))?,
            );
            let r = reconcilers.downgrade();
            let job = Job::new_async(cron.as_str(), move |_, _| {
                let r = r.upgrade();
                Box::pin(async move {
                    // Apart, so the scheduler's tick is never blocked by a slow run; tracked,
                    // so a shutdown waits for it.
                    if let Some(r) = r {
                        r.trigger_detached(kind);
                    }
                })
            })
            .map_err(|e| format!("{}: {e}", schedule_key(kind)))?;
            scheduler
                .add(job)
                .await
                .map_err(|e| format!("cannot schedule {}: {e}", kind.as_str()))?;
        }
        scheduler
            .start()
            .await
            .map_err(|e| format!("cannot start the scheduler: {e}"))?;
        Ok(Schedules { scheduler })
    }

    pub async fn stop(mut self) {
        let _ = self.scheduler.shutdown().await;
    }
}
