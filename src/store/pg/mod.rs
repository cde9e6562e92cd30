//! The PostgreSQL backend: the same contract as the sled store, on tables of a shared
//! database.
//!
//! Promises (as on sled):
//! - `enqueue` answers only after COMMIT. Concurrent enqueues are written by one committer task
//!   as one transaction per group; event inserts of any kind are serialized by one lock, so a
//!   tenant's events commit in the order of their sequence numbers, and delivery (which reads a
//!   tenant's head by `(tenant_id, seq)`) never sees a later event before an earlier one.
//! - A settled batch (delivered, failed, dead) is written in one transaction with the tenant's
//!   reported state; being in flight is kept in memory, as on sled.
//! - Each tenant's oldest pending event and the counters are kept in memory, loaded at open and
//!   again whenever the database comes back after it could not be reached (or after a COMMIT
//!   whose outcome is unknown).
//! - The database unreachable: every operation fails at once with `StoreError::Unavailable`
//!   (intake answers 503 with `Retry-After`), a health task probes it each second, and once it
//!   answers the memory is reloaded and every tenant with pending events is woken.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::Row;

use super::*;

use crate::config::postgres::strip_tls_params;
pub use crate::config::postgres::{check_url, describe_url, valid_schema_name};

mod backend;
pub mod cluster;
mod copy;
mod read;
pub mod schema;
mod wake;
mod write;

pub use copy::{export, import};
pub use schema::{Migrated, PG_SCHEMA_VERSION};

/// How long one transaction may take before the store counts the database as unreachable.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the health task probes the database.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    /// The connection URL (`postgres://user:password@host:port/db?sslmode=...`). A secret: it
    /// holds the password.
    pub url: secrecy::SecretString,
    /// The database itself, for the `LISTEN` session (unset: `url`).
    pub direct_url: Option<secrecy::SecretString>,
    pub pool_size: usize,
    pub schema: String,
    /// The CA that signs the server's certificate (else the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    pub connect_timeout: Duration,
    /// Which shard each account's events belong to (stored with each event).
    pub shards: crate::cluster::ShardMap,
}

