//! Logs: tracing-subscriber with a `RUST_LOG`-style filter (default `info`), text or JSON.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::{fmt, EnvFilter};

/// A progress line is drawn on the terminal and not yet cleared (see [`progress_drawn`]).
static PROGRESS_ON_SCREEN: AtomicBool = AtomicBool::new(false);

/// A progress line was just drawn in place on stderr (a terminal): the next log line clears it
/// first, so the two are never glued together; the progress is drawn again on its next tick.
pub fn progress_drawn() {
    PROGRESS_ON_SCREEN.store(true, Ordering::Release);
}

/// The progress line was finished with a newline.
pub fn progress_ended() {
    PROGRESS_ON_SCREEN.store(false, Ordering::Release);
}

/// stderr for log lines, clearing a progress line drawn in place first.
fn log_writer() -> std::io::Stderr {
    let mut stderr = std::io::stderr();
    if PROGRESS_ON_SCREEN.swap(false, Ordering::AcqRel) {
        let _ = stderr.write_all(b"\r\x1b[2K");
    }
    stderr
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Install the global subscriber. Logs go to stderr so command output on stdout stays clean;
/// text logs are coloured only when stderr is a terminal.
/// Calling it twice is harmless (the second call is ignored).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = fmt().with_env_filter(filter).with_writer(log_writer);
    let _ = match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
