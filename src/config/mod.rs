//! Settings: the TOML file layered under `STATUSD__SECTION__KEY` environment variables,
//! secrets read from `_file` variants, and validation that reports every problem at once.
//!
//! Loading is a pure function of (file contents, environment map) so tests never touch the
//! process environment. The raw layered tree is walked key by key: a wrong type, an unknown key
//! or a bad value each become one [`Problem`] naming the key and what was expected.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// Where the configuration file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/statusd/statusd.toml";

mod accounts;
mod doors;
mod fusion;
mod outbound;
mod platform;
pub mod postgres;
mod reader;
mod render;
mod secret;
mod settings;

pub use accounts::{valid_account_id, AccountSettings, DEFAULT_ACCOUNT};
pub use fusion::{merge_into, FusionBranding, FusionSettings, FUSION_MASK, FUSION_PARTS};
pub use outbound::{
    check_datacenter_url, check_origin, non_public_kind, HostPattern, DEFAULT_ALLOWED_HOSTS,
};
use reader::*;
pub use reader::{validate_brand_value, validate_cron, CronSchedule};
pub use secret::{Secret, SecretKey, KEY_LEN};
pub use settings::*;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found, in key order of discovery.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// What the settings are for: `run` needs platform credentials, the demo and sandbox do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Run,
    Local,
}

/// Inputs of a load: the file (if any) and the environment (a map, so tests stay pure).
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub file: Option<PathBuf>,
    /// TOML text used instead of a file (tests, the demo).
    pub inline: Option<String>,
    pub env: HashMap<String, String>,
}

impl Sources {
    /// The file given on the command line, else the default path when it exists; the process
    /// environment.
    pub fn from_process(explicit: Option<PathBuf>) -> Self {
        let file = explicit.or_else(|| {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            p.exists().then_some(p)
        });
        Sources {
            file,
            inline: None,
            env: std::env::vars().collect(),
        }
    }
}

/// A TOML syntax error, named by its line, column and the key it is in, never by the text
/// there (which may be a secret).
fn check_toml_syntax(text: &str, shown: &str) -> Result<(), ConfigError> {
    let Err(e) = toml::from_str::<toml::Table>(text) else {
        return Ok(());
    };
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    // The key of the line, under the last table header above it.
    let mut table = String::new();
    for l in text.lines().take(line.saturating_sub(1)) {
        let t = l.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let key = match (table.is_empty(), key) {
        (_, None) => String::new(),
        (true, Some(k)) => format!(" (key {k})"),
        (false, Some(k)) => format!(" (key {table}.{k})"),
    };
    // The parser's words only: they name what was expected, not the value found.
    let what = e.message().lines().next().unwrap_or("syntax error");
    Err(ConfigError {
        problems: vec![Problem {
            key: shown.to_string(),
            message: format!(
                "TOML syntax error at line {line}, column {column}{key}: {what} (the line is not shown: it may hold a secret)"
            ),
        }],
    })
}

/// Load and validate. Every problem is reported at once.
pub fn load(sources: &Sources, purpose: Purpose) -> Result<Settings, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = &sources.file {
        if !path.exists() {
            return Err(ConfigError {
                problems: vec![Problem {
                    key: "--config".into(),
                    message: format!("file not found: {}", path.display()),
                }],
            });
        }
        if let Ok(text) = std::fs::read_to_string(path) {
            check_toml_syntax(&text, &path.display().to_string())?;
        }
        builder =
            builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
    }
    if let Some(text) = &sources.inline {
        check_toml_syntax(text, "the inline configuration")?;
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }
    let env: HashMap<String, String> = sources
        .env
        .iter()
        .filter(|(k, _)| k.starts_with("STATUSD__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix("STATUSD")
            .separator("__")
            .source(Some(env)),
    );
    let tree: Value = builder
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .map_err(|e| ConfigError {
            problems: vec![Problem {
                key: sources
                    .file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "environment".into()),
                message: format!("cannot be read: {e}"),
            }],
        })?;
    let credentials_dir = sources.env.get("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let mut r = Reader::new(tree, credentials_dir);
    let settings = r.settings(purpose);
    r.finish()?;
    Ok(settings)
}

/// Settings from a TOML string and an environment map (tests, the demo).
pub fn load_from_str(
    toml_text: &str,
    env: &[(&str, &str)],
    purpose: Purpose,
) -> Result<Settings, ConfigError> {
    let sources = Sources {
        file: None,
        inline: Some(toml_text.to_string()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    load(&sources, purpose)
}