impl PgOptions {
    /// The options `[store.postgres]` gives, with the map of the accounts to their shards.
    pub fn of(pg: &crate::config::PostgresSettings, shards: crate::cluster::ShardMap) -> PgOptions {
        PgOptions {
            shards,
            url: secrecy::SecretString::from(pg.url.expose().to_string()),
            direct_url: pg
                .direct_url
                .as_ref()
                .map(|u| secrecy::SecretString::from(u.expose().to_string())),
            pool_size: pg.pool_size,
            schema: pg.schema.clone(),
            ca_file: pg.ca_file.clone(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &"<secret>")
            .field("pool_size", &self.pool_size)
            .field("schema", &self.schema)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn tls_connector(
    ca_file: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                StoreError::Unavailable(format!("store.postgres.ca_file {}: {e}", path.display()))
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    StoreError::Unavailable(format!(
                        "store.postgres.ca_file {}: {e}",
                        path.display()
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::Unavailable(format!(
                        "store.postgres.ca_file {}: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => {
            return tokio_postgres_rustls::MakeRustlsConnect::with_native_certs()
                .map(|(connector, _)| connector)
                .map_err(|errors| {
                    StoreError::Unavailable(format!("TLS: no system root certificate could be loaded ({errors:?}); set store.postgres.ca_file"))
                });
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Unavailable(format!("TLS set-up: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The statements every transaction begins with, in one round trip: the store's schema as its
/// `search_path` for this transaction only, and no prepared statement left on the server
/// connection. Through a pooler in transaction mode, a statement prepared in one transaction can
/// outlive it there (its rows are still in use when the transaction ends, so its `Close` goes
/// out later, to whatever connection the pooler then gives); another process preparing the same
/// name on that connection would be refused. Nothing of statusd's uses a statement across
/// transactions, so this costs nothing else.
pub(super) fn prelude(schema: &str) -> String {
    format!("SET LOCAL search_path TO \"{schema}\"; DEALLOCATE ALL")
}

/// A pool on the URL. Nothing is set on a connection's session (no startup options, no `SET`):
/// each transaction sets the schema for itself (`Pg::begin`), so every statement works on
/// whichever server connection a pooler in transaction mode (PgBouncer) hands out.
fn make_pool(opts: &PgOptions) -> Result<Pool, StoreError> {
    let (config, tls) = connection(
        &opts.url,
        "store.postgres.url",
        opts.ca_file.as_deref(),
        opts.connect_timeout,
        "statusd",
    )?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls {
        None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        Some(tls) => Manager::from_config(config, tls, manager_config),
    };
    Pool::builder(manager)
        .max_size(opts.pool_size.max(2))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        // A wait for a free connection is not the database being unreachable: it is bounded by
        // each operation's own timeout instead.
        .wait_timeout(None)
        .create_timeout(Some(opts.connect_timeout))
        .recycle_timeout(Some(opts.connect_timeout))
        .build()
        .map_err(|e| StoreError::Unavailable(format!("connection pool: {e}")))
}

/// How to connect to `url` (the setting `key`): its settings as tokio-postgres reads them, and
/// the TLS it asks for (`None`: plain text), verified against `ca_file` or the system's roots.
pub(super) fn connection(
    url: &secrecy::SecretString,
    key: &str,
    ca_file: Option<&std::path::Path>,
    connect_timeout: Duration,
    application: &str,
) -> Result<
    (
        tokio_postgres::Config,
        Option<tokio_postgres_rustls::MakeRustlsConnect>,
    ),
    StoreError,
> {
    use secrecy::ExposeSecret;
    let (plain, mode) = strip_tls_params(url.expose_secret());
    let mut config = tokio_postgres::Config::from_str(&plain)
        .map_err(|e| StoreError::Unavailable(format!("{key}: {e}")))?;
    config
        .connect_timeout(connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .application_name(application);
    let tls = match mode.as_deref() {
        None | Some("disable") => None,
        Some(_) => Some(tls_connector(ca_file)?),
    };
    Ok((config, tls))
}

/// Whether an error says the database cannot be reached (I/O, a closed connection, a server
/// shutting down or full), rather than that it refused the statement.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return code.starts_with("08") || code.starts_with("57P") || code == "53300";
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// rustls's own words when a connection failed in the TLS handshake (an untrusted certificate,
/// a name it does not hold).
fn tls_cause(e: &tokio_postgres::Error) -> Option<String> {
    fn find(e: &(dyn std::error::Error + 'static)) -> Option<String> {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = find(inner) {
                return Some(found);
            }
        }
        e.source().and_then(find)
    }
    std::error::Error::source(e).and_then(find)
}

/// Classify an error: `Unavailable` when the database cannot be reached (intake answers 503,
/// everything pauses until it is back), `Postgres` when it refused the statement.
pub(super) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(tls) = tls_cause(&e) {
        return StoreError::Unavailable(format!(
            "PostgreSQL: the TLS handshake failed: {tls} (the server's certificate must be signed by a root of store.postgres.ca_file, or of the system when it is unset, and hold the host name of store.postgres.url)"
        ));
    }
    if unreachable(&e) {
        return StoreError::Unavailable(format!("PostgreSQL: {e}"));
    }
    match e.as_db_error() {
        Some(db) => StoreError::Postgres(format!(
            "{} ({}){}",
            db.message(),
            db.code().code(),
            db.detail().map(|d| format!(": {d}")).unwrap_or_default()
        )),
        None => StoreError::Postgres(format!("{e}")),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Unavailable(format!("PostgreSQL: {other}")),
    }
}

/// A column of a row as `T`: a value of another type (or a NULL where none may be) is a damaged
/// record, answered as an error, never a panic.
pub(super) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<T, StoreError> {
    row.try_get(idx).map_err(|e| {
        let name = row.columns().get(idx).map(|c| c.name()).unwrap_or("?");
        StoreError::Corrupt(format!("column {name}: {e}"))
    })
}

/// The count the first row holds in its first column (0 without a row).
pub(super) fn count_of(rows: &[Row]) -> Result<i64, StoreError> {
    Ok(rows
        .first()
        .map(|r| col::<i64>(r, 0))
        .transpose()?
        .unwrap_or(0))
}

/// Each tenant's oldest pending event and the counters, in memory.
#[derive(Default)]
pub(super) struct Mem {
    /// Each tenant's oldest pending event.
    heads: HeadIndex<Head>,
    depth: u64,
    dead: u64,
}

/// A tenant's oldest pending event: its place, when it was accepted, its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) accepted_ms: i64,
    pub(super) account: Option<String>,
}

impl Head {
    pub(super) fn of_row(row: &Row) -> Result<Head, StoreError> {
        Ok(Head {
            seq: col::<i64>(row, 0)? as u64,
            accepted_ms: col(row, 1)?,
            account: col(row, 2)?,
        })
    }
}

impl Place for Head {
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl Mem {
    /// A tenant got a pending event; it is the head if the tenant had none.
    fn add(&mut self, tenant: TenantId, head: Head) {
        self.heads.add(tenant, head);
    }

    fn set_head(&mut self, tenant: TenantId, head: Option<Head>) {
        self.heads.set(tenant, head);
    }
}

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct PgQueue {
    pub(super) inner: Arc<Pg>,
}

pub(super) struct Pg {
    pool: Pool,
    pub(super) schema: String,
    /// What every transaction begins with (`prelude`).
    set_schema: String,
    /// Where the URL points (no password), for messages.
    pub(super) target: String,
    jobs: Mutex<Option<tokio::sync::mpsc::Sender<write::Intake>>>,
    /// Held while a transaction inserts events, so events commit in sequence order.
    insert_lock: tokio::sync::Mutex<()>,
    mem: Mutex<Mem>,
    in_flight_tenants: Mutex<HashSet<TenantId>>,
    in_flight_ids: Mutex<HashSet<Uuid>>,
    pub(super) ages: Ages,
    pub(super) wakeup: Wakeup,
    pub(super) options: StoreOptions,
    /// Why the database cannot be reached, while it cannot.
    unavailable: Mutex<Option<String>>,
    /// The memory must be loaded again (a COMMIT whose outcome is unknown, a reconnect).
    resync: AtomicBool,
    commits: AtomicU64,
    waiters: AtomicU64,
    /// Decisions this replica set aside since the store was opened.
    pub(super) superseded: AtomicU64,
    stop: tokio_util::sync::CancellationToken,
    pub(super) shards: crate::cluster::ShardMap,
    /// What this replica holds (set when it runs as a pool member): checked before it takes a
    /// batch, and with the epoch in every transaction that settles one.
    pub(super) ownership: std::sync::OnceLock<Arc<crate::cluster::Ownership>>,
    /// Where the `LISTEN` session of a pool member goes (`direct_url`, else `url`), and the CA.
    session: (secrecy::SecretString, Option<std::path::PathBuf>),
    /// The `LISTEN` session hears the store's notifications (checked with a ping of its own):
    /// peers' events for the shards held arrive as wake-ups, and a round need not read every
    /// held shard's heads.
    pub(super) hearing: AtomicBool,
}

impl InFlight for Pg {
    fn in_flight(&self) -> (&Mutex<HashSet<TenantId>>, &Mutex<HashSet<Uuid>>) {
        (&self.in_flight_tenants, &self.in_flight_ids)
    }

    fn ended(&self, fence: Option<(u32, u64)>) {
        if let (Some((shard, _)), Some(own)) = (fence, self.ownership.get()) {
            own.flight_ended(shard);
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PgQueue {
    /// Connect, migrate the schema to this build's version and load the memory.
    pub async fn open(opts: &PgOptions, options: StoreOptions) -> Result<PgQueue, StoreError> {
        use secrecy::ExposeSecret;
        let pool = make_pool(opts)?;
        let target = describe_url(opts.url.expose_secret());
        {
            let mut client = pool.get().await.map_err(pool_error)?;
            schema::migrate(&mut client, &opts.schema).await?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let pg = Arc::new(Pg {
            pool,
            schema: opts.schema.clone(),
            set_schema: prelude(&opts.schema),
            target,
            jobs: Mutex::new(Some(tx)),
            insert_lock: Default::default(),
            mem: Default::default(),
            in_flight_tenants: Default::default(),
            in_flight_ids: Default::default(),
            ages: Ages::new(0),
            wakeup: Wakeup::default(),
            options,
            unavailable: Default::default(),
            resync: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            waiters: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
            stop: Default::default(),
            shards: opts.shards.clone(),
            ownership: Default::default(),
            session: (
                opts.direct_url.clone().unwrap_or_else(|| opts.url.clone()),
                opts.ca_file.clone(),
            ),
            hearing: AtomicBool::new(false),
        });
        pg.load().await?;
        tokio::spawn(write::committer(Arc::downgrade(&pg), rx));
        tokio::spawn(health(Arc::downgrade(&pg), pg.stop.clone()));
        Ok(PgQueue { inner: pg })
    }

    /// Apply the migrations this build has (`statusd store migrate`), nothing else.
    pub async fn migrate_only(opts: &PgOptions) -> Result<Migrated, StoreError> {
        let pool = make_pool(opts)?;
        let mut client = pool.get().await.map_err(pool_error)?;
        schema::migrate(&mut client, &opts.schema).await
    }

    /// Why the database cannot be reached, if it cannot.
    pub fn unavailable(&self) -> Option<String> {
        lock(&self.inner.unavailable).clone()
    }

    pub fn target(&self) -> &str {
        &self.inner.target
    }

    pub fn flush_stats(&self) -> FlushStats {
        FlushStats {
            flushes: self.inner.commits.load(Ordering::Relaxed),
            waiters: self.inner.waiters.load(Ordering::Relaxed),
        }
    }

    /// Stop taking intake (the committer ends once the jobs sent are written).
    pub fn close(&self) {
        lock(&self.inner.jobs).take();
        self.inner.stop.cancel();
    }

    /// Run as a pool member: from now on this replica takes and settles only the batches of
    /// shards it holds, each settled with the shard's epoch.
    /// It also starts listening for the wake-ups of peers (events they accepted for shards this
    /// replica holds).
    pub fn set_ownership(&self, own: Arc<crate::cluster::Ownership>) {
        if self.inner.ownership.set(own).is_ok() {
            let (url, ca) = self.inner.session.clone();
            tokio::spawn(wake::listen(
                Arc::downgrade(&self.inner),
                url,
                ca,
                self.inner.stop.clone(),
            ));
        }
    }

    pub fn ownership(&self) -> Option<&Arc<crate::cluster::Ownership>> {
        self.inner.ownership.get()
    }
}

impl Pg {
    /// A connection, or `Unavailable` at once while the database is known to be unreachable.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if let Some(why) = lock(&self.unavailable).clone() {
            return Err(StoreError::Unavailable(why));
        }
        match self.pool.get().await {
            Ok(c) => Ok(c),
            Err(e) => Err(self.failed(pool_error(e))),
        }
    }

    /// Note an error: one that says the database cannot be reached makes the store unavailable
    /// until the health task reaches it again.
    pub(super) fn failed(&self, e: StoreError) -> StoreError {
        if let StoreError::Unavailable(why) = &e {
            let mut u = lock(&self.unavailable);
            if u.is_none() {
                tracing::error!(message = "the store's database cannot be reached; intake answers 503 and delivery and reconcilers pause until it is back", database = %self.target, error = %why);
                *u = Some(why.clone());
            }
            self.resync.store(true, Ordering::Release);
        }
        e
    }

    /// Begin a transaction on `client` with its `prelude` (one round trip after `BEGIN`). Every statement runs in
    /// one: no session state is kept on a server connection, and a statement prepared inside a
    /// transaction is used on the connection that prepared it, whatever a pooler in transaction
    /// mode does between transactions.
    pub(super) async fn begin<'a>(
        &self,
        client: &'a mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'a>, StoreError> {
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(&self.set_schema).await.map_err(pg_error)?;
        Ok(tx)
    }

    /// One statement in a transaction of its own, under the store's timeout: its rows.
    pub(super) async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            // The prelude and the statement go out together (pipelined, in this order).
            let (prelude, rows) =
                tokio::join!(tx.batch_execute(&self.set_schema), tx.query(sql, params));
            prelude.map_err(pg_error)?;
            let rows = rows.map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(rows)
        })
        .await
    }

    /// One statement in a transaction of its own, under the store's timeout: the rows it
    /// changed.
    pub(super) async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let (prelude, n) =
                tokio::join!(tx.batch_execute(&self.set_schema), tx.execute(sql, params));
            prelude.map_err(pg_error)?;
            let n = n.map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(n)
        })
        .await
    }

    /// Run a transaction-sized piece of work under the store's timeout; a timeout counts as the
    /// database being unreachable.
    pub(super) async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(OP_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(e)),
            Err(_) => Err(self.failed(StoreError::Unavailable(format!(
                "no answer from PostgreSQL within {}s",
                OP_TIMEOUT.as_secs()
            )))),
        }
    }

    /// Load each tenant's head and the counters from the database.
    async fn load(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = self.begin(&mut client).await?;
        let heads = tx.query(wake::HEADS_OF_ALL, &[]).await.map_err(pg_error)?;
        let counts = tx
            .query_one(
                "SELECT (SELECT count(*) FROM events WHERE state = 'queued'),
                        (SELECT count(*) FROM events WHERE state = 'dead'),
                        (SELECT coalesce(max(seq), 0) FROM events)",
                &[],
            )
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        let mut mem = Mem::default();
        for row in heads {
            mem.add(col(&row, 3)?, Head::of_row(&row)?);
        }
        mem.depth = col::<i64>(&counts, 0)? as u64;
        mem.dead = col::<i64>(&counts, 1)? as u64;
        self.ages.set_seq_at_open(col::<i64>(&counts, 2)? as u64);
        let tenants: Vec<TenantId> = mem.heads.tenants().copied().collect();
        *lock(&self.mem) = mem;
        self.wake_tenants(tenants);
        Ok(())
    }

    pub(super) fn wake_tenants(&self, tenants: impl IntoIterator<Item = TenantId>) {
        self.wakeup.wake(tenants);
    }
}

/// Probe the database each second; once it answers after it could not be reached, load the
/// memory again and wake every tenant with pending events.
async fn health(pg: std::sync::Weak<Pg>, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
        let Some(pg) = pg.upgrade() else { return };
        let probe = async {
            let client = pg.pool.get().await.map_err(pool_error)?;
            client.simple_query("SELECT 1").await.map_err(pg_error)?;
            Ok(())
        };
        match tokio::time::timeout(OP_TIMEOUT, probe).await {
            Ok(Ok(())) => {
                if pg.resync.swap(false, Ordering::AcqRel) {
                    // Serialized with intake, so no group commits while the memory is reloaded.
                    let _guard = pg.insert_lock.lock().await;
                    if let Err(e) = pg.load().await {
                        pg.resync.store(true, Ordering::Release);
                        tracing::warn!(message = "the store's database answers, but reading the queue failed; trying again", error = %e);
                        continue;
                    }
                }
                if lock(&pg.unavailable).take().is_some() {
                    tracing::info!(message = "the store's database is reachable again: intake, delivery and reconcilers go on", database = %pg.target);
                }
            }
            Ok(Err(e)) => {
                pg.failed(e);
            }
            Err(_) => {
                pg.failed(StoreError::Unavailable(
                    "no answer from PostgreSQL to a probe".into(),
                ));
            }
        }
    }
}

/// The columns of an event row, in `row_event`'s order.
pub(super) const EVENT_COLUMNS: &str = "id, seq, tenant_id, account, kind, category, action, idempotency_key, accepted_at_ms, occurred_at_ms, state, attempts, last_error, next_attempt_at_ms, delivered_at_ms, dead_reason";

pub(super) fn row_event(row: &Row) -> Result<EventRecord, StoreError> {
    let kind: String = col(row, 4)?;
    let state: String = col(row, 10)?;
    let seq: i64 = col(row, 1)?;
    let attempts: i32 = col(row, 11)?;
    Ok(EventRecord {
        id: col(row, 0)?,
        seq: seq as u64,
        tenant_id: col(row, 2)?,
        account: col(row, 3)?,
        kind: serde_json::from_value(serde_json::Value::String(kind.clone()))
            .map_err(|_| StoreError::Corrupt(format!("unknown event kind {kind:?}")))?,
        category: col(row, 5)?,
        action: col(row, 6)?,
        idempotency_key: col(row, 7)?,
        accepted_at_ms: col(row, 8)?,
        occurred_at_ms: col(row, 9)?,
        state: match state.as_str() {
            "queued" => EventState::Queued,
            "delivered" => EventState::Delivered,
            "dead" => EventState::Dead,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown event state {other:?}"
                )))
            }
        },
        attempts: attempts.max(0) as u32,
        last_error: col(row, 12)?,
        next_attempt_at_ms: col(row, 13)?,
        delivered_at_ms: col(row, 14)?,
        dead_reason: col(row, 15)?,
    })
}

fn state_text(s: Option<IntegrationState>) -> Option<&'static str> {
    s.map(|s| match s {
        IntegrationState::Active => "active",
        IntegrationState::Inactive => "inactive",
    })
}

fn state_from(s: Option<String>) -> Option<IntegrationState> {
    match s.as_deref() {
        Some("active") => Some(IntegrationState::Active),
        Some("inactive") => Some(IntegrationState::Inactive),
        _ => None,
    }
}

pub(super) fn row_tenant(row: &Row) -> Result<TenantState, StoreError> {
    Ok(TenantState {
        tenant_id: col(row, 0)?,
        account: col(row, 1)?,
        intended: state_from(col(row, 2)?),
        intended_at_ms: col(row, 3)?,
        last_reported: state_from(col(row, 4)?),
        last_reported_at_ms: col(row, 5)?,
        last_sent_at_ms: col(row, 6)?,
        dated: true,
    })
}

pub(super) fn json_of<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt(format!("a stored document: {e}")))
}

pub(super) fn value_of<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("store records serialize")
}
