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

/// How long the store may be unable to write before the watchdog ping is withheld (statusd
/// restarts by itself once writing works again; this is the last resort).
const STORE_WRITE_GRACE: Duration = Duration::from_secs(300);

/// Ping only while healthy: the runtime is scheduling this task, the store answers, and it has
/// not been unable to write for longer than a grace. A wedged process stops pinging and systemd
/// restarts it.
pub async fn watchdog_loop(interval: Duration, queue: Queue, stop: CancellationToken) {
    let mut cannot_write_since: Option<tokio::time::Instant> = None;
    loop {
        let writes = queue.write_error().is_none();
        if writes {
            cannot_write_since = None;
        } else {
            cannot_write_since.get_or_insert_with(tokio::time::Instant::now);
        }
        let healthy = queue.healthy()
            && cannot_write_since.is_none_or(|since| since.elapsed() < STORE_WRITE_GRACE);
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
