//! The one place that decodes the platform's errors and classifies them: retryable, auth,
//! conflict or permanent.

use super::*;

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
    /// What of the answer may be shown to an API caller: the platform's error envelope's code
    /// and message on one line, when the answer was one (never other bytes of an answer).
    pub envelope: Option<String>,
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

    pub(super) fn local(call: &str, class: ErrorClass, message: impl Into<String>) -> Self {
        PlatformError {
            class,
            status: None,
            call: call.to_string(),
            message: message.into(),
            retry_after: None,
            envelope: None,
        }
    }

    /// What an API caller may be told of this failure: the call, the status, and the
    /// platform's own error code and message; for a failure without an answer, only that no
    /// answer came. Never bytes of another answer, always one line.
    pub fn public(&self) -> String {
        match (self.status, &self.envelope) {
            (Some(s), Some(e)) => format!("{}: HTTP {s}: {e}", self.call),
            (Some(s), None) if (300..400).contains(&s) => {
                format!("{}: HTTP {s}: {}", self.call, self.message)
            }
            (Some(s), None) => format!("{}: HTTP {s}", self.call),
            (None, _) if self.message.starts_with("timed out") => {
                format!("{}: no answer in time", self.call)
            }
            (None, _)
                if self.message.starts_with("refused:")
                    || self.message.starts_with("TLS failed") =>
            {
                format!("{}: {}", self.call, self.message)
            }
            (None, _) => format!("{}: no answer", self.call),
        }
    }

    /// A 3xx: statusd follows no redirect; the error names the status and where it pointed.
    pub fn redirect(call: &str, status: StatusCode, location: Option<&str>) -> Self {
        let to = location
            .map(|l| match url::Url::parse(l) {
                Ok(u) => format!("to host {}", u.host_str().unwrap_or("?")),
                Err(_) => "to a path of the same host".into(),
            })
            .unwrap_or_else(|| "without a Location".into());
        PlatformError {
            class: ErrorClass::Permanent,
            status: Some(status.as_u16()),
            call: call.to_string(),
            message: format!("redirected {to}; statusd follows no redirect (check the URL)"),
            retry_after: None,
            envelope: None,
        }
    }

    /// Timeouts and connection errors are retryable; anything else from the transport is too
    /// (it is not the platform refusing us).
    pub fn from_transport(call: &str, e: &reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            "timed out"
        } else if is_tls(e) {
            "TLS failed"
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

    /// A refusal of the token endpoint (see [`classify_token_status`]).
    pub fn from_token_response(
        call: &str,
        status: StatusCode,
        retry_after: Option<&str>,
        body: &[u8],
    ) -> Self {
        PlatformError {
            class: classify_token_status(status),
            ..PlatformError::from_response(call, status, retry_after, body)
        }
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
            envelope: envelope_summary(body),
        }
    }
}

/// Whether a transport error is the TLS handshake failing (an untrusted certificate, a name
/// it does not cover): said as such, since the fix (`platform.ca_file`) differs.
fn is_tls(e: &reqwest::Error) -> bool {
    fn has_rustls(e: &(dyn std::error::Error + 'static)) -> bool {
        if e.is::<rustls::Error>() {
            return true;
        }
        // An I/O error wraps its cause without naming it as its source.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if has_rustls(inner) {
                return true;
            }
        }
        e.source().is_some_and(has_rustls)
    }
    std::error::Error::source(e).is_some_and(has_rustls)
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

/// What an answer of the token endpoint means: refused credentials (400, 401, 403) are a
/// configuration fault to report as `auth`, not a bad request; anything else as for any call.
pub fn classify_token_status(status: StatusCode) -> ErrorClass {
    match status.as_u16() {
        400 | 401 | 403 => ErrorClass::Auth,
        _ => classify_status(status),
    }
}

/// The platform's error answer, in either of its forms.
enum Envelope {
    /// `{"error": {"code", "message", "domain", "details"}}`.
    Object(ErrorBody),
    /// The OAuth form of the token endpoint: `{"error": "...", "error_description": "..."}`.
    OAuth {
        error: String,
        description: Option<String>,
    },
}

impl Envelope {
    fn parse(body: &[u8]) -> Option<Envelope> {
        #[derive(Deserialize)]
        struct Outer {
            error: Inner,
            #[serde(default)]
            error_description: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Inner {
            Object(ErrorBody),
            OAuth(String),
        }
        let outer: Outer = serde_json::from_slice(body).ok()?;
        Some(match outer.error {
            Inner::Object(e) => Envelope::Object(e),
            Inner::OAuth(error) => Envelope::OAuth {
                error,
                description: outer.error_description,
            },
        })
    }

    /// The code and message (with the domain and details when `full`).
    fn describe(self, full: bool) -> String {
        match self {
            Envelope::Object(e) => {
                let mut parts = Vec::new();
                if let Some(c) = &e.code {
                    parts.push(format!("code {c}"));
                }
                if let Some(d) = e.domain.as_ref().filter(|_| full) {
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
                if let Some(details) = e.details.filter(|d| full && !d.is_null()) {
                    s.push_str(&format!(" details={}", truncate(&details.to_string(), 300)));
                }
                s
            }
            Envelope::OAuth { error, description } => match description {
                Some(d) => format!("{error}: {d}"),
                None => error,
            },
        }
    }
}

/// A readable message from an error body: the envelope, the OAuth form, or only the size of
/// anything else.
pub fn describe_error_body(body: &[u8]) -> String {
    if let Some(env) = Envelope::parse(body) {
        return env.describe(true);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        "empty response body".into()
    } else {
        // Another server's bytes are never repeated: they may be anything it holds.
        format!(
            "the answer is not the platform's JSON error ({} bytes, not shown)",
            body.len()
        )
    }
}

/// The platform's error envelope's code and message, on one line and at most 300 characters;
/// `None` for any other answer.
pub fn envelope_summary(body: &[u8]) -> Option<String> {
    let text = Envelope::parse(body)?.describe(false);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(truncate(one_line.trim(), 300))
}

pub(super) fn truncate(s: &str, max: usize) -> String {
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
