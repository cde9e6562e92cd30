//! `cargo bench`: durable intake and delivery, each beside its reference measured in the same
//! run (fsync per event, plain sled insert+flush, a plain sequential one-event-per-request
//! client). Figures are printed as a table; BENCHMARKS.md records them.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use statusd::config::{IntegrationSettings, Secret};
use statusd::metrics::Metrics;
use statusd::platform::{ClientOptions, PlatformClient, ReportEvent};
use statusd::queue::{EventKind, NewEvent, Queue, StoreOptions};
use statusd::sandbox::{Sandbox, SandboxOptions};
use uuid::Uuid;

fn ev(t: Uuid, n: usize) -> NewEvent {
    NewEvent {
        tenant_id: t,
        kind: EventKind::Custom,
        category: "bench".into(),
        action: format!("event {n}"),
        idempotency_key: None,
    }
}

fn row(name: &str, per_s: f64, note: &str) {
    println!("{name:<58} {per_s:>12.0}/s  {note}");
}

fn fsync_rate(dir: &std::path::Path, n: usize) -> f64 {
    let mut f = std::fs::File::create(dir.join("fsync.bin")).unwrap();
    let t = Instant::now();
    for i in 0..n {
        f.write_all(format!("event {i}\n").as_bytes()).unwrap();
        f.sync_data().unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn sled_rate(dir: &std::path::Path, n: usize) -> f64 {
    let db = sled::Config::new()
        .path(dir.join("plain-sled"))
        .cache_capacity(64 << 20)
        .open()
        .unwrap();
    let t = Instant::now();
    for i in 0..n as u64 {
        db.insert(i.to_be_bytes(), b"event".as_slice()).unwrap();
        db.flush().unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn enqueue_rate(q: &Queue, callers: usize, per_caller: usize) -> (f64, f64) {
    let before = q.flush_stats();
    let t = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let q = q.clone();
            tokio::spawn(async move {
                let tenant = Uuid::from_u128(c as u128 + 1);
                for i in 0..per_caller {
                    q.enqueue(vec![ev(tenant, i)]).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rate = (callers * per_caller) as f64 / t.elapsed().as_secs_f64();
    let after = q.flush_stats();
    let per_flush =
        (after.waiters - before.waiters) as f64 / (after.flushes - before.flushes).max(1) as f64;
    (rate, per_flush)
}

fn client(sb: &Sandbox, concurrency: usize) -> PlatformClient {
    PlatformClient::new(
        ClientOptions {
            base_url: sb.url.clone(),
            client_id: sb.client_id.clone(),
            client_secret: Secret::new(sb.client_secret.clone()),
            request_timeout: Duration::from_secs(10),
            max_concurrency: concurrency,
            integration: IntegrationSettings {
                application_code: Some("vendor.bench".into()),
                application_id: None,
                module_name: "bench".into(),
                module_version: "1".into(),
                vendor_system_name: None,
                vendor_system_version: None,
            },
        },
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    statusd::platform::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    println!(
        "statusd benchmarks ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("\n1. durable intake (queue::enqueue returns after a covering flush)");
    let fsync = fsync_rate(dir.path(), 2000);
    row(
        "reference: small write + fsync per event, sequential",
        fsync,
        "",
    );
    let plain = sled_rate(dir.path(), 2000);
    row("reference: plain sled insert + flush per event", plain, "");
    let q = Queue::open(&dir.path().join("queue"), StoreOptions::default()).unwrap();
    let (one, f1) = enqueue_rate(&q, 1, 2000).await;
    row(
        "statusd enqueue, 1 caller",
        one,
        &format!("{f1:.1} events/flush"),
    );
    let (many, f64_) = enqueue_rate(&q, 64, 500).await;
    row(
        "statusd enqueue, 64 concurrent callers",
        many,
        &format!(
            "{f64_:.1} events/flush, {:.1}x fsync-per-event",
            many / fsync
        ),
    );
    drop(q);

    println!("\n2. delivery into the sandbox on loopback (20 000 events, 200 tenants)");
    let sb = Sandbox::start(SandboxOptions {
        tenants: 260,
        ..Default::default()
    })
    .await
    .unwrap();
    let tenants: Vec<Uuid> = sb.tenant_ids(None).into_iter().take(200).collect();
    // Plain client: one event per request, sequential, as the vendor documentation shows.
    let plain_client = client(&sb, 1);
    let event = vec![ReportEvent {
        category: "activation".into(),
        action: "activated integration".into(),
        activation_event: true,
        deactivation_event: false,
    }];
    let n_plain = 2000;
    let t = Instant::now();
    for i in 0..n_plain {
        plain_client
            .report_status(tenants[i % tenants.len()], &event)
            .await
            .unwrap();
    }
    let plain_rate = n_plain as f64 / t.elapsed().as_secs_f64();
    row(
        "reference: plain sequential client, 1 event per request",
        plain_rate,
        "(2 000 events)",
    );
    // Sandbox capacity: reports of 100 events from 8 concurrent senders.
    let cap_client = client(&sb, 8);
    let batch: Vec<ReportEvent> = (0..100).map(|_| event[0].clone()).collect();
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..8 {
        let c = cap_client.clone();
        let b = batch.clone();
        let ts = tenants.clone();
        set.spawn(async move {
            for i in 0..25 {
                c.report_status(ts[(w * 25 + i) % ts.len()], &b)
                    .await
                    .unwrap();
            }
        });
    }
    while set.join_next().await.is_some() {}
    let capacity = (8 * 25 * 100) as f64 / t.elapsed().as_secs_f64();
    row(
        "reference: what the sandbox absorbs (100-event reports, 8 senders)",
        capacity,
        "",
    );
    // statusd: a full queue drained by the daemon.
    let store = dir.path().join("daemon");
    let toml = format!(
        "[platform]\nbase_url = \"{}\"\nclient_id = \"{}\"\n[integration]\napplication_code = \"vendor.bench\"\n[store]\npath = \"{}\"\n",
        sb.url,
        sb.client_id,
        store.display()
    );
    {
        let q = Queue::open(&store, StoreOptions::default()).unwrap();
        let all: Vec<NewEvent> = (0..20_000).map(|i| ev(tenants[i % 200], i)).collect();
        for chunk in all.chunks(1000) {
            q.enqueue(chunk.to_vec()).await.unwrap();
        }
    }
    let settings = statusd::config::load_from_str(
        &toml,
        &[(
            "STATUSD__PLATFORM__CLIENT_SECRET",
            sb.client_secret.as_str(),
        )],
        statusd::config::Purpose::Run,
    )
    .unwrap();
    let reports_before = sb.reports().len();
    let t = Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = statusd::app::start(settings, Some(listener), false)
        .await
        .unwrap();
    while running.queue.stats().depth > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = 20_000.0 / t.elapsed().as_secs_f64();
    row(
        "statusd: full queue drained (batches of up to 100)",
        rate,
        &format!(
            "{:.0}x plain client, {:.2} of sandbox capacity, {} reports",
            rate / plain_rate,
            rate / capacity,
            sb.reports().len() - reports_before
        ),
    );
    running.shutdown().await;
}
