//! Shared test helpers: a sandbox platform and a daemon in-process on loopback.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use statusd::app::Running;
use statusd::config::{self, Purpose, Settings};
use statusd::sandbox::{Sandbox, SandboxOptions};

pub mod cluster;
pub mod pg;
pub mod pki;
pub mod recorder;

pub struct Harness {
    pub sandbox: Sandbox,
    pub running: Option<Running>,
    pub api: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

pub fn base_toml(sb: &Sandbox, store: &std::path::Path) -> String {
    format!(
        r#"
[platform]
base_url = "{}"
client_id = "{}"
request_timeout = "2s"
[integration]
application_code = "vendor.tests"
[store]
path = "{}"
cache_capacity_mb = 16
[delivery]
initial_backoff = "50ms"
max_backoff = "500ms"
shutdown_grace = "2s"
"#,
        sb.url,
        sb.client_id,
        store.display()
    )
}

pub fn settings_for(sb: &Sandbox, store: &std::path::Path, env: &[(&str, &str)]) -> Settings {
    let mut all: Vec<(&str, &str)> = vec![(
        "STATUSD__PLATFORM__CLIENT_SECRET",
        sb.client_secret.as_str(),
    )];
    all.extend_from_slice(env);
    config::load_from_str(&base_toml(sb, store), &all, Purpose::Run)
        .expect("test settings are valid")
}

pub async fn harness(sb_opts: SandboxOptions, env: &[(&str, &str)]) -> Harness {
    statusd::platform::install_crypto_provider();
    let sandbox = Sandbox::start(sb_opts).await.expect("sandbox starts");
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&sandbox, dir.path(), env);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = statusd::app::start(settings, Some(listener), false)
        .await
        .expect("daemon starts");
    let api = format!("http://{}", running.api_addr);
    Harness {
        sandbox,
        running: Some(running),
        api,
        http: reqwest::Client::new(),
        dir,
    }
}

impl Harness {
    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }
    /// A request without a body to the daemon's API, e.g. `call(Method::GET, "/v1/status")`.
    pub async fn call(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.http
            .request(method, format!("{}{path}", self.api))
            .send()
            .await
            .unwrap()
    }

    /// The body of a GET, as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.call(reqwest::Method::GET, path)
            .await
            .text()
            .await
            .unwrap()
    }

    pub async fn post_events(&self, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/events", self.api))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
    pub async fn drained(&self, within: Duration) {
        let q = self.running().queue.clone();
        wait_for(within, "queue drained", || q.stats().depth == 0).await;
    }
}

/// A daemon with its cron schedules on, against `sb`, with its store in `store`.
pub async fn start_scheduled(
    sb: &Sandbox,
    store: &std::path::Path,
    env: &[(&str, &str)],
) -> Running {
    let settings = settings_for(sb, store, env);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    statusd::app::start(settings, Some(listener), true)
        .await
        .unwrap()
}

