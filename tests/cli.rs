//! The operator commands through the real binary against a running daemon: what they print
//! and their exit codes.

mod common;

use std::process::Output;

use common::*;
use statusd::sandbox::SandboxOptions;

async fn statusd(api: &str, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--api".to_string(), api.to_string()]);
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
            .args(&all)
            .env_clear()
            .env("STATUSD_API_TOKEN", "cli-token-of-the-tests")
            .output()
            .expect("statusd runs")
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_print_what_the_daemon_answers() {
    let h = harness(
        SandboxOptions::default(),
        &[("STATUSD__API__TOKEN", "cli-token-of-the-tests")],
    )
    .await;
    let t = h.sandbox.tenant_ids(Some("customer"))[0].to_string();

    let out = statusd(&h.api, &["activate", &t, "--idempotency-key", "k1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(" queued"),
        "{}",
        text(&out.stdout)
    );
    let again = statusd(&h.api, &["activate", &t, "--idempotency-key", "k1"]).await;
    assert_eq!(again.status.code(), Some(0));
    assert!(
        text(&again.stdout).contains("repeated idempotency key"),
        "{}",
        text(&again.stdout)
    );

    let bad = statusd(&h.api, &["deactivate", "not-a-uuid"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("tenant_id"),
        "{}",
        text(&bad.stderr)
    );

    h.drained(std::time::Duration::from_secs(10)).await;
    let status = statusd(&h.api, &["status"]).await;
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    let shown = text(&status.stdout);
    assert!(shown.contains("accepting: true"), "{shown}");
    assert!(shown.contains("RECONCILER"), "{shown}");
    assert!(shown.contains("branding"), "{shown}");

    let json = statusd(&h.api, &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["queue"]["depth"], 0);
    assert_eq!(v["accepting"], true);

    let dry = statusd(&h.api, &["reconcile", "tenants", "--dry-run"]).await;
    assert!(
        matches!(dry.status.code(), Some(0) | Some(1)),
        "{}",
        text(&dry.stderr)
    );
    assert!(
        text(&dry.stdout).contains("tenants reconcile (dry run)"),
        "{}",
        text(&dry.stdout)
    );
    let applied = statusd(&h.api, &["reconcile", "tenants"]).await;
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied.stdout));
    let tenants = statusd(&h.api, &["tenants", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&tenants.stdout).unwrap();
    assert!(v["count"].as_u64().unwrap() > 10, "{v}");

    let dead = statusd(&h.api, &["dead-letters", "list"]).await;
    assert_eq!(dead.status.code(), Some(0));
    assert!(text(&dead.stdout).contains("0 dead letter(s)"));
    let missing = statusd(
        &h.api,
        &["dead-letters", "show", &uuid::Uuid::new_v4().to_string()],
    )
    .await;
    assert_eq!(missing.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_does_not_answer_is_exit_69() {
    let api = format!("http://127.0.0.1:{}", free_port());
    let out = statusd(&api, &["status"]).await;
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not reachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_serves_several_data_centers() {
    use std::io::{BufRead, BufReader};
    statusd::platform::install_crypto_provider();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
        .args(["sandbox", "--listen", "127.0.0.1:0", "--datacenters", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn_daemon();
    let stdout = child.stdout.take().unwrap();
    let urls = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| {
                l.strip_prefix("data center ")
                    .and_then(|rest| rest.split_once(": "))
                    .map(|(_, url)| url.to_string())
            })
            .take(3)
            .collect::<Vec<String>>()
    })
    .await
    .unwrap();
    assert_eq!(urls.len(), 3, "{urls:?}");
    let http = http_client();
    let mut roots = std::collections::HashSet::new();
    for url in &urls {
        let stats = get_json(&http, &format!("{url}/_sandbox/stats")).await;
        roots.insert(stats["root_tenant_id"].as_str().unwrap().to_string());
    }
    assert_eq!(roots.len(), 3, "each data center has a tree of its own");
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}
