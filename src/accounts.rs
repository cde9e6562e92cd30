//! The partner accounts at run time: each with its own platform client (so its own token,
//! renewed and refused on its own) and its data center. Accounts of the configuration file are
//! fixed for the life of the process; accounts added through the API come and go while it
//! runs (the map is swapped whole, so a reader holds a consistent copy).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use uuid::Uuid;

use crate::config::{Credentials, IntegrationSettings, Secret, Settings, DEFAULT_ACCOUNT};
use crate::metrics::Metrics;
use crate::platform::{ClientOptions, PlatformClient};

/// Where an account comes from: the configuration file (fixed), or the store (added through
/// the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountSource {
    File,
    Store,
}

impl AccountSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountSource::File => "file",
            AccountSource::Store => "api",
        }
    }
}

/// One account as delivery and the reconcilers use it.
#[derive(Clone)]
pub struct Account {
    pub id: String,
    pub datacenter_url: String,
    /// The data center's host: the breaker's key, and what status pages show.
    pub datacenter: String,
    pub client_id: String,
    pub credentials: Credentials,
    pub client: PlatformClient,
    pub root_tenant_id: Option<Uuid>,
    /// The account's own brand intent and targets, if it has them (else the global ones).
    pub branding: Option<crate::config::BrandingSettings>,
    pub branding_targets: Option<Vec<crate::config::BrandingTarget>>,
    pub source: AccountSource,
    /// The API client's tenant and its name, as validated (accounts added through the API).
    pub tenant_id: Option<Uuid>,
    pub tenant_name: Option<String>,
    /// A deactivation asked for it to go once its events are settled.
    pub retiring: bool,
    /// When its stored record last changed (accounts added through the API; 0 for the
    /// configuration file's): how a replica sees that a peer replaced its credentials.
    pub updated_at_ms: i64,
}

/// What builds a client for an account: the shared HTTP client and, per data center, the
/// permits that bound the requests in flight there.
struct Builder {
    /// For the configuration file's accounts (the operator's own words) and Fusion.
    http: reqwest::Client,
    /// For accounts added through the API: names resolve only to allowed addresses.
    guarded: reqwest::Client,
    policy: Arc<crate::platform::HostPolicy>,
    permits: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Semaphore>>>,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
    max_concurrency: usize,
    integration: IntegrationSettings,
}

/// What an account is, before it has a client.
pub struct AccountSpec {
    pub id: String,
    pub datacenter_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub credentials: Credentials,
    pub root_tenant_id: Option<Uuid>,
}

/// The accounts in use, by id: replaced whole on each change.
pub type AccountMap = Arc<BTreeMap<String, Arc<Account>>>;

/// Every account; cheap to clone, shared by every part.
#[derive(Clone, Default)]
pub struct Accounts {
    by_id: Arc<RwLock<AccountMap>>,
    builder: Option<Arc<Builder>>,
}

pub use crate::platform::datacenter_of;

/// A stored account whose secret does not open: with the key's refusal, or with no key set.
#[derive(Debug, thiserror::Error)]
#[error("{id} ({})", .why.as_ref().map_or_else(|| "store.secret_key_file is not set".to_string(), |e| e.to_string()))]
pub struct Unopened {
    pub id: String,
    pub why: Option<crate::vault::VaultError>,
}

/// Why the accounts kept in the store cannot be taken in (each names the setting to change).
#[derive(Debug, thiserror::Error)]
pub enum StoredAccountsError {
    #[error("the store holds {count} account(s) added through the API ({ids}) whose secrets are sealed, and store.secret_key_file is not set: set it to the key they were sealed with (no account was dropped)")]
    NoKey { count: usize, ids: String },
    #[error("these accounts cannot build clients")]
    NoBuilder,
    #[error("account {0:?} is both in the configuration file and in the store (added through the API): remove it from one of the two (accounts.{0})")]
    InBoth(String),
    #[error("store.secret_key_file cannot open the secrets of {} of {of} stored account(s): {}. Set it to the key they were sealed with (no account was dropped)", .failed.len(), .failed.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", "))]
    Unopened { of: usize, failed: Vec<Unopened> },
}

