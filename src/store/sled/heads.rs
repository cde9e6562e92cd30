//! Each tenant's oldest pending event (its head), kept in memory.

use super::*;

/// The oldest pending event of each tenant with pending events, kept in memory (built on open
/// with one seek per tenant) so the oldest pending event overall, and whether a tenant has
/// pending events, are known without an index that every enqueue and acknowledgement would
/// have to write, and without a scan. sled's heads hold their place alone.
pub(super) type Heads = HeadIndex<u64>;

/// Some of the tenant's pending events were settled (delivered or dead-lettered): its head is
/// read again from the store.
pub(super) fn settled(
    heads: &mut Heads,
    tree: &::sled::Tree,
    tenant: TenantId,
) -> Result<(), StoreError> {
    heads.set(tenant, first_pending(tree, &tenant)?);
    Ok(())
}

/// The first pending key of each tenant: one seek per tenant with pending events.
pub(super) fn read_heads(tree: &::sled::Tree) -> Result<Heads, StoreError> {
    let mut heads = Heads::default();
    let mut from = vec![b'p'];
    loop {
        let mut range = tree.range(from.clone()..vec![b'q']);
        let Some(item) = range.next() else { break };
        let (k, _) = item?;
        let (tenant, seq) = parse_pending_key(&k)?;
        heads.add(tenant, seq);
        let mut next = key(b'p', &[tenant.as_bytes()]);
        next.extend_from_slice(&[0xff; 9]);
        from = next;
    }
    Ok(heads)
}

/// The seq of the tenant's first pending event, if any.
pub(super) fn first_pending(
    tree: &::sled::Tree,
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
