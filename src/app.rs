//! Wiring: open the store, start delivery, the local API, the schedules, compaction and the
//! systemd hooks; stop them in order on shutdown. `run` takes its shutdown future as an
//! argument so tests drive a real daemon in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accounts::Accounts;
use crate::api::{self, ApiParts, ApiState};
use crate::config::Settings;
use crate::delivery::{Delivery, DeliveryOptions};
use crate::metrics::Metrics;
use crate::platform::PlatformClient;
use crate::reconcile::Reconcilers;
use crate::schedule::Schedules;
use crate::store::Queue;
use crate::systemd;

/// How often delivered events past their retention are compacted away.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the store at {path}: {source}")]
    Store {
        path: String,
        source: crate::store::StoreError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--ready-file {path}: {source}")]
    ReadyFile {
        path: String,
        source: std::io::Error,
    },
    /// A setting the daemon's parts refuse when they are built (their reason names it).
    #[error("{0}")]
    Setting(String),
    #[error(transparent)]
    Schedule(#[from] crate::schedule::ScheduleError),
    /// The HTTP client for the platform cannot be built with these settings.
    #[error(transparent)]
    HttpClient(#[from] crate::platform::HttpClientError),
    /// The accounts kept in the store cannot be taken in with these settings (exit 78).
    #[error("{0}")]
    StoredAccounts(#[from] crate::accounts::StoredAccountsError),
    #[error("the store could not write ({0}); writing works again but opening it afresh in this process failed: exiting so that the supervisor starts statusd again")]
    StoreReopen(String),
    #[error("this replica kept losing its shards (3 within a minute): exiting so that its supervisor starts it again")]
    KeepsLosingShards,
}

impl AppError {
    /// The exit code of `statusd run` that ends with this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Store {
                source: crate::store::StoreError::Damaged { .. },
                ..
            } => crate::exit::DATAERR,
            AppError::StoreReopen(_) | AppError::KeepsLosingShards => crate::exit::TEMPFAIL,
            AppError::Store {
                source: crate::store::StoreError::PgSchemaTooNew { .. },
                ..
            } => crate::exit::CONFIG,
            AppError::Store {
                source: crate::store::StoreError::Unavailable(_),
                ..
            } => crate::exit::TEMPFAIL,
            AppError::StoredAccounts(_) => crate::exit::CONFIG,
            _ => crate::exit::FAILURE,
        }
    }
}

/// A started daemon.
pub struct Running {
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub api_addr: SocketAddr,
    /// The first account's client, if there is an account.
    pub client: Option<PlatformClient>,
    pub reconcilers: Reconcilers,
    pub delivery: Delivery,
    accepting: Arc<AtomicBool>,
    stop_delivery: CancellationToken,
    stop_api: CancellationToken,
    stop_background: CancellationToken,
    delivery_task: JoinHandle<()>,
    api_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    schedules: Option<Schedules>,
    /// Cancelled when the store could not write and writing works again: `run` then stops
    /// every part and starts it again on the store opened afresh (sled keeps a write error
    /// until it is reopened).
    pub reopen: CancellationToken,
    /// Work spawned apart that holds the store: cancelled and awaited by the shutdown.
    detached: crate::tasks::Detached,
}

/// Write the API's address to `path` (through a temporary file and a rename, so a reader never
/// sees half of it).
fn write_ready_file(path: &std::path::Path, addr: SocketAddr) -> Result<(), AppError> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, format!("{addr}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| AppError::ReadyFile {
            path: path.display().to_string(),
            source,
        })
}

/// How often the store is reopened in place after it could not write, before `run` gives up
/// and exits 75 for its supervisor.
const REOPEN_ATTEMPTS: u32 = 3;

