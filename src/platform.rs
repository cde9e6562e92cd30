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
use crate::config::{IntegrationSettings, Secret};
use crate::event::limits;
use crate::metrics::{Metrics, TokenOutcome};

/// Renew a token when less than this is left (or half its lifetime, if that is shorter).
const RENEW_MARGIN: Duration = Duration::from_secs(15 * 60);
/// Lifetime assumed when the token response names none.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// `Retry-After` values are capped so a hostile or broken header cannot park us for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// The wait before the one retry after a refused token.
pub const AUTH_RETRY_BACKOFF: Backoff =
    Backoff::fixed(Duration::from_millis(200), Duration::from_secs(1));
/// The `uuids` selector takes at most this many ids per call.
pub const UUIDS_PER_CALL: usize = 100;

/// How a failure should be handled. Decided in one place: [`classify_status`] and
/// [`PlatformError::from_transport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 408, 429, 5xx, timeouts, connection errors: try again later.
    Retryable,
    /// 401 after one re-issued token, or the token endpoint refusing the credentials.
    Auth,
    /// 409: stale version or already exists.
    Conflict,
    /// Other 4xx, or a request statusd refuses to send: retrying cannot help.
    Permanent,
}

impl ErrorClass {
    pub fn metric_label(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Auth => "auth",
            ErrorClass::Conflict => "conflict",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// The decoded error envelope `{"error": {"code", "message", "domain", ...}}`, every field optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ErrorBody {
    #[serde(default)]
    pub code: Option<ErrorCode>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub details: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ErrorCode {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Int(i) => write!(f, "{i}"),
            ErrorCode::Str(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlatformError {
    pub class: ErrorClass,
    /// HTTP status, if an answer came.
    pub status: Option<u16>,
    /// What was called, e.g. `POST /api/integration_management/v2/status`.
    pub call: String,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for PlatformError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "{}: HTTP {}: {}", self.call, s, self.message),
            None => write!(f, "{}: {}", self.call, self.message),
        }
    }
}

impl std::error::Error for PlatformError {}

impl PlatformError {
    pub fn is_retryable(&self) -> bool {
        self.class == ErrorClass::Retryable
    }

    /// A failure that says the platform is unavailable (no answer, 5xx, 429) rather than that
    /// this request was wrong: it counts towards the outage breaker.
    pub fn is_outage(&self) -> bool {
        self.class == ErrorClass::Retryable && self.status.is_none_or(|s| s >= 500 || s == 429)
    }

    /// Did the platform answer at all? (For `statusd_platform_up`.)
    pub fn got_answer(&self) -> bool {
        self.status.is_some()
    }

