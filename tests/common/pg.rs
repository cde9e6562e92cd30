//! A real PostgreSQL server for tests: `initdb` into a temp dir (as the `postgres` user when
//! the tests run as root), `postgres` on a free loopback port, stopped when dropped.
//!
//! Where no server binaries are found, `PgServer::start` returns `None` and says why; tests
//! then skip with that reason. `.ci/run` installs them, so in CI they never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PG_USER: &str = "statusd";
/// The test server's password (a secret: tests check it never shows).
pub const PG_PASSWORD: &str = "pg-Secret-7d1e9c";

pub struct PgServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
    /// More `-c name=value` settings of the server (TLS).
    settings: Vec<String>,
}

/// The directory of the PostgreSQL server binaries, if any.
fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("STATUSD_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists() && p.join("postgres").exists())
        .collect();
    found.sort();
    found.pop()
}

/// A peer a test needs is not installed: the test skips, saying why, unless CI requires the
/// PostgreSQL tests to run (`STATUSD_TEST_REQUIRE_POSTGRES`).
fn missing<T>(why: &str) -> Option<T> {
    assert!(
        std::env::var_os("STATUSD_TEST_REQUIRE_POSTGRES").is_none(),
        "STATUSD_TEST_REQUIRE_POSTGRES is set but there is {why}"
    );
    eprintln!("SKIP: {why}");
    None
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the `postgres` user.
fn server_user() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam with a valid C string; the result is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "no user `postgres` to run the test server as"
    );
    // SAFETY: checked non-null above.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// Make `path` (and what is under it) the `postgres` user's when we are root, so the server
/// and the pooler, run as that user, can use it.
fn give_to_server_user(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown of {} failed", path.display());
    }
}

/// A command run as the `postgres` user when we are root (the server refuses to run as root),
/// ended with us if we die first.
fn as_server_user(program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program);
    if is_root() {
        let (uid, gid) = server_user();
        c.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
            Ok(())
        });
    }
    c
}

impl PgServer {
    /// Start a fresh server, or `None` (with the reason printed) where none can run here.
    pub fn start() -> Option<PgServer> {
        let Some(bin) = bin_dir() else {
            return missing(
                "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin, or set STATUSD_PG_BIN)",
            );
        };
        let dir = tempfile::Builder::new()
            .prefix("statusd-pg")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).unwrap();
        give_to_server_user(dir.path());
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                PG_USER,
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = PgServer {
            dir,
            port,
            bin,
            child: None,
            settings: Vec::new(),
        };
        server.resume();
        Some(server)
    }

    /// Start a fresh server with these `name=value` settings (e.g. a preloaded library).
    pub fn start_with(settings: &[&str]) -> Option<PgServer> {
        let mut server = PgServer::start()?;
        server.halt();
        server.settings = settings.iter().map(|s| s.to_string()).collect();
        server.resume();
        Some(server)
    }

    /// Start a fresh server that speaks TLS with this certificate and key (`ssl=on`).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Option<PgServer> {
        let mut server = PgServer::start()?;
        server.halt();
        let data = server.dir.path().join("data");
        for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
            std::fs::copy(from, data.join(name)).unwrap();
            give_to_server_user(&data.join(name));
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        server.settings = vec![
            "ssl=on".into(),
            "ssl_cert_file=server.crt".into(),
            "ssl_key_file=server.key".into(),
        ];
        server.resume();
        Some(server)
    }

    /// The URL on `host` (a name or address of this machine) with these query parameters.
    pub fn url_on(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://{PG_USER}:{PG_PASSWORD}@{host}:{}/postgres?{query}",
            self.port
        )
    }

    /// `pg_test_fsync` in the server's directory: the database's own commit cost.
    pub fn test_fsync(&self) -> String {
        let out = Command::new(self.bin.join("pg_test_fsync"))
            .args(["-s", "2", "-f"])
            .arg(self.dir.path().join("fsync.test"))
            .output()
            .expect("pg_test_fsync runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Start the server (again) on its port and wait until it takes connections.
    pub fn resume(&mut self) {
        let data = self.dir.path().join("data");
        let child = as_server_user(&self.bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "max_connections=200", "-c", "shared_buffers=64MB"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start within 30s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server now (its clients see their connections end), waiting for it to exit.
    pub fn halt(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: immediate shutdown, as a crash of the server looks to its clients.
            // SAFETY: the PID is that of our own child.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGQUIT);
            }
            let _ = child.wait();
        }
    }

    /// Run SQL through psql as the test user, returning its output (unaligned, no headers).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                PG_USER,
            ])
            .args(["-d", "postgres", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", PG_PASSWORD)
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Store options on the test server, in `schema`.
pub fn options(url: &str, schema: &str) -> statusd::store::pg::PgOptions {
    statusd::store::pg::PgOptions {
        url: secrecy::SecretString::from(url.to_string()),
        direct_url: None,
        pool_size: 4,
        schema: schema.to_string(),
        ca_file: None,
        connect_timeout: Duration::from_secs(5),
        shards: Default::default(),
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// PgBouncer (Debian's `pgbouncer`) in front of a test server, in transaction pooling mode with
/// `default_pool_size = 5`, as the `postgres` user; stopped when dropped. Every statement of
/// statusd through it must work on whichever of the 5 server connections it is handed.
pub struct PgBouncer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl PgBouncer {
    /// Start it in front of `server`, or `None` (with the reason printed) where it is not
    /// installed.
    pub fn start(server: &PgServer) -> Option<PgBouncer> {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let Some(bin) = bin else {
            return missing("no pgbouncer (apt-get install pgbouncer)");
        };
        let dir = tempfile::Builder::new()
            .prefix("statusd-pgbouncer")
            .tempdir()
            .expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("users.txt"),
            format!("\"{PG_USER}\" \"{PG_PASSWORD}\"\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\npostgres = host=127.0.0.1 port={} dbname=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {d}/users.txt\n\
                 pool_mode = transaction\ndefault_pool_size = 5\nmax_client_conn = 500\n\
                 logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
                server.port
            ),
        )
        .unwrap();
        give_to_server_user(dir.path());
        let child = as_server_user(&bin)
            .arg(dir.path().join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen within 30s: {}",
                std::fs::read_to_string(dir.path().join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(PgBouncer { dir, port, child })
    }

    /// The URL of the database through the pooler.
    pub fn url(&self) -> String {
        format!(
            "postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// What the pooler logged (its refusals name what a client sent that it does not pass on).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // SAFETY: the PID is that of our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}
