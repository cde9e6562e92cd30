//! `statusd demo`: the sandbox platform and the daemon in one process on loopback, a temporary
//! store, sample events sent through the real local API with faults injected, live progress,
//! one reconcile of each kind, and a summary of what the platform received.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client_cli::print_table;
use crate::config::{self, Purpose};
use crate::exit;
use crate::reconcile::Kind;
use crate::sandbox::{Fault, Sandbox, SandboxOptions};

pub async fn run(once: bool, events: usize, keep_metrics: Option<std::path::PathBuf>) -> ExitCode {
    match demo(once, events.max(1), keep_metrics).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("statusd demo: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

async fn demo(
    once: bool,
    events: usize,
    keep_metrics: Option<std::path::PathBuf>,
) -> Result<(), String> {
    let sandbox = Sandbox::start(SandboxOptions {
        tenants: 60,
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
    println!("statusd demo");
    println!(
        "  sandbox platform  {}   (credentials generated for this run)",
        sandbox.url
    );
    println!("  statusd local API {api}");
    println!("  temporary store   {}", store.path().display());

    // Faults so the retries show: a throttling burst, some server errors, dropped connections,
    // and one tenant whose reports the platform refuses for good.
    let customers = sandbox.tenant_ids(Some("customer"));
    let refused_tenant = customers.first().copied();
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
    if let Some(t) = refused_tenant {
        sandbox.inject(Fault {
            status: Some(403),
            query_contains: Some(t.to_string()),
            path_contains: Some("/status".into()),
            ..Default::default()
        });
    }
    println!("  faults injected   503+Retry-After x4, 15% 500s, dropped connections, tenant {} refused (403)", refused_tenant.map(|t| t.to_string()).unwrap_or_default());
    println!();

    // Sample events through the real local API.
    let http = reqwest::Client::new();
    let mut batch = Vec::new();
    for i in 0..events {
        let t = customers[i % customers.len().max(1)];
        let kind = if i >= customers.len() && i % 5 == 0 {
            "deactivation"
        } else {
            "activation"
        };
        batch.push(json!({"tenant_id": t, "type": kind}));
    }
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
    wait_drained(&running, Some(events as u64)).await;

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
    // The status reconcile re-asserted every tenant's state: let those reports go out too.
    wait_drained(&running, None).await;

    summary(&sandbox, &running);
    if let Some(path) = keep_metrics {
        let text = http
            .get(format!("{api}/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if once {
        running.shutdown().await;
        return Ok(());
    }
    println!("\nstatusd keeps running; try:");
    println!("  curl {api}/metrics");
    println!("  curl {api}/v1/status");
    println!(
        "  curl -X POST {api}/v1/events -H 'Content-Type: application/json' -d '{{\"tenant_id\":\"{}\",\"type\":\"activation\"}}'",
        customers.get(1).map(|t| t.to_string()).unwrap_or_default()
    );
    println!("  curl {}/_sandbox/reports", sandbox.url);
    println!("  cargo run -- status --api {api}");
    println!("Ctrl-C to stop.");
    crate::app::shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}

/// Show a live progress line until nothing is pending.
/// `accepted`: how many sample events were accepted (None after the reconcilers, whose
/// re-assertions go straight to the queue).
async fn wait_drained(running: &crate::app::Running, accepted: Option<u64>) {
    let mut stderr = std::io::stderr();
    loop {
        let st = running.queue.stats();
        let delivered = running.metrics.events_delivered.get();
        let retrying = running
            .metrics
            .delivery_attempts
            .get_or_create(&crate::metrics::label("outcome", "retryable"))
            .get();
        let accepted = accepted
            .map(|a| format!("accepted {a:>5}  "))
            .unwrap_or_default();
        let _ = write!(
            stderr,
            "\r  {accepted}delivered {:>5}  pending {:>5}  retried reports {:>4}  dead letters {:>3}   ",
            delivered,
            st.depth,
            retrying,
            st.dead_letters
        );
        let _ = stderr.flush();
        if st.depth == 0 {
            let _ = writeln!(stderr);
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
