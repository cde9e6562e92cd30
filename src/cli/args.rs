//! The command line's arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "statusd",
    version,
    about = "Reports integration status to the Acronis Cyber Platform, durably and in order, and reconciles tenants and branding on a schedule.",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// Configuration file (default: /etc/statusd/statusd.toml when it exists, else built-in defaults).
    /// Environment variables STATUSD__SECTION__KEY override it.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log format on stderr. The filter comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct ApiArgs {
    /// URL of the running daemon's local API (default: http://<api.listen> of the configuration).
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (what systemd and containers start).
    Run(RunArgs),
    #[cfg(feature = "sandbox")]
    /// Try statusd out with no credentials: a sandbox platform and the daemon on loopback,
    /// sample events with injected faults, live progress and a summary.
    Demo(DemoArgs),
    #[cfg(feature = "sandbox")]
    /// Run only the sandbox platform, for developing an integration without platform credentials.
    Sandbox(SandboxArgs),
    /// Probe the local API's /livez; exit 0 when healthy, 1 when not (for container HEALTHCHECK).
    Healthcheck(ApiArgs),
    /// Validate the configuration and print the effective settings with secrets redacted
    /// (exit 0 valid, 78 invalid).
    CheckConfig,
    /// Enqueue an activation event for a tenant through the running daemon.
    Activate(EventArgs),
    /// Enqueue a deactivation event for a tenant through the running daemon.
    Deactivate(EventArgs),
    /// Show queue depth, oldest pending age, dead letters, reconcilers and platform reachability.
    Status(StatusArgs),
    /// Inspect and act on reports the platform refused for good.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Show the tenant inventory from the last tenant reconcile.
    Tenants(StatusArgs),
    /// The partner accounts: list them (the default), show one, add one at run time (checked
    /// with its data center first), rotate its credentials, remove it.
    Accounts(AccountsArgs),
    /// Netaxis Fusion: `fusion login` logs the running daemon in (asking for the second
    /// factor's code when the platform wants one).
    #[command(subcommand)]
    Fusion(FusionCommand),
    /// Operate on the store while no daemon holds it: verify (and repair) it, compact it (give
    /// back the space sled holds), export it as JSON lines, import an export.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Write a new key for the secrets kept in the store (store.secret_key_file): 32 random
    /// bytes as base64, mode 0600; an existing file is never overwritten.
    Keygen {
        /// Where to write the key.
        file: PathBuf,
    },
    /// Run one reconcile now; --dry-run prints the drift without changing anything
    /// (exit 0 no drift or applied, 1 drift found in a dry run, 2 error).
    Reconcile(ReconcileArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Start on a store found damaged (exit 65 otherwise), with what is left of it; what is
    /// missing is logged.
    #[arg(long)]
    pub accept_damaged_store: bool,
    /// Once ready, write the address the API listens on (host:port, then a newline) to this
    /// file: with api.listen = "127.0.0.1:0" the system picks a free port, and this says which.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit when every event is delivered instead of staying up for exploration.
    #[arg(long)]
    pub once: bool,
    /// Number of sample events to send.
    #[arg(long, default_value_t = 400)]
    pub events: usize,
    /// Number of tenants in the sandbox's generated tree.
    #[arg(long, default_value_t = 60)]
    pub tenants: usize,
    /// Write the daemon's /metrics exposition to this file before exiting (for promtool).
    #[arg(long, value_name = "PATH", hide = true)]
    pub keep_metrics: Option<PathBuf>,
    /// Run the demo on a PostgreSQL store at this URL (postgres://user:password@host/db), in a
    /// fresh schema of its own, instead of a temporary sled store.
    #[arg(
        long,
        value_name = "URL",
        env = "STATUSD_DEMO_POSTGRES",
        hide_env_values = true
    )]
    pub postgres: Option<String>,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8780", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// API client id to accept (default: generated and printed).
    #[arg(long)]
    pub client_id: Option<String>,
    /// API client secret to accept (default: generated and printed).
    #[arg(long, env = "STATUSD_SANDBOX_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// Lifetime of issued tokens, e.g. "2h", "30s".
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    pub token_ttl: std::time::Duration,
    /// Number of tenants in the generated tree.
    #[arg(long, default_value_t = 50)]
    pub tenants: usize,
    /// Maximum items per page of GET /api/2/tenants.
    #[arg(long, default_value_t = 100)]
    pub page_limit: usize,
    /// Serve this many data centers, each with its own API client, tenant tree, inspection and
    /// faults, on consecutive ports from --listen (port 0: any free port for each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub datacenters: u16,
    /// The Fusion API user the sandbox accepts.
    #[arg(long, default_value = "fusion-api")]
    pub fusion_username: String,
    /// Its password (default: generated and printed).
    #[arg(long, env = "STATUSD_SANDBOX_FUSION_PASSWORD", hide_env_values = true)]
    pub fusion_password: Option<String>,
    /// Trust every Fusion login (no second factor); otherwise a login needs the code printed
    /// at start.
    #[arg(long)]
    pub fusion_trusted: bool,
    /// Subscriptions of each Fusion tenant.
    #[arg(long, default_value_t = 3)]
    pub fusion_subscriptions: usize,
}

