//! The Netaxis Fusion client: its own token lifecycle (a login that may ask for a second
//! factor, an access token renewed with the refresh token, a new login only when that is
//! refused) beside the Acronis one, sharing the HTTP client, the error classification, the capped
//! answer reader and the refusal backoff.
//!
//! A login the platform does not trust answers a `2fa_payload` instead of tokens: then nothing
//! logs in again by itself (each attempt would send the user a new code) until `statusd fusion
//! login` completes it with the code.

use super::*;
use serde_json::json;

/// What the Fusion session is, as the status pages show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionState {
    /// Not used yet.
    Unknown,
    LoggedIn,
    /// The platform asks for a second factor: `statusd fusion login`.
    CodeRequired,
    /// The username or password is refused.
    Refused,
}

impl FusionState {
    pub fn as_str(self) -> &'static str {
        match self {
            FusionState::Unknown => "unknown",
            FusionState::LoggedIn => "logged_in",
            FusionState::CodeRequired => "code_required",
            FusionState::Refused => "refused",
        }
    }
}

#[derive(Default)]
struct Session {
    access: Option<Secret>,
    refresh: Option<Secret>,
    /// The payload of a login waiting for its second factor.
    pending_2fa: Option<Secret>,
    code_required: bool,
    refused: Option<Refusal>,
    /// The refresh token changed since `take_refresh_change` was last asked.
    refresh_changed: bool,
}

pub struct FusionOptions {
    pub base_url: String,
    pub draas_instance: String,
    pub username: String,
    pub password: Secret,
}

#[derive(Clone)]
pub struct FusionClient {
    inner: Arc<FusionInner>,
}

struct FusionInner {
    http: reqwest::Client,
    base: String,
    instance: String,
    username: String,
    password: Secret,
    session: Mutex<Session>,
    permits: Arc<Semaphore>,
}

/// The answer of a login or of its second factor.
#[derive(Deserialize)]
struct LoginAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default, rename = "2fa_payload")]
    payload: Option<String>,
}

/// How a login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    LoggedIn,
    CodeRequired,
}

const LOGIN_HINT: &str = "run `statusd fusion login`";

impl FusionClient {
    pub fn new(opts: FusionOptions, http: reqwest::Client, max_concurrency: usize) -> FusionClient {
        FusionClient {
            inner: Arc::new(FusionInner {
                http,
                base: opts.base_url.trim_end_matches('/').to_string(),
                instance: opts.draas_instance,
                username: opts.username,
                password: opts.password,
                session: Mutex::new(Session::default()),
                permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
            }),
        }
    }

    /// A refresh token kept from an earlier run (the store's).
    pub async fn resume(&self, refresh: Secret) {
        let mut s = self.inner.session.lock().await;
        s.refresh = Some(refresh);
    }

    /// The refresh token, when it changed since the last call (to keep it in the store).
    pub async fn take_refresh_change(&self) -> Option<Option<Secret>> {
        let mut s = self.inner.session.lock().await;
        std::mem::take(&mut s.refresh_changed).then(|| s.refresh.clone())
    }