impl Accounts {
    /// A client for every account of the settings.
    pub fn new(
        settings: &Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Accounts, crate::platform::HttpClientError> {
        let policy = Arc::new(crate::platform::HostPolicy::new(&settings.platform));
        let http_options = crate::platform::HttpOptions::from(&settings.platform);
        let builder = Arc::new(Builder {
            http: crate::platform::http_client(&http_options, None)?,
            guarded: crate::platform::http_client(&http_options, Some(policy.clone()))?,
            policy,
            permits: Default::default(),
            metrics: metrics.clone(),
            request_timeout: settings.platform.request_timeout,
            max_concurrency: settings.platform.max_concurrency.max(1),
            integration: settings.integration.clone(),
        });
        let mut built = Vec::new();
        for a in &settings.accounts {
            let mut account = builder.account(
                AccountSpec {
                    id: a.id.clone(),
                    datacenter_url: a.datacenter_url.clone(),
                    client_id: a.client_id.clone(),
                    client_secret: a.client_secret.clone(),
                    credentials: a.credentials,
                    root_tenant_id: a.root_tenant_id,
                },
                AccountSource::File,
            );
            account.branding = a.branding.clone();
            account.branding_targets = a.branding_targets.clone();
            built.push(account);
        }
        let accounts = Accounts {
            by_id: Default::default(),
            builder: Some(builder.clone()),
        };
        accounts.put(&builder, built, &[]);
        Ok(accounts)
    }

    /// An account added through the API, with a client of this daemon (its data center's
    /// permits shared when it has some), not yet in the map and leaving nothing behind until
    /// it is: what validation uses, and what `insert` takes.
    pub fn build(&self, spec: AccountSpec) -> Result<Account, StoredAccountsError> {
        let builder = self
            .builder
            .as_ref()
            .ok_or(StoredAccountsError::NoBuilder)?;
        let mut account = builder.account(spec, AccountSource::Store);
        account.client = account.client.on_probation();
        Ok(account)
    }

    /// May an account added through the API use this data-center URL (an origin)? Checked
    /// before anything connects to it: `platform.allowed_hosts`, then where the name resolves.
    pub async fn check_address(&self, url: &str) -> Result<(), crate::platform::Refused> {
        match self.builder.as_ref() {
            Some(b) => b.policy.check(url).await,
            None => Ok(()),
        }
    }

    /// The HTTP client every account shares (its connection pool and TLS set-up), for the
    /// other platform's client too.
    pub fn http(&self) -> Option<reqwest::Client> {
        self.builder.as_ref().map(|b| b.http.clone())
    }

    /// Accounts already built (tests, tools).
    pub fn from_accounts(accounts: impl IntoIterator<Item = Account>) -> Accounts {
        Accounts {
            by_id: Arc::new(RwLock::new(Arc::new(
                accounts
                    .into_iter()
                    .map(|a| (a.id.clone(), Arc::new(a)))
                    .collect(),
            ))),
            builder: None,
        }
    }

    /// The accounts in use now, as one consistent map (cheap: the map is shared, not copied).
    pub fn snapshot(&self) -> AccountMap {
        self.by_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn change(&self, f: impl FnOnce(&mut BTreeMap<String, Arc<Account>>)) {
        let mut guard = self
            .by_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut map = (**guard).clone();
        f(&mut map);
        *guard = Arc::new(map);
    }

    /// Put an account in use (added, or its credentials replaced); returns the one it replaced.
    pub fn insert(&self, account: Account) -> Option<Arc<Account>> {
        if let Some(b) = &self.builder {
            b.enlist(&account);
        }
        let mut old = None;
        self.change(|m| old = m.insert(account.id.clone(), Arc::new(account)));
        old
    }

    /// Put back what `insert` replaced (`None`: remove the id), when the write it preceded
    /// failed.
    pub fn restore(&self, id: &str, previous: Option<Arc<Account>>) {
        self.change(|m| match previous {
            Some(a) => {
                m.insert(id.to_string(), a);
            }
            None => {
                m.remove(id);
            }
        });
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Account>> {
        let mut old = None;
        self.change(|m| old = m.remove(id));
        old
    }

    /// Mark an account retiring in memory (its store record already says so).
    pub fn mark_retiring(&self, id: &str) {
        self.change(|m| {
            if let Some(a) = m.get(id) {
                let mut a = (**a).clone();
                a.retiring = true;
                m.insert(id.to_string(), Arc::new(a));
            }
        });
    }

    pub fn get(&self, id: &str) -> Option<Arc<Account>> {
        self.snapshot().get(id).cloned()
    }

    /// The account of an event stored without one (by an older statusd): `default`.
    pub fn of_event(&self, account: Option<&str>) -> Option<Arc<Account>> {
        self.get(account.unwrap_or(DEFAULT_ACCOUNT))
    }

    /// The account when exactly one is configured.
    pub fn only(&self) -> Option<Arc<Account>> {
        let map = self.snapshot();
        (map.len() == 1)
            .then(|| map.values().next().cloned())
            .flatten()
    }

    /// The first account by id.
    pub fn first(&self) -> Option<Arc<Account>> {
        self.snapshot().values().next().cloned()
    }

    /// The accounts in use now, by id.
    pub fn iter(&self) -> impl Iterator<Item = Arc<Account>> {
        let map = self.snapshot();
        map.values().cloned().collect::<Vec<_>>().into_iter()
    }

    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }
}

impl Builder {
    /// An account's client: the guarded HTTP client for one added through the API (blocked
    /// outright when its host is not allowed), the data center's permits when it has some,
    /// else its own until it is enlisted.
    fn account(&self, spec: AccountSpec, source: AccountSource) -> Account {
        let datacenter = datacenter_of(&spec.datacenter_url);
        let permits = self
            .permits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&datacenter)
            .cloned()
            .unwrap_or_else(|| Arc::new(tokio::sync::Semaphore::new(self.max_concurrency)));
        let (http, blocked) = match source {
            AccountSource::File => (self.http.clone(), None),
            AccountSource::Store => (
                self.guarded.clone(),
                self.policy.check_host(&spec.datacenter_url).err(),
            ),
        };
        let client = PlatformClient::with_http(
            ClientOptions {
                base_url: spec.datacenter_url.clone(),
                client_id: spec.client_id.clone(),
                client_secret: spec.client_secret,
                credentials: spec.credentials,
                request_timeout: self.request_timeout,
                max_concurrency: self.max_concurrency,
                integration: self.integration.clone(),
            },
            http,
            permits,
            self.metrics.clone(),
        );
        let client = match blocked {
            Some(why) => client.blocked(why.0),
            None => client,
        };
        Account {
            id: spec.id,
            datacenter_url: spec.datacenter_url,
            datacenter,
            client_id: spec.client_id,
            credentials: spec.credentials,
            client,
            root_tenant_id: spec.root_tenant_id,
            branding: None,
            branding_targets: None,
            source,
            tenant_id: None,
            tenant_name: None,
            retiring: false,
            updated_at_ms: 0,
        }
    }

    /// An account goes in use: its data center's permits shared from now on, its figures shown.
    fn enlist(&self, a: &Account) {
        self.permits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(a.datacenter.clone())
            .or_insert_with(|| a.client.permits());
        a.client.enlist();
        self.metrics
            .expose_datacenters(std::iter::once(a.datacenter.as_str()));
    }

    /// An account as the store holds it, its secret opened with `key` (or why it cannot be),
    /// and whether its secret is in the format before bindings (to be sealed again at start).
    /// A secret that does not open for the record (its address or client id was changed, or
    /// it was copied from another record) makes an account that sends nothing and shows
    /// failing: its events wait.
    fn stored(
        &self,
        s: &crate::store::StoredAccount,
        key: &crate::vault::SecretKey,
    ) -> Result<(Account, bool), Unopened> {
        let (secret, stale, unbound) = match key.open_bound(&s.binding(), &s.client_secret_sealed) {
            Ok(o) => (o.secret, o.legacy, None),
            Err(e) if !e.is_key() => (Secret::new(""), false, Some(e)),
            Err(e) => {
                return Err(Unopened {
                    id: s.id.clone(),
                    why: Some(e),
                })
            }
        };
        let mut account = self.account(
            AccountSpec {
                id: s.id.clone(),
                datacenter_url: s.datacenter_url.clone(),
                client_id: s.client_id.clone(),
                client_secret: secret,
                credentials: Credentials::parse(&s.credentials).unwrap_or_default(),
                root_tenant_id: s.root_tenant_id,
            },
            AccountSource::Store,
        );
        account.tenant_id = s.tenant_id;
        account.tenant_name = s.tenant_name.clone();
        account.retiring = s.retiring;
        account.updated_at_ms = s.updated_at_ms;
        if let Some(e) = unbound {
            tracing::error!(message = "a stored account's secret does not open for its record: nothing is sent for it, its events wait", account = %s.id, error = %e);
            account.client = account
                .client
                .blocked(format!("the stored secret cannot be used: {e}"));
        }
        Ok((account, stale))
    }
}

impl Accounts {
    /// Put the accounts stored through the API in use, their secrets opened with `key`: every
    /// one of them, or none (an error that names the setting and each account that failed).
    /// Returns how many, and the ids of those whose secret should be sealed again.
    pub fn load_stored(
        &self,
        stored: Vec<crate::store::StoredAccount>,
        key: Option<&crate::vault::SecretKey>,
    ) -> Result<(usize, Vec<String>), StoredAccountsError> {
        if stored.is_empty() {
            return Ok((0, Vec::new()));
        }
        let Some(key) = key else {
            return Err(StoredAccountsError::NoKey {
                count: stored.len(),
                ids: ids_of(&stored),
            });
        };
        let builder = self
            .builder
            .as_ref()
            .ok_or(StoredAccountsError::NoBuilder)?;
        let mut built = Vec::with_capacity(stored.len());
        let mut stale = Vec::new();
        let mut failed = Vec::new();
        for s in &stored {
            if self.get(&s.id).is_some() {
                return Err(StoredAccountsError::InBoth(s.id.clone()));
            }
            match builder.stored(s, key) {
                Ok((a, old)) => {
                    if old {
                        stale.push(a.id.clone());
                    }
                    built.push(a);
                }
                Err(e) => failed.push(e),
            }
        }
        if !failed.is_empty() {
            return Err(StoredAccountsError::Unopened {
                of: stored.len(),
                failed,
            });
        }
        let n = built.len();
        self.put(builder, built, &[]);
        Ok((n, stale))
    }
}

fn ids_of(stored: &[crate::store::StoredAccount]) -> String {
    let mut ids: Vec<&str> = stored.iter().take(10).map(|s| s.id.as_str()).collect();
    if stored.len() > 10 {
        ids.push("...");
    }
    ids.join(", ")
}

/// How often retiring accounts are checked for events still to settle.
pub const RETIREMENT_CHECK: Duration = Duration::from_secs(1);

/// Remove each retiring account once none of its events is pending or dead (a dead letter keeps
/// it, visible as retiring, until it is purged, or retried and delivered).
pub async fn retirement_loop(
    queue: crate::store::Queue,
    accounts: Accounts,
    changes: Arc<tokio::sync::Mutex<()>>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETIREMENT_CHECK) => {}
        }
        let retiring: Vec<String> = accounts
            .iter()
            .filter(|a| a.retiring && a.source == AccountSource::Store)
            .map(|a| a.id.clone())
            .collect();
        for id in retiring {
            match queue.account_events(&id).await {
                Ok(n) if n.pending == 0 && n.dead == 0 => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(message = "cannot check a retiring account", account = %id, error = %e);
                    continue;
                }
            }
            let _change = changes.lock().await;
            let previous = accounts.remove(&id);
            match queue.remove_account(&id, false).await {
                Ok(crate::store::Removal::Removed(_)) => {
                    tracing::info!(message = "retired account removed: its events are settled", account = %id);
                }
                Ok(_) => accounts.restore(&id, previous),
                Err(e) => {
                    accounts.restore(&id, previous);
                    tracing::warn!(message = "cannot remove a retiring account", account = %id, error = %e);
                }
            }
        }
    }
}