#[derive(Debug, Args)]
pub struct EventArgs {
    /// The tenant's UUID.
    pub tenant_id: String,
    /// Event action text (default: "activated integration" / "deactivated integration").
    #[arg(long)]
    pub action: Option<String>,
    /// Event category (default: "activation").
    #[arg(long)]
    pub category: Option<String>,
    /// Idempotency key: a repeated key is accepted once.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// The partner account (default: the only one, or the one whose inventory has the tenant).
    #[arg(long, value_name = "ID")]
    pub account: Option<String>,
    /// When the change happened, RFC 3339 (default: when statusd accepts it); reported as the
    /// activation or deactivation time.
    #[arg(long, value_name = "TIME")]
    pub occurred_at: Option<String>,
    /// With deactivate: remove the account (one added through the API) once this deactivation
    /// and the account's other events are delivered.
    #[arg(long)]
    pub retire_account: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AccountsArgs {
    #[command(subcommand)]
    pub command: Option<AccountCommand>,
    #[command(flatten)]
    pub list: StatusArgs,
}

/// Where a client secret is read from: a file, or standard input (never an argument, which
/// other users of the machine can read).
#[derive(Debug, Args, Clone)]
pub struct SecretSource {
    /// Read the client secret from this file (default: standard input, one line).
    #[arg(long, value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// List the accounts: data center, token state, pending and dead events, tenants.
    List(StatusArgs),
    /// Show one account.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Add a partner's account: its data center and API client are checked before it is
    /// stored (the secret sealed with store.secret_key_file).
    Add {
        /// The partner's data-center URL, e.g. https://eu2-cloud.acronis.com.
        #[arg(long, value_name = "URL")]
        datacenter_url: String,
        /// The API client id.
        #[arg(long)]
        client_id: String,
        #[command(flatten)]
        secret: SecretSource,
        /// The account id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// `api_client` (default) or `cyberapp`.
        #[arg(long)]
        credentials: Option<String>,
        /// Top of the tenant tree walked for it (default: the API client's own tenant).
        #[arg(long, value_name = "UUID")]
        root_tenant_id: Option<String>,
        /// Also report the integration active: for the account's own tenant (`--activate`),
        /// or for the tenant given (`--activate UUID`), in the same durable write.
        #[arg(long, value_name = "TENANT", num_args = 0..=1, default_missing_value = "true")]
        activate: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Replace an account's API client secret (and id): checked before it is used.
    Rotate {
        id: String,
        /// A new API client id (default: the current one).
        #[arg(long)]
        client_id: Option<String>,
        #[command(flatten)]
        secret: SecretSource,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove an account added at run time; refused while it has pending or dead events,
    /// unless --force (which drops them).
    Remove {
        id: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum FusionCommand {
    /// Log the running daemon in to Fusion; keeps the session (its refresh token, sealed with
    /// store.secret_key_file) in the store.
    Login {
        /// The code the platform sent (default: asked for on the terminal when needed).
        #[arg(long)]
        code: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum StoreCommand {
    /// Check every index against the records, the counters, the layout and the accounts'
    /// secrets (exit 0 sound, 1 problems found, 2 cannot open).
    Verify {
        /// Rebuild indexes and counters from the event records (never deletes a record).
        #[arg(long)]
        repair: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy the live data into a fresh store and swap it in: the space sled holds is returned.
    /// Crash-safe; refused when the free space cannot hold the copy.
    Compact,
    /// Write the whole state as JSON lines (format version 1), to stdout or --out.
    Export {
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Build the store from an export: at store.path where no store is (sled), or into an
    /// empty schema (postgres). Pending events keep their order.
    Import { file: PathBuf },
    /// Create or migrate the PostgreSQL store's schema, and nothing else (for operators who run
    /// schema changes as their own step; `statusd run` migrates at start too).
    Migrate,
    /// Seal every secret kept in the store again under store.secret_key_file (opening those the
    /// previous key sealed with store.previous_secret_key_file): the last step of a key
    /// rotation, after which the previous key can go. Offline on sled; on PostgreSQL while
    /// replicas run (each takes in the sealed-again records). Exit 0 all done, 1 some value
    /// could not be opened (named), 2 cannot open the store.
    Rekey,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List parked events with their reason.
    List(StatusArgs),
    /// Show one parked event.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Put a parked event (or all with --all) back at the tail of its tenant's queue.
    Retry {
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a parked event for good.
    Purge {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReconcilerName {
    Tenants,
    Status,
    Branding,
    /// Subscription branding on Netaxis Fusion.
    FusionBranding,
}

impl ReconcilerName {
    pub fn kind(self) -> crate::reconcile::Kind {
        match self {
            ReconcilerName::Tenants => crate::reconcile::Kind::Tenants,
            ReconcilerName::Status => crate::reconcile::Kind::Status,
            ReconcilerName::Branding => crate::reconcile::Kind::Branding,
            ReconcilerName::FusionBranding => crate::reconcile::Kind::FusionBranding,
        }
    }
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Which reconciler to run.
    #[arg(value_enum)]
    pub reconciler: ReconcilerName,
    /// Print the drift without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Run for this partner account only (default: every account).
    #[arg(long, value_name = "ID")]
    pub account: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("not a duration: {s:?} ({e})"))
}
