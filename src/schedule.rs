//! Cron triggers for the reconcilers. tokio-cron-scheduler only *triggers*: each job calls
//! [`Reconcilers::trigger`], which skips a run while the previous one is still going.

use tokio_cron_scheduler::{Job, JobScheduler};

pub use crate::config::CronSchedule;
use crate::config::Settings;
use crate::reconcile::{Kind, Reconcilers};

/// Why the schedules did not start: a schedule the scheduler refused (naming its setting), or
/// the scheduler itself.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{setting}: {problem}")]
    Refused { setting: String, problem: String },
    #[error("cannot start the scheduler: {0}")]
    Scheduler(tokio_cron_scheduler::JobSchedulerError),
}

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
    pub async fn start(
        settings: &Settings,
        reconcilers: Reconcilers,
    ) -> Result<Schedules, ScheduleError> {
        let refused = |kind: Kind, problem: String| ScheduleError::Refused {
            setting: schedule_key(kind),
            problem,
        };
        let scheduler = JobScheduler::new()
            .await
            .map_err(ScheduleError::Scheduler)?;
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
                CronSchedule::parse(&cron).map_err(|e| refused(kind, e))?,
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
            .map_err(|e| refused(kind, e.to_string()))?;
            scheduler
                .add(job)
                .await
                .map_err(|e| refused(kind, format!("cannot schedule it: {e}")))?;
        }
        scheduler.start().await.map_err(ScheduleError::Scheduler)?;
        Ok(Schedules { scheduler })
    }

    pub async fn stop(mut self) {
        let _ = self.scheduler.shutdown().await;
    }
}
