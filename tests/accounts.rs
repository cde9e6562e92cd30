//! Several partner accounts in several data centers (each a sandbox of its own): events are
//! routed to their account, each arrives only at its own data center, and one data center
//! failing does not hold back another.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use statusd::app::Running;
use statusd::sandbox::{Fault, Sandbox, SandboxOptions};
use uuid::Uuid;

struct TwoDataCenters {
    eu: Sandbox,
    us: Sandbox,
    running: Running,
    api: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Accounts `eu` and `us`, each in a sandbox data center of its own (`eu_secret` overrides the
/// eu account's secret).
async fn two_data_centers(eu_secret: Option<&str>) -> TwoDataCenters {
    two_data_centers_with(eu_secret, "").await
}

/// The same, with more configuration (TOML tables).
async fn two_data_centers_with(eu_secret: Option<&str>, extra: &str) -> TwoDataCenters {
    statusd::platform::install_crypto_provider();
    let eu = Sandbox::start(SandboxOptions {
        seed: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let us = Sandbox::start(SandboxOptions {
        seed: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[accounts.eu]
datacenter_url = "{}"
client_id = "{}"
client_secret = "{}"
[accounts.us]
datacenter_url = "{}"
client_id = "{}"
client_secret = "{}"
[platform]
request_timeout = "2s"
[integration]
application_code = "vendor.tests"
[store]
path = "{}"
[delivery]
initial_backoff = "50ms"
max_backoff = "300ms"
{}
"#,
        eu.url,
        eu.client_id,
        eu_secret.unwrap_or(&eu.client_secret),
        us.url,
        us.client_id,
        us.client_secret,
        dir.path().display(),
        extra
    );
    let settings =
        statusd::config::load_from_str(&toml, &[], statusd::config::Purpose::Run).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = statusd::app::start(settings, Some(listener), false)
        .await
        .unwrap();
    let api = format!("http://{}", running.api_addr);
    TwoDataCenters {
        eu,
        us,
        running,
        api,
        http: http_client(),
        _dir: dir,
    }
}

impl TwoDataCenters {
    async fn post(&self, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/events", self.api))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

fn events(tenants: &[Uuid], account: &str, per_tenant: usize) -> serde_json::Value {
    let mut out = Vec::new();
    for n in 0..per_tenant {
        for t in tenants {
            out.push(json!({"tenant_id": t, "type": "custom", "category": "test", "action": format!("{t}-{n}"), "account": account}));
        }
    }
    json!(out)
}

fn tenants_reported(sb: &Sandbox) -> std::collections::HashSet<Uuid> {
    sb.reports().iter().map(|r| r.tenant_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_routed_to_their_account_and_refused_when_they_cannot_be() {
    let dc = two_data_centers(None).await;
    let eu_tenants = customers(&dc.eu, 3);
    let us_tenants = customers(&dc.us, 3);
    // Named.
    assert_eq!(dc.post(events(&eu_tenants, "eu", 1)).await.status(), 202);
    assert_eq!(dc.post(events(&us_tenants, "us", 1)).await.status(), 202);
    // Unknown, or not named while several accounts could take it: 400, nothing stored.
    let depth = dc.running.queue.stats().depth;
    let r = dc
        .post(json!({"tenant_id": eu_tenants[0], "type": "activation", "account": "apac"}))
        .await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["field"], "account", "{body}");
    let r = dc
        .post(json!([
            {"tenant_id": eu_tenants[0], "type": "activation", "account": "eu"},
            {"tenant_id": us_tenants[0], "type": "activation"},
        ]))
        .await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["field"], "[1].account", "{body}");
    let stored = dc.running.queue.stats().depth;
    assert!(stored <= depth, "refused events were stored");
    let q = dc.running.queue.clone();
    wait_for(Duration::from_secs(10), "delivered", || {
        q.stats().depth == 0
    })
    .await;
    // Each data center got its own account's tenants, and only those.
    assert_eq!(
        tenants_reported(&dc.eu),
        eu_tenants.iter().copied().collect()
    );
    assert_eq!(
        tenants_reported(&dc.us),
        us_tenants.iter().copied().collect()
    );
    // Inferred from the inventory: the tenant reconcile walks every account's tree.
    dc.running
        .reconcilers
        .run_now(statusd::reconcile::Kind::Tenants, false)
        .await
        .unwrap();
    let t = customers(&dc.eu, 5)[4];
    let r = dc.post(json!({"tenant_id": t, "type": "activation"})).await;
    assert_eq!(r.status(), 202);
    wait_for(
        Duration::from_secs(10),
        "the inferred event delivered",
        || tenants_reported(&dc.eu).contains(&t),
    )
    .await;
    assert!(!tenants_reported(&dc.us).contains(&t));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_data_center_down_does_not_hold_back_another() {
    let dc = two_data_centers(None).await;
    dc.eu.inject(Fault {
        status: Some(503),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    let eu_tenants = customers(&dc.eu, 10);
    let us_tenants = customers(&dc.us, 10);
    assert_eq!(dc.post(events(&eu_tenants, "eu", 3)).await.status(), 202);
    assert_eq!(dc.post(events(&us_tenants, "us", 3)).await.status(), 202);
    // us is delivered in full while eu is still down.
    wait_for(Duration::from_secs(15), "us delivered", || {
        dc.us
            .reports()
            .iter()
            .map(|r| r.body["events"].as_array().unwrap().len())
            .sum::<usize>()
            == 30
    })
    .await;
    assert!(dc.eu.reports().is_empty(), "eu accepted nothing while down");
    assert_eq!(dc.running.queue.stats().depth, 30, "eu's events wait");
    dc.eu.clear_faults();
    let q = dc.running.queue.clone();
    wait_for(
        Duration::from_secs(15),
        "eu delivered after its outage",
        || q.stats().depth == 0,
    )
    .await;
    assert_eq!(
        tenants_reported(&dc.eu),
        eu_tenants.iter().copied().collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_in_one_account_does_not_hold_back_another() {
    let dc = two_data_centers(Some("not-the-secret")).await;
    let eu_tenants = customers(&dc.eu, 5);
    let us_tenants = customers(&dc.us, 5);
    assert_eq!(dc.post(events(&eu_tenants, "eu", 2)).await.status(), 202);
    assert_eq!(dc.post(events(&us_tenants, "us", 2)).await.status(), 202);
    wait_for(Duration::from_secs(15), "us delivered", || {
        dc.running.queue.stats().depth == 10
    })
    .await;
    assert_eq!(
        tenants_reported(&dc.us),
        us_tenants.iter().copied().collect()
    );
    assert!(dc.eu.reports().is_empty());
    assert_eq!(dc.eu.requests_to("token"), 1, "the refusal is remembered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_show_their_data_center_token_and_events() {
    let dc = two_data_centers(Some("not-the-secret")).await;
    let eu_tenants = customers(&dc.eu, 2);
    let us_tenants = customers(&dc.us, 2);
    assert_eq!(dc.post(events(&eu_tenants, "eu", 1)).await.status(), 202);
    assert_eq!(dc.post(events(&us_tenants, "us", 1)).await.status(), 202);
    let q = dc.running.queue.clone();
    wait_for(Duration::from_secs(15), "us delivered", || {
        q.stats().depth == 2
    })
    .await;
    let list = get_json(&dc.http, &format!("{}/v1/accounts", dc.api)).await;
    assert_eq!(list["count"], 2, "{list}");
    let eu = &list["items"][0];
    assert_eq!(eu["id"], "eu");
    assert_eq!(eu["token"], "failing", "{eu}");
    assert!(eu["token_error"]["error"]
        .as_str()
        .unwrap()
        .contains("invalid_client"));
    assert_eq!(eu["pending_events"], 2);
    assert_eq!(eu["datacenter_url"], dc.eu.url.as_str());
    let us = get_json(&dc.http, &format!("{}/v1/accounts/us", dc.api)).await;
    assert_eq!(us["token"], "ok", "{us}");
    let status = get_json(&dc.http, &format!("{}/v1/status", dc.api)).await;
    let dcs = status["datacenters"].as_array().unwrap();
    assert_eq!(dcs.len(), 2, "{status}");
    let failing: u64 = dcs
        .iter()
        .map(|d| d["accounts_failing"].as_u64().unwrap())
        .sum();
    assert_eq!(failing, 1, "{status}");
    assert_eq!(us["pending_events"], 0);
    let missing = dc
        .http
        .get(format!("{}/v1/accounts/apac", dc.api))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The same through the CLI.
    let api = dc.api.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
            .args(["accounts", "--api", &api])
            .env_clear()
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("failing: ") && shown.contains("2 account(s)"),
        "{shown}"
    );
    assert!(!shown.contains("not-the-secret"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_reconcile_walks_every_account_and_one_failing_fails_only_its_part() {
    let dc = two_data_centers(Some("not-the-secret")).await;
    let report = dc
        .running
        .reconcilers
        .run_now(statusd::reconcile::Kind::Tenants, false)
        .await
        .unwrap();
    assert_eq!(report.outcome, "partial", "{:?}", report.errors);
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.message.starts_with("account eu:")),
        "{:?}",
        report.errors
    );
    assert_eq!(
        report.details.accounts.as_ref().map(|a| a["us"].fetched),
        Some(Some(51)),
        "{:?}",
        report.details
    );
    // The us inventory routes events for its tenants, with no account named.
    let t = customers(&dc.us, 4)[3];
    let r = dc.post(json!({"tenant_id": t, "type": "activation"})).await;
    assert_eq!(r.status(), 202);
    wait_for(Duration::from_secs(10), "routed to us", || {
        tenants_reported(&dc.us).contains(&t)
    })
    .await;
    let us = get_json(&dc.http, &format!("{}/v1/accounts/us", dc.api)).await;
    assert_eq!(us["tenants_known"], 51, "{us}");
    let eu = get_json(&dc.http, &format!("{}/v1/accounts/eu", dc.api)).await;
    assert_eq!(eu["tenants_known"], 0, "{eu}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_can_run_for_one_account() {
    let dc = two_data_centers(None).await;
    let r = dc
        .http
        .post(format!("{}/v1/reconcile/tenants?account=us", dc.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await.unwrap();
    assert_eq!(report["outcome"], "success", "{report}");
    assert_eq!(report["details"]["fetched"], 51, "{report}");
    assert_eq!(dc.us.requests_to("tenants_list"), 1);
    assert_eq!(dc.eu.requests_to("tenants_list"), 0, "eu left alone");
    let r = dc
        .http
        .post(format!("{}/v1/reconcile/tenants?account=apac", dc.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_and_configuration_from_before_accounts_keep_working() {
    statusd::platform::install_crypto_provider();
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tenants = customers(&sb, 3);
    // Events as the single-platform statusd stored them: no account.
    {
        let q = statusd::store::Queue::open(dir.path(), Default::default()).unwrap();
        let events = tenants
            .iter()
            .map(|t| statusd::store::NewEvent {
                tenant_id: *t,
                kind: statusd::store::EventKind::Activation,
                category: "activation".into(),
                action: "activated integration".into(),
                idempotency_key: None,
                occurred_at_ms: None,
                account: None,
            })
            .collect();
        q.enqueue(events).await.unwrap();
    }
    // The [platform] credentials: the account "default".
    let settings = settings_for(&sb, dir.path(), &[]);
    assert_eq!(settings.accounts.len(), 1);
    assert_eq!(settings.accounts[0].id, "default");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = statusd::app::start(settings, Some(listener), false)
        .await
        .unwrap();
    let q = running.queue.clone();
    wait_for(Duration::from_secs(10), "the old events delivered", || {
        q.stats().depth == 0
    })
    .await;
    assert_eq!(tenants_reported(&sb), tenants.iter().copied().collect());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_with_many_pending_tenants_does_not_hold_back_one_with_few() {
    let dc = two_data_centers(None).await;
    // eu answers slowly, and has a report pending for each of its customers.
    dc.eu.inject(Fault {
        delay_ms: Some(40),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    let eu_tenants = customers(&dc.eu, 40);
    assert!(eu_tenants.len() >= 30, "{}", eu_tenants.len());
    assert_eq!(dc.post(events(&eu_tenants, "eu", 1)).await.status(), 202);
    // Then one event for us.
    let us_tenant = customers(&dc.us, 1);
    assert_eq!(dc.post(events(&us_tenant, "us", 1)).await.status(), 202);
    wait_for(Duration::from_secs(15), "the us report", || {
        !dc.us.reports().is_empty()
    })
    .await;
    // Served in turn with eu, not behind every eu tenant.
    let eu_done = dc.eu.reports().len();
    assert!(
        eu_done < eu_tenants.len() / 2,
        "us waited for {eu_done} of {} eu reports",
        eu_tenants.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_may_have_its_own_brand_intent() {
    let dc = two_data_centers_with(
        None,
        r#"
[reconcile.branding]
targets = ["partners"]
[branding]
company_name = "Global Cloud"
[accounts.us.branding]
company_name = "US Cloud"
targets = ["partners"]
"#,
    )
    .await;
    let report = dc
        .running
        .reconcilers
        .run_now(statusd::reconcile::Kind::Branding, false)
        .await
        .unwrap();
    assert_eq!(report.outcome, "success", "{:?}", report.errors);
    for (sb, name) in [(&dc.eu, "Global Cloud"), (&dc.us, "US Cloud")] {
        let partners = sb.tenant_ids(Some("partner"));
        assert!(!partners.is_empty());
        for p in partners {
            assert_eq!(sb.brand(p).unwrap()["company_name"], name);
        }
    }
}
