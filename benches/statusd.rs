//! `cargo bench`: every statusd figure beside its reference measured in the same run (fsync per
//! event, plain sled insert+flush, a plain sequential one-event-per-request client, what the
//! sandbox itself absorbs). Figures are printed as tables; BENCHMARKS.md records them.
//!
//! `BENCH_ONLY=intake,ingest,delivery,recovery,reconcile,footprint,accounts,runtime,storeops,fusion,postgres,cluster,lists,ceiling`
//! runs some sections only;
//! `BENCH_BIG=N` sets the size of the large store (default 1 000 000 events).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use statusd::config::{IntegrationSettings, Secret};
use statusd::metrics::Metrics;
use statusd::platform::{ClientOptions, PlatformClient, ReportEvent};
use statusd::sandbox::{Sandbox, SandboxOptions};
use statusd::store::{dir_size, EventKind, NewEvent, Queue, StoreOptions, Take};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_statusd");

#[path = "../tests/common/mod.rs"]
mod common;
use common::pg;

fn ev(t: Uuid, n: usize) -> NewEvent {
    NewEvent {
        tenant_id: t,
        kind: EventKind::Custom,
        category: "bench".into(),
        action: format!("event {n}"),
        idempotency_key: None,
        occurred_at_ms: None,
        account: None,
    }
}

fn row(name: &str, value: String, note: &str) {
    println!("{name:<62} {value:>14}  {note}");
}

