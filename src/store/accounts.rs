//! Accounts added at run time: their records (the client secret sealed by `vault`, never in
//! clear), written together with the events that come with them, marked retiring by a
//! deactivation, and removed with (or after) their events.

use super::*;

/// An account added through the API, as stored. The secret is sealed; the store never sees it
/// in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAccount {
    pub id: String,
    pub datacenter_url: String,
    pub client_id: String,
    /// The client secret sealed with the store's key, bound to the record's id, address,
    /// client id and kind (see `vault`).
    pub client_secret_sealed: String,
    /// `api_client` or `cyberapp`.
    pub credentials: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_tenant_id: Option<Uuid>,
    /// The API client's tenant and its name, as the data center answered at validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_name: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// A deactivation asked for the account to go once its events are settled.
    #[serde(default)]
    pub retiring: bool,
}

impl StoredAccount {
    /// What its sealed secret is bound to.
    pub fn binding(&self) -> crate::vault::Binding<'_> {
        crate::vault::Binding::AccountSecret {
            id: &self.id,
            datacenter_url: &self.datacenter_url,
            client_id: &self.client_id,
            credentials: &self.credentials,
        }
    }

    /// The secret sealed again under the current key (and the time of the change).
    pub fn resealed(
        self,
        key: &crate::vault::SecretKey,
        secret: &crate::config::Secret,
    ) -> StoredAccount {
        let sealed = key.seal_bound(&self.binding(), secret.expose());
        StoredAccount {
            client_secret_sealed: sealed,
            updated_at_ms: crate::store::now_ms().max(self.updated_at_ms + 1),
            ..self
        }
    }
}

/// How a write changes an account record.
#[derive(Debug, Clone)]
pub enum AccountWrite {
    /// Add the account; refused with `AccountConflict::Exists` when its id is taken.
    Add(StoredAccount),
    /// Replace the record of an account that exists; `AccountConflict::Missing` otherwise.
    Replace(StoredAccount),
    /// Mark a stored account retiring; `AccountConflict::Missing` when it is not stored.
    Retire(String),
}

impl AccountWrite {
    /// The id of the account it changes.
    pub fn id(&self) -> &str {
        match self {
            AccountWrite::Add(a) | AccountWrite::Replace(a) => &a.id,
            AccountWrite::Retire(id) => id,
        }
    }

    /// The record once the change is applied to the one stored (if any), or why it does not
    /// apply. Both backends decide through this.
    pub(super) fn apply(
        &self,
        current: Option<StoredAccount>,
    ) -> Result<StoredAccount, StoreError> {
        let id = self.id().to_string();
        match (self, current) {
            (AccountWrite::Add(_), Some(_)) => Err(StoreError::Account(id, "exists")),
            (AccountWrite::Add(a), None) | (AccountWrite::Replace(a), Some(_)) => Ok(a.clone()),
            (AccountWrite::Retire(_), Some(mut a)) => {
                a.retiring = true;
                a.updated_at_ms = now_ms();
                Ok(a)
            }
            (_, None) => Err(StoreError::Account(id, "not stored")),
        }
    }
}

/// What an account removal dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDropped {
    pub pending_events: u64,
    pub dead_letters: u64,
    pub tenant_states: u64,
    pub inventory: u64,
}

/// An account's events still to settle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AccountEvents {
    pub pending: u64,
    pub dead: u64,
}

/// The outcome of a removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Removed(AccountDropped),
    /// Not removed: it still has events (only without `force`).
    HasEvents(AccountEvents),
    NotStored,
}

/// Why a forced removal waits: a report of the account is in flight.
pub const IN_FLIGHT: &str = "a report of it is in flight; try again in a moment";

/// The rule of a removal, the same on every backend, once the account's events are found:
/// without `force`, an account with pending events or dead letters stays (`Some`: the answer);
/// with it, none of its pending events may be in a report in flight (then it waits, an error).
/// `None`: remove it, with all it has.
pub(super) fn removal_stops(
    id: &str,
    pending: &[Uuid],
    dead: usize,
    force: bool,
    in_flight: &std::collections::HashSet<Uuid>,
) -> Result<Option<Removal>, super::StoreError> {
    if !force && (!pending.is_empty() || dead > 0) {
        return Ok(Some(Removal::HasEvents(AccountEvents {
            pending: pending.len() as u64,
            dead: dead as u64,
        })));
    }
    if pending.iter().any(|e| in_flight.contains(e)) {
        return Err(super::StoreError::Account(id.to_string(), IN_FLIGHT));
    }
    Ok(None)
}
