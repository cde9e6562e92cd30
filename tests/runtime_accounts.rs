//! Accounts added while statusd runs, through the real binary and its API: validation with the
//! data center (each refusal stores nothing), the one-call activation, `kill -9` with events
//! queued, rotation after the partner reset its secret, removal, retirement, and the sealed
//! secrets (a wrong key refuses to start; the secret's bytes are in no file nor log line).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use statusd::sandbox::{Fault, Sandbox, SandboxOptions};

const WAIT: Duration = Duration::from_secs(30);

struct Node {
    daemon: Daemon,
    port: u16,
}

/// The vendor's daemon: the file account `default` on `home`, the key of `key` (if any).
fn start(home: &Sandbox, store: &Path, key: Option<&Path>, log: &Path) -> Node {
    let port = free_port();
    let mut cmd = daemon_command(&home.url, &home.client_id, &home.client_secret, store, port);
    cmd.env("RUST_LOG", "trace")
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(k) = key {
        cmd.env("STATUSD__STORE__SECRET_KEY_FILE", k);
    }
    Node {
        daemon: cmd.spawn_daemon(),
        port,
    }
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = http.request(method, url);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn account_ids(http: &reqwest::Client, node: &Node) -> Vec<String> {
    let v = get_json(http, &node.url("/v1/accounts")).await;
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

async fn post_account(http: &reqwest::Client, node: &Node, body: Value) -> (u16, Value) {
    send(
        http,
        reqwest::Method::POST,
        node.url("/v1/accounts"),
        Some(body),
    )
    .await
}

fn add_body(dc: &Sandbox, id: &str, client: &(String, String)) -> Value {
    json!({"id": id, "datacenter_url": dc.url, "client_id": client.0, "client_secret": client.1})
}

/// The two data centers, a key, and the vendor's daemon on them, ready.
struct Stage {
    home: Sandbox,
    partner: Sandbox,
    dir: tempfile::TempDir,
    key: PathBuf,
    http: reqwest::Client,
}

async fn stage() -> Stage {
    let (home, partner) = sandboxes().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secret.key");
    keygen(&key);
    Stage {
        home,
        partner,
        dir,
        key,
        http: http_client(),
    }
}

impl Stage {
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The daemon on the stage's store with its key, logging to `log`; ready.
    async fn node(&self, log: &str) -> Node {
        let node = start(
            &self.home,
            &self.store(),
            Some(&self.key),
            &self.dir.path().join(log),
        );
        wait_ready(&self.http, node.port).await;
        node
    }
}

async fn sandboxes() -> (Sandbox, Sandbox) {
    statusd::platform::install_crypto_provider();
    let home = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let partner = Sandbox::start(SandboxOptions {
        seed: 7,
        ..Default::default()
    })
    .await
    .unwrap();
    (home, partner)
}

/// Every byte of every file under `dir`, and each file's name.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn each_refusal_answers_once_and_stores_nothing() {
    let (home, partner) = sandboxes().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secret.key");
    keygen(&key);
    let store = dir.path().join("store");
    let node = start(&home, &store, Some(&key), &dir.path().join("d.log"));
    let http = http_client();
    wait_ready(&http, node.port).await;
    let client = partner.create_client(partner.root_tenant);

    // A wrong secret: the data center refuses it; one token request, no retry.
    let tokens_before = partner.requests_to("token");
    let (s, v) = post_account(
        &http,
        &node,
        add_body(&partner, "p1", &(client.0.clone(), "wrong".into())),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["field"], "client_secret", "{v}");
    assert_eq!(partner.requests_to("token"), tokens_before + 1);

    // Not HTTPS to a remote host; nothing listening; not a data center at all.
    let mut body = add_body(&partner, "p1", &client);
    body["datacenter_url"] = json!("http://eu2-cloud.example.com");
    let (s, v) = post_account(&http, &node, body.clone()).await;
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (422, json!("datacenter_url")),
        "{v}"
    );
    body["datacenter_url"] = json!(format!("http://127.0.0.1:{}", free_port()));
    let (s, v) = post_account(&http, &node, body.clone()).await;
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (422, json!("datacenter_url")),
        "{v}"
    );
    body["datacenter_url"] = json!(node.url(""));
    let (s, v) = post_account(&http, &node, body.clone()).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (422, json!("not_a_datacenter")),
        "{v}"
    );

    // No answer within platform.request_timeout (2 s here): 504.
    partner.inject(Fault {
        delay_ms: Some(4000),
        count: Some(1),
        path_contains: Some("token".into()),
        ..Default::default()
    });
    let (s, v) = post_account(&http, &node, add_body(&partner, "p1", &client)).await;
    assert_eq!(s, 504, "{v}");
    // The data center failing: 502, asked once.
    partner.inject(Fault {
        status: Some(503),
        count: Some(5),
        path_contains: Some("clients".into()),
        ..Default::default()
    });
    let clients_before = partner.requests_to("client");
    let (s, v) = post_account(&http, &node, add_body(&partner, "p1", &client)).await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(partner.requests_to("client"), clients_before + 1);
    partner.clear_faults();

    // Bad input is named before anything is asked.
    let (s, v) = post_account(
        &http,
        &node,
        json!({"datacenter_url": partner.url, "client_id": client.0}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (400, json!("client_secret")),
        "{v}"
    );
    let (s, v) = post_account(
        &http,
        &node,
        json!({"datacenter_url": partner.url, "client_id": "x", "client_secret": "y", "colour": 1}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (400, json!("colour")),
        "{v}"
    );
    let (s, v) = send(
        &http,
        reqwest::Method::POST,
        node.url("/v1/accounts?activate=maybe"),
        Some(add_body(&partner, "p1", &client)),
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (400, json!("activate")),
        "{v}"
    );

    // The file's account cannot be changed or removed here.
    let (s, v) = send(
        &http,
        reqwest::Method::DELETE,
        node.url("/v1/accounts/default"),
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("configured_in_file")),
        "{v}"
    );
    let (s, v) = send(
        &http,
        reqwest::Method::PUT,
        node.url("/v1/accounts/default/credentials"),
        Some(json!({"client_secret": "z"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("configured_in_file")),
        "{v}"
    );
    let (s, v) = post_account(&http, &node, add_body(&partner, "default", &client)).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("exists")),
        "{v}"
    );

    assert_eq!(account_ids(&http, &node).await, ["default"]);
    // Nothing was stored: a restart finds nothing either.
    let status = sigterm_and_wait(node.daemon).await;
    assert!(status.success());
    let node = start(&home, &store, Some(&key), &dir.path().join("d2.log"));
    wait_ready(&http, node.port).await;
    assert_eq!(account_ids(&http, &node).await, ["default"]);

    // And the right credentials: 201 with the client's tenant and its name; then 409 again.
    let (s, v) = post_account(&http, &node, add_body(&partner, "p1", &client)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["tenant_id"], json!(partner.root_tenant));
    assert_eq!(v["tenant_name"], "Sandbox Partner");
    assert_eq!(v["source"], "api");
    let (s, _) = post_account(&http, &node, add_body(&partner, "p1", &client)).await;
    assert_eq!(s, 409);
    // Without an id, one is made up.
    let other = partner.create_client(partner.root_tenant);
    let (s, v) = post_account(
        &http,
        &node,
        json!({"datacenter_url": partner.url, "client_id": other.0, "client_secret": other.1}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("acct-"));
}

#[tokio::test]
async fn an_account_added_at_run_time_survives_kill_9_and_its_events_arrive() {
    let (home, partner) = sandboxes().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secret.key");
    keygen(&key);
    let store = dir.path().join("store");
    let log = dir.path().join("d.log");
    let mut node = start(&home, &store, Some(&key), &log);
    let http = http_client();
    wait_ready(&http, node.port).await;
    let client = partner.create_client(partner.root_tenant);
    // The partner's data center is down: everything queues.
    partner.inject(Fault {
        status: Some(503),
        path_contains: Some("integration_management".into()),
        ..Default::default()
    });
    let (s, v) = send(
        &http,
        reqwest::Method::POST,
        node.url("/v1/accounts?activate=true"),
        Some(add_body(&partner, "acme", &client)),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let activation = v["activation"]["id"].as_str().unwrap().to_string();
    let tenants = customers(&partner, 5);
    for t in &tenants {
        let (s, v) = send(
            &http,
            reqwest::Method::POST,
            node.url("/v1/events"),
            Some(json!({"tenant_id": t, "type": "activation", "account": "acme"})),
        )
        .await;
        assert_eq!(s, 202, "{v}");
    }
    // kill -9: no flush, no clean close.
    std::process::Command::new("kill")
        .args(["-9", &node.daemon.id().to_string()])
        .status()
        .unwrap();
    let _ = node.daemon.wait();
    partner.clear_faults();
    let node2 = start(&home, &store, Some(&key), &dir.path().join("d2.log"));
    wait_ready(&http, node2.port).await;
    assert_eq!(account_ids(&http, &node2).await, ["acme", "default"]);
    wait_for(WAIT, "the partner's reports", || {
        let got: Vec<uuid::Uuid> = partner.reports().iter().map(|r| r.tenant_id).collect();
        got.contains(&partner.root_tenant) && tenants.iter().all(|t| got.contains(t))
    })
    .await;
    // The sandbox has the report; the acknowledgement follows it.
    wait_for_async(WAIT, "the activation acknowledged", || async {
        get_json(&http, &node2.url(&format!("/v1/events/{activation}"))).await["status"]
            == "delivered"
    })
    .await;
    // Nothing went to the vendor's own data center.
    assert!(home.reports().is_empty());

    // The secret is in no file of the store, and in no line of either daemon's output at trace.
    let status = sigterm_and_wait(node2.daemon).await;
    assert!(status.success());
    let secret = client.1.as_bytes();
    for (path, bytes) in files_under(&store) {
        assert!(
            !contains(&bytes, secret),
            "the secret is in {}",
            path.display()
        );
    }
    for path in [
        log.clone(),
        dir.path().join("d2.log"),
        log.with_extension("out"),
    ] {
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.is_empty() || path.extension().unwrap() == "out");
        assert!(
            !contains(&bytes, secret),
            "the secret is in {}",
            path.display()
        );
    }
    // The trace log did record the account's work (it is not an empty log passing by luck).
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("account added") && text.contains("TRACE") && text.contains("DEBUG"),
        "{}",
        &text[..text.len().min(2000)]
    );
}

