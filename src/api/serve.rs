//! The accept loop of the local API, on hyper, with the limits axum's own `serve` lacks: a
//! read timeout for headers (hyper's timer) so idle and slow clients are cut off, and a cap on
//! the connections served at once. Past the cap a connection is still answered once, without
//! keep-alive and with a short read timeout, so `/livez` and `/readyz` answer however many
//! clients hold connections open (an orchestrator must never see a healthy daemon as hung).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The read timeout of a connection accepted past the cap.
const OVER_CAP_READ_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub read_timeout: Duration,
}

/// How long requests in progress may take to finish once the API stops; past it they are
/// dropped (an on-demand reconcile, say), so nothing holds the store after the shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serve `router` on `listener` until `stop` fires; then let requests in progress finish
/// within [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or the like: say so, and give the system a moment.
                    tracing::warn!(message = "local API cannot accept a connection", error = %e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = permits.clone().try_acquire_owned().ok();
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let within_cap = permit.is_some();
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(if within_cap {
                    limits.read_timeout
                } else {
                    OVER_CAP_READ_TIMEOUT
                })
                .keep_alive(within_cap);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    // Requests in progress may finish, within a bound: a connection (and the
                    // store it reaches) never outlives the shutdown by more than that.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}