/// Run the daemon until `shutdown` resolves, then stop gracefully. When the store could not
/// write and writing works again, every part is stopped and started again on the store opened
/// afresh, in this process (sled keeps an I/O error until its files are opened again); only if
/// that fails does `run` end with `StoreReopen` (exit 75) for the supervisor.
/// `ready_file`, when given, gets the API's address once the daemon is ready.
pub async fn run(
    mut settings: Settings,
    shutdown: impl Future<Output = ()>,
    ready_file: Option<&std::path::Path>,
) -> Result<(), AppError> {
    tokio::pin!(shutdown);
    let metrics = Arc::new(Metrics::new());
    let mut running = start_with(settings.clone(), None, true, metrics.clone()).await?;
    // A reopening listens where this start did (api.listen may ask for any free port).
    settings.api.listen = running.api_addr;
    if let Some(path) = ready_file {
        write_ready_file(path, running.api_addr)?;
    }
    systemd::notify_ready();
    tracing::info!(message = "statusd ready", api = %running.api_addr, version = env!("CARGO_PKG_VERSION"));
    loop {
        let reopen = running.reopen.clone();
        let failing = running.failing();
        let reopen_needed = tokio::select! {
            _ = &mut shutdown => false,
            _ = reopen.cancelled() => true,
            _ = failing.cancelled() => {
                systemd::notify_stopping();
                running.shutdown().await;
                return Err(AppError::KeepsLosingShards);
            }
        };
        if !reopen_needed {
            systemd::notify_stopping();
            running.shutdown().await;
            return Ok(());
        }
        let write_error = running.queue.write_error().unwrap_or_default();
        tracing::warn!(message = "the store takes writes again: reopening it in place", after = %write_error);
        running.shutdown().await;
        let mut attempt = 0;
        running = loop {
            attempt += 1;
            match start_with(settings.clone(), None, true, metrics.clone()).await {
                Ok(r) => break r,
                Err(e) if attempt < REOPEN_ATTEMPTS => {
                    tracing::error!(message = "reopening the store failed; trying again", attempt, error = %e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::error!(message = "reopening the store failed", attempts = attempt, error = %e);
                    systemd::notify_stopping();
                    return Err(AppError::StoreReopen(write_error));
                }
            }
        };
        tracing::info!(message = "store reopened: intake and delivery go on", api = %running.api_addr);
    }
}

/// Start every part. `listener` lets tests and the demo bind port 0 themselves; `schedules`
/// turns the cron triggers on.
pub async fn start(
    settings: Settings,
    listener: Option<TcpListener>,
    schedules: bool,
) -> Result<Running, AppError> {
    start_with(settings, listener, schedules, Arc::new(Metrics::new())).await
}

/// `start` with the metrics of an earlier start (a reopen keeps its counters).
async fn start_with(
    settings: Settings,
    listener: Option<TcpListener>,
    schedules: bool,
    metrics: Arc<Metrics>,
) -> Result<Running, AppError> {
    let settings = Arc::new(settings);
    let queue = open_store(&settings).await?;
    let cluster = join_pool(&queue, &settings).await?;
    let accounts = take_in_accounts(&settings, &queue, &metrics).await?;
    let client = accounts.first().map(|a| a.client.clone());
    let delivery = Delivery::new(
        queue.clone(),
        accounts.clone(),
        metrics.clone(),
        DeliveryOptions::from_settings(&settings)
            .map_err(|e| AppError::Setting(format!("delivery.initial_backoff: {e}")))?,
    );
    let reconcilers = Reconcilers::new(
        queue.clone(),
        accounts.clone(),
        metrics.clone(),
        settings.clone(),
    );
    let accepting = Arc::new(AtomicBool::new(true));
    let account_changes: Arc<tokio::sync::Mutex<()>> = Default::default();
    let (listener, api_addr) = bind_api(listener, settings.api.listen).await?;
    let stop_delivery = CancellationToken::new();
    let delivery_task = tokio::spawn(delivery.clone().run(stop_delivery.clone()));
    let reopen = CancellationToken::new();
    let (stop_background, mut background) = start_background(&queue, &settings.store.path, &reopen);
    // Work spawned apart that holds the store (the re-assertion after a takeover).
    let detached = crate::tasks::Detached::default();
    background.extend(store_tasks(StoreTasks {
        settings: &settings,
        queue: &queue,
        metrics: &metrics,
        pool: cluster.as_ref(),
        accounts: &accounts,
        account_changes: &account_changes,
        api_addr,
        stop: &stop_background,
        detached: &detached,
    }));
    let schedules = if schedules {
        Some(Schedules::start(&settings, reconcilers.clone()).await?)
    } else {
        None
    };
    // The API serves last, once every part has started: a `/readyz` that answers 200 means
    // the schedules are registered too. Connections made earlier wait in the listen backlog.
    let (stop_api, api_task) = serve_api(
        listener,
        ApiState::from(ApiParts {
            queue: queue.clone(),
            metrics: metrics.clone(),
            token: settings.api.token.clone(),
            admin_token: settings.api.admin_token.clone(),
            accepting: accepting.clone(),
            delivery: Some(delivery.clone()),
            client: client.clone(),
            accounts: accounts.clone(),
            reconcilers: Some(reconcilers.clone()),
            read_timeout: settings.api.read_timeout,
            secret_key: settings.store.secret_key.clone(),
            account_changes: account_changes.clone(),
            shards: settings.cluster.shards,
            fusion_login_at: Default::default(),
        }),
        api::ServeLimits {
            max_connections: settings.api.max_connections,
            read_timeout: settings.api.read_timeout,
        },
    );
    Ok(Running {
        queue,
        metrics,
        api_addr,
        client,
        reconcilers,
        delivery,
        accepting,
        stop_delivery,
        stop_api,
        stop_background,
        delivery_task,
        api_task,
        background,
        schedules,
        reopen,
        detached,
    })
}

/// The API's listener (the one given, else bound at `api.listen`) and its address.
async fn bind_api(
    listener: Option<TcpListener>,
    listen: SocketAddr,
) -> Result<(TcpListener, SocketAddr), AppError> {
    let failed = |source| AppError::Listen {
        addr: listen,
        source,
    };
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(listen).await.map_err(failed)?,
    };
    let addr = listener.local_addr().map_err(failed)?;
    Ok((listener, addr))
}