    fn local(call: &str, class: ErrorClass, message: impl Into<String>) -> Self {
        PlatformError {
            class,
            status: None,
            call: call.to_string(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Timeouts and connection errors are retryable; anything else from the transport is too
    /// (it is not the platform refusing us).
    pub fn from_transport(call: &str, e: &reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else if e.is_body() || e.is_decode() {
            "response body unreadable"
        } else {
            "request failed"
        };
        // reqwest errors carry no headers or bodies, so no secret can leak through them. The
        // innermost cause says most ("connection refused", "operation timed out").
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail = s.to_string();
            source = s.source();
        }
        Self::local(call, ErrorClass::Retryable, format!("{kind}: {detail}"))
    }

    /// Decode a non-success answer.
    pub fn from_response(
        call: &str,
        status: StatusCode,
        retry_after: Option<&str>,
        body: &[u8],
    ) -> Self {
        PlatformError {
            class: classify_status(status),
            status: Some(status.as_u16()),
            call: call.to_string(),
            message: describe_error_body(body),
            retry_after: retry_after.and_then(parse_retry_after),
        }
    }
}

/// The one decision of what a status code means.
pub fn classify_status(status: StatusCode) -> ErrorClass {
    match status.as_u16() {
        401 => ErrorClass::Auth,
        409 => ErrorClass::Conflict,
        408 | 429 => ErrorClass::Retryable,
        500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}

/// A readable message from an error body: the envelope, the OAuth form, or the raw text.
pub fn describe_error_body(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: EnvelopeInner,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum EnvelopeInner {
        Object(ErrorBody),
        OAuth(String),
    }
    #[derive(Deserialize)]
    struct OAuthDesc {
        #[serde(default)]
        error_description: Option<String>,
    }
    if let Ok(env) = serde_json::from_slice::<Envelope>(body) {
        match env.error {
            EnvelopeInner::Object(e) => {
                let mut parts = Vec::new();
                if let Some(c) = &e.code {
                    parts.push(format!("code {c}"));
                }
                if let Some(d) = &e.domain {
                    parts.push(format!("({d})"));
                }
                let head = parts.join(" ");
                let msg = e.message.unwrap_or_default();
                let mut s = match (head.is_empty(), msg.is_empty()) {
                    (true, true) => "error without details".to_string(),
                    (true, false) => msg,
                    (false, true) => head,
                    (false, false) => format!("{head}: {msg}"),
                };
                if let Some(details) = e.details.filter(|d| !d.is_null()) {
                    s.push_str(&format!(" details={}", truncate(&details.to_string(), 300)));
                }
                return s;
            }
            EnvelopeInner::OAuth(error) => {
                let desc = serde_json::from_slice::<OAuthDesc>(body)
                    .ok()
                    .and_then(|d| d.error_description);
                return match desc {
                    Some(d) => format!("{error}: {d}"),
                    None => error,
                };
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "empty response body".into()
    } else {
        format!("non-JSON body: {}", truncate(text, 300))
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// `Retry-After` as seconds or an HTTP date, capped.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let d = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = DateTime::parse_from_rfc2822(value)
            .ok()?
            .with_timezone(&Utc);
        (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// Platform timestamps: RFC 3339, or without a zone (taken as UTC), with or without fractions.
pub fn parse_platform_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%.f%:z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

// Wire types ------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub expires_on: Option<i64>,
    #[serde(default)]
    pub expires_in: Option<i64>,
}

/// A tenant as listed; only `id`, `parent_id` and `version` are required, unknown fields are
/// ignored, and enum-like fields stay strings so new values never break decoding.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Tenant {
    pub id: Uuid,
    pub parent_id: Uuid,
    pub version: i64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub brand_enabled: Option<bool>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub deleted_at: Option<String>,
}

impl Tenant {
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.as_deref().is_some_and(|d| !d.is_empty())
    }
    pub fn kind_is(&self, k: &str) -> bool {
        self.kind.as_deref() == Some(k)
    }
}

#[derive(Debug, Deserialize)]
struct TenantPage {
    #[serde(default)]
    items: Vec<Tenant>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Debug, Deserialize)]
struct Paging {
    #[serde(default)]
    cursors: Option<Cursors>,
}

#[derive(Debug, Deserialize)]
struct Cursors {
    #[serde(default)]
    after: Option<String>,
}

/// Which tenants to list.
#[derive(Debug, Clone)]
pub enum TenantSelector {
    SubtreeRoot(Uuid),
    Parent(Uuid),
    Uuids(Vec<Uuid>),
}

#[derive(Debug, Clone)]
pub struct TenantListing {
    pub items: Vec<Tenant>,
    /// The first page's `timestamp`, for the next `updated_since`.
    pub timestamp: Option<String>,
    pub pages: usize,
}

/// One event of a status report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportEvent {
    pub category: String,
    pub action: String,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub activation_event: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub deactivation_event: bool,
}

#[derive(Debug, Clone, Serialize)]
struct NameVersion {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct StatusReport<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    application_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    application_id: Option<&'a str>,
    module: NameVersion,
    #[serde(skip_serializing_if = "Option::is_none")]
    vendor_system: Option<NameVersion>,
    events: &'a [ReportEvent],
}

/// A brand as read: every field kept, known or not, so nothing is lost when it is shown.
pub type Brand = Map<String, Value>;

// The client ------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct ClientOptions {
    pub base_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    pub integration: IntegrationSettings,
}

struct CachedToken {
    access: Secret,
    renew_at: Instant,
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
    integration: IntegrationSettings,
    token: Mutex<Option<CachedToken>>,
    own_tenant: OnceCell<Uuid>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    up: AtomicBool,
}

/// Install the ring provider for rustls once per process (reqwest is built without one).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl PlatformClient {
    pub fn new(opts: ClientOptions, metrics: Arc<Metrics>) -> Result<PlatformClient, String> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            .connect_timeout(Duration::from_secs(10).min(opts.request_timeout))
            .timeout(opts.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(PlatformClient {
            inner: Arc::new(ClientInner {
                http,
                base: opts.base_url.trim_end_matches('/').to_string(),
                client_id: opts.client_id,
                secret: opts.client_secret,
                integration: opts.integration,
                token: Mutex::new(None),
                own_tenant: OnceCell::new(),
                permits: Arc::new(Semaphore::new(opts.max_concurrency.max(1))),
                metrics,
                up: AtomicBool::new(false),
            }),
        })
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
        self.inner.metrics.platform_up.set(up as i64);
    }

    /// A valid access token: the cached one, or one renewal shared by every concurrent caller.
    async fn token(&self) -> Result<Secret, PlatformError> {
        let mut guard = self.inner.token.lock().await;
        if let Some(t) = guard.as_ref() {
            if Instant::now() < t.renew_at {
                return Ok(t.access.clone());
            }
        }
        let fresh = self.issue_token().await;
        self.inner.metrics.count_token_request(match &fresh {
            Ok(_) => TokenOutcome::Success,
            Err(e) if e.class == ErrorClass::Retryable => TokenOutcome::Retryable,
            Err(_) => TokenOutcome::Failure,
        });
        let token = fresh?;
        let access = token.access.clone();
        *guard = Some(token);
        Ok(access)
    }

    /// Forget the token if it is still the one that was refused.
    async fn invalidate(&self, refused: &Secret) {
        let mut guard = self.inner.token.lock().await;
        if guard
            .as_ref()
            .is_some_and(|t| t.access.expose() == refused.expose())
        {
            *guard = None;
        }
    }

    async fn issue_token(&self) -> Result<CachedToken, PlatformError> {
        const CALL: &str = "POST /api/2/idp/token";
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        let resp = self
            .inner
            .http
            .post(format!("{}/api/2/idp/token", self.inner.base))
            .basic_auth(&self.inner.client_id, Some(self.inner.secret.expose()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                self.set_up(false);
                return Err(PlatformError::from_transport(CALL, &e));
            }
        };
        self.set_up(true);
        let status = resp.status();
        let retry_after = header_string(&resp, "retry-after");
        let body = resp
            .bytes()
            .await
            .map_err(|e| PlatformError::from_transport(CALL, &e))?;
        if !status.is_success() {
            let mut err = PlatformError::from_response(CALL, status, retry_after.as_deref(), &body);
            // The token endpoint refusing credentials is a configuration fault, not a bad request.
            if matches!(status.as_u16(), 400 | 401 | 403) {
                err.class = ErrorClass::Auth;
            }
            tracing::error!(message = "token request refused", status = status.as_u16(), error = %err.message);
            return Err(err);
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            PlatformError::local(
                CALL,
                ErrorClass::Retryable,
                format!("token response not understood: {e}"),
            )
        })?;
        let now_unix = Utc::now().timestamp();
        let lifetime = match (parsed.expires_on, parsed.expires_in) {
            (Some(on), _) => Duration::from_secs((on - now_unix).max(0) as u64),
            (None, Some(secs)) => Duration::from_secs(secs.max(0) as u64),
            (None, None) => DEFAULT_TOKEN_LIFETIME,
        };
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
                let _permit = self
                    .inner
                    .permits
                    .acquire()
                    .await
                    .expect("semaphore never closed");
                let resp = build(&self.inner.http)
                    .bearer_auth(token.expose())
                    .send()
                    .await;
                match resp {
                    Ok(r) => {
                        let status = r.status();
                        let headers = r.headers().clone();
                        match r.bytes().await {
                            Ok(b) => Ok((status, headers, b)),
                            Err(e) => Err(PlatformError::from_transport(call, &e)),
                        }
                    }
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
                let path = format!("/api/2/clients/{}", self.inner.client_id);
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

    /// The body statusd sends for a batch of events (exposed for tests and the sandbox docs).
    pub fn status_body(&self, events: &[ReportEvent]) -> Value {
        let i = &self.inner.integration;
        let report = StatusReport {
            application_code: i.application_code.as_deref(),
            application_id: i.application_id.as_deref(),
            module: NameVersion {
                name: i.module_name.clone(),
                version: (!i.module_version.is_empty()).then(|| i.module_version.clone()),
            },
            vendor_system: i.vendor_system_name.as_ref().map(|n| NameVersion {
                name: n.clone(),
                version: i.vendor_system_version.clone(),
            }),
            events,
        };
        serde_json::to_value(report).expect("report serializes")
    }

    /// Report a batch of events for a tenant. Validated before sending: a report the platform
    /// would refuse is a permanent error without a request.
    pub async fn report_status(
        &self,
        tenant: Uuid,
        events: &[ReportEvent],
    ) -> Result<(), PlatformError> {
        const CALL: &str = "POST /api/integration_management/v2/status";
        validate_report(&self.inner.integration, events)
            .map_err(|m| PlatformError::local(CALL, ErrorClass::Permanent, m))?;
        let body = serde_json::to_vec(&self.status_body(events)).expect("report serializes");
        let url = self.url("/api/integration_management/v2/status");
        let tenant = tenant.to_string();
        self.send(CALL, |h| {
            h.post(&url)
                .query(&[("tenantID", tenant.as_str())])
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
        .map(|_| ())
    }

    /// Walk every page of a listing. Next pages send only `after`. A repeated cursor is an error.
    pub async fn list_tenants(
        &self,
        selector: &TenantSelector,
        updated_since: Option<&str>,
        allow_deleted: bool,
    ) -> Result<TenantListing, PlatformError> {
        if let TenantSelector::Uuids(ids) = selector {
            let mut all = TenantListing {
                items: Vec::new(),
                timestamp: None,
                pages: 0,
            };
            for chunk in ids.chunks(UUIDS_PER_CALL) {
                let part = self
                    .list_tenants_one(
                        &TenantSelector::Uuids(chunk.to_vec()),
                        updated_since,
                        allow_deleted,
                    )
                    .await?;
                all.timestamp = all.timestamp.or(part.timestamp);
                all.pages += part.pages;
                all.items.extend(part.items);
            }
            return Ok(all);
        }
        self.list_tenants_one(selector, updated_since, allow_deleted)
            .await
    }

    async fn list_tenants_one(
        &self,
        selector: &TenantSelector,
        updated_since: Option<&str>,
        allow_deleted: bool,
    ) -> Result<TenantListing, PlatformError> {
        const CALL: &str = "GET /api/2/tenants";
        let url = self.url("/api/2/tenants");
        let mut first: Vec<(String, String)> = match selector {
            TenantSelector::SubtreeRoot(id) => vec![("subtree_root_id".into(), id.to_string())],
            TenantSelector::Parent(id) => vec![("parent_id".into(), id.to_string())],
            TenantSelector::Uuids(ids) => vec![(
                "uuids".into(),
                ids.iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )],
        };
        if let Some(since) = updated_since {
            first.push(("updated_since".into(), since.to_string()));
        }
        if allow_deleted {
            first.push(("allow_deleted".into(), "true".into()));
        }
        let mut listing = TenantListing {
            items: Vec::new(),
            timestamp: None,
            pages: 0,
        };
        let mut seen_cursors = std::collections::HashSet::new();
        let mut query = first;
        loop {
            let (_, _, body) = self.send(CALL, |h| h.get(&url).query(&query)).await?;
            let page: TenantPage = serde_json::from_slice(&body).map_err(|e| {
                PlatformError::local(
                    CALL,
                    ErrorClass::Permanent,
                    format!("page not understood: {e}"),
                )
            })?;
            listing.pages += 1;
            if listing.timestamp.is_none() {
                listing.timestamp = page.timestamp;
            }
            listing.items.extend(page.items);
            let next = page
                .paging
                .and_then(|p| p.cursors)
                .and_then(|c| c.after)
                .filter(|a| !a.is_empty());
            match next {
                None => return Ok(listing),
                Some(cursor) => {
                    if !seen_cursors.insert(cursor.clone()) {
                        return Err(PlatformError::local(
                            CALL,
                            ErrorClass::Retryable,
                            format!(
                                "the platform repeated cursor {cursor:?} after {} pages; the walk is incomplete",
                                listing.pages
                            ),
                        ));
                    }
                    query = vec![("after".into(), cursor)];
                }
            }
        }
    }

    /// GET a path and decode its JSON answer; `what` names it in the error.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T, PlatformError> {
        let call = format!("GET {path}");
        let url = self.url(path);
        let (_, _, body) = self.send(&call, |h| h.get(&url)).await?;
        serde_json::from_slice(&body).map_err(|e| {
            PlatformError::local(
                &call,
                ErrorClass::Permanent,
                format!("{what} not understood: {e}"),
            )
        })
    }

    pub async fn get_tenant(&self, id: Uuid) -> Result<Tenant, PlatformError> {
        self.get_json(&format!("/api/2/tenants/{id}"), "tenant")
            .await
    }

    pub async fn get_brand(&self, tenant: Uuid) -> Result<Brand, PlatformError> {
        self.get_json(&format!("/api/2/tenants/{tenant}/brand"), "brand")
            .await
    }

    /// Enable custom branding (version in the query, no body).
    pub async fn enable_brand(&self, tenant: Uuid, version: i64) -> Result<(), PlatformError> {
        self.brand_write(Method::POST, tenant, "", version, None)
            .await
    }

    pub async fn disable_brand(&self, tenant: Uuid, version: i64) -> Result<(), PlatformError> {
        self.brand_write(Method::DELETE, tenant, "", version, None)
            .await
    }

    /// Change only the given fields. `smtp_password` is never sent.
    pub async fn update_brand(
        &self,
        tenant: Uuid,
        version: i64,
        changes: &Brand,
    ) -> Result<(), PlatformError> {
        let mut body = changes.clone();
        body.remove("smtp_password");
        let bytes = serde_json::to_vec(&body).expect("brand serializes");
        self.brand_write(
            Method::PUT,
            tenant,
            "",
            version,
            Some(("application/json", bytes)),
        )
        .await
    }

    pub async fn upload_logo(
        &self,
        tenant: Uuid,
        version: i64,
        png: Vec<u8>,
    ) -> Result<(), PlatformError> {
        self.brand_write(
            Method::POST,
            tenant,
            "/logo",
            version,
            Some(("image/png", png)),
        )
        .await
    }

    async fn brand_write(
        &self,
        method: Method,
        tenant: Uuid,
        suffix: &str,
        version: i64,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(), PlatformError> {
        let path = format!("/api/2/tenants/{tenant}/brand{suffix}");
        let call = format!("{method} {path}");
        let url = self.url(&path);
        let version = version.to_string();
        self.send(&call, |h| {
            let mut rb = h
                .request(method.clone(), &url)
                .query(&[("version", version.as_str())]);
            if let Some((ct, bytes)) = &body {
                rb = rb
                    .header(reqwest::header::CONTENT_TYPE, *ct)
                    .header(reqwest::header::CONTENT_LENGTH, bytes.len())
                    .body(bytes.clone());
            }
            rb
        })
        .await
        .map(|_| ())
    }
}

fn header_string(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Client-side checks of a report against the documented limits (characters, not bytes).
pub fn validate_report(i: &IntegrationSettings, events: &[ReportEvent]) -> Result<(), String> {
    let len = |s: &str| s.chars().count();
    match (&i.application_code, &i.application_id) {
        (Some(_), Some(_)) => return Err("both application_code and application_id are set".into()),
        (None, None) => return Err("neither application_code nor application_id is set".into()),
        (Some(c), None) if len(c) == 0 || len(c) > limits::APPLICATION_CODE => {
            return Err(format!(
                "application_code must be 1 to {} characters",
                limits::APPLICATION_CODE
            ))
        }
        _ => {}
    }
    if len(&i.module_name) == 0 || len(&i.module_name) > limits::NAME {
        return Err(format!(
            "module.name must be 1 to {} characters",
            limits::NAME
        ));
    }
    for (n, e) in events.iter().enumerate() {
        if len(&e.category) == 0 || len(&e.category) > limits::CATEGORY {
            return Err(format!(
                "events[{n}].category must be 1 to {} characters",
                limits::CATEGORY
            ));
        }
        if len(&e.action) == 0 || len(&e.action) > limits::ACTION {
            return Err(format!(
                "events[{n}].action must be 1 to {} characters",
                limits::ACTION
            ));
        }
        if e.activation_event && e.deactivation_event {
            return Err(format!(
                "events[{n}] sets both activation_event and deactivation_event"
            ));
        }
    }
    Ok(())
}