/// What one look at the shared store changed here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncChanges {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub removed: Vec<String>,
    /// Stored accounts this process cannot take in (their secret does not open, or the id is
    /// also in the configuration file), with why.
    pub refused: Vec<String>,
}

impl Accounts {
    /// Make the accounts added through the API those the store holds now: on a store shared
    /// by several replicas, a peer adds, replaces, retires and removes them. Accounts of the
    /// configuration file are left as they are.
    pub fn sync_stored(
        &self,
        stored: &[crate::store::StoredAccount],
        key: Option<&crate::vault::SecretKey>,
    ) -> SyncChanges {
        let mut changes = SyncChanges::default();
        let Some(builder) = self.builder.as_ref() else {
            return changes;
        };
        let current = self.snapshot();
        let mut built = Vec::new();
        for s in stored {
            let same = match current.get(&s.id) {
                Some(a) if a.source == AccountSource::File => {
                    changes.refused.push(format!(
                        "{} (also in the configuration file: accounts.{})",
                        s.id, s.id
                    ));
                    continue;
                }
                Some(a) if a.updated_at_ms == s.updated_at_ms => {
                    if a.retiring != s.retiring {
                        let mut a = (**a).clone();
                        a.retiring = s.retiring;
                        changes.replaced.push(s.id.clone());
                        built.push(a);
                    }
                    continue;
                }
                Some(_) => &mut changes.replaced,
                None => &mut changes.added,
            };
            let opened = match key {
                Some(k) => builder.stored(s, k).map(|(a, _)| a),
                None => Err(Unopened {
                    id: s.id.clone(),
                    why: None,
                }),
            };
            match opened {
                Ok(a) => {
                    same.push(s.id.clone());
                    built.push(a);
                }
                Err(e) => changes.refused.push(e.to_string()),
            }
        }
        let kept: std::collections::BTreeSet<&str> = stored.iter().map(|s| s.id.as_str()).collect();
        changes.removed = current
            .values()
            .filter(|a| a.source == AccountSource::Store && !kept.contains(a.id.as_str()))
            .map(|a| a.id.clone())
            .collect();
        if !built.is_empty() || !changes.removed.is_empty() {
            self.put(builder, built, &changes.removed);
        }
        changes
    }

