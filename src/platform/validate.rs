//! Checking an API client with its data center before it is used: one token, the client's own
//! record, its tenant's name. Every call is made once and answered: nothing here retries.

use super::*;

/// What the data center said of valid credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub tenant_id: Uuid,
    pub tenant_name: Option<String>,
}

/// Why credentials did not validate, in the terms a partner can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The data center refused them: the field at fault, and what to do.
    Refused {
        field: &'static str,
        message: String,
    },
    /// The URL is not a data center: nothing answers there, or not as one.
    NotDatacenter(String),
    /// No answer within `platform.request_timeout`.
    Timeout(String),
    /// The data center answered that it cannot serve now (5xx, 429).
    Unavailable(String),
}

impl Invalid {
    /// A failed call of the validation, by what it tells of the credentials.
    fn of(e: PlatformError, base: &str, step: Step) -> Invalid {
        // What the caller may read: the platform's own error, never another server's bytes.
        let said = e.public();
        let base = crate::platform::datacenter_of(base);
        let base = base.as_str();
        match (e.status, step) {
            (None, _) if e.message.starts_with("timed out") => Invalid::Timeout(format!(
                "{base} did not answer in time (platform.request_timeout): {said}"
            )),
            (Some(300..=399), _) => Invalid::NotDatacenter(format!(
                "{base} answered with a redirect, which statusd does not follow: {said}"
            )),
            (None, Step::Token) | (Some(404 | 405), Step::Token) => Invalid::NotDatacenter(
                format!("{base} is not a data center of the platform (its token endpoint did not answer as one): {said}"),
            ),
            (Some(s), _) if s >= 500 || s == 429 => Invalid::Unavailable(format!(
                "the data center cannot serve now; try again later: {said}"
            )),
            (_, Step::Token) => Invalid::Refused {
                field: "client_secret",
                message: format!(
                    "the data center refused the API client: check the client secret, and that the client exists in this data center and is enabled ({said})"
                ),
            },
            (Some(401 | 403 | 404), Step::Client) => Invalid::Refused {
                field: "client_id",
                message: format!(
                    "a token was issued, but the data center does not show this API client: check the client id ({said})"
                ),
            },
            (_, _) => Invalid::NotDatacenter(format!(
                "{base} did not answer as a data center of the platform: {said}"
            )),
        }
    }
}

#[derive(Clone, Copy)]
enum Step {
    Token,
    Client,
    Tenant,
}

impl PlatformClient {
    /// Check the credentials: issue a token, read the API client's tenant and its name. On
    /// success the token is kept for the client's first calls.
    pub async fn validate(&self) -> Result<Validated, Invalid> {
        let base = self.inner.base.clone();
        let token = self
            .issue_token()
            .await
            .map_err(|e| Invalid::of(e, &base, Step::Token))?;
        #[derive(Deserialize)]
        struct ClientInfo {
            tenant_id: Uuid,
        }
        let path = format!("/api/2/clients/{}", segment(&self.inner.client_id));
        let body = self
            .get_once(&token.access, &path)
            .await
            .map_err(|e| Invalid::of(e, &base, Step::Client))?;
        let info: ClientInfo = serde_json::from_slice(&body).map_err(|e| {
            Invalid::NotDatacenter(format!(
                "GET {path}: the answer is not an API client's record ({e})"
            ))
        })?;
        let path = format!("/api/2/tenants/{}", info.tenant_id);
        let tenant_name = match self.get_once(&token.access, &path).await {
            Ok(body) => serde_json::from_slice::<Tenant>(&body)
                .ok()
                .and_then(|t| t.name),
            Err(e) => match Invalid::of(e, &base, Step::Tenant) {
                // The client may lack the right to read its own tenant: the name is a nicety.
                Invalid::NotDatacenter(_) => None,
                other => return Err(other),
            },
        };
        let _ = self.inner.own_tenant.set(info.tenant_id);
        self.state().cached = Some(token);
        Ok(Validated {
            tenant_id: info.tenant_id,
            tenant_name,
        })
    }

    /// One authorised GET, no re-issue and no retry.
    async fn get_once(&self, token: &Secret, path: &str) -> Result<bytes::Bytes, PlatformError> {
        let call = format!("GET {path}");
        let _permit = self.permit().await;
        let resp = self
            .inner
            .http
            .get(self.url(path))
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|e| PlatformError::from_transport(&call, &e))?;
        let (status, _, body) = read_answer(resp, &call).await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(PlatformError::from_response(&call, status, None, &body))
        }
    }
}
