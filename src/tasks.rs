//! Work spawned apart from the task that started it (a scheduled reconcile run, the re-assertion
//! after a takeover): tracked, so that a shutdown or a reopening of the store cancels it and
//! waits for it to end, and nothing holds the store once it is closed.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Detached work of one start of the daemon. Cheap to clone.
#[derive(Clone, Default)]
pub struct Detached {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Detached {
    /// Run `work` apart; it is cancelled (dropped at its next await) by [`Detached::stop`].
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = work => {}
            }
        });
    }

    /// Cancel every task and wait until each has ended; nothing more is taken after it.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Tasks still running (tests, status).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}
