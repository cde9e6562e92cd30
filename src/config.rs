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

/// A secret value (client secret, API token). `Debug`, `Display` and `Serialize` never show it.
#[derive(Clone)]
pub struct Secret(secrecy::SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(secrecy::SecretString::from(value.into()))
    }
    /// The only way to read the value; grep for it to audit every use.
    pub fn expose(&self) -> &str {
        use secrecy::ExposeSecret;
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Durations print the way they are written in the file ("30s", "5m").
mod duration_text {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub platform: PlatformSettings,
    pub integration: IntegrationSettings,
    pub store: StoreSettings,
    pub delivery: DeliverySettings,
    pub api: ApiSettings,
    pub reconcile: ReconcileSettings,
    pub branding: BrandingSettings,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlatformSettings {
    /// Data-center URL without a trailing slash. `None` only when not configured (demo, sandbox).
    pub base_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    pub max_concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntegrationSettings {
    pub application_code: Option<String>,
    pub application_id: Option<String>,
    pub module_name: String,
    pub module_version: String,
    pub vendor_system_name: Option<String>,
    pub vendor_system_version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreSettings {
    pub path: PathBuf,
    pub cache_capacity_mb: u64,
    #[serde(with = "duration_text")]
    pub delivered_retention: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliverySettings {
    pub max_batch_events: usize,
    #[serde(with = "duration_text")]
    pub initial_backoff: Duration,
    #[serde(with = "duration_text")]
    pub max_backoff: Duration,
    #[serde(with = "duration_text")]
    pub max_age: Duration,
    #[serde(with = "duration_text")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReconcileSettings {
    pub tenants: TenantsReconcileSettings,
    pub status: StatusReconcileSettings,
    pub branding: BrandingReconcileSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRemoved {
    Deactivate,
    Report,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantsReconcileSettings {
    pub schedule: String,
    pub root_tenant_id: Option<Uuid>,
    pub on_removed: OnRemoved,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReconcileSettings {
    pub schedule: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrandingTarget {
    Partners,
    #[serde(untagged)]
    Tenant(Uuid),
}

#[derive(Debug, Clone, Serialize)]
pub struct BrandingReconcileSettings {
    pub schedule: String,
    pub targets: Vec<BrandingTarget>,
    pub enable: bool,
}

/// Intended brand: only the fields named here are managed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BrandingSettings {
    pub fields: BTreeMap<String, Value>,
    pub logo_file: Option<PathBuf>,
    pub tenants: BTreeMap<Uuid, BTreeMap<String, Value>>,
}

/// Brand fields statusd can manage, with the kind of value each takes.
pub const BRAND_FIELDS: &[(&str, BrandFieldKind)] = &[
    ("company_name", BrandFieldKind::Text),
    ("service_name", BrandFieldKind::Text),
    ("color", BrandFieldKind::Color),
    ("color_scheme", BrandFieldKind::Text),
    ("upsell_url", BrandFieldKind::Url),
    ("home_url", BrandFieldKind::Url),
    ("support_url", BrandFieldKind::Url),
    ("support_phone", BrandFieldKind::Text),
    ("knowledgebase_url", BrandFieldKind::Url),
    ("help_url", BrandFieldKind::Url),
    ("user_guide_url", BrandFieldKind::Url),
    ("mobile_app_android_download_url", BrandFieldKind::Url),
    ("mobile_app_ios_download_url", BrandFieldKind::Url),
    ("terms_url", BrandFieldKind::Url),
    ("platform_terms_url", BrandFieldKind::Url),
    ("privacy_policy_url", BrandFieldKind::Url),
    ("owns_custom_legal_docs", BrandFieldKind::Bool),
    ("account_server_url", BrandFieldKind::Url),
    ("backup_console_url", BrandFieldKind::Url),
    ("router_url", BrandFieldKind::Url),
    ("reg_server_url", BrandFieldKind::Url),
    ("agent_gateway_url", BrandFieldKind::Url),
    ("white_labeled_agent", BrandFieldKind::Bool),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrandFieldKind {
    Text,
    Url,
    Color,
    Bool,
}

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
        builder =
            builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
    }
    if let Some(text) = &sources.inline {
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

/// Walks the raw tree, taking each known key and recording problems.
struct Reader {
    root: Value,
    problems: Vec<Problem>,
    taken: Vec<String>,
    credentials_dir: Option<PathBuf>,
}

impl Reader {
    fn new(root: Value, credentials_dir: Option<PathBuf>) -> Self {
        Reader {
            root,
            problems: Vec::new(),
            taken: Vec::new(),
            credentials_dir,
        }
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn raw(&mut self, key: &str) -> Option<Value> {
        self.taken.push(key.to_string());
        let mut cur = &self.root;
        for part in key.split('.') {
            cur = cur.as_object()?.get(part)?;
        }
        if cur.is_null() {
            None
        } else {
            Some(cur.clone())
        }
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.raw(key)? {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.problem(key, format!("expected a string, got {}", kind_of(&other)));
                None
            }
        }
    }

    fn u64_in(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let value = match self.raw(key) {
            None => return default,
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
            Some(_) => None,
        };
        match value {
            Some(v) if (min..=max).contains(&v) => v,
            _ => {
                self.problem(key, format!("expected a whole number from {min} to {max}"));
                default
            }
        }
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.raw(key) {
            None => default,
            Some(Value::Bool(b)) => b,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
            Some(_) => {
                self.problem(key, "expected true or false");
                default
            }
        }
    }

    fn duration(&mut self, key: &str, default: &str) -> Duration {
        let fallback = humantime::parse_duration(default).expect("built-in default parses");
        let Some(text) = self.string(key) else {
            return fallback;
        };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(key, "must be greater than zero");
                fallback
            }
            Err(_) => {
                self.problem(
                    key,
                    format!("not a duration: {text:?} (expected e.g. \"30s\", \"5m\", \"72h\")"),
                );
                fallback
            }
        }
    }

    /// A secret given inline (`key`) or through a file (`key_file`); the file wins over nothing,
    /// both at once is a problem. `credential` names a systemd credential to fall back on.
    fn secret(&mut self, key: &str, credential: Option<&str>) -> Option<Secret> {
        let file_key = format!("{key}_file");
        let inline = self.string(key);
        let file = self.string(&file_key);
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.problem(key, format!("set either {key} or {file_key}, not both"));
                None
            }
            (Some(v), None) => Some(Secret::new(v)),
            (None, Some(path)) => self.secret_from_file(&file_key, Path::new(&path)),
            (None, None) => {
                let dir = self.credentials_dir.clone()?;
                let path = dir.join(credential?);
                path.exists()
                    .then(|| self.secret_from_file("$CREDENTIALS_DIRECTORY", &path))
                    .flatten()
            }
        }
    }

    fn secret_from_file(&mut self, key: &str, path: &Path) -> Option<Secret> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let trimmed = text.trim_end_matches(['\n', '\r']);
                if trimmed.is_empty() {
                    self.problem(key, format!("file {} is empty", path.display()));
                    None
                } else {
                    Some(Secret::new(trimmed))
                }
            }
            Err(e) => {
                self.problem(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    fn schedule(&mut self, key: &str, default: &str) -> String {
        let text = self.string(key).unwrap_or_else(|| default.to_string());
        if let Err(message) = validate_cron(&text) {
            self.problem(key, message);
        }
        text
    }

    fn uuid(&mut self, key: &str) -> Option<Uuid> {
        let text = self.string(key)?;
        match Uuid::parse_str(text.trim()) {
            Ok(u) => Some(u),
            Err(_) => {
                self.problem(key, format!("not a UUID: {text:?}"));
                None
            }
        }
    }

    fn text_len(&mut self, key: &str, value: &str, min: usize, max: usize) {
        let n = value.chars().count();
        if n < min || n > max {
            self.problem(
                key,
                format!("must be {min} to {max} characters long, got {n}"),
            );
        }
    }

    fn settings(&mut self, purpose: Purpose) -> Settings {
        let platform = self.platform(purpose);
        let integration = self.integration(purpose);
        let store = StoreSettings {
            path: self
                .string("store.path")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/statusd")),
            cache_capacity_mb: self.u64_in("store.cache_capacity_mb", 64, 1, 1 << 20),
            delivered_retention: self.duration("store.delivered_retention", "24h"),
        };
        let delivery = self.delivery();
        let api = self.api();
        let reconcile = self.reconcile();
        let branding = self.branding();
        Settings {
            platform,
            integration,
            store,
            delivery,
            api,
            reconcile,
            branding,
        }
    }

    fn platform(&mut self, purpose: Purpose) -> PlatformSettings {
        let base_url = self.string("platform.base_url").and_then(|raw| {
            let trimmed = raw.trim().trim_end_matches('/').to_string();
            match url::Url::parse(&trimmed) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    Some(trimmed)
                }
                _ => {
                    self.problem(
                        "platform.base_url",
                        format!("not a URL: {raw:?} (expected e.g. https://eu2-cloud.acronis.com)"),
                    );
                    None
                }
            }
        });
        let client_id = self
            .string("platform.client_id")
            .filter(|s| !s.trim().is_empty());
        let client_secret = self.secret("platform.client_secret", Some("client_secret"));
        if purpose == Purpose::Run {
            if base_url.is_none() && !self.has_problem("platform.base_url") {
                self.problem(
                    "platform.base_url",
                    "required (the data-center URL, e.g. https://eu2-cloud.acronis.com)",
                );
            }
            if client_id.is_none() {
                self.problem("platform.client_id", "required (the API client's id)");
            }
            if client_secret.is_none() && !self.has_problem_prefix("platform.client_secret") {
                self.problem(
                    "platform.client_secret",
                    "required: set platform.client_secret_file (preferred) or platform.client_secret",
                );
            }
        }
        PlatformSettings {
            base_url,
            client_id,
            client_secret,
            request_timeout: self.duration("platform.request_timeout", "30s"),
            max_concurrency: self.u64_in("platform.max_concurrency", 8, 1, 256) as usize,
        }
    }

    fn has_problem(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key == key)
    }

    fn has_problem_prefix(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key.starts_with(key))
    }

    fn integration(&mut self, purpose: Purpose) -> IntegrationSettings {
        let code = self.string("integration.application_code");
        let id = self.string("integration.application_id");
        match (&code, &id) {
            (Some(_), Some(_)) => self.problem(
                "integration.application_code",
                "set either integration.application_code or integration.application_id, not both",
            ),
            (None, None) if purpose == Purpose::Run => self.problem(
                "integration.application_code",
                "required: set integration.application_code (\"vendor.application\") or integration.application_id (UUID)",
            ),
            _ => {}
        }
        if let Some(c) = &code {
            self.text_len("integration.application_code", c, 1, 1000);
        }
        if let Some(i) = &id {
            if Uuid::parse_str(i).is_err() {
                self.problem("integration.application_id", format!("not a UUID: {i:?}"));
            }
        }
        let module_name = self
            .string("integration.module_name")
            .unwrap_or_else(|| "statusd".into());
        self.text_len("integration.module_name", &module_name, 1, 255);
        let module_version = self
            .string("integration.module_version")
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into());
        self.text_len("integration.module_version", &module_version, 0, 255);
        let vendor_system_name = self.string("integration.vendor_system_name");
        let vendor_system_version = self.string("integration.vendor_system_version");
        if let Some(n) = &vendor_system_name {
            self.text_len("integration.vendor_system_name", n, 1, 255);
        }
        if let Some(v) = &vendor_system_version {
            self.text_len("integration.vendor_system_version", v, 0, 255);
            if vendor_system_name.is_none() {
                self.problem(
                    "integration.vendor_system_name",
                    "required when integration.vendor_system_version is set",
                );
            }
        }
        IntegrationSettings {
            application_code: code,
            application_id: id.map(|i| i.to_ascii_lowercase()),
            module_name,
            module_version,
            vendor_system_name,
            vendor_system_version,
        }
    }

    fn delivery(&mut self) -> DeliverySettings {
        let d = DeliverySettings {
            max_batch_events: self.u64_in("delivery.max_batch_events", 100, 1, 1000) as usize,
            initial_backoff: self.duration("delivery.initial_backoff", "1s"),
            max_backoff: self.duration("delivery.max_backoff", "5m"),
            max_age: self.duration("delivery.max_age", "72h"),
            shutdown_grace: self.duration("delivery.shutdown_grace", "20s"),
        };
        if d.max_backoff < d.initial_backoff {
            self.problem(
                "delivery.max_backoff",
                format!(
                    "must not be shorter than delivery.initial_backoff ({})",
                    humantime::format_duration(d.initial_backoff)
                ),
            );
        }
        d
    }

    fn api(&mut self) -> ApiSettings {
        let listen = match self.string("api.listen") {
            None => SocketAddr::from(([127, 0, 0, 1], 8750)),
            Some(text) => match text.trim().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.problem(
                        "api.listen",
                        format!("not an address: {text:?} (expected host:port, e.g. \"127.0.0.1:8750\")"),
                    );
                    SocketAddr::from(([127, 0, 0, 1], 8750))
                }
            },
        };
        let token = self.secret("api.token", Some("api_token"));
        if token.is_none() && !listen.ip().is_loopback() && !self.has_problem_prefix("api.token") {
            self.problem(
                "api.token",
                format!(
                    "required because api.listen ({listen}) is not a loopback address: set api.token_file or api.token"
                ),
            );
        }
        ApiSettings { listen, token }
    }

    fn reconcile(&mut self) -> ReconcileSettings {
        let on_removed = match self.string("reconcile.tenants.on_removed").as_deref() {
            None | Some("deactivate") => OnRemoved::Deactivate,
            Some("report") => OnRemoved::Report,
            Some(other) => {
                self.problem(
                    "reconcile.tenants.on_removed",
                    format!("expected \"deactivate\" or \"report\", got {other:?}"),
                );
                OnRemoved::Deactivate
            }
        };
        let tenants = TenantsReconcileSettings {
            schedule: self.schedule("reconcile.tenants.schedule", "0 */15 * * * *"),
            root_tenant_id: self.uuid("reconcile.tenants.root_tenant_id"),
            on_removed,
        };
        let status = StatusReconcileSettings {
            schedule: self.schedule("reconcile.status.schedule", "0 0 */6 * * *"),
        };
        let targets = self.branding_targets();
        let branding = BrandingReconcileSettings {
            schedule: self.schedule("reconcile.branding.schedule", "0 0 * * * *"),
            targets,
            enable: self.bool("reconcile.branding.enable", true),
        };
        ReconcileSettings {
            tenants,
            status,
            branding,
        }
    }

    fn branding_targets(&mut self) -> Vec<BrandingTarget> {
        let key = "reconcile.branding.targets";
        let items: Vec<String> = match self.raw(key) {
            None => return Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect(),
            // From the environment: "partners" or a comma-separated list of UUIDs.
            Some(Value::String(s)) => s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            Some(other) => {
                self.problem(key, format!("expected a list, got {}", kind_of(&other)));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for item in items {
            if item == "partners" {
                out.push(BrandingTarget::Partners);
            } else if let Ok(u) = Uuid::parse_str(&item) {
                out.push(BrandingTarget::Tenant(u));
            } else {
                self.problem(
                    key,
                    format!("{item:?} is neither a tenant UUID nor \"partners\""),
                );
            }
        }
        out
    }

    fn branding(&mut self) -> BrandingSettings {
        self.taken.push("branding".into());
        let Some(Value::Object(section)) = self.root.get("branding").cloned() else {
            return BrandingSettings::default();
        };
        let mut settings = BrandingSettings::default();
        for (name, value) in section {
            let key = format!("branding.{name}");
            match name.as_str() {
                "logo_file" => {
                    let path = match value {
                        Value::String(s) => PathBuf::from(s),
                        other => {
                            self.problem(&key, format!("expected a path, got {}", kind_of(&other)));
                            continue;
                        }
                    };
                    match std::fs::read(&path) {
                        Ok(bytes) if bytes.starts_with(b"\x89PNG\r\n\x1a\n") => {
                            settings.logo_file = Some(path)
                        }
                        Ok(_) => {
                            self.problem(&key, format!("{} is not a PNG file", path.display()))
                        }
                        Err(e) => {
                            self.problem(&key, format!("cannot read {}: {e}", path.display()))
                        }
                    }
                }
                "tenants" => {
                    let Value::Object(tenants) = value else {
                        self.problem(&key, "expected a table of tenant UUIDs");
                        continue;
                    };
                    for (tenant, fields) in tenants {
                        let tkey = format!("branding.tenants.\"{tenant}\"");
                        let Ok(id) = Uuid::parse_str(&tenant) else {
                            self.problem(&tkey, "not a tenant UUID");
                            continue;
                        };
                        let Value::Object(fields) = fields else {
                            self.problem(&tkey, "expected a table of brand fields");
                            continue;
                        };
                        let mut map = BTreeMap::new();
                        for (f, v) in fields {
                            if let Some(v) = self.brand_field(&format!("{tkey}.{f}"), &f, v) {
                                map.insert(f, v);
                            }
                        }
                        settings.tenants.insert(id, map);
                    }
                }
                _ => {
                    if let Some(v) = self.brand_field(&key, &name, value) {
                        settings.fields.insert(name, v);
                    }
                }
            }
        }
        settings
    }

    fn brand_field(&mut self, key: &str, name: &str, value: Value) -> Option<Value> {
        let Some((_, kind)) = BRAND_FIELDS.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = BRAND_FIELDS.iter().map(|(n, _)| *n).collect();
            self.problem(
                key,
                format!("not a managed brand field (known: {})", known.join(", ")),
            );
            return None;
        };
        match validate_brand_value(*kind, &value) {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(key, message);
                None
            }
        }
    }

    /// Report keys present in the tree that nothing took (typos, stray environment variables).
    fn finish(mut self) -> Result<(), ConfigError> {
        let mut unknown = Vec::new();
        collect_leaves(&self.root, "", &mut unknown);
        for leaf in unknown {
            let known = self
                .taken
                .iter()
                .any(|t| leaf == *t || leaf.starts_with(&format!("{t}.")));
            if !known {
                self.problems.push(Problem {
                    key: leaf,
                    message: "unknown setting (see config/statusd.example.toml)".into(),
                });
            }
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

fn collect_leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect_leaves(child, &key, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// Check one intended brand value; returns it normalised (strings from the environment become
/// booleans where a boolean is expected).
pub fn validate_brand_value(kind: BrandFieldKind, value: &Value) -> Result<Value, String> {
    match (kind, value) {
        (BrandFieldKind::Bool, Value::Bool(_)) => Ok(value.clone()),
        (BrandFieldKind::Bool, Value::String(s)) if s == "true" || s == "false" => {
            Ok(Value::Bool(s == "true"))
        }
        (BrandFieldKind::Bool, _) => Err("expected true or false".into()),
        (_, Value::String(s)) => {
            match kind {
                BrandFieldKind::Color
                    if s.len() != 6 || !s.chars().all(|c| c.is_ascii_hexdigit()) =>
                {
                    return Err(format!(
                        "not a colour: {s:?} (expected 6 hex digits without '#', e.g. \"1A2B3C\")"
                    ));
                }
                BrandFieldKind::Url if !s.is_empty() => match url::Url::parse(s) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => {
                        return Err(format!(
                            "not a URL: {s:?} (expected http:// or https://, or \"\" to clear)"
                        ))
                    }
                },
                _ => {}
            }
            if s.chars().count() > 1000 {
                return Err("longer than 1000 characters".into());
            }
            Ok(value.clone())
        }
        _ => Err(format!("expected a string, got {}", kind_of(value))),
    }
}

/// Cron strings are 6 fields (seconds first) or 7 (with year), UTC. 5-field strings are refused
/// here because tokio-cron-scheduler would only fail at run time.
pub fn validate_cron(text: &str) -> Result<(), String> {
    let fields = text.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "not a cron schedule: {text:?} has {fields} fields (expected 6, seconds first, e.g. \"0 */15 * * * *\")"
        ));
    }
    tokio_cron_scheduler::Job::new_async(text, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| format!("not a cron schedule: {text:?} ({e})"))
}