fn rate(name: &str, per_s: f64, note: &str) {
    row(name, format!("{per_s:.0}/s"), note);
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

fn fsync_rate(dir: &Path, n: usize) -> f64 {
    let mut f = std::fs::File::create(dir.join("fsync.bin")).unwrap();
    let t = Instant::now();
    for i in 0..n {
        f.write_all(format!("event {i}\n").as_bytes()).unwrap();
        f.sync_data().unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn sled_rate(dir: &Path, n: usize) -> f64 {
    let _ = std::fs::remove_dir_all(dir.join("plain-sled"));
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

/// What sled alone takes on this machine, written as statusd's writer writes: one thread,
/// groups of 64 events as one batch, each group flushed and its log synced (`fdatasync`)
/// before the next. `statusd_keys`: each event as statusd stores it on intake (a record of
/// about 350 bytes under a time-ordered key, a pending key under its tenant, 64 tenants in
/// turn, and the tenant's state); else one time-ordered key per event, the least any layout
/// could write. Events per second over `n` events.
fn sled_floor(dir: &Path, statusd_keys: bool, n: u64) -> f64 {
    let path = dir.join("sled-floor");
    let _ = std::fs::remove_dir_all(&path);
    let db = sled::Config::new()
        .path(&path)
        .cache_capacity(64 << 20)
        .mode(sled::Mode::HighThroughput)
        .open()
        .unwrap();
    let log = std::fs::File::open(path.join("db")).unwrap();
    let record = vec![b'r'; 350];
    let state = vec![b's'; 150];
    let t = Instant::now();
    let mut seq = 0u64;
    while seq < n {
        let mut batch = sled::Batch::default();
        for _ in 0..64 {
            seq += 1;
            let tenant = [(seq % 64) as u8; 16];
            let mut key = b"e".to_vec();
            key.extend_from_slice(&seq.to_be_bytes());
            batch.insert(key, record.clone());
            if statusd_keys {
                let mut pending = b"p".to_vec();
                pending.extend_from_slice(&tenant);
                pending.extend_from_slice(&seq.to_be_bytes());
                batch.insert(pending, &[0u8; 16]);
                let mut key = b"t".to_vec();
                key.extend_from_slice(&tenant);
                batch.insert(key, state.clone());
            }
        }
        db.apply_batch(batch).unwrap();
        db.flush().unwrap();
        log.sync_data().unwrap();
    }
    let rate = seq as f64 / t.elapsed().as_secs_f64();
    drop(db);
    let _ = std::fs::remove_dir_all(&path);
    rate
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
            credentials: Default::default(),
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

/// Settings for an in-process daemon on `store`, talking to `platform` (a sandbox URL, or a
/// closed port when only intake is measured).
fn settings(
    platform: &str,
    client_id: &str,
    secret: &str,
    store: &Path,
) -> statusd::config::Settings {
    let toml = format!(
        "[platform]\nbase_url = \"{platform}\"\nclient_id = \"{client_id}\"\n[integration]\napplication_code = \"vendor.bench\"\n[store]\npath = \"{}\"\n",
        store.display()
    );
    statusd::config::load_from_str(
        &toml,
        &[("STATUSD__PLATFORM__CLIENT_SECRET", secret)],
        statusd::config::Purpose::Run,
    )
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `clients` keep-alive clients each posting `requests` bodies of `per_request` events.
async fn http_ingest(
    api: &str,
    tenants: &[Uuid],
    clients: usize,
    requests: usize,
    per_request: usize,
) -> (f64, Duration, Duration) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let url = format!("{api}/v1/events");
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let http = http.clone();
        let url = url.clone();
        let tenant = tenants[c % tenants.len()];
        set.spawn(async move {
            let mut latencies = Vec::with_capacity(requests);
            for r in 0..requests {
                let body = if per_request == 1 {
                    format!(
                        r#"{{"tenant_id":"{tenant}","type":"custom","category":"bench","action":"event {r}"}}"#
                    )
                } else {
                    let items: Vec<String> = (0..per_request)
                        .map(|i| {
                            format!(
                                r#"{{"tenant_id":"{tenant}","type":"custom","category":"bench","action":"event {r}.{i}"}}"#
                            )
                        })
                        .collect();
                    format!("[{}]", items.join(","))
                };
                let started = Instant::now();
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 202);
                resp.bytes().await.unwrap();
                latencies.push(started.elapsed());
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(l) = set.join_next().await {
        all.extend(l.unwrap());
    }
    let elapsed = t.elapsed();
    all.sort();
    let events = (clients * requests * per_request) as f64;
    (
        events / elapsed.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

/// `conns` keep-alive connections each sending `requests` single-event POSTs written by hand
/// over TCP: a load generator much lighter than an HTTP client library.
async fn raw_ingest(
    addr: std::net::SocketAddr,
    tenants: &[Uuid],
    conns: usize,
    requests: usize,
) -> (f64, Duration, Duration) {
    let tenants = tenants.to_vec();
    raw_load(addr, conns, requests, "HTTP/1.1 202", move |c, r| {
        let tenant = tenants[c % tenants.len()];
        let body = format!(
            r#"{{"tenant_id":"{tenant}","type":"custom","category":"bench","action":"raw {r}"}}"#
        );
        format!(
            "POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    })
    .await
}

/// `conns` keep-alive connections each sending `requests` requests made by `request(conn, n)`
/// by hand over TCP, each answer expected to start with `status`: rate, p50, p99.
async fn raw_load(
    addr: std::net::SocketAddr,
    conns: usize,
    requests: usize,
    status: &'static str,
    request: impl Fn(usize, usize) -> String + Send + Sync + 'static,
) -> (f64, Duration, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = Arc::new(request);
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..conns {
        let request = request.clone();
        set.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mut latencies = Vec::with_capacity(requests);
            let mut buf = vec![0u8; 4096];
            for r in 0..requests {
                let req = request(c, r);
                let started = Instant::now();
                stream.write_all(req.as_bytes()).await.unwrap();
                // Read one whole response: headers, then content-length bytes of body.
                let mut got = 0;
                loop {
                    let n = stream.read(&mut buf[got..]).await.unwrap();
                    assert!(n > 0, "connection closed");
                    got += n;
                    let text = String::from_utf8_lossy(&buf[..got]);
                    if let Some(end) = text.find("\r\n\r\n") {
                        assert!(text.starts_with(status), "{text}");
                        let len: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if got >= end + 4 + len {
                            break;
                        }
                    }
                }
                latencies.push(started.elapsed());
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(l) = set.join_next().await {
        all.extend(l.unwrap());
    }
    let elapsed = t.elapsed();
    all.sort();
    (
        (conns * requests) as f64 / elapsed.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

/// Resident set size and its peak of a process, from /proc.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The real binary as a service would run it, with a notify socket to see READY.
struct Daemon {
    child: Child,
    api: String,
    notify: UnixDatagram,
    started: Instant,
}

impl Daemon {
    fn spawn(dir: &Path, store: &Path, env: &[(&str, String)]) -> Daemon {
        Daemon::spawn_with(dir, store, env, &[])
    }

    /// With more arguments for `statusd run` (e.g. `--config PATH`).
    fn spawn_with(dir: &Path, store: &Path, env: &[(&str, String)], args: &[&str]) -> Daemon {
        let sock_path = dir.join(format!("notify-{}.sock", Uuid::new_v4().simple()));
        let notify = UnixDatagram::bind(&sock_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let child = Command::new(BIN)
            .arg("run")
            .args(args)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_LOG", "warn")
            .env("STATUSD__STORE__PATH", store)
            .env("STATUSD__API__LISTEN", format!("127.0.0.1:{port}"))
            .env("STATUSD__INTEGRATION__APPLICATION_CODE", "vendor.bench")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon {
            child,
            api: format!("http://127.0.0.1:{port}"),
            notify,
            started,
        }
    }

    /// Time from spawn to READY=1 on the notify socket.
    fn ready(&self) -> Duration {
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                    return self.started.elapsed();
                }
            }
        }
        panic!("no READY within 60 s");
    }

    /// Time from spawn to the first 200 from /readyz.
    async fn readyz(&self, http: &reqwest::Client) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{}/readyz", self.api)).send().await {
                if r.status() == 200 {
                    return self.started.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("/readyz not 200 within 60 s");
    }

    fn rss(&self) -> (u64, u64) {
        rss(self.child.id())
    }

    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "daemon exit: {status}");
    }
}

fn platform_env(sb: &Sandbox) -> Vec<(&'static str, String)> {
    vec![
        ("STATUSD__PLATFORM__BASE_URL", sb.url.clone()),
        ("STATUSD__PLATFORM__CLIENT_ID", sb.client_id.clone()),
        ("STATUSD__PLATFORM__CLIENT_SECRET", sb.client_secret.clone()),
    ]
}

fn unreachable_platform_env() -> Vec<(&'static str, String)> {
    vec![
        ("STATUSD__PLATFORM__BASE_URL", "http://127.0.0.1:9".into()),
        ("STATUSD__PLATFORM__CLIENT_ID", "bench".into()),
        ("STATUSD__PLATFORM__CLIENT_SECRET", "bench".into()),
    ]
}

/// Fill a store with `n` pending events over `tenants` tenants, in chunks of 1000.
async fn fill(store: &Path, n: usize, tenants: &[Uuid]) -> Duration {
    fill_with(store, n, tenants, ev).await
}

/// Fill a store with `n` events made by `make` (tenant, index), in chunks of 1000.
async fn fill_with(
    store: &Path,
    n: usize,
    tenants: &[Uuid],
    make: impl Fn(Uuid, usize) -> NewEvent,
) -> Duration {
    let q = Queue::open(store, StoreOptions::default()).unwrap();
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        let chunk: Vec<NewEvent> = (done..(done + 1000).min(n))
            .map(|i| make(tenants[i % tenants.len()], i))
            .collect();
        done += chunk.len();
        q.enqueue(chunk).await.unwrap();
        if done % 100_000 == 0 {
            eprint!("\r  filling the store: {done}/{n}");
        }
    }
    eprintln!();
    t.elapsed()
}

async fn intake(dir: &Path) {
    println!("\n1a. durable intake in the library (Queue::enqueue returns after a covering flush)");
    let fsync = fsync_rate(dir, 2000);
    rate(
        "reference: small write + fsync per event, sequential",
        fsync,
        "",
    );
    let plain = sled_rate(dir, 2000);
    rate("reference: plain sled insert + flush per event", plain, "");
    let _ = std::fs::remove_dir_all(dir.join("queue"));
    let q = Queue::open(&dir.join("queue"), StoreOptions::default()).unwrap();
    let (one, f1) = enqueue_rate(&q, 1, 2000).await;
    rate(
        "statusd enqueue, 1 caller",
        one,
        &format!("{f1:.1} events/flush"),
    );
    let (many, f64_) = enqueue_rate(&q, 64, 500).await;
    rate(
        "statusd enqueue, 64 concurrent callers",
        many,
        &format!(
            "{f64_:.1} events/flush, {:.1}x fsync-per-event",
            many / fsync
        ),
    );
}

async fn ingest(dir: &Path) {
    println!("\n1b. durable intake through POST /v1/events (202 only after the flush)");
    println!("    (platform unreachable, so delivery does not compete for the 2 cores)");
    let fsync = fsync_rate(dir, 2000);
    rate(
        "reference: small write + fsync per event, sequential",
        fsync,
        "",
    );
    let _ = std::fs::remove_dir_all(dir.join("ingest"));
    let s = settings("http://127.0.0.1:9", "bench", "bench", &dir.join("ingest"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = statusd::app::start(s, Some(listener), false).await.unwrap();
    let api = format!("http://{}", running.api_addr);
    let tenants: Vec<Uuid> = (0..64).map(|i| Uuid::from_u128(0xbe00 + i)).collect();
    let f0 = running.queue.flush_stats();
    let (r, p50, p99) = http_ingest(&api, &tenants, 64, 300, 1).await;
    let f1 = running.queue.flush_stats();
    let per_flush = (f1.waiters - f0.waiters) as f64 / (f1.flushes - f0.flushes).max(1) as f64;
    rate(
        "statusd POST single events, 64 keep-alive clients",
        r,
        &format!(
            "p50 {} p99 {}, {per_flush:.1} requests/flush, {:.1}x fsync-per-event",
            ms(p50),
            ms(p99),
            r / fsync
        ),
    );
    let (r, p50, p99) = raw_ingest(running.api_addr, &tenants, 64, 300).await;
    rate(
        "statusd POST single events, 64 connections, minimal client",
        r,
        &format!(
            "p50 {} p99 {}, {:.1}x fsync-per-event (pre-built requests over raw TCP, so the \
             load generator takes less of the 2 cores)",
            ms(p50),
            ms(p99),
            r / fsync
        ),
    );
    // The server's own ceiling, with the same client, in the same run: GET /livez.
    let (ceiling, lp50, lp99) = raw_load(running.api_addr, 64, 300, "HTTP/1.1 200", |_, _| {
        "GET /livez HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".to_string()
    })
    .await;
    rate(
        "reference: GET /livez, 64 connections, minimal client",
        ceiling,
        &format!(
            "p50 {} p99 {}: the HTTP server's ceiling",
            ms(lp50),
            ms(lp99)
        ),
    );
    let (durable, _, dp99) = raw_ingest(running.api_addr, &tenants, 64, 300).await;
    row(
        "durable intake / the server's ceiling (same client, same run)",
        format!("{:.2}", durable / ceiling),
        &format!(
            "{durable:.0}/s against {ceiling:.0}/s; intake p99 {}; goal >= 0.5 with p99 <= 5 ms",
            ms(dp99)
        ),
    );
    let (r, p50, p99) = http_ingest(&api, &tenants, 16, 40, 100).await;
    rate(
        "statusd POST arrays of 100, 16 keep-alive clients",
        r,
        &format!("p50 {} p99 {} per request", ms(p50), ms(p99)),
    );
    let (r, p50, p99) = http_ingest(&api, &tenants, 1, 2000, 1).await;
    rate(
        "statusd POST single events, 1 client",
        r,
        &format!("p50 {} p99 {}", ms(p50), ms(p99)),
    );
    running.shutdown().await;
}

/// Sum and count of a histogram in a classic-format exposition.
/// The mean of a histogram over all its label sets (e.g. every data center).
fn histogram_mean(metrics: &str, name: &str) -> f64 {
    let value = |suffix: &str| {
        let series = format!("{name}_{suffix}");
        metrics
            .lines()
            .filter(|l| {
                l.strip_prefix(&series)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next())
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>()
    };
    value("sum") / value("count").max(1.0)
}

async fn delivery(dir: &Path) {
    for latency_ms in [0u64, 20] {
        delivery_at(dir, latency_ms).await;
    }
}

/// Drain 20 000 events over 200 tenants with the platform answering after `latency_ms`
/// (0: loopback as is; 20: a platform a WAN round trip away), beside the plain client and the
/// sandbox's own capacity at the same latency.
async fn delivery_at(dir: &Path, latency_ms: u64) {
    println!(
        "\n2. delivery into the sandbox on loopback, platform latency {latency_ms} ms (20 000 events, 200 tenants)"
    );
    let sb = Sandbox::start(SandboxOptions {
        tenants: 260,
        ..Default::default()
    })
    .await
    .unwrap();
    if latency_ms > 0 {
        sb.inject(statusd::sandbox::Fault {
            delay_ms: Some(latency_ms),
            path_contains: Some("integration_management".into()),
            ..Default::default()
        });
    }
    let tenants: Vec<Uuid> = sb.tenant_ids(None).into_iter().take(200).collect();
    // Plain client: one event per request, sequential, as the vendor documentation shows.
    let plain_client = client(&sb, 1);
    let event = vec![ReportEvent {
        category: "activation".into(),
        action: "activated integration".into(),
        activation_event: true,
        deactivation_event: false,
    }];
    let n_plain = if latency_ms == 0 { 2000 } else { 100 };
    let t = Instant::now();
    for i in 0..n_plain {
        plain_client
            .report_status(tenants[i % tenants.len()], &event)
            .await
            .unwrap();
    }
    let plain_rate = n_plain as f64 / t.elapsed().as_secs_f64();
    rate(
        "reference: plain sequential client, 1 event per request",
        plain_rate,
        &format!("({n_plain} events, keep-alive, token reused)"),
    );
    // Sandbox capacity: reports of 100 events from 8 concurrent senders (statusd's default
    // platform.max_concurrency), nothing stored.
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
    rate(
        "reference: sandbox capacity (100-event reports, 8 senders)",
        capacity,
        "",
    );
    // statusd: a full queue drained by the daemon.
    let store = dir.join(format!("daemon-{latency_ms}ms"));
    let _ = std::fs::remove_dir_all(&store);
    fill(&store, 20_000, &tenants).await;
    if latency_ms == 0 {
        // The store alone: take and acknowledge every batch with 8 concurrent lanes, no HTTP.
        let copy = dir.join("store-only");
        let _ = std::fs::remove_dir_all(&copy);
        fill(&copy, 20_000, &tenants).await;
        store_alone(
            &copy,
            &tenants,
            "reference: the store alone, take + ack, 8 lanes, no HTTP",
        )
        .await;
        // The same with activations and deactivations in turn: each batch's take reads the
        // tenant's newest decision sent, and each ack writes the tenant's state.
        let _ = std::fs::remove_dir_all(&copy);
        let per_round = tenants.len();
        fill_with(&copy, 20_000, &tenants, |t, i| NewEvent {
            kind: if (i / per_round) % 2 == 0 {
                EventKind::Activation
            } else {
                EventKind::Deactivation
            },
            ..ev(t, i)
        })
        .await;
        store_alone(
            &copy,
            &tenants,
            "reference: the same, every event a decision",
        )
        .await;
    }
    let s = settings(&sb.url, &sb.client_id, &sb.client_secret, &store);
    let reports_before = sb.reports().len();
    let t = Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = statusd::app::start(s, Some(listener), false).await.unwrap();
    let started = t.elapsed();
    while running.queue.stats().depth > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let total = t.elapsed();
    let metrics = reqwest::get(format!("http://{}/metrics", running.api_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = 20_000.0 / total.as_secs_f64();
    rate(
        "statusd: full queue drained (start to empty, batches of up to 100)",
        r,
        &format!(
            "{:.1}x plain client, {:.2} of sandbox capacity",
            r / plain_rate,
            r / capacity,
        ),
    );
    row(
        "  of which: start, reports, mean report request",
        ms(started),
        &format!(
            "{} reports, {} mean request",
            sb.reports().len() - reports_before,
            ms(Duration::from_secs_f64(histogram_mean(
                &metrics,
                "statusd_delivery_request_duration_seconds"
            )))
        ),
    );
    running.shutdown().await;
}

/// Take and acknowledge the 20 000 events of the filled store at `path` with 8 lanes, no HTTP,
/// and print the rate as `label`.
async fn store_alone(path: &Path, tenants: &[Uuid], label: &str) {
    let q = Queue::open(path, StoreOptions::default()).unwrap();
    let t = Instant::now();
    let (take, ack) = deliver_all(&q, tenants, 8, 20_000).await;
    rate(
        label,
        20_000.0 / t.elapsed().as_secs_f64(),
        &format!(
            "mean take {} ack {} per 100-event batch",
            ms(take / 200),
            ms(ack / 200)
        ),
    );
}

async fn recovery(dir: &Path, big: usize) {
    println!("\n3-4. recovery and memory with {big} events pending (the real binary)");
    let http = reqwest::Client::new();
    let empty = dir.join("empty-store");
    let d = Daemon::spawn(dir, &empty, &unreachable_platform_env());
    let ready = d.ready();
    d.readyz(&http).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle, _) = d.rss();
    row("time to READY=1, empty store", ms(ready), "");
    row(
        "RSS idle (empty store, 2 s after READY)",
        mb(idle),
        "target < 20 MB",
    );
    d.stop();

    let store = dir.join(format!("big-store-{big}"));
    let tenants: Vec<Uuid> = (0..1000).map(|i| Uuid::from_u128(0xb16_0000 + i)).collect();
    if !store.exists() {
        let filled = fill(&store, big, &tenants).await;
        row(
            "filling the store through Queue::enqueue (chunks of 1000)",
            format!("{:.0}/s", big as f64 / filled.as_secs_f64()),
            &format!(
                "{:.1} s, on disk {}",
                filled.as_secs_f64(),
                mb(dir_size(&store))
            ),
        );
    }
    let d = Daemon::spawn(dir, &store, &unreachable_platform_env());
    let to_readyz = d.readyz(&http).await;
    row(
        "start to /readyz 200 with the store full",
        ms(to_readyz),
        "target < 1 s",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status: serde_json::Value = http
        .get(format!("{}/v1/status", d.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (loaded, peak) = d.rss();
    row(
        "RSS with the store full (3 s after ready)",
        mb(loaded),
        &format!(
            "peak {}, depth reported {}, target < 100 MB",
            mb(peak),
            status["queue"]["depth"]
        ),
    );
    d.stop();
}

async fn reconcile(dir: &Path) {
    println!("\n5. reconcile against the sandbox (the real binary, platform.max_concurrency 8)");
    let sb = Sandbox::start(SandboxOptions {
        tenants: 10_000,
        page_limit: 100,
        ..Default::default()
    })
    .await
    .unwrap();
    let partners: Vec<String> = sb
        .tenant_ids(Some("partner"))
        .into_iter()
        .take(500)
        .map(|t| t.to_string())
        .collect();
    let mut env = platform_env(&sb);
    env.push(("STATUSD__PLATFORM__MAX_CONCURRENCY", "8".into()));
    env.push(("STATUSD__RECONCILE__BRANDING__TARGETS", partners.join(",")));
    env.push(("STATUSD__BRANDING__COMPANY_NAME", "Bench Cloud".into()));
    env.push(("STATUSD__BRANDING__COLOR", "1A6FB0".into()));
    env.push((
        "STATUSD__BRANDING__UPSELL_URL",
        "https://shop.example.com/buy".into(),
    ));
    let http = reqwest::Client::new();
    let d = Daemon::spawn(dir, &dir.join("reconcile-store"), &env);
    d.readyz(&http).await;
    let pid = d.child.id();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(pid).0, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let reqs0 = sb.requests_to("tenants");
    let (took, report) = timed_post(&http, format!("{}/v1/reconcile/tenants", d.api)).await;
    sampler.abort();
    let max_rss = peak.load(std::sync::atomic::Ordering::Relaxed);
    row(
        "full tenant reconcile, 10 000 tenants",
        ms(took),
        &format!(
            "outcome {}, {} tenant requests, RSS during it up to {}, target < 10 s",
            report["outcome"],
            sb.requests_to("tenants") - reqs0,
            mb(max_rss)
        ),
    );
    let (took, report) = timed_post(&http, format!("{}/v1/reconcile/tenants", d.api)).await;
    row(
        "delta tenant reconcile, nothing changed",
        ms(took),
        &format!("outcome {}", report["outcome"]),
    );
    let stats0 = sb.stats();
    let (took, report) = timed_post(&http, format!("{}/v1/reconcile/branding", d.api)).await;
    let stats1 = sb.stats();
    row(
        "branding reconcile, 500 partner tenants (first apply)",
        ms(took),
        &format!(
            "outcome {}, {} requests, at most {} at once, target < 10 s",
            report["outcome"],
            stats1.requests - stats0.requests,
            stats1.max_in_flight
        ),
    );
    let (took, report) = timed_post(
        &http,
        format!("{}/v1/reconcile/branding?dry_run=true", d.api),
    )
    .await;
    row(
        "branding dry run afterwards, 500 partner tenants",
        ms(took),
        &format!(
            "drift items {}",
            report["drift"].as_array().map_or(0, |a| a.len())
        ),
    );
    let (now, peak) = d.rss();
    row(
        "RSS after the reconciles",
        mb(now),
        &format!("peak {} (VmHWM), target < 100 MB", mb(peak)),
    );
    d.stop();
}

async fn footprint(dir: &Path, big: usize) {
    println!("\n6. size, start, and the store after {big} events enqueued, delivered, compacted");
    let size = std::fs::metadata(BIN).unwrap().len();
    row(
        "binary size (bench profile = release: stripped, thin LTO)",
        mb(size),
        "",
    );
    let store = dir.join("compact-store");
    let tenants: Vec<Uuid> = (0..1000).map(|i| Uuid::from_u128(0xc0_0000 + i)).collect();
    fill(&store, big, &tenants).await;
    let q = open_compacting_at_once(&store);
    let full = q.size().await;
    let t = Instant::now();
    deliver_all(&q, &tenants, 32, big).await;
    let acked = t.elapsed();
    let after_delivery = q.size().await;
    let t = Instant::now();
    let removed = q.compact(statusd::store::now_ms() + 1).await.unwrap();
    q.sync().await.unwrap();
    let compact_took = t.elapsed();
    let after_compaction = q.size().await;
    drop(q);
    row("store size with every event pending", mb(full), "");
    row(
        "store size after every event was acknowledged",
        mb(after_delivery),
        &format!("acks took {:.1} s", acked.as_secs_f64()),
    );
    row(
        "store size after compaction",
        mb(after_compaction),
        &format!(
            "{removed} records removed in {:.1} s; files on disk {}",
            compact_took.as_secs_f64(),
            mb(dir_size(&store))
        ),
    );
    let q = Queue::open(&store, StoreOptions::default()).unwrap();
    row(
        "store size after reopening",
        mb(q.size().await),
        &format!("depth {}", q.stats().depth),
    );
    drop(q);
    // A second round of the same work: sled reuses the space compaction freed, so the files
    // should not grow again.
    fill(&store, big, &tenants).await;
    let q = open_compacting_at_once(&store);
    deliver_all(&q, &tenants, 32, big).await;
    q.compact(statusd::store::now_ms() + 1).await.unwrap();
    q.sync().await.unwrap();
    row(
        "store size after a second round (enqueue, deliver, compact)",
        mb(q.size().await),
        &format!("files on disk {}", mb(dir_size(&store))),
    );
}

/// POST with an empty body; the time to the answer and its JSON.
async fn timed_post(http: &reqwest::Client, url: String) -> (Duration, serde_json::Value) {
    let t = Instant::now();
    let v = http.post(url).send().await.unwrap().json().await.unwrap();
    (t.elapsed(), v)
}

/// A store whose delivered events may be compacted away at once (no retention).
fn open_compacting_at_once(store: &Path) -> Queue {
    let opts = StoreOptions {
        delivered_retention: Duration::ZERO,
        ..StoreOptions::default()
    };
    Queue::open(store, opts).unwrap()
}

/// Take and acknowledge every pending batch of `tenants` with `lanes` concurrent "lanes";
/// returns the time spent taking and acknowledging, summed over the lanes.
async fn deliver_all(
    q: &Queue,
    tenants: &[Uuid],
    lanes: usize,
    total: usize,
) -> (Duration, Duration) {
    let delivered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let q = q.clone();
        let mine: Vec<Uuid> = tenants.iter().skip(lane).step_by(lanes).copied().collect();
        let delivered = delivered.clone();
        set.spawn(async move {
            let (mut take, mut ack) = (Duration::ZERO, Duration::ZERO);
            for tenant in mine {
                loop {
                    let t0 = Instant::now();
                    let Take::Ready(batch) = q.take_batch(&tenant, 100).await.unwrap() else {
                        break;
                    };
                    let t1 = Instant::now();
                    q.ack_delivered(&batch).await.unwrap();
                    take += t1 - t0;
                    ack += t1.elapsed();
                    let n = delivered
                        .fetch_add(batch.events.len(), std::sync::atomic::Ordering::Relaxed)
                        + batch.events.len();
                    if n % 100_000 == 0 {
                        eprint!("\r  delivering: {n}/{total}");
                    }
                }
            }
            (take, ack)
        });
    }
    let (mut take, mut ack) = (Duration::ZERO, Duration::ZERO);
    while let Some(r) = set.join_next().await {
        let (a, b) = r.unwrap();
        take += a;
        ack += b;
    }
    assert_eq!(delivered.load(std::sync::atomic::Ordering::Relaxed), total);
    (take, ack)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    statusd::platform::install_crypto_provider();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|o| o.trim() == s);
    let big: usize = std::env::var("BENCH_BIG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // BENCH_DIR keeps the stores between runs (a full store is reused, not refilled).
    let temp = tempfile::tempdir().unwrap();
    let dir_path = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir_path).unwrap();
    let dir = &dir_path;
    println!(
        "statusd benchmarks ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    if want("intake") {
        intake(dir).await;
    }
    if want("ingest") {
        ingest(dir).await;
    }
    if want("delivery") {
        delivery(dir).await;
    }
    if want("recovery") {
        recovery(dir, big).await;
    }
    if want("reconcile") {
        reconcile(dir).await;
    }
    if want("footprint") {
        footprint(dir, big).await;
    }
    if want("accounts") {
        accounts(dir).await;
    }
    if want("runtime") {
        runtime_accounts(dir).await;
    }
    if want("storeops") {
        store_ops(dir, big).await;
    }
    if want("fusion") {
        fusion(dir).await;
    }
    if want("postgres") {
        postgres(dir).await;
    }
    if want("cluster") {
        cluster(dir).await;
    }
    if want("lists") {
        lists(dir, big).await;
    }
    if want("ceiling") {
        ceiling(dir).await;
    }
}

/// What wrk printed of a run: requests/s, the p50 and p99 latency in ms, answers not 2xx.
struct Wrk {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    not_2xx: u64,
}

/// `wrk -t2 -c64 -d{secs}s --latency` at `url`, with a Lua `script` if given.
fn wrk(url: &str, secs: u32, script: Option<&Path>) -> Option<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", &format!("-d{secs}s"), "--latency"]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd.arg(url).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    let latency = |pct: &str| {
        field(pct).and_then(|v| {
            let (n, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
            let n: f64 = n.parse().ok()?;
            Some(match unit {
                "us" => n / 1000.0,
                "ms" => n,
                "s" => n * 1000.0,
                _ => return None,
            })
        })
    };
    Some(Wrk {
        rate: field("Requests/sec:")?.parse().ok()?,
        p50_ms: latency("50%")?,
        p99_ms: latency("99%")?,
        not_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

/// A wrk script posting one event of type `kind` per request, over 64 tenants.
fn post_script(dir: &Path, kind: &str) -> std::path::PathBuf {
    let script = dir.join(format!("{kind}.lua"));
    let lua = r#"local n = 0
request = function()
  n = n + 1
  local body = string.format('{"tenant_id":"00000000-0000-4000-8000-%012x","type":"KIND"}', n % 64)
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json"}, body)
end
"#;
    std::fs::write(&script, lua.replace("KIND", kind)).unwrap();
    script
}

/// Section 14, durable intake against the server's own ceiling: the release binary, `wrk -t2
/// -c64` for 10 s each, `GET /livez` then `POST /v1/events` with one activation per request,
/// delivery held by a 503 with a long Retry-After. Three pairs, one run.
async fn ceiling(dir: &Path) {
    println!(
        "\n14. durable intake / the server's ceiling (the release binary, wrk -t2 -c64, 10 s each)"
    );
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("    skipped: wrk is not installed (apt-get install wrk)");
        return;
    }
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    sb.inject(hold_delivery());
    // One event per request over 64 tenants. The same request with a type no event has takes
    // the same path (routing, the token, the body read and parsed, the checks) and is refused
    // before the store: the gap between the two is the store's.
    let script = post_script(dir, "activation");
    let refused = post_script(dir, "activatio");
    let store = dir.join("ceiling-store");
    let _ = std::fs::remove_dir_all(&store);
    let daemon = Daemon::spawn(dir, &store, &platform_env(&sb));
    daemon.ready();
    let mut ratios = Vec::new();
    let mut ceilings = Vec::new();
    for round in 1..=3 {
        let (Some(live), Some(post), Some(no_store)) = (
            wrk(&format!("{}/livez", daemon.api), 10, None),
            wrk(&daemon.api, 10, Some(&script)),
            wrk(&daemon.api, 10, Some(&refused)),
        ) else {
            println!("    wrk printed no figures");
            break;
        };
        assert_eq!(post.not_2xx, 0, "refused intake requests under load");
        let ratio = post.rate / live.rate;
        ratios.push(ratio);
        ceilings.push(live.rate);
        row(
            &format!("run {round}: GET /livez"),
            format!("{:.0}/s", live.rate),
            &format!("p50 {:.2} ms p99 {:.2} ms", live.p50_ms, live.p99_ms),
        );
        row(
            &format!("run {round}: durable POST /v1/events, one activation"),
            format!("{:.0}/s", post.rate),
            &format!("p50 {:.2} ms p99 {:.2} ms", post.p50_ms, post.p99_ms),
        );
        row(
            &format!("run {round}: the same POST refused at its checks (no store)"),
            format!("{:.0}/s", no_store.rate),
            &format!(
                "p50 {:.2} ms p99 {:.2} ms; {:.2} of /livez",
                no_store.p50_ms,
                no_store.p99_ms,
                no_store.rate / live.rate
            ),
        );
        row(
            &format!("run {round}: durable intake / /livez"),
            format!("{ratio:.2}"),
            "goal >= 0.5 with p99 <= 5 ms",
        );
    }
    daemon.stop();
    // The store's own floor, with no HTTP and nothing else on the cores: what durable intake
    // at half of /livez would need of sled alone.
    if let Some(&best) = ceilings.iter().max_by(|a, b| a.total_cmp(b)) {
        let needed = best / 2.0;
        for (statusd_keys, what) in [
            (
                true,
                "sled alone: statusd's keys per event, groups of 64, synced",
            ),
            (false, "sled alone: one key per event, groups of 64, synced"),
        ] {
            let r = sled_floor(dir, statusd_keys, 200_000);
            row(
                what,
                format!("{r:.0}/s"),
                &format!(
                    "{:.2} of what half of /livez needs ({needed:.0}/s), one thread, nothing else running",
                    r / needed
                ),
            );
        }
    }
}

/// Section 13, lists at scale: `GET /v1/accounts` with `big` events pending over 1000 accounts,
/// beside `/v1/status` and `/livez` (the real binary; the platform refuses every report, so
/// nothing drains while it is measured).
async fn lists(dir: &Path, big: usize) {
    println!("\n13. lists: GET /v1/accounts with {big} events pending over 1000 accounts (the real binary)");
    let tenants: Vec<(Uuid, String)> = (0..1000u128)
        .map(|i| (Uuid::from_u128(0xacc0_0000 + i), format!("a{i:04}")))
        .collect();
    let store = dir.join(format!("accounts-store-{big}"));
    if !store.exists() {
        let t = Instant::now();
        fill_accounts(&store, big, &tenants).await;
        row(
            "filling the store (1000 accounts, one tenant each)",
            format!("{:.1} s", t.elapsed().as_secs_f64()),
            &mb(dir_size(&store)),
        );
    }
    let sb = common::sandbox_refusing_reports_for(Some("300")).await;
    let mut toml = String::new();
    for (_, a) in &tenants {
        toml.push_str(&format!(
            "[accounts.{a}]\ndatacenter_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
            sb.url, sb.client_id, sb.client_secret
        ));
    }
    let config = dir.join("lists.toml");
    std::fs::write(&config, toml).unwrap();
    let d = Daemon::spawn_with(dir, &store, &[], &["--config", config.to_str().unwrap()]);
    let http = reqwest::Client::new();
    d.readyz(&http).await;
    for path in ["/v1/accounts", "/v1/status", "/livez"] {
        let mut times = Vec::new();
        let mut pending = 0u64;
        for _ in 0..21 {
            let t = Instant::now();
            let r = http.get(format!("{}{path}", d.api)).send().await.unwrap();
            let body: serde_json::Value = r.json().await.unwrap();
            times.push(t.elapsed());
            if path == "/v1/accounts" {
                pending = body["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["pending_events"].as_u64().unwrap_or(0))
                    .sum();
            }
        }
        times.sort();
        let note = if path == "/v1/accounts" {
            format!(
                "max {}; {pending} pending counted; goal <= 50 ms",
                ms(times[20])
            )
        } else {
            format!("max {}", ms(times[20]))
        };
        row(
            &format!("GET {path}, median of 21"),
            ms(percentile(&times, 0.5)),
            &note,
        );
    }
    d.stop();
}

/// Events of `load` delivered per second by `ports`: `rounds` requests of one event per tenant.
async fn pool_throughput(
    http: &reqwest::Client,
    sb: &Sandbox,
    load: &mut common::cluster::Load,
    ports: &[u16],
    rounds: usize,
) -> (f64, f64) {
    let distinct = || {
        let mut seen = std::collections::HashSet::new();
        for r in sb.reports() {
            for e in r.body["events"].as_array().unwrap() {
                seen.insert(e["action"].as_str().unwrap_or("").to_string());
            }
        }
        seen.len()
    };
    let before = load.accepted.len();
    let delivered_before = distinct();
    let t = Instant::now();
    for _ in 0..rounds {
        load.round(http, ports).await;
    }
    let posted = load.accepted.len() - before;
    let ingest = posted as f64 / t.elapsed().as_secs_f64();
    while distinct() < delivered_before + posted {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ingest, posted as f64 / t.elapsed().as_secs_f64())
}

/// The sandbox's answer to every report while intake alone is measured: 503, retry in an hour.
fn hold_delivery() -> statusd::sandbox::Fault {
    statusd::sandbox::Fault {
        status: Some(503),
        retry_after: Some("3600".into()),
        path_contains: Some("integration_management".into()),
        ..Default::default()
    }
}

/// Capacity: `clients` concurrent clients for `secs` seconds, each posting arrays of 100
/// events (activations and deactivations in turn, over tenants of its own) to the replicas in
/// turn; the events accepted per second.
async fn pool_capacity(
    http: &reqwest::Client,
    sb: &Sandbox,
    ports: &[u16],
    clients: usize,
    secs: u64,
) -> f64 {
    let tenants = sb.tenant_ids(Some("customer"));
    let per_client = (tenants.len() / clients).clamp(1, 100);
    let until = Instant::now() + Duration::from_secs(secs);
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let http = http.clone();
        let ports = ports.to_vec();
        let own: Vec<(Uuid, String)> = (0..per_client)
            .map(|i| {
                let n = c * per_client + i;
                (tenants[n], format!("a{:02}", n % common::cluster::ACCOUNTS))
            })
            .collect();
        set.spawn(async move {
            let mut accepted = 0usize;
            let mut round = 0usize;
            while Instant::now() < until {
                let kind = if round % 2 == 0 { "activation" } else { "deactivation" };
                let body: Vec<_> = (0..100)
                    .map(|i| {
                        let (t, a) = &own[i % own.len()];
                        serde_json::json!({"tenant_id": t, "account": a, "type": kind, "action": format!("cap-{c}-{round}-{i}")})
                    })
                    .collect();
                let port = ports[(c + round) % ports.len()];
                round += 1;
                let r = http
                    .post(format!("http://127.0.0.1:{port}/v1/events"))
                    .json(&body)
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 202) {
                    accepted += body.len();
                }
            }
            accepted
        });
    }
    let mut accepted = 0;
    while let Some(n) = set.join_next().await {
        accepted += n.unwrap();
    }
    accepted as f64 / t.elapsed().as_secs_f64()
}

/// Replicas on one PostgreSQL store (3 s / 2 s / 0.5 s leases, 16 shards, 50 accounts):
/// throughput with 1 and 3 replicas, then takeover times over 10 kills of the largest owner.
/// 150 single events posted one at a time round-robin to the replicas (most to one that does
/// not hold the event's shard): the time from each 202 to its report at the sandbox.
async fn accept_to_report(http: &reqwest::Client, sb: &Sandbox, ports: &[u16]) {
    let tenants = sb.tenant_ids(Some("customer"));
    let mut took = Vec::new();
    let mut seen = sb.reports().len();
    for i in 0..150usize {
        let tenant = tenants[i % tenants.len()];
        let account = format!("a{:02}", i % common::cluster::ACCOUNTS);
        let action = format!("latency-{i}");
        let r = http
            .post(format!("http://127.0.0.1:{}/v1/events", ports[i % ports.len()]))
            .json(&serde_json::json!({"tenant_id": tenant, "account": account, "type": "custom", "category": "latency", "action": action}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let accepted = Instant::now();
        'found: loop {
            let reports = sb.reports();
            for r in &reports[seen..] {
                if r.body["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["action"] == action.as_str()))
                {
                    took.push(accepted.elapsed());
                    seen = reports.len();
                    break 'found;
                }
            }
            assert!(
                accepted.elapsed() < Duration::from_secs(30),
                "event {i} never reported"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    took.sort();
    row(
        "3 replicas: single events posted round-robin, 202 -> report",
        format!(
            "p50 {} p99 {} max {}",
            ms(took[took.len() / 2]),
            ms(took[took.len() * 99 / 100]),
            ms(took[took.len() - 1])
        ),
        "150 events; goal p50 <= 50 ms, p99 <= 250 ms",
    );
}

async fn cluster(dir: &Path) {
    use common::cluster::*;
    println!(
        "\n12. replicas on one PostgreSQL store (leases 3 s / 2 s / 0.5 s, 16 shards, 50 accounts)"
    );
    let Some(server) = pg::PgServer::start_with(&[
        "shared_preload_libraries=pg_stat_statements",
        "pg_stat_statements.track=all",
    ]) else {
        println!("    skipped: no PostgreSQL server binaries here");
        return;
    };
    let watch = PgWatch::open(&server).await;
    let sb = Sandbox::start(SandboxOptions {
        tenants: 160,
        ..Default::default()
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    // One load for every phase: its actions stay distinct across them.
    let mut load = Load::new(&sb);
    for n in [1usize, 3] {
        let config = config(dir, &sb, &server.url(), &format!("bench_pool_{n}"));
        let replicas = start(&http, &config, n).await;
        all_owned(&http, replicas[0].port, Duration::from_secs(30), &[]).await;
        let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
        let (ingest, drained) = pool_throughput(&http, &sb, &mut load, &ports, 50).await;
        rate(
            &format!("{n} replica(s): 5 000 events posted round-robin, accepted"),
            ingest,
            "(one request of 100 events per round, rounds one after another)",
        );
        rate(
            &format!("{n} replica(s): posted and delivered, end to end"),
            drained,
            "",
        );
        if n == 3 {
            accept_to_report(&http, &sb, &ports).await;
        }
        // Intake alone (delivery held, so the replicas' dispatchers do not take the cores).
        sb.inject(hold_delivery());
        let capacity = watched(&watch, pool_capacity(&http, &sb, &ports, 4, 8)).await;
        sb.clear_faults();
        rate(
            &format!("{n} replica(s): capacity, 4 concurrent clients, arrays of 100"),
            capacity.0,
            "(8 s; delivery held by a 503 with Retry-After: 3600)",
        );
        capacity.1.await;
        for r in replicas {
            common::sigterm_and_wait(r.daemon).await;
        }
    }
    // The same capacity through PgBouncer in transaction mode (pool of 5 server connections).
    match pg::PgBouncer::start(&server) {
        None => println!("    (PgBouncer is not installed: capacity through it not measured)"),
        Some(bouncer) => {
            sb.inject(hold_delivery());
            for n in [1usize, 3] {
                let config = config(dir, &sb, &bouncer.url(), &format!("bench_bouncer_{n}"));
                let replicas = start(&http, &config, n).await;
                all_owned(&http, replicas[0].port, Duration::from_secs(30), &[]).await;
                let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
                let capacity = watched(&watch, pool_capacity(&http, &sb, &ports, 4, 8)).await;
                rate(
                    &format!(
                        "{n} replica(s) through PgBouncer: capacity, 4 clients, arrays of 100"
                    ),
                    capacity.0,
                    "(8 s; transaction mode, default_pool_size 5; delivery held)",
                );
                capacity.1.await;
                for r in replicas {
                    common::sigterm_and_wait(r.daemon).await;
                }
            }
            sb.clear_faults();
        }
    }
    if let Some(watch) = &watch {
        renew_round(dir, &server, &sb, &http, watch).await;
    }
    // Takeover after kill -9, ten times: the largest owner killed, a new replica started.
    let config = config(dir, &sb, &server.url(), "bench_kills");
    let mut replicas = start(&http, &config, 3).await;
    all_owned(&http, replicas[0].port, Duration::from_secs(30), &[]).await;
    let mut times = Vec::new();
    let mut repeats = Vec::new();
    for _ in 0..10 {
        let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
        for _ in 0..3 {
            load.round(&http, &ports).await;
        }
        let victim = largest_owner(&http, &replicas).await;
        let dead_id = member_of(&http, replicas[victim].port).await;
        let mut dead = replicas.remove(victim);
        let reports_before = sb.reports().len();
        let killed = Instant::now();
        let _ = Command::new("kill")
            .args(["-9", &dead.daemon.id().to_string()])
            .status();
        let _ = dead.daemon.wait();
        let live: Vec<u16> = replicas.iter().map(|r| r.port).collect();
        let owned = all_owned(&http, live[0], Duration::from_secs(30), &[dead_id]).await;
        times.push(owned.duration_since(killed));
        // Repeats: reports of events already delivered before, and re-assertions, in the
        // failover's window (until the new owners re-asserted and settled).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let reports = sb.reports();
        let mut seen = std::collections::HashSet::new();
        for r in &reports[..reports_before] {
            for e in r.body["events"].as_array().unwrap() {
                seen.insert(e["action"].as_str().unwrap_or("").to_string());
            }
        }
        let mut n = 0;
        for r in &reports[reports_before..] {
            for e in r.body["events"].as_array().unwrap() {
                let a = e["action"].as_str().unwrap_or("");
                if seen.contains(a) || a.ends_with("integration") {
                    n += 1;
                }
            }
        }
        repeats.push(n);
        let port = common::free_port();
        let daemon = spawn(&config, port);
        common::wait_ready(&http, port).await;
        replicas.push(Replica { daemon, port });
        all_owned(&http, port, Duration::from_secs(30), &[]).await;
    }
    times.sort();
    row(
        "takeover after kill -9 of the largest owner (10 kills)",
        format!(
            "median {} max {}",
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        ),
        "bound: lease + retry + 1 s = 4.5 s",
    );
    repeats.sort();
    row(
        "events repeated per failover (re-sent or re-asserted)",
        format!(
            "median {} max {}",
            repeats[repeats.len() / 2],
            repeats[repeats.len() - 1]
        ),
        "re-assertions: one per tenant with a decided state in the shards taken over",
    );
    for r in replicas {
        common::sigterm_and_wait(r.daemon).await;
    }
}

/// The same settings on the PostgreSQL store `schema` of `server`.
fn on_postgres(
    mut s: statusd::config::Settings,
    server: &pg::PgServer,
    schema: &str,
) -> statusd::config::Settings {
    s.store.backend = statusd::config::StoreBackend::Postgres;
    s.store.postgres = Some(statusd::config::PostgresSettings {
        url: Secret::new(server.url()),
        direct_url: None,
        pool_size: 8,
        schema: schema.into(),
        ca_file: None,
    });
    s
}

/// HTTP ingest and drain on PostgreSQL beside sled: same machine, same load, same sandbox.
async fn postgres(dir: &Path) {
    println!("\n11. the PostgreSQL store beside sled (a local PostgreSQL 15 the bench starts)");
    let Some(server) = pg::PgServer::start() else {
        println!("    skipped: no PostgreSQL server binaries here");
        return;
    };
    for line in server.test_fsync().lines() {
        let l = line.trim();
        if l.starts_with("fdatasync") || l.starts_with("open_datasync") || l.starts_with("fsync ") {
            println!("    pg_test_fsync: {l}");
        }
        if l.starts_with("Compare file sync methods using two 8kB") {
            break;
        }
    }
    let tenants: Vec<Uuid> = (0..64).map(|i| Uuid::from_u128(0xbe00 + i)).collect();
    for backend in ["sled", "postgres"] {
        let store = dir.join(format!("pg-ingest-{backend}"));
        let _ = std::fs::remove_dir_all(&store);
        let mut s = settings("http://127.0.0.1:9", "bench", "bench", &store);
        if backend == "postgres" {
            s = on_postgres(s, &server, "bench_ingest");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = statusd::app::start(s, Some(listener), false).await.unwrap();
        let api = format!("http://{}", running.api_addr);
        let f0 = running.queue.flush_stats();
        let (r, p50, p99) = raw_ingest(running.api_addr, &tenants, 64, 300).await;
        let f1 = running.queue.flush_stats();
        let per_group = (f1.waiters - f0.waiters) as f64 / (f1.flushes - f0.flushes).max(1) as f64;
        rate(
            &format!("{backend}: POST single events, 64 connections, minimal client"),
            r,
            &format!(
                "p50 {} p99 {}, {per_group:.1} requests per commit",
                ms(p50),
                ms(p99)
            ),
        );
        let (r, p50, p99) = http_ingest(&api, &tenants, 16, 40, 100).await;
        rate(
            &format!("{backend}: POST arrays of 100, 16 keep-alive clients"),
            r,
            &format!("p50 {} p99 {} per request", ms(p50), ms(p99)),
        );
        let (r, p50, p99) = http_ingest(&api, &tenants, 1, 1000, 1).await;
        rate(
            &format!("{backend}: POST single events, 1 client"),
            r,
            &format!("p50 {} p99 {}", ms(p50), ms(p99)),
        );
        running.shutdown().await;
    }
    // Drain: 20 000 events over 200 tenants, filled first with no platform, then delivered.
    let sb = Sandbox::start(SandboxOptions {
        tenants: 260,
        ..Default::default()
    })
    .await
    .unwrap();
    let drain_tenants: Vec<Uuid> = sb.tenant_ids(None).into_iter().take(200).collect();
    for backend in ["sled", "postgres"] {
        let store = dir.join(format!("pg-drain-{backend}"));
        let _ = std::fs::remove_dir_all(&store);
        let with = |s| {
            if backend == "postgres" {
                on_postgres(s, &server, "bench_drain")
            } else {
                s
            }
        };
        {
            let s = with(settings("http://127.0.0.1:9", "bench", "bench", &store));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let running = statusd::app::start(s, Some(listener), false).await.unwrap();
            let mut done = 0;
            while done < 20_000 {
                let chunk: Vec<NewEvent> = (done..done + 1000)
                    .map(|i| ev(drain_tenants[i % drain_tenants.len()], i))
                    .collect();
                done += chunk.len();
                running.queue.enqueue(chunk).await.unwrap();
            }
            running.shutdown().await;
        }
        let s = with(settings(&sb.url, &sb.client_id, &sb.client_secret, &store));
        let reports_before = sb.reports().len();
        let t = Instant::now();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = statusd::app::start(s, Some(listener), false).await.unwrap();
        while running.queue.stats().depth > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let total = t.elapsed();
        rate(
            &format!("{backend}: full queue drained (start to empty, batches of up to 100)"),
            20_000.0 / total.as_secs_f64(),
            &format!("{} reports", sb.reports().len() - reports_before),
        );
        running.shutdown().await;
    }
}

/// A store filled with `n` events over `tenants`, each event for the account of its tenant.
async fn fill_accounts(store: &Path, n: usize, tenants: &[(Uuid, String)]) {
    let q = Queue::open(store, StoreOptions::default()).unwrap();
    let mut done = 0;
    while done < n {
        let chunk: Vec<NewEvent> = (done..(done + 1000).min(n))
            .map(|i| {
                let (t, account) = &tenants[i % tenants.len()];
                NewEvent {
                    account: Some(account.clone()),
                    ..ev(*t, i)
                }
            })
            .collect();
        done += chunk.len();
        q.enqueue(chunk).await.unwrap();
    }
}

/// Drain a filled store with the daemon in-process; events per second.
async fn drain_with(toml: String, env: Vec<(String, String)>, n: usize) -> f64 {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings =
        statusd::config::load_from_str(&toml, &env, statusd::config::Purpose::Run).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = Instant::now();
    let running = statusd::app::start(settings, Some(listener), false)
        .await
        .unwrap();
    while running.queue.stats().depth > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    running.shutdown().await;
    rate
}

/// Section 7, several accounts: delivery with 100 accounts over 5 data centers against one
/// account (same events, same number of tenants, same run), and the memory of 1000 idle
/// accounts.
async fn accounts(dir: &Path) {
    println!("\n7. accounts: 20 000 events over 200 tenants, one account against 100 accounts in 5 data centers");
    let mut dcs = Vec::new();
    for n in 0..5u64 {
        dcs.push(
            Sandbox::start(SandboxOptions {
                tenants: 60,
                seed: 100 + n,
                ..Default::default()
            })
            .await
            .unwrap(),
        );
    }
    let n = 20_000;
    // One account: 200 tenants in one data center.
    let single = Sandbox::start(SandboxOptions {
        tenants: 260,
        seed: 99,
        ..Default::default()
    })
    .await
    .unwrap();
    let single_tenants: Vec<(Uuid, String)> = single
        .tenant_ids(None)
        .into_iter()
        .take(200)
        .map(|t| (t, "default".to_string()))
        .collect();
    let store = dir.join("accounts-one");
    let _ = std::fs::remove_dir_all(&store);
    fill_accounts(&store, n, &single_tenants).await;
    let toml = format!(
        "[platform]\nbase_url = \"{}\"\nclient_id = \"{}\"\n[integration]\napplication_code = \"vendor.bench\"\n[store]\npath = \"{}\"\n",
        single.url,
        single.client_id,
        store.display()
    );
    let one = drain_with(
        toml,
        vec![(
            "STATUSD__PLATFORM__CLIENT_SECRET".into(),
            single.client_secret.clone(),
        )],
        n,
    )
    .await;
    rate("statusd drain, 1 account", one, "");
    // 100 accounts, 20 per data center, 2 tenants each.
    let mut toml = String::new();
    let mut env = Vec::new();
    let mut tenants = Vec::new();
    for a in 0..100 {
        let dc = &dcs[a % 5];
        let id = format!("partner-{a:03}");
        toml.push_str(&format!(
            "[accounts.{id}]\ndatacenter_url = \"{}\"\nclient_id = \"{}\"\n",
            dc.url, dc.client_id
        ));
        env.push((
            format!("STATUSD__ACCOUNTS__{}__CLIENT_SECRET", id.to_uppercase()),
            dc.client_secret.clone(),
        ));
        let ids = dc.tenant_ids(None);
        for k in 0..2 {
            tenants.push((ids[(a / 5) * 2 + k], id.clone()));
        }
    }
    let store = dir.join("accounts-many");
    let _ = std::fs::remove_dir_all(&store);
    fill_accounts(&store, n, &tenants).await;
    toml.push_str(&format!(
        "[integration]\napplication_code = \"vendor.bench\"\n[store]\npath = \"{}\"\n",
        store.display()
    ));
    let many = drain_with(toml, env, n).await;
    rate(
        "statusd drain, 100 accounts in 5 data centers",
        many,
        &format!("{:.2} of one account", many / one),
    );
    // 1000 idle accounts in the real binary: RSS against one account.
    let idle = |count: usize| {
        let mut toml = format!(
            "[integration]\napplication_code = \"vendor.bench\"\n[store]\npath = \"{}\"\n",
            dir.join(format!("idle-{count}")).display()
        );
        for a in 0..count {
            toml.push_str(&format!(
                "[accounts.idle-{a:04}]\ndatacenter_url = \"{}\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
                single.url
            ));
        }
        let path = dir.join(format!("idle-{count}.toml"));
        std::fs::write(&path, toml).unwrap();
        path
    };
    let http = reqwest::Client::new();
    let mut rss_of = Vec::new();
    for count in [1usize, 1000] {
        let config = idle(count);
        let store = dir.join(format!("idle-{count}"));
        let _ = std::fs::remove_dir_all(&store);
        let config_arg = config.display().to_string();
        let d = Daemon::spawn_with(dir, &store, &[], &["--config", &config_arg]);
        let ready = d.readyz(&http).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (now, _) = d.rss();
        rss_of.push((count, now, ready));
        d.stop();
    }
    let (_, one, one_ready) = rss_of[0];
    let (_, thousand, thousand_ready) = rss_of[1];
    row(
        "RSS with 1 account / 1000 idle accounts",
        format!("{} / {}", mb(one), mb(thousand)),
        &format!(
            "{} per 1000 accounts; ready in {} / {}",
            mb(thousand.saturating_sub(one)),
            ms(one_ready),
            ms(thousand_ready)
        ),
    );
}

/// Section 8: accounts added at run time. The time to validate and add one through the real
/// API against the sandbox (token, client record, tenant name, one durable write), and what
/// 10 000 stored accounts cost: bytes in the store, the start of the real binary, its RSS.
async fn runtime_accounts(dir: &Path) {
    println!(
        "\n8. accounts at run time: POST /v1/accounts against the sandbox; 10 000 stored accounts"
    );
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let key = dir.join("runtime-secret.key");
    let _ = std::fs::remove_file(&key);
    statusd::vault::write_new_key(&key).unwrap();
    let store = dir.join("runtime-accounts");
    let _ = std::fs::remove_dir_all(&store);
    let mut env = platform_env(&sb);
    env.push(("STATUSD__STORE__SECRET_KEY_FILE", key.display().to_string()));
    let http = reqwest::Client::new();
    let d = Daemon::spawn(dir, &store, &env);
    d.readyz(&http).await;
    let n = 300;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let (id, secret) = sb.create_client(sb.root_tenant);
        let body = serde_json::json!({
            "id": format!("rt-{i:05}"),
            "datacenter_url": sb.url,
            "client_id": id,
            "client_secret": secret,
        });
        let t = Instant::now();
        let r = http
            .post(format!("{}/v1/accounts", d.api))
            .json(&body)
            .send()
            .await
            .unwrap();
        took.push(t.elapsed());
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    took.sort();
    row(
        "validate and add one account (POST /v1/accounts)",
        format!(
            "p50 {} / p99 {}",
            ms(percentile(&took, 0.5)),
            ms(percentile(&took, 0.99))
        ),
        &format!("{n} in a row, sandbox on loopback: 3 platform calls and one flush each"),
    );
    d.stop();
    // 10 000 accounts written straight into a store, as the API writes them.
    let sealer =
        statusd::vault::SecretKey::from_text(&std::fs::read_to_string(&key).unwrap()).unwrap();
    for count in [200usize, 10_000] {
        let store = dir.join(format!("runtime-{count}"));
        let _ = std::fs::remove_dir_all(&store);
        let empty = {
            let q = Queue::open(&store, StoreOptions::default()).unwrap();
            q.sync().await.unwrap();
            drop(q);
            dir_size(&store)
        };
        {
            let q = Queue::open(&store, StoreOptions::default()).unwrap();
            let now = statusd::store::now_ms();
            for i in 0..count {
                let id = format!("stored-{i:05}");
                let mut record = statusd::store::StoredAccount {
                    client_secret_sealed: String::new(),
                    id,
                    datacenter_url: sb.url.clone(),
                    client_id: Uuid::new_v4().to_string(),
                    credentials: "api_client".into(),
                    root_tenant_id: None,
                    tenant_id: Some(Uuid::new_v4()),
                    tenant_name: Some(format!("Partner {i}")),
                    created_at_ms: now,
                    updated_at_ms: now,
                    retiring: false,
                };
                record.client_secret_sealed =
                    sealer.seal_bound(&record.binding(), &Uuid::new_v4().simple().to_string());
                q.write_account(statusd::store::AccountWrite::Add(record), Vec::new())
                    .await
                    .unwrap();
            }
        }
        let full = dir_size(&store);
        let d = Daemon::spawn(dir, &store, &env);
        let ready = d.ready();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (rss_now, _) = d.rss();
        d.stop();
        row(
            &format!("{count} stored accounts"),
            format!(
                "{} on disk, {} B each",
                mb(full.saturating_sub(empty)),
                full.saturating_sub(empty) / count as u64
            ),
            &format!("start to READY {}; RSS {}", ms(ready), mb(rss_now)),
        );
    }
}

/// `statusd store <args>` on `store`, timed; panics unless it succeeds.
fn store_command(store: &Path, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = Command::new(BIN)
        .arg("store")
        .args(args)
        .env("STATUSD__STORE__PATH", store)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "statusd store {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// Section 9: the store operations of the real binary on a large store: export, import and
/// verify of `big` pending events, then the offline compaction of the same store once every
/// event was delivered and compacted away.
async fn store_ops(dir: &Path, big: usize) {
    println!("\n9. store operations on {big} events (the release binary, offline)");
    let store = dir.join("ops-store");
    let _ = std::fs::remove_dir_all(&store);
    let tenants: Vec<Uuid> = (0..1000).map(|i| Uuid::from_u128(0x0b_0000 + i)).collect();
    fill(&store, big, &tenants).await;
    let file = dir.join("ops-export.jsonl");
    let _ = std::fs::remove_file(&file);
    let took = store_command(&store, &["export", "--out", file.to_str().unwrap()]);
    rate(
        "store export (pending events)",
        big as f64 / took.as_secs_f64(),
        &format!(
            "{} in {:.1} s, {} file",
            big,
            took.as_secs_f64(),
            mb(std::fs::metadata(&file).unwrap().len())
        ),
    );
    let copy = dir.join("ops-import");
    let _ = std::fs::remove_dir_all(&copy);
    let took = store_command(&copy, &["import", file.to_str().unwrap()]);
    rate(
        "store import",
        big as f64 / took.as_secs_f64(),
        &format!("{:.1} s, store {}", took.as_secs_f64(), mb(dir_size(&copy))),
    );
    let took = store_command(&copy, &["verify"]);
    rate(
        "store verify",
        big as f64 / took.as_secs_f64(),
        &format!("{:.1} s", took.as_secs_f64()),
    );
    let _ = std::fs::remove_dir_all(&copy);
    let _ = std::fs::remove_file(&file);
    // Deliver everything and compact it away, as the daemon does; then give the space back.
    {
        let q = open_compacting_at_once(&store);
        deliver_all(&q, &tenants, 32, big).await;
        q.compact(statusd::store::now_ms() + 1).await.unwrap();
        q.sync().await.unwrap();
    }
    eprintln!();
    let before = dir_size(&store);
    let took = store_command(&store, &["compact"]);
    let after = dir_size(&store);
    row(
        "store compact after every event was delivered and compacted",
        format!("{:.2} s", took.as_secs_f64()),
        &format!("{} -> {}", mb(before), mb(after)),
    );
    let _ = std::fs::remove_dir_all(&store);
}

/// Section 10: a Fusion branding reconcile of 1 000 subscriptions by the release binary
/// against the sandbox on loopback: the first run writes every drift, the second finds none.
async fn fusion(dir: &Path) {
    println!("\n10. fusion-branding: 1 000 subscriptions (2 tenants x 500)");
    let sb = Sandbox::start(SandboxOptions {
        fusion_trusted: true,
        fusion_subscriptions: 500,
        fusion_password: "bench".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let tenants: Vec<String> = sb
        .fusion_tenants()
        .iter()
        .map(|(t, _)| format!("\"{t}\""))
        .collect();
    let config = dir.join("fusion.toml");
    std::fs::write(
        &config,
        format!(
            "[fusion]\nbase_url = \"{}\"\ndraas_instance = \"{}\"\nusername = \"fusion-api\"\npassword = \"bench\"\ntenants = [{}]\n[fusion.branding.general]\ncompanyName = \"Bench Voice\"\nsmtp = {{ host = \"smtp.bench.example\" }}\n[fusion.branding.styling.theme]\nselected = \"red\"\n[fusion.branding.pages.subscription.subscriptionNumbers.tabs.porting]\nenabled = false\n",
            sb.url,
            statusd::sandbox::FUSION_INSTANCE,
            tenants.join(", ")
        ),
    )
    .unwrap();
    let store = dir.join("fusion-store");
    let _ = std::fs::remove_dir_all(&store);
    let config_arg = config.display().to_string();
    let d = Daemon::spawn_with(dir, &store, &platform_env(&sb), &["--config", &config_arg]);
    let http = reqwest::Client::new();
    d.readyz(&http).await;
    let (idle, _) = d.rss();
    for run in ["first", "second"] {
        let requests = sb.stats().requests;
        let (took, report) =
            timed_post(&http, format!("{}/v1/reconcile/fusion-branding", d.api)).await;
        assert_eq!(report["outcome"], "success", "{report}");
        let (now, peak) = d.rss();
        row(
            &format!("{run} run"),
            ms(took),
            &format!(
                "{} requests ({} writes so far), drift {}; RSS {} idle, {} after, {} peak",
                sb.stats().requests - requests,
                sb.fusion_counts().1,
                report["drift"].as_array().map_or(0, |d| d.len()),
                mb(idle),
                mb(now),
                mb(peak)
            ),
        );
    }
    d.stop();
}

/// A replica's renew round with 1 000 000 events pending in its shards: the database time of
/// its statements (`pg_stat_statements`), per round and per full read (every 15th round, and
/// on a claim), the replica holding all 16 shards, delivery held.
async fn renew_round(
    dir: &Path,
    server: &pg::PgServer,
    sb: &Sandbox,
    http: &reqwest::Client,
    watch: &PgWatch,
) {
    use common::cluster::*;
    let schema = "bench_renew";
    let config = config(dir, sb, &server.url(), schema);
    sb.inject(hold_delivery());
    let replicas = start(http, &config, 1).await;
    all_owned(http, replicas[0].port, Duration::from_secs(30), &[]).await;
    let base: Vec<_> = sb
        .tenant_ids(Some("customer"))
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"tenant_id": t, "account": format!("a{:02}", i % ACCOUNTS),
                               "type": "activation", "action": format!("renew-{i}")})
        })
        .collect();
    let posted = http
        .post(format!("http://127.0.0.1:{}/v1/events", replicas[0].port))
        .json(&base)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    for r in replicas {
        common::sigterm_and_wait(r.daemon).await;
    }
    // Each event copied until a million are pending (their tenants, accounts and shards kept).
    let copies = 1_000_000 / base.len();
    let t = Instant::now();
    server.psql(&format!(
        "INSERT INTO {schema}.events (id, seq, tenant_id, account, kind, category, action,
                                      accepted_at_ms, state, shard)
         SELECT gen_random_uuid(), nextval('{schema}.event_seq'), tenant_id, account, kind,
                category, action || '-' || g, accepted_at_ms, 'queued', shard
         FROM {schema}.events, generate_series(1, {copies}) AS g;
         ANALYZE {schema}.events"
    ));
    let pending: i64 = server
        .psql(&format!(
            "SELECT count(*) FROM {schema}.events WHERE state = 'queued'"
        ))
        .parse()
        .unwrap();
    println!(
        "    ({pending} events pending, written in {:.0} s)",
        t.elapsed().as_secs_f64()
    );
    let replicas = start(http, &config, 1).await;
    all_owned(http, replicas[0].port, Duration::from_secs(60), &[]).await;
    // Rounds every 0.5 s: 20 s covers at least one full read (every 15th round).
    watch.reset().await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let got = watch
        .client
        .query_one(
            "SELECT
               (SELECT sum(calls) FROM pg_stat_statements
                 WHERE query LIKE '%FROM shards ORDER BY shard%')::float8,
               (SELECT sum(total_exec_time) FROM pg_stat_statements
                 WHERE query ~ '(members|shards|late_reports)'
                   AND query !~ 'reconcile_slots')::float8,
               (SELECT max(mean_exec_time) FROM pg_stat_statements
                 WHERE query LIKE '%WITH RECURSIVE t(shard, tenant_id)%'),
               (SELECT max(mean_exec_time) FROM pg_stat_statements
                 WHERE query LIKE '%count(*) FROM events WHERE state = $1)%'
                    OR query LIKE '%count(*) FROM events WHERE state = ''queued'')%')",
            &[],
        )
        .await
        .unwrap();
    let rounds: f64 = got.get::<_, Option<f64>>(0).unwrap_or(0.0);
    let round_ms = got.get::<_, Option<f64>>(1).unwrap_or(0.0) / rounds.max(1.0);
    row(
        "renew round, 1 000 000 pending: database time per round",
        format!("{round_ms:.2} ms"),
        &format!("{rounds:.0} rounds; goal <= 10 ms"),
    );
    let heads = got.get::<_, Option<f64>>(2);
    let recount = got.get::<_, Option<f64>>(3);
    let ms_or = |v: Option<f64>| v.map_or("not run".to_string(), |v| format!("{v:.1} ms"));
    row(
        "  the heads of every shard held (every 15th round)",
        ms_or(heads),
        "part of the round",
    );
    row(
        "  the counters recounted (as often, apart from the rounds)",
        ms_or(recount),
        "not part of the round",
    );
    watch.print(Vec::new()).await;
    for r in replicas {
        common::sigterm_and_wait(r.daemon).await;
    }
    sb.clear_faults();
}

/// Run `work` (of about 8 s) with the database watched; its result, and the printing of what
/// the database saw (to be awaited after the result's own line).
async fn watched<'a, T>(
    watch: &'a Option<PgWatch>,
    work: impl std::future::Future<Output = T>,
) -> (T, impl std::future::Future<Output = ()> + 'a) {
    let waits = match watch {
        Some(w) => {
            w.reset().await;
            Some(w.sample(Instant::now() + Duration::from_secs(8)))
        }
        None => None,
    };
    let out = work.await;
    let report = async move {
        if let (Some(w), Some(waits)) = (watch, waits) {
            w.print(waits.await.unwrap()).await;
        }
    };
    (out, report)
}

/// The database's own view of a run: `pg_stat_statements` (where its time went) and the wait
/// events of the sessions at work, sampled every 5 ms (what they waited on).
struct PgWatch {
    client: Arc<tokio_postgres::Client>,
}

impl PgWatch {
    /// A session to `server` (started with `pg_stat_statements` preloaded), or `None`.
    async fn open(server: &pg::PgServer) -> Option<PgWatch> {
        let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(connection);
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .ok()?;
        Some(PgWatch {
            client: Arc::new(client),
        })
    }

    /// Statements counted afresh from now.
    async fn reset(&self) {
        self.client
            .batch_execute("SELECT pg_stat_statements_reset()")
            .await
            .unwrap();
    }

    /// Sample what the other sessions are doing until `until`: (what, samples), most first.
    /// `active` alone is a session on the CPU (or waiting on nothing PostgreSQL names).
    fn sample(&self, until: Instant) -> tokio::task::JoinHandle<Vec<(String, u64)>> {
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut seen = std::collections::HashMap::<String, u64>::new();
            while Instant::now() < until {
                let rows = client
                    .query(
                        "SELECT coalesce(wait_event_type || ':' || wait_event, state)
                         FROM pg_stat_activity
                         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                           AND state NOT IN ('idle')",
                        &[],
                    )
                    .await
                    .unwrap_or_default();
                for r in rows {
                    let what: Option<String> = r.get(0);
                    *seen.entry(what.unwrap_or_default()).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut seen: Vec<(String, u64)> = seen.into_iter().collect();
            seen.sort_by_key(|w| std::cmp::Reverse(w.1));
            seen
        })
    }

    /// The `n` statements that took the most database time: (calls, total ms, mean ms, text).
    async fn top(&self, n: i64) -> Vec<(i64, f64, f64, String)> {
        self.client
            .query(
                "SELECT calls, total_exec_time, mean_exec_time,
                        left(regexp_replace(query, '\\s+', ' ', 'g'), 70)
                 FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT $1",
                &[&n],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    /// Print the top statements and the wait events sampled.
    async fn print(&self, waits: Vec<(String, u64)>) {
        for (calls, total, mean, text) in self.top(6).await {
            println!("      {total:>8.0} ms {calls:>7} calls {mean:>7.3} ms  {text}");
        }
        let all: u64 = waits.iter().map(|w| w.1).sum::<u64>().max(1);
        let line: Vec<String> = waits
            .iter()
            .take(6)
            .map(|(w, n)| format!("{w} {:.0}%", *n as f64 * 100.0 / all as f64))
            .collect();
        println!("      sessions at work: {}", line.join(", "));
    }
}
