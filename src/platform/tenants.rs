//! Tenant listing with cursor paging (a repeated cursor is an error) and tenant reads.

use super::*;

impl PlatformClient {
    /// Walk every page of a listing. Next pages send only `after`. A repeated cursor is an error.
    pub async fn list_tenants(
        &self,
        selector: &TenantSelector,
        updated_since: Option<&str>,
        allow_deleted: bool,
    ) -> Result<TenantListing, PlatformError> {
        if let TenantSelector::Uuids(ids) = selector {
            let mut all = TenantListing {
                items: Vec::new(),
                timestamp: None,
                pages: 0,
            };
            for chunk in ids.chunks(UUIDS_PER_CALL) {
                let part = self
                    .list_tenants_one(
                        &TenantSelector::Uuids(chunk.to_vec()),
                        updated_since,
                        allow_deleted,
                    )
                    .await?;
                all.timestamp = all.timestamp.or(part.timestamp);
                all.pages += part.pages;
                all.items.extend(part.items);
            }
            return Ok(all);
        }
        self.list_tenants_one(selector, updated_since, allow_deleted)
            .await
    }

    pub(super) async fn list_tenants_one(
        &self,
        selector: &TenantSelector,
        updated_since: Option<&str>,
        allow_deleted: bool,
    ) -> Result<TenantListing, PlatformError> {
        const CALL: &str = "GET /api/2/tenants";
        let url = self.url("/api/2/tenants");
        let mut first: Vec<(String, String)> = match selector {
            TenantSelector::SubtreeRoot(id) => vec![("subtree_root_id".into(), id.to_string())],
            TenantSelector::Parent(id) => vec![("parent_id".into(), id.to_string())],
            TenantSelector::Uuids(ids) => vec![(
                "uuids".into(),
                ids.iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )],
        };
        if let Some(since) = updated_since {
            first.push(("updated_since".into(), since.to_string()));
        }
        if allow_deleted {
            first.push(("allow_deleted".into(), "true".into()));
        }
        let mut listing = TenantListing {
            items: Vec::new(),
            timestamp: None,
            pages: 0,
        };
        let mut seen_cursors = std::collections::HashSet::new();
        let mut query = first;
        loop {
            let (_, _, body) = self.send(CALL, |h| h.get(&url).query(&query)).await?;
            let page: TenantPage = serde_json::from_slice(&body).map_err(|e| {
                PlatformError::local(
                    CALL,
                    ErrorClass::Permanent,
                    format!("page not understood: {e}"),
                )
            })?;
            listing.pages += 1;
            if listing.timestamp.is_none() {
                listing.timestamp = page.timestamp;
            }
            listing.items.extend(page.items);
            let next = page
                .paging
                .and_then(|p| p.cursors)
                .and_then(|c| c.after)
                .filter(|a| !a.is_empty());
            match next {
                None => return Ok(listing),
                Some(cursor) => {
                    if !seen_cursors.insert(cursor.clone()) {
                        return Err(PlatformError::local(
                            CALL,
                            ErrorClass::Retryable,
                            format!(
                                "the platform repeated cursor {cursor:?} after {} pages; the walk is incomplete",
                                listing.pages
                            ),
                        ));
                    }
                    query = vec![("after".into(), cursor)];
                }
            }
        }
    }

    /// GET a path and decode its JSON answer; `what` names it in the error.
    pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T, PlatformError> {
        let call = format!("GET {path}");
        let url = self.url(path);
        let (_, _, body) = self.send(&call, |h| h.get(&url)).await?;
        serde_json::from_slice(&body).map_err(|e| {
            PlatformError::local(
                &call,
                ErrorClass::Permanent,
                format!("{what} not understood: {e}"),
            )
        })
    }

    pub async fn get_tenant(&self, id: Uuid) -> Result<Tenant, PlatformError> {
        self.get_json(&format!("/api/2/tenants/{id}"), "tenant")
            .await
    }
}
