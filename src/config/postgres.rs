//! `[store.postgres]` values as the settings give them: a connection URL statusd can read, with
//! a TLS mode it takes, and a schema name it can use unquoted. Checked when the settings are
//! read, and used by the PostgreSQL store to connect.

use std::str::FromStr;

/// Where a URL points, for messages: host, port, database and user, never the password.
pub fn describe_url(url: &str) -> String {
    match tokio_postgres::Config::from_str(&strip_tls_params(url).0) {
        Ok(c) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "postgres://{}@{host}:{port}/{}",
                c.get_user().unwrap_or("?"),
                c.get_dbname().unwrap_or("?")
            )
        }
        Err(_) => "an unreadable URL".into(),
    }
}

/// The TLS mode a URL asks for, and the URL as tokio-postgres reads it (`verify-ca` and
/// `verify-full` become `require`: statusd verifies the server's certificate in every TLS mode).
pub(crate) fn strip_tls_params(url: &str) -> (String, Option<String>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return (url.to_string(), None);
    };
    let mut mode = None;
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let kept: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(k, v)| {
            if k == "sslmode" {
                mode = Some(v.clone());
                if v == "verify-ca" || v == "verify-full" {
                    return (k, "require".to_string());
                }
            }
            (k, v)
        })
        .collect();
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    (parsed.to_string(), mode)
}

/// Check a URL as the settings give it: a `postgres://` or `postgresql://` URL tokio-postgres
/// reads, with a known `sslmode`. The error never repeats the URL (it holds the password).
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(
            "must be a postgres:// URL (postgres://user:password@host:port/database)".into(),
        );
    }
    let (plain, mode) = strip_tls_params(url);
    if let Some(m) = mode.as_deref() {
        if !["disable", "prefer", "require", "verify-ca", "verify-full"].contains(&m) {
            return Err(format!(
                "sslmode {m:?} is not one statusd takes: sslmode=require, sslmode=verify-ca or sslmode=verify-full (TLS), sslmode=disable (plain text), or sslmode=prefer for a database on this machine"
            ));
        }
    }
    let config = tokio_postgres::Config::from_str(&plain)
        .map_err(|e| format!("not a connection URL statusd can read: {e}"))?;
    // Off this machine, the password and every event cross the network: TLS, or plain text
    // only where it is written. `prefer` would fall back to plain text if the server declined.
    if !all_hosts_local(&config) && matches!(mode.as_deref(), None | Some("prefer")) {
        return Err(format!(
            "the database is not on this machine and the URL {}: add sslmode=require, sslmode=verify-ca or sslmode=verify-full (TLS, the server's certificate verified against the system roots or store.postgres.ca_file), or sslmode=disable to send it in clear on purpose",
            match mode.as_deref() {
                None => "names no sslmode".to_string(),
                Some(m) => format!("asks for sslmode={m}, which falls back to plain text"),
            }
        ));
    }
    Ok(())
}

/// Every host of a connection is this machine: `localhost`, a loopback address, or a Unix
/// socket.
fn all_hosts_local(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    let hosts = config.get_hosts();
    !hosts.is_empty()
        && hosts.iter().all(|h| match h {
            Host::Tcp(name) => {
                let name = name.trim_start_matches('[').trim_end_matches(']');
                name.eq_ignore_ascii_case("localhost")
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            Host::Unix(_) => true,
        })
}

/// Whether `name` can be used as a schema name unquoted: a letter or `_`, then letters, digits
/// or `_`, at most 63 bytes (PostgreSQL's limit), lowercase.
pub fn valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema_name("statusd"));
        assert!(valid_schema_name("_s2"));
        assert!(!valid_schema_name("2s"));
        assert!(!valid_schema_name("Statusd"));
        assert!(!valid_schema_name("a;drop"));
        assert!(!valid_schema_name(""));
        assert!(!valid_schema_name(&"a".repeat(64)));
    }
}
