//! The validated settings, as the rest of statusd reads them.

use super::*;

/// Durations print the way they are written in the file ("30s", "5m").
pub(super) mod duration_text {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The partner accounts, sorted by id (`default` from `[platform]` in older configurations).
    pub accounts: Vec<AccountSettings>,
    pub platform: PlatformSettings,
    pub integration: IntegrationSettings,
    pub store: StoreSettings,
    pub delivery: DeliverySettings,
    pub api: ApiSettings,
    pub reconcile: ReconcileSettings,
    pub branding: BrandingSettings,
    /// The second platform, Netaxis Fusion, when configured.
    pub fusion: Option<FusionSettings>,
    /// Replicas on one PostgreSQL store: shards and leases.
    pub cluster: ClusterSettings,
}

/// `[cluster]`: how replicas sharing a PostgreSQL store divide the work.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSettings {
    /// Fixed for a store: every event carries its shard.
    pub shards: u32,
    #[serde(with = "duration_text")]
    pub lease_duration: Duration,
    #[serde(with = "duration_text")]
    pub renew_deadline: Duration,
    #[serde(with = "duration_text")]
    pub retry_period: Duration,
    /// The API address other replicas and `owned_elsewhere` answers name (unset: the listen
    /// address when it is a specific one, else `http://$POD_IP:<port>` when the downward API
    /// gives the pod's IP).
    pub advertise_url: Option<String>,
}

impl ClusterSettings {
    pub fn timing(&self) -> LeaseTiming {
        LeaseTiming {
            lease: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry: self.retry_period,
        }
    }
}

/// The lease timings (`cluster.lease_duration`, `renew_deadline`, `retry_period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub lease: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl Default for LeaseTiming {
    fn default() -> LeaseTiming {
        LeaseTiming {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

impl LeaseTiming {
    /// lease > renew deadline > 1.2 × retry, as client-go requires.
    pub fn check(&self) -> Result<(), String> {
        if self.lease <= self.renew_deadline {
            return Err(format!(
                "cluster.lease_duration ({:?}) must be longer than cluster.renew_deadline ({:?})",
                self.lease, self.renew_deadline
            ));
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry.as_secs_f64() {
            return Err(format!(
                "cluster.renew_deadline ({:?}) must be longer than 1.2 × cluster.retry_period ({:?})",
                self.renew_deadline, self.retry
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlatformSettings {
    /// Data-center URL without a trailing slash. `None` only when not configured (demo, sandbox).
    pub base_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    /// Which token endpoint the client id and secret are for.
    pub credentials: Credentials,
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    /// The hosts an account added or rotated through the API may use.
    pub allowed_hosts: Vec<HostPattern>,
    /// PEM roots trusted beside the system ones, by every platform and Fusion client.
    pub ca_file: Option<PathBuf>,
    /// An `http://` proxy for every platform and Fusion request (unset: `HTTPS_PROXY`/`NO_PROXY`).
    /// A secret: its URL may carry the proxy's password.
    pub proxy: Option<Secret>,
}

/// What kind of credentials the client id and secret are, which decides the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    /// An API client of the platform: tokens from `/api/2/idp/token`.
    #[default]
    ApiClient,
    /// A CyberApp's API key ("Connection to Acronis API"): tokens from `/bc/idp/token`.
    Cyberapp,
}

impl Credentials {
    /// The name of the kind, as settings and stored accounts write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Credentials::ApiClient => "api_client",
            Credentials::Cyberapp => "cyberapp",
        }
    }

    pub fn parse(text: &str) -> Option<Credentials> {
        match text {
            "api_client" => Some(Credentials::ApiClient),
            "cyberapp" => Some(Credentials::Cyberapp),
            _ => None,
        }
    }

    pub fn token_path(self) -> &'static str {
        match self {
            Credentials::ApiClient => "/api/2/idp/token",
            Credentials::Cyberapp => "/bc/idp/token",
        }
    }
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
    /// `statusd run --accept-damaged-store`: not a setting of the file, a decision per start.
    #[serde(skip)]
    pub accept_damaged: bool,
    /// The bound on the size of the store's files, in bytes (none by default).
    pub max_size: Option<u64>,
    /// Where the key that seals secrets kept in the store was read from (the file, or the
    /// systemd credential `secret_key`).
    pub secret_key_file: Option<PathBuf>,
    /// That key, read and checked when the settings were loaded.
    #[serde(skip)]
    pub secret_key: Option<SecretKey>,
    /// `sled` (this machine's disk, at `path`) or `postgres` (`[store.postgres]`).
    pub backend: StoreBackend,
    pub postgres: Option<PostgresSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Sled,
    Postgres,
}

/// `[store.postgres]`: where the shared store lives.
#[derive(Debug, Clone, Serialize)]
pub struct PostgresSettings {
    /// The connection URL (it holds the password): from `url` or `url_file`.
    pub url: Secret,
    /// A URL to the database itself (not through a pooler in transaction mode), for what needs
    /// a session: the `LISTEN` that wakes a replica at once for events another accepted. Unset:
    /// `url` (through such a pooler the wake-up may not arrive; the periodic round delivers).
    pub direct_url: Option<Secret>,
    pub pool_size: usize,
    pub schema: String,
    pub ca_file: Option<PathBuf>,
}

impl StoreSettings {
    /// Where the store is, for messages: the sled directory, or the database (no password).
    pub fn location(&self) -> String {
        match (&self.backend, &self.postgres) {
            (StoreBackend::Postgres, Some(pg)) => format!(
                "{} (schema {})",
                super::postgres::describe_url(pg.url.expose()),
                pg.schema
            ),
            _ => self.path.display().to_string(),
        }
    }
}

/// `Retry-After` values are capped so a hostile or broken header cannot park us for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

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
    /// Intake and reads.
    pub token: Option<Secret>,
    /// Everything that changes accounts, dead letters, reconcilers and the Fusion login; unset:
    /// `token` does both.
    pub admin_token: Option<Secret>,
    /// Connections served at once; past it, a connection gets one answer and is closed.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers or its body.
    #[serde(with = "duration_text")]
    pub read_timeout: Duration,
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