/// The accounts of the settings and those added through the API, their sealed secrets opened
/// (and sealed again, bound, if they were sealed before bindings).
async fn take_in_accounts(
    settings: &Settings,
    queue: &Queue,
    metrics: &Arc<Metrics>,
) -> Result<Accounts, AppError> {
    let accounts = Accounts::new(settings, metrics.clone())?;
    let stored = queue
        .stored_accounts()
        .await
        .map_err(|source| AppError::Store {
            path: settings.store.location(),
            source,
        })?;
    let (n, stale) = accounts.load_stored(stored, settings.store.secret_key.as_ref())?;
    if n > 0 {
        tracing::info!(
            message = "accounts added through the API taken in",
            accounts = n
        );
    }
    if let Some(key) = settings.store.secret_key.as_ref() {
        reseal_accounts(queue, &accounts, key, &stale).await;
    }
    Ok(accounts)
}

/// What the store's own tasks are started with.
struct StoreTasks<'a> {
    settings: &'a Arc<Settings>,
    queue: &'a Queue,
    metrics: &'a Arc<Metrics>,
    pool: Option<&'a crate::store::Pool>,
    accounts: &'a Accounts,
    account_changes: &'a Arc<tokio::sync::Mutex<()>>,
    api_addr: SocketAddr,
    stop: &'a CancellationToken,
    detached: &'a crate::tasks::Detached,
}

