//! The sandbox platform: a strict emulation of the platform endpoints statusd uses, for the
//! tests, `statusd demo` and integration developers without platform credentials.
//!
//! It validates what it receives as the platform documents it, keeps what it received for
//! inspection under `/_sandbox/`, and takes fault injection there. It knows nothing of the
//! daemon's internals: it is a separate HTTP server that only speaks the wire protocol.

// Handlers return early with a ready answer; the size of `Response` on that cold path is fine.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::event::limits;

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub client_id: String,
    pub client_secret: String,
    pub token_ttl: Duration,
    pub tenants: usize,
    pub page_limit: usize,
    pub seed: u64,
    /// The Fusion user the sandbox accepts.
    pub fusion_username: String,
    pub fusion_password: String,
    /// Trust every caller (no second factor).
    pub fusion_trusted: bool,
    pub fusion_tenants: usize,
    /// Subscriptions of each Fusion tenant.
    pub fusion_subscriptions: usize,
    pub fusion_access_ttl: Duration,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            client_id: Uuid::new_v4().to_string(),
            client_secret: Uuid::new_v4().simple().to_string(),
            token_ttl: Duration::from_secs(7200),
            tenants: 50,
            page_limit: 100,
            seed: 42,
            fusion_username: "fusion-api".into(),
            fusion_password: Uuid::new_v4().simple().to_string(),
            fusion_trusted: false,
            fusion_tenants: 2,
            fusion_subscriptions: 3,
            fusion_access_ttl: Duration::from_secs(900),
        }
    }
}

/// A fault to inject into the next matching requests.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Fault {
    /// Answer with this status (with the error envelope) instead of handling the request.
    #[serde(default)]
    pub status: Option<u16>,
    /// `Retry-After` header to send with `status` (seconds, or an HTTP date as text).
    #[serde(default)]
    pub retry_after: Option<String>,
    /// Wait this long before answering (or before dropping).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Close the connection without an answer.
    #[serde(default)]
    pub drop_connection: bool,
    /// Invalidate every issued token before handling the request.
    #[serde(default)]
    pub expire_tokens: bool,
    /// Apply to this many matching requests (default: unlimited until cleared).
    #[serde(default)]
    pub count: Option<u64>,
    /// Apply to this fraction (0..1) of matching requests (default: all).
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Only requests whose path contains this text.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Only requests whose query contains this text (e.g. a tenant id).
    #[serde(default)]
    pub query_contains: Option<String>,
    /// Answer with this JSON body (status 200, or `status` when given) instead of handling the
    /// request: an odd answer of the platform, e.g. a token with an absurd lifetime.
    #[serde(default)]
    pub body: Option<Value>,
}

/// One status report the sandbox accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceivedReport {
    pub seq: u64,
    pub tenant_id: Uuid,
    pub body: Value,
    pub received_at: String,
}

mod auth;
mod branding;
mod fusion;
mod inspect;
mod serve;
mod state;
mod status;
mod tenants;

