//! Three replicas of the real binary on one real PostgreSQL, 50 partner accounts and the
//! sandbox platform, with the lease timings scaled down (3 s / 2 s / 0.5 s): kill -9 of a
//! replica under load, SIGTERM of one, SIGSTOP of an owner past its lease.

mod common;

use std::time::{Duration, Instant};

use common::pg::PgServer;
use common::{get_text, http_client, sigterm_and_wait, wait_for};
use statusd::sandbox::{Fault, Sandbox, SandboxOptions};

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
    let config = config(dir.path(), &sb, &server, "kill");
    let mut replicas = start(&http, &config, 3).await;
    all_owned(&http, replicas[0].port, Duration::from_secs(20), &[]).await;
    let mut load = Load::new(&sb);
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    for _ in 0..6 {
        load.round(&http, &ports).await;
    }
    // Kill the replica holding the most shards, while its reports are in flight.
    let held = owners(&http, ports[0]).await;
    let mut by_port = Vec::new();
    for r in &replicas {
        let id = member_of(&http, r.port).await;
        by_port.push(held.get(&id).map(|s| s.len()).unwrap_or(0));
    }
    let victim = (0..3).max_by_key(|i| by_port[*i]).unwrap();
    assert!(by_port[victim] >= 4, "shares {by_port:?}");
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
    let config = config(dir.path(), &sb, &server, "term");
    let mut replicas = start(&http, &config, 3).await;
    all_owned(&http, replicas[0].port, Duration::from_secs(20), &[]).await;
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
    let Some(server) = PgServer::start() else {
        return;
    };
    let sb = Sandbox::start(SandboxOptions {
        tenants: 160,
        ..Default::default()
    })
    .await
    .unwrap();
    // Reports take a while, so the pause catches some in flight.
    sb.inject(Fault {
        delay_ms: Some(300),
        path_contains: Some("integration_management".into()),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let config = config(dir.path(), &sb, &server, "pause");
    let replicas = start(&http, &config, 3).await;
    all_owned(&http, replicas[0].port, Duration::from_secs(20), &[]).await;
    let mut load = Load::new(&sb);
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    for _ in 0..4 {
        load.round(&http, &ports).await;
    }
    // The replica holding the most shards is paused.
    let held = owners(&http, ports[0]).await;
    let mut sizes = Vec::new();
    for r in &replicas {
        let id = member_of(&http, r.port).await;
        sizes.push(held.get(&id).map(|s| s.len()).unwrap_or(0));
    }
    let which = (0..3).max_by_key(|i| sizes[*i]).unwrap();
    let paused = &replicas[which];
    let paused_id = member_of(&http, paused.port).await;
    let pid = paused.daemon.id().to_string();
    // Paused with reports in flight (events it accepted itself are taken at once): their
    // acknowledgements come after its lease is gone.
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
    for _ in 0..4 {
        load.round(&http, &live).await;
    }
    tokio::time::sleep(LEASE * 2).await;
    all_owned(&http, live[0], Duration::from_secs(10), &[paused_id]).await;
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    for _ in 0..4 {
        load.round(&http, &ports).await;
    }
    load.check(&sb, Duration::from_secs(60)).await;
    let text = get_text(&http, &format!("http://127.0.0.1:{}/metrics", paused.port)).await;
    let transitions = metric(&text, "statusd_lease_transitions_total");
    let fenced = metric(&text, "statusd_fenced_writes_total");
    eprintln!("paused replica: fenced writes {fenced}, lease transitions {transitions}");
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
    let config = config(dir.path(), &sb, &server, "order");
    let replicas = start(&http, &config, 2).await;
    all_owned(&http, replicas[0].port, Duration::from_secs(20), &[]).await;
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
    let direct = config(dir.path(), &sb, &server, "cutoff");
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
