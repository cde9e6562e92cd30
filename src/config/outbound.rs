//! Where statusd may send requests: a data center's address as an origin, and the host patterns
//! an account added through the API may use. Plain data and checks; the enforcement (name
//! resolution, the guarded resolver) is in `platform::outbound`.

use std::net::IpAddr;

use serde::Serialize;

/// What `platform.allowed_hosts` is when unset: the platform's public data centers.
///
/// Every data center of the platform is a name under `acronis.com` (`eu2-cloud.acronis.com`,
/// `eu8-cloud.acronis.com`, `us5-cloud.acronis.com`, `cloud.acronis.com`: the platform's
/// integration guides and its API reference, which give each data center's URL as
/// `https://<dc>.acronis.com`).
pub const DEFAULT_ALLOWED_HOSTS: &[&str] = &["*.acronis.com"];

/// One entry of `platform.allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*.example.com`: any name under `example.com` (not `example.com` itself). Held as the
    /// suffix `.example.com`, lowercase.
    Under(String),
    /// An exact name, lowercase.
    Name(String),
    /// An exact address: the only way to allow a loopback, private or link-local one.
    Address(IpAddr),
}

impl HostPattern {
    /// An entry as the settings write it.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let t = t
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(&t)
            .to_string();
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(HostPattern::Address(ip));
        }
        let (under, name) = match t.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, t.as_str()),
        };
        let labels: Vec<&str> = name.split('.').collect();
        let valid = !name.is_empty()
            && name.len() <= 253
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !valid {
            return Err(format!(
                "{text:?} is not a host pattern: write \"*.example.com\" (any name under it), an exact name, or an IP address"
            ));
        }
        if under && labels.len() < 2 {
            return Err(format!(
                "{text:?} would allow every name under a top-level domain: name the domain (\"*.example.com\")"
            ));
        }
        Ok(if under {
            HostPattern::Under(format!(".{name}"))
        } else {
            HostPattern::Name(name.to_string())
        })
    }

    /// Does this entry allow the name `host` (lowercase, without a trailing dot)?
    pub fn allows_name(&self, host: &str) -> bool {
        match self {
            HostPattern::Under(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
            HostPattern::Name(n) => n == host,
            HostPattern::Address(_) => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Under(suffix) => write!(f, "*{suffix}"),
            HostPattern::Name(n) => f.write_str(n),
            HostPattern::Address(ip) => write!(f, "{ip}"),
        }
    }
}

impl Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What kind of address an IP is, when it is not a public one: loopback, private (RFC 1918,
/// shared address space), link-local, unique-local, or unspecified/multicast/broadcast.
pub fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
            {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_kind(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if (first & 0xfe00) == 0xfc00 {
                Some("unique-local")
            } else if (first & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("reserved")
            } else {
                None
            }
        }
    }
}

/// A data center's URL as statusd uses it: an origin, `https://host[:port]` (`http://` only on a
/// loopback address, since the client secret would cross the network in clear), with no
/// userinfo, path, query or fragment; a trailing `/` is allowed and dropped.
pub fn check_datacenter_url(raw: &str) -> Result<String, String> {
    check_origin(raw, "https://eu2-cloud.acronis.com")
}

/// [`check_datacenter_url`] with the example its messages give.
pub fn check_origin(raw: &str, example: &str) -> Result<String, String> {
    let shown: String = raw.chars().take(120).collect();
    let trimmed = raw.trim();
    let u = match url::Url::parse(trimmed) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
        _ => return Err(format!("not a URL: {shown:?} (expected e.g. {example})")),
    };
    let part = if !u.username().is_empty() || u.password().is_some() {
        Some("a user name or password")
    } else if !matches!(u.path(), "" | "/") {
        Some("a path")
    } else if u.query().is_some() {
        Some("a query")
    } else if u.fragment().is_some() {
        Some("a fragment")
    } else {
        None
    };
    if let Some(part) = part {
        return Err(format!(
            "{shown:?} has {part}: give only the scheme, host and port (e.g. {example})"
        ));
    }
    if u.scheme() == "http" && !is_loopback(&u) {
        return Err(format!(
            "http:// is allowed only for a loopback address (the client secret would cross the network in clear): {shown:?}; use https://"
        ));
    }
    let host = match u.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        Some(h) => h.to_string(),
        None => unreachable!("checked above"),
    };
    Ok(match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    })
}

/// A URL whose host is this machine: `localhost`, 127.0.0.0/8 or ::1.
fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_all_a_datacenter_url_may_be() {
        assert_eq!(
            check_datacenter_url("https://eu2-cloud.acronis.com/").unwrap(),
            "https://eu2-cloud.acronis.com"
        );
        assert_eq!(
            check_datacenter_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            check_datacenter_url("https://[::1]:9").unwrap(),
            "https://[::1]:9"
        );
        for bad in [
            "http://127.0.0.1:1/internal/admin?x=",
            "http://admin:pw@127.0.0.1:1",
            "https://eu2-cloud.acronis.com/api",
            "https://eu2-cloud.acronis.com?x=1",
            "https://eu2-cloud.acronis.com#f",
            "http://eu2-cloud.acronis.com",
            "ftp://eu2-cloud.acronis.com",
            "eu2-cloud.acronis.com",
        ] {
            assert!(check_datacenter_url(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn patterns_match_names_under_them_only() {
        let p = HostPattern::parse("*.Acronis.com").unwrap();
        assert!(p.allows_name("eu2-cloud.acronis.com"));
        assert!(!p.allows_name("acronis.com"));
        assert!(!p.allows_name("evilacronis.com"));
        assert!(!p.allows_name("eu2-cloud.acronis.com.evil.example"));
        assert_eq!(p.to_string(), "*.acronis.com");
        assert_eq!(
            HostPattern::parse("127.0.0.1").unwrap(),
            HostPattern::Address("127.0.0.1".parse().unwrap())
        );
        assert!(HostPattern::parse("*.com").is_err());
        assert!(HostPattern::parse("a b").is_err());
        assert!(HostPattern::parse("").is_err());
    }

    #[test]
    fn non_public_addresses_are_named() {
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("192.168.0.1", "private"),
            ("172.16.0.1", "private"),
            ("100.64.0.1", "private"),
            ("169.254.169.254", "link-local"),
            ("::1", "loopback"),
            ("fd00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("0.0.0.0", "reserved"),
        ] {
            assert_eq!(non_public_kind(ip.parse().unwrap()), Some(kind), "{ip}");
        }
        assert_eq!(non_public_kind("8.8.8.8".parse().unwrap()), None);
        assert_eq!(non_public_kind("2a00:1450::1".parse().unwrap()), None);
    }
}
