//! The PostgreSQL store through the real binary, against a real server the tests start:
//! `kill -9` during intake, the database stopped under load, moving a store from sled to
//! PostgreSQL and back, schema versions, and the password kept out of every output.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::pg::{PgBouncer, PgServer, PG_PASSWORD};
use common::*;
use serde_json::json;
use statusd::sandbox::{Sandbox, SandboxOptions};
use uuid::Uuid;

/// `statusd run` on the PostgreSQL store `schema` of the database at `url` (a test server, or
/// PgBouncer in front of it).
fn pg_daemon(
    base_url: &str,
    sb_id: &str,
    secret: &str,
    url: &str,
    schema: &str,
    port: u16,
    dir: &std::path::Path,
) -> std::process::Command {
    let mut cmd = daemon_command(base_url, sb_id, secret, &dir.join("unused-sled"), port);
    cmd.env("STATUSD__STORE__BACKEND", "postgres")
        .env("STATUSD__STORE__POSTGRES__URL", url)
        .env("STATUSD__STORE__POSTGRES__SCHEMA", schema)
        .env("STATUSD__CLUSTER__LEASE_DURATION", "3s")
        .env("STATUSD__CLUSTER__RENEW_DEADLINE", "2s")
        .env("STATUSD__CLUSTER__RETRY_PERIOD", "500ms");
    cmd
}

/// `pg_daemon` with its output discarded, started.
fn quiet_pg_daemon(
    sb: &Sandbox,
    url: &str,
    schema: &str,
    port: u16,
    dir: &std::path::Path,
) -> Daemon {
    pg_daemon(
        &sb.url,
        &sb.client_id,
        &sb.client_secret,
        url,
        schema,
        port,
        dir,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn_daemon()
}

/// Post one event per request for each tenant in turn (so each tenant's order is its posting
/// order) until `stop` says so; returns the actions answered 202, and how many 503s came back
/// (each with a `Retry-After`).
async fn post_round(
    http: &reqwest::Client,
    port: u16,
    tenants: &[Uuid],
    next: &mut HashMap<Uuid, usize>,
    accepted: &mut Vec<(Uuid, String)>,
) -> Result<(), reqwest::StatusCode> {
    let body: Vec<_> = tenants
        .iter()
        .map(|t| {
            let n = next.entry(*t).or_default();
            *n += 1;
            json!({"tenant_id": t, "type": "custom", "category": "pg", "action": format!("{t}-{n}")})
        })
        .collect();
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/events"))
        .json(&body)
        .send()
        .await
        .map_err(|_| reqwest::StatusCode::BAD_GATEWAY)?;
    if r.status() != 202 {
        if r.status() == 503 {
            assert!(
                r.headers().get("retry-after").is_some(),
                "a 503 without Retry-After"
            );
        }
        // Not accepted: these postings may be stored once or not at all. Leave their numbers
        // used, so later postings stay in order after them.
        return Err(r.status());
    }
    for b in &body {
        accepted.push((
            b["tenant_id"].as_str().unwrap().parse().unwrap(),
            b["action"].as_str().unwrap().to_string(),
        ));
    }
    Ok(())
}

/// Wait until the sandbox holds every accepted action, then check each tenant's order: the
/// first delivery of each accepted action comes in posting order.
async fn assert_all_delivered_in_order(
    sb: &Sandbox,
    accepted: &[(Uuid, String)],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let got = actions_by_tenant(sb);
        let missing = accepted
            .iter()
            .filter(|(t, a)| !got.get(t).is_some_and(|v| v.contains(a)))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} accepted events not delivered within {within:?}",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_first_deliveries_in_order(&actions_by_tenant(sb));
}

