//! The platform client: token lifecycle, status reports, tenants, branding, and the one place
//! that decodes and classifies the platform's errors. Wire types live here. Knows nothing of
//! sled or axum.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, OnceCell, Semaphore};
use tokio::time::Instant;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::{Credentials, IntegrationSettings, Secret};
use crate::event::limits;
use crate::metrics::{label, Metrics, TokenOutcome};

/// Renew a token when less than this is left (or half its lifetime, if that is shorter).
const RENEW_MARGIN: Duration = Duration::from_secs(15 * 60);
/// Lifetime assumed when the token response names none.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest token lifetime believed; a longer one (or an absurd `expires_in`) is taken as
/// this, so no answer can overflow a deadline.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long the token endpoint is left alone after it refused the credentials: growing from
/// 10 s to 30 min, at least half of each step, so that a wrong secret costs at most a handful of
/// token requests a minute whatever the number of lanes (the endpoint is shared and
/// rate-limited).
pub const TOKEN_REFUSAL_BACKOFF: Backoff =
    Backoff::fixed(Duration::from_secs(10), Duration::from_secs(30 * 60));
pub use crate::config::MAX_RETRY_AFTER;
/// The wait before the one retry after a refused token.
pub const AUTH_RETRY_BACKOFF: Backoff =
    Backoff::fixed(Duration::from_millis(200), Duration::from_secs(1));
/// The most of one answer statusd reads; a larger one is an error of that request, so a broken
/// or hostile endpoint cannot fill the memory.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// The `uuids` selector takes at most this many ids per call.
pub const UUIDS_PER_CALL: usize = 100;

mod branding;
mod errors;
mod fusion;
mod outbound;
mod status;
mod tenants;
mod validate;
mod wire;

pub use errors::*;
pub use fusion::{FusionClient, FusionOptions, FusionState, LoginOutcome};
pub use outbound::{http_client, segment, HostPolicy, HttpClientError, HttpOptions, Refused};
pub use status::validate_report;
pub use validate::{Invalid, Validated};
pub use wire::*;

// The client ------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct ClientOptions {
    pub base_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Which token endpoint the id and secret are for.
    pub credentials: Credentials,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    pub integration: IntegrationSettings,
}

struct CachedToken {
    access: Secret,
    renew_at: Instant,
}

/// The token state every caller shares: the token in use, or the endpoint's last refusal of
/// the credentials and when it may be asked again.
#[derive(Default)]
struct TokenState {
    cached: Option<CachedToken>,
    refused: Option<Refusal>,
}

struct Refusal {
    error: PlatformError,
    at: chrono::DateTime<Utc>,
    failures: u32,
    until: Instant,
}

/// The credentials as the token endpoint last judged them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuthFailure {
    /// The platform's answer.
    pub error: String,
    /// When it last refused them (RFC 3339).
    pub since: String,
    /// Refusals in a row.
    pub failures: u32,
}

/// A token's lifetime from its answer: `expires_in` when present (it does not depend on the
/// clocks agreeing), else `expires_on` against `now_unix` (the platform's `Date` when it sent
/// one, else this host's clock), else an hour; never more than a day.
pub fn token_lifetime(expires_in: Option<i64>, expires_on: Option<i64>, now_unix: i64) -> Duration {
    let secs = match (expires_in, expires_on) {
        (Some(secs), _) => secs,
        (None, Some(on)) => on.saturating_sub(now_unix),
        (None, None) => return DEFAULT_TOKEN_LIFETIME,
    };
    Duration::from_secs(secs.clamp(0, MAX_TOKEN_LIFETIME.as_secs() as i64) as u64)
}

/// One shared client for every platform call. Cheap to clone.
#[derive(Clone)]
pub struct PlatformClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: reqwest::Client,
    base: String,
    client_id: String,
    secret: Secret,
    credentials: Credentials,
    /// The host of the data-center URL: the `datacenter` label of its metrics.
    datacenter: String,
    integration: IntegrationSettings,
    /// The token state: held only to read or write it, never across a request, so probes and
    /// lists read it at once whatever the token endpoint is doing.
    token: std::sync::Mutex<TokenState>,
    /// Held by the one caller renewing the token (the others wait for its answer).
    issuing: Mutex<()>,
    own_tenant: OnceCell<Uuid>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    up: AtomicBool,
    /// Set once the account is in use: until then (while it is being validated) its client
    /// leaves nothing in the metrics, so a refused address leaves no trace.
    enlisted: AtomicBool,
    /// Why no request may be sent at all (its host is not allowed, its secret does not open
    /// for its record): every call fails at once with this, as a refusal of the credentials.
    blocked: std::sync::OnceLock<String>,
}

