//! Delivery end to end against the sandbox: complete, ordered per tenant, valid reports, and
//! faults that end in delivery (or exactly the right dead letters) without request storms.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use statusd::sandbox::{Fault, SandboxOptions};
use uuid::Uuid;

fn custom_events(tenants: &[Uuid], per_tenant: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for n in 0..per_tenant {
        for (i, t) in tenants.iter().enumerate() {
            out.push(json!({"tenant_id": t, "type": "custom", "category": "test", "action": format!("t{i}-e{n}")}));
        }
    }
    out
}

fn assert_complete_and_ordered(h: &Harness, tenants: &[Uuid], per_tenant: usize, skip: &[Uuid]) {
    let got = actions_by_tenant(&h.sandbox);
    for (i, t) in tenants.iter().enumerate() {
        if skip.contains(t) {
            continue;
        }
        let want: Vec<String> = (0..per_tenant).map(|n| format!("t{i}-e{n}")).collect();
        let have = got.get(t).cloned().unwrap_or_default();
        assert_eq!(
            have, want,
            "tenant {t}: missing, duplicated or out of order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_events_over_many_tenants_arrive_complete_and_in_order() {
    let h = harness(
        SandboxOptions {
            tenants: 120,
            ..Default::default()
        },
        &[("STATUSD__DELIVERY__MAX_BATCH_EVENTS", "25")],
    )
    .await;
    let tenants: Vec<Uuid> = h.sandbox.tenant_ids(None).into_iter().take(80).collect();
    let events = custom_events(&tenants, 40); // 3200 events
    for chunk in events.chunks(500) {
        assert_eq!(h.post_events(json!(chunk)).await.status(), 202);
    }
    h.drained(Duration::from_secs(60)).await;
    assert_complete_and_ordered(&h, &tenants, 40, &[]);
    // Batching: far fewer reports than events, none over the configured size.
    let reports = h.sandbox.reports();
    assert!(
        reports.len() < 3200 / 5,
        "{} reports for 3200 events",
        reports.len()
    );
    assert!(reports
        .iter()
        .all(|r| r.body["events"].as_array().unwrap().len() <= 25));
    assert!(reports
        .iter()
        .all(|r| r.body["application_code"] == "vendor.tests"));
    let stats = h.sandbox.stats();
    assert_eq!(
        stats.by_status.get(&204).copied().unwrap_or(0) as usize,
        reports.len()
    );
    assert_eq!(h.running().metrics.delivered(), 3200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_503_with_retry_after_is_honoured() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let tenants: Vec<Uuid> = customers(&h.sandbox, 5);
    h.sandbox.inject(Fault {
        status: Some(503),
        retry_after: Some("1".into()),
        count: Some(3),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    assert_eq!(
        h.post_events(json!(custom_events(&tenants, 4)))
            .await
            .status(),
        202
    );
    h.drained(Duration::from_secs(20)).await;
    assert_complete_and_ordered(&h, &tenants, 4, &[]);
    // Retry-After: 1 was honoured: nothing was delivered in the first second after a 503.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "finished too fast for Retry-After: {:?}",
        started.elapsed()
    );
    // 3 refusals, then at most one report per tenant-batch: no storm.
    assert!(
        h.sandbox.requests_to("status") <= 3 + 5 * 2,
        "requests: {}",
        h.sandbox.requests_to("status")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_outage_backs_off_as_a_whole_then_delivers() {
    let h = harness(
        SandboxOptions {
            tenants: 80,
            ..Default::default()
        },
        &[
            ("STATUSD__DELIVERY__INITIAL_BACKOFF", "100ms"),
            ("STATUSD__DELIVERY__MAX_BACKOFF", "1s"),
        ],
    )
    .await;
    let tenants: Vec<Uuid> = h.sandbox.tenant_ids(None).into_iter().take(50).collect();
    h.sandbox.inject(Fault {
        status: Some(500),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    assert_eq!(
        h.post_events(json!(custom_events(&tenants, 2)))
            .await
            .status(),
        202
    );
    // Let the outage last 3 seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = h.sandbox.requests_to("status");
    // 50 lanes retrying independently every ~100-1000 ms would send several hundred requests;
    // the breaker holds it to a few dozen.
    assert!(during <= 60, "{during} status requests during a 3 s outage");
    h.sandbox.clear_faults();
    h.drained(Duration::from_secs(30)).await;
    assert_complete_and_ordered(&h, &tenants, 2, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_slow_answers_and_dropped_connections_are_retried() {
    let h = harness(
        SandboxOptions::default(),
        &[("STATUSD__PLATFORM__REQUEST_TIMEOUT", "300ms")],
    )
    .await;
    let tenants: Vec<Uuid> = customers(&h.sandbox, 10);
    h.sandbox.inject(Fault {
        status: Some(500),
        count: Some(4),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    h.sandbox.inject(Fault {
        delay_ms: Some(800),
        count: Some(3),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    h.sandbox.inject(Fault {
        drop_connection: true,
        count: Some(3),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    h.sandbox.inject(Fault {
        status: Some(429),
        count: Some(2),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    assert_eq!(
        h.post_events(json!(custom_events(&tenants, 5)))
            .await
            .status(),
        202
    );
    h.drained(Duration::from_secs(30)).await;
    // A report that timed out may have been recorded by the sandbox after the client gave up;
    // it is re-sent (at-least-once), so compare distinct deliveries in order.
    let got = actions_by_tenant(&h.sandbox);
    for (i, t) in tenants.iter().enumerate() {
        let mut have = got.get(t).cloned().unwrap_or_default();
        have.dedup_by(|a, b| a == b);
        let mut seen = std::collections::HashSet::new();
        have.retain(|a| seen.insert(a.clone()));
        let want: Vec<String> = (0..5).map(|n| format!("t{i}-e{n}")).collect();
        assert_eq!(have, want, "tenant {t}");
    }
    assert_eq!(h.sandbox.stats().faults_applied, 12);
    let m = &h.running().metrics;
    assert!(m.attempts(statusd::metrics::AttemptOutcome::Retryable) >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_mid_run_reissues_once_and_continues() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let tenants: Vec<Uuid> = customers(&h.sandbox, 4);
    assert_eq!(
        h.post_events(json!(custom_events(&tenants, 2)))
            .await
            .status(),
        202
    );
    h.drained(Duration::from_secs(10)).await;
    let issued_before = h.sandbox.stats().tokens_issued;
    h.sandbox.expire_tokens();
    assert_eq!(
        h.post_events(json!(custom_events(&tenants, 2)))
            .await
            .status(),
        202
    );
    h.drained(Duration::from_secs(10)).await;
    assert_eq!(
        h.sandbox.stats().tokens_issued,
        issued_before + 1,
        "one renewal shared by all lanes"
    );
    assert!(
        h.sandbox.stats().by_status.get(&401).copied().unwrap_or(0) >= 1,
        "the expired token was used and refused"
    );
    assert_eq!(h.running().queue.stats().dead_letters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusal_dead_letters_exactly_that_tenant_and_others_proceed() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let tenants: Vec<Uuid> = customers(&h.sandbox, 6);
    let bad = tenants[2];
    h.sandbox.inject(Fault {
        status: Some(400),
        query_contains: Some(bad.to_string()),
        ..Default::default()
    });
    let body = json!(custom_events(&tenants, 3));
    let resp: serde_json::Value = h.post_events(body).await.json().await.unwrap();
    h.drained(Duration::from_secs(10)).await;
    assert_complete_and_ordered(&h, &tenants, 3, &[bad]);
    let dead = h.running().queue.dead_letters(100).await.unwrap();
    assert_eq!(dead.len(), 3);
    assert!(dead.iter().all(|e| e.tenant_id == bad));
    assert!(
        dead[0].dead_reason.as_deref().unwrap().contains("HTTP 400"),
        "{:?}",
        dead[0].dead_reason
    );
    // One attempt per report: permanent errors are not retried.
    assert_eq!(h.sandbox.stats().by_status.get(&400).copied(), Some(1));
    // Retry after the platform accepts it again: the events go out in their original order.
    h.sandbox.clear_faults();
    let retried: serde_json::Value = h
        .call(reqwest::Method::POST, "/v1/dead-letters/retry-all")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(retried["retried"], 3);
    h.drained(Duration::from_secs(10)).await;
    assert_complete_and_ordered(&h, &tenants, 3, &[]);
    assert!(resp["ids"].as_array().unwrap().len() == 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_older_than_max_age_are_dead_lettered_with_the_reason() {
    let h = harness(
        SandboxOptions::default(),
        &[("STATUSD__DELIVERY__MAX_AGE", "300ms")],
    )
    .await;
    let t = h.sandbox.tenant_ids(Some("customer"))[0];
    h.sandbox.inject(Fault {
        status: Some(503),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    assert_eq!(
        h.post_events(json!({"tenant_id": t, "type": "activation"}))
            .await
            .status(),
        202
    );
    let q = h.running().queue.clone();
    wait_for(Duration::from_secs(10), "dead letter", || {
        q.stats().dead_letters == 1
    })
    .await;
    let dead = q.dead_letters(10).await.unwrap();
    assert!(
        dead[0]
            .dead_reason
            .as_deref()
            .unwrap()
            .contains("retries exhausted"),
        "{:?}",
        dead[0].dead_reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_returns_unsent_work_and_loses_nothing() {
    let mut h = harness(
        SandboxOptions::default(),
        &[("STATUSD__DELIVERY__SHUTDOWN_GRACE", "300ms")],
    )
    .await;
    let tenants: Vec<Uuid> = customers(&h.sandbox, 5);
    // Every report hangs past the grace period.
    h.sandbox.inject(Fault {
        delay_ms: Some(1500),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    assert_eq!(
        h.post_events(json!(custom_events(&tenants, 3)))
            .await
            .status(),
        202
    );
    let q = h.running().queue.clone();
    wait_for(Duration::from_secs(5), "reports in flight", || {
        q.stats().in_flight > 0
    })
    .await;
    let started = std::time::Instant::now();
    h.running.take().unwrap().shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    // Reopen: everything not acknowledged is queued again, in order.
    drop(q);
    let q = statusd::store::Queue::open(h.dir.path(), Default::default()).unwrap();
    assert_eq!(q.stats().depth, 15);
    assert_eq!(q.stats().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_for_a_tenant_in_backoff_adds_no_work_until_its_time() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let ts: Vec<Uuid> = h.sandbox.tenant_ids(None).into_iter().take(2).collect();
    let (throttled, healthy) = (ts[0], ts[1]);
    // One tenant is throttled for a minute; the platform is otherwise fine.
    h.sandbox.inject(Fault {
        status: Some(429),
        retry_after: Some("60".into()),
        query_contains: Some(throttled.to_string()),
        ..Default::default()
    });
    let post = |t: Uuid, n: usize| {
        h.post_events(json!({"tenant_id": t, "type": "custom", "category": "test", "action": format!("e{n}")}))
    };
    assert_eq!(post(throttled, 0).await.status(), 202);
    let delivery = &h.running().delivery;
    wait_for(Duration::from_secs(10), "the tenant in backoff", || {
        delivery.snapshot().lanes_waiting_backoff == 1
    })
    .await;
    let throttled_requests = h.sandbox.stats().by_status.get(&429).copied().unwrap_or(0);
    // The backend keeps sending for both tenants; the healthy one is delivered meanwhile.
    for n in 1..=200 {
        assert_eq!(post(throttled, n).await.status(), 202);
        if n % 10 == 0 {
            assert_eq!(post(healthy, n).await.status(), 202);
        }
    }
    wait_for(
        Duration::from_secs(10),
        "the healthy tenant delivered",
        || {
            actions_by_tenant(&h.sandbox)
                .get(&healthy)
                .is_some_and(|a| a.len() == 20)
        },
    )
    .await;
    let snap = delivery.snapshot();
    assert_eq!(snap.lanes_waiting_backoff, 1, "{snap:?}");
    assert!(
        snap.timers <= 1,
        "one wake-up for the tenant in backoff, not one per accepted event: {snap:?}"
    );
    assert_eq!(
        h.sandbox.stats().by_status.get(&429).copied().unwrap_or(0),
        throttled_requests,
        "nothing is sent for the throttled tenant before Retry-After ends"
    );
    // The healthy tenant's last acknowledgement may still be on its way to the disk.
    let q = h.running().queue.clone();
    wait_for(
        Duration::from_secs(10),
        "only the throttled tenant pending",
        || q.stats().depth == 201,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_secret_leaves_the_token_endpoint_alone_and_says_so() {
    let h = harness(
        SandboxOptions {
            tenants: 120,
            ..Default::default()
        },
        &[("STATUSD__PLATFORM__CLIENT_SECRET", "not-the-secret")],
    )
    .await;
    let tenants: Vec<Uuid> = h.sandbox.tenant_ids(None).into_iter().take(100).collect();
    assert_eq!(
        h.post_events(json!(custom_events(&tenants, 1)))
            .await
            .status(),
        202
    );
    // Every lane fails at once; the refusal is asked once, then remembered.
    let q = h.running().queue.clone();
    wait_for(Duration::from_secs(10), "lanes waiting in backoff", || {
        h.running().delivery.snapshot().lanes_waiting_backoff >= 50
    })
    .await;
    let status: serde_json::Value = serde_json::from_str(&h.get_text("/v1/status").await).unwrap();
    let failing = &status["platform"]["authentication_failing"];
    assert!(
        failing["error"]
            .as_str()
            .unwrap()
            .contains("invalid_client"),
        "{status}"
    );
    let ready = h.call(reqwest::Method::GET, "/readyz").await;
    assert_eq!(
        ready.status(),
        200,
        "refused credentials do not stop intake"
    );
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(
        body["authentication"]
            .as_str()
            .is_some_and(|a| a.starts_with("failing")),
        "{body}"
    );
    // The first wait is at least 5 s: within it, one token request for 100 tenants.
    assert_eq!(h.sandbox.requests_to("token"), 1);
    assert_eq!(q.stats().depth, 100, "nothing lost, nothing delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_token_lifetime_is_clamped_not_a_panic() {
    let h = harness(SandboxOptions::default(), &[]).await;
    // One token answer that would overflow any deadline; the token itself is unknown, so the
    // status call gets a 401 and a proper token is issued.
    h.sandbox.inject(Fault {
        body: Some(json!({"access_token": "odd", "token_type": "bearer", "expires_in": i64::MAX})),
        count: Some(1),
        path_contains: Some("/idp/token".into()),
        ..Default::default()
    });
    let tenants: Vec<Uuid> = customers(&h.sandbox, 3);
    assert_eq!(
        h.post_events(json!(custom_events(&tenants, 2)))
            .await
            .status(),
        202
    );
    h.drained(Duration::from_secs(20)).await;
    assert_complete_and_ordered(&h, &tenants, 2, &[]);
    let delivery = h.running().delivery.clone();
    wait_for(Duration::from_secs(10), "every lane ended", || {
        delivery.snapshot().lanes_running == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_carry_when_the_change_happened_not_when_they_arrived() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let ts = customers(&h.sandbox, 2);
    // The platform is down for the first reports: they arrive late.
    h.sandbox.inject(Fault {
        status: Some(503),
        count: Some(3),
        path_contains: Some("/status".into()),
        ..Default::default()
    });
    let r = h
        .post_events(json!({"tenant_id": ts[0], "type": "activation"}))
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let said = "2026-11-27T10:00:00Z";
    let r = h
        .post_events(json!({"tenant_id": ts[1], "type": "deactivation", "occurred_at": said}))
        .await;
    assert_eq!(r.status(), 202);
    h.drained(Duration::from_secs(20)).await;
    let ev: serde_json::Value =
        serde_json::from_str(&h.get_text(&format!("/v1/events/{id}")).await).unwrap();
    let accepted =
        chrono::DateTime::parse_from_rfc3339(ev["accepted_at"].as_str().unwrap()).unwrap();
    let reports = h.sandbox.reports();
    let activation = reports.iter().rfind(|r| r.tenant_id == ts[0]).unwrap();
    let at =
        chrono::DateTime::parse_from_rfc3339(activation.body["activated_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(
        at, accepted,
        "the activation is dated when statusd accepted it"
    );
    assert!(activation.body.get("deactivated_at").is_none());
    let deactivation = reports.iter().rfind(|r| r.tenant_id == ts[1]).unwrap();
    let at =
        chrono::DateTime::parse_from_rfc3339(deactivation.body["deactivated_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(at, chrono::DateTime::parse_from_rfc3339(said).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cyberapp_credentials_take_their_tokens_from_the_cyberapp_endpoint() {
    let h = harness(
        SandboxOptions::default(),
        &[("STATUSD__PLATFORM__CREDENTIALS", "cyberapp")],
    )
    .await;
    let tenants = customers(&h.sandbox, 2);
    assert_eq!(
        h.post_events(json!(custom_events(&tenants, 2)))
            .await
            .status(),
        202
    );
    h.drained(Duration::from_secs(10)).await;
    assert_complete_and_ordered(&h, &tenants, 2, &[]);
    assert_eq!(h.sandbox.requests_to("cyberapp_token"), 1);
    assert_eq!(
        h.sandbox.requests_to("token"),
        1,
        "no token from the API-client endpoint"
    );
}

/// A tenant's decisions are ordered by when they were taken (`occurred_at`, else acceptance),
/// not by when they arrived: a decision older than one already reported is recorded as
/// superseded and never sent, and the intended state is the latest decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_older_than_one_already_reported_is_set_aside_and_never_sent() {
    older_decisions_are_set_aside(&[]).await;
}

/// The same on a PostgreSQL store of one replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_decision_older_than_one_already_reported_is_set_aside() {
    let Some(server) = common::pg::PgServer::start() else {
        return;
    };
    let url = server.url();
    older_decisions_are_set_aside(&[
        ("STATUSD__STORE__BACKEND", "postgres"),
        ("STATUSD__STORE__POSTGRES__URL", &url),
        ("STATUSD__STORE__POSTGRES__SCHEMA", "older_decisions"),
    ])
    .await;
}

async fn older_decisions_are_set_aside(store: &[(&str, &str)]) {
    let h = harness(SandboxOptions::default(), store).await;
    let ts = customers(&h.sandbox, 2);
    let sent = |t: Uuid, field: &str| {
        h.sandbox
            .reports()
            .iter()
            .filter(|r| r.tenant_id == t)
            .flat_map(|r| r.body["events"].as_array().unwrap().clone())
            .filter(|e| e[field] == true)
            .count()
    };
    // The newer decision reaches the platform first...
    let r = h
        .post_events(json!({"tenant_id": ts[0], "type": "activation", "occurred_at": "2026-12-01T10:00:05Z"}))
        .await;
    assert_eq!(r.status(), 202);
    h.drained(Duration::from_secs(20)).await;
    assert_eq!(sent(ts[0], "activation_event"), 1);
    // ...then an older one arrives: recorded as delivered and superseded, never sent.
    let r = h
        .post_events(json!({"tenant_id": ts[0], "type": "deactivation", "occurred_at": "2026-12-01T10:00:01Z"}))
        .await;
    assert_eq!(r.status(), 202);
    let old = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.drained(Duration::from_secs(20)).await;
    let ev: serde_json::Value =
        serde_json::from_str(&h.get_text(&format!("/v1/events/{old}")).await).unwrap();
    assert_eq!(ev["status"], "delivered", "{ev}");
    assert!(
        ev["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("superseded"),
        "{ev}"
    );
    assert_eq!(
        sent(ts[0], "deactivation_event"),
        0,
        "the older decision was sent after the newer one"
    );
    let view = tenant_view(&h, ts[0]).await;
    assert_eq!(view["intended"], "active", "{view}");
    assert_eq!(view["intended_at"], "2026-12-01T10:00:05+00:00", "{view}");
    assert_eq!(view["last_reported"], "active", "{view}");
    // Nothing of it is left pending: no head, no age of an oldest pending event.
    assert!(h.running().queue.pending_tenants().is_empty());
    assert_eq!(h.running().queue.stats().oldest_pending_accepted_ms, None);

    // Both in one request, the newer first: the older is set aside within the batch.
    let r = h
        .post_events(json!([
            {"tenant_id": ts[1], "type": "deactivation", "occurred_at": "2026-12-01T11:00:05Z"},
            {"tenant_id": ts[1], "type": "activation", "occurred_at": "2026-12-01T11:00:01Z"}
        ]))
        .await;
    assert_eq!(r.status(), 202);
    h.drained(Duration::from_secs(20)).await;
    assert_eq!(sent(ts[1], "deactivation_event"), 1);
    assert_eq!(sent(ts[1], "activation_event"), 0);
    let view = tenant_view(&h, ts[1]).await;
    assert_eq!(view["intended"], "inactive", "{view}");
    assert_eq!(view["last_reported"], "inactive", "{view}");
    assert_eq!(h.running().queue.recount().await.unwrap(), (0, 0));
    // Both decisions set aside are counted.
    let metrics = h.get_text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "statusd_events_superseded_total 2"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("superseded"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

async fn tenant_view(h: &Harness, t: Uuid) -> serde_json::Value {
    serde_json::from_str(&h.get_text(&format!("/v1/tenants/{t}")).await).unwrap()
}
