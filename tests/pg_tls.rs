//! TLS to PostgreSQL, through the real binary against a server the test starts with `ssl=on`
//! and a certificate from a test CA: `sslmode=verify-full` with `store.postgres.ca_file` works;
//! the wrong CA, and a host name the certificate does not name, are refused with a clear
//! message, the password never shown.

mod common;

use common::pg::PgServer;
use common::pki::pki_for;

/// `statusd store migrate` on `url` with `ca_file`: (exit code, stdout and stderr).
fn migrate(url: &str, ca_file: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
        .args(["store", "migrate"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STATUSD__INTEGRATION__APPLICATION_CODE", "vendor.tests")
        .env("STATUSD__STORE__BACKEND", "postgres")
        .env("STATUSD__STORE__POSTGRES__URL", url)
        .env("STATUSD__STORE__POSTGRES__SCHEMA", "tls")
        .env("STATUSD__STORE__POSTGRES__CA_FILE", ca_file)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn verify_full_takes_the_test_ca_and_refuses_a_wrong_ca_or_name() {
    let dir = tempfile::tempdir().unwrap();
    // The certificate names `localhost` only.
    let pki = pki_for(dir.path(), "subjectAltName=DNS:localhost");
    let Some(server) = PgServer::start_tls(&pki.cert, &pki.key) else {
        return;
    };
    let (code, out) = migrate(&server.url_on("localhost", "sslmode=verify-full"), &pki.ca);
    assert_eq!(code, Some(0), "{out}");

    let (code, out) = migrate(
        &server.url_on("localhost", "sslmode=verify-full"),
        &pki.other_ca,
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("TLS handshake failed") && out.contains("UnknownIssuer"),
        "{out}"
    );
    assert!(!out.contains(common::pg::PG_PASSWORD), "{out}");

    // Reached as 127.0.0.1, a name the certificate does not hold.
    let (code, out) = migrate(&server.url_on("127.0.0.1", "sslmode=verify-full"), &pki.ca);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("TLS handshake failed") && out.contains("not valid for name"),
        "{out}"
    );
}