/// The tasks that keep the store: its size bound (when its backend has one), the pool's
/// membership and the accounts peers change (on a shared store), the retirement of accounts.
fn store_tasks(t: StoreTasks<'_>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(bound) = t.queue.bound() {
        bound.set_max_size(t.settings.store.max_size);
        tasks.push(tokio::spawn(bound_loop(
            t.queue.clone(),
            t.metrics.clone(),
            t.stop.clone(),
        )));
    }
    if let Some(pool) = t.pool {
        let own = &pool.ownership;
        tasks.push(tokio::spawn(crate::cluster::run(
            pool.leases.clone(),
            own.clone(),
            advertised(t.settings, t.api_addr),
            t.stop.clone(),
            crate::cluster::member::Hooks {
                on_takeover: takeover(
                    t.queue.clone(),
                    own.clone(),
                    t.settings.platform.request_timeout,
                    t.detached.clone(),
                ),
                on_late: late_reports(t.queue.clone()),
            },
        )));
        // Peers add, rotate and remove accounts in the shared store.
        tasks.push(tokio::spawn(crate::accounts::sync_loop(
            t.queue.clone(),
            t.accounts.clone(),
            t.account_changes.clone(),
            t.settings.store.secret_key.clone(),
            t.settings.cluster.retry_period,
            t.stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::accounts::retirement_loop(
        t.queue.clone(),
        t.accounts.clone(),
        t.account_changes.clone(),
        t.stop.clone(),
    )));
    tasks
}

/// The API address other replicas and `owned_elsewhere` answers name: `cluster.advertise_url`,
/// else the listen address when it is a specific one, else the pod's IP (`POD_IP`, from the
/// Kubernetes downward API) with the port, else the listen address as it is.
fn advertised(settings: &Settings, api_addr: SocketAddr) -> String {
    let pod_ip = std::env::var("POD_IP").ok();
    let url = advertised_from(
        settings.cluster.advertise_url.as_deref(),
        api_addr,
        pod_ip.as_deref(),
    );
    if url.is_none() {
        tracing::warn!(message = "the API listens on every address and neither cluster.advertise_url nor POD_IP is set: peers are told an address they cannot reach", listen = %api_addr);
    }
    url.unwrap_or_else(|| format!("http://{api_addr}"))
}

/// [`advertised`] from its inputs; `None` when none of them gives a reachable address.
fn advertised_from(
    advertise_url: Option<&str>,
    api_addr: SocketAddr,
    pod_ip: Option<&str>,
) -> Option<String> {
    if let Some(url) = advertise_url {
        return Some(url.to_string());
    }
    if !api_addr.ip().is_unspecified() {
        return Some(format!("http://{api_addr}"));
    }
    pod_ip
        .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| format!("http://{}", SocketAddr::new(ip, api_addr.port())))
}

/// On a PostgreSQL store: this replica joins the pool sharing it, holding no shard yet (the
/// membership loop claims them).
async fn join_pool(
    queue: &Queue,
    settings: &Settings,
) -> Result<Option<crate::store::Pool>, AppError> {
    let Some(shared) = queue.shared() else {
        return Ok(None);
    };
    let leases = shared.leases();
    leases
        .init_shards(settings.cluster.shards)
        .await
        .map_err(|source| AppError::Store {
            path: settings.store.location(),
            source,
        })?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "statusd".into());
    let me = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let own = Arc::new(crate::cluster::Ownership::new(
        crate::cluster::ShardMap::of_settings(settings),
        me.clone(),
        settings.cluster.timing(),
    ));
    shared.fence_by(own.clone());
    tracing::info!(message = "joined the pool sharing the store", member = %me, shards = settings.cluster.shards);
    Ok(Some(crate::store::Pool {
        leases,
        ownership: own,
    }))
}

/// After taking shards over from another replica: wait one request timeout (a report the
/// former owner sent late has landed by then), then report again the intended state of every
/// tenant of those shards, so the platform ends at the latest decision whatever came late.
fn takeover(
    queue: Queue,
    own: Arc<crate::cluster::Ownership>,
    wait: Duration,
    detached: crate::tasks::Detached,
) -> crate::cluster::member::OnTakeover {
    Box::new(move |shards: Vec<u32>| {
        let queue = queue.clone();
        let own = own.clone();
        detached.spawn(async move {
            tokio::time::sleep(wait).await;
            let states = match queue.tenant_states().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(message = "cannot re-assert the tenants of shards taken over", error = %e);
                    return;
                }
            };
            let events: Vec<crate::store::NewEvent> = states
                .into_iter()
                .filter(|t| {
                    let shard = own.map.of(t.account.as_deref());
                    shards.contains(&shard) && own.may_act(shard).is_some()
                })
                .filter_map(|t| t.reassertion())
                .collect();
            let n = events.len();
            for chunk in events.chunks(1000) {
                if let Err(e) = queue.enqueue(chunk.to_vec()).await {
                    tracing::warn!(message = "cannot re-assert the tenants of shards taken over", error = %e);
                    return;
                }
            }
            tracing::info!(
                message = "shards taken over: each tenant's intended state reported again",
                shards = shards.len(),
                tenants = n
            );
        });
    })
}