#[tokio::test]
async fn rotation_reaches_events_already_queued() {
    let st = stage().await;
    let (partner, http) = (&st.partner, &st.http);
    let node = st.node("d.log").await;
    let client = partner.create_client(partner.root_tenant);
    let (s, v) = send(
        http,
        reqwest::Method::POST,
        node.url("/v1/accounts"),
        Some(add_body(partner, "acme", &client)),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // The partner resets the secret in its portal (through the sandbox's own API, as a partner
    // would): the old secret and its tokens stop working, so queued events cannot go out.
    let reset: Value = http
        .post(format!(
            "{}/_sandbox/clients/{}/reset-secret",
            partner.url, client.0
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_secret = reset["client_secret"].as_str().unwrap().to_string();
    assert_eq!(partner.live_tokens_of(&client.0), 0);
    let tenants = customers(partner, 3);
    for t in &tenants {
        let (s, _) = send(
            http,
            reqwest::Method::POST,
            node.url("/v1/events"),
            Some(json!({"tenant_id": t, "type": "activation", "account": "acme"})),
        )
        .await;
        assert_eq!(s, 202);
    }
    wait_for_async(WAIT, "the account's token failing", || async {
        get_json(http, &node.url("/v1/accounts/acme")).await["token"] == "failing"
    })
    .await;
    assert!(partner.reports().is_empty());
    // A wrong new secret changes nothing.
    let rotate = |secret: &str| {
        send(
            http,
            reqwest::Method::PUT,
            node.url("/v1/accounts/acme/credentials"),
            Some(json!({"client_secret": secret})),
        )
    };
    let (s, v) = rotate("still-wrong").await;
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (422, json!("client_secret")),
        "{v}"
    );
    // The right one: the queued events go out with it.
    let (s, v) = rotate(&new_secret).await;
    assert_eq!(s, 200, "{v}");
    wait_for(WAIT, "queued events delivered with the new secret", || {
        let got: Vec<uuid::Uuid> = partner.reports().iter().map(|r| r.tenant_id).collect();
        tenants.iter().all(|t| got.contains(t))
    })
    .await;
    // And after a restart, the stored (new) secret is the one used.
    let status = sigterm_and_wait(node.daemon).await;
    assert!(status.success());
    let node = st.node("d2.log").await;
    let t = customers(partner, 4)[3];
    let (s, _) = send(
        http,
        reqwest::Method::POST,
        node.url("/v1/events"),
        Some(json!({"tenant_id": t, "type": "activation", "account": "acme"})),
    )
    .await;
    assert_eq!(s, 202);
    wait_for(WAIT, "delivered after the restart", || {
        partner.reports().iter().any(|r| r.tenant_id == t)
    })
    .await;
}

#[tokio::test]
async fn removal_is_refused_with_events_and_forced_drops_them_and_retirement_waits_for_them() {
    let st = stage().await;
    let (partner, http) = (&st.partner, st.http.clone());
    let node = st.node("d.log").await;
    let tenants = customers(partner, 3);
    let add = |id: &'static str| {
        let client = partner.create_client(partner.root_tenant);
        let body = add_body(partner, id, &client);
        let http = http.clone();
        let url = node.url("/v1/accounts");
        async move { send(&http, reqwest::Method::POST, url, Some(body)).await }
    };
    let event = |body: Value| {
        send(
            &http,
            reqwest::Method::POST,
            node.url("/v1/events"),
            Some(body),
        )
    };

    // Forced removal: events queued behind an outage are dropped, and said so.
    assert_eq!(add("gone").await.0, 201);
    partner.inject(Fault {
        status: Some(503),
        path_contains: Some("integration_management".into()),
        ..Default::default()
    });
    for t in &tenants {
        assert_eq!(
            event(json!({"tenant_id": t, "type": "activation", "account": "gone"}))
                .await
                .0,
            202
        );
    }
    let (s, v) = send(
        &http,
        reqwest::Method::DELETE,
        node.url("/v1/accounts/gone"),
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("has_events")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 pending"),
        "{v}"
    );
    let (s, v) = send(
        &http,
        reqwest::Method::DELETE,
        node.url("/v1/accounts/gone?force=true"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["dropped"]["pending_events"], 3, "{v}");
    assert_eq!(
        get_json(&http, &node.url("/v1/status")).await["queue"]["depth"],
        0
    );
    assert_eq!(account_ids(&http, &node).await, ["default"]);
    let (s, v) =
        event(json!({"tenant_id": tenants[0], "type": "activation", "account": "gone"})).await;
    assert_eq!(s, 400, "{v}");
    partner.clear_faults();

    // Retirement: the deactivation is delivered, then the account goes by itself.
    assert_eq!(add("retired").await.0, 201);
    let (s, v) = event(json!({"tenant_id": tenants[0], "type": "deactivation", "account": "retired", "retire_account": true})).await;
    assert_eq!(s, 202, "{v}");
    wait_for_async(WAIT, "the retired account removed", || async {
        account_ids(&http, &node).await == ["default"]
    })
    .await;
    assert!(partner.reports().iter().any(|r| r.tenant_id == tenants[0]));

    // Retirement with the deactivation dead-lettered: kept, visible, until purged.
    assert_eq!(add("parked").await.0, 201);
    partner.inject(Fault {
        status: Some(400),
        path_contains: Some("integration_management".into()),
        ..Default::default()
    });
    let (s, v) = event(json!({"tenant_id": tenants[1], "type": "deactivation", "account": "parked", "retire_account": true})).await;
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    wait_for_async(WAIT, "the deactivation dead-lettered", || async {
        get_json(&http, &node.url(&format!("/v1/events/{id}"))).await["status"] == "dead"
    })
    .await;
    let a = get_json(&http, &node.url("/v1/accounts/parked")).await;
    assert_eq!(
        (a["retiring"].clone(), a["dead_letters"].clone()),
        (json!(true), json!(1)),
        "{a}"
    );
    // A retiring account takes no new events.
    let (s, v) =
        event(json!({"tenant_id": tenants[2], "type": "activation", "account": "parked"})).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("retiring")),
        "{v}"
    );
    // Still there a while later; gone once the dead letter is purged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(account_ids(&http, &node)
        .await
        .contains(&"parked".to_string()));
    let (s, _) = send(
        &http,
        reqwest::Method::DELETE,
        node.url(&format!("/v1/dead-letters/{id}")),
        None,
    )
    .await;
    assert!(s == 200 || s == 204, "{s}");
    wait_for_async(
        WAIT,
        "the parked account removed after the purge",
        || async { account_ids(&http, &node).await == ["default"] },
    )
    .await;
    partner.clear_faults();
    // retire_account on the file's account, or on an activation, is refused.
    let (s, v) = event(json!({"tenant_id": tenants[2], "type": "deactivation", "account": "default", "retire_account": true})).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("configured_in_file")),
        "{v}"
    );
    let (s, v) =
        event(json!({"tenant_id": tenants[2], "type": "activation", "retire_account": true})).await;
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (400, json!("retire_account")),
        "{v}"
    );
}

