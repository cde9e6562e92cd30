//! statusd: durable integration-status reporting and reconciliation for the Acronis Cyber
//! Platform. See `ARCHITECTURE.md` for the map of modules and their invariants.

pub mod accounts;
pub mod api;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod event;
pub mod metrics;
pub mod platform;
pub mod reconcile;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod schedule;
pub mod store;
pub mod systemd;
pub mod tasks;
pub mod telemetry;
pub mod vault;

/// `statusd/<version>`, sent as the User-Agent of every platform call.
pub const USER_AGENT: &str = concat!("statusd/", env!("CARGO_PKG_VERSION"));

/// Exit codes (spec §2), following sysexits where one fits.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const ERROR: u8 = 2;
    /// The store is damaged (EX_DATAERR): a restart cannot help.
    pub const DATAERR: u8 = 65;
    pub const UNAVAILABLE: u8 = 69;
    /// Stopped to open the store afresh after it could not write (EX_TEMPFAIL): start again.
    pub const TEMPFAIL: u8 = 75;
    pub const CONFIG: u8 = 78;
}
