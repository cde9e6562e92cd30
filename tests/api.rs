//! The local API (spec §3): each row, the bad-input matrix, auth, health, metrics, and that no
//! secret ever shows.

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use statusd::sandbox::{Fault, SandboxOptions};

async fn refused(h: &Harness, body: Vec<u8>, ct: &str) -> (u16, Value) {
    let resp = h
        .http
        .post(format!("{}/v1/events", h.api))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_stores_nothing() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let t = uuid::Uuid::new_v4().to_string();
    let long = |n: usize| "x".repeat(n);
    let mut many = Vec::new();
    for _ in 0..1001 {
        many.push(json!({"tenant_id": t, "type": "activation"}));
    }
    let mut one_bad = vec![json!({"tenant_id": t, "type": "activation"}); 5];
    one_bad.push(json!({"tenant_id": "nope", "type": "activation"}));
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"tenant_id\":".to_vec(),
            "application/json",
            400,
            "body",
        ),
        (
            "wrong content type",
            json!({"tenant_id": t, "type": "activation"})
                .to_string()
                .into_bytes(),
            "text/plain",
            415,
            "Content-Type",
        ),
        (
            "missing tenant_id",
            json!({"type": "activation"}).to_string().into_bytes(),
            "application/json",
            400,
            "tenant_id",
        ),
        (
            "invalid tenant_id",
            json!({"tenant_id": "abc", "type": "activation"})
                .to_string()
                .into_bytes(),
            "application/json",
            400,
            "tenant_id",
        ),
        (
            "unknown type",
            json!({"tenant_id": t, "type": "enable"})
                .to_string()
                .into_bytes(),
            "application/json",
            400,
            "type",
        ),
        (
            "custom without action",
            json!({"tenant_id": t, "type": "custom", "category": "c"})
                .to_string()
                .into_bytes(),
            "application/json",
            400,
            "action",
        ),
        (
            "over-long category",
            json!({"tenant_id": t, "type": "activation", "category": long(151)})
                .to_string()
                .into_bytes(),
            "application/json",
            400,
            "category",
        ),
        (
            "over-long action",
            json!({"tenant_id": t, "type": "activation", "action": long(501)})
                .to_string()
                .into_bytes(),
            "application/json",
            400,
            "action",
        ),
        (
            "occurred_at in the future",
            json!({"tenant_id": t, "type": "activation", "occurred_at": "2999-01-01T00:00:00Z"})
                .to_string()
                .into_bytes(),
            "application/json",
            400,
            "occurred_at",
        ),
        (
            "occurred_at without an offset",
            json!({"tenant_id": t, "type": "activation", "occurred_at": "2026-11-27 10:00:00"})
                .to_string()
                .into_bytes(),
            "application/json",
            400,
            "occurred_at",
        ),
        (
            "array over 1000",
            json!(many).to_string().into_bytes(),
            "application/json",
            400,
            "body",
        ),
        (
            "array with one bad element",
            json!(one_bad).to_string().into_bytes(),
            "application/json",
            400,
            "[5].tenant_id",
        ),
        (
            "unknown field",
            json!({"tenant_id": t, "type": "activation", "tenantId": t})
                .to_string()
                .into_bytes(),
            "application/json",
            400,
            "tenantId",
        ),
        (
            "not an object",
            b"42".to_vec(),
            "application/json",
            400,
            "body",
        ),
        (
            "empty array",
            b"[]".to_vec(),
            "application/json",
            400,
            "body",
        ),
        (
            "over-size body",
            format!(
                "{{\"tenant_id\":\"{t}\",\"type\":\"activation\",\"action\":\"{}\"}}",
                long(1_100_000)
            )
            .into_bytes(),
            "application/json",
            413,
            "body",
        ),
    ];
    for (name, body, ct, status, field) in cases {
        let (got, v) = refused(&h, body, ct).await;
        assert_eq!(got, status, "{name}: {v}");
        assert_eq!(v["error"]["field"], field, "{name}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}: {v}"
        );
    }
    let stats = h.running().queue.stats();
    assert_eq!(stats.depth, 0, "nothing stored");
    assert_eq!(h.running().queue.recount().await.unwrap(), (0, 0));
}

