//! The `[platform]` keys: the data center and its credentials, and where requests may go
//! (`allowed_hosts`, `ca_file`, `proxy`).

use super::reader::Reader;
use super::*;

impl Reader {
    pub(super) fn platform(&mut self) -> PlatformSettings {
        let base_url = self.datacenter_url("platform.base_url");
        let client_id = self
            .string("platform.client_id")
            .filter(|s| !s.trim().is_empty());
        let client_secret = self.secret("platform.client_secret", Some("client_secret"));
        let credentials = self.credentials("platform.credentials");
        PlatformSettings {
            base_url,
            client_id,
            client_secret,
            credentials,
            request_timeout: self.duration("platform.request_timeout", "30s"),
            max_concurrency: self.u64_in("platform.max_concurrency", 8, 1, 256) as usize,
            allowed_hosts: self.allowed_hosts("platform.allowed_hosts"),
            ca_file: self.readable_file("platform.ca_file"),
            proxy: self.proxy("platform.proxy"),
        }
    }

    /// A list of strings, as TOML writes it (other values as their text) or as the environment
    /// does (comma-separated).
    pub(super) fn string_list(&mut self, key: &str) -> Option<Vec<String>> {
        match self.raw(key)? {
            Value::Array(items) => Some(
                items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect(),
            ),
            Value::String(s) => Some(
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
            ),
            other => {
                self.problem(key, format!("expected a list, got {}", kind_of(&other)));
                None
            }
        }
    }

    pub(super) fn allowed_hosts(&mut self, key: &str) -> Vec<HostPattern> {
        let Some(items) = self.string_list(key) else {
            return DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|p| HostPattern::parse(p).expect("the default patterns are valid"))
                .collect();
        };
        let mut out = Vec::new();
        for item in items {
            match HostPattern::parse(&item) {
                Ok(p) => out.push(p),
                Err(m) => self.problem(key, m),
            }
        }
        out
    }

    /// A path that must name a readable file, when set.
    pub(super) fn readable_file(&mut self, key: &str) -> Option<PathBuf> {
        let path = PathBuf::from(self.string(key)?);
        if let Err(e) = std::fs::File::open(&path) {
            self.problem(key, format!("cannot read {}: {e}", path.display()));
        }
        Some(path)
    }

    pub(super) fn proxy(&mut self, key: &str) -> Option<Secret> {
        let raw = self.string(key)?;
        match url::Url::parse(raw.trim()) {
            Ok(u)
                if u.scheme() == "http"
                    && u.host().is_some()
                    && matches!(u.path(), "" | "/")
                    && u.query().is_none() =>
            {
                Some(Secret::new(raw.trim()))
            }
            _ => {
                self.problem(
                    key,
                    "expected an http:// proxy URL with a host and port, e.g. http://proxy.example.net:3128 (user and password may be given in it)",
                );
                None
            }
        }
    }

    /// `run` needs an account: without `[accounts.*]`, the `[platform]` credentials.
    pub(super) fn require_platform_credentials(&mut self, platform: &PlatformSettings) {
        if platform.base_url.is_none() && !self.has_problem("platform.base_url") {
            self.problem(
                "platform.base_url",
                "required (the data-center URL, e.g. https://eu2-cloud.acronis.com), or [accounts.<id>] tables",
            );
        }
        if platform.client_id.is_none() {
            self.problem("platform.client_id", "required (the API client's id)");
        }
        if platform.client_secret.is_none() && !self.has_problem_prefix("platform.client_secret") {
            self.problem(
                "platform.client_secret",
                "required: set platform.client_secret_file (preferred) or platform.client_secret",
            );
        }
    }

    /// A data center's URL: https (http only for a loopback address, since the client secret
    /// would cross the network in clear), without a trailing slash.
    pub(super) fn datacenter_url(&mut self, key: &str) -> Option<String> {
        let raw = self.string(key)?;
        match check_datacenter_url(&raw) {
            Ok(url) => Some(url),
            Err(message) => {
                self.problem(key, message);
                None
            }
        }
    }

    pub(super) fn credentials(&mut self, key: &str) -> Credentials {
        match self.string(key).as_deref() {
            None | Some("api_client") => Credentials::ApiClient,
            Some("cyberapp") => Credentials::Cyberapp,
            Some(other) => {
                self.problem(
                    key,
                    format!("expected \"api_client\" (the default) or \"cyberapp\", got {other:?}"),
                );
                Credentials::ApiClient
            }
        }
    }
}
