//! Probes and lists answer at once whatever the network does, through the real binary: a token
//! endpoint that answers after 20 s, a data center that accepts connections and never answers,
//! and a PostgreSQL store that is stopped. Each time `/livez`, `/readyz`, `/metrics`,
//! `/v1/status` and `/v1/accounts` are asked 20 times, and each answer comes within 500 ms (a
//! wait on the network would take the 20 s, or for ever).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::json;
use statusd::sandbox::{Sandbox, SandboxOptions};

const PROBES: [&str; 5] = [
    "/livez",
    "/readyz",
    "/metrics",
    "/v1/status",
    "/v1/accounts",
];

/// Ask each probe 20 times, each within 500 ms.
async fn probe_all(port: u16) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    for round in 0..20 {
        for path in PROBES {
            let r = http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!("round {round}: {path} gave no answer within 500 ms: {e}")
                });
            // The store stopped makes /readyz say 503: an answer all the same.
            assert!(
                r.status().as_u16() < 500 || r.status() == 503,
                "round {round}: {path}: {}",
                r.status()
            );
        }
    }
}

/// A data center on loopback that accepts connections; `token_after` = None never answers at
/// all, Some(d) answers the token request after `d` (and never anything else).
async fn slow_datacenter(token_after: Option<Duration>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    match token_after {
        None => {
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((conn, _)) = listener.accept().await {
                    held.push(conn);
                }
            });
        }
        Some(after) => {
            let app = axum::Router::new().fallback(move || async move {
                tokio::time::sleep(after).await;
                axum::Json(json!({"access_token": "late", "expires_in": 3600}))
            });
            tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            });
        }
    }
    url
}

