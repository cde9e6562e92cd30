//! Partner accounts: `[accounts.<id>]` tables, each a data center and the API client (or
//! CyberApp key) a partner gave for it. The `[platform]` credentials of older configurations
//! are the account `default`.

use super::reader::Reader;
use super::*;

/// One partner account: where its data center is and how statusd authenticates there.
#[derive(Debug, Clone, Serialize)]
pub struct AccountSettings {
    pub id: String,
    /// The data center's URL, without a trailing slash.
    pub datacenter_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub credentials: Credentials,
    /// Top of the tenant tree walked for this account (default: the API client's own tenant).
    pub root_tenant_id: Option<Uuid>,
    /// The account's own brand intent (`[accounts.<id>.branding]`), in place of `[branding]`.
    pub branding: Option<BrandingSettings>,
    /// The account's own branding targets (`targets` in that table), in place of
    /// `reconcile.branding.targets`.
    pub branding_targets: Option<Vec<BrandingTarget>>,
    /// `accounts.<id>.shard`: the shard its work is pinned to (else its hash decides).
    pub shard: Option<u32>,
}

/// The id of the account that the `[platform]` credentials stand for.
pub const DEFAULT_ACCOUNT: &str = "default";

/// An account id: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn valid_account_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id.len() <= 63
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

impl Reader {
    /// Every configured account, sorted by id: the `[accounts.<id>]` tables, and `default` from
    /// the `[platform]` credentials when they are set.
    pub(super) fn accounts(
        &mut self,
        platform: &PlatformSettings,
        legacy_root: Option<Uuid>,
        purpose: Purpose,
        keyed: bool,
    ) -> Vec<AccountSettings> {
        let mut accounts = Vec::new();
        let ids: Vec<String> = match self.raw("accounts") {
            None => Vec::new(),
            Some(Value::Object(tables)) => tables.keys().cloned().collect(),
            Some(other) => {
                self.problem(
                    "accounts",
                    format!("expected tables [accounts.<id>], got {}", kind_of(&other)),
                );
                Vec::new()
            }
        };
        for id in ids {
            if let Some(a) = self.account(&id) {
                accounts.push(a);
            }
        }
        let legacy_set = platform.base_url.is_some()
            || platform.client_id.is_some()
            || platform.client_secret.is_some();
        if accounts.iter().any(|a| a.id == DEFAULT_ACCOUNT) && legacy_set {
            self.problem(
                "accounts.default",
                "the [platform] credentials already stand for the account \"default\": keep one of the two",
            );
        } else if let (Some(url), Some(id), Some(secret)) = (
            &platform.base_url,
            &platform.client_id,
            &platform.client_secret,
        ) {
            accounts.push(AccountSettings {
                id: DEFAULT_ACCOUNT.into(),
                datacenter_url: url.clone(),
                client_id: id.clone(),
                client_secret: secret.clone(),
                credentials: platform.credentials,
                root_tenant_id: legacy_root,
                branding: None,
                branding_targets: None,
                shard: None,
            });
        }
        // With a key, accounts may all come through the API (kept in the store).
        if purpose == Purpose::Run && accounts.is_empty() && !keyed {
            self.require_platform_credentials(platform);
        }
        accounts.sort_by(|a, b| a.id.cmp(&b.id));
        accounts
    }

    fn account(&mut self, id: &str) -> Option<AccountSettings> {
        let key = |name: &str| format!("accounts.{id}.{name}");
        if !valid_account_id(id) {
            self.problem(
                &format!("accounts.{id}"),
                "an account id is 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
            );
        }
        let url = self.datacenter_url(&key("datacenter_url"));
        let client_id = self
            .string(&key("client_id"))
            .filter(|s| !s.trim().is_empty());
        let secret = self.secret(&key("client_secret"), None);
        let credentials = self.credentials(&key("credentials"));
        let root_tenant_id = self.uuid(&key("root_tenant_id"));
        let shard = self
            .raw(&key("shard"))
            .is_some()
            .then(|| self.u64_in(&key("shard"), 0, 0, 65_535) as u32);
        let branding = self.branding_at(&key("branding"), &["targets"]);
        let branding_targets = self
            .raw(&key("branding.targets"))
            .is_some()
            .then(|| self.targets_at(&key("branding.targets")));
        if url.is_none() && !self.has_problem(&key("datacenter_url")) {
            self.problem(
                &key("datacenter_url"),
                "required (the partner's data-center URL, e.g. https://eu2-cloud.acronis.com)",
            );
        }
        if client_id.is_none() {
            self.problem(&key("client_id"), "required (the partner's API client id)");
        }
        if secret.is_none() && !self.has_problem_prefix(&key("client_secret")) {
            self.problem(
                &key("client_secret"),
                format!(
                    "required: set {} (preferred) or {}",
                    key("client_secret_file"),
                    key("client_secret")
                ),
            );
        }
        Some(AccountSettings {
            id: id.to_string(),
            datacenter_url: url?,
            client_id: client_id?,
            client_secret: secret?,
            credentials,
            root_tenant_id,
            branding,
            branding_targets,
            shard,
        })
    }
}
