//! Each account's pending events and dead letters as `GET /v1/accounts` shows them, through the
//! real binary: kept by the store's writes (enqueue, delivery, dead letters, retry, purge),
//! the same after a clean stop, and recounted after `kill -9`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use statusd::sandbox::{Fault, Sandbox};

fn command(sb: &Sandbox, dir: &std::path::Path) -> std::process::Command {
    let secret = sb.client_secret.as_str();
    accounts_command(dir, &[("a", sb, secret), ("b", sb, secret)])
}

/// (pending, dead) of each account.
async fn counts(http: &reqwest::Client, port: u16) -> HashMap<String, (u64, u64)> {
    let v = get_json(http, &format!("http://127.0.0.1:{port}/v1/accounts")).await;
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_string(),
                (
                    a["pending_events"].as_u64().unwrap(),
                    a["dead_letters"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

async fn post(http: &reqwest::Client, port: u16, account: &str, tenant: uuid::Uuid, n: usize) {
    for i in 0..n {
        let r = http
            .post(format!("http://127.0.0.1:{port}/v1/events"))
            .json(&json!({"tenant_id": tenant, "type": "custom", "category": "counts", "action": format!("{account}-{i}"), "account": account}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_accounts_counts_follow_every_write_and_survive_restarts() {
    let sb = sandbox_refusing_reports().await;
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let (d, port) = spawn_ready(&mut command(&sb, dir.path()), dir.path()).await;
    let tenants = customers(&sb, 3);
    post(&http, port, "a", tenants[0], 5).await;
    post(&http, port, "b", tenants[1], 3).await;
    post(&http, port, "b", tenants[2], 1).await;
    let want: HashMap<String, (u64, u64)> =
        [("a".to_string(), (5, 0)), ("b".to_string(), (4, 0))].into();
    assert_eq!(counts(&http, port).await, want);

    // A clean stop keeps them; kill -9 has them recounted at the next open.
    assert!(sigterm_and_wait(d).await.success());
    let (mut d, port) = spawn_ready(&mut command(&sb, dir.path()), dir.path()).await;
    assert_eq!(counts(&http, port).await, want);
    d.kill().unwrap();
    let _ = d.wait();
    let (_d, port) = spawn_ready(&mut command(&sb, dir.path()), dir.path()).await;
    assert_eq!(counts(&http, port).await, want);

    // A refusal that retrying cannot mend: every event becomes a dead letter.
    sb.clear_faults();
    sb.inject(Fault {
        status: Some(400),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    let dead: HashMap<String, (u64, u64)> =
        [("a".to_string(), (0, 5)), ("b".to_string(), (0, 4))].into();
    wait_for_async(Duration::from_secs(20), "every event dead", || async {
        counts(&http, port).await == dead
    })
    .await;
    // Retried: pending again, and delivered once the platform takes them.
    sb.clear_faults();
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/dead-letters/retry-all"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let dead: Value = r.json().await.unwrap();
    assert_eq!(dead["retried"], 9, "{dead}");
    wait_for_async(Duration::from_secs(20), "everything delivered", || async {
        counts(&http, port).await.values().all(|c| *c == (0, 0))
    })
    .await;
}
