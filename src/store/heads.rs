//! Each tenant's pending events in memory: its oldest (head) and how many.

use super::*;

/// What is known of a tenant with pending events.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    /// The seq of its oldest pending event.
    pub(super) head: u64,
    pub(super) count: u64,
}

/// The pending events of each tenant that has some, kept in memory (built on open from the
/// pending keys) so the oldest pending event overall and a tenant's pending count are found
/// without an index that every enqueue and acknowledgement would have to write, and without a
/// scan.
#[derive(Default)]
pub(super) struct Heads {
    pub(super) by_seq: std::collections::BTreeSet<(u64, TenantId)>,
    pub(super) by_tenant: std::collections::HashMap<TenantId, Pending>,
}

impl Heads {
    /// A tenant got a pending event with `seq` (seqs only grow, so it is the head only if the
    /// tenant had none).
    pub(super) fn add(&mut self, tenant: TenantId, seq: u64) {
        match self.by_tenant.entry(tenant) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Pending {
                    head: seq,
                    count: 1,
                });
                self.by_seq.insert((seq, tenant));
            }
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().count += 1,
        }
    }

    /// `n` of the tenant's pending events were settled (delivered or dead-lettered); the new
    /// head is read from the store only when some are left.
    pub(super) fn settled(
        &mut self,
        tree: &sled::Tree,
        tenant: TenantId,
        n: u64,
    ) -> Result<(), StoreError> {
        let Some(p) = self.by_tenant.get(&tenant).copied() else {
            return Ok(());
        };
        self.by_seq.remove(&(p.head, tenant));
        let count = p.count.saturating_sub(n);
        let head = if count == 0 {
            None
        } else {
            first_pending(tree, &tenant)?
        };
        match head {
            Some(head) => {
                self.by_tenant.insert(tenant, Pending { head, count });
                self.by_seq.insert((head, tenant));
            }
            None => {
                self.by_tenant.remove(&tenant);
            }
        }
        Ok(())
    }

    pub(super) fn oldest(&self) -> Option<(u64, TenantId)> {
        self.by_seq.first().copied()
    }

    pub(super) fn count(&self, tenant: &TenantId) -> u64 {
        self.by_tenant.get(tenant).map_or(0, |p| p.count)
    }
}

/// Every pending key, in key order: each tenant's head and count.
pub(super) fn read_heads(tree: &sled::Tree) -> Result<Heads, StoreError> {
    let mut heads = Heads::default();
    for k in tree.scan_prefix([b'p']).keys() {
        let (tenant, seq) = parse_pending_key(&k?)?;
        heads.add(tenant, seq);
    }
    Ok(heads)
}

/// The seq of the tenant's first pending event, if any.
pub(super) fn first_pending(
    tree: &sled::Tree,
    tenant: &TenantId,
) -> Result<Option<u64>, StoreError> {
    match tree
        .scan_prefix(key(b'p', &[tenant.as_bytes()]))
        .keys()
        .next()
    {
        Some(k) => Ok(Some(parse_pending_key(&k?)?.1)),
        None => Ok(None),
    }
}
