//! The wall clock moved under the real binary with libfaketime (Debian package `faketime`;
//! the tests say why they are skipped where it is missing): deadlines run on the monotonic
//! clock, so a jump neither dead-letters a report early nor renews the token for every report.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::json;
use statusd::sandbox::{Sandbox, SandboxOptions};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The daemon with its wall clock at the offset written in `offset_file` (re-read on every
/// call, so the test can move it); the monotonic clock is left alone.
fn daemon(
    sb: &Sandbox,
    store: &std::path::Path,
    port: u16,
    offset_file: &std::path::Path,
) -> Daemon {
    daemon_with(sb, store, port, offset_file, &[])
}

/// [`daemon`] with more settings.
fn daemon_with(
    sb: &Sandbox,
    store: &std::path::Path,
    port: u16,
    offset_file: &std::path::Path,
    env: &[(&str, &str)],
) -> Daemon {
    daemon_command(&sb.url, &sb.client_id, &sb.client_secret, store, port)
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", offset_file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("DONT_FAKE_MONOTONIC", "1")
        .env("STATUSD__DELIVERY__MAX_BACKOFF", "200ms")
        .env("STATUSD__DELIVERY__MAX_AGE", "1h")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_daemon()
}

fn faketime_missing() -> bool {
    if std::path::Path::new(LIBFAKETIME).exists() {
        return false;
    }
    // In CI the tool is installed: a missing one is a failure there, never a pass.
    assert!(
        std::env::var_os("STATUSD_TEST_REQUIRE_FAKETIME").is_none(),
        "STATUSD_TEST_REQUIRE_FAKETIME is set but {LIBFAKETIME} is missing"
    );
    eprintln!("skipped: {LIBFAKETIME} is missing (apt-get install faketime)");
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_jumped_forward_does_not_dead_letter_a_report_early() {
    if faketime_missing() {
        return;
    }
    let sb = sandbox_refusing_reports().await;
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let child = daemon(&sb, &dir.path().join("store"), port, &offset);
    let http = http_client();
    wait_ready(&http, port).await;
    let t = customers(&sb, 1)[0];
    let r = http
        .post(format!("{api}/v1/events"))
        .json(&json!({"tenant_id": t, "type": "activation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_for(Duration::from_secs(10), "the report failing", || {
        sb.requests_to("status") >= 2
    })
    .await;
    // Four days pass on the wall clock in an instant: far past delivery.max_age (1 h).
    std::fs::write(&offset, "+4d\n").unwrap();
    let before = sb.requests_to("status");
    wait_for(
        Duration::from_secs(10),
        "more retries after the jump",
        || sb.requests_to("status") >= before + 4,
    )
    .await;
    let status = get_json(&http, &format!("{api}/v1/status")).await;
    assert_eq!(
        status["queue"]["dead_letters"], 0,
        "dead-lettered by a clock jump: {status}"
    );
    // The platform comes back: the report is delivered.
    sb.clear_faults();
    wait_for(Duration::from_secs(10), "the report delivered", || {
        sb.reports().iter().any(|r| r.tenant_id == t)
    })
    .await;
    assert_eq!(sigterm_and_wait(child).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_hours_ahead_of_the_platform_keeps_its_token() {
    if faketime_missing() {
        return;
    }
    statusd::platform::install_crypto_provider();
    // Tokens live 2 h on the platform's clock; this host is 3 h ahead.
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+3h\n").unwrap();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let child = daemon(&sb, &dir.path().join("store"), port, &offset);
    let http = http_client();
    wait_ready(&http, port).await;
    let tenants = customers(&sb, 10);
    for (n, t) in tenants.iter().enumerate() {
        let r = http
            .post(format!("{api}/v1/events"))
            .json(&json!({"tenant_id": t, "type": "custom", "category": "clock", "action": format!("a{n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        wait_for(Duration::from_secs(10), "the report delivered", || {
            sb.reports().len() > n
        })
        .await;
    }
    assert_eq!(
        sb.stats().tokens_issued,
        1,
        "one token for ten reports, whatever this host's clock says"
    );
    assert_eq!(sigterm_and_wait(child).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_accepted_under_a_clock_days_ahead_ages_from_the_open_once_the_clock_is_right() {
    if faketime_missing() {
        return;
    }
    let sb = sandbox_refusing_reports().await;
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+10d\n").unwrap();
    let store = dir.path().join("store");
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let child = daemon(&sb, &store, port, &offset);
    let http = http_client();
    wait_ready(&http, port).await;
    let r = http
        .post(format!("{api}/v1/events"))
        .json(&json!({"tenant_id": customers(&sb, 1)[0], "type": "activation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(sigterm_and_wait(child).await.code(), Some(0));
    // The clock is corrected; the event was accepted "10 days from now".
    std::fs::write(&offset, "+0\n").unwrap();
    let child = daemon(&sb, &store, port, &offset);
    wait_ready(&http, port).await;
    let ready = std::time::Instant::now();
    // Time passes while the report keeps failing (nothing has asked for the age yet).
    let attempts = sb.requests_to("status");
    wait_for(Duration::from_secs(20), "ten more failed attempts", || {
        sb.requests_to("status") >= attempts + 10
    })
    .await;
    let waited = ready.elapsed().as_secs_f64();
    // Its age is at least the time this process has had it pending, though the wall clock
    // said it was accepted 10 days from now (the stale-event alert is not blind).
    let age = get_json(&http, &format!("{api}/v1/status")).await["queue"]
        ["oldest_pending_age_seconds"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        age + 0.001 >= waited,
        "age {age} s, pending here for {waited} s"
    );
    assert_eq!(sigterm_and_wait(child).await.code(), Some(0));
}

/// The scheduled runs of every reconciler so far (`statusd_reconcile_runs_total`, summed).
async fn reconcile_runs(http: &reqwest::Client, api: &str) -> f64 {
    get_text(http, &format!("{api}/metrics"))
        .await
        .lines()
        .filter(|l| l.starts_with("statusd_reconcile_runs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_wall_clock_jumps_days_each_reconciler_runs_at_most_once() {
    if faketime_missing() {
        return;
    }
    statusd::platform::install_crypto_provider();
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    // Hourly schedules: none is due during the test unless the clock jumps.
    let hourly = "0 17 * * * *";
    let child = daemon_with(
        &sb,
        &dir.path().join("store"),
        port,
        &offset,
        &[
            ("STATUSD__RECONCILE__TENANTS__SCHEDULE", hourly),
            ("STATUSD__RECONCILE__STATUS__SCHEDULE", hourly),
            ("STATUSD__RECONCILE__BRANDING__SCHEDULE", hourly),
        ],
    );
    let http = http_client();
    wait_ready(&http, port).await;
    let before = reconcile_runs(&http, &api).await;
    // Four days pass in an instant: 96 hourly ticks of each reconciler are skipped over.
    std::fs::write(&offset, "+4d\n").unwrap();
    // `/readyz` answers once the schedules are registered: a jump before that would be seen
    // by a schedule as its start time, and its catch-up run would never come.
    wait_for_async(Duration::from_secs(30), "the catch-up runs", || async {
        reconcile_runs(&http, &api).await >= before + 3.0
    })
    .await;
    // Then the scheduler ticks on (it looks every few hundred ms): an observation window of
    // 5 s in which no further run may start, since no hourly tick is due.
    let mut last = reconcile_runs(&http, &api).await;
    let window = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < window {
        last = last.max(reconcile_runs(&http, &api).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        last <= before + 3.0,
        "{} runs after one jump of three hourly reconcilers",
        last - before
    );
    assert_eq!(sigterm_and_wait(child).await.code(), Some(0));
}

/// A decision with no `occurred_at` is dated when it is accepted. With the wall clock set back
/// (a resumed VM, a stepped clock, or a replica whose clock is behind a peer's), a new decision
/// must still count as newer than the one before it: it is reported (not set aside as older
/// than the one already reported) and becomes the tenant's intended state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_decision_after_the_clock_went_back_is_still_reported_and_intended() {
    let Some(server) = common::pg::PgServer::start() else {
        return;
    };
    let url = server.url();
    decision_after_the_clock_went_back(&[
        ("STATUSD__STORE__BACKEND", "postgres"),
        ("STATUSD__STORE__POSTGRES__URL", &url),
        ("STATUSD__STORE__POSTGRES__SCHEMA", "clock_back"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sled_a_decision_after_the_clock_went_back_is_still_reported_and_intended() {
    decision_after_the_clock_went_back(&[]).await;
}

async fn decision_after_the_clock_went_back(store: &[(&str, &str)]) {
    if faketime_missing() {
        return;
    }
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let child = daemon_with(&sb, &dir.path().join("store"), port, &offset, store);
    let http = http_client();
    wait_ready(&http, port).await;
    let t = customers(&sb, 1)[0];
    let post = |kind: &'static str, action: &'static str| {
        let http = http.clone();
        let api = api.clone();
        async move {
            let r = http
                .post(format!("{api}/v1/events"))
                .json(&json!({"tenant_id": t, "type": kind, "action": action}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        }
    };
    let actions = |sb: &Sandbox| actions_by_tenant(sb).remove(&t).unwrap_or_default();
    post("activation", "on").await;
    wait_for(Duration::from_secs(10), "the activation reported", || {
        actions(&sb) == ["on"]
    })
    .await;
    // The wall clock goes back an hour; then the vendor deactivates.
    std::fs::write(&offset, "-1h\n").unwrap();
    post("deactivation", "off").await;
    wait_for(Duration::from_secs(10), "the deactivation reported", || {
        actions(&sb).last().map(String::as_str) == Some("off")
    })
    .await;
    let view = get_json(&http, &format!("{api}/v1/tenants/{t}")).await;
    assert_eq!(view["intended"], "inactive", "{view}");
    assert_eq!(sigterm_and_wait(child).await.code(), Some(0));
}
