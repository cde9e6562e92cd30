//! `statusd store verify|compact|export|import` and `store.max_size`, through the real binary on
//! a real sled store: damage found and repaired, space given back, kills survived, a round trip
//! through an export, the bound refusing intake and lifting by itself.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use statusd::sandbox::{Fault, Sandbox, SandboxOptions};

const WAIT: Duration = Duration::from_secs(60);

fn statusd(store: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_statusd"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("STATUSD__STORE__PATH", store);
    cmd
}

/// Run a store command: its exit code and what it printed.
fn store_cmd(store: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut all = vec!["store"];
    all.extend_from_slice(args);
    let out = statusd(store, &all)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn verify_json(store: &Path) -> (Option<i32>, Value) {
    let (code, text) = store_cmd(store, &["verify", "--json"], &[]);
    let start = text.find('{').unwrap_or_else(|| panic!("{text}"));
    let end = text.rfind('}').unwrap();
    (code, serde_json::from_str(&text[start..=end]).unwrap())
}

fn checked(v: &Value, name: &str) -> u64 {
    v["found"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()["checked"]
        .as_u64()
        .unwrap()
}

/// A daemon on `store` reporting to `base_url` (a sandbox, or nothing listening).
fn daemon(
    base_url: &str,
    client: (&str, &str),
    store: &Path,
    env: &[(&str, &str)],
) -> (Daemon, u16) {
    let port = free_port();
    let mut cmd = daemon_command(base_url, client.0, client.1, store, port);
    cmd.envs(env.iter().copied());
    (cmd.spawn_daemon(), port)
}

/// Custom events whose action names their place: `<tenant index>-<n>`, posted in arrays.
async fn post_numbered(
    http: &reqwest::Client,
    port: u16,
    tenants: &[uuid::Uuid],
    per_tenant: usize,
) {
    let mut batch = Vec::new();
    for n in 0..per_tenant {
        for (i, t) in tenants.iter().enumerate() {
            batch.push(json!({"tenant_id": t, "type": "custom", "category": "test", "action": format!("{i}-{n}")}));
            if batch.len() == 500 {
                let r = http
                    .post(format!("http://127.0.0.1:{port}/v1/events"))
                    .json(&Value::Array(std::mem::take(&mut batch)))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        }
    }
    if !batch.is_empty() {
        let r = http
            .post(format!("http://127.0.0.1:{port}/v1/events"))
            .json(&Value::Array(batch))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
}

/// Every numbered event reached the sandbox, each tenant's in the order posted.
async fn all_delivered_in_order(sb: &Sandbox, tenants: &[uuid::Uuid], per_tenant: usize) {
    wait_for(WAIT, "every event delivered", || {
        let got = actions_by_tenant(sb);
        tenants
            .iter()
            .all(|t| got.get(t).map_or(0, |a| a.len()) >= per_tenant)
    })
    .await;
    let got = actions_by_tenant(sb);
    for (i, t) in tenants.iter().enumerate() {
        let mut seen = got[t].clone();
        seen.dedup();
        let want: Vec<String> = (0..per_tenant).map(|n| format!("{i}-{n}")).collect();
        assert!(
            seen == want,
            "tenant {i}: {} events, not in the order posted: {:?}",
            seen.len(),
            &seen[..seen.len().min(10)]
        );
    }
}

/// A stopped store holding `per_tenant` pending events for each of `tenants`.
async fn pending_store(store: &Path, tenants: &[uuid::Uuid], per_tenant: usize) {
    let http = http_client();
    let (d, port) = daemon("http://127.0.0.1:9", ("x", "y"), store, &[]);
    wait_ready(&http, port).await;
    post_numbered(&http, port, tenants, per_tenant).await;
    assert!(sigterm_and_wait(d).await.success());
}

async fn sandbox() -> Sandbox {
    statusd::platform::install_crypto_provider();
    Sandbox::start(SandboxOptions::default()).await.unwrap()
}

#[tokio::test]
async fn verify_finds_a_damaged_index_and_repair_mends_it_without_losing_an_event() {
    let sb = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tenants = customers(&sb, 5);
    pending_store(&store, &tenants, 10).await;
    let (code, text) = store_cmd(&store, &["verify"], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("sound") && text.contains("50 checked"),
        "{text}"
    );

    // Damage on purpose: two pending keys gone, a counter wrong, a dangling dead letter.
    {
        let db = sled::open(&store).unwrap();
        let tree = db.open_tree("statusd").unwrap();
        let keys: Vec<_> = tree
            .scan_prefix([b'p'])
            .keys()
            .take(2)
            .map(|k| k.unwrap())
            .collect();
        for k in keys {
            tree.remove(k).unwrap();
        }
        let mut bad = vec![b'm'];
        bad.extend_from_slice(b"depth");
        tree.insert(bad, &7u64.to_be_bytes()).unwrap();
        let mut dangling = vec![b'd'];
        dangling.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        tree.insert(dangling, &[]).unwrap();
        db.flush().unwrap();
    }
    let (code, text) = store_cmd(&store, &["verify"], &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not in its tenant's queue"), "{text}");
    assert!(
        text.contains("pending counter 7, 50 events pending"),
        "{text}"
    );
    assert!(text.contains("has no dead record"), "{text}");
    let (code, text) = store_cmd(&store, &["verify", "--repair"], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("repaired"), "{text}");
    let (code, v) = verify_json(&store);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(checked(&v, "pending index"), 50);
    // And every event is delivered, in order.
    let http = http_client();
    let (_d, port) = daemon(&sb.url, (&sb.client_id, &sb.client_secret), &store, &[]);
    wait_ready(&http, port).await;
    all_delivered_in_order(&sb, &tenants, 10).await;
}

#[tokio::test]
async fn compact_gives_back_space_and_a_kill_at_any_step_loses_nothing() {
    let sb = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tenants = customers(&sb, 8);
    let http = http_client();
    // Many events delivered, then compacted away by the daemon (a retention of 1 s, and the
    // compaction a start runs): sled keeps the space they took.
    let env = [
        ("STATUSD__DELIVERY__MAX_BATCH_EVENTS", "100"),
        ("STATUSD__STORE__DELIVERED_RETENTION", "1s"),
    ];
    let first = {
        let (d, port) = daemon(&sb.url, (&sb.client_id, &sb.client_secret), &store, &env);
        wait_ready(&http, port).await;
        let r: Value = http
            .post(format!("http://127.0.0.1:{port}/v1/events"))
            .json(&json!({"tenant_id": customers(&sb, 9)[8], "type": "activation"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        post_numbered(&http, port, &tenants, 1000).await;
        all_delivered_in_order(&sb, &tenants, 1000).await;
        assert!(sigterm_and_wait(d).await.success());
        r["id"].as_str().unwrap().to_string()
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    {
        let (d, port) = daemon(&sb.url, (&sb.client_id, &sb.client_secret), &store, &env);
        wait_ready(&http, port).await;
        wait_for_async(WAIT, "delivered events compacted away", || async {
            http.get(format!("http://127.0.0.1:{port}/v1/events/{first}"))
                .send()
                .await
                .unwrap()
                .status()
                == 404
        })
        .await;
        assert!(sigterm_and_wait(d).await.success());
    }
    let before = statusd::store::dir_size(&store);
    let (code, text) = store_cmd(&store, &["compact"], &[]);
    assert_eq!(code, Some(0), "{text}");
    let after = statusd::store::dir_size(&store);
    eprintln!("compaction: {before} -> {after} bytes ({text})");
    assert!(after < before, "{before} -> {after}");
    assert!(text.contains("before") && text.contains("after"), "{text}");
    let (code, v) = verify_json(&store);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(checked(&v, "event records"), 0);

    // Kills at each step of a compaction of a store with pending events.
    let store = dir.path().join("pending");
    pending_store(&store, &tenants, 25).await;
    for point in [
        "compact-copied",
        "compact-marked",
        "compact-half-swapped",
        "compact-swapped",
    ] {
        let (code, text) = store_cmd(&store, &["compact"], &[("STATUSD_FAILPOINT", point)]);
        assert_ne!(code, Some(0), "{point}: {text}");
        assert!(text.contains(&format!("failpoint {point}")), "{text}");
        let (code, v) = verify_json(&store);
        assert_eq!(code, Some(0), "after a kill at {point}: {v}");
        assert_eq!(checked(&v, "pending index"), 200, "after a kill at {point}");
        for leftover in ["pending.compact-tmp", "pending.compact-old"] {
            assert!(
                !dir.path().join(leftover).exists(),
                "{leftover} after {point}"
            );
        }
    }
    let sb2 = sandbox().await;
    let (_d, port) = daemon(&sb2.url, (&sb2.client_id, &sb2.client_secret), &store, &[]);
    wait_ready(&http, port).await;
    let tenants_seen: Vec<uuid::Uuid> = tenants.clone();
    all_delivered_in_order(&sb2, &tenants_seen, 25).await;
}

#[tokio::test]
async fn export_then_import_delivers_the_same_pending_events_in_the_same_order() {
    let sb = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("old");
    let tenants = customers(&sb, 6);
    pending_store(&store, &tenants, 30).await;
    let file = dir.path().join("backup.jsonl");
    let (code, text) = store_cmd(&store, &["export", "--out", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("180 events (180 pending"), "{text}");
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(lines[0].contains("\"version\":1"), "{}", lines[0]);
    assert!(lines.last().unwrap().contains("\"kind\":\"end\""));

    // Refused: a cut-off file, an unknown version, a store that is not empty.
    let target = dir.path().join("new");
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n")).unwrap();
    let (code, text) = store_cmd(&target, &["import", cut.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cut off"), "{text}");
    assert!(!target.exists(), "a refused import leaves nothing");
    let v2 = dir.path().join("v2.jsonl");
    let mut other = lines.clone();
    other[0] = other[0].replace("\"version\":1", "\"version\":2");
    std::fs::write(&v2, other.join("\n")).unwrap();
    let (code, text) = store_cmd(&target, &["import", v2.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("version 2"), "{text}");
    let (code, text) = store_cmd(&store, &["import", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not empty"), "{text}");

    let (code, text) = store_cmd(&target, &["import", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{text}");
    let (code, v) = verify_json(&target);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(checked(&v, "pending index"), 180);
    let http = http_client();
    let (_d, port) = daemon(&sb.url, (&sb.client_id, &sb.client_secret), &target, &[]);
    wait_ready(&http, port).await;
    all_delivered_in_order(&sb, &tenants, 30).await;
}

#[tokio::test]
async fn store_commands_refuse_while_a_daemon_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let http = http_client();
    let (_d, port) = daemon("http://127.0.0.1:9", ("x", "y"), &store, &[]);
    wait_ready(&http, port).await;
    for args in [vec!["verify"], vec!["compact"], vec!["export"]] {
        let (code, text) = store_cmd(&store, &args, &[]);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(
            text.contains("in use by a running statusd"),
            "{args:?}: {text}"
        );
    }
}

#[tokio::test]
async fn at_store_max_size_intake_answers_507_and_resumes_once_delivery_frees_room() {
    let sb = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let http = http_client();
    // The platform is down: the backlog grows until the bound.
    sb.inject(Fault {
        status: Some(503),
        path_contains: Some("integration_management".into()),
        ..Default::default()
    });
    let (_d, port) = daemon(
        &sb.url,
        (&sb.client_id, &sb.client_secret),
        &store,
        &[
            ("STATUSD__STORE__MAX_SIZE", "3MB"),
            ("STATUSD__DELIVERY__MAX_BATCH_EVENTS", "100"),
        ],
    );
    wait_ready(&http, port).await;
    let tenants = customers(&sb, 10);
    let url = format!("http://127.0.0.1:{port}");
    let post = |n: usize| {
        let body: Vec<Value> = (0..500)
            .map(|k| json!({"tenant_id": tenants[k % tenants.len()], "type": "custom", "category": "fill", "action": format!("{n}-{k}")}))
            .collect();
        http.post(format!("{url}/v1/events")).json(&body).send()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 0;
    let refusal = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bound was never reached"
        );
        let r = post(n).await.unwrap();
        n += 1;
        if r.status() == 507 {
            break r.json::<Value>().await.unwrap();
        }
        assert_eq!(r.status(), 202);
    };
    assert_eq!(refusal["error"]["code"], "store_full", "{refusal}");
    assert_eq!(refusal["error"]["field"], "store.max_size", "{refusal}");
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["failing"],
        "store_full"
    );
    let metrics = get_text(&http, &format!("{url}/metrics")).await;
    assert!(metrics.contains("statusd_store_full 1"), "{metrics}");
    let depth = get_json(&http, &format!("{url}/v1/status")).await["queue"]["depth"]
        .as_u64()
        .unwrap();
    // Nothing of a refused request was stored.
    assert_eq!(depth, (n as u64 - 1) * 500);
    // The platform is back: delivery frees room and intake resumes by itself.
    sb.clear_faults();
    wait_for_async(WAIT, "intake accepting again", || async {
        post(10_000).await.unwrap().status() == 202
    })
    .await;
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