    /// Put `built` in use and take `removed` out, in one swap of the map (not one copy of it
    /// per account); their data centers shown in the metrics.
    fn put(&self, builder: &Builder, built: Vec<Account>, removed: &[String]) {
        for a in &built {
            builder.enlist(a);
        }
        self.change(|m| {
            for a in built {
                m.insert(a.id.clone(), Arc::new(a));
            }
            for id in removed {
                m.remove(id);
            }
        });
    }
}

/// Keep the accounts added through the API in step with a store shared by several replicas,
/// looking every `every` (each change under the lock the API's own changes take).
pub async fn sync_loop(
    queue: crate::store::Queue,
    accounts: Accounts,
    changes: Arc<tokio::sync::Mutex<()>>,
    key: Option<crate::vault::SecretKey>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut refused_before: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let _change = changes.lock().await;
        let stored = match queue.stored_accounts().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(message = "cannot read the stored accounts", error = %e);
                continue;
            }
        };
        let done = accounts.sync_stored(&stored, key.as_ref());
        for (what, ids) in [
            ("account added by a peer taken in", &done.added),
            ("account changed by a peer taken in", &done.replaced),
            ("account removed by a peer", &done.removed),
        ] {
            for id in ids {
                tracing::info!(message = what, account = %id);
            }
        }
        // Said once per cause, not at every look.
        for why in done.refused.iter().filter(|w| !refused_before.contains(w)) {
            tracing::error!(message = "a stored account cannot be taken in; its events wait", error = %why);
        }
        refused_before = done.refused;
    }
}