/// `kill -9` of the daemon three times while requests are in flight on the database at `url`,
/// then one more start: every event answered 202 is delivered, each tenant's in posting order.
async fn kill_9_during_intake_delivers_every_accepted_event_in_order(url: &str, schema: &str) {
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let tenants: Vec<Uuid> = customers(&sb, 6);
    let mut next = HashMap::new();
    let mut accepted = Vec::new();
    let daemon = |dir: &std::path::Path| {
        let mut cmd = pg_daemon(
            &sb.url,
            &sb.client_id,
            &sb.client_secret,
            url,
            schema,
            0,
            dir,
        );
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    };
    for round in 0..3 {
        let (mut daemon, port) = spawn_ready(&mut daemon(dir.path()), dir.path()).await;
        // Kill while requests are in flight: a poster runs until its connection dies.
        let killer = {
            let pid = daemon.id();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150 + 100 * round)).await;
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            })
        };
        while post_round(&http, port, &tenants, &mut next, &mut accepted)
            .await
            .is_ok()
        {}
        killer.await.unwrap();
        let _ = daemon.wait();
    }
    assert!(
        accepted.len() > 20,
        "too few events accepted: {}",
        accepted.len()
    );
    // A last start delivers what the killed ones left.
    let _daemon = spawn_ready(&mut daemon(dir.path()), dir.path()).await;
    assert_all_delivered_in_order(&sb, &accepted, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_intake_on_postgres_delivers_every_accepted_event_in_order() {
    let Some(server) = PgServer::start() else {
        return;
    };
    kill_9_during_intake_delivers_every_accepted_event_in_order(&server.url(), "kill9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_intake_through_pgbouncer_delivers_every_accepted_event_in_order() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let Some(bouncer) = PgBouncer::start(&server) else {
        return;
    };
    kill_9_during_intake_delivers_every_accepted_event_in_order(&bouncer.url(), "kill9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_answers_503_then_resumes_by_itself_losing_nothing() {
    let Some(mut server) = PgServer::start() else {
        return;
    };
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let log = dir.path().join("daemon.log");
    let port = free_port();
    let mut daemon = pg_daemon(
        &sb.url,
        &sb.client_id,
        &sb.client_secret,
        &server.url(),
        "outage",
        port,
        dir.path(),
    )
    .env("RUST_LOG", "debug")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn_daemon();
    wait_ready(&http, port).await;
    // A second statusd on the same store joins the pool: /v1/cluster shows both members.
    let second = quiet_pg_daemon(&sb, &server.url(), "outage", free_port(), dir.path());
    wait_for_async(Duration::from_secs(20), "two members", || async {
        let v: serde_json::Value = http
            .get(format!("http://127.0.0.1:{port}/v1/cluster"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["members"].as_array().map(|m| m.len()) == Some(2)
    })
    .await;
    assert_eq!(sigterm_and_wait(second).await.code(), Some(0));
    let tenants: Vec<Uuid> = customers(&sb, 8);
    let mut next = HashMap::new();
    let mut accepted = Vec::new();
    for _ in 0..20 {
        post_round(&http, port, &tenants, &mut next, &mut accepted)
            .await
            .unwrap();
    }
    server.halt();
    let down_at = Instant::now();
    let mut refused = 0;
    let mut unready = false;
    while down_at.elapsed() < Duration::from_secs(10) {
        match post_round(&http, port, &tenants, &mut next, &mut accepted).await {
            Ok(()) => {}
            Err(s) => {
                assert_eq!(s, 503, "while the database is down intake answers 503");
                refused += 1;
            }
        }
        let r = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["failing"], "store_unavailable", "{v}");
            unready = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused > 10,
        "only {refused} requests refused while the database was down"
    );
    assert!(unready, "/readyz never said store_unavailable");
    server.resume();
    // Intake takes events again by itself (no restart of statusd).
    let deadline = Instant::now() + Duration::from_secs(20);
    while post_round(&http, port, &tenants, &mut next, &mut accepted)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "intake did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..10 {
        post_round(&http, port, &tenants, &mut next, &mut accepted)
            .await
            .unwrap();
    }
    wait_ready(&http, port).await;
    assert_all_delivered_in_order(&sb, &accepted, Duration::from_secs(60)).await;
    assert!(daemon.try_wait().unwrap().is_none(), "statusd exited");
    assert_eq!(sigterm_and_wait(daemon).await.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("cannot be reached"),
        "the outage was not logged"
    );
    assert!(
        !text.contains(PG_PASSWORD),
        "the database password is in the log"
    );
}

/// `statusd <args>` with the given store environment; (exit code, stdout, stderr).
fn statusd(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STATUSD__INTEGRATION__APPLICATION_CODE", "vendor.tests")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pg_env(server: &PgServer, schema: &str) -> Vec<(&'static str, String)> {
    vec![
        ("STATUSD__STORE__BACKEND", "postgres".into()),
        ("STATUSD__STORE__POSTGRES__URL", server.url()),
        ("STATUSD__STORE__POSTGRES__SCHEMA", schema.into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_moves_to_postgres_and_back_with_its_pending_events_in_order() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sled = dir.path().join("sled");
    let http = http_client();
    // On sled, with no platform: everything stays pending.
    let dead_platform = format!("http://127.0.0.1:{}", free_port());
    let port = free_port();
    let daemon = daemon_command(&dead_platform, "id", "secret", &sled, port)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_daemon();
    wait_ready(&http, port).await;
    let tenants: Vec<Uuid> = customers(&sb, 5);
    let mut next = HashMap::new();
    let mut accepted = Vec::new();
    for _ in 0..30 {
        post_round(&http, port, &tenants, &mut next, &mut accepted)
            .await
            .unwrap();
    }
    assert_eq!(sigterm_and_wait(daemon).await.code(), Some(0));
    let sled_env = vec![("STATUSD__STORE__PATH", sled.display().to_string())];
    let export = dir.path().join("store.jsonl");
    let (code, _, err) = statusd(
        &["store", "export", "--out", export.to_str().unwrap()],
        &sled_env,
    );
    assert_eq!(code, 0, "{err}");
    // Into an empty PostgreSQL store.
    let pg = pg_env(&server, "moved");
    let (code, out, err) = statusd(&["store", "import", export.to_str().unwrap()], &pg);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("imported 150 events (150 pending, 0 dead)"),
        "{out}"
    );
    // A second import is refused: the store is not empty.
    let (code, _, err) = statusd(&["store", "import", export.to_str().unwrap()], &pg);
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    // And back: PostgreSQL → a new sled store, which verifies sound with the same events.
    let back = dir.path().join("back.jsonl");
    let (code, _, err) = statusd(&["store", "export", "--out", back.to_str().unwrap()], &pg);
    assert_eq!(code, 0, "{err}");
    let sled2 = dir.path().join("sled2");
    let sled2_env = vec![("STATUSD__STORE__PATH", sled2.display().to_string())];
    let (code, out, err) = statusd(&["store", "import", back.to_str().unwrap()], &sled2_env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("imported 150 events (150 pending, 0 dead)"),
        "{out}"
    );
    let (code, out, _) = statusd(&["store", "verify"], &sled2_env);
    assert_eq!(code, 0, "{out}");
    // The PostgreSQL store delivers the same pending events in the same order.
    let port = free_port();
    let _daemon = quiet_pg_daemon(&sb, &server.url(), "moved", port, dir.path());
    wait_ready(&http, port).await;
    assert_all_delivered_in_order(&sb, &accepted, Duration::from_secs(60)).await;
    let got = actions_by_tenant(&sb);
    for t in &tenants {
        let want: Vec<String> = accepted
            .iter()
            .filter(|(x, _)| x == t)
            .map(|(_, a)| a.clone())
            .collect();
        assert_eq!(
            got[t], want,
            "tenant {t}: not delivered exactly once in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_and_a_newer_schema_is_refused_naming_both_versions() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let pg = pg_env(&server, "versions");
    let (code, out, err) = statusd(&["store", "migrate"], &pg);
    assert_eq!(code, 0, "{err}");
    let current = statusd::store::pg::PG_SCHEMA_VERSION;
    assert!(
        out.contains(&format!("from version 0 to {current}")),
        "{out}"
    );
    let (code, out, _) = statusd(&["store", "migrate"], &pg);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to apply"), "{out}");
    assert!(!out.contains(PG_PASSWORD) && !err.contains(PG_PASSWORD));
    server.psql("INSERT INTO versions.schema_migrations (version, description) VALUES (7, 'from a newer statusd')");
    let (code, _, err) = statusd(&["store", "migrate"], &pg);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("schema version 7") && err.contains(&format!("up to {current}")),
        "{err}"
    );
    // `run` refuses it too, with the same exit code, before it serves anything.
    let mut run_env = pg.clone();
    run_env.push(("STATUSD__PLATFORM__BASE_URL", "http://127.0.0.1:9".into()));
    run_env.push(("STATUSD__PLATFORM__CLIENT_ID", "id".into()));
    run_env.push(("STATUSD__PLATFORM__CLIENT_SECRET", "secret".into()));
    run_env.push(("STATUSD__API__LISTEN", format!("127.0.0.1:{}", free_port())));
    let (code, out, err) = statusd(&["run"], &run_env);
    assert_eq!(code, 78, "{out}{err}");
    assert!(err.contains("schema version 7"), "{err}");
    assert!(!err.contains(PG_PASSWORD), "the password is in the error");
    // check-config shows the store without the password.
    let (code, out, err) = statusd(&["check-config"], &run_env);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains(PG_PASSWORD) && !err.contains(PG_PASSWORD),
        "{out}"
    );
    // A URL that is not one is refused naming the key, without repeating it.
    let mut bad = run_env.clone();
    bad.retain(|(k, _)| *k != "STATUSD__STORE__POSTGRES__URL");
    bad.push((
        "STATUSD__STORE__POSTGRES__URL",
        format!("mysql://u:{PG_PASSWORD}@h/db"),
    ));
    let (code, out, err) = statusd(&["check-config"], &bad);
    assert_eq!(code, 78, "{out}{err}");
    assert!(err.contains("store.postgres.url"), "{err}");
    assert!(!err.contains(PG_PASSWORD), "{err}");
}

/// A rolling update: a newer build applied a migration that only adds (here a test-only one: a
/// column and a table). This build, running, goes on taking and delivering events on that
/// schema, and starts on it again; a migration that does not only add ends the window: this
/// build then refuses to start on the schema (exit 78), naming its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_replica_goes_on_over_a_newer_schema_that_only_adds() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let tenants: Vec<Uuid> = customers(&sb, 4);
    let (mut next, mut accepted) = (HashMap::new(), Vec::new());
    let daemon = |dir: &std::path::Path| {
        let mut cmd = pg_daemon(
            &sb.url,
            &sb.client_id,
            &sb.client_secret,
            &server.url(),
            "rolling",
            0,
            dir,
        );
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    };
    let (running, port) = spawn_ready(&mut daemon(dir.path()), dir.path()).await;
    post_round(&http, port, &tenants, &mut next, &mut accepted)
        .await
        .unwrap();
    // What a newer statusd would apply: the next version, additive.
    let current = statusd::store::pg::PG_SCHEMA_VERSION;
    server.psql(&format!(
        "BEGIN;
         ALTER TABLE rolling.events ADD COLUMN note text;
         CREATE TABLE rolling.audit (id bigserial PRIMARY KEY, what text NOT NULL);
         INSERT INTO rolling.schema_migrations (version, description, additive)
             VALUES ({}, 'test only: a note on events, an audit table', true);
         COMMIT;",
        current + 1
    ));
    for _ in 0..3 {
        post_round(&http, port, &tenants, &mut next, &mut accepted)
            .await
            .unwrap();
    }
    assert_all_delivered_in_order(&sb, &accepted, Duration::from_secs(30)).await;
    // Started again on the schema ahead of it.
    assert_eq!(sigterm_and_wait(running).await.code(), Some(0));
    let (running, port) = spawn_ready(&mut daemon(dir.path()), dir.path()).await;
    post_round(&http, port, &tenants, &mut next, &mut accepted)
        .await
        .unwrap();
    assert_all_delivered_in_order(&sb, &accepted, Duration::from_secs(30)).await;
    assert_eq!(sigterm_and_wait(running).await.code(), Some(0));
    // A migration that does not only add ends the window for this build.
    server.psql(&format!(
        "INSERT INTO rolling.schema_migrations (version, description, additive)
             VALUES ({}, 'test only: a column dropped', false)",
        current + 2
    ));
    let mut refused = daemon(dir.path());
    refused.stderr(Stdio::piped());
    let out = refused.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains(&format!("schema version {}", current + 2))
            && err.contains(&format!("up to {current}")),
        "{err}"
    );
}
