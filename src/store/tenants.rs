//! Tenant state, the tenant inventory and small named documents.

use super::*;

impl Queue {
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

    /// Insert or replace inventory records (one atomic batch), then flush.
    pub async fn put_inventory(&self, tenants: &[InventoryTenant]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for t in tenants {
            b.insert(inventory_key(&t.id), to_json(t));
        }
        self.inner.tree.apply_batch(b)?;
        self.sync().await
    }

    /// Replace the whole inventory (after a full walk).
    pub async fn replace_inventory(&self, tenants: &[InventoryTenant]) -> Result<(), StoreError> {
        let keep: HashSet<TenantId> = tenants.iter().map(|t| t.id).collect();
        let mut b = sled::Batch::default();
        for k in self.inner.tree.scan_prefix([b'n']).keys() {
            let k = k?;
            if !keep.contains(&uuid_from(&k[1..])?) {
                b.remove(k);
            }
        }
        for t in tenants {
            b.insert(inventory_key(&t.id), to_json(t));
        }
        self.inner.tree.apply_batch(b)?;
        self.sync().await
    }

    /// A small named document (reconciler cursors, logo hash, ...).
    pub fn get_doc<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.inner.get_json(meta_key(&format!("doc/{name}")))
    }

    pub async fn put_doc<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        self.inner
            .tree
            .insert(meta_key(&format!("doc/{name}")), to_json(value))?;
        self.sync().await
    }
}