/// Tenants another replica reported to after it lost their shard (held by this one now): their
/// latest decision is queued to be reported again, after those late reports.
fn late_reports(queue: Queue) -> crate::cluster::member::OnLate {
    Box::new(move |tenants: Vec<uuid::Uuid>| {
        let queue = queue.clone();
        Box::pin(async move {
            let mut events = Vec::new();
            for tenant in &tenants {
                match queue.tenant_state(tenant).await {
                    Ok(Some(state)) => events.extend(state.reassertion()),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(message = "cannot report again after a late report; tried again next round", error = %e);
                        return false;
                    }
                }
            }
            let n = events.len();
            if let Err(e) = queue.enqueue(events).await {
                tracing::warn!(message = "cannot report again after a late report; tried again next round", error = %e);
                return false;
            }
            tracing::info!(
                message = "reports another replica sent late: each tenant's latest decision reported again",
                tenants = n
            );
            true
        })
    })
}

/// Seal again, under the current key and bound to their records, the secrets of the stored
/// accounts sealed in the format before bindings (a migration, once: a record sealed again is
/// not legacy at the next start). Values under the previous key are left to `statusd store
/// rekey`, so replicas not yet given the new key keep opening them during a rolling restart.
/// A failure is logged and left for the next start: the secrets still open as they are.
async fn reseal_accounts(
    queue: &Queue,
    accounts: &Accounts,
    key: &crate::vault::SecretKey,
    stale: &[String],
) {
    let mut done = 0;
    for id in stale {
        let (Some(account), Ok(Some(record))) = (accounts.get(id), queue.stored_account(id).await)
        else {
            continue;
        };
        match crate::accounts::reseal(queue, key, record, |o| o.legacy).await {
            Ok(crate::accounts::Reseal::Sealed(updated)) => {
                let mut a = (*account).clone();
                a.updated_at_ms = updated;
                accounts.insert(a);
                done += 1;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(message = "cannot seal a stored secret again; it still opens as it is", account = %id, error = %e)
            }
        }
    }
    if done > 0 {
        tracing::info!(
            message = "stored secrets sealed again under the current key, bound to their records",
            accounts = done,
            key = %key.id()
        );
    }
}

/// Open the store the settings choose.
pub(crate) async fn open_store(settings: &Settings) -> Result<Queue, AppError> {
    crate::store::chosen::open(settings)
        .await
        .map_err(|source| AppError::Store {
            path: settings.store.location(),
            source,
        })
}

/// Serve the local API on `listener` until the returned token is cancelled.
fn serve_api(
    listener: TcpListener,
    state: ApiState,
    limits: api::ServeLimits,
) -> (CancellationToken, JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(api::serve(
        listener,
        api::router(state),
        limits,
        stop.clone(),
    ));
    (stop, task)
}

/// Compaction, the store's write monitor and, under systemd with a watchdog, its pings.
fn start_background(
    queue: &Queue,
    store_path: &std::path::Path,
    reopen: &CancellationToken,
) -> (CancellationToken, Vec<JoinHandle<()>>) {
    let stop = CancellationToken::new();
    let mut tasks = vec![
        tokio::spawn(compaction_loop(queue.clone(), stop.clone())),
        tokio::spawn(store_write_monitor(
            queue.clone(),
            store_path.to_path_buf(),
            reopen.clone(),
            stop.clone(),
        )),
    ];
    if let Some(interval) = systemd::watchdog_interval() {
        tasks.push(tokio::spawn(systemd::watchdog_loop(
            interval,
            queue.clone(),
            stop.clone(),
        )));
    }
    (stop, tasks)
}

impl Running {
    /// Cancelled once this replica keeps losing shards (never with sled).
    pub fn failing(&self) -> CancellationToken {
        self.queue
            .pool()
            .map(|p| p.ownership.failing.clone())
            .unwrap_or_default()
    }

