//! `statusd demo`: the sandbox platform and the daemon in one process on loopback, a temporary
//! store, sample events sent through the real local API with faults injected, live progress,
//! one reconcile of each kind, and a summary of what the platform received.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use super::table::print_table;
use crate::config::{self, Purpose};
use crate::exit;
use crate::reconcile::Kind;
use crate::sandbox::{Fault, Sandbox, SandboxOptions};

/// What `statusd demo` was asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Exit once everything is delivered.
    pub once: bool,
    /// Sample events to send.
    pub events: usize,
    /// Tenants in the sandbox tree.
    pub tenants: usize,
    /// Write the daemon's /metrics exposition here before exiting.
    pub keep_metrics: Option<std::path::PathBuf>,
}

pub async fn run(opts: DemoOptions) -> ExitCode {
    match demo(opts).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("statusd demo: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// The sandbox and the daemon, in one process, with the store in a temporary directory.
struct Stage {
    sandbox: Sandbox,
    running: crate::app::Running,
    api: String,
    _store: tempfile::TempDir,
}

async fn demo(opts: DemoOptions) -> Result<(), String> {
    let stage = start(opts.tenants).await?;
    let api = stage.api.clone();
    println!("statusd demo");
    println!(
        "  sandbox platform  {}   (credentials generated for this run)",
        stage.sandbox.url
    );
    println!("  statusd local API {api}");
    println!("  temporary store   {}", stage._store.path().display());

    let tenants = sample_tenants(&stage.sandbox);
    let refused = inject_faults(&stage.sandbox, &tenants);
    println!(
        "  faults injected   503+Retry-After x4, 15% 500s, dropped connections{}",
        refused
            .map(|t| format!(", tenant {t} refused (403)"))
            .unwrap_or_default()
    );
    println!();

    send_samples(&api, &tenants, opts.events.max(1)).await?;
    wait_drained(&stage.running, Some(opts.events.max(1) as u64)).await;
    run_reconcilers(&stage.running).await?;
    // The status reconcile re-asserted every tenant's state: let those reports go out too.
    wait_drained(&stage.running, None).await;
    summary(&stage.sandbox, &stage.running);
    if let Some(path) = &opts.keep_metrics {
        keep_metrics(&api, path).await?;
    }
    if !opts.once {
        print_try_it(&stage, &tenants);
        crate::app::shutdown_signal().await;
    }
    stage.running.shutdown().await;
    Ok(())
}

async fn start(tenants: usize) -> Result<Stage, String> {
    let sandbox = Sandbox::start(SandboxOptions {
        tenants,
        token_ttl: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot start the sandbox: {e}"))?;
    let store = tempfile::tempdir().map_err(|e| format!("cannot create a temporary store: {e}"))?;
    let toml = format!(
        r#"
[platform]
base_url = "{url}"
client_id = "{id}"
request_timeout = "2s"
max_concurrency = 8
[integration]
application_code = "sandbox.demo"
module_name = "statusd demo"
vendor_system_name = "Demo product"
vendor_system_version = "1.0"
[store]
path = "{store}"
[delivery]
initial_backoff = "200ms"
max_backoff = "2s"
[reconcile.branding]
targets = ["partners"]
[branding]
company_name = "Demo Cloud"
color = "1A6FB0"
upsell_url = "https://shop.example.com/buy"
support_url = "https://support.example.com"
"#,
        url = sandbox.url,
        id = sandbox.client_id,
        store = store.path().display(),
    );
    let secret = sandbox.client_secret.clone();
    let settings = config::load_from_str(
        &toml,
        &[("STATUSD__PLATFORM__CLIENT_SECRET", secret.as_str())],
        Purpose::Run,
    )
    .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let running = crate::app::start(settings, Some(listener), false)
        .await
        .map_err(|e| e.to_string())?;
    let api = format!("http://{}", running.api_addr);
    Ok(Stage {
        sandbox,
        running,
        api,
        _store: store,
    })
}

/// The tenants that get sample events: the customers, else any tenant below the root, else the
/// root itself (a tree of one).
fn sample_tenants(sandbox: &Sandbox) -> Vec<uuid::Uuid> {
    let customers = sandbox.tenant_ids(Some("customer"));
    if !customers.is_empty() {
        return customers;
    }
    let below_root: Vec<uuid::Uuid> = sandbox
        .tenant_ids(None)
        .into_iter()
        .filter(|t| *t != sandbox.root_tenant)
        .collect();
    if below_root.is_empty() {
        vec![sandbox.root_tenant]
    } else {
        below_root
    }
}

/// Faults so the retries show: a throttling burst, some server errors, dropped connections,
/// and (when there is more than one tenant) one tenant whose reports the platform refuses for
/// good. Returns that tenant.
fn inject_faults(sandbox: &Sandbox, tenants: &[uuid::Uuid]) -> Option<uuid::Uuid> {
    sandbox.inject(Fault {
        status: Some(503),
        retry_after: Some("1".into()),
        count: Some(4),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    sandbox.inject(Fault {
        status: Some(500),
        fraction: Some(0.15),
        count: Some(25),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    sandbox.inject(Fault {
        drop_connection: true,
        count: Some(3),
        fraction: Some(0.3),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    let refused = tenants.first().copied().filter(|_| tenants.len() > 1)?;
    sandbox.inject(Fault {
        status: Some(403),
        query_contains: Some(refused.to_string()),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    Some(refused)
}

/// Sample events through the real local API, in requests of 100.
async fn send_samples(api: &str, tenants: &[uuid::Uuid], events: usize) -> Result<(), String> {
    let http = reqwest::Client::new();
    let batch: Vec<Value> = (0..events)
        .map(|i| {
            let t = tenants[i % tenants.len()];
            let kind = if i >= tenants.len() && i % 5 == 0 {
                "deactivation"
            } else {
                "activation"
            };
            json!({"tenant_id": t, "type": kind})
        })
        .collect();
    for chunk in batch.chunks(100) {
        let resp = http
            .post(format!("{api}/v1/events"))
            .json(&chunk)
            .send()
            .await
            .map_err(|e| format!("cannot reach the local API: {e}"))?;
        if resp.status() != reqwest::StatusCode::ACCEPTED {
            return Err(format!(
                "the local API refused sample events: HTTP {}",
                resp.status()
            ));
        }
    }
    Ok(())
}

async fn run_reconcilers(running: &crate::app::Running) -> Result<(), String> {
    println!("\nreconcilers (one run of each):");
    for kind in Kind::ALL {
        let report = running
            .reconcilers
            .run_now(kind, false)
            .await
            .map_err(|_| "reconciler busy".to_string())?;
        println!(
            "  {:<9} {:<8} drift {:>3}  actions {:>3}  skipped {:>3}  errors {:>3}  {} ms",
            kind.as_str(),
            report.outcome,
            report.drift.len(),
            report.actions.len(),
            report.skipped.len(),
            report.errors.len(),
            report.duration_ms
        );
    }
    Ok(())
}

async fn keep_metrics(api: &str, path: &std::path::Path) -> Result<(), String> {
    let text = reqwest::get(format!("{api}/metrics"))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn print_try_it(stage: &Stage, tenants: &[uuid::Uuid]) {
    let api = &stage.api;
    println!("\nstatusd keeps running; try:");
    println!("  curl {api}/metrics");
    println!("  curl {api}/v1/status");
    println!(
        "  curl -X POST {api}/v1/events -H 'Content-Type: application/json' -d '{{\"tenant_id\":\"{}\",\"type\":\"activation\"}}'",
        tenants.last().map(|t| t.to_string()).unwrap_or_default()
    );
    println!("  curl {}/_sandbox/reports", stage.sandbox.url);
    println!("  cargo run -- status --api {api}");
    println!("Ctrl-C to stop.");
}

/// Show progress until nothing is pending: one line redrawn in place on a terminal (log lines
/// clear it first, and it is drawn again on the next tick), a line every few seconds otherwise.
/// `accepted`: how many sample events were accepted (None after the reconcilers, whose
/// re-assertions go straight to the queue).
async fn wait_drained(running: &crate::app::Running, accepted: Option<u64>) {
    let mut stderr = std::io::stderr();
    let on_terminal = stderr.is_terminal();
    let mut last_plain = tokio::time::Instant::now();
    loop {
        let st = running.queue.stats();
        let delivered = running.metrics.delivered();
        let retrying = running
            .metrics
            .attempts(crate::metrics::AttemptOutcome::Retryable);
        let accepted = accepted
            .map(|a| format!("accepted {a:>5}  "))
            .unwrap_or_default();
        let line = format!(
            "  {accepted}delivered {:>5}  pending {:>5}  retried reports {:>4}  dead letters {:>3}",
            delivered, st.depth, retrying, st.dead_letters
        );
        let done = st.depth == 0;
        if on_terminal {
            let _ = write!(stderr, "\r\x1b[2K{line}");
            crate::telemetry::progress_drawn();
            if done {
                let _ = writeln!(stderr);
                crate::telemetry::progress_ended();
            }
        } else if done || last_plain.elapsed() >= Duration::from_secs(2) {
            let _ = writeln!(stderr, "{line}");
            last_plain = tokio::time::Instant::now();
        }
        let _ = stderr.flush();
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn summary(sandbox: &Sandbox, running: &crate::app::Running) {
    let reports = sandbox.reports();
    let mut per_tenant: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for r in &reports {
        let e = per_tenant.entry(r.tenant_id.to_string()).or_default();
        e.0 += 1;
        for ev in r.body["events"].as_array().into_iter().flatten() {
            if ev["activation_event"] == Value::Bool(true) {
                e.1 += 1;
            }
            if ev["deactivation_event"] == Value::Bool(true) {
                e.2 += 1;
            }
        }
    }
    println!("\nwhat the platform received (first 12 tenants):");
    let rows: Vec<Vec<String>> = per_tenant
        .iter()
        .take(12)
        .map(|(t, (r, a, d))| vec![t.clone(), r.to_string(), a.to_string(), d.to_string()])
        .collect();
    print_table(
        &["TENANT", "REPORTS", "ACTIVATIONS", "DEACTIVATIONS"],
        &rows,
    );
    let stats = sandbox.stats();
    let mut by_status: Vec<(u16, u64)> = stats.by_status.iter().map(|(k, v)| (*k, *v)).collect();
    by_status.sort();
    let st = running.queue.stats();
    println!(
        "\ntotals: {} reports for {} tenants; {} platform requests (by status: {}); {} faults applied; {} token(s) issued; {} event(s) dead-lettered",
        reports.len(),
        per_tenant.len(),
        stats.requests,
        by_status.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
        stats.faults_applied,
        stats.tokens_issued,
        st.dead_letters
    );
}
