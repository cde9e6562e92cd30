//! The command line: its arguments (`args`), one dispatch with an arm per command, the
//! commands that talk to a running daemon (`commands` over `client`), what they print
//! (`table`), and the try-it-out commands (`demo`, `sandbox`).

mod args;
mod client;
mod commands;
#[cfg(feature = "sandbox")]
mod demo;
mod store;
mod table;

use std::process::ExitCode;

pub use args::*;

use crate::config::{self, Purpose, Settings, Sources};
use crate::exit;
use crate::store::EventKind;
use crate::telemetry;

/// Load settings for a purpose; on problems print them and return exit code 78.
pub fn load_settings(cli: &Cli, purpose: Purpose) -> Result<Settings, ExitCode> {
    match config::load(&Sources::from_process(cli.config.clone()), purpose) {
        Ok(s) => Ok(s),
        Err(e) => {
            eprint!("statusd: {e}");
            Err(ExitCode::from(exit::CONFIG))
        }
    }
}

/// Commands that serve until stopped.
fn long_running(command: &Command) -> bool {
    match command {
        Command::Run(_) => true,
        #[cfg(feature = "sandbox")]
        Command::Sandbox(_) | Command::Demo(_) => true,
        _ => false,
    }
}

/// Entry point of the binary after parsing.
pub fn main(cli: Cli) -> ExitCode {
    // The demo shows its own progress and summary (retries included), so only errors interleave
    // with them unless RUST_LOG asks for more. The scheduler crate logs its own bookkeeping at
    // info ("Job creator created"); that is noise in an operator's journal, so it starts at
    // warn unless RUST_LOG says otherwise.
    #[cfg(feature = "sandbox")]
    let is_demo = matches!(cli.command, Command::Demo(_));
    #[cfg(not(feature = "sandbox"))]
    let is_demo = false;
    let default_filter = if is_demo {
        "error"
    } else {
        "info,tokio_cron_scheduler=warn"
    };
    telemetry::init(cli.log_format, default_filter);
    // A command whose output is piped into `head` ends quietly when the pipe closes, as other
    // command-line tools do; the daemon, the sandbox and the demo keep Rust's default (a closed
    // pipe is an error, never the end of a server).
    if !long_running(&cli.command) {
        // SAFETY: restoring the default disposition of a signal, before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("statusd: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    match &cli.command {
        Command::CheckConfig => check_config(&cli),
        Command::Run(args) => run(&cli, args).await,
        #[cfg(feature = "sandbox")]
        Command::Demo(args) => {
            demo::run(demo::DemoOptions {
                once: args.once,
                events: args.events,
                tenants: args.tenants,
                keep_metrics: args.keep_metrics.clone(),
                postgres: args.postgres.clone(),
            })
            .await
        }
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => run_sandbox(args).await,
        Command::Healthcheck(api) => with_local(&cli, |s| commands::healthcheck(s, api)).await,
        Command::Activate(a) => {
            with_local(&cli, |s| commands::send_event(s, a, EventKind::Activation)).await
        }
        Command::Deactivate(a) => {
            with_local(&cli, |s| {
                commands::send_event(s, a, EventKind::Deactivation)
            })
            .await
        }
        Command::Status(args) => with_local(&cli, |s| commands::status(s, args)).await,
        Command::DeadLetters(dl) => with_local(&cli, |s| commands::dead_letters(s, dl)).await,
        Command::Tenants(args) => with_local(&cli, |s| commands::tenants(s, args)).await,
        Command::Accounts(args) => with_local(&cli, |s| commands::accounts(s, args)).await,
        Command::Fusion(cmd) => with_local(&cli, |s| commands::fusion(s, cmd)).await,
        Command::Store(cmd) => match load_settings(&cli, Purpose::Local) {
            Ok(s) => {
                let cmd = cmd.clone();
                tokio::task::spawn_blocking(move || store::run(s, &cmd))
                    .await
                    .unwrap_or_else(|_| ExitCode::from(exit::ERROR))
            }
            Err(code) => code,
        },
        Command::Keygen { file } => match crate::vault::write_new_key(file) {
            Ok(()) => {
                eprintln!(
                    "wrote a new key to {}; set store.secret_key_file = {:?} (keep a copy: the secrets it seals cannot be opened without it)",
                    file.display(),
                    file.display().to_string()
                );
                ExitCode::from(exit::OK)
            }
            Err(e) => {
                eprintln!("statusd keygen: {e}");
                ExitCode::from(exit::FAILURE)
            }
        },
        Command::Reconcile(r) => with_local(&cli, |s| commands::reconcile(s, r)).await,
    }
}