/// Poll until `cond` holds, failing the test after `within`.
pub async fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_for_async<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per tenant, the `action` texts the sandbox received, in order.
pub fn actions_by_tenant(sb: &Sandbox) -> std::collections::HashMap<uuid::Uuid, Vec<String>> {
    let mut out: std::collections::HashMap<uuid::Uuid, Vec<String>> = Default::default();
    for r in sb.reports() {
        for e in r.body["events"].as_array().unwrap() {
            out.entry(r.tenant_id)
                .or_default()
                .push(e["action"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Of the actions `{tenant}-{n}` each tenant received, the first delivery of each comes in
/// posting order (repeats of a report whose acknowledgement was lost, and other actions, aside).
pub fn assert_first_deliveries_in_order(got: &std::collections::HashMap<uuid::Uuid, Vec<String>>) {
    for (t, actions) in got {
        let mut last = 0usize;
        let mut seen = std::collections::HashSet::new();
        for a in actions.iter().filter(|a| a.starts_with(&t.to_string())) {
            if seen.insert(a.clone()) {
                let n: usize = a.rsplit('-').next().unwrap().parse().unwrap();
                assert!(n > last, "tenant {t}: {a} delivered after posting {last}");
                last = n;
            }
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1 (for a child process to listen on).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SIGTERM a child process and wait for it to exit.
pub async fn sigterm_and_wait(mut daemon: Daemon) -> std::process::ExitStatus {
    let mut child = daemon.0.take().expect("a running daemon");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

/// The first `n` customer tenants of the sandbox's tree.
pub fn customers(sb: &Sandbox, n: usize) -> Vec<uuid::Uuid> {
    sb.tenant_ids(Some("customer"))
        .into_iter()
        .take(n)
        .collect()
}

/// `statusd run` (the real binary) against `base_url`, on `store`, listening on `port`, with
/// short backoffs and small batches; add `.env(...)` for more.
pub fn daemon_command(
    base_url: &str,
    client_id: &str,
    secret: &str,
    store: &std::path::Path,
    port: u16,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_statusd"));
    cmd.arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("STATUSD__PLATFORM__BASE_URL", base_url)
        .env("STATUSD__PLATFORM__CLIENT_ID", client_id)
        .env("STATUSD__PLATFORM__CLIENT_SECRET", secret)
        .env("STATUSD__PLATFORM__REQUEST_TIMEOUT", "2s")
        // The sandbox data centers listen on this address; accounts added through the API
        // may use it only because it is named here.
        .env("STATUSD__PLATFORM__ALLOWED_HOSTS", "127.0.0.1")
        .env("STATUSD__INTEGRATION__APPLICATION_CODE", "vendor.tests")
        .env("STATUSD__STORE__PATH", store)
        .env("STATUSD__STORE__CACHE_CAPACITY_MB", "16")
        .env("STATUSD__DELIVERY__INITIAL_BACKOFF", "50ms")
        .env("STATUSD__DELIVERY__MAX_BACKOFF", "300ms")
        .env("STATUSD__DELIVERY__MAX_BATCH_EVENTS", "10")
        .env("STATUSD__API__LISTEN", format!("127.0.0.1:{port}"));
    cmd
}

/// Spawn the daemon of `cmd` (a `statusd run` command) on any free port: it binds
/// `127.0.0.1:0` and writes the address it got to a `--ready-file` in `dir` once ready; no port
/// is chosen before the daemon binds it, so none can be taken meanwhile.
pub async fn spawn_ready(cmd: &mut std::process::Command, dir: &std::path::Path) -> (Daemon, u16) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let file = dir.join(format!(
        "statusd-ready-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&file);
    cmd.env("STATUSD__API__LISTEN", "127.0.0.1:0")
        .arg("--ready-file")
        .arg(&file);
    let mut daemon = cmd.spawn_daemon();
    let mut port = 0;
    wait_for(Duration::from_secs(20), "the daemon's ready file", || {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("statusd exited before it was ready: {status}");
        }
        port = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().rsplit(':').next().and_then(|p| p.parse().ok()))
            .unwrap_or(0);
        port != 0
    })
    .await;
    (daemon, port)
}

/// `statusd run` with accounts of the configuration file, each `(id, data center, client
/// secret)` (the sandbox's client id), its store in `dir`: to be started with [`spawn_ready`].
pub fn accounts_command(
    dir: &std::path::Path,
    accounts: &[(&str, &Sandbox, &str)],
) -> std::process::Command {
    let config = dir.join("accounts.toml");
    let mut toml = String::new();
    for (id, sb, secret) in accounts {
        toml.push_str(&format!(
            "[accounts.{id}]\ndatacenter_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{secret}\"\n",
            sb.url, sb.client_id
        ));
    }
    std::fs::write(&config, toml).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_statusd"));
    cmd.args(["run", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STATUSD__INTEGRATION__APPLICATION_CODE", "vendor.tests")
        .env("STATUSD__STORE__PATH", dir.join("store"))
        .env("STATUSD__DELIVERY__INITIAL_BACKOFF", "50ms")
        .env("STATUSD__DELIVERY__MAX_BACKOFF", "200ms")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

/// A sandbox data center answering every status report 503: events stay pending.
pub async fn sandbox_refusing_reports() -> Sandbox {
    sandbox_refusing_reports_for(None).await
}

/// [`sandbox_refusing_reports`], each refusal with this `Retry-After` (a long one keeps many
/// tenants waiting instead of retrying).
pub async fn sandbox_refusing_reports_for(retry_after: Option<&str>) -> Sandbox {
    statusd::platform::install_crypto_provider();
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    sb.inject(statusd::sandbox::Fault {
        status: Some(503),
        retry_after: retry_after.map(str::to_string),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    sb
}

/// An HTTP client for a test (the crypto provider installed first, whatever ran before).
pub fn http_client() -> reqwest::Client {
    statusd::platform::install_crypto_provider();
    reqwest::Client::new()
}

/// Wait until the daemon on `port` answers `/readyz` with 200.
pub async fn wait_ready(http: &reqwest::Client, port: u16) {
    wait_for_async(Duration::from_secs(20), "daemon ready", || async {
        http.get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// The body of a GET, as text.
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// A GET answered with JSON.
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// A daemon started by a test. It is killed and reaped when dropped, so a test that fails
/// half-way leaves no process behind.
pub struct Daemon(Option<std::process::Child>);

impl std::ops::Deref for Daemon {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("a running daemon")
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("a running daemon")
    }
}

impl Daemon {
    /// A handle holding no process (a placeholder while a replica is replaced).
    pub fn none() -> Daemon {
        Daemon(None)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Start a command as a [`Daemon`].
pub trait SpawnDaemon {
    fn spawn_daemon(&mut self) -> Daemon;
}

impl SpawnDaemon for std::process::Command {
    fn spawn_daemon(&mut self) -> Daemon {
        Daemon(Some(self.spawn().expect("start statusd")))
    }
}

/// A new secret key at `path`, made by the binary (`statusd keygen`).
pub fn keygen(path: &std::path::Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
        .arg("keygen")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
