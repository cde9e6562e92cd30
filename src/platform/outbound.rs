//! Where requests may go: the HTTP clients (no redirects, the extra roots, the proxy), the check
//! of an address a partner gives before anything connects to it, and the resolver that keeps an
//! account added through the API off this host's own networks whatever its name resolves to later.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{non_public_kind, HostPattern, PlatformSettings, Secret};

/// How the HTTP clients of the platform and of Fusion are built.
#[derive(Clone)]
pub struct HttpOptions {
    pub request_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub proxy: Option<Secret>,
}

impl HttpOptions {
    /// Only a timeout: the system roots, the environment's proxy.
    pub fn plain(request_timeout: Duration) -> HttpOptions {
        HttpOptions {
            request_timeout,
            ca_file: None,
            proxy: None,
        }
    }
}

impl From<&PlatformSettings> for HttpOptions {
    fn from(p: &PlatformSettings) -> HttpOptions {
        HttpOptions {
            request_timeout: p.request_timeout,
            ca_file: p.ca_file.clone(),
            proxy: p.proxy.clone(),
        }
    }
}

/// Why the HTTP client for the platform could not be built (each names its setting).
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("platform.ca_file: cannot read {path}: {source}")]
    ReadCa {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("platform.ca_file: {path} holds no PEM certificate statusd can read{}", .detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    NoCertificate {
        path: std::path::PathBuf,
        detail: Option<String>,
    },
    #[error("platform.proxy: not a proxy URL statusd can use")]
    Proxy,
    #[error("cannot build the HTTP client: {0}")]
    Build(reqwest::Error),
}

/// The HTTP client for platform and Fusion calls: rustls with ring, the request timeout,
/// keep-alive, never a redirect followed, the roots of `platform.ca_file` beside the system's,
/// `platform.proxy` (else the environment's); with `guard`, names resolved through it.
pub fn http_client(
    opts: &HttpOptions,
    guard: Option<Arc<HostPolicy>>,
) -> Result<reqwest::Client, HttpClientError> {
    super::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .user_agent(crate::USER_AGENT)
        .connect_timeout(Duration::from_secs(10).min(opts.request_timeout))
        .timeout(opts.request_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &opts.ca_file {
        let pem = std::fs::read(path).map_err(|source| HttpClientError::ReadCa {
            path: path.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            HttpClientError::NoCertificate {
                path: path.clone(),
                detail: Some(e.to_string()),
            }
        })?;
        if certs.is_empty() {
            return Err(HttpClientError::NoCertificate {
                path: path.clone(),
                detail: None,
            });
        }
        b = b.tls_certs_merge(certs);
    }
    if let Some(proxy) = &opts.proxy {
        let p = reqwest::Proxy::all(proxy.expose()).map_err(|_| HttpClientError::Proxy)?;
        b = b.proxy(p);
    }
    if let Some(g) = guard {
        b = b.dns_resolver(g);
    }
    b.build().map_err(HttpClientError::Build)
}

/// `platform.allowed_hosts` at work: which hosts an account added through the API may use.
pub struct HostPolicy {
    patterns: Vec<HostPattern>,
    /// The proxy's host, which the guarded resolver resolves for every request when a proxy
    /// is set (it is the operator's, not a partner's).
    proxy_host: Option<String>,
}

/// Why an address is refused, before anything connects to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl HostPolicy {
    pub fn new(settings: &PlatformSettings) -> HostPolicy {
        // `platform.proxy`, else the proxy of the environment (which reqwest uses then).
        let proxy = settings
            .proxy
            .as_ref()
            .map(|p| p.expose().to_string())
            .or_else(|| {
                ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
                    .iter()
                    .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
            });
        let proxy_host = proxy
            .and_then(|p| url::Url::parse(p.trim()).ok())
            .and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase()));
        HostPolicy {
            patterns: settings.allowed_hosts.clone(),
            proxy_host,
        }
    }

    /// A policy of these patterns (tests, tools).
    pub fn of(patterns: Vec<HostPattern>) -> HostPolicy {
        HostPolicy {
            patterns,
            proxy_host: None,
        }
    }

    fn names_address(&self, ip: IpAddr) -> bool {
        self.patterns
            .iter()
            .any(|p| matches!(p, HostPattern::Address(a) if *a == ip))
    }

    /// May a resolved (or literal) address be connected to?
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        non_public_kind(ip).is_none() || self.names_address(ip)
    }

    /// The check of the host alone, without resolving it: an address must be named exactly,
    /// a name must match an entry. `url` is an origin as `check_datacenter_url` gives it.
    pub fn check_host(&self, url: &str) -> Result<(), Refused> {
        let shown = crate::platform::datacenter_of(url);
        let refused = || {
            Refused(format!(
                "{shown} is not among the hosts accounts may use (platform.allowed_hosts: {})",
                self.listed()
            ))
        };
        match url::Url::parse(url)
            .ok()
            .and_then(|u| u.host().map(|h| h.to_owned()))
        {
            Some(url::Host::Ipv4(ip)) if self.names_address(IpAddr::V4(ip)) => Ok(()),
            Some(url::Host::Ipv6(ip)) if self.names_address(IpAddr::V6(ip)) => Ok(()),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if self.patterns.iter().any(|p| p.allows_name(&d)) {
                    Ok(())
                } else {
                    Err(refused())
                }
            }
            _ => Err(refused()),
        }
    }

    /// The whole check, before any connection: the host, then (unless a proxy resolves names
    /// for us) every address its name resolves to.
    pub async fn check(&self, url: &str) -> Result<(), Refused> {
        self.check_host(url)?;
        let Some(url::Host::Domain(d)) = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host().map(|h| h.to_owned()))
        else {
            return Ok(());
        };
        if self.proxy_host.is_some() {
            return Ok(());
        }
        let addrs = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((d.as_str(), 443)),
        )
        .await
        .map_err(|_| Refused(format!("{d}: the name did not resolve within 5 s")))?
        .map_err(|_| Refused(format!("{d}: the name does not resolve")))?;
        for a in addrs {
            if !self.address_allowed(a.ip()) {
                return Err(Refused(format!(
                    "{d} resolves to a {} address; an account added through the API may use one only when platform.allowed_hosts names that address exactly",
                    non_public_kind(a.ip()).unwrap_or("non-public")
                )));
            }
        }
        Ok(())
    }

    fn listed(&self) -> String {
        if self.patterns.is_empty() {
            return "empty".into();
        }
        self.patterns
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The guarded resolver: a name resolves only to the addresses the policy allows (the proxy's
/// host as it is), so a name that passed the check and later resolves to this host's networks
/// reaches nothing.
impl reqwest::dns::Resolve for HostPolicy {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let unfiltered = self.proxy_host.as_deref() == Some(host.as_str());
        let allowed: Vec<IpAddr> = self
            .patterns
            .iter()
            .filter_map(|p| match p {
                HostPattern::Address(a) => Some(*a),
                _ => None,
            })
            .collect();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| {
                    unfiltered || non_public_kind(a.ip()).is_none() || allowed.contains(&a.ip())
                })
                .collect();
            if kept.is_empty() {
                return Err(format!(
                    "{host} resolves to no address an account added through the API may use (platform.allowed_hosts)"
                )
                .into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A path segment built from input, percent-encoded so it can never change the path.
pub fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> HostPolicy {
        HostPolicy::of(
            entries
                .iter()
                .map(|e| HostPattern::parse(e).unwrap())
                .collect(),
        )
    }

    #[test]
    fn a_segment_cannot_leave_its_place() {
        assert_eq!(segment("../../admin/x"), "..%2F..%2Fadmin%2Fx");
        assert_eq!(segment("a b?c#d"), "a%20b%3Fc%23d");
        assert_eq!(segment("client-1"), "client-1");
    }

    #[test]
    fn hosts_need_an_entry_and_addresses_an_exact_one() {
        let p = policy(&["*.acronis.com", "127.0.0.1"]);
        assert!(p.check_host("https://eu2-cloud.acronis.com").is_ok());
        assert!(p.check_host("http://127.0.0.1:9").is_ok());
        assert!(p.check_host("http://127.0.0.2:9").is_err());
        assert!(p.check_host("https://evil.example").is_err());
        assert!(p.check_host("https://8.8.8.8").is_err());
        assert!(p.address_allowed("127.0.0.1".parse().unwrap()));
        assert!(!p.address_allowed("127.0.0.2".parse().unwrap()));
        assert!(!p.address_allowed("10.0.0.1".parse().unwrap()));
        assert!(p.address_allowed("8.8.8.8".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let p = policy(&["localhost"]);
        let err = p.check("http://localhost:9").await.unwrap_err();
        assert!(err.0.contains("loopback"), "{err:?}");
        let p = policy(&["localhost", "127.0.0.1", "::1"]);
        assert!(p.check("http://localhost:9").await.is_ok());
    }
}
