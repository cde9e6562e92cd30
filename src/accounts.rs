//! The partner accounts at run time: each with its own platform client (so its own token,
//! renewed and refused on its own) and its data center.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::config::{AccountSettings, Settings, DEFAULT_ACCOUNT};
use crate::metrics::Metrics;
use crate::platform::{ClientOptions, PlatformClient};

/// One account as delivery and the reconcilers use it.
#[derive(Clone)]
pub struct Account {
    pub id: String,
    pub datacenter_url: String,
    /// The data center's host: the breaker's key, and what status pages show.
    pub datacenter: String,
    pub client: PlatformClient,
    pub root_tenant_id: Option<Uuid>,
    /// The account's own brand intent and targets, if it has them (else the global ones).
    pub branding: Option<crate::config::BrandingSettings>,
    pub branding_targets: Option<Vec<crate::config::BrandingTarget>>,
}

/// Every configured account; cheap to clone.
#[derive(Clone, Default)]
pub struct Accounts {
    by_id: Arc<BTreeMap<String, Account>>,
}

pub use crate::platform::datacenter_of;

impl Accounts {
    /// A client for every account of the settings.
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> Result<Accounts, String> {
        let http = crate::platform::http_client(settings.platform.request_timeout)?;
        // platform.max_concurrency requests in flight per data center, whatever the number of
        // accounts there.
        let mut permits: BTreeMap<String, Arc<tokio::sync::Semaphore>> = BTreeMap::new();
        let mut by_id = BTreeMap::new();
        for a in &settings.accounts {
            let dc_permits = permits
                .entry(datacenter_of(&a.datacenter_url))
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(
                        settings.platform.max_concurrency.max(1),
                    ))
                })
                .clone();
            by_id.insert(
                a.id.clone(),
                Self::account(settings, a, http.clone(), dc_permits, metrics.clone()),
            );
        }
        metrics.expose_datacenters(by_id.values().map(|a: &Account| a.datacenter.as_str()));
        Ok(Accounts {
            by_id: Arc::new(by_id),
        })
    }

    fn account(
        settings: &Settings,
        a: &AccountSettings,
        http: reqwest::Client,
        permits: Arc<tokio::sync::Semaphore>,
        metrics: Arc<Metrics>,
    ) -> Account {
        let client = PlatformClient::with_http(
            ClientOptions {
                base_url: a.datacenter_url.clone(),
                client_id: a.client_id.clone(),
                client_secret: a.client_secret.clone(),
                credentials: a.credentials,
                request_timeout: settings.platform.request_timeout,
                max_concurrency: settings.platform.max_concurrency,
                integration: settings.integration.clone(),
            },
            http,
            permits,
            metrics,
        );
        Account {
            id: a.id.clone(),
            datacenter_url: a.datacenter_url.clone(),
            datacenter: datacenter_of(&a.datacenter_url),
            client,
            root_tenant_id: a.root_tenant_id,
            branding: a.branding.clone(),
            branding_targets: a.branding_targets.clone(),
        }
    }

    /// Accounts already built (tests, tools).
    pub fn from_accounts(accounts: impl IntoIterator<Item = Account>) -> Accounts {
        Accounts {
            by_id: Arc::new(accounts.into_iter().map(|a| (a.id.clone(), a)).collect()),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Account> {
        self.by_id.get(id)
    }

    /// The account of an event stored without one (by an older statusd): `default`.
    pub fn of_event(&self, account: Option<&str>) -> Option<&Account> {
        self.get(account.unwrap_or(DEFAULT_ACCOUNT))
    }

    /// The account when exactly one is configured.
    pub fn only(&self) -> Option<&Account> {
        (self.by_id.len() == 1)
            .then(|| self.by_id.values().next())
            .flatten()
    }

    /// The first account by id (the reconcilers' account until they run per account).
    pub fn first(&self) -> Option<&Account> {
        self.by_id.values().next()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Account> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