/// The host (and port, when given) of a data-center URL: how metrics and status pages name it.
pub fn datacenter_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
        })
        .unwrap_or_else(|| url.to_string())
}

/// Install the ring provider for rustls once per process (reqwest is built without one).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl PlatformClient {
    pub fn new(
        opts: ClientOptions,
        metrics: Arc<Metrics>,
    ) -> Result<PlatformClient, HttpClientError> {
        let http = http_client(&HttpOptions::plain(opts.request_timeout), None)?;
        let permits = Arc::new(Semaphore::new(opts.max_concurrency.max(1)));
        Ok(PlatformClient::with_http(opts, http, permits, metrics))
    }

    /// A client on a shared HTTP client (its connection pool and TLS set-up) and shared
    /// permits (the requests in flight to its data center): what every account of a daemon
    /// uses, so an account costs its token and little else.
    pub fn with_http(
        opts: ClientOptions,
        http: reqwest::Client,
        permits: Arc<Semaphore>,
        metrics: Arc<Metrics>,
    ) -> PlatformClient {
        PlatformClient {
            inner: Arc::new(ClientInner {
                http,
                base: opts.base_url.trim_end_matches('/').to_string(),
                client_id: opts.client_id,
                secret: opts.client_secret,
                credentials: opts.credentials,
                datacenter: datacenter_of(&opts.base_url),
                integration: opts.integration,
                token: Default::default(),
                issuing: Mutex::new(()),
                own_tenant: OnceCell::new(),
                permits,
                metrics,
                up: AtomicBool::new(false),
                enlisted: AtomicBool::new(true),
                blocked: Default::default(),
            }),
        }
    }

    /// A client that must not send anything: every call fails at once with `why` (the first
    /// reason given stands).
    pub fn blocked(self, why: String) -> PlatformClient {
        let _ = self.inner.blocked.set(why);
        self
    }

    /// A client on probation (an account being validated): it leaves nothing in the metrics
    /// until [`PlatformClient::enlist`].
    pub fn on_probation(self) -> PlatformClient {
        self.inner.enlisted.store(false, Ordering::Relaxed);
        self
    }

    /// The account is in use: its client's figures show from now on.
    pub fn enlist(&self) {
        self.inner.enlisted.store(true, Ordering::Relaxed);
    }

    /// The permits of its data center (shared by the accounts there).
    pub fn permits(&self) -> Arc<Semaphore> {
        self.inner.permits.clone()
    }

    pub fn datacenter(&self) -> &str {
        &self.inner.datacenter
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// True when the last platform call got an answer.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool) {
        self.inner.up.store(up, Ordering::Relaxed);
        if !self.inner.enlisted.load(Ordering::Relaxed) {
            return;
        }
        self.inner
            .metrics
            .platform_up
            .get_or_create(&label("datacenter", self.inner.datacenter.as_str()))
            .set(up as i64);
    }

    /// A valid access token: the cached one, or one renewal shared by every concurrent caller.
    /// While the endpoint's last refusal of the credentials is recent, that refusal is the
    /// answer, without a request.
    async fn token(&self) -> Result<Secret, PlatformError> {
        if let Some(answer) = self.token_at_hand() {
            return answer;
        }
        let _issuing = self.inner.issuing.lock().await;
        // Another caller may have renewed it (or been refused) while this one waited.
        if let Some(answer) = self.token_at_hand() {
            return answer;
        }
        let fresh = self.issue_token().await;
        let outcome = match &fresh {
            Ok(_) => TokenOutcome::Success,
            Err(e) if e.class == ErrorClass::Retryable => TokenOutcome::Retryable,
            Err(_) => TokenOutcome::Failure,
        };
        if self.inner.enlisted.load(Ordering::Relaxed) {
            self.inner
                .metrics
                .count_token_request(outcome, &self.inner.datacenter);
        }
        let mut state = self.state();
        match fresh {
            Ok(token) => {
                if state.refused.take().is_some() {
                    tracing::info!(message = "the token endpoint accepts the credentials again");
                }
                let access = token.access.clone();
                state.cached = Some(token);
                Ok(access)
            }
            Err(e) if e.class == ErrorClass::Auth => {
                let failures = state.refused.as_ref().map_or(0, |r| r.failures) + 1;
                let wait =
                    TOKEN_REFUSAL_BACKOFF.delay_at_least_half(failures - 1, &mut rand::rng());
                tracing::error!(
                    message = "the token endpoint refused the credentials; not asking again before the wait is over",
                    status = e.status,
                    failures,
                    retry_in_s = wait.as_secs(),
                    error = %e.message
                );
                state.refused = Some(Refusal {
                    error: e.clone(),
                    at: Utc::now(),
                    failures,
                    until: Instant::now() + wait,
                });
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The token state, for a read or a write that never waits on a request.
    fn state(&self) -> std::sync::MutexGuard<'_, TokenState> {
        self.inner
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The answer without a request: the cached token, or the standing refusal.
    fn token_at_hand(&self) -> Option<Result<Secret, PlatformError>> {
        let state = self.state();
        if let Some(t) = state.cached.as_ref() {
            if Instant::now() < t.renew_at {
                return Some(Ok(t.access.clone()));
            }
        }
        match state.refused.as_ref() {
            Some(r) if Instant::now() < r.until => Some(Err(r.error.clone())),
            _ => None,
        }
    }

    /// Until when the token endpoint's refusal of the credentials stands (no token in hand):
    /// no request of this account can go before then.
    pub fn refused_until(&self) -> Option<Instant> {
        let state = self.state();
        if state
            .cached
            .as_ref()
            .is_some_and(|t| Instant::now() < t.renew_at)
        {
            return None;
        }
        state
            .refused
            .as_ref()
            .map(|r| r.until)
            .filter(|until| Instant::now() < *until)
    }

    /// The credentials' refusal by the token endpoint, while it stands.
    pub async fn auth_failure(&self) -> Option<AuthFailure> {
        let state = self.state();
        state.refused.as_ref().map(|r| AuthFailure {
            error: r.error.to_string(),
            since: r.at.to_rfc3339(),
            failures: r.failures,
        })
    }

    /// The token as the status pages show it: `ok` with a token in hand, `failing` while the
    /// credentials are refused, `unknown` before the first use.
    pub async fn token_state(&self) -> &'static str {
        let state = self.state();
        if state.refused.is_some() {
            "failing"
        } else if state.cached.is_some() {
            "ok"
        } else {
            "unknown"
        }
    }

    /// Forget the token if it is still the one that was refused.
    async fn invalidate(&self, refused: &Secret) {
        let mut state = self.state();
        if state
            .cached
            .as_ref()
            .is_some_and(|t| t.access.expose() == refused.expose())
        {
            state.cached = None;
        }
    }

    /// One of the permits that bound the requests in flight, of every kind together.
    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.inner
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    async fn issue_token(&self) -> Result<CachedToken, PlatformError> {
        let path = self.inner.credentials.token_path();
        let call = format!("POST {path}");
        let call = call.as_str();
        if let Some(why) = self.inner.blocked.get() {
            return Err(PlatformError::local(
                call,
                ErrorClass::Auth,
                format!("refused: {why}"),
            ));
        }
        let _permit = self.permit().await;
        let resp = self
            .inner
            .http
            .post(format!("{}{path}", self.inner.base))
            .basic_auth(&self.inner.client_id, Some(self.inner.secret.expose()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                self.set_up(false);
                return Err(PlatformError::from_transport(call, &e));
            }
        };
        self.set_up(true);
        let status = resp.status();
        let retry_after = header_string(&resp, "retry-after");
        // The platform's own time, so that `expires_on` is read against the clock that set it.
        let platform_now = header_string(&resp, "date")
            .and_then(|d| DateTime::parse_from_rfc2822(&d).ok())
            .map(|d| d.timestamp());
        if status.is_redirection() {
            return Err(PlatformError::redirect(
                call,
                status,
                header_string(&resp, "location").as_deref(),
            ));
        }
        let body = read_capped(resp, call).await?;
        if !status.is_success() {
            let err =
                PlatformError::from_token_response(call, status, retry_after.as_deref(), &body);
            if err.class != ErrorClass::Auth {
                tracing::warn!(message = "token request failed", status = status.as_u16(), error = %err.message);
            }
            return Err(err);
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            PlatformError::local(
                call,
                ErrorClass::Retryable,
                format!("token response not understood: {e}"),
            )
        })?;
        let lifetime = token_lifetime(
            parsed.expires_in,
            parsed.expires_on,
            platform_now.unwrap_or_else(|| Utc::now().timestamp()),
        );
        let margin = RENEW_MARGIN.min(lifetime / 2);
        tracing::debug!(
            message = "access token issued",
            lifetime_s = lifetime.as_secs()
        );
        Ok(CachedToken {
            access: Secret::new(parsed.access_token),
            renew_at: Instant::now() + lifetime.saturating_sub(margin),
        })
    }

    /// Send an authorised request: one permit, the shared token, and on 401 one re-issue and
    /// one retry. `build` is called per attempt so bodies are never lost on the retry.
    async fn send<F>(
        &self,
        call: &str,
        build: F,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, bytes::Bytes), PlatformError>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        for attempt in 0..2 {
            let token = self.token().await?;
            let result = {
                let _permit = self.permit().await;
                let resp = build(&self.inner.http)
                    .bearer_auth(token.expose())
                    .send()
                    .await;
                match resp {
                    Ok(r) => read_answer(r, call).await,
                    Err(e) => Err(PlatformError::from_transport(call, &e)),
                }
            };
            let (status, headers, body) = match result {
                Ok(v) => v,
                Err(e) => {
                    self.set_up(false);
                    return Err(e);
                }
            };
            self.set_up(!status.is_server_error());
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                tracing::info!(message = "token refused, issuing a new one", call);
                self.invalidate(&token).await;
                // Every retry waits, this one too: a platform that refuses every token must
                // not see a burst of re-issues and retries.
                let wait = AUTH_RETRY_BACKOFF.delay(0, &mut rand::rng());
                tokio::time::sleep(wait).await;
                continue;
            }
            if status.is_success() {
                return Ok((status, headers, body));
            }
            let retry_after = headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok());
            let err = PlatformError::from_response(call, status, retry_after, &body);
            tracing::debug!(message = "platform refused a call", call, status = status.as_u16(), error = %err.message);
            return Err(err);
        }
        unreachable!("the loop returns on its second pass")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.inner.base, path)
    }

    /// The API client's own tenant (cached after the first answer).
    pub async fn own_tenant_id(&self) -> Result<Uuid, PlatformError> {
        self.inner
            .own_tenant
            .get_or_try_init(|| async {
                #[derive(Deserialize)]
                struct ClientInfo {
                    tenant_id: Uuid,
                }
                let path = format!("/api/2/clients/{}", segment(&self.inner.client_id));
                let call = format!("GET {path}");
                let url = self.url(&path);
                let (_, _, body) = self.send(&call, |h| h.get(&url)).await?;
                let info: ClientInfo = serde_json::from_slice(&body).map_err(|e| {
                    PlatformError::local(
                        &call,
                        ErrorClass::Permanent,
                        format!("answer not understood: {e}"),
                    )
                })?;
                Ok(info.tenant_id)
            })
            .await
            .copied()
    }
}

fn header_string(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// An answer that is not a redirect (statusd follows none: a 3xx is an error naming the status
/// and where it pointed), with its body read up to [`MAX_ANSWER_BYTES`].
pub(crate) async fn read_answer(
    resp: reqwest::Response,
    call: &str,
) -> Result<(StatusCode, reqwest::header::HeaderMap, bytes::Bytes), PlatformError> {
    let status = resp.status();
    if status.is_redirection() {
        return Err(PlatformError::redirect(
            call,
            status,
            header_string(&resp, "location").as_deref(),
        ));
    }
    let headers = resp.headers().clone();
    read_capped(resp, call).await.map(|b| (status, headers, b))
}

/// An answer's body, refused past [`MAX_ANSWER_BYTES`].
async fn read_capped(
    mut resp: reqwest::Response,
    call: &str,
) -> Result<bytes::Bytes, PlatformError> {
    let too_large = || {
        PlatformError::local(
            call,
            ErrorClass::Retryable,
            format!(
                "the answer is larger than {} MiB; not read",
                MAX_ANSWER_BYTES >> 20
            ),
        )
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| PlatformError::from_transport(call, &e))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
