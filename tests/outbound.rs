//! Where statusd's requests go, through the real binary: a partner's `datacenter_url` is an
//! origin on `platform.allowed_hosts`, checked before anything connects; no redirect is
//! followed; another server's answer is never echoed; a refused add leaves nothing behind;
//! `platform.ca_file` and `platform.proxy` (a real tinyproxy); PostgreSQL URLs off this machine
//! need TLS. A recording server on loopback stands in for an internal service.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::pki::{pki, Pki};
use common::recorder::{Answer, Recorder, INTERNAL};
use common::*;
use serde_json::{json, Value};
use statusd::sandbox::{Sandbox, SandboxOptions};

struct Node {
    _daemon: Daemon,
    port: u16,
    log: PathBuf,
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The vendor's daemon (its file account on `home`, a key for accounts added through the API),
/// logging at info; `env` set last, so it may replace the common settings.
async fn start_node(home: &Sandbox, dir: &Path, name: &str, env: &[(&str, &str)]) -> Node {
    let key = dir.join(format!("{name}.key"));
    keygen(&key);
    let log = dir.join(format!("{name}.log"));
    let mut cmd = daemon_command(
        &home.url,
        &home.client_id,
        &home.client_secret,
        &dir.join(format!("{name}-store")),
        0,
    );
    cmd.env("RUST_LOG", "info")
        .env("STATUSD__STORE__SECRET_KEY_FILE", &key)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (daemon, port) = spawn_ready(&mut cmd, dir).await;
    wait_ready(&http_client(), port).await;
    Node {
        _daemon: daemon,
        port,
        log,
    }
}

async fn add(http: &reqwest::Client, node: &Node, url: &str, client_id: &str) -> (u16, String) {
    let r = http
        .post(node.url("/v1/accounts"))
        .json(&json!({"datacenter_url": url, "client_id": client_id, "client_secret": "partner-secret-1"}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn field_of(body: &str) -> Value {
    serde_json::from_str::<Value>(body).unwrap()["error"]["field"].clone()
}

fn code_of(body: &str) -> Value {
    serde_json::from_str::<Value>(body).unwrap()["error"]["code"].clone()
}

async fn home() -> Sandbox {
    Sandbox::start(SandboxOptions::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_address_reaches_nothing() {
    let home = home().await;
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let rec = Recorder::start(Answer::Token).await;
    let p = rec.port();
    // 127.0.0.1 is named in platform.allowed_hosts (the tests' common setting).
    let node = start_node(&home, dir.path(), "a", &[]).await;

    // Not an origin: a path, a query, userinfo, a fragment.
    for url in [
        format!("http://127.0.0.1:{p}/internal/admin?x="),
        format!("http://127.0.0.1:{p}/internal"),
        format!("http://127.0.0.1:{p}?x=1"),
        format!("http://admin:pw@127.0.0.1:{p}"),
        format!("http://127.0.0.1:{p}#frag"),
    ] {
        let (s, body) = add(&http, &node, &url, "c").await;
        assert_eq!(
            (s, field_of(&body)),
            (422, json!("datacenter_url")),
            "{url}: {body}"
        );
    }
    // A name outside the list, and a loopback name the list does not name.
    for url in [
        "https://evil.example".to_string(),
        format!("http://localhost:{p}"),
        format!("http://127.0.0.2:{p}"),
    ] {
        let (s, body) = add(&http, &node, &url, "c").await;
        assert_eq!(
            (s, code_of(&body)),
            (422, json!("host_not_allowed")),
            "{url}: {body}"
        );
        assert_eq!(field_of(&body), json!("datacenter_url"), "{body}");
    }
    assert_eq!(
        rec.seen(),
        Vec::<String>::new(),
        "a refused address was reached"
    );

    // The default list, and one that names loopback by name only: the address is refused
    // before any connection, the name after it resolves to 127.0.0.1.
    let strict = start_node(
        &home,
        dir.path(),
        "b",
        &[(
            "STATUSD__PLATFORM__ALLOWED_HOSTS",
            "*.acronis.com,localhost",
        )],
    )
    .await;
    let (s, body) = add(&http, &strict, &rec.url, "c").await;
    assert_eq!(
        (s, code_of(&body)),
        (422, json!("host_not_allowed")),
        "{body}"
    );
    let (s, body) = add(&http, &strict, &format!("http://localhost:{p}"), "c").await;
    assert_eq!(
        (s, code_of(&body)),
        (422, json!("host_not_allowed")),
        "{body}"
    );
    assert!(body.contains("loopback"), "{body}");
    assert_eq!(
        rec.seen(),
        Vec::<String>::new(),
        "a refused address was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_never_changes_the_path() {
    let home = home().await;
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let rec = Recorder::start(Answer::Token).await;
    let node = start_node(&home, dir.path(), "a", &[]).await;
    let (s, body) = add(&http, &node, &rec.url, "../../admin/x").await;
    assert_eq!(s, 422, "{body}");
    let seen = rec.seen();
    assert_eq!(
        seen,
        vec![
            "POST /api/2/idp/token".to_string(),
            "GET /api/2/clients/..%2F..%2Fadmin%2Fx".to_string()
        ],
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_an_error_never_followed() {
    let home = home().await;
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let target = Recorder::start(Answer::Token).await;
    let redirector = Recorder::start(Answer::Redirect(format!("{}/steal", target.url))).await;
    let node = start_node(&home, dir.path(), "a", &[]).await;
    let (s, body) = add(&http, &node, &redirector.url, "c").await;
    assert_eq!(
        (s, code_of(&body)),
        (422, json!("not_a_datacenter")),
        "{body}"
    );
    assert!(body.contains("307") && body.contains("redirect"), "{body}");
    assert_eq!(redirector.seen(), vec!["POST /api/2/idp/token".to_string()]);
    assert_eq!(
        target.seen(),
        Vec::<String>::new(),
        "the redirect was followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_servers_answer_is_never_echoed_and_a_failed_add_leaves_no_trace() {
    let home = home().await;
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let internal = Recorder::start(Answer::InternalError).await;
    let node = start_node(&home, dir.path(), "a", &[]).await;
    let metrics_before = get_text(&http, &node.url("/metrics")).await;

    let (s, body) = add(&http, &node, &internal.url, "c").await;
    assert_eq!(s, 502, "{body}");
    assert!(
        !body.contains(INTERNAL),
        "the other server's body came back: {body}"
    );
    assert!(!body.contains('\n'), "more than one line: {body}");
    assert_eq!(internal.seen(), vec!["POST /api/2/idp/token".to_string()]);

    // 50 more failed adds, each to another port where nothing listens.
    for _ in 0..50 {
        let (s, body) = add(
            &http,
            &node,
            &format!("http://127.0.0.1:{}", free_port()),
            "c",
        )
        .await;
        assert!(s == 422 || s == 504, "{s} {body}");
    }
    let metrics_after = get_text(&http, &node.url("/metrics")).await;
    let datacenters = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split("datacenter=\"").nth(1))
            .map(|rest| rest.split('"').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        datacenters(&metrics_before),
        datacenters(&metrics_after),
        "a refused account left series behind"
    );
    assert_eq!(
        datacenters(&metrics_after),
        [home.url.trim_start_matches("http://").to_string()].into(),
    );
    let log = node.log();
    assert!(
        !log.contains(INTERNAL),
        "the other server's body is in the log"
    );
    assert!(!log.contains("partner-secret-1"), "a secret is in the log");
}

// TLS with a private CA, and a proxy ------------------------------------------------------------

/// A TLS endpoint on loopback (the test CA's certificate) that forwards to `to`: a data center
/// behind a private CA.
async fn tls_front(
    pki: &Pki,
    to: std::net::SocketAddr,
) -> (String, tokio_util::sync::CancellationToken) {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    statusd::platform::install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = until.cancelled() => return,
                r = listener.accept() => r.unwrap(),
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (url, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_only_through_ca_file() {
    let home = home().await;
    let partner = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let pki = pki(dir.path());
    let (front, _stop) = tls_front(&pki, partner.addr).await;
    let body = |id: &str| json!({"id": id, "datacenter_url": front, "client_id": partner.client_id, "client_secret": partner.client_secret});

    let plain = start_node(&home, dir.path(), "plain", &[]).await;
    let r = http
        .post(plain.url("/v1/accounts"))
        .json(&body("p1"))
        .send()
        .await
        .unwrap();
    let (s, text) = (r.status().as_u16(), r.text().await.unwrap());
    assert_eq!(
        (s, code_of(&text)),
        (422, json!("not_a_datacenter")),
        "{text}"
    );
    assert!(
        text.contains("TLS failed") && text.contains("certificate"),
        "{text}"
    );

    // The other CA is still refused; the test CA is trusted.
    for (name, ca, want) in [("wrong", &pki.other_ca, 422), ("trusting", &pki.ca, 201)] {
        let node = start_node(
            &home,
            dir.path(),
            name,
            &[("STATUSD__PLATFORM__CA_FILE", ca.to_str().unwrap())],
        )
        .await;
        let r = http
            .post(node.url("/v1/accounts"))
            .json(&body("p1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{name}: {}", r.text().await.unwrap());
    }
}

/// Debian's tinyproxy on loopback, logging every connection; killed on drop.
struct Tinyproxy {
    child: std::process::Child,
    url: String,
    log: PathBuf,
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tinyproxy(dir: &Path) -> Tinyproxy {
    let bin = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("tinyproxy must be installed for the proxy test (apt-get install tinyproxy)");
    let port = free_port();
    let log = dir.join("tinyproxy.log");
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 20\nAllow 127.0.0.1\nPidFile \"{}\"\n",
            log.display(),
            dir.join("tinyproxy.pid").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .args(["-d", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Tinyproxy {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_account_request_goes_through_platform_proxy() {
    let home = home().await;
    let partner = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let pki = pki(dir.path());
    let (front, _stop) = tls_front(&pki, partner.addr).await;
    let proxy = tinyproxy(dir.path());
    let proxy_port: u16 = proxy.url.rsplit(':').next().unwrap().parse().unwrap();
    wait_for(Duration::from_secs(10), "tinyproxy listening", || {
        std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_ok()
    })
    .await;
    let node = start_node(
        &home,
        dir.path(),
        "proxied",
        &[
            ("STATUSD__PLATFORM__CA_FILE", pki.ca.to_str().unwrap()),
            ("STATUSD__PLATFORM__PROXY", &proxy.url),
        ],
    )
    .await;
    let r = http
        .post(node.url("/v1/accounts"))
        .json(&json!({"id": "p1", "datacenter_url": front, "client_id": partner.client_id, "client_secret": partner.client_secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let front_hostport = front.trim_start_matches("https://").to_string();
    wait_for(
        Duration::from_secs(10),
        "the proxy logs the CONNECT",
        || {
            std::fs::read_to_string(&proxy.log)
                .unwrap_or_default()
                .contains(&format!("CONNECT {front_hostport}"))
        },
    )
    .await;
}

// PostgreSQL on the wire --------------------------------------------------------------------------

#[test]
fn a_remote_database_without_tls_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    for query in ["", "?sslmode=prefer", "?sslmode=allow"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "STATUSD__PLATFORM__BASE_URL",
                "https://eu2-cloud.acronis.com",
            )
            .env("STATUSD__PLATFORM__CLIENT_ID", "c")
            .env("STATUSD__PLATFORM__CLIENT_SECRET", "s")
            .env("STATUSD__INTEGRATION__APPLICATION_CODE", "vendor.tests")
            .env("STATUSD__STORE__PATH", dir.path().join("store"))
            .env("STATUSD__STORE__BACKEND", "postgres")
            .env(
                "STATUSD__STORE__POSTGRES__URL",
                format!("postgres://statusd:pw@db.invalid:5432/statusd{query}"),
            )
            .env("STATUSD__API__LISTEN", format!("127.0.0.1:{}", free_port()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{query}: {err}");
        assert!(err.contains("store.postgres.url"), "{query}: {err}");
        assert!(
            err.contains("sslmode=require") && err.contains("verify-full"),
            "{query}: {err}"
        );
        assert!(!err.contains("pw@"), "the password is shown: {err}");
    }
}
