//! `statusd demo`: partner accounts in three sandbox data centers and the daemon in one process
//! on loopback, a temporary store, sample events for every account sent through the real local
//! API, faults injected (one data center down for a while, the others delivering meanwhile),
//! live progress per data center, one reconcile of each kind, and a summary of what each data
//! center received.

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
    /// Tenants in each sandbox data center's tree.
    pub tenants: usize,
    /// Write the daemon's /metrics exposition here before exiting.
    pub keep_metrics: Option<std::path::PathBuf>,
    /// Run on a PostgreSQL store at this URL (a fresh schema) instead of sled.
    pub postgres: Option<String>,
}

/// The partner accounts of the demo, one per data center.
const ACCOUNTS: [&str; 3] = ["eu", "us", "apac"];

/// How many reports the `us` data center refuses (503) before it comes back: a few seconds
/// with the breaker's waits.
const OUTAGE_REPORTS: u64 = 5;

pub async fn run(opts: DemoOptions) -> ExitCode {
    match demo(opts).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("statusd demo: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// One sandbox data center and its partner account.
struct DataCenter {
    account: &'static str,
    sandbox: Sandbox,
    tenants: Vec<uuid::Uuid>,
}

/// The data centers and the daemon, in one process, with the store in a temporary directory.
struct Stage {
    datacenters: Vec<DataCenter>,
    running: crate::app::Running,
    api: String,
    _store: tempfile::TempDir,
    /// Where the store is, for the banner.
    store: String,
}

async fn demo(opts: DemoOptions) -> Result<(), String> {
    let stage = start(opts.tenants, opts.postgres.as_deref()).await?;
    let api = stage.api.clone();
    println!("statusd demo");
    for dc in &stage.datacenters {
        println!(
            "  account {:<5} data center {}   (credentials generated for this run)",
            dc.account, dc.sandbox.url
        );
    }
    println!("  statusd local API {api}");
    println!("  store             {}", stage.store);
    let refused = inject_faults(&stage.datacenters[0]);
    println!(
        "  faults injected   eu: 503+Retry-After x4, 15% 500s, dropped connections{}; us: down for its next {OUTAGE_REPORTS} reports",
        refused
            .map(|t| format!(", tenant {t} refused (403)"))
            .unwrap_or_default(),
    );
    take_down(&stage.datacenters[1]);
    println!();

    send_samples(&api, &stage.datacenters, opts.events.max(1)).await?;
    wait_drained(&stage, Some(opts.events.max(1) as u64)).await;
    run_reconcilers(&stage.running).await?;
    // The status reconcile re-asserted every tenant's state: let those reports go out too.
    wait_drained(&stage, None).await;
    summary(&stage);
    if let Some(path) = &opts.keep_metrics {
        keep_metrics(&api, path).await?;
    }
    if !opts.once {
        print_try_it(&stage);
        crate::app::shutdown_signal().await;
    }
    stage.running.shutdown().await;
    Ok(())
}

async fn start(tenants: usize, postgres: Option<&str>) -> Result<Stage, String> {
    let store = tempfile::tempdir().map_err(|e| format!("cannot create a temporary store: {e}"))?;
    let (store_toml, where_) = store_section(store.path(), postgres)?;
    let (datacenters, accounts_toml, mut secrets) = start_datacenters(tenants).await?;
    let fusion = &datacenters[0].sandbox;
    let fusion_tenants: Vec<String> = fusion
        .fusion_tenants()
        .iter()
        .map(|(t, _)| format!("\"{t}\""))
        .collect();
    secrets.push(("STATUSD__FUSION__PASSWORD".into(), fusion.fusion_password()));
    let fusion_toml = format!(
        "[fusion]\nbase_url = \"{}\"\ndraas_instance = \"{}\"\nusername = \"fusion-api\"\ntenants = [{}]\n[fusion.branding.general]\ncompanyName = \"Demo Voice\"\n[fusion.branding.styling.theme]\nselected = \"green\"\n",
        fusion.url,
        crate::sandbox::FUSION_INSTANCE,
        fusion_tenants.join(", ")
    );
    let toml = format!(
        r#"
{accounts_toml}
{fusion_toml}
[platform]
request_timeout = "2s"
# The sandbox data centers listen here; accounts added through the API may use it only because it is named.
allowed_hosts = ["127.0.0.1"]
max_concurrency = 8
[integration]
application_code = "sandbox.demo"
module_name = "statusd demo"
vendor_system_name = "Demo product"
vendor_system_version = "1.0"
[store]
{store_toml}
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
    );
    let env: Vec<(&str, &str)> = secrets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let settings = config::load_from_str(&toml, &env, Purpose::Run).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let running = crate::app::start(settings, Some(listener), false)
        .await
        .map_err(|e| e.to_string())?;
    let api = format!("http://{}", running.api_addr);
    Ok(Stage {
        datacenters,
        running,
        api,
        _store: store,
        store: where_,
    })
}

/// The `[store]` keys of the demo and where its store is: a temporary sled directory, or (with
/// `--postgres`) a schema of this run's own, so the demo's figures are its own.
fn store_section(
    dir: &std::path::Path,
    postgres: Option<&str>,
) -> Result<(String, String), String> {
    let store = dir;
    // On PostgreSQL: a schema of this run's own, so the demo's figures are its own.
    Ok(match postgres {
        None => (
            format!("path = {:?}", store.display().to_string()),
            format!("sled, temporary at {}", store.display()),
        ),
        Some(url) => {
            crate::config::postgres::check_url(url).map_err(|e| format!("--postgres: {e}"))?;
            let schema = format!(
                "statusd_demo_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            (
                format!(
                    "backend = \"postgres\"\n[store.postgres]\nurl = {}\nschema = \"{schema}\"",
                    serde_json::to_string(url).map_err(|e| e.to_string())?
                ),
                format!(
                    "PostgreSQL {} schema {schema} (left in place: DROP SCHEMA {schema} CASCADE to remove it)",
                    crate::config::postgres::describe_url(url)
                ),
            )
        }
    })
}

/// One sandbox data center per demo account: the `[accounts.*]` keys, and their secrets as
/// environment variables.
async fn start_datacenters(
    tenants: usize,
) -> Result<(Vec<DataCenter>, String, Vec<(String, String)>), String> {
    let mut datacenters = Vec::new();
    let mut accounts_toml = String::new();
    let mut secrets = Vec::new();
    for (n, account) in ACCOUNTS.iter().enumerate() {
        let sandbox = Sandbox::start(SandboxOptions {
            tenants,
            token_ttl: Duration::from_secs(120),
            seed: 42 + n as u64,
            // The first data center also serves Fusion, trusting the demo's login.
            fusion_trusted: true,
            fusion_subscriptions: 5,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot start a sandbox data center: {e}"))?;
        accounts_toml.push_str(&format!(
            "[accounts.{account}]\ndatacenter_url = \"{}\"\nclient_id = \"{}\"\n",
            sandbox.url, sandbox.client_id
        ));
        secrets.push((
            format!(
                "STATUSD__ACCOUNTS__{}__CLIENT_SECRET",
                account.to_uppercase()
            ),
            sandbox.client_secret.clone(),
        ));
        let tenants = sample_tenants(&sandbox);
        datacenters.push(DataCenter {
            account,
            sandbox,
            tenants,
        });
    }
    Ok((datacenters, accounts_toml, secrets))
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
fn inject_faults(dc: &DataCenter) -> Option<uuid::Uuid> {
    let sandbox = &dc.sandbox;
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
    let refused = dc
        .tenants
        .first()
        .copied()
        .filter(|_| dc.tenants.len() > 1)?;
    sandbox.inject(Fault {
        status: Some(403),
        query_contains: Some(refused.to_string()),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    Some(refused)
}

/// The data center answers reports with 503 for a while (the others deliver meanwhile), then
/// comes back.
fn take_down(dc: &DataCenter) {
    dc.sandbox.inject(Fault {
        status: Some(503),
        count: Some(OUTAGE_REPORTS),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
}

/// Sample events through the real local API, in requests of 100, spread over the accounts,
/// each naming its own.
async fn send_samples(api: &str, datacenters: &[DataCenter], events: usize) -> Result<(), String> {
    let http = reqwest::Client::new();
    let batch: Vec<Value> = (0..events)
        .map(|i| {
            let dc = &datacenters[i % datacenters.len()];
            let n = i / datacenters.len();
            let t = dc.tenants[n % dc.tenants.len()];
            let kind = if n >= dc.tenants.len() && n % 5 == 0 {
                "deactivation"
            } else {
                "activation"
            };
            json!({"tenant_id": t, "type": kind, "account": dc.account})
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
        if kind == Kind::FusionBranding && running.reconcilers.fusion_state().await.is_none() {
            continue;
        }
        let report = running
            .reconcilers
            .run_now(kind, false)
            .await
            .map_err(|_| "reconciler busy".to_string())?;
        println!(
            "  {:<15} {:<8} drift {:>3}  actions {:>3}  skipped {:>3}  errors {:>3}  {} ms",
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

fn print_try_it(stage: &Stage) {
    let api = &stage.api;
    let dc = &stage.datacenters[0];
    println!("\nstatusd keeps running; try:");
    println!("  curl {api}/metrics");
    println!("  curl {api}/v1/status");
    println!("  curl {api}/v1/accounts");
    println!(
        "  curl -X POST {api}/v1/events -H 'Content-Type: application/json' -d '{{\"tenant_id\":\"{}\",\"type\":\"activation\",\"account\":\"{}\"}}'",
        dc.tenants.last().map(|t| t.to_string()).unwrap_or_default(),
        dc.account
    );
    println!("  curl {}/_sandbox/reports", dc.sandbox.url);
    println!("  cargo run -- accounts --api {api}");
    println!("Ctrl-C to stop.");
}

/// Events a data center has received.
fn received(sandbox: &Sandbox) -> usize {
    sandbox
        .reports()
        .iter()
        .map(|r| r.body["events"].as_array().map_or(0, Vec::len))
        .sum()
}

/// Show progress until nothing is pending: one line redrawn in place on a terminal (log lines
/// clear it first, and it is drawn again on the next tick), a line every few seconds otherwise.
/// `accepted`: how many sample events were accepted (None after the reconcilers, whose
/// re-assertions go straight to the queue).
async fn wait_drained(stage: &Stage, accepted: Option<u64>) {
    let running = &stage.running;
    let mut stderr = std::io::stderr();
    let on_terminal = stderr.is_terminal();
    let mut last_plain = tokio::time::Instant::now();
    loop {
        let st = running.queue.stats();
        let retrying = running
            .metrics
            .attempts(crate::metrics::AttemptOutcome::Retryable);
        let accepted = accepted
            .map(|a| format!("accepted {a:>4}  "))
            .unwrap_or_default();
        let per_dc: Vec<String> = stage
            .datacenters
            .iter()
            .map(|dc| format!("{} {:>4}", dc.account, received(&dc.sandbox)))
            .collect();
        let line = format!(
            "  {accepted}delivered: {}  pending {:>4}  retried {:>3}  dead {:>2}",
            per_dc.join("  "),
            st.depth,
            retrying,
            st.dead_letters
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

fn summary(stage: &Stage) {
    println!("\nwhat each data center received:");
    let mut rows = Vec::new();
    let (mut reports, mut requests, mut tenants) = (0, 0, 0);
    for dc in &stage.datacenters {
        let got = dc.sandbox.reports();
        let mut per_tenant: BTreeMap<uuid::Uuid, (usize, usize)> = BTreeMap::new();
        for r in &got {
            let e = per_tenant.entry(r.tenant_id).or_default();
            for ev in r.body["events"].as_array().into_iter().flatten() {
                if ev["activation_event"] == Value::Bool(true) {
                    e.0 += 1;
                }
                if ev["deactivation_event"] == Value::Bool(true) {
                    e.1 += 1;
                }
            }
        }
        let stats = dc.sandbox.stats();
        let mut by_status: Vec<(u16, u64)> =
            stats.by_status.iter().map(|(k, v)| (*k, *v)).collect();
        by_status.sort();
        rows.push(vec![
            dc.account.to_string(),
            dc.sandbox.url.clone(),
            got.len().to_string(),
            per_tenant.len().to_string(),
            per_tenant.values().map(|v| v.0).sum::<usize>().to_string(),
            per_tenant.values().map(|v| v.1).sum::<usize>().to_string(),
            by_status
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            stats.tokens_issued.to_string(),
        ]);
        reports += got.len();
        requests += stats.requests;
        tenants += per_tenant.len();
    }
    print_table(
        &[
            "ACCOUNT",
            "DATA CENTER",
            "REPORTS",
            "TENANTS",
            "ACTIVATIONS",
            "DEACTIVATIONS",
            "REQUESTS BY STATUS",
            "TOKENS",
        ],
        &rows,
    );
    let st = stage.running.queue.stats();
    println!(
        "\ntotals: {reports} reports for {tenants} tenants in {} data centers; {requests} platform requests; {} event(s) dead-lettered",
        stage.datacenters.len(),
        st.dead_letters
    );
}
