//! sd_notify: READY once the store is open and the API listens, WATCHDOG pings at half of
//! `WATCHDOG_USEC` while the runtime and store answer, STOPPING at shutdown. Without
//! `NOTIFY_SOCKET` every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::store::Queue;

pub fn notify_ready() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// Half the watchdog timeout systemd asked for, if it asked. As sd_watchdog_enabled(3) says,
/// `WATCHDOG_PID`, when set, must name this process; when unset the watchdog applies to us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Ping only while healthy: the runtime is scheduling this task and the store answers. A wedged
/// process stops pinging and systemd restarts it.
pub async fn watchdog_loop(interval: Duration, queue: Queue, stop: CancellationToken) {
    loop {
        let healthy = queue.healthy();
        if healthy {
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        } else {
            tracing::error!(message = "store not answering; withholding the watchdog ping");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
