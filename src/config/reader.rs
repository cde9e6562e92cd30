//! The walk of the raw layered tree: each known key taken and checked, each problem recorded
//! with its key.

use super::*;

/// Walks the raw tree, taking each known key and recording problems.
pub(super) struct Reader {
    root: Value,
    problems: Vec<Problem>,
    taken: Vec<String>,
    pub(super) credentials_dir: Option<PathBuf>,
}

impl Reader {
    pub(super) fn new(root: Value, credentials_dir: Option<PathBuf>) -> Self {
        Reader {
            root,
            problems: Vec::new(),
            taken: Vec::new(),
            credentials_dir,
        }
    }

    pub(super) fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn raw(&mut self, key: &str) -> Option<Value> {
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

    pub(super) fn string(&mut self, key: &str) -> Option<String> {
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

    pub(super) fn u64_in(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
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

    pub(super) fn bool(&mut self, key: &str, default: bool) -> bool {
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

    pub(super) fn duration(&mut self, key: &str, default: &str) -> Duration {
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
    pub(super) fn secret(&mut self, key: &str, credential: Option<&str>) -> Option<Secret> {
        let file_key = format!("{key}_file");
        let inline = self.string(key);
        let file = self.string(&file_key);
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.problem(key, format!("set either {key} or {file_key}, not both"));
                None
            }
            (Some(v), None) if v.trim().is_empty() => {
                self.problem(
                    key,
                    "is empty or blank: no client could present it (remove the key to leave it unset)",
                );
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

    /// A size such as `"2GB"`, `"500MB"`, `"1GiB"` or a number of bytes.
    fn size(&mut self, key: &str) -> Option<u64> {
        let text = match self.raw(key)? {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s,
            other => {
                self.problem(
                    key,
                    format!("expected a size such as \"2GB\", got {}", kind_of(&other)),
                );
                return None;
            }
        };
        match parse_size(&text) {
            Some(n) if n >= 1 << 20 => Some(n),
            Some(_) => {
                self.problem(
                    key,
                    format!("{text:?} is below 1 MiB: the store could take no event"),
                );
                None
            }
            None => {
                self.problem(
                    key,
                    format!("not a size: {text:?} (expected e.g. \"2GB\", \"500MB\", \"1GiB\" or a number of bytes)"),
                );
                None
            }
        }
    }

    /// An address other replicas can reach this one's API at: `http(s)://host:port`.
    fn advertise_url(&mut self, key: &str) -> Option<String> {
        let raw = self.string(key)?;
        match url::Url::parse(raw.trim()) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && matches!(u.path(), "" | "/")
                    && u.query().is_none()
                    && u.username().is_empty() =>
            {
                Some(raw.trim().trim_end_matches('/').to_string())
            }
            _ => {
                self.problem(
                    key,
                    format!("{raw:?} is not an address of this replica's API: write http://host:port (e.g. http://10.0.3.7:8750)"),
                );
                None
            }
        }
    }

    /// `[cluster]`, checked as client-go checks its leases, and the accounts' pins.
    fn cluster(&mut self, accounts: &[AccountSettings]) -> ClusterSettings {
        let c = ClusterSettings {
            shards: self.u64_in("cluster.shards", 64, 1, 4096) as u32,
            lease_duration: self.duration("cluster.lease_duration", "15s"),
            renew_deadline: self.duration("cluster.renew_deadline", "10s"),
            retry_period: self.duration("cluster.retry_period", "2s"),
            advertise_url: self.advertise_url("cluster.advertise_url"),
        };
        if let Err(why) = c.timing().check() {
            let key = if why.starts_with("cluster.lease_duration") {
                "cluster.lease_duration"
            } else {
                "cluster.renew_deadline"
            };
            self.problem(key, why);
        }
        for a in accounts {
            if let Some(s) = a.shard.filter(|s| *s >= c.shards) {
                self.problem(
                    &format!("accounts.{}.shard", a.id),
                    format!(
                        "{s} is not a shard: cluster.shards is {} (shards 0 to {})",
                        c.shards,
                        c.shards - 1
                    ),
                );
            }
        }
        c
    }

    /// `store.backend` and, for `postgres`, `[store.postgres]`.
    fn store_backend(&mut self) -> (StoreBackend, Option<PostgresSettings>) {
        let backend = match self.string("store.backend").as_deref().map(str::trim) {
            None | Some("sled") => StoreBackend::Sled,
            Some("postgres") => StoreBackend::Postgres,
            Some(other) => {
                self.problem(
                    "store.backend",
                    format!(
                        "{other:?} is not a store backend: \"sled\" (the default) or \"postgres\""
                    ),
                );
                StoreBackend::Sled
            }
        };
        let configured = self.raw("store.postgres").is_some();
        if backend == StoreBackend::Sled {
            if configured && self.string("store.backend").is_none() {
                self.problem(
                    "store.backend",
                    "[store.postgres] is set but store.backend is not: set store.backend = \"postgres\" to use it",
                );
            }
            return (backend, None);
        }
        let url = self.secret("store.postgres.url", Some("postgres_url"));
        let Some(url) = url else {
            self.problem(
                "store.postgres.url",
                "store.backend = \"postgres\" needs store.postgres.url or store.postgres.url_file (postgres://user:password@host:5432/database)",
            );
            return (backend, None);
        };
        if let Err(why) = postgres::check_url(url.expose()) {
            self.problem("store.postgres.url", why);
        }
        let direct_url = self.secret("store.postgres.direct_url", Some("postgres_direct_url"));
        if let Some(Err(why)) = direct_url.as_ref().map(|u| postgres::check_url(u.expose())) {
            self.problem("store.postgres.direct_url", why);
        }
        let pool_size = self.u64_in("store.postgres.pool_size", 8, 2, 1024) as usize;
        let schema = self
            .string("store.postgres.schema")
            .unwrap_or_else(|| "statusd".into());
        if !postgres::valid_schema_name(&schema) {
            self.problem(
                "store.postgres.schema",
                format!("{schema:?} is not a plain schema name (lowercase letters, digits and _, not starting with a digit, at most 63)"),
            );
        }
        let ca_file = self.string("store.postgres.ca_file").map(PathBuf::from);
        if let Some(ca) = &ca_file {
            if !ca.is_file() {
                self.problem(
                    "store.postgres.ca_file",
                    format!("{} is not a readable file", ca.display()),
                );
            }
        }
        (
            backend,
            Some(PostgresSettings {
                url,
                direct_url,
                pool_size,
                schema,
                ca_file,
            }),
        )
    }

    pub(super) fn secret_from_file(&mut self, key: &str, path: &Path) -> Option<Secret> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let trimmed = text.trim_end_matches(['\n', '\r']);
                if trimmed.trim().is_empty() {
                    self.problem(key, format!("file {} is empty or blank", path.display()));
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

    pub(super) fn schedule(&mut self, key: &str, default: &str) -> String {
        let text = self.string(key).unwrap_or_else(|| default.to_string());
        if let Err(message) = validate_cron(&text) {
            self.problem(key, message);
        }
        text
    }

    pub(super) fn uuid(&mut self, key: &str) -> Option<Uuid> {
        let text = self.string(key)?;
        match Uuid::parse_str(text.trim()) {
            Ok(u) => Some(u),
            Err(_) => {
                self.problem(key, format!("not a UUID: {text:?}"));
                None
            }
        }
    }

    pub(super) fn text_len(&mut self, key: &str, value: &str, min: usize, max: usize) {
        let n = value.chars().count();
        if n < min || n > max {
            self.problem(
                key,
                format!("must be {min} to {max} characters long, got {n}"),
            );
        }
    }

    pub(super) fn settings(&mut self, purpose: Purpose) -> Settings {
        let platform = self.platform();
        let integration = self.integration(purpose);
        let store = StoreSettings {
            path: self
                .string("store.path")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/statusd")),
            cache_capacity_mb: self.u64_in("store.cache_capacity_mb", 64, 1, 1 << 20),
            delivered_retention: self.duration("store.delivered_retention", "24h"),
            accept_damaged: false,
            secret_key_file: None,
            secret_key: None,
            max_size: self.size("store.max_size"),
            backend: StoreBackend::Sled,
            postgres: None,
        };
        let (secret_key_file, secret_key) = self.secret_key();
        let (backend, postgres) = self.store_backend();
        let store = StoreSettings {
            secret_key_file,
            secret_key,
            backend,
            postgres,
            ..store
        };
        let delivery = self.delivery();
        let api = self.api();
        let reconcile = self.reconcile();
        let accounts = self.accounts(
            &platform,
            reconcile.tenants.root_tenant_id,
            purpose,
            store.secret_key.is_some(),
        );
        let branding = self.branding();
        let fusion = self.fusion();
        let cluster = self.cluster(&accounts);
        Settings {
            cluster,
            accounts,
            platform,
            integration,
            store,
            delivery,
            api,
            reconcile,
            branding,
            fusion,
        }
    }

    pub(super) fn has_problem(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key == key)
    }

    pub(super) fn has_problem_prefix(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key.starts_with(key))
    }

    pub(super) fn integration(&mut self, purpose: Purpose) -> IntegrationSettings {
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

    pub(super) fn delivery(&mut self) -> DeliverySettings {
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

    pub(super) fn reconcile(&mut self) -> ReconcileSettings {
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

    pub(super) fn branding_targets(&mut self) -> Vec<BrandingTarget> {
        self.targets_at("reconcile.branding.targets")
    }

    /// Branding targets at `key`: tenant UUIDs, or "partners".
    pub(super) fn targets_at(&mut self, key: &str) -> Vec<BrandingTarget> {
        let Some(items) = self.string_list(key) else {
            return Vec::new();
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

    pub(super) fn branding(&mut self) -> BrandingSettings {
        self.branding_at("branding", &[]).unwrap_or_default()
    }

    /// The brand intent of a table (`branding`, or `accounts.<id>.branding`), if it is there;
    /// `also` names keys of the table that are not brand fields (read by the caller).
    pub(super) fn branding_at(&mut self, at: &str, also: &[&str]) -> Option<BrandingSettings> {
        let Value::Object(section) = self.raw(at)? else {
            self.problem(at, "expected a table of brand fields");
            return None;
        };
        let mut settings = BrandingSettings::default();
        for (name, value) in section {
            if also.contains(&name.as_str()) {
                continue;
            }
            let key = format!("{at}.{name}");
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
                        let tkey = format!("{at}.tenants.\"{tenant}\"");
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
        Some(settings)
    }

    pub(super) fn brand_field(&mut self, key: &str, name: &str, value: Value) -> Option<Value> {
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
    pub(super) fn finish(mut self) -> Result<(), ConfigError> {
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

pub(super) fn collect_leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
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

pub(super) fn kind_of(v: &Value) -> &'static str {
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

/// A cron schedule parsed as the scheduler parses it (6 fields, seconds first, day-of-month and
/// day-of-week combined with AND, UTC), to tell when it fires next.
#[derive(Clone)]
pub struct CronSchedule(croner::Cron);

impl CronSchedule {
    pub fn parse(text: &str) -> Result<CronSchedule, String> {
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(text)
            .map(CronSchedule)
            .map_err(|e| format!("not a cron schedule: {text:?} ({e})"))
    }

    /// The first time after `now` that the schedule fires.
    pub fn next_after(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.find_next_occurrence(&now, false).ok()
    }
}

/// Bytes of a size text: a number with an optional unit (B, KB, MB, GB, TB in powers of 1000;
/// KiB, MiB, GiB, TiB in powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * factor;
    (bytes.is_finite() && (0.0..1e19).contains(&bytes)).then_some(bytes as u64)
}
