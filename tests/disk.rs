//! A full disk through the real binary: the store on a small tmpfs that the test fills. Needs
//! root to mount it (CI runs as root); elsewhere the test says why it is skipped.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use statusd::sandbox::{Sandbox, SandboxOptions};

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (root is needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk { path, _dir: dir })
    }
}

/// A small disk, or `None` (with why) where none can be mounted here (not root); in CI, with
/// STATUSD_TEST_REQUIRE_ROOT set, that is a failure.
fn small_disk(size: &str) -> Option<SmallDisk> {
    match SmallDisk::mount(size) {
        Ok(d) => Some(d),
        Err(why) => {
            assert!(
                std::env::var_os("STATUSD_TEST_REQUIRE_ROOT").is_none(),
                "STATUSD_TEST_REQUIRE_ROOT is set but: {why}"
            );
            eprintln!("skipped: {why}");
            None
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn daemon(sb: &Sandbox, store: &std::path::Path, port: u16, log: &std::path::Path) -> Daemon {
    daemon_command(&sb.url, &sb.client_id, &sb.client_secret, store, port)
        .env("STATUSD__STORE__CACHE_CAPACITY_MB", "8")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn_daemon()
}

/// Write to `dir` until the file system is full; returns the filler's path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_intake_pauses_delivery_and_recovers_when_space_is_back() {
    let Some(disk) = small_disk("24m") else {
        return;
    };
    // Reports wait at the platform so that events are still pending when the disk fills.
    let sb = sandbox_refusing_reports().await;
    let tenants = customers(&sb, 10);
    let store = disk.path.join("store");
    let http = http_client();
    let port = free_port();
    let log = disk._dir.path().join("first.log");
    let mut child = daemon(&sb, &store, port, &log);
    let api = format!("http://127.0.0.1:{port}");
    wait_ready(&http, port).await;
    let post = |n: usize| {
        let t = tenants[n % tenants.len()];
        http.post(format!("{api}/v1/events"))
            .json(&json!({"tenant_id": t, "type": "custom", "category": "disk", "action": format!("{t}-{n}")}))
            .send()
    };
    let mut accepted = Vec::new();
    for n in 0..20 {
        assert_eq!(post(n).await.unwrap().status(), 202);
        accepted.push(n);
    }
    let filler = fill(&disk.path);
    // Intake is refused once a write fails; nothing refused is kept.
    let mut n = 20;
    let mut refused = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while refused.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "intake never refused");
        match post(n).await.unwrap().status().as_u16() {
            202 => accepted.push(n),
            503 => refused.push(n),
            other => panic!("intake answered {other}"),
        }
        n += 1;
    }
    let ready = http.get(format!("{api}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["failing"], "store", "{body}");
    let status = get_json(&http, &format!("{api}/v1/status")).await;
    assert_eq!(status["accepting"], false, "{status}");
    assert!(status["store_write_error"].is_string(), "{status}");
    // Delivery pauses: with the platform back, nothing is sent while the store cannot write
    // (a report whose result could not be recorded would otherwise go out again and again).
    sb.clear_faults();
    let before = sb.requests_to("status");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        sb.requests_to("status") <= before + 1,
        "reports sent while the store cannot write"
    );
    // Space comes back: the same process opens its store afresh and takes events again.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answered = http
            .post(format!("{api}/v1/events"))
            .json(&json!({"tenant_id": tenants[0], "type": "activation"}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string());
        if answered == Ok(202) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "intake not working again 30 s after space came back ({answered:?}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "statusd exited instead of reopening its store: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let ready = http.get(format!("{api}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Every event answered 202 arrives.
    let expected: Vec<String> = accepted
        .iter()
        .map(|n| format!("{}-{n}", tenants[n % tenants.len()]))
        .collect();
    wait_for(
        Duration::from_secs(30),
        "every acknowledged event delivered",
        || {
            let got = actions_by_tenant(&sb);
            expected
                .iter()
                .all(|a| got.values().flatten().any(|g| g == a))
        },
    )
    .await;
    // ... and none answered 503 does, once the queue is empty: the group whose write or flush
    // failed is not delivered after the restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = get_json(&http, &format!("{api}/v1/status")).await;
        if status["queue"]["depth"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never drained: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = actions_by_tenant(&sb);
    for n in &refused {
        let action = format!("{}-{n}", tenants[n % tenants.len()]);
        assert!(
            !got.values().flatten().any(|g| *g == action),
            "event {n} was answered 503 and delivered anyway"
        );
    }
    assert_eq!(sigterm_and_wait(child).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_a_full_disk_is_refused_saying_how_much_it_needs_and_changes_nothing() {
    let Some(disk) = small_disk("40m") else {
        return;
    };
    statusd::platform::install_crypto_provider();
    let store = disk.path.join("store");
    let http = http_client();
    let port = free_port();
    let child = daemon_command("http://127.0.0.1:9", "x", "y", &store, port)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_daemon();
    wait_ready(&http, port).await;
    for n in 0..50 {
        let r = http
            .post(format!("http://127.0.0.1:{port}/v1/events"))
            .json(&json!({"tenant_id": uuid::Uuid::new_v4(), "type": "custom", "category": "disk", "action": format!("a{n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    assert!(sigterm_and_wait(child).await.success());
    let filler = fill(&disk.path);
    let before: Vec<(std::path::PathBuf, u64)> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path(), e.metadata().unwrap().len())
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_statusd"))
        .args(["store", "compact"])
        .env("STATUSD__STORE__PATH", &store)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("not enough free space to compact") && text.contains("MB"),
        "{text}"
    );
    assert!(!disk.path.join("store.compact-tmp").exists());
    for (path, len) in before {
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            len,
            "{}",
            path.display()
        );
    }
    // With room again, the compaction runs and every event is still there.
    std::fs::remove_file(&filler).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_statusd"))
        .args(["store", "compact"])
        .env("STATUSD__STORE__PATH", &store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_statusd"))
        .args(["store", "verify", "--json"])
        .env("STATUSD__STORE__PATH", &store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"checked\": 50"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_a_long_reconcile_is_recovered_by_the_same_process() {
    let Some(disk) = small_disk("24m") else {
        return;
    };
    statusd::platform::install_crypto_provider();
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    // Every read of the tenant tree takes 15 s: a scheduled reconcile run lasts that long.
    sb.inject(statusd::sandbox::Fault {
        delay_ms: Some(15_000),
        path_contains: Some("/api/2/tenants".into()),
        ..Default::default()
    });
    let store = disk.path.join("store");
    let http = http_client();
    let log = disk._dir.path().join("reconcile.log");
    let mut cmd = daemon_command(&sb.url, &sb.client_id, &sb.client_secret, &store, 0);
    cmd.env("STATUSD__STORE__CACHE_CAPACITY_MB", "8")
        .env("STATUSD__RECONCILE__TENANTS__SCHEDULE", "* * * * * *")
        .env("STATUSD__PLATFORM__REQUEST_TIMEOUT", "30s")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let (mut child, port) = spawn_ready(&mut cmd, disk._dir.path()).await;
    let api = format!("http://127.0.0.1:{port}");
    wait_for(Duration::from_secs(10), "a reconcile run under way", || {
        sb.requests_to("tenants") >= 1
    })
    .await;
    let t = customers(&sb, 1)[0];
    let post = || {
        http.post(format!("{api}/v1/events"))
            .json(&json!({"tenant_id": t, "type": "activation"}))
            .send()
    };
    // The disk fills while the run waits on the platform.
    let filler = fill(&disk.path);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while post().await.unwrap().status() != 503 {
        assert!(std::time::Instant::now() < deadline, "intake never refused");
    }
    // Space comes back: the store is opened again in this process, the run notwithstanding.
    std::fs::remove_file(&filler).unwrap();
    wait_for_async(Duration::from_secs(30), "intake working again", || async {
        post().await.is_ok_and(|r| r.status() == 202)
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "statusd exited instead of reopening its store: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(sigterm_and_wait(child).await.code(), Some(0));
}
