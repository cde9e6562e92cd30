//! Three replicas of the real binary on one real PostgreSQL, 50 partner accounts and the
//! sandbox platform, with the lease timings scaled down (3 s / 2 s / 0.5 s): kill -9 of a
//! replica under load, SIGTERM of one, SIGSTOP of an owner past its lease.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::pg::PgServer;
use common::*;
use serde_json::json;
use statusd::sandbox::{Fault, Sandbox, SandboxOptions};
use uuid::Uuid;

const ACCOUNTS: usize = 50;
const LEASE: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_millis(500);

/// The configuration of a replica: 50 accounts on the sandbox, the store on `schema`.
fn config(
    dir: &std::path::Path,
    sb: &Sandbox,
    server: &PgServer,
    schema: &str,
) -> std::path::PathBuf {
    let mut toml = format!(
        "[integration]\napplication_code = \"vendor.tests\"\n[platform]\nrequest_timeout = \"2s\"\n\
         [store]\nbackend = \"postgres\"\n[store.postgres]\nurl = \"{}\"\nschema = \"{schema}\"\npool_size = 4\n\
         [cluster]\nshards = 16\nlease_duration = \"3s\"\nrenew_deadline = \"2s\"\nretry_period = \"500ms\"\n\
         [delivery]\ninitial_backoff = \"50ms\"\nmax_backoff = \"300ms\"\nmax_batch_events = 10\nshutdown_grace = \"2s\"\n",
        server.url()
    );
    for a in 0..ACCOUNTS {
        toml.push_str(&format!(
            "[accounts.a{a:02}]\ndatacenter_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
            sb.url, sb.client_id, sb.client_secret
        ));
    }
    let path = dir.join(format!("{schema}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

struct Replica {
    daemon: Daemon,
    port: u16,
}

fn spawn(config: &std::path::Path, port: u16) -> Daemon {
    std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
        .args(["run", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("STATUSD__API__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_daemon()
}

async fn start(http: &reqwest::Client, config: &std::path::Path, n: usize) -> Vec<Replica> {
    let mut out = Vec::new();
    for _ in 0..n {
        let port = free_port();
        let daemon = spawn(config, port);
        wait_ready(http, port).await;
        out.push(Replica { daemon, port });
    }
    out
}

async fn cluster(http: &reqwest::Client, port: u16) -> serde_json::Value {
    get_json(http, &format!("http://127.0.0.1:{port}/v1/cluster")).await
}

/// Members that hold shards, by id, with their shard lists, as replica `port` sees them.
async fn owners(http: &reqwest::Client, port: u16) -> HashMap<String, Vec<u64>> {
    let v = cluster(http, port).await;
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["shards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_u64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

/// The member id of the replica listening on `port`.
async fn member_of(http: &reqwest::Client, port: u16) -> String {
    let v = cluster(http, port).await;
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["me"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Wait until every shard is held by a live member, as `port` sees it; returns when.
async fn all_owned(http: &reqwest::Client, port: u16, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let v = cluster(http, port).await;
        let held: usize = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["heartbeat_age_s"].as_f64().unwrap() < LEASE.as_secs_f64())
            .map(|m| m["shards_owned"].as_u64().unwrap() as usize)
            .sum();
        if v["unowned"].as_array().unwrap().is_empty() && held == 16 {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "shards not all owned within {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The load: tenant i belongs to account i % 50; each tenant's events alternate activation and
/// deactivation, posted one at a time (each after the last was answered) to the replicas in
/// turn.
struct Load {
    tenants: Vec<(Uuid, String)>,
    next: HashMap<Uuid, usize>,
    /// (tenant, action, is_activation) answered 202, in posting order.
    accepted: Vec<(Uuid, String, bool)>,
    turn: usize,
}

impl Load {
    fn new(sb: &Sandbox) -> Load {
        let tenants = sb
            .tenant_ids(Some("customer"))
            .into_iter()
            .take(100)
            .enumerate()
            .map(|(i, t)| (t, format!("a{:02}", i % ACCOUNTS)))
            .collect();
        Load {
            tenants,
            next: HashMap::new(),
            accepted: Vec::new(),
            turn: 0,
        }
    }

    /// One request of one event per tenant, to the next live replica in turn.
    async fn round(&mut self, http: &reqwest::Client, ports: &[u16]) {
        let port = ports[self.turn % ports.len()];
        self.turn += 1;
        let body: Vec<_> = self
            .tenants
            .iter()
            .map(|(t, a)| {
                let n = self.next.entry(*t).or_default();
                *n += 1;
                let kind = if *n % 2 == 1 {
                    "activation"
                } else {
                    "deactivation"
                };
                json!({"tenant_id": t, "account": a, "type": kind, "action": format!("{t}-{n}")})
            })
            .collect();
        let r = http
            .post(format!("http://127.0.0.1:{port}/v1/events"))
            .json(&body)
            .send()
            .await;
        if let Ok(r) = r {
            if r.status() == 202 {
                for b in &body {
                    self.accepted.push((
                        b["tenant_id"].as_str().unwrap().parse().unwrap(),
                        b["action"].as_str().unwrap().to_string(),
                        b["type"] == "activation",
                    ));
                }
            }
        }
    }

    /// Every accepted event delivered, first deliveries in posting order per tenant, and each
    /// tenant's last report at the sandbox the state of its last accepted event.
    async fn check(&self, sb: &Sandbox, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = actions_by_tenant(sb);
            let missing = self
                .accepted
                .iter()
                .filter(|(t, a, _)| !got.get(t).is_some_and(|v| v.contains(a)))
                .count();
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} of {} accepted events not delivered within {within:?}",
                self.accepted.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the re-assertions after a takeover land too.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let got = actions_by_tenant(sb);
        for (t, actions) in &got {
            let mut last = 0usize;
            let mut seen = std::collections::HashSet::new();
            for a in actions.iter().filter(|a| a.starts_with(&t.to_string())) {
                if seen.insert(a.clone()) {
                    let n: usize = a.rsplit('-').next().unwrap().parse().unwrap();
                    assert!(n > last, "tenant {t}: {a} delivered after posting {last}");
                    last = n;
                }
            }
        }
        let mut last_state: HashMap<Uuid, bool> = HashMap::new();
        for r in sb.reports() {
            for e in r.body["events"].as_array().unwrap() {
                if e["activation_event"] == true {
                    last_state.insert(r.tenant_id, true);
                } else if e["deactivation_event"] == true {
                    last_state.insert(r.tenant_id, false);
                }
            }
        }
        let mut want: HashMap<Uuid, bool> = HashMap::new();
        for (t, _, act) in &self.accepted {
            want.insert(*t, *act);
        }
        for (t, act) in want {
            assert_eq!(
                last_state.get(&t),
                Some(&act),
                "tenant {t}: the platform's final state is not its last decision"
            );
        }
    }
}

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
    all_owned(&http, replicas[0].port, Duration::from_secs(20)).await;
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
    let owned_at = all_owned(&http, live[0], Duration::from_secs(20)).await;
    let takeover = owned_at.duration_since(killed_at);
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
    all_owned(&http, replicas[0].port, Duration::from_secs(20)).await;
    let mut load = Load::new(&sb);
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    for _ in 0..6 {
        load.round(&http, &ports).await;
    }
    let leaving = replicas.remove(2);
    let live: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let stopped_at = Instant::now();
    let status = sigterm_and_wait(leaving.daemon).await;
    assert_eq!(status.code(), Some(0));
    let owned_at = all_owned(&http, live[0], Duration::from_secs(10)).await;
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
    all_owned(&http, replicas[0].port, Duration::from_secs(20)).await;
    let mut load = Load::new(&sb);
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    for _ in 0..4 {
        load.round(&http, &ports).await;
    }
    let paused = &replicas[1];
    let pid = paused.daemon.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status();
    let live = [ports[0], ports[2]];
    for _ in 0..4 {
        load.round(&http, &live).await;
    }
    tokio::time::sleep(LEASE * 2).await;
    all_owned(&http, ports[0], Duration::from_secs(10)).await;
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    for _ in 0..4 {
        load.round(&http, &ports).await;
    }
    load.check(&sb, Duration::from_secs(60)).await;
    let text = get_text(&http, &format!("http://127.0.0.1:{}/metrics", paused.port)).await;
    let transitions = metric(&text, "statusd_lease_transitions_total");
    assert!(
        transitions >= 2.0,
        "the paused replica's leases did not change: {transitions}"
    );
    eprintln!(
        "paused replica: fenced writes {}, lease transitions {transitions}",
        metric(&text, "statusd_fenced_writes_total")
    );
}