/// Run a command that talks to the daemon, with the settings it needs to find it.
async fn with_local<F, Fut>(cli: &Cli, command: F) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    match load_settings(cli, Purpose::Local) {
        Ok(settings) => command(settings).await,
        Err(code) => code,
    }
}

fn check_config(cli: &Cli) -> ExitCode {
    match load_settings(cli, Purpose::Run) {
        Ok(settings) => {
            print!("{}", settings.to_redacted_toml());
            match (&settings.api.token, &settings.api.admin_token) {
                (Some(_), None) => eprintln!("note: api.admin_token is not set: api.token also adds, rotates and removes accounts, retries and purges dead letters, runs reconcilers and starts Fusion logins; give those their own token with api.admin_token"),
                (None, _) => eprintln!("note: api.token is not set: the API answers without a token, only to requests addressed to this machine (Host: localhost or a loopback address)"),
                _ => {}
            }
            eprintln!("configuration is valid");
            ExitCode::from(exit::OK)
        }
        Err(code) => code,
    }
}

async fn run(cli: &Cli, args: &RunArgs) -> ExitCode {
    let mut settings = match load_settings(cli, Purpose::Run) {
        Ok(s) => s,
        Err(code) => return code,
    };
    settings.store.accept_damaged = args.accept_damaged_store;
    match crate::app::run(
        settings,
        crate::app::shutdown_signal(),
        args.ready_file.as_deref(),
    )
    .await
    {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            tracing::error!(message = "statusd cannot run", error = %e);
            eprintln!("statusd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(feature = "sandbox")]
async fn run_sandbox(args: &SandboxArgs) -> ExitCode {
    let mut running = Vec::new();
    for n in 0..args.datacenters {
        match start_datacenter(args, n).await {
            Ok(sb) => running.push(sb),
            Err(e) => {
                eprintln!("statusd sandbox: {e}");
                return ExitCode::from(exit::FAILURE);
            }
        }
    }
    println!(
        "token lifetime {}; inspect each at <url>/_sandbox/reports, /_sandbox/stats, /_sandbox/tenants",
        humantime::format_duration(args.token_ttl)
    );
    println!(
        "faults:  curl -X POST {}/_sandbox/faults -d '{{\"status\":503,\"retry_after\":\"5\",\"count\":3}}'",
        running[0].url
    );
    crate::app::shutdown_signal().await;
    ExitCode::from(exit::OK)
}

/// Data center `n` of the sandbox: on --listen's port + n, with its own tree and client.
#[cfg(feature = "sandbox")]
async fn start_datacenter(args: &SandboxArgs, n: u16) -> Result<crate::sandbox::Sandbox, String> {
    use crate::sandbox::{Sandbox, SandboxOptions};
    let defaults = SandboxOptions::default();
    let named = |v: &Option<String>| {
        v.clone()
            .map(|v| if n == 0 { v } else { format!("{v}-{n}") })
    };
    let opts = SandboxOptions {
        client_id: named(&args.client_id).unwrap_or(defaults.client_id),
        client_secret: named(&args.client_secret).unwrap_or(defaults.client_secret),
        token_ttl: args.token_ttl,
        tenants: args.tenants,
        page_limit: args.page_limit.max(1),
        seed: defaults.seed + u64::from(n),
        fusion_username: args.fusion_username.clone(),
        fusion_password: args
            .fusion_password
            .clone()
            .unwrap_or(defaults.fusion_password),
        fusion_trusted: args.fusion_trusted,
        fusion_tenants: defaults.fusion_tenants,
        fusion_subscriptions: args.fusion_subscriptions,
        fusion_access_ttl: defaults.fusion_access_ttl,
    };
    let mut addr = args.listen;
    if addr.port() != 0 {
        addr.set_port(addr.port().saturating_add(n));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let sb = Sandbox::start_on(listener, opts)
        .await
        .map_err(|e| e.to_string())?;
    // The sandbox's credentials are throwaway test values; printing them is its purpose.
    println!("data center {n}: {}", sb.url);
    println!("  client_id:      {}", sb.client_id);
    println!("  client_secret:  {}", sb.client_secret);
    println!("  root tenant:    {}", sb.root_tenant);
    if n == 0 {
        println!(
            "fusion (the same URL, draas_instance {}):",
            crate::sandbox::FUSION_INSTANCE
        );
        println!("  username:       {}", args.fusion_username);
        println!("  password:       {}", sb.fusion_password());
        if args.fusion_trusted {
            println!("  second factor:  none (--fusion-trusted)");
        } else {
            println!("  second factor:  code {}", sb.fusion_code());
        }
        let tenants: Vec<String> = sb
            .fusion_tenants()
            .iter()
            .map(|(t, _)| t.to_string())
            .collect();
        println!("  tenants:        {}", tenants.join(", "));
    }
    Ok(sb)
}
