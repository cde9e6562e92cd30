//! The real binary speaks sd_notify: READY once the store is open and the API listens, WATCHDOG
//! at half of WATCHDOG_USEC, STOPPING on SIGTERM, then a clean exit 0.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::SpawnDaemon;

#[test]
fn ready_watchdog_and_stopping_over_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_statusd"))
        .arg("run")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "warn")
        .env("STATUSD__PLATFORM__BASE_URL", "http://127.0.0.1:9")
        .env("STATUSD__PLATFORM__CLIENT_ID", "id")
        .env("STATUSD__PLATFORM__CLIENT_SECRET", "secret")
        .env("STATUSD__INTEGRATION__APPLICATION_CODE", "vendor.app")
        .env("STATUSD__STORE__PATH", dir.path().join("store"))
        .env("STATUSD__API__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_daemon();
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(20);
    let count = |seen: &Vec<String>, what: &str| seen.iter().filter(|m| m.contains(what)).count();
    while (count(&seen, "READY=1") == 0 || count(&seen, "WATCHDOG=1") < 3)
        && Instant::now() < deadline
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    assert!(count(&seen, "READY=1") == 1, "{seen:?}");
    assert!(count(&seen, "WATCHDOG=1") >= 3, "{seen:?}");
    // READY comes only once the API answers.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&seen, "STOPPING=1") == 0 && Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    assert_eq!(count(&seen, "STOPPING=1"), 1, "{seen:?}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
