//! Each tenant's oldest pending event (its head), kept in memory by both backends: whether a
//! tenant has pending events, and which event is the oldest of all, without a read. What a
//! head holds besides its place differs by backend (sled: the place alone; PostgreSQL: when it
//! was accepted and its account too); the index is the same.

use std::collections::{BTreeSet, HashMap};

use super::TenantId;

/// What a head is ordered by: its place in the store's sequence.
pub(crate) trait Place {
    fn seq(&self) -> u64;
}

impl Place for u64 {
    fn seq(&self) -> u64 {
        *self
    }
}

/// The head of each tenant with pending events, and the heads in sequence order.
pub(crate) struct HeadIndex<H> {
    by_tenant: HashMap<TenantId, H>,
    by_seq: BTreeSet<(u64, TenantId)>,
}

impl<H> Default for HeadIndex<H> {
    fn default() -> Self {
        HeadIndex {
            by_tenant: HashMap::new(),
            by_seq: BTreeSet::new(),
        }
    }
}

impl<H: Place> HeadIndex<H> {
    /// A tenant got a pending event; it is the head if the tenant had none.
    pub(crate) fn add(&mut self, tenant: TenantId, head: H) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.by_tenant.entry(tenant) {
            self.by_seq.insert((head.seq(), tenant));
            e.insert(head);
        }
    }

    /// The tenant's head is now `head` (`None`: it has no pending event any more).
    pub(crate) fn set(&mut self, tenant: TenantId, head: Option<H>) {
        if let Some(old) = self.by_tenant.remove(&tenant) {
            self.by_seq.remove(&(old.seq(), tenant));
        }
        if let Some(head) = head {
            self.by_seq.insert((head.seq(), tenant));
            self.by_tenant.insert(tenant, head);
        }
    }

    pub(crate) fn get(&self, tenant: &TenantId) -> Option<&H> {
        self.by_tenant.get(tenant)
    }

    pub(crate) fn has(&self, tenant: &TenantId) -> bool {
        self.by_tenant.contains_key(tenant)
    }

    pub(crate) fn tenants(&self) -> impl Iterator<Item = &TenantId> {
        self.by_tenant.keys()
    }

    /// The oldest head of all: its place and tenant.
    pub(crate) fn oldest(&self) -> Option<(u64, TenantId)> {
        self.by_seq.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_stays_until_set_and_the_oldest_follows() {
        let (a, b) = (TenantId::from_u128(1), TenantId::from_u128(2));
        let mut h: HeadIndex<u64> = HeadIndex::default();
        h.add(a, 5);
        h.add(b, 3);
        h.add(a, 9);
        assert_eq!(h.get(&a), Some(&5));
        assert_eq!(h.oldest(), Some((3, b)));
        h.set(b, None);
        assert!(!h.has(&b));
        assert_eq!(h.oldest(), Some((5, a)));
        h.set(a, Some(7));
        assert_eq!(h.oldest(), Some((7, a)));
        assert_eq!(h.tenants().count(), 1);
    }
}
