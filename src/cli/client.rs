//! The local API of a running daemon, as its operator commands call it. Answers are read into
//! the same types the server writes (`api::answers`, `reconcile::Report`).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::args::ApiArgs;
use crate::config::Settings;

pub struct LocalApi {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

#[derive(Debug)]
pub enum CallError {
    /// The daemon did not answer (exit 69).
    Unreachable(String),
    /// It answered with an error (status, message).
    Refused(u16, String),
}

impl LocalApi {
    pub fn new(api: &ApiArgs, settings: &Settings) -> LocalApi {
        let base = api.api.clone().unwrap_or_else(|| {
            let mut addr = settings.api.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        });
        let token = std::env::var("STATUSD_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| settings.api.token.as_ref().map(|t| t.expose().to_string()));
        crate::platform::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            .timeout(Duration::from_secs(130))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("HTTP client builds");
        LocalApi {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        }
    }

    /// Call the API and read its answer as `T`; returns the HTTP status with it.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, T), CallError> {
        let (status, bytes) = self.send(method, path, body).await?;
        // A body-less answer (204) reads as JSON null.
        let bytes = if bytes.is_empty() {
            b"null".as_slice().into()
        } else {
            bytes
        };
        let answer = serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Unreachable(format!(
                "statusd at {} answered {path} with something unexpected: {e}",
                self.base
            ))
        })?;
        Ok((status, answer))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, bytes::Bytes), CallError> {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.map_err(|e| {
            CallError::Unreachable(format!(
                "statusd is not reachable at {}: {}",
                self.base,
                root_cause(&e)
            ))
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        if status >= 400 {
            return Err(CallError::Refused(status, refusal_message(status, &bytes)));
        }
        Ok((status, bytes))
    }
}

/// `field: message` of the API's error envelope.
fn refusal_message(status: u16, body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let msg = value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    match value.pointer("/error/field").and_then(Value::as_str) {
        Some(f) => format!("{f}: {msg}"),
        None => msg,
    }
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}
