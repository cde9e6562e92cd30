//! The platform client against the sandbox (and a tiny local server for what the sandbox never
//! does), and the sandbox's own strictness.

use std::sync::Arc;
use std::time::Duration;

use axum::{routing::get, Json, Router};
use reqwest::StatusCode;
use serde_json::json;
use statusd::config::{IntegrationSettings, Secret};
use statusd::metrics::Metrics;
use statusd::platform::*;
use statusd::sandbox::{validate_status_body, Fault, Sandbox, SandboxOptions};
use uuid::Uuid;

fn integration() -> IntegrationSettings {
    IntegrationSettings {
        application_code: Some("vendor.app".into()),
        application_id: None,
        module_name: "tests".into(),
        module_version: "1.0".into(),
        vendor_system_name: None,
        vendor_system_version: None,
    }
}

fn client_for(url: &str, id: &str, secret: &str, concurrency: usize) -> PlatformClient {
    PlatformClient::new(
        ClientOptions {
            base_url: url.to_string(),
            credentials: Default::default(),
            client_id: id.to_string(),
            client_secret: Secret::new(secret),
            request_timeout: Duration::from_secs(2),
            max_concurrency: concurrency,
            integration: integration(),
        },
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

async fn sandbox(opts: SandboxOptions) -> (Sandbox, PlatformClient) {
    let sb = Sandbox::start(opts).await.unwrap();
    let c = client_for(&sb.url, &sb.client_id, &sb.client_secret, 64);
    (sb, c)
}

fn ev() -> Vec<ReportEvent> {
    vec![ReportEvent {
        category: "activation".into(),
        action: "activated integration".into(),
        activation_event: true,
        deactivation_event: false,
    }]
}

#[tokio::test]
async fn fifty_concurrent_callers_share_one_token_and_renew_before_expiry() {
    let (sb, c) = sandbox(SandboxOptions {
        token_ttl: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    let root = c.own_tenant_id().await.unwrap();
    assert_eq!(root, sb.root_tenant);
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.report_status(root, &ev()).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(
        sb.stats().tokens_issued,
        1,
        "one token for 50 concurrent callers"
    );
    // A 4 s token is renewed once half of it is gone, before it expires: no 401 ever.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    c.report_status(root, &ev()).await.unwrap();
    assert_eq!(sb.stats().tokens_issued, 2);
    assert_eq!(sb.stats().by_status.get(&401), None);
}

#[tokio::test]
async fn a_401_reissues_the_token_once_and_retries_once() {
    let (sb, c) = sandbox(SandboxOptions::default()).await;
    c.report_status(sb.root_tenant, &ev()).await.unwrap();
    sb.expire_tokens();
    c.report_status(sb.root_tenant, &ev()).await.unwrap();
    assert_eq!(sb.stats().tokens_issued, 2);
    assert_eq!(
        sb.reports().len(),
        2,
        "the body went out again on the retry"
    );
    // Tokens refused every time: one re-issue, then an auth error (no loop).
    sb.inject(Fault {
        expire_tokens: true,
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    let err = c.report_status(sb.root_tenant, &ev()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth);
    assert_eq!(sb.stats().tokens_issued, 3);
}

#[tokio::test]
async fn wrong_credentials_are_an_auth_error_that_names_the_oauth_error() {
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let c = client_for(&sb.url, &sb.client_id, "wrong", 4);
    let err = c.report_status(sb.root_tenant, &ev()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth);
    assert!(err.message.contains("invalid_client"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the secret leaked into the error: {err}"
    );
}

#[tokio::test]
async fn every_error_class_and_both_retry_after_forms() {
    let (sb, c) = sandbox(SandboxOptions::default()).await;
    c.own_tenant_id().await.unwrap();
    let date = (chrono::Utc::now() + chrono::Duration::seconds(30))
        .to_rfc2822()
        .replace("+0000", "GMT");
    for (status, retry_after, class) in [
        (503, Some("7".to_string()), ErrorClass::Retryable),
        (429, Some(date.clone()), ErrorClass::Retryable),
        (500, None, ErrorClass::Retryable),
        (408, None, ErrorClass::Retryable),
        (409, None, ErrorClass::Conflict),
        (400, None, ErrorClass::Permanent),
        (403, None, ErrorClass::Permanent),
        (404, None, ErrorClass::Permanent),
        (422, None, ErrorClass::Permanent),
    ] {
        sb.inject(Fault {
            status: Some(status),
            retry_after: retry_after.clone(),
            count: Some(1),
            path_contains: Some("/status".into()),
            ..Default::default()
        });
        let err = c.report_status(sb.root_tenant, &ev()).await.unwrap_err();
        assert_eq!(err.class, class, "HTTP {status}");
        assert_eq!(err.status, Some(status));
        assert!(
            err.message.contains("injected fault"),
            "envelope decoded: {}",
            err.message
        );
        match status {
            503 => assert_eq!(err.retry_after, Some(Duration::from_secs(7))),
            429 => assert!(err
                .retry_after
                .is_some_and(|d| d > Duration::from_secs(20) && d <= Duration::from_secs(30))),
            _ => assert_eq!(err.retry_after, None),
        }
    }
    sb.inject(Fault {
        drop_connection: true,
        count: Some(1),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    assert_eq!(
        c.report_status(sb.root_tenant, &ev())
            .await
            .unwrap_err()
            .class,
        ErrorClass::Retryable
    );
    let slow = client_for(&sb.url, &sb.client_id, &sb.client_secret, 4);
    slow.own_tenant_id().await.unwrap();
    sb.inject(Fault {
        delay_ms: Some(2500),
        count: Some(1),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    let err = slow.report_status(sb.root_tenant, &ev()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Retryable);
    assert!(err.status.is_none(), "{err}");
    let closed = client_for("http://127.0.0.1:9", "x", "y", 1);
    assert_eq!(
        closed
            .report_status(Uuid::nil(), &ev())
            .await
            .unwrap_err()
            .class,
        ErrorClass::Retryable
    );
}

#[test]
fn error_bodies_decode_in_every_shape() {
    assert_eq!(
        describe_error_body(br#"{"error":{"code":"1006","message":"bad","domain":null}}"#),
        "code 1006: bad"
    );
    assert_eq!(
        describe_error_body(br#"{"error":{"code":1006}}"#),
        "code 1006"
    );
    assert_eq!(
        describe_error_body(br#"{"error":"access_denied","error_description":"no"}"#),
        "access_denied: no"
    );
    assert_eq!(
        describe_error_body(b"<html>gateway</html>"),
        "the answer is not the platform's JSON error (20 bytes, not shown)"
    );
    assert_eq!(describe_error_body(b""), "empty response body");
    assert_eq!(
        classify_status(StatusCode::BAD_GATEWAY),
        ErrorClass::Retryable
    );
    assert_eq!(
        parse_retry_after("99999"),
        Some(Duration::from_secs(300)),
        "capped"
    );
    assert_eq!(parse_retry_after("soon"), None);
}

#[test]
fn timestamps_with_and_without_zones() {
    let want = chrono::DateTime::parse_from_rfc3339("2016-06-22T18:25:16Z").unwrap();
    for s in [
        "2016-06-22T18:25:16",
        "2016-06-22T18:25:16Z",
        "2016-06-22T18:25:16+00:00",
        "2016-06-22T20:25:16+02:00",
        "2016-06-22T18:25:16.000",
    ] {
        assert_eq!(parse_platform_time(s).unwrap(), want, "{s}");
    }
    assert!(parse_platform_time("2016-06-22T18:25:16.123456Z").is_some());
    assert!(parse_platform_time("yesterday").is_none());
}

#[tokio::test]
async fn paging_walks_every_page_and_uuids_go_in_chunks_of_100() {
    let (sb, c) = sandbox(SandboxOptions {
        tenants: 2500,
        page_limit: 100,
        ..Default::default()
    })
    .await;
    let listing = c
        .list_tenants(&TenantSelector::SubtreeRoot(sb.root_tenant), None, true)
        .await
        .unwrap();
    assert_eq!(listing.items.len(), 2501);
    assert!(listing.pages >= 26, "{} pages", listing.pages);
    let ids: std::collections::HashSet<Uuid> = listing.items.iter().map(|t| t.id).collect();
    assert_eq!(ids.len(), 2501);
    let some: Vec<Uuid> = listing.items.iter().take(250).map(|t| t.id).collect();
    let by_id = c
        .list_tenants(&TenantSelector::Uuids(some.clone()), None, true)
        .await
        .unwrap();
    assert_eq!(by_id.items.len(), 250);
    // Deleted tenants only with allow_deleted.
    let live = c
        .list_tenants(&TenantSelector::SubtreeRoot(sb.root_tenant), None, false)
        .await
        .unwrap();
    assert!(live.items.len() < 2501 && live.items.iter().all(|t| !t.is_deleted()));
    // Delta: only what changed since the first walk.
    let changed = listing.items[10].id;
    tokio::time::sleep(Duration::from_millis(5)).await;
    sb.mutate_tenant(
        changed,
        statusd::sandbox::TenantChange {
            name: Some("renamed".into()),
            ..Default::default()
        },
    );
    let delta = c
        .list_tenants(
            &TenantSelector::SubtreeRoot(sb.root_tenant),
            listing.timestamp.as_deref(),
            true,
        )
        .await
        .unwrap();
    assert_eq!(
        delta.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![changed]
    );
}

#[tokio::test]
async fn a_repeated_cursor_is_an_error_not_an_endless_loop() {
    let app = Router::new()
        .route("/api/2/idp/token", axum::routing::post(|| async { Json(json!({"access_token": "t", "token_type": "bearer", "expires_in": 3600})) }))
        .route("/api/2/tenants", get(|| async {
            Json(json!({"items": [{"id": Uuid::from_u128(1), "parent_id": Uuid::from_u128(1), "version": 1}], "paging": {"cursors": {"after": "same"}}}))
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let c = client_for(&url, "id", "secret", 2);
    let err = c
        .list_tenants(
            &TenantSelector::SubtreeRoot(Uuid::from_u128(1)),
            None,
            false,
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("repeated cursor"), "{err}");
}

#[tokio::test]
async fn brand_writes_are_versioned_and_partial_and_never_send_smtp_password() {
    let (sb, c) = sandbox(SandboxOptions::default()).await;
    let partner = sb.root_tenant;
    let v = c.get_tenant(partner).await.unwrap().version;
    c.enable_brand(partner, v).await.unwrap();
    let v2 = c.get_tenant(partner).await.unwrap().version;
    assert_eq!(v2, v + 1, "each brand write bumps the version");
    let mut brand = c.get_brand(partner).await.unwrap();
    assert!(
        brand.contains_key("backup_console_url"),
        "unknown-to-us fields are kept"
    );
    // Stale version: 409 conflict.
    let mut change = serde_json::Map::new();
    change.insert("company_name".into(), json!("ACME"));
    let err = c.update_brand(partner, v, &change).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Conflict);
    // A full read echoed back would carry smtp_password: the client strips it.
    brand.insert("company_name".into(), json!("ACME"));
    brand.retain(|k, _| k != "id" && k != "logotype");
    c.update_brand(partner, v2, &brand).await.unwrap();
    assert_eq!(sb.smtp_password_writes(), 0);
    assert_eq!(sb.brand(partner).unwrap()["company_name"], "ACME");
    // Customers cannot have branding.
    let customer = sb.tenant_ids(Some("customer"))[0];
    let cv = c.get_tenant(customer).await.unwrap().version;
    assert_eq!(
        c.enable_brand(customer, cv).await.unwrap_err().class,
        ErrorClass::Permanent
    );
    // Logo upload: raw PNG, version in the query.
    let v3 = c.get_tenant(partner).await.unwrap().version;
    let png = b"\x89PNG\r\n\x1a\nfake-png-body".to_vec();
    c.upload_logo(partner, v3, png.clone()).await.unwrap();
    assert_eq!(sb.logo(partner).unwrap(), png);
}

#[test]
fn the_sandbox_refuses_each_invalid_status_body() {
    let ok = json!({"application_code": "v.a", "module": {"name": "m", "version": "1"}, "events": [{"category": "activation", "action": "a", "activation_event": true}]});
    assert!(validate_status_body(&ok).is_ok());
    let long = |n: usize| "x".repeat(n);
    let cases = vec![
        (
            json!({"module": {"name": "m"}}),
            "application_code or application_id",
        ),
        (
            json!({"application_code": "v.a", "application_id": Uuid::nil(), "module": {"name": "m"}}),
            "exactly one",
        ),
        (
            json!({"application_id": "nope", "module": {"name": "m"}}),
            "UUID",
        ),
        (
            json!({"application_code": long(1001), "module": {"name": "m"}}),
            "application_code",
        ),
        (json!({"application_code": "v.a"}), "module is required"),
        (
            json!({"application_code": "v.a", "module": {"name": ""}}),
            "module.name",
        ),
        (
            json!({"application_code": "v.a", "module": {"name": "m", "version": long(256)}}),
            "module.version",
        ),
        (
            json!({"application_code": "v.a", "module": {"name": "m"}, "vendor_system": {"version": "1"}}),
            "vendor_system.name",
        ),
        (
            json!({"application_code": "v.a", "module": {"name": "m"}, "events": [{"action": "a"}]}),
            "events[0].category",
        ),
        (
            json!({"application_code": "v.a", "module": {"name": "m"}, "events": [{"category": long(151), "action": "a"}]}),
            "events[0].category",
        ),
        (
            json!({"application_code": "v.a", "module": {"name": "m"}, "events": [{"category": "c", "action": long(501)}]}),
            "events[0].action",
        ),
        (
            json!({"application_code": "v.a", "module": {"name": "m"}, "events": [{"category": "c", "action": "a", "activation_event": "yes"}]}),
            "boolean",
        ),
        (
            json!({"application_code": "v.a", "module": {"name": "m"}, "events": [{"category": "c", "action": "a", "activation_event": true, "deactivation_event": true}]}),
            "both true",
        ),
        (
            json!({"application_code": "v.a", "module": {"name": "m"}, "activated_at": "today"}),
            "RFC 3339",
        ),
        (json!([1]), "JSON object"),
    ];
    for (body, fragment) in cases {
        let err = validate_status_body(&body).unwrap_err();
        assert!(err.contains(fragment), "{body} -> {err}");
    }
}

#[tokio::test]
async fn the_sandbox_answers_invalid_reports_with_400_and_the_envelope() {
    let (sb, c) = sandbox(SandboxOptions::default()).await;
    c.own_tenant_id().await.unwrap();
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/api/2/idp/token", sb.url))
        .basic_auth(&sb.client_id, Some(&sb.client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let t = token["access_token"].as_str().unwrap();
    let url = format!(
        "{}/api/integration_management/v2/status?tenantID={}",
        sb.url, sb.root_tenant
    );
    let r = http
        .post(&url)
        .bearer_auth(t)
        .json(&json!({"module": {"name": "m"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("application_code"));
    let r = http
        .post(&url)
        .bearer_auth(t)
        .body("{}")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = http.post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn the_retry_after_a_refused_token_waits() {
    let (sb, c) = sandbox(SandboxOptions::default()).await;
    c.report_status(sb.root_tenant, &ev()).await.unwrap();
    sb.expire_tokens();
    let started = std::time::Instant::now();
    c.report_status(sb.root_tenant, &ev()).await.unwrap();
    assert_eq!(sb.stats().by_status.get(&401), Some(&1));
    assert!(
        started.elapsed() >= statusd::platform::AUTH_RETRY_BACKOFF.floor(),
        "retried after {:?} without waiting",
        started.elapsed()
    );
}

#[test]
fn token_lifetime_prefers_expires_in_and_stays_within_a_day() {
    let now = 1_800_000_000;
    // expires_in does not depend on the two clocks agreeing: a host 3 h ahead of the platform
    // still keeps a 2 h token for 2 h.
    assert_eq!(
        token_lifetime(Some(7200), Some(now - 3600), now),
        Duration::from_secs(7200)
    );
    assert_eq!(
        token_lifetime(None, Some(now + 600), now),
        Duration::from_secs(600)
    );
    assert_eq!(token_lifetime(None, Some(now - 5), now), Duration::ZERO);
    assert_eq!(token_lifetime(Some(-1), None, now), Duration::ZERO);
    assert_eq!(
        token_lifetime(Some(i64::MAX), None, now),
        Duration::from_secs(24 * 3600)
    );
    assert_eq!(
        token_lifetime(None, Some(i64::MAX), i64::MIN),
        Duration::from_secs(24 * 3600)
    );
    assert_eq!(token_lifetime(None, None, now), Duration::from_secs(3600));
}
