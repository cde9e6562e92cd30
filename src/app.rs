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

use crate::api::{self, ApiState};
use crate::config::Settings;
use crate::delivery::{Delivery, DeliveryOptions};
use crate::metrics::Metrics;
use crate::platform::{ClientOptions, PlatformClient};
use crate::reconcile::Reconcilers;
use crate::schedule::Schedules;
use crate::store::{Queue, StoreOptions};
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
    #[error("{0}")]
    Setup(String),
}

/// A started daemon.
pub struct Running {
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub api_addr: SocketAddr,
    pub client: PlatformClient,
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
}

/// Run the daemon until `shutdown` resolves, then stop gracefully.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let running = start(settings, None, true).await?;
    systemd::notify_ready();
    tracing::info!(message = "statusd ready", api = %running.api_addr, version = env!("CARGO_PKG_VERSION"));
    shutdown.await;
    systemd::notify_stopping();
    running.shutdown().await;
    Ok(())
}

/// Start every part. `listener` lets tests and the demo bind port 0 themselves; `schedules`
/// turns the cron triggers on.
pub async fn start(
    settings: Settings,
    listener: Option<TcpListener>,
    schedules: bool,
) -> Result<Running, AppError> {
    let settings = Arc::new(settings);
    let metrics = Arc::new(Metrics::new());
    let store_path = settings.store.path.clone();
    let queue = {
        let path = store_path.clone();
        let opts = StoreOptions {
            cache_capacity_mb: settings.store.cache_capacity_mb,
            delivered_retention: settings.store.delivered_retention,
        };
        tokio::task::spawn_blocking(move || Queue::open(&path, opts))
            .await
            .map_err(|e| AppError::Setup(format!("store open task failed: {e}")))?
            .map_err(|source| AppError::Store {
                path: store_path.display().to_string(),
                source,
            })?
    };
    let p = &settings.platform;
    let client = PlatformClient::new(
        ClientOptions {
            base_url: p
                .base_url
                .clone()
                .ok_or_else(|| AppError::Setup("platform.base_url is not set".into()))?,
            client_id: p
                .client_id
                .clone()
                .ok_or_else(|| AppError::Setup("platform.client_id is not set".into()))?,
            client_secret: p
                .client_secret
                .clone()
                .ok_or_else(|| AppError::Setup("platform.client_secret is not set".into()))?,
            request_timeout: p.request_timeout,
            max_concurrency: p.max_concurrency,
            integration: settings.integration.clone(),
        },
        metrics.clone(),
    )
    .map_err(AppError::Setup)?;
    let delivery = Delivery::new(
        queue.clone(),
        client.clone(),
        metrics.clone(),
        DeliveryOptions::from_settings(&settings)
            .map_err(|e| AppError::Setup(format!("delivery.initial_backoff: {e}")))?,
    );
    let reconcilers = Reconcilers::new(
        queue.clone(),
        client.clone(),
        metrics.clone(),
        settings.clone(),
    );
    let accepting = Arc::new(AtomicBool::new(true));

    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(settings.api.listen)
            .await
            .map_err(|source| AppError::Listen {
                addr: settings.api.listen,
                source,
            })?,
    };
    let api_addr = listener
        .local_addr()
        .map_err(|e| AppError::Setup(e.to_string()))?;
    let state = ApiState {
        queue: queue.clone(),
        metrics: metrics.clone(),
        token: settings.api.token.clone(),
        accepting: accepting.clone(),
        delivery: Some(delivery.clone()),
        client: Some(client.clone()),
        reconcilers: Some(reconcilers.clone()),
    };
    let stop_api = CancellationToken::new();
    let api_task = {
        let stop = stop_api.clone();
        let router = api::router(state);
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(message = "local API stopped with an error", error = %e);
            }
        })
    };

    let stop_delivery = CancellationToken::new();
    let delivery_task = tokio::spawn(delivery.clone().run(stop_delivery.clone()));

    let stop_background = CancellationToken::new();
    let mut background = Vec::new();
    background.push(tokio::spawn(compaction_loop(
        queue.clone(),
        stop_background.clone(),
    )));
    if let Some(interval) = systemd::watchdog_interval() {
        background.push(tokio::spawn(systemd::watchdog_loop(
            interval,
            queue.clone(),
            stop_background.clone(),
        )));
    }
    let schedules = if schedules {
        let s = Schedules::start(&settings, reconcilers.clone())
            .await
            .map_err(AppError::Setup)?;
        Some(s)
    } else {
        None
    };
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
    })
}

impl Running {
    /// Stop intake (503), let in-flight reports finish within the grace, stop the rest, flush.
    pub async fn shutdown(self) {
        tracing::info!(message = "shutting down: intake closed, draining delivery");
        self.accepting.store(false, Ordering::Release);
        self.stop_delivery.cancel();
        let _ = self.delivery_task.await;
        if let Some(s) = self.schedules {
            s.stop().await;
        }
        self.stop_background.cancel();
        for t in self.background {
            let _ = t.await;
        }
        self.stop_api.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.api_task).await;
        if let Err(e) = self.queue.sync().await {
            tracing::error!(message = "final store flush failed", error = %e);
        }
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
