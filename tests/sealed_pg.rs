//! Sealed secrets on a shared PostgreSQL store, through the real binary with two replicas: an
//! account row pointed at another address, and a sealed Fusion session copied into an account
//! row, send nothing anywhere (a recorder sees no request), show failing and keep their
//! events; a key rotation (`store.previous_secret_key_file`, then `statusd store rekey` while
//! the replicas run) loses no event.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::recorder::{Answer, Recorder};
use common::*;
use serde_json::{json, Value};
use statusd::vault::{Binding, SecretKey};

async fn add(pool: &Pool, port: u16, id: &str) {
    let r = pool
        .http
        .post(format!("http://127.0.0.1:{port}/v1/accounts"))
        .json(&json!({"id": id, "datacenter_url": pool.sb.url, "client_id": pool.sb.client_id, "client_secret": pool.sb.client_secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// Post one activation for `account`; its id.
async fn post(pool: &Pool, port: u16, account: &str, tenant: uuid::Uuid) -> String {
    let r = pool
        .http
        .post(format!("http://127.0.0.1:{port}/v1/events"))
        .json(&json!({"tenant_id": tenant, "type": "activation", "account": account}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The account as a replica shows it.
async fn account(pool: &Pool, port: u16, id: &str) -> Value {
    get_json(
        &pool.http,
        &format!("http://127.0.0.1:{port}/v1/accounts/{id}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_pointed_elsewhere_or_a_copied_session_sends_nothing_and_keeps_its_events() {
    let Some(pool) = Pool::start("tampered", 2).await else {
        return;
    };
    let ports = pool.ports();
    let rec = Recorder::start(Answer::Token).await;
    add(&pool, ports[0], "p1").await;
    add(&pool, ports[0], "p2").await;
    // Whoever can write the table: p1 now points at the recorder; p2 gets a sealed Fusion
    // session (made with the pool's own key) and the recorder's address.
    let key =
        SecretKey::from_text(&std::fs::read_to_string(pool.dir.path().join("secret.key")).unwrap())
            .unwrap();
    let session = key.seal_bound(
        &Binding::FusionSession {
            base_url: &rec.url,
            user: "fusion-api",
        },
        "a-refresh-token",
    );
    pool.server.psql(&format!(
        "UPDATE tampered.accounts SET record = record || jsonb_build_object('datacenter_url', '{url}', 'updated_at_ms', (record->>'updated_at_ms')::bigint + 1) WHERE id = 'p1';
         UPDATE tampered.accounts SET record = record || jsonb_build_object('datacenter_url', '{url}', 'client_secret_sealed', '{session}', 'updated_at_ms', (record->>'updated_at_ms')::bigint + 1) WHERE id = 'p2';",
        url = rec.url
    ));
    // Each on a tenant of its own (one failing account's head holds its tenant's lane).
    let tenants = customers(&pool.sb, 2);
    // Both replicas have taken in the accounts (and the changed rows) before events come.
    wait_for_async(
        Duration::from_secs(20),
        "both replicas know p1 and p2",
        || async {
            let mut known = true;
            for p in &ports {
                for id in ["p1", "p2"] {
                    known &= account(&pool, *p, id).await["datacenter_url"] == rec.url.as_str();
                }
            }
            known
        },
    )
    .await;
    for _ in 0..3 {
        post(&pool, ports[1], "p1", tenants[0]).await;
        post(&pool, ports[1], "p2", tenants[1]).await;
    }
    // Each replica takes the rows in; the owner of each account tries it and finds the secret
    // does not open for the record: failing, nothing sent.
    for id in ["p1", "p2"] {
        wait_for_async(
            Duration::from_secs(20),
            "the account shown failing",
            || async {
                let mut failing = false;
                for p in &ports {
                    let a = account(&pool, *p, id).await;
                    failing |= a["token"] == "failing"
                        && a["token_error"]["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("does not open"));
                }
                failing
            },
        )
        .await;
    }
    for p in &ports {
        for id in ["p1", "p2"] {
            let a = account(&pool, *p, id).await;
            assert_eq!(a["pending_events"], 3, "{a}");
            assert_eq!(a["dead_letters"], 0, "{a}");
        }
    }
    assert_eq!(
        rec.seen(),
        Vec::<String>::new(),
        "the new address was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotates_while_replicas_run_and_no_event_is_lost() {
    let Some(mut pool) = Pool::start("rekeyed", 2).await else {
        return;
    };
    let ports = pool.ports();
    add(&pool, ports[0], "p1").await;
    wait_for_async(Duration::from_secs(20), "the peer knows p1", || async {
        account(&pool, ports[1], "p1").await["id"] == "p1"
    })
    .await;
    let tenant = pool.sb.root_tenant;
    let mut load = Load::new(&pool.sb);
    let mut p1_events = Vec::new();
    load.round(&pool.http, &ports).await;
    p1_events.push(post(&pool, ports[0], "p1", tenant).await);

    // Step 1: every replica gets the new key, with the old one as the previous key.
    let old_key = pool.dir.path().join("secret.key");
    let new_key = pool.dir.path().join("new.key");
    keygen(&new_key);
    let text = std::fs::read_to_string(&pool.config).unwrap();
    let old_line = format!("secret_key_file = \"{}\"", old_key.display());
    assert!(text.contains(&old_line), "{text}");
    let rotating = pool.dir.path().join("rotating.toml");
    std::fs::write(
        &rotating,
        text.replace(
            &old_line,
            &format!(
                "secret_key_file = \"{}\"\nprevious_secret_key_file = \"{}\"",
                new_key.display(),
                old_key.display()
            ),
        ),
    )
    .unwrap();
    let done = pool.dir.path().join("done.toml");
    std::fs::write(
        &done,
        text.replace(
            &old_line,
            &format!("secret_key_file = \"{}\"", new_key.display()),
        ),
    )
    .unwrap();
    async fn restart_all(pool: &mut Pool, config: &std::path::Path, load: &mut Load) {
        for i in 0..pool.replicas.len() {
            let port = pool.replicas[i].port;
            let old = std::mem::replace(&mut pool.replicas[i].daemon, Daemon::none());
            assert!(sigterm_and_wait(old).await.success());
            pool.replicas[i].daemon = spawn(config, port);
            wait_ready(&pool.http, port).await;
            load.round(&pool.http, &pool.ports()).await;
        }
    }
    restart_all(&mut pool, &rotating, &mut load).await;
    p1_events.push(post(&pool, ports[1], "p1", tenant).await);

    // Step 2: rekey while both run.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
        .args(["store", "rekey", "--config"])
        .arg(&rotating)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("1 value(s) sealed again"), "{said}");
    load.round(&pool.http, &ports).await;
    p1_events.push(post(&pool, ports[0], "p1", tenant).await);

    // Step 3: the previous key goes; every replica on the new key alone.
    restart_all(&mut pool, &done, &mut load).await;
    p1_events.push(post(&pool, ports[1], "p1", tenant).await);
    load.round(&pool.http, &ports).await;

    load.check(&pool.sb, Duration::from_secs(60)).await;
    for id in &p1_events {
        wait_for_async(Duration::from_secs(30), "p1's event delivered", || async {
            get_json(
                &pool.http,
                &format!("http://127.0.0.1:{}/v1/events/{id}", ports[0]),
            )
            .await["status"]
                == "delivered"
        })
        .await;
    }
    for p in &ports {
        assert_ne!(account(&pool, *p, "p1").await["token"], "failing");
    }
}