    /// Stop intake (503), let in-flight reports finish within the grace, stop the rest, flush.
    pub async fn shutdown(self) {
        tracing::info!(message = "shutting down: intake closed, draining delivery");
        self.accepting.store(false, Ordering::Release);
        self.stop_delivery.cancel();
        let _ = self.delivery_task.await;
        if let Some(s) = self.schedules {
            s.stop().await;
        }
        self.reconcilers.stop_runs().await;
        self.stop_background.cancel();
        for t in self.background {
            let _ = t.await;
        }
        self.detached.stop().await;
        // The reports in flight have ended: give the shards back so peers take over at once.
        if let Some(pool) = self.queue.pool() {
            crate::cluster::leave(&*pool.leases, &pool.ownership).await;
        }
        self.stop_api.cancel();
        // Requests in progress get api::SHUTDOWN_GRACE; then the server task ends.
        let _ = self.api_task.await;
        if let Err(e) = self.queue.sync().await {
            tracing::error!(message = "final store flush failed", error = %e);
        }
        self.queue.close();
        tracing::info!(message = "statusd stopped");
    }
}

async fn compaction_loop(queue: Queue, stop: CancellationToken) {
    loop {
        match queue.compact(crate::store::now_ms()).await {
            Ok(n) if n > 0 => tracing::info!(message = "compacted delivered events", removed = n),
            Ok(_) => {}
            Err(e) => tracing::error!(message = "compaction failed", error = %e),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(COMPACTION_INTERVAL) => {}
        }
    }
}

/// Check `store.max_size` once a second.
async fn bound_loop(queue: Queue, metrics: Arc<Metrics>, stop: CancellationToken) {
    use crate::store::BoundState;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(bound) = queue.bound() else { return };
        match bound.check_bound().await {
            Ok(BoundState::Unbounded) => return,
            Ok(BoundState::Reached { size, max }) => tracing::error!(
                message = "the store reached store.max_size: intake answers 507 until delivery frees room; delivered events are compacted away at once",
                size_bytes = size,
                max_bytes = max
            ),
            Ok(BoundState::Resumed { size }) => {
                tracing::info!(message = "the store has room again: intake resumes", size_bytes = size)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(message = "cannot check the store's bound", error = %e),
        }
        metrics.store_full.set(i64::from(queue.is_full()));
    }
}

/// While the store cannot write, try a write of 1 MiB (with fsync) in its directory every
/// second; once one works (space is back), ask for a restart through `reopen`.
async fn store_write_monitor(
    queue: Queue,
    dir: std::path::PathBuf,
    reopen: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if queue.write_error().is_none() {
            continue;
        }
        let probe_dir = dir.clone();
        if let Ok(Ok(())) = tokio::task::spawn_blocking(move || probe_write(&probe_dir)).await {
            tracing::warn!(message = "the store's directory takes writes again; stopping so that the store is opened afresh");
            reopen.cancel();
            return;
        }
    }
}

fn probe_write(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".statusd-write-probe");
    let result = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&vec![0u8; 1 << 20])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!(message = "SIGTERM received"),
        _ = int.recv() => tracing::info!(message = "SIGINT received"),
    }
}

#[cfg(test)]
mod advertise_tests {
    use super::*;

    #[test]
    fn a_replica_advertises_an_address_its_peers_can_reach() {
        let any: SocketAddr = "0.0.0.0:8750".parse().unwrap();
        let one: SocketAddr = "10.0.3.7:8750".parse().unwrap();
        assert_eq!(
            advertised_from(Some("http://statusd-0.statusd:8750"), any, Some("10.1.1.1")),
            Some("http://statusd-0.statusd:8750".into())
        );
        assert_eq!(
            advertised_from(None, one, None),
            Some("http://10.0.3.7:8750".into())
        );
        assert_eq!(
            advertised_from(None, any, Some("10.1.1.1")),
            Some("http://10.1.1.1:8750".into())
        );
        assert_eq!(
            advertised_from(None, "[::]:8750".parse().unwrap(), Some("fd00::5")),
            Some("http://[fd00::5]:8750".into())
        );
        assert_eq!(advertised_from(None, any, None), None);
    }
}