    pub async fn state(&self) -> FusionState {
        let s = self.inner.session.lock().await;
        if s.code_required {
            FusionState::CodeRequired
        } else if s.refused.is_some() {
            FusionState::Refused
        } else if s.access.is_some() || s.refresh.is_some() {
            FusionState::LoggedIn
        } else {
            FusionState::Unknown
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v01{path}", self.inner.base)
    }

    /// A path under the provider's DRaaS instance.
    pub fn draas(&self, rest: &str) -> String {
        format!("/draas/{}{rest}", super::segment(&self.inner.instance))
    }

    fn auth_error(call: &str, message: String) -> PlatformError {
        PlatformError::local(call, ErrorClass::Auth, message)
    }

    /// A login asked for by an operator (`statusd fusion login`): made now, whatever the
    /// backoff; with `code`, the second factor of the pending login (or of a new one).
    pub async fn login_now(&self, code: Option<&str>) -> Result<LoginOutcome, PlatformError> {
        let mut s = self.inner.session.lock().await;
        s.refused = None;
        match code {
            None => self.login(&mut s).await,
            Some(code) => {
                if s.pending_2fa.is_none() && self.login(&mut s).await? == LoginOutcome::LoggedIn {
                    return Ok(LoginOutcome::LoggedIn);
                }
                self.second_factor(&mut s, code).await
            }
        }
    }

    async fn login(&self, s: &mut Session) -> Result<LoginOutcome, PlatformError> {
        let call = "POST /api/v01/auth/login";
        let body =
            json!({"username": self.inner.username, "password": self.inner.password.expose()});
        let answer = self.post_auth(call, "/auth/login", &body).await;
        self.take_login(s, call, answer)
    }

    async fn second_factor(
        &self,
        s: &mut Session,
        code: &str,
    ) -> Result<LoginOutcome, PlatformError> {
        let call = "POST /api/v01/auth/2fa";
        let payload = s.pending_2fa.clone().ok_or_else(|| {
            Self::auth_error(call, "no login is waiting for a second factor".into())
        })?;
        let body = json!({"code": code, "trust": true, "2fa_payload": payload.expose()});
        let answer = self.post_auth(call, "/auth/2fa", &body).await;
        if let Err(e) = &answer {
            if e.class == ErrorClass::Auth {
                return Err(Self::auth_error(call, format!("the code was refused ({e}); run `statusd fusion login` again for a new one")));
            }
        }
        self.take_login(s, call, answer)
    }

    async fn post_auth(
        &self,
        call: &str,
        path: &str,
        body: &Value,
    ) -> Result<LoginAnswer, PlatformError> {
        let rb = self.inner.http.post(self.url(path)).json(body);
        self.auth_request(call, rb).await
    }

    /// A call of the authentication endpoints, its refusals classified as the token
    /// endpoint's.
    async fn auth_request(
        &self,
        call: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<LoginAnswer, PlatformError> {
        let _permit = self.inner.permits.acquire().await.expect("never closed");
        let resp = rb
            .send()
            .await
            .map_err(|e| PlatformError::from_transport(call, &e))?;
        let (status, _, bytes) = read_answer(resp, call).await?;
        if !status.is_success() {
            return Err(PlatformError::from_token_response(
                call, status, None, &bytes,
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            PlatformError::local(
                call,
                ErrorClass::Retryable,
                format!("answer not understood: {e}"),
            )
        })
    }

    /// Record what a login answered; a refusal waits a growing time before the next one.
    fn take_login(
        &self,
        s: &mut Session,
        call: &str,
        answer: Result<LoginAnswer, PlatformError>,
    ) -> Result<LoginOutcome, PlatformError> {
        match answer {
            Ok(LoginAnswer {
                access_token: Some(a),
                refresh_token,
                ..
            }) => {
                s.access = Some(Secret::new(a));
                if let Some(r) = refresh_token {
                    s.refresh = Some(Secret::new(r));
                    s.refresh_changed = true;
                }
                s.pending_2fa = None;
                s.code_required = false;
                s.refused = None;
                tracing::info!(message = "logged in to Fusion");
                Ok(LoginOutcome::LoggedIn)
            }
            Ok(LoginAnswer {
                payload: Some(p), ..
            }) => {
                s.pending_2fa = Some(Secret::new(p));
                s.code_required = true;
                tracing::warn!(message = "Fusion asks for a second factor: run `statusd fusion login` (a code was sent to the user)");
                Ok(LoginOutcome::CodeRequired)
            }
            Ok(_) => Err(PlatformError::local(
                call,
                ErrorClass::Retryable,
                "a login answer with neither tokens nor a 2fa_payload",
            )),
            Err(e) if e.class == ErrorClass::Auth => {
                let failures = s.refused.as_ref().map_or(0, |r| r.failures) + 1;
                let wait =
                    TOKEN_REFUSAL_BACKOFF.delay_at_least_half(failures - 1, &mut rand::rng());
                tracing::error!(message = "Fusion refused the username or password; not logging in again before the wait is over", failures, retry_in_s = wait.as_secs(), error = %e);
                let err = Self::auth_error(call, format!("the username or password is refused ({e}); fix fusion.username / fusion.password, then {LOGIN_HINT}"));
                s.refused = Some(Refusal {
                    error: err.clone(),
                    at: Utc::now(),
                    failures,
                    until: Instant::now() + wait,
                });
                Err(err)
            }
            Err(e) => Err(e),
        }
    }

    /// An access token: the one in hand, one renewed with the refresh token, or a new login
    /// (unless a second factor is awaited or the last login was refused recently).
    async fn access(&self) -> Result<Secret, PlatformError> {
        let mut s = self.inner.session.lock().await;
        if let Some(a) = &s.access {
            return Ok(a.clone());
        }
        if let Some(refresh) = s.refresh.clone() {
            match self.renew(&refresh).await {
                Ok(a) => {
                    s.access = Some(a.clone());
                    return Ok(a);
                }
                Err(e) if e.class == ErrorClass::Auth => {
                    tracing::info!(
                        message = "the Fusion refresh token is refused; logging in again"
                    );
                    s.refresh = None;
                    s.refresh_changed = true;
                }
                Err(e) => return Err(e),
            }
        }
        let call = "POST /api/v01/auth/login";
        if s.code_required {
            return Err(Self::auth_error(
                call,
                format!("Fusion asks for a second factor: {LOGIN_HINT}"),
            ));
        }
        if let Some(r) = &s.refused {
            if Instant::now() < r.until {
                return Err(r.error.clone());
            }
        }
        match self.login(&mut s).await? {
            LoginOutcome::LoggedIn => Ok(s.access.clone().expect("a login sets the access token")),
            LoginOutcome::CodeRequired => Err(Self::auth_error(
                call,
                format!("Fusion asks for a second factor: {LOGIN_HINT}"),
            )),
        }
    }

    async fn renew(&self, refresh: &Secret) -> Result<Secret, PlatformError> {
        let call = "GET /api/v01/auth/access_token";
        let rb = self
            .inner
            .http
            .get(self.url("/auth/access_token"))
            .bearer_auth(refresh.expose());
        let a = self.auth_request(call, rb).await?;
        a.access_token.map(Secret::new).ok_or_else(|| {
            PlatformError::local(call, ErrorClass::Retryable, "no access_token in the answer")
        })
    }

    async fn forget_access(&self, refused: &Secret) {
        let mut s = self.inner.session.lock().await;
        if s.access
            .as_ref()
            .is_some_and(|a| a.expose() == refused.expose())
        {
            s.access = None;
        }
    }

    /// An authorised call; a refused access token is renewed once (refresh, else login).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, bytes::Bytes), PlatformError> {
        let call = format!("{method} /api/v01{path}");
        for attempt in 0..2 {
            let token = self.access().await?;
            let result = {
                let _permit = self.inner.permits.acquire().await.expect("never closed");
                let mut rb = self
                    .inner
                    .http
                    .request(method.clone(), self.url(path))
                    .bearer_auth(token.expose());
                if let Some(b) = body {
                    rb = rb.json(b);
                }
                match rb.send().await {
                    Ok(r) => read_answer(r, &call).await.map(|(s, _, b)| (s, b)),
                    Err(e) => Err(PlatformError::from_transport(&call, &e)),
                }
            };
            let (status, bytes) = result?;
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.forget_access(&token).await;
                continue;
            }
            if status.is_success() || status == StatusCode::NOT_FOUND {
                return Ok((status, bytes));
            }
            return Err(PlatformError::from_response(&call, status, None, &bytes));
        }
        unreachable!("the loop returns on its second pass")
    }
}