/// A client still writing a body over the limit gets the 413, not a cut connection: up to four
/// times the limit the body is read and dropped before the answer. Without that, a client's
/// write races the close and fails with a broken pipe now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_answered_413_while_it_is_still_being_written() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness(SandboxOptions::default(), &[]).await;
    let t = uuid::Uuid::new_v4().to_string();
    let body = |n: usize| {
        format!(
            "{{\"tenant_id\":\"{t}\",\"type\":\"activation\",\"action\":\"{}\"}}",
            "x".repeat(n)
        )
    };
    for round in 0..10 {
        for n in [1_100_000, 3_000_000] {
            let r = h
                .http
                .post(format!("{}/v1/events", h.api))
                .header("content-type", "application/json")
                .body(body(n))
                .send()
                .await
                .unwrap_or_else(|e| panic!("round {round}, {n} bytes: {e:?}"));
            assert_eq!(r.status(), 413, "round {round}, {n} bytes");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["field"], "body", "{v}");
        }
        // Without a Content-Length (chunked), the same.
        let addr = h.api.trim_start_matches("http://").to_string();
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(
            b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        let chunk = [b' '; 64 * 1024];
        for _ in 0..40 {
            tcp.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await
                .unwrap_or_else(|e| panic!("round {round}, chunked: {e:?}"));
            tcp.write_all(&chunk).await.unwrap();
            tcp.write_all(b"\r\n").await.unwrap();
        }
        tcp.write_all(b"0\r\n\r\n").await.unwrap();
        let mut answer = vec![0u8; 512];
        let n = tcp.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "round {round}, chunked: {answer}"
        );
    }
    assert_eq!(h.running().queue.recount().await.unwrap(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_lookups_idempotency_and_tenant_state() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let t = h.sandbox.tenant_ids(Some("customer"))[0];
    // Single event with the header form of the idempotency key.
    let r = h
        .http
        .post(format!("{}/v1/events", h.api))
        .header("Idempotency-Key", "order-1")
        .json(&json!({"tenant_id": t, "type": "activation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["status"], "queued");
    let again = h
        .http
        .post(format!("{}/v1/events", h.api))
        .json(&json!({"tenant_id": t, "type": "activation", "idempotency_key": "order-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    h.drained(Duration::from_secs(10)).await;
    let ev: Value = h
        .http
        .get(format!(
            "{}/v1/events/{}",
            h.api,
            first["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ev["status"], "delivered");
    assert_eq!(ev["attempts"], 1);
    assert!(ev["delivered_at"].is_string(), "{ev}");
    assert!(ev["next_attempt_at"].is_null(), "{ev}");
    assert_eq!(ev["category"], "activation");
    assert_eq!(ev["action"], "activated integration");
    let tenant: Value = h
        .call(reqwest::Method::GET, &format!("/v1/tenants/{t}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tenant["intended"], "active");
    assert_eq!(tenant["last_reported"], "active");
    assert_eq!(tenant["pending"], 0);
    assert_eq!(
        h.sandbox.reports().len(),
        1,
        "the repeated key stored nothing new"
    );
    let missing = h
        .http
        .get(format!("{}/v1/events/{}", h.api, uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let missing = h
        .http
        .get(format!("{}/v1/tenants/{}", h.api, uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let status: Value = h
        .call(reqwest::Method::GET, "/v1/status")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["queue"]["depth"], 0);
    assert_eq!(status["platform"]["reachable"], true);
    for path in ["/livez", "/readyz"] {
        assert_eq!(
            h.call(reqwest::Method::GET, path).await.status(),
            200,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_guards_v1_but_not_health() {
    let h = harness(
        SandboxOptions::default(),
        &[("STATUSD__API__TOKEN", "s3cret-api-token")],
    )
    .await;
    let t = uuid::Uuid::new_v4();
    let no = h
        .post_events(json!({"tenant_id": t, "type": "activation"}))
        .await;
    assert_eq!(no.status(), 401);
    let wrong = h
        .http
        .get(format!("{}/v1/status", h.api))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = h
        .http
        .get(format!("{}/v1/status", h.api))
        .bearer_auth("s3cret-api-token")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // The scheme is case-insensitive (RFC 9110).
    for scheme in ["bearer", "BEARER"] {
        let r = h
            .http
            .get(format!("{}/v1/status", h.api))
            .header("Authorization", format!("{scheme} s3cret-api-token"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "scheme {scheme}");
    }
    let other = h
        .http
        .get(format!("{}/v1/status", h.api))
        .header("Authorization", "Basic s3cret-api-token")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401, "another scheme is no bearer token");
    assert_eq!(h.call(reqwest::Method::GET, "/livez").await.status(), 200);
    assert_eq!(h.call(reqwest::Method::GET, "/metrics").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_endpoints() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let t = h.sandbox.tenant_ids(Some("customer"))[1];
    h.sandbox.inject(statusd::sandbox::Fault {
        status: Some(404),
        count: Some(1),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    let id = h
        .post_events(json!({"tenant_id": t, "type": "deactivation"}))
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let q = h.running().queue.clone();
    wait_for(Duration::from_secs(10), "dead letter", || {
        q.stats().dead_letters == 1
    })
    .await;
    let list: Value = h
        .call(reqwest::Method::GET, "/v1/dead-letters")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["id"], id);
    let show = h
        .call(reqwest::Method::GET, &format!("/v1/dead-letters/{id}"))
        .await;
    assert_eq!(show.status(), 200);
    let retry = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/dead-letters/{id}/retry"),
        )
        .await;
    assert_eq!(retry.status(), 200);
    h.drained(Duration::from_secs(10)).await;
    assert_eq!(h.sandbox.reports().len(), 1);
    let gone = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/dead-letters/{id}/retry"),
        )
        .await;
    assert_eq!(gone.status(), 404);
    let purge_missing = h
        .call(reqwest::Method::DELETE, &format!("/v1/dead-letters/{id}"))
        .await;
    assert_eq!(purge_missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_intake_and_readiness() {
    let mut h = harness(SandboxOptions::default(), &[]).await;
    // A report held at the platform keeps the daemon draining (the API still answers) while
    // the test looks at it.
    h.sandbox.inject(Fault {
        delay_ms: Some(1500),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    let t = h.sandbox.tenant_ids(Some("customer"))[0];
    assert_eq!(
        h.post_events(json!({"tenant_id": t, "type": "activation"}))
            .await
            .status(),
        202
    );
    let q = h.running().queue.clone();
    wait_for(Duration::from_secs(10), "a report in flight", || {
        q.stats().in_flight == 1
    })
    .await;
    let running = h.running.take().unwrap();
    let shutdown = tokio::spawn(running.shutdown());
    wait_for_async(Duration::from_secs(10), "/readyz to answer 503", || async {
        h.call(reqwest::Method::GET, "/readyz").await.status() == 503
    })
    .await;
    let r = h
        .post_events(json!({"tenant_id": uuid::Uuid::new_v4(), "type": "activation"}))
        .await;
    assert_eq!(r.status(), 503, "intake during shutdown");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    shutdown.await.unwrap();
    assert_eq!(
        h.sandbox.reports().len(),
        1,
        "the report in flight finished within the grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_spec_family_without_tenant_ids_or_secrets() {
    let h = harness(
        SandboxOptions::default(),
        &[("STATUSD__API__TOKEN", "tok-do-not-show-7f3a9c")],
    )
    .await;
    let t = h.sandbox.tenant_ids(Some("customer"))[0];
    let r = h
        .http
        .post(format!("{}/v1/events", h.api))
        .bearer_auth("tok-do-not-show-7f3a9c")
        .json(&json!({"tenant_id": t, "type": "activation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    h.drained(Duration::from_secs(10)).await;
    let text = h
        .call(reqwest::Method::GET, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    for family in [
        "statusd_events_accepted_total",
        "statusd_events_delivered_total",
        "statusd_delivery_attempts_total",
        "statusd_delivery_request_duration_seconds",
        "statusd_event_delivery_lag_seconds",
        "statusd_queue_depth",
        "statusd_queue_oldest_event_age_seconds",
        "statusd_dead_letters",
        "statusd_platform_up",
        "statusd_token_refreshes_total",
        "statusd_reconcile_drift_items",
        "statusd_build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "missing {family} in\n{text}"
        );
    }
    assert!(
        text.contains("statusd_events_accepted_total{type=\"activation\"} 1"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "classic format by default");
    let store_bytes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("statusd_store_size_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("statusd_store_size_bytes is exposed");
    assert!(store_bytes > 0.0, "{text}");
    assert!(!text.contains(&t.to_string()), "a tenant id in a label");
    assert!(!text.contains(&h.sandbox.client_secret) && !text.contains("tok-do-not-show-7f3a9c"));
    let om = h
        .http
        .get(format!("{}/metrics", h.api))
        .header("accept", "application/openmetrics-text")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(om.trim_end().ends_with("# EOF"));
    let status = h
        .http
        .get(format!("{}/v1/status", h.api))
        .bearer_auth("tok-do-not-show-7f3a9c")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !status.contains(&h.sandbox.client_secret) && !status.contains("tok-do-not-show-7f3a9c")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_description_lists_every_route() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let r = h.call(reqwest::Method::GET, "/v1/openapi.json").await;
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "served as what its name says"
    );
    let doc: Value = r.json().await.unwrap();
    for path in [
        "/v1/events",
        "/v1/events/{id}",
        "/v1/tenants/{id}",
        "/v1/status",
        "/v1/dead-letters",
        "/v1/dead-letters/{id}",
        "/v1/dead-letters/{id}/retry",
        "/v1/dead-letters/retry-all",
        "/v1/reconcile/{reconciler}",
        "/livez",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_key_header_keys_a_whole_array() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let ts = h.sandbox.tenant_ids(Some("customer"));
    let body = json!([
        {"tenant_id": ts[0], "type": "activation"},
        {"tenant_id": ts[1], "type": "activation", "idempotency_key": "own-key"},
    ]);
    let send = || {
        h.http
            .post(format!("{}/v1/events", h.api))
            .header("Idempotency-Key", "batch-1")
            .json(&body)
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let again: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(first["ids"], again["ids"], "sent again, nothing new stored");
    let own = h
        .post_events(
            json!({"tenant_id": ts[1], "type": "activation", "idempotency_key": "own-key"}),
        )
        .await;
    assert_eq!(own.status(), 200, "an element's own key stays its key");
    let own: Value = own.json().await.unwrap();
    assert_eq!(own["id"], first["ids"][1]);
}

fn arbitrary_body() -> impl Strategy<Value = Vec<u8>> {
    let json_leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("activation")),
        Just(json!("custom")),
        Just(json!("0b1d6a4e-8a7b-4c1e-9a55-6f0e8f3f2a11")),
    ];
    let json_value = json_leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("tenant_id".to_string()),
                    Just("type".to_string()),
                    Just("category".to_string()),
                    Just("action".to_string()),
                    Just("idempotency_key".to_string()),
                    ".{0,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        json_value.prop_map(|v| v.to_string().into_bytes()),
    ]
}

#[test]
fn arbitrary_bytes_and_json_never_cause_a_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(harness(SandboxOptions::default(), &[]));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    runner
        .run(&arbitrary_body(), |body| {
            let (status, v) = rt.block_on(refused(&h, body.clone(), "application/json"));
            prop_assert!(
                status < 500,
                "HTTP {} for {:?}: {}",
                status,
                String::from_utf8_lossy(&body),
                v
            );
            prop_assert!(status == 202 || status == 200 || v["error"]["code"].is_string());
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_cut_off_and_health_answers_past_the_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let h = harness(
        SandboxOptions::default(),
        &[
            ("STATUSD__API__MAX_CONNECTIONS", "8"),
            ("STATUSD__API__READ_TIMEOUT", "1s"),
        ],
    )
    .await;
    let addr = h.api.trim_start_matches("http://").to_string();
    // More idle connections than the cap.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Health answers past the cap, each probe on a fresh connection.
    for path in ["/livez", "/readyz"] {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let r = fresh.get(format!("{}{path}", h.api)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} past the cap");
    }
    // A header sent too slowly, and a body that never completes.
    let mut slow_header = TcpStream::connect(&addr).await.unwrap();
    slow_header
        .write_all(b"GET /livez HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut slow_body = TcpStream::connect(&addr).await.unwrap();
    slow_body
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    // Every idle or slow connection is closed by the daemon (a read sees the end).
    async fn closed_within(s: &mut TcpStream, within: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("the daemon closed the connection in time");
        got
    }
    for s in &mut idle {
        closed_within(s, Duration::from_secs(10)).await;
    }
    closed_within(&mut slow_header, Duration::from_secs(10)).await;
    let answer = closed_within(&mut slow_body, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // And the daemon serves as before.
    assert_eq!(h.call(reqwest::Method::GET, "/livez").await.status(), 200);
}
