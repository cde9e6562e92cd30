//! Cron triggers for the reconcilers. tokio-cron-scheduler only *triggers*: each job calls
//! [`Reconcilers::trigger`], which skips a run while the previous one is still going.

use tokio_cron_scheduler::{Job, JobScheduler};

use crate::config::Settings;
use crate::reconcile::{Kind, Reconcilers};

pub struct Schedules {
    scheduler: JobScheduler,
    jobs: Vec<(Kind, uuid::Uuid)>,
    reconcilers: Reconcilers,
}

impl Schedules {
    /// Register one job per reconciler from the cron strings of the settings (UTC).
    pub async fn start(settings: &Settings, reconcilers: Reconcilers) -> Result<Schedules, String> {
        let scheduler = JobScheduler::new()
            .await
            .map_err(|e| format!("cannot start the scheduler: {e}"))?;
        let plan = [
            (Kind::Tenants, settings.reconcile.tenants.schedule.clone()),
            (Kind::Status, settings.reconcile.status.schedule.clone()),
            (Kind::Branding, settings.reconcile.branding.schedule.clone()),
        ];
        let mut jobs = Vec::new();
        for (kind, cron) in plan {
            let r = reconcilers.clone();
            let job = Job::new_async(cron.as_str(), move |_, _| {
                let r = r.clone();
                Box::pin(async move {
                    // Run detached so the scheduler's tick is never blocked by a slow run.
                    tokio::spawn(async move { r.trigger(kind).await });
                })
            })
            .map_err(|e| format!("reconcile.{}.schedule: {e}", kind.as_str()))?;
            let id = scheduler
                .add(job)
                .await
                .map_err(|e| format!("cannot schedule {}: {e}", kind.as_str()))?;
            jobs.push((kind, id));
        }
        scheduler
            .start()
            .await
            .map_err(|e| format!("cannot start the scheduler: {e}"))?;
        let s = Schedules {
            scheduler,
            jobs,
            reconcilers,
        };
        s.refresh_next_runs().await;
        Ok(s)
    }

    /// Publish each job's next fire time for `statusd status`.
    pub async fn refresh_next_runs(&self) {
        let mut scheduler = self.scheduler.clone();
        for (kind, id) in &self.jobs {
            let next = scheduler.next_tick_for_job(*id).await.ok().flatten();
            self.reconcilers.set_next_run(*kind, next);
        }
    }

    pub async fn stop(mut self) {
        let _ = self.scheduler.shutdown().await;
    }
}
