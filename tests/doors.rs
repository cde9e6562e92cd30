//! What a token holder, a neighbour or a stolen record can do, through the real binary: the
//! intake token cannot change anything (403 naming the admin role); without a token, a request
//! addressed to another host is refused; probes show reason codes, not error texts; a TOML
//! syntax error never shows the line; an export is readable by its owner alone; a key rotation
//! (`store.previous_secret_key_file`, `statusd store rekey`) on sled.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use statusd::sandbox::{Sandbox, SandboxOptions};

const INTAKE: &str = "intake-token-of-the-backend-5d1e";
const ADMIN: &str = "admin-token-of-the-operator-9b2c";

fn bin() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_statusd"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

/// The daemon on `sb` with `env` set last; ready.
async fn daemon(sb: &Sandbox, dir: &Path, env: &[(&str, &str)]) -> (Daemon, u16) {
    let mut cmd = daemon_command(
        &sb.url,
        &sb.client_id,
        &sb.client_secret,
        &dir.join("store"),
        0,
    );
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (d, port) = spawn_ready(&mut cmd, dir).await;
    wait_for_async(Duration::from_secs(20), "daemon ready", || async {
        http_client()
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    (d, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_token_changes_nothing_and_the_admin_token_does() {
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_d, port) = daemon(
        &sb,
        dir.path(),
        &[
            ("STATUSD__API__TOKEN", INTAKE),
            ("STATUSD__API__ADMIN_TOKEN", ADMIN),
        ],
    )
    .await;
    let http = http_client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let some = uuid::Uuid::new_v4();
    let admin_routes: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (
            reqwest::Method::POST,
            "/v1/accounts".into(),
            Some(json!({"datacenter_url": sb.url, "client_id": "c", "client_secret": "s"})),
        ),
        (
            reqwest::Method::PUT,
            "/v1/accounts/default/credentials".into(),
            Some(json!({"client_secret": "s"})),
        ),
        (
            reqwest::Method::DELETE,
            "/v1/accounts/default?force=true".into(),
            None,
        ),
        (
            reqwest::Method::POST,
            "/v1/dead-letters/retry-all".into(),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("/v1/dead-letters/{some}/retry"),
            None,
        ),
        (
            reqwest::Method::DELETE,
            format!("/v1/dead-letters/{some}"),
            None,
        ),
        (reqwest::Method::POST, "/v1/reconcile/tenants".into(), None),
        (reqwest::Method::POST, "/v1/fusion/login".into(), None),
    ];
    for (method, path, body) in &admin_routes {
        let mut rb = http.request(method.clone(), url(path)).bearer_auth(INTAKE);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 403, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "forbidden", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("admin"),
            "{v}"
        );
        // Without a token: 401, as before.
        let r = http
            .request(method.clone(), url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path}");
    }
    // The intake token takes events and reads.
    let r = http
        .post(url("/v1/events"))
        .bearer_auth(INTAKE)
        .json(&json!({"tenant_id": sb.root_tenant, "type": "activation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for path in [
        "/v1/accounts",
        "/v1/status",
        "/v1/dead-letters",
        "/v1/cluster",
    ] {
        let r = http
            .get(url(path))
            .bearer_auth(INTAKE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // The admin token does both.
    let r = http
        .post(url("/v1/dead-letters/retry-all"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(url("/v1/accounts"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_a_request_for_another_host_is_refused() {
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_d, port) = daemon(&sb, dir.path(), &[]).await;
    let http = http_client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for (method, path) in [
        (reqwest::Method::GET, "/v1/status"),
        (reqwest::Method::GET, "/v1/accounts"),
        (reqwest::Method::POST, "/v1/dead-letters/retry-all"),
    ] {
        let r = http
            .request(method.clone(), url(path))
            .header("Host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["field"], "Host", "{v}");
        let r = http
            .request(method.clone(), url(path))
            .header("Host", format!("localhost:{port}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method} {path}");
    }
    let r = http
        .post(url("/v1/events"))
        .header("Host", "evil.example:8750")
        .json(&json!({"tenant_id": sb.root_tenant, "type": "activation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The probes stay open to anyone: they say nothing but reason codes.
    let r = http
        .get(url("/readyz"))
        .header("Host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_gives_reason_codes_and_status_the_texts() {
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = daemon_command(
        &sb.url,
        &sb.client_id,
        "a-wrong-secret",
        &dir.path().join("store"),
        0,
    );
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let (_d, port) = spawn_ready(&mut cmd, dir.path()).await;
    let http = http_client();
    wait_ready(&http, port).await;
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/events"))
        .json(&json!({"tenant_id": sb.root_tenant, "type": "activation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status_url = format!("http://127.0.0.1:{port}/v1/status");
    wait_for_async(
        Duration::from_secs(20),
        "the refusal in /v1/status",
        || async {
            get_json(&http, &status_url).await["platform"]["authentication_failing"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("invalid_client"))
        },
    )
    .await;
    let ready = get_text(&http, &format!("http://127.0.0.1:{port}/readyz")).await;
    let v: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(v["authentication"], "failing", "{ready}");
    assert!(
        !ready.contains("invalid_client") && !ready.contains("token"),
        "{ready}"
    );
}

#[test]
fn a_toml_syntax_error_names_the_place_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("statusd.toml");
    std::fs::write(
        &path,
        "[platform]\nbase_url = \"https://eu2-cloud.acronis.com\"\nclient_id = \"c\"\nclient_secret = \"abc-SECRET-4f1a\n[integration]\napplication_code = \"x\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(!text.contains("SECRET-4f1a"), "the secret is shown: {text}");
    assert!(
        text.contains("line 4") && text.contains("platform.client_secret"),
        "{text}"
    );
}

#[test]
fn check_config_says_when_one_token_opens_every_door() {
    let out = bin()
        .arg("check-config")
        .env(
            "STATUSD__PLATFORM__BASE_URL",
            "https://eu2-cloud.acronis.com",
        )
        .env("STATUSD__PLATFORM__CLIENT_ID", "c")
        .env("STATUSD__PLATFORM__CLIENT_SECRET", "s")
        .env("STATUSD__INTEGRATION__APPLICATION_CODE", "vendor.tests")
        .env("STATUSD__API__TOKEN", INTAKE)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("api.admin_token is not set"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(INTAKE));
    // A short token is refused, naming the key.
    let out = bin()
        .arg("check-config")
        .env(
            "STATUSD__PLATFORM__BASE_URL",
            "https://eu2-cloud.acronis.com",
        )
        .env("STATUSD__PLATFORM__CLIENT_ID", "c")
        .env("STATUSD__PLATFORM__CLIENT_SECRET", "s")
        .env("STATUSD__INTEGRATION__APPLICATION_CODE", "vendor.tests")
        .env("STATUSD__API__ADMIN_TOKEN", "short")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("api.admin_token") && err.contains("16"),
        "{err}"
    );
}

/// Add an account through the API of the daemon on `port` (the sandbox `sb` as its data center).
async fn add_account(http: &reqwest::Client, port: u16, sb: &Sandbox, id: &str) {
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/accounts"))
        .json(&json!({"id": id, "datacenter_url": sb.url, "client_id": sb.client_id, "client_secret": sb.client_secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_is_its_owners_alone_and_a_key_rotates_on_sled() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.key");
    let new = dir.path().join("new.key");
    keygen(&old);
    keygen(&new);
    let http = http_client();
    let old_s = old.to_str().unwrap();
    let new_s = new.to_str().unwrap();
    let (d, port) = daemon(
        &sb,
        dir.path(),
        &[("STATUSD__STORE__SECRET_KEY_FILE", old_s)],
    )
    .await;
    add_account(&http, port, &sb, "p1").await;
    assert!(sigterm_and_wait(d).await.success());
    let store = dir.path().join("store");
    let store_cmd = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = bin();
        cmd.arg("store")
            .args(args)
            .env("STATUSD__STORE__PATH", &store)
            .env("STATUSD__PLATFORM__ALLOWED_HOSTS", "127.0.0.1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };

    // The export holds sealed secrets and tenant data: mode 0600 whatever the umask.
    let export = dir.path().join("export.jsonl");
    let out = store_cmd(&["export", "--out", export.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&export).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // The new key alone cannot open what the old one sealed: refused, nothing dropped.
    let out = store_cmd(&["rekey"], &[("STATUSD__STORE__SECRET_KEY_FILE", new_s)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("p1") && err.contains("neither"), "{err}");
    // With the previous key beside it, every value is sealed again under the new one.
    let rotate = [
        ("STATUSD__STORE__SECRET_KEY_FILE", new_s),
        ("STATUSD__STORE__PREVIOUS_SECRET_KEY_FILE", old_s),
    ];
    let out = store_cmd(&["rekey"], &rotate);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("1 value(s) sealed again"), "{said}");
    let out = store_cmd(&["rekey"], &rotate);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("0 value(s) sealed again") && said.contains("1 already under it"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The previous key can go: the daemon runs on the new key alone and delivers for p1.
    let (_d, port) = daemon(
        &sb,
        dir.path(),
        &[("STATUSD__STORE__SECRET_KEY_FILE", new_s)],
    )
    .await;
    let accounts = get_json(&http, &format!("http://127.0.0.1:{port}/v1/accounts")).await;
    assert!(
        accounts["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "p1"),
        "{accounts}"
    );
    let before = sb.requests_to("status");
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/events"))
        .json(&json!({"tenant_id": sb.root_tenant, "type": "activation", "account": "p1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_for(Duration::from_secs(20), "p1's event delivered", || {
        sb.requests_to("status") > before
    })
    .await;
}