use auth::*;
use branding::*;
pub use fusion::FUSION_INSTANCE;
use fusion::*;
use inspect::*;
use serve::*;
use state::*;
pub use status::validate_status_body;
use status::*;
use tenants::*;

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    pub url: String,
    pub addr: SocketAddr,
    pub client_id: String,
    pub client_secret: String,
    pub root_tenant: Uuid,
    state: Shared,
    stop: CancellationToken,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Sandbox {
    /// Start on 127.0.0.1 with a free port.
    pub async fn start(opts: SandboxOptions) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, opts).await
    }

    pub async fn start_on(listener: TcpListener, opts: SandboxOptions) -> std::io::Result<Sandbox> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(SbState::new(opts.clone())));
        let root = state.lock().expect("sandbox lock").root;
        let stop = CancellationToken::new();
        let router = router(state.clone());
        tokio::spawn(serve(listener, router, state.clone(), stop.clone()));
        Ok(Sandbox {
            url: format!("http://{addr}"),
            addr,
            client_id: opts.client_id,
            client_secret: opts.client_secret,
            root_tenant: root,
            state,
            stop,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut SbState) -> T) -> T {
        f(&mut self.state.lock().expect("sandbox lock"))
    }

    pub fn reports(&self) -> Vec<ReceivedReport> {
        self.with(|s| s.reports.clone())
    }

    pub fn inject(&self, fault: Fault) {
        self.with(|s| s.faults.push_back(fault));
    }

    pub fn clear_faults(&self) {
        self.with(|s| s.faults.clear());
    }

    pub fn stats(&self) -> SandboxStats {
        self.with(|s| s.stats.clone())
    }

    /// Requests whose endpoint name contains `what` (e.g. "status", "token", "tenants").
    pub fn requests_to(&self, what: &str) -> u64 {
        self.with(|s| {
            s.stats
                .by_endpoint
                .iter()
                .filter(|(k, _)| k.contains(what))
                .map(|(_, v)| v)
                .sum()
        })
    }

    /// Every access token issued so far, expired ones included.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.with(|s| s.issued.clone())
    }

    pub fn expire_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    /// Create an API client in `tenant` (as a partner does in its portal): its id and secret.
    pub fn create_client(&self, tenant: Uuid) -> (String, String) {
        self.with(|s| {
            let id = Uuid::from_u128(s.rng.random()).to_string();
            let secret = s.add_client(id.clone(), tenant);
            (id, secret)
        })
    }

    /// Give a client a new secret: the old one and the client's tokens stop working.
    pub fn reset_secret(&self, client_id: &str) -> Option<String> {
        self.with(|s| s.reset_client(client_id))
    }

    /// The Fusion tenants and their subscription ids.
    pub fn fusion_tenants(&self) -> Vec<(Uuid, Vec<i64>)> {
        self.with(|s| {
            s.fusion
                .tenants
                .iter()
                .map(|(t, v)| (*t, v.clone()))
                .collect()
        })
    }

    /// One part of a subscription's branding as stored (secrets in clear).
    pub fn fusion_part(&self, tenant: Uuid, sub: i64, part: &str) -> Map<String, Value> {
        self.with(|s| s.fusion.part(tenant, sub, part))
    }

    /// Change a part behind statusd's back, as an operator in the portal would.
    pub fn set_fusion_part(&self, tenant: Uuid, sub: i64, part: &str, value: Map<String, Value>) {
        self.with(|s| {
            s.fusion
                .config
                .insert((tenant, sub, part.to_string()), value)
        });
    }

    /// The Fusion password the sandbox accepts.
    pub fn fusion_password(&self) -> String {
        self.with(|s| s.fusion.password.clone())
    }

    /// The second-factor code a login must present (printed at start).
    pub fn fusion_code(&self) -> String {
        self.with(|s| s.fusion.code.clone())
    }

    /// Logins (POST /auth/login) and branding writes received.
    pub fn fusion_counts(&self) -> (u64, u64) {
        self.with(|s| (s.fusion.logins, s.fusion.writes))
    }

    /// Expire every Fusion access token (refresh tokens stay valid).
    pub fn expire_fusion_access(&self) {
        self.with(|s| s.fusion.access.clear());
    }

    /// Tokens issued to a client that still work.
    pub fn live_tokens_of(&self, client_id: &str) -> usize {
        let now = chrono::Utc::now().timestamp();
        self.with(|s| {
            s.tokens
                .values()
                .filter(|(exp, c)| *exp > now && c == client_id)
                .count()
        })
    }

    /// Every tenant id, with its kind, live or deleted.
    pub fn tenant_ids(&self, kind: Option<&str>) -> Vec<Uuid> {
        self.with(|s| {
            s.tenants
                .iter()
                .filter(|t| t.deleted_at.is_none())
                .filter(|t| kind.is_none_or(|k| t.kind == k))
                .map(|t| t.id)
                .collect()
        })
    }

    pub fn brand(&self, tenant: Uuid) -> Option<Map<String, Value>> {
        self.with(|s| s.brands.get(&tenant).cloned())
    }

    pub fn logo(&self, tenant: Uuid) -> Option<Vec<u8>> {
        self.with(|s| s.logos.get(&tenant).cloned())
    }

    pub fn tenant_version(&self, tenant: Uuid) -> Option<i64> {
        self.with(|s| s.index.get(&tenant).map(|i| s.tenants[*i].version))
    }

    /// Times a brand write carried `smtp_password` (a client must never send the empty read-back).
    pub fn smtp_password_writes(&self) -> u64 {
        self.with(|s| s.smtp_password_writes)
    }

    /// Change a tenant as an operator would on the platform (bumps version and updated_at).
    pub fn mutate_tenant(&self, tenant: Uuid, change: TenantChange) -> bool {
        self.with(|s| s.mutate(tenant, change))
    }

    /// Add a child tenant under `parent`.
    pub fn add_tenant(&self, parent: Uuid, kind: &str, name: &str) -> Uuid {
        self.with(|s| {
            let id = Uuid::from_u128(s.rng.random());
            s.push_tenant(id, parent, kind, name.to_string());
            id
        })
    }
}

/// A change made through `/_sandbox/tenants/{id}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TenantChange {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub deleted: Option<bool>,
    #[serde(default)]
    pub name: Option<String>,
}