impl Settings {
    /// Built-in defaults for local use (demo, tests); never fails.
    pub fn local_defaults() -> Settings {
        load(&Sources::default(), Purpose::Local).expect("built-in defaults are valid")
    }

    /// The effective settings as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let value = serde_json::to_value(self).expect("settings serialize");
        let mut out = String::new();
        write_toml(&value, &mut Vec::new(), &mut out);
        out
    }
}

fn write_toml(v: &Value, path: &mut Vec<String>, out: &mut String) {
    let Value::Object(map) = v else { return };
    let (tables, leaves): (Vec<_>, Vec<_>) = map.iter().partition(|(_, v)| v.is_object());
    if !path.is_empty() && (!leaves.is_empty() || tables.is_empty()) {
        out.push_str(&format!("\n[{}]\n", path.join(".")));
    }
    for (k, v) in leaves {
        match v {
            Value::Null => out.push_str(&format!("# {} = (unset)\n", toml_key(k))),
            other => out.push_str(&format!("{} = {}\n", toml_key(k), toml_value(other))),
        }
    }
    for (k, v) in tables {
        path.push(toml_key(k));
        write_toml(v, path, out);
        path.pop();
    }
}

fn toml_key(k: &str) -> String {
    if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

fn toml_value(v: &Value) -> String {
    match v {
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(m) => {
            let inner: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
        other => other.to_string(),
    }
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