/// What sealing a stored account's secret again did.
#[derive(Debug)]
pub enum Reseal {
    /// Sealed again and written: the record's new `updated_at_ms`.
    Sealed(i64),
    /// It did not need to be.
    Already,
    /// It does not open with the keys at hand (or not for this record).
    Unopened(crate::vault::VaultError),
}

/// Seal a stored account's secret again under `key`, bound to its record, when `needs` says the
/// opened value should be (an older format, the previous key): what the first start after an
/// upgrade and `statusd store rekey` both do.
pub async fn reseal(
    queue: &crate::store::Queue,
    key: &crate::vault::SecretKey,
    record: crate::store::StoredAccount,
    needs: impl Fn(&crate::vault::Opened) -> bool,
) -> Result<Reseal, crate::store::StoreError> {
    let opened = match key.open_bound(&record.binding(), &record.client_secret_sealed) {
        Ok(o) => o,
        Err(e) => return Ok(Reseal::Unopened(e)),
    };
    if !needs(&opened) {
        return Ok(Reseal::Already);
    }
    let record = record.resealed(key, &opened.secret);
    let updated = record.updated_at_ms;
    queue
        .write_account(crate::store::AccountWrite::Replace(record), Vec::new())
        .await?;
    Ok(Reseal::Sealed(updated))
}
