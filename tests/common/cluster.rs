//! Helpers for tests (and the bench) of several replicas on one PostgreSQL store: a replica's
//! configuration with 50 accounts on the sandbox, starting replicas of the real binary, and
//! reading the pool through `GET /v1/cluster`.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::pg::PgServer;
use super::{actions_by_tenant, free_port, get_json, Daemon, SpawnDaemon};
use serde_json::json;
use statusd::sandbox::Sandbox;
use uuid::Uuid;

pub const ACCOUNTS: usize = 50;
pub const LEASE: Duration = Duration::from_secs(3);
pub const RETRY: Duration = Duration::from_millis(500);

/// The configuration of a replica: 50 accounts on the sandbox, the store on `schema`.
pub fn config(dir: &std::path::Path, sb: &Sandbox, url: &str, schema: &str) -> std::path::PathBuf {
    // One key for every replica of the pool: each opens the secrets of accounts a peer added.
    let key = dir.join("secret.key");
    if !key.exists() {
        super::keygen(&key);
    }
    let mut toml = format!(
        "[integration]\napplication_code = \"vendor.tests\"\n[platform]\nrequest_timeout = \"2s\"\nallowed_hosts = [\"127.0.0.1\"]\n\
         [store]\nbackend = \"postgres\"\nsecret_key_file = \"{}\"\n[store.postgres]\nurl = \"{}\"\nschema = \"{schema}\"\npool_size = 8\n\
         [cluster]\nshards = 16\nlease_duration = \"3s\"\nrenew_deadline = \"2s\"\nretry_period = \"500ms\"\n\
         [delivery]\ninitial_backoff = \"50ms\"\nmax_backoff = \"300ms\"\nmax_batch_events = 10\nshutdown_grace = \"2s\"\n",
        key.display(),
        url
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

pub struct Replica {
    pub daemon: Daemon,
    pub port: u16,
}

pub fn spawn(config: &std::path::Path, port: u16) -> Daemon {
    std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
        .args(["run", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("STATUSD_TEST_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .env("STATUSD__API__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        // STATUSD_TEST_LOGS=DIR keeps each replica's log there, for a failing run.
        .stderr(match std::env::var_os("STATUSD_TEST_LOGS") {
            Some(dir) => Stdio::from(
                std::fs::File::create(
                    std::path::Path::new(&dir).join(format!("replica-{port}.log")),
                )
                .unwrap(),
            ),
            None => Stdio::null(),
        })
        .spawn_daemon()
}

pub async fn start(http: &reqwest::Client, config: &std::path::Path, n: usize) -> Vec<Replica> {
    let mut out = Vec::new();
    let mut attempts = 0;
    while out.len() < n {
        attempts += 1;
        assert!(
            attempts <= n + 5,
            "replicas keep exiting before they are ready"
        );
        // A replica that exits before it is ready (its port taken by another test in the
        // meantime) is started again on another port.
        let port = free_port();
        let mut daemon = spawn(config, port);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                out.push(Replica { daemon, port });
                break;
            }
            if daemon.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica was not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

pub async fn cluster(http: &reqwest::Client, port: u16) -> serde_json::Value {
    get_json(http, &format!("http://127.0.0.1:{port}/v1/cluster")).await
}

/// Members that hold shards, by id, with their shard lists, as replica `port` sees them.
pub async fn owners(http: &reqwest::Client, port: u16) -> HashMap<String, Vec<u64>> {
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

/// The member id of the replica listening on `port` (once its first heartbeat is in).
pub async fn member_of(http: &reqwest::Client, port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = cluster(http, port).await;
        if let Some(m) = v["members"]
            .as_array()
            .unwrap_or_else(|| panic!("no members in /v1/cluster: {v}"))
            .iter()
            .find(|m| m["me"] == true)
        {
            return m["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat of the replica on {port}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until every shard is held by a live member other than those `gone` (killed, stopped or
/// cut off: their heartbeats may still look fresh), as `port` sees it; returns when.
pub async fn all_owned(
    http: &reqwest::Client,
    port: u16,
    within: Duration,
    gone: &[String],
) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let v = cluster(http, port).await;
        let held: usize = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["heartbeat_age_s"].as_f64().unwrap() < LEASE.as_secs_f64())
            .filter(|m| !gone.iter().any(|g| m["id"] == g.as_str()))
            .map(|m| m["shards_owned"].as_u64().unwrap() as usize)
            .sum();
        if held == v["shards"].as_u64().unwrap() as usize {
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
pub struct Load {
    pub tenants: Vec<(Uuid, String)>,
    next: HashMap<Uuid, usize>,
    /// (tenant, action, is_activation) answered 202, in posting order.
    pub accepted: Vec<(Uuid, String, bool)>,
    turn: usize,
}

impl Load {
    pub fn new(sb: &Sandbox) -> Load {
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
    pub async fn round(&mut self, http: &reqwest::Client, ports: &[u16]) {
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

    /// Each tenant's last decision accepted (true: activation).
    fn last_decisions(&self) -> HashMap<Uuid, bool> {
        let mut want = HashMap::new();
        for (t, _, act) in &self.accepted {
            want.insert(*t, *act);
        }
        want
    }

    /// Every accepted event delivered, first deliveries in posting order per tenant, and each
    /// tenant's last report at the sandbox the state of its last accepted event.
    pub async fn check(&self, sb: &Sandbox, within: Duration) {
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
        // The re-assertions after a takeover or a late report land too: wait (up to the
        // deadline) until every tenant's last report is its last decision, then watch a few
        // seconds more for a late report overwriting one.
        let want = self.last_decisions();
        let settled = |last: &HashMap<Uuid, bool>| want.iter().all(|(t, a)| last.get(t) == Some(a));
        while !settled(&last_states(sb)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        super::assert_first_deliveries_in_order(&actions_by_tenant(sb));
        let last_state = last_states(sb);
        for (t, act) in want {
            assert_eq!(
                last_state.get(&t),
                Some(&act),
                "tenant {t}: the platform's final state is not its last decision"
            );
        }
    }
}

/// Each tenant's state as its last report at the sandbox left it (true: activated).
fn last_states(sb: &Sandbox) -> HashMap<Uuid, bool> {
    let mut last_state = HashMap::new();
    for r in sb.reports() {
        for e in r.body["events"].as_array().unwrap() {
            if e["activation_event"] == true {
                last_state.insert(r.tenant_id, true);
            } else if e["deactivation_event"] == true {
                last_state.insert(r.tenant_id, false);
            }
        }
    }
    last_state
}

/// A pool of `n` replicas on a fresh PostgreSQL server and sandbox (160 tenants), every shard
/// held; `None` where no server can run here.
pub struct Pool {
    /// PgBouncer in front of the server, when the pool reaches it through one.
    pub bouncer: Option<super::pg::PgBouncer>,
    pub server: PgServer,
    pub sb: Sandbox,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub config: std::path::PathBuf,
    pub replicas: Vec<Replica>,
}

impl Pool {
    pub async fn start(schema: &str, n: usize) -> Option<Pool> {
        Pool::start_on(schema, n, false).await
    }

    /// The pool reaching its database through PgBouncer in transaction mode.
    pub async fn start_through_pgbouncer(schema: &str, n: usize) -> Option<Pool> {
        Pool::start_on(schema, n, true).await
    }

    async fn start_on(schema: &str, n: usize, through_bouncer: bool) -> Option<Pool> {
        let server = PgServer::start()?;
        let bouncer = match through_bouncer {
            true => Some(super::pg::PgBouncer::start(&server)?),
            false => None,
        };
        let url = bouncer
            .as_ref()
            .map(|b| b.url())
            .unwrap_or_else(|| server.url());
        let sb = Sandbox::start(statusd::sandbox::SandboxOptions {
            tenants: 160,
            ..Default::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let http = super::http_client();
        let config = config(dir.path(), &sb, &url, schema);
        let replicas = start(&http, &config, n).await;
        all_owned(&http, replicas[0].port, Duration::from_secs(20), &[]).await;
        Some(Pool {
            bouncer,
            server,
            sb,
            dir,
            http,
            config,
            replicas,
        })
    }

    pub fn ports(&self) -> Vec<u16> {
        self.replicas.iter().map(|r| r.port).collect()
    }
}

/// The index in `replicas` of the one holding the most shards.
pub async fn largest_owner(http: &reqwest::Client, replicas: &[Replica]) -> usize {
    let held = owners(http, replicas[0].port).await;
    let mut sizes = Vec::new();
    for r in replicas {
        let id = member_of(http, r.port).await;
        sizes.push(held.get(&id).map(|s| s.len()).unwrap_or(0));
    }
    (0..replicas.len()).max_by_key(|i| sizes[*i]).unwrap()
}

/// The member ids of the first two replicas and who holds which shard, once the first has given
/// the second its share (at least 4 of the 16 shards).
pub async fn second_holds_its_share(
    http: &reqwest::Client,
    replicas: &[Replica],
) -> ([String; 2], HashMap<String, Vec<u64>>) {
    let ids = [
        member_of(http, replicas[0].port).await,
        member_of(http, replicas[1].port).await,
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = owners(http, replicas[0].port).await;
        if held.get(&ids[1]).is_some_and(|s| s.len() >= 4) {
            return (ids, held);
        }
        assert!(
            Instant::now() < deadline,
            "the second replica holds nothing: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a pool test starts from: a PostgreSQL server, a sandbox of 160 tenants (its reports
/// taking `report_delay_ms` when given), and the replicas' configuration for `schema`.
pub struct Stage {
    pub server: PgServer,
    pub sb: Sandbox,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub config: std::path::PathBuf,
}

impl Stage {
    /// `None` where no server can run here.
    pub async fn new(schema: &str, report_delay_ms: Option<u64>) -> Option<Stage> {
        let server = PgServer::start()?;
        let sb = Sandbox::start(statusd::sandbox::SandboxOptions {
            tenants: 160,
            ..Default::default()
        })
        .await
        .unwrap();
        if let Some(ms) = report_delay_ms {
            sb.inject(statusd::sandbox::Fault {
                delay_ms: Some(ms),
                path_contains: Some("integration_management".into()),
                ..Default::default()
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), &sb, &server.url(), schema);
        Some(Stage {
            server,
            sb,
            dir,
            http: super::http_client(),
            config,
        })
    }

    /// Other lease timings (lease, renew deadline, retry period) than the pool's 3s / 2s /
    /// 500ms.
    pub fn retime(&self, lease: &str, renew: &str, retry: &str) {
        let text = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace(
                "lease_duration = \"3s\"",
                &format!("lease_duration = \"{lease}\""),
            )
            .replace(
                "renew_deadline = \"2s\"",
                &format!("renew_deadline = \"{renew}\""),
            )
            .replace(
                "retry_period = \"500ms\"",
                &format!("retry_period = \"{retry}\""),
            );
        assert!(text.contains(&format!("retry_period = \"{retry}\"")));
        std::fs::write(&self.config, text).unwrap();
    }
}

/// `n` tenants, each with an account whose shard `member` holds (in `held`, as `owners` gives).
pub fn tenants_held_by(
    sb: &Sandbox,
    held: &HashMap<String, Vec<u64>>,
    member: &str,
    n: usize,
) -> Vec<(Uuid, String)> {
    let map = statusd::cluster::ShardMap {
        shards: 16,
        pins: Default::default(),
    };
    let out: Vec<(Uuid, String)> = (0..ACCOUNTS)
        .map(|a| format!("a{a:02}"))
        .filter(|a| held[member].contains(&u64::from(map.of(Some(a)))))
        .zip(sb.tenant_ids(Some("customer")))
        .map(|(a, t)| (t, a))
        .take(n)
        .collect();
    assert_eq!(out.len(), n, "{member} holds too few accounts");
    out
}

/// Post one custom event for `tenant` of `account` to the replica on `port`; the time from its
/// 202 until the sandbox holds its report.
pub async fn time_to_report(
    http: &reqwest::Client,
    sb: &Sandbox,
    port: u16,
    (tenant, account): &(Uuid, String),
    action: &str,
) -> Duration {
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/events"))
        .json(&json!({"tenant_id": tenant, "account": account, "type": "custom", "category": "timed", "action": action}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let accepted = Instant::now();
    super::wait_for(Duration::from_secs(30), "the report", || {
        actions_by_tenant(sb)
            .get(tenant)
            .is_some_and(|a| a.iter().any(|x| x == action))
    })
    .await;
    accepted.elapsed()
}
