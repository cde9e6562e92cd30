//! Three replicas of the real binary on one real PostgreSQL, 50 partner accounts and the
//! sandbox platform, with the lease timings scaled down (3 s / 2 s / 0.5 s): kill -9 of a
//! replica under load, SIGTERM of one, SIGSTOP of an owner past its lease.

mod common;

use std::time::{Duration, Instant};

use common::pg::PgServer;
use common::{get_text, http_client, sigterm_and_wait, wait_for};
use statusd::sandbox::{Sandbox, SandboxOptions};

use common::cluster::*;

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_under_load_loses_nothing_and_its_shards_are_owned_again() {
    let Some(pool) = Pool::start("kill", 3).await else {
        return;
    };
    kill_9_of_the_largest_owner(pool).await;
}

/// The same through PgBouncer in transaction mode (5 server connections for the 3 replicas).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_through_pgbouncer_loses_nothing_and_its_shards_are_owned_again() {
    let Some(pool) = Pool::start_through_pgbouncer("kill", 3).await else {
        return;
    };
    kill_9_of_the_largest_owner(pool).await;
}

/// Under load, `kill -9` of the replica holding the most shards: its shards are owned again
/// within the lease and a retry, and every event answered 202 is delivered, each tenant's in
/// posting order, its last report its latest decision.
async fn kill_9_of_the_largest_owner(pool: Pool) {
    let Pool {
        sb,
        http,
        mut replicas,
        ..
    } = pool;
    let mut load = Load::new(&sb);
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    for _ in 0..6 {
        load.round(&http, &ports).await;
    }
    // Kill the replica holding the most shards, while its reports are in flight.
    let victim = largest_owner(&http, &replicas).await;
    let share = owners(&http, ports[0]).await[&member_of(&http, replicas[victim].port).await].len();
    assert!(share >= 4, "the largest owner holds {share} shards");
    let dead_id = member_of(&http, replicas[victim].port).await;
    let mut dead = replicas.remove(victim);
    load.round(&http, &ports).await;
    let killed_at = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-9", &dead.daemon.id().to_string()])
        .status();
    let _ = dead.daemon.wait();
    let live: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    for _ in 0..6 {
        load.round(&http, &live).await;
    }
    let owned_at = all_owned(&http, live[0], Duration::from_secs(20), &[dead_id]).await;
    let takeover = owned_at.duration_since(killed_at);
    // Candidates count the lease from the last renew they saw, up to a retry before the kill.
    assert!(
        takeover >= LEASE - RETRY * 2,
        "taken over before the lease could expire: {takeover:?}"
    );
    eprintln!("takeover after kill -9: {takeover:?}");
    assert!(
        takeover <= LEASE + RETRY + Duration::from_secs(1),
        "its shards were owned again only after {takeover:?}"
    );
    for _ in 0..4 {
        load.round(&http, &live).await;
    }
    load.check(&sb, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_one_of_three_hands_its_shards_over_within_2_s() {
    let Some(pool) = Pool::start("term", 3).await else {
        return;
    };
    let Pool {
        sb,
        http,
        mut replicas,
        ..
    } = pool;
    let mut load = Load::new(&sb);
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    for _ in 0..6 {
        load.round(&http, &ports).await;
    }
    let leaving_id = member_of(&http, replicas[2].port).await;
    let leaving = replicas.remove(2);
    let live: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let stopped_at = Instant::now();
    let status = sigterm_and_wait(leaving.daemon).await;
    assert_eq!(status.code(), Some(0));
    let owned_at = all_owned(&http, live[0], Duration::from_secs(10), &[leaving_id]).await;
    let handover = owned_at.saturating_duration_since(stopped_at);
    eprintln!("handover after SIGTERM: {handover:?}");
    assert!(
        handover < Duration::from_secs(2),
        "handover took {handover:?}"
    );
    for _ in 0..6 {
        load.round(&http, &live).await;
    }
    load.check(&sb, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_after_its_lease_and_the_platform_ends_at_the_latest_intent() {
    // Reports take a second, so a pause catches some in flight (taken, sent, or answered).
    let Some(stage) = Stage::new("pause", Some(1000)).await else {
        return;
    };
    let (sb, http) = (&stage.sb, stage.http.clone());
    let replicas = start(&http, &stage.config, 3).await;
    all_owned(&http, replicas[0].port, Duration::from_secs(20), &[]).await;
    let mut load = Load::new(sb);
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    // STATUSD_PAUSE_TRIALS sets how many pauses (2 by default; BENCHMARKS.md reports 20).
    let trials: usize = std::env::var("STATUSD_PAUSE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let (mut fenced, mut transitions) = (0.0, 0.0);
    for trial in 0..trials {
        for _ in 0..2 {
            load.round(&http, &ports).await;
        }
        // The replica holding the most shards is paused with reports in flight (events it
        // accepted itself are taken at once): their answers come after its lease is gone.
        let which = largest_owner(&http, &replicas).await;
        let paused = &replicas[which];
        let paused_id = member_of(&http, paused.port).await;
        let pid = paused.daemon.id().to_string();
        load.round(&http, &[paused.port]).await;
        wait_for(Duration::from_secs(10), "reports in flight", || {
            sb.stats().in_flight >= 3
        })
        .await;
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status();
        let live: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| *p != paused.port)
            .collect();
        for _ in 0..2 {
            load.round(&http, &live).await;
        }
        all_owned(&http, live[0], Duration::from_secs(10), &[paused_id]).await;
        // Paused on past the new owners' re-assertion (one request timeout after takeover), as
        // a node that froze for a while: what it had in flight comes after it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status();
        for _ in 0..2 {
            load.round(&http, &ports).await;
        }
        load.check(sb, Duration::from_secs(90)).await;
        let text = get_text(&http, &format!("http://127.0.0.1:{}/metrics", paused.port)).await;
        fenced = metric(&text, "statusd_fenced_writes_total");
        transitions = metric(&text, "statusd_lease_transitions_total");
        eprintln!("trial {trial}: every tenant ends at its latest decision (paused replica: fenced writes {fenced}, lease transitions {transitions})");
    }
    assert!(
        transitions >= 2.0,
        "the paused replica's leases did not change: {transitions}"
    );
    assert!(
        fenced >= 1.0,
        "no late write of the paused replica was fenced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_older_than_one_already_reported_is_superseded_never_sent_after_it() {
    let Some(pool) = Pool::start("order", 2).await else {
        return;
    };
    let Pool {
        sb, http, replicas, ..
    } = pool;
    let tenant = sb.tenant_ids(Some("customer"))[0];
    let post = |port: u16, kind: &str, occurred: &str| {
        let body = serde_json::json!({"tenant_id": tenant, "account": "a07", "type": kind, "occurred_at": occurred});
        let http = http.clone();
        async move {
            let r = http
                .post(format!("http://127.0.0.1:{port}/v1/events"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    // The newer decision reaches the platform first (through one replica)...
    post(replicas[0].port, "activation", "2026-12-01T10:00:05Z").await;
    wait_for(Duration::from_secs(20), "the activation delivered", || {
        sb.reports().iter().any(|r| r.tenant_id == tenant)
    })
    .await;
    // ...then an older one arrives through the other: recorded as superseded, never sent.
    let old = post(replicas[1].port, "deactivation", "2026-12-01T10:00:01Z").await;
    let url = format!("http://127.0.0.1:{}/v1/events/{old}", replicas[1].port);
    common::wait_for_async(
        Duration::from_secs(20),
        "the old decision settled",
        || async { common::get_json(&http, &url).await["status"] == "delivered" },
    )
    .await;
    let ev = common::get_json(&http, &url).await;
    assert!(
        ev["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("superseded"),
        "{ev}"
    );
    let deactivations = sb
        .reports()
        .iter()
        .filter(|r| r.tenant_id == tenant)
        .flat_map(|r| r.body["events"].as_array().unwrap().clone())
        .filter(|e| e["deactivation_event"] == true)
        .count();
    assert_eq!(
        deactivations, 0,
        "the older decision was sent after the newer one"
    );
}

/// A TCP proxy in front of the database for one replica: cut, it drops every connection and
/// takes no new one.
struct Proxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(to: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let (c, k) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                k.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { port, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_store_stops_acting_and_the_others_take_its_shards() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let sb = Sandbox::start(SandboxOptions {
        tenants: 160,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let direct = config(dir.path(), &sb, &server.url(), "cutoff");
    let proxy = Proxy::start(server.port).await;
    let via_proxy = dir.path().join("via-proxy.toml");
    std::fs::write(
        &via_proxy,
        std::fs::read_to_string(&direct)
            .unwrap()
            .replace(&format!(":{}/", server.port), &format!(":{}/", proxy.port)),
    )
    .unwrap();
    let mut replicas = start(&http, &direct, 2).await;
    replicas.extend(start(&http, &via_proxy, 1).await);
    all_owned(&http, replicas[0].port, Duration::from_secs(20), &[]).await;
    let cut_port = replicas[2].port;
    let held = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("statusd_shards_owned "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    common::wait_for_async(
        Duration::from_secs(20),
        "the third replica holds shards",
        || async {
            held(&get_text(&http, &format!("http://127.0.0.1:{cut_port}/metrics")).await) > 0.0
        },
    )
    .await;
    let mut load = Load::new(&sb);
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    for _ in 0..4 {
        load.round(&http, &ports).await;
    }
    let cut_id = member_of(&http, cut_port).await;
    let cut_at = Instant::now();
    proxy.cut();
    // It stops acting within its renew deadline (plus a round to notice) ...
    common::wait_for_async(
        Duration::from_secs(10),
        "the cut-off replica holds nothing",
        || async {
            held(&get_text(&http, &format!("http://127.0.0.1:{cut_port}/metrics")).await) == 0.0
        },
    )
    .await;
    let stopped = cut_at.elapsed();
    eprintln!("cut-off replica stopped acting after {stopped:?}");
    assert!(
        stopped <= Duration::from_secs(2) + RETRY * 2,
        "it acted for {stopped:?}"
    );
    // ... its /readyz fails ...
    common::wait_for_async(
        Duration::from_secs(20),
        "the cut-off replica unready",
        || async {
            http.get(format!("http://127.0.0.1:{cut_port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 503)
        },
    )
    .await;
    // ... and the others take its shards.
    all_owned(&http, ports[0], Duration::from_secs(20), &[cut_id]).await;
    let live = [ports[0], ports[1]];
    for _ in 0..4 {
        load.round(&http, &live).await;
    }
    load.check(&sb, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_asked_of_a_replica_that_does_not_hold_the_account_names_its_owner() {
    let Some(pool) = Pool::start("asked", 2).await else {
        return;
    };
    let Pool { http, replicas, .. } = pool;
    let (ids, held) = second_holds_its_share(&http, &replicas).await;
    all_owned(&http, replicas[0].port, Duration::from_secs(20), &[]).await;
    // An account whose shard the second replica holds, asked of the first.
    let map = statusd::cluster::ShardMap {
        shards: 16,
        pins: Default::default(),
    };
    let theirs = (0..ACCOUNTS)
        .map(|a| format!("a{a:02}"))
        .find(|a| held[&ids[1]].contains(&u64::from(map.of(Some(a)))))
        .expect("the second replica holds some account");
    let ask = |port: u16| {
        let http = http.clone();
        let theirs = theirs.clone();
        async move {
            http.post(format!(
                "http://127.0.0.1:{port}/v1/reconcile/tenants?account={theirs}"
            ))
            .send()
            .await
            .unwrap()
        }
    };
    let r = ask(replicas[0].port).await;
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "owned_elsewhere", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&ids[1]) && msg.contains(&format!("127.0.0.1:{}", replicas[1].port)),
        "{msg}"
    );
    // The owner runs it.
    let r = ask(replicas[1].port).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // A run of every account names the accounts held elsewhere.
    let all: serde_json::Value = http
        .post(format!(
            "http://127.0.0.1:{}/v1/reconcile/tenants",
            replicas[0].port
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        all["held_elsewhere"][&theirs]["member"] == ids[1].as_str(),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciler_every_second_runs_once_per_account_and_slot_while_replicas_die() {
    let Some(server) = PgServer::start() else {
        return;
    };
    // One data center per account, each account pinned to a shard of its own, so the sandbox
    // of each counts that account's runs.
    let mut dcs = Vec::new();
    for _ in 0..4 {
        dcs.push(
            Sandbox::start(SandboxOptions {
                tenants: 5,
                ..Default::default()
            })
            .await
            .unwrap(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let mut toml = format!(
        "[integration]\napplication_code = \"vendor.tests\"\n[platform]\nrequest_timeout = \"2s\"\n\
         [store]\nbackend = \"postgres\"\n[store.postgres]\nurl = \"{}\"\nschema = \"slots\"\n\
         [cluster]\nshards = 4\nlease_duration = \"3s\"\nrenew_deadline = \"2s\"\nretry_period = \"500ms\"\n\
         [reconcile.tenants]\nschedule = \"* * * * * *\"\n",
        server.url()
    );
    for (i, sb) in dcs.iter().enumerate() {
        toml.push_str(&format!(
            "[accounts.r{i}]\ndatacenter_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nshard = {i}\n",
            sb.url, sb.client_id, sb.client_secret
        ));
    }
    let config = dir.path().join("slots.toml");
    std::fs::write(&config, toml).unwrap();
    let mut replicas = start(&http, &config, 3).await;
    all_owned(&http, replicas[0].port, Duration::from_secs(20), &[]).await;
    // The requests one run of an account makes.
    let before: Vec<u64> = dcs.iter().map(|d| d.requests_to("tenants")).collect();
    let window = Duration::from_secs(20);
    let started = Instant::now();
    let mut kills = 0u64;
    let mut rng = 0x9e37_79b9_u64;
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let victim = (rng >> 33) as usize % replicas.len();
        let mut dead = replicas.remove(victim);
        let _ = std::process::Command::new("kill")
            .args(["-9", &dead.daemon.id().to_string()])
            .status();
        let _ = dead.daemon.wait();
        kills += 1;
        replicas.extend(start(&http, &config, 1).await);
    }
    let elapsed = started.elapsed().as_secs();
    // Each walk of a 5-tenant tree is one request to the tenants endpoint.
    for (i, d) in dcs.iter().enumerate() {
        let runs = d.requests_to("tenants") - before[i];
        eprintln!("account r{i}: {runs} runs in {elapsed} s with {kills} kills");
        assert!(
            runs <= elapsed + 1 + kills,
            "account r{i}: {runs} runs in {elapsed} s slots and {kills} failovers"
        );
        assert!(
            runs >= elapsed / 3,
            "account r{i}: only {runs} runs in {elapsed} s"
        );
    }
}

/// An account added, rotated and removed through one replica's API is taken in by the others:
/// the owner of its shard delivers its events, with the credentials last given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_added_through_one_replica_is_served_by_the_owner_of_its_shard() {
    let Some(pool) = Pool::start("peers", 2).await else {
        return;
    };
    let Pool {
        http, replicas, sb, ..
    } = &pool;
    let (ids, held) = second_holds_its_share(http, replicas).await;
    // An id whose shard the second replica holds; added through the first.
    let map = statusd::cluster::ShardMap {
        shards: 16,
        pins: Default::default(),
    };
    let id = (0..)
        .map(|n| format!("peer{n}"))
        .find(|a| held[&ids[1]].contains(&u64::from(map.of(Some(a)))))
        .unwrap();
    let url = |i: usize, path: &str| format!("http://127.0.0.1:{}{path}", replicas[i].port);
    let client = sb.create_client(sb.root_tenant);
    let r = http
        .post(url(0, "/v1/accounts"))
        .json(&serde_json::json!({"id": id, "datacenter_url": sb.url, "client_id": client.0, "client_secret": client.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let tenant = common::customers(sb, 1)[0];
    let r = http
        .post(url(0, "/v1/events"))
        .json(&serde_json::json!({"tenant_id": tenant, "type": "activation", "account": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    wait_for(
        Duration::from_secs(20),
        "the peer's account's event delivered",
        || sb.reports().iter().any(|r| r.tenant_id == tenant),
    )
    .await;
    let account = |i: usize| {
        let u = url(i, &format!("/v1/accounts/{id}"));
        async move {
            let r = http.get(u).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    assert_eq!(account(1).await.0, 200);
    // New credentials given to the owner reach the first replica.
    let rotated = sb.create_client(sb.root_tenant);
    let r = http
        .put(url(1, &format!("/v1/accounts/{id}/credentials")))
        .json(&serde_json::json!({"client_id": rotated.0, "client_secret": rotated.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = account(0).await;
        if s == 200 && v["client_id"] == rotated.0.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "the rotation not seen: {s} {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Removed through the first: gone from the owner too.
    let r = http
        .delete(url(0, &format!("/v1/accounts/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while account(1).await.0 != 404 {
        assert!(
            Instant::now() < deadline,
            "the removal not seen by the owner"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An event accepted by a replica that does not hold its shard wakes the owner at once (a
/// `NOTIFY` in the intake's transaction, the owner's `LISTEN` session), instead of waiting for
/// the owner's next round: with `cluster.retry_period = 60s`, five events posted to the other
/// replica are each delivered within 2 s of their 202 (by rounds alone, one in 30 runs could).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_accepted_by_another_replica_wakes_the_owner_at_once() {
    let Some(stage) = Stage::new("wake", None).await else {
        return;
    };
    stage.retime("150s", "100s", "60s");
    let Stage { sb, http, .. } = &stage;
    let replicas = start(http, &stage.config, 2).await;
    all_owned(http, replicas[0].port, Duration::from_secs(40), &[]).await;
    // Tenants of accounts whose shards the first replica holds, posted to the second.
    let first = member_of(http, replicas[0].port).await;
    let held = owners(http, replicas[0].port).await;
    for (n, tenant) in tenants_held_by(sb, &held, &first, 5).iter().enumerate() {
        let took = time_to_report(http, sb, replicas[1].port, tenant, &format!("wake-{n}")).await;
        eprintln!("accepted elsewhere -> reported: {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "event {n} was reported {took:?} after its 202: the owner was not woken"
        );
    }
}

/// A replica over its share (a second one joined) gives shards back as a graceful stop does:
/// it stops acting for them, lets their reports in flight be settled, then releases them, so
/// none of its writes is refused by the new owner's epoch, and nothing is lost or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_waits_for_the_reports_in_flight_of_the_shards_given_back() {
    let Some(stage) = Stage::new("rebalance", Some(300)).await else {
        return;
    };
    let Stage {
        sb, http, config, ..
    } = &stage;
    let (sb, http, config) = (sb, http.clone(), config.clone());
    let mut replicas = start(&http, &config, 1).await;
    all_owned(&http, replicas[0].port, Duration::from_secs(20), &[]).await;
    let mut load = Load::new(sb);
    let first = replicas[0].port;
    for _ in 0..3 {
        load.round(&http, &[first]).await;
    }
    wait_for(Duration::from_secs(10), "reports in flight", || {
        sb.stats().in_flight >= 3
    })
    .await;
    // A second replica joins while reports are out: the first gives about half its shards back.
    replicas.extend(start(&http, &config, 1).await);
    let (ids, held) = second_holds_its_share(&http, &replicas).await;
    assert!(!held[&ids[1]].is_empty());
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    for _ in 0..3 {
        load.round(&http, &ports).await;
    }
    load.check(sb, Duration::from_secs(60)).await;
    let text = get_text(&http, &format!("http://127.0.0.1:{first}/metrics")).await;
    assert_eq!(
        metric(&text, "statusd_fenced_writes_total"),
        0.0,
        "a write of the replica giving shards back was refused: it released them with reports in flight"
    );
}

/// Through PgBouncer in transaction mode with no `store.postgres.direct_url`, the wake-up
/// session hears nothing (its own check fails), so every round reads the heads of every shard
/// held: an event accepted by the replica that does not hold its shard is still reported within
/// a few rounds (`retry_period = 1s`), never left for the slow full read of a replica that
/// believes it is woken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_without_a_direct_url_the_owner_polls_each_round() {
    let Some(pool) = Pool::start_through_pgbouncer("poll", 2).await else {
        return;
    };
    let Pool {
        sb,
        http,
        replicas,
        config,
        ..
    } = pool;
    // Slower rounds than the pool's default, so "within a few rounds" is told apart from
    // "at the full read" (every 15 rounds).
    drop(replicas);
    let slow = std::fs::read_to_string(&config)
        .unwrap()
        .replace("lease_duration = \"3s\"", "lease_duration = \"6s\"")
        .replace("renew_deadline = \"2s\"", "renew_deadline = \"4s\"")
        .replace("retry_period = \"500ms\"", "retry_period = \"1s\"");
    std::fs::write(&config, slow).unwrap();
    let replicas = start(&http, &config, 2).await;
    all_owned(&http, replicas[0].port, Duration::from_secs(40), &[]).await;
    let (ids, held) = second_holds_its_share(&http, &replicas).await;
    for (n, tenant) in tenants_held_by(&sb, &held, &ids[1], 3).iter().enumerate() {
        let took = time_to_report(&http, &sb, replicas[0].port, tenant, &format!("poll-{n}")).await;
        eprintln!("through PgBouncer, accepted elsewhere -> reported: {took:?}");
        assert!(
            took < Duration::from_secs(4),
            "event {n} was reported {took:?} after its 202: the owner did not poll each round"
        );
    }
}
