//! The second platform, Netaxis Fusion, through the real binary and the sandbox: branding
//! written where it drifted and nowhere else, a dry run, unmanaged and masked properties left
//! alone, paging, token renewal without a new login, the second factor through `statusd fusion
//! login`, a session kept across a restart, and a refused password that does not hammer.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use statusd::sandbox::{Sandbox, SandboxOptions, FUSION_INSTANCE};

struct Setup {
    sb: Sandbox,
    dir: tempfile::TempDir,
}

async fn setup(trusted: bool, subscriptions: usize) -> Setup {
    statusd::platform::install_crypto_provider();
    let sb = Sandbox::start(SandboxOptions {
        fusion_trusted: trusted,
        fusion_subscriptions: subscriptions,
        fusion_password: "fusion-pw".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secret.key");
    statusd::vault::write_new_key(&key).unwrap();
    Setup { sb, dir }
}

fn config(s: &Setup, password: &str) -> std::path::PathBuf {
    let tenants: Vec<String> =
        s.sb.fusion_tenants()
            .iter()
            .map(|(t, _)| format!("\"{t}\""))
            .collect();
    let first = s.sb.fusion_tenants()[0].0;
    let text = format!(
        r#"
[store]
secret_key_file = "{key}"
[fusion]
base_url = "{url}"
draas_instance = "{FUSION_INSTANCE}"
username = "fusion-api"
password = "{password}"
tenants = [{tenants}]
page_size = 25
[fusion.branding.general]
companyName = "Acme Voice"
smtp = {{ host = "smtp.acme.example" }}
[fusion.branding.pages.subscription.subscriptionNumbers.tabs.porting]
enabled = false
[fusion.branding.styling.theme]
selected = "red"
[fusion.tenants_override."{first}".branding.general]
companyName = "Acme Voice EU"
"#,
        key = s.dir.path().join("secret.key").display(),
        url = s.sb.url,
        tenants = tenants.join(", "),
    );
    let path = s.dir.path().join("statusd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The daemon on any free port (it reports the one it bound).
async fn start(s: &Setup, password: &str) -> (Daemon, u16) {
    let cfg = config(s, password);
    let mut cmd = daemon_command(
        &s.sb.url,
        &s.sb.client_id,
        &s.sb.client_secret,
        &s.dir.path().join("store"),
        0,
    );
    cmd.arg("--config").arg(&cfg);
    spawn_ready(&mut cmd, s.dir.path()).await
}

/// `statusd <args>` against the daemon on `port`: exit code and output.
fn cli(s: &Setup, port: u16, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
        .args(args)
        .args(["--api", &format!("http://127.0.0.1:{port}")])
        .arg("--config")
        .arg(s.dir.path().join("statusd.toml"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STATUSD__STORE__PATH", s.dir.path().join("cli-store"))
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn reconcile(http: &reqwest::Client, port: u16, dry_run: bool) -> Value {
    http.post(format!(
        "http://127.0.0.1:{port}/v1/reconcile/fusion-branding?dry_run={dry_run}"
    ))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

fn part(sb: &Sandbox, t: uuid::Uuid, sub: i64, name: &str) -> serde_json::Map<String, Value> {
    sb.fusion_part(t, sub, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_written_once_unmanaged_and_masked_properties_are_left_and_a_dry_run_writes_nothing(
) {
    let s = setup(true, 60).await;
    let http = http_client();
    let (_d, port) = start(&s, "fusion-pw").await;
    wait_ready(&http, port).await;
    let tenants = s.sb.fusion_tenants();
    let subs: usize = tenants.iter().map(|(_, v)| v.len()).sum();
    assert_eq!(subs, 120);

    let r = reconcile(&http, port, false).await;
    assert_eq!(r["outcome"], "success", "{r}");
    // 60 subscriptions per tenant, read 25 a page: every one of them.
    assert_eq!(r["details"]["subscriptions"], 120, "{r}");
    assert_eq!(r["drift"].as_array().unwrap().len(), 120 * 4, "{r}");
    let (_, writes) = s.sb.fusion_counts();
    assert_eq!(writes, 120 * 3, "general, pages and the theme of each");
    let (t0, subs0) = &tenants[0];
    let (t1, subs1) = &tenants[1];
    let g = part(&s.sb, *t0, subs0[0], "general");
    assert_eq!(g["companyName"], "Acme Voice EU", "the tenant's override");
    assert_eq!(
        part(&s.sb, *t1, subs1[0], "general")["companyName"],
        "Acme Voice"
    );
    assert_eq!(g["smtp"]["host"], "smtp.acme.example");
    // Unmanaged and secret properties are as the platform had them.
    assert_eq!(g["smtp"]["port"], 587);
    assert_eq!(g["smtp"]["password"], "smtp-secret");
    assert_eq!(g["apiToken"], "tok-123");
    assert_eq!(g["supportEmail"], "support@example.net");
    let p = part(&s.sb, *t0, subs0[0], "pages");
    assert_eq!(
        p["subscription"]["subscriptionNumbers"]["tabs"]["porting"]["enabled"],
        false
    );
    assert_eq!(
        p["subscription"]["subscriptionNumbers"]["tabs"]["myNumbers"]["enabled"],
        true
    );
    let theme = part(&s.sb, *t0, subs0[0], "styling.theme");
    assert_eq!(theme["selected"], "red");
    assert_eq!(theme["allowed"], json!(["blue", "red", "green"]));
    assert!(
        theme.get("type").is_none(),
        "the type names the part; it is not stored"
    );
    assert_eq!(
        part(&s.sb, *t0, subs0[0], "styling.font")["name"],
        "Avenir Next Cyr",
        "not managed"
    );

    // A second run finds nothing and writes nothing.
    let r = reconcile(&http, port, false).await;
    assert_eq!(
        (r["outcome"].clone(), r["drift"].as_array().unwrap().len()),
        (json!("success"), 0),
        "{r}"
    );
    assert_eq!(s.sb.fusion_counts().1, 360);

    // Drift made behind statusd's back: a dry run lists it (exit 1) and writes nothing.
    let mut changed = part(&s.sb, *t1, subs1[7], "styling.theme");
    changed.insert("selected".into(), json!("green"));
    s.sb.set_fusion_part(*t1, subs1[7], "styling.theme", changed);
    let (code, text) = cli(&s, port, &["reconcile", "fusion-branding", "--dry-run"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("subscription {} styling.theme selected", subs1[7])),
        "{text}"
    );
    assert_eq!(s.sb.fusion_counts().1, 360);
    let (code, text) = cli(&s, port, &["reconcile", "fusion-branding"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(s.sb.fusion_counts().1, 361);
    assert_eq!(
        part(&s.sb, *t1, subs1[7], "styling.theme")["selected"],
        "red"
    );
    // The metrics carry the reconciler's name.
    let m = get_text(&http, &format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(
        m.contains(
            "statusd_reconcile_runs_total{reconciler=\"fusion_branding\",outcome=\"success\"} 4"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_is_renewed_without_a_new_login() {
    let s = setup(true, 3).await;
    let http = http_client();
    let (_d, port) = start(&s, "fusion-pw").await;
    wait_ready(&http, port).await;
    assert_eq!(reconcile(&http, port, false).await["outcome"], "success");
    assert_eq!(s.sb.fusion_counts().0, 1);
    s.sb.expire_fusion_access();
    let r = reconcile(&http, port, true).await;
    assert_eq!(r["outcome"], "success", "{r}");
    assert_eq!(
        s.sb.fusion_counts().0,
        1,
        "renewed with the refresh token, no login"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_factor_goes_through_fusion_login_and_the_session_survives_a_restart() {
    let s = setup(false, 3).await;
    let http = http_client();
    let (d, port) = start(&s, "fusion-pw").await;
    wait_ready(&http, port).await;
    // The platform asks for a code: the run says what to do, and does not log in again.
    let r = reconcile(&http, port, false).await;
    assert_eq!(r["outcome"], "error", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("run `statusd fusion login`"),
        "{r}"
    );
    let r = reconcile(&http, port, false).await;
    assert_eq!(r["outcome"], "error");
    assert_eq!(s.sb.fusion_counts().0, 1, "one login, not one per run");
    let status = get_json(&http, &format!("http://127.0.0.1:{port}/v1/status")).await;
    assert_eq!(status["fusion"], "code_required", "{status}");
    let m = get_text(&http, &format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(m.contains("statusd_fusion_login_required 1"), "{m}");
    // A wrong code is refused; the right one logs in.
    let (code, text) = cli(&s, port, &["fusion", "login", "--code", "not-it"]);
    assert_eq!(code, Some(1), "{text}");
    let (code, text) = cli(
        &s,
        port,
        &["fusion", "login", "--code", &s.sb.fusion_code()],
    );
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(reconcile(&http, port, false).await["outcome"], "success");
    let logins = s.sb.fusion_counts().0;
    // After a restart the kept refresh token is used: no login, no code.
    assert!(sigterm_and_wait(d).await.success());
    s.sb.expire_fusion_access();
    let (_d, port) = start(&s, "fusion-pw").await;
    wait_ready(&http, port).await;
    let r = reconcile(&http, port, true).await;
    assert_eq!(r["outcome"], "success", "{r}");
    assert_eq!(s.sb.fusion_counts().0, logins);
    // The session is sealed in the store: the refresh token is in no file in clear.
    let store = s.dir.path().join("store");
    for entry in walk(&store) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("fr-"),
            "{}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_is_reported_as_auth_and_not_retried_in_a_loop() {
    let s = setup(true, 3).await;
    let http = http_client();
    let (_d, port) = start(&s, "wrong-password").await;
    wait_ready(&http, port).await;
    for _ in 0..5 {
        let r = reconcile(&http, port, false).await;
        assert_eq!(r["outcome"], "error", "{r}");
        assert_eq!(r["details"]["error_class"], "auth", "{r}");
    }
    assert_eq!(
        s.sb.fusion_counts().0,
        1,
        "the refusal is remembered: one login over five runs"
    );
    let status = get_json(&http, &format!("http://127.0.0.1:{port}/v1/status")).await;
    assert_eq!(status["fusion"], "refused", "{status}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscription_waits_its_own_backoff_while_the_others_are_kept() {
    let s = setup(true, 4).await;
    let cfg = std::fs::read_to_string(config(&s, "fusion-pw")).unwrap();
    let toml = format!(
        "{cfg}\n[platform]\nbase_url = \"{}\"\nclient_id = \"{}\"\n[integration]\napplication_code = \"vendor.tests\"\n",
        s.sb.url, s.sb.client_id
    )
    .replace(
        "[store]\n",
        &format!("[store]\npath = \"{}\"\n", s.dir.path().join("store").display()),
    );
    let settings = statusd::config::load_from_str(
        &toml,
        &[(
            "STATUSD__PLATFORM__CLIENT_SECRET",
            s.sb.client_secret.as_str(),
        )],
        statusd::config::Purpose::Run,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = statusd::app::start(settings, Some(listener), false)
        .await
        .unwrap();
    let (t, subs) = s.sb.fusion_tenants()[1].clone();
    let bad = subs[2];
    s.sb.inject(statusd::sandbox::Fault {
        status: Some(500),
        path_contains: Some(format!("/subscriptions/{bad}/configurations")),
        ..Default::default()
    });
    let kind = statusd::reconcile::Kind::FusionBranding;
    running.reconcilers.trigger(kind).await;
    let last = running.reconcilers.status().await["fusion-branding"].clone();
    assert_eq!(
        (last.outcome.unwrap().as_str(), last.errors),
        ("partial", 1)
    );
    assert_eq!(
        part(&s.sb, t, subs[0], "general")["companyName"],
        "Acme Voice"
    );
    assert_eq!(part(&s.sb, t, bad, "general")["companyName"], "Fusion");
    // The platform is fine again, but the next scheduled run leaves that subscription alone
    // (its backoff), and the others are kept as intended.
    s.sb.clear_faults();
    let before = s.sb.stats().requests;
    running.reconcilers.trigger(kind).await;
    let last = running.reconcilers.status().await["fusion-branding"].clone();
    assert_eq!(
        (last.outcome.unwrap().as_str(), last.errors),
        ("success", 0)
    );
    assert_eq!(part(&s.sb, t, bad, "general")["companyName"], "Fusion");
    let asked = s.sb.stats().requests - before;
    assert_eq!(
        asked,
        2 + 7 * 3,
        "the pages, then three parts of each subscription but one"
    );
    // An operator's run does not wait for the backoff.
    let r = running.reconcilers.run_now(kind, false).await.unwrap();
    assert_eq!(r.outcome, "success");
    assert_eq!(part(&s.sb, t, bad, "general")["companyName"], "Acme Voice");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_sends_a_code_is_asked_at_most_once_in_30_s_and_its_body_is_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup(false, 1).await;
    let http = http_client();
    let (_d, port) = start(&s, "fusion-pw").await;
    wait_ready(&http, port).await;
    let login = || {
        http.post(format!("http://127.0.0.1:{port}/v1/fusion/login"))
            .send()
    };
    let first = login().await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["state"], "code_required", "{first}");
    let again = login().await.unwrap();
    assert_eq!(again.status(), 429);
    let wait: u64 = again.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    assert_eq!(s.sb.fusion_counts().0, 1, "one login, so one code sent");
    // The code itself is always taken.
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/fusion/login"))
        .json(&json!({"code": s.sb.fusion_code()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A 50 MB body is refused from its headers, long before it could arrive.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(b"POST /v1/fusion/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 52428800\r\n\r\n{\"code\":\"")
        .await
        .unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
