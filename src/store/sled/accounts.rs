//! The sled side of accounts added at run time: their records under `a`, written with their
//! events, and removed with (or after) them.

use super::*;
use crate::store::accounts::removal_stops;

/// A pending key, the event it names and its tenant.
type PendingEntry = (::sled::IVec, Uuid, TenantId);

pub(super) fn account_key(id: &str) -> Vec<u8> {
    key(b'a', &[id.as_bytes()])
}

impl SledQueue {
    /// Every account stored through the API, by id.
    pub fn stored_accounts(&self) -> Result<Vec<StoredAccount>, StoreError> {
        self.scan_json(b'a')
    }

    pub fn stored_account(&self, id: &str) -> Result<Option<StoredAccount>, StoreError> {
        self.inner.get_json(account_key(id))
    }

    /// Write an account change and these events in one atomic batch, durable when it returns:
    /// both are stored, or neither. `Err(StoreError::Account)` when the change does not apply
    /// (nothing is written then).
    pub async fn write_account(
        &self,
        change: AccountWrite,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        self.write_answering(move |core, w| {
            let mut extra = Vec::new();
            let current: Option<StoredAccount> = core.get_json(account_key(change.id()))?;
            let record = change.apply(current)?;
            let id = record.id.clone();
            extra.push((account_key(&id), Some(to_json(&record))));
            let (outcomes, wake) = core.write_events_with(w, events, extra)?;
            Ok((outcomes, Wrote { count: 1, wake }))
        })
        .await
    }

    /// An account's pending events and dead letters, as counted by the writes.
    pub fn account_events(&self, id: &str) -> Result<AccountEvents, StoreError> {
        Ok(lock(&self.inner.writer).accounts.get(id))
    }

    /// Every account's pending events and dead letters, as counted by the writes: the cost is
    /// the number of accounts, not of events.
    pub fn account_counts(&self) -> AccountCounts {
        lock(&self.inner.writer).accounts.clone()
    }

    /// Remove a stored account. Without `force` it must have no pending event nor dead letter;
    /// with it, those go too, with its tenant states and inventory, in the same atomic batch.
    pub async fn remove_account(&self, id: &str, force: bool) -> Result<Removal, StoreError> {
        let id = id.to_string();
        self.write_answering(move |core, w| {
            Ok((core.remove_account(w, &id, force)?, Wrote::default()))
        })
        .await
    }
}

impl Core {
    /// The account an event is reported for (`default` when stored without one).
    pub(super) fn event_account(&self, id: &Uuid) -> Result<Option<String>, StoreError> {
        Ok(self
            .get_json::<EventRecord>(event_key(id))?
            .map(|r| account_of(r.account.as_deref()).to_string()))
    }

    /// An account's pending entries (key, event, tenant) and dead letters, by one scan of each.
    fn account_entries(&self, id: &str) -> Result<(Vec<PendingEntry>, Vec<Uuid>), StoreError> {
        let mut pending = Vec::new();
        for item in self.tree.scan_prefix([b'p']) {
            let (k, v) = item?;
            let eid = uuid_from(&v)?;
            if let Some(rec) = self.get_json::<EventRecord>(event_key(&eid))? {
                if account_of(rec.account.as_deref()) == id {
                    pending.push((k, eid, rec.tenant_id));
                }
            }
        }
        let mut dead = Vec::new();
        for k in self.tree.scan_prefix([b'd']).keys() {
            let k = k?;
            let eid = uuid_from(&k[1..])?;
            if self.event_account(&eid)?.as_deref() == Some(id) {
                dead.push(eid);
            }
        }
        Ok((pending, dead))
    }

    fn remove_account(
        &self,
        w: &mut Counters,
        id: &str,
        force: bool,
    ) -> Result<Removal, StoreError> {
        if self.tree.get(account_key(id))?.is_none() {
            return Ok(Removal::NotStored);
        }
        let mine = |account: &Option<String>| account_of(account.as_deref()) == id;
        let (pending, dead) = self.account_entries(id)?;
        let ids: Vec<Uuid> = pending.iter().map(|p| p.1).collect();
        let stops = removal_stops(id, &ids, dead.len(), force, &lock(&self.in_flight_ids))?;
        if let Some(stop) = stops {
            return Ok(stop);
        }
        let mut b = ::sled::Batch::default();
        let mut dropped = AccountDropped {
            pending_events: pending.len() as u64,
            dead_letters: dead.len() as u64,
            ..Default::default()
        };
        let mut tenants: Vec<TenantId> = Vec::new();
        for (k, eid, tenant) in &pending {
            b.remove(k.clone());
            b.remove(event_key(eid));
            if !tenants.contains(tenant) {
                tenants.push(*tenant);
            }
        }
        for eid in &dead {
            b.remove(dead_key(eid));
            b.remove(event_key(eid));
        }
        for item in self.tree.scan_prefix([b't']) {
            let (k, v) = item?;
            let t: TenantState = from_json(&v)?;
            if mine(&t.account) {
                b.remove(k);
                dropped.tenant_states += 1;
            }
        }
        for item in self.tree.scan_prefix([b'n']) {
            let (k, v) = item?;
            let t: InventoryTenant = from_json(&v)?;
            if mine(&t.account) {
                b.remove(k);
                dropped.inventory += 1;
            }
        }
        b.remove(account_key(id));
        b.remove(account_count_key(id));
        let depth = w.depth.saturating_sub(dropped.pending_events);
        let dead_n = w.dead.saturating_sub(dropped.dead_letters);
        b.insert(meta_key("depth"), &depth.to_be_bytes());
        b.insert(meta_key("dead"), &dead_n.to_be_bytes());
        self.tree.apply_batch(b)?;
        w.depth = depth;
        w.dead = dead_n;
        w.accounts.remove(id);
        for t in tenants {
            settled(&mut w.heads, &self.tree, t)?;
        }
        Ok(Removal::Removed(dropped))
    }
}
