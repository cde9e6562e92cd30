//! Tenant state, the tenant inventory and small named documents.

use super::*;

impl SledQueue {
    // Tenant state and inventory ---------------------------------------------------------------

    pub(super) fn scan_json<T: DeserializeOwned>(&self, prefix: u8) -> Result<Vec<T>, StoreError> {
        self.inner
            .tree
            .scan_prefix([prefix])
            .values()
            .map(|v| v.map_err(StoreError::from).and_then(|v| from_json(&v)))
            .collect()
    }

    pub fn tenant_state(&self, tenant: &TenantId) -> Result<Option<TenantState>, StoreError> {
        self.inner.get_json(tenant_key(tenant))
    }

    /// Every tenant with a recorded intended or reported state.
    pub fn tenant_states(&self) -> Result<Vec<TenantState>, StoreError> {
        self.scan_json(b't')
    }

    pub fn inventory(&self, tenant: &TenantId) -> Result<Option<InventoryTenant>, StoreError> {
        self.inner.get_json(inventory_key(tenant))
    }

    pub fn inventory_all(&self) -> Result<Vec<InventoryTenant>, StoreError> {
        self.scan_json(b'n')
    }

    pub fn inventory_len(&self) -> usize {
        self.inner.tree.scan_prefix([b'n']).count()
    }

    /// Insert or replace inventory records (one atomic batch), durable when it returns.
    pub async fn put_inventory(&self, tenants: &[InventoryTenant]) -> Result<(), StoreError> {
        self.write_inventory(tenants, None).await
    }

    /// Replace an account's whole inventory (after a full walk of its tree); other accounts'
    /// records stay.
    pub async fn replace_inventory(
        &self,
        account: &str,
        tenants: &[InventoryTenant],
    ) -> Result<(), StoreError> {
        self.write_inventory(tenants, Some(account.to_string()))
            .await
    }

    /// Write inventory records; with `replace`, first remove that account's records that are
    /// not among them (records stored without an account belong to `default`).
    async fn write_inventory(
        &self,
        tenants: &[InventoryTenant],
        replace: Option<String>,
    ) -> Result<(), StoreError> {
        let records: Vec<(Vec<u8>, Vec<u8>)> = tenants
            .iter()
            .map(|t| (inventory_key(&t.id), to_json(t)))
            .collect();
        self.write(move |core, _| {
            let mut b = ::sled::Batch::default();
            if let Some(account) = replace {
                let keep: HashSet<&[u8]> = records.iter().map(|(k, _)| k.as_slice()).collect();
                for item in core.tree.scan_prefix([b'n']) {
                    let (k, v) = item?;
                    if keep.contains(k.as_ref()) {
                        continue;
                    }
                    let record: InventoryTenant = from_json(&v)?;
                    let owner = account_of(record.account.as_deref());
                    if owner == account {
                        b.remove(k);
                    }
                }
            }
            for (k, v) in records {
                b.insert(k, v);
            }
            core.tree.apply_batch(b)?;
            Ok(Wrote::default())
        })
        .await
        .map(|_| ())
    }

    /// A small named document (reconciler cursors, logo hash, ...).
    pub fn get_doc<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.inner.get_json(meta_key(&format!("doc/{name}")))
    }

    pub async fn put_doc<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let (k, v) = (meta_key(&format!("doc/{name}")), to_json(value));
        self.write(move |core, _| {
            core.tree.insert(k, v)?;
            Ok(Wrote::default())
        })
        .await
        .map(|_| ())
    }
}