#[tokio::test]
async fn the_wrong_key_or_none_refuses_to_start_and_the_right_one_keeps_every_account() {
    let (home, partner) = sandboxes().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secret.key");
    let other = dir.path().join("other.key");
    keygen(&key);
    keygen(&other);
    let store = dir.path().join("store");
    let http = http_client();
    {
        // No key: adding is refused, saying how to set one up.
        let node = start(&home, &store, None, &dir.path().join("d0.log"));
        wait_ready(&http, node.port).await;
        let client = partner.create_client(partner.root_tenant);
        let (s, v) = send(
            &http,
            reqwest::Method::POST,
            node.url("/v1/accounts"),
            Some(add_body(&partner, "a", &client)),
        )
        .await;
        assert_eq!(
            (s, v["error"]["field"].clone()),
            (409, json!("store.secret_key_file")),
            "{v}"
        );
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("statusd keygen"));
        assert!(sigterm_and_wait(node.daemon).await.success());
    }
    let node = start(&home, &store, Some(&key), &dir.path().join("d1.log"));
    wait_ready(&http, node.port).await;
    for id in ["a", "b"] {
        let client = partner.create_client(partner.root_tenant);
        let (s, v) = send(
            &http,
            reqwest::Method::POST,
            node.url("/v1/accounts"),
            Some(add_body(&partner, id, &client)),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    assert!(sigterm_and_wait(node.daemon).await.success());
    for (k, log) in [(Some(other.as_path()), "d2.log"), (None, "d3.log")] {
        let mut node = start(&home, &store, k, &dir.path().join(log));
        let status = tokio::task::spawn_blocking(move || {
            let s = node.daemon.wait().unwrap();
            (s, node)
        })
        .await
        .unwrap()
        .0;
        assert_eq!(status.code(), Some(78), "key {k:?}");
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap();
        assert!(text.contains("store.secret_key_file"), "{text}");
    }
    // The right key again: every account is still there.
    let node = start(&home, &store, Some(&key), &dir.path().join("d4.log"));
    wait_ready(&http, node.port).await;
    assert_eq!(account_ids(&http, &node).await, ["a", "b", "default"]);
}

/// A forced removal waits for a report of the account in flight; meanwhile its other tenants'
/// retries come due. They wait for the removal to end (their events are then dropped and
/// counted as pending) instead of being dead-lettered for an account "not configured".
#[tokio::test]
async fn a_removal_waiting_on_a_report_in_flight_dead_letters_nothing() {
    let st = stage().await;
    let (partner, http) = (&st.partner, st.http.clone());
    let node = st.node("d.log").await;
    let tenants = customers(partner, 2);
    let (slow, failing) = (tenants[0], tenants[1]);
    let client = partner.create_client(partner.root_tenant);
    assert_eq!(
        post_account(&http, &node, add_body(partner, "leaving", &client))
            .await
            .0,
        201
    );
    let event = |t: uuid::Uuid| {
        send(
            &http,
            reqwest::Method::POST,
            node.url("/v1/events"),
            Some(json!({"tenant_id": t, "type": "activation", "account": "leaving"})),
        )
    };
    // One tenant's report hangs (then goes through), the other's keeps failing.
    partner.inject(Fault {
        delay_ms: Some(1500),
        count: Some(1),
        path_contains: Some("integration_management".into()),
        query_contains: Some(slow.to_string()),
        ..Default::default()
    });
    partner.inject(Fault {
        status: Some(503),
        path_contains: Some("integration_management".into()),
        query_contains: Some(failing.to_string()),
        ..Default::default()
    });
    assert_eq!(event(slow).await.0, 202);
    wait_for(WAIT, "the slow report at the platform", || {
        partner.stats().faults_applied >= 1
    })
    .await;
    assert_eq!(event(failing).await.0, 202);
    wait_for(WAIT, "the failing report refused once", || {
        partner.stats().faults_applied >= 2
    })
    .await;
    let (s, v) = send(
        &http,
        reqwest::Method::DELETE,
        node.url("/v1/accounts/leaving?force=true"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // The failing tenant's retry came due while the removal waited: not parked.
    assert_eq!(
        (
            v["dropped"]["pending_events"].clone(),
            v["dropped"]["dead_letters"].clone()
        ),
        (json!(1), json!(0)),
        "{v}"
    );
    assert!(partner.reports().iter().any(|r| r.tenant_id == slow));
    let status = get_json(&http, &node.url("/v1/status")).await;
    assert_eq!(
        (
            status["queue"]["depth"].clone(),
            status["queue"]["dead_letters"].clone()
        ),
        (json!(0), json!(0)),
        "{status}"
    );
}