/// The daemon with its one account on `url`, an event posted for it (so a token is asked for),
/// then every probe asked.
async fn probes_answer_while_the_datacenter_is(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = daemon_command(url, "client-1", "secret-1", &dir.path().join("store"), 0);
    // The request timeout is long: the token request stays in flight while the probes run.
    cmd.env("STATUSD__PLATFORM__REQUEST_TIMEOUT", "60s")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (_d, port) = spawn_ready(&mut cmd, dir.path()).await;
    let http = http_client();
    for _ in 0..3 {
        let r = http
            .post(format!("http://127.0.0.1:{port}/v1/events"))
            .json(&json!({"tenant_id": uuid::Uuid::new_v4(), "type": "activation"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    probe_all(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_a_token_takes_20_s() {
    let url = slow_datacenter(Some(Duration::from_secs(20))).await;
    probes_answer_while_the_datacenter_is(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_a_datacenter_never_answers() {
    let url = slow_datacenter(None).await;
    probes_answer_while_the_datacenter_is(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_postgresql_is_stopped() {
    let Some(mut server) = common::pg::PgServer::start() else {
        return;
    };
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = daemon_command(
        &sb.url,
        &sb.client_id,
        &sb.client_secret,
        &dir.path().join("store"),
        0,
    );
    cmd.env("STATUSD__STORE__BACKEND", "postgres")
        .env("STATUSD__STORE__POSTGRES__URL", server.url())
        .env("STATUSD__STORE__POSTGRES__SCHEMA", "probes")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (_d, port) = spawn_ready(&mut cmd, dir.path()).await;
    server.halt();
    probe_all(port).await;
    server.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_refused_by_the_token_endpoint_holds_back_no_other_account_on_its_tenant() {
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Two accounts on one data center: `refused` with a wrong secret, `good` with the right one.
    let mut cmd = accounts_command(
        dir.path(),
        &[
            ("refused", &sb, "not-the-secret"),
            ("good", &sb, &sb.client_secret),
        ],
    );
    let (_d, port) = spawn_ready(&mut cmd, dir.path()).await;
    let http = http_client();
    let tenant = customers(&sb, 1)[0];
    let post = |account: &'static str, action: String| {
        http.post(format!("http://127.0.0.1:{port}/v1/events"))
            .json(&json!({"tenant_id": tenant, "type": "custom", "category": "lanes", "action": action, "account": account}))
            .send()
    };
    // The refused account's event is the tenant's oldest.
    assert_eq!(post("refused", "r-1".into()).await.unwrap().status(), 202);
    let tokens = sb.requests_to("token");
    wait_for(Duration::from_secs(10), "the refused token request", || {
        sb.requests_to("token") > tokens
    })
    .await;
    for n in 1..=3 {
        assert_eq!(post("good", format!("g-{n}")).await.unwrap().status(), 202);
    }
    wait_for(
        Duration::from_secs(20),
        "the good account's events delivered",
        || {
            let got = actions_by_tenant(&sb);
            (1..=3).all(|n| {
                got.get(&tenant)
                    .is_some_and(|v| v.contains(&format!("g-{n}")))
            })
        },
    )
    .await;
    let got = actions_by_tenant(&sb);
    assert!(
        !got.get(&tenant).unwrap().contains(&"r-1".to_string()),
        "the refused account's event went out"
    );
    let accounts = get_json(&http, &format!("http://127.0.0.1:{port}/v1/accounts")).await;
    let refused = accounts["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "refused")
        .unwrap()
        .clone();
    assert_eq!(refused["token"], "failing", "{refused}");
    assert_eq!(refused["pending_events"], 1, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_whose_reports_fail_holds_back_no_other_account_on_its_tenant() {
    // `down` reports to a data center that answers every report 503; `up` to one that works.
    let down = sandbox_refusing_reports().await;
    let up = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = accounts_command(
        dir.path(),
        &[
            ("down", &down, &down.client_secret),
            ("up", &up, &up.client_secret),
        ],
    );
    let (_d, port) = spawn_ready(&mut cmd, dir.path()).await;
    let http = http_client();
    let tenant = customers(&up, 1)[0];
    let post = |account: &'static str, action: String| {
        http.post(format!("http://127.0.0.1:{port}/v1/events"))
            .json(&json!({"tenant_id": tenant, "type": "custom", "category": "lanes", "action": action, "account": account}))
            .send()
    };
    assert_eq!(post("down", "d-1".into()).await.unwrap().status(), 202);
    wait_for(
        Duration::from_secs(10),
        "the failing account's report tried",
        || down.requests_to("status") >= 1,
    )
    .await;
    for n in 1..=3 {
        assert_eq!(post("up", format!("u-{n}")).await.unwrap().status(), 202);
    }
    wait_for(
        Duration::from_secs(20),
        "the other account's events delivered",
        || {
            let got = actions_by_tenant(&up);
            (1..=3).all(|n| {
                got.get(&tenant)
                    .is_some_and(|v| v.contains(&format!("u-{n}")))
            })
        },
    )
    .await;
    // The failing account keeps trying, in its own backoff.
    let tried = down.requests_to("status");
    wait_for(
        Duration::from_secs(10),
        "the failing account retried",
        || down.requests_to("status") > tried,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_with_200_000_events_pending() {
    use statusd::store::{EventKind, NewEvent, Queue, StoreOptions};
    // Reports are refused with a long Retry-After: the 1 000 tenants wait rather than retry
    // every few hundred milliseconds, so what is measured is the probes, not a busy machine.
    let sb = sandbox_refusing_reports_for(Some("300")).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    {
        let q = Queue::open(&store, StoreOptions::default()).unwrap();
        let tenants: Vec<uuid::Uuid> = (0..1000u128)
            .map(|i| uuid::Uuid::from_u128(0x9000_0000 + i))
            .collect();
        for chunk in 0..200 {
            let events = tenants
                .iter()
                .map(|t| NewEvent {
                    tenant_id: *t,
                    kind: EventKind::Custom,
                    category: "probe".into(),
                    action: format!("{chunk}"),
                    idempotency_key: None,
                    occurred_at_ms: None,
                    account: None,
                })
                .collect();
            q.enqueue(events).await.unwrap();
        }
        q.sync().await.unwrap();
    }
    let mut cmd = daemon_command(&sb.url, &sb.client_id, &sb.client_secret, &store, 0);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let (_d, port) = spawn_ready(&mut cmd, dir.path()).await;
    probe_all(port).await;
    let accounts = get_json(
        &http_client(),
        &format!("http://127.0.0.1:{port}/v1/accounts"),
    )
    .await;
    assert_eq!(
        accounts["items"][0]["pending_events"], 200_000,
        "{accounts}"
    );
}
