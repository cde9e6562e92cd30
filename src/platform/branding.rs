//! Branding: reads, versioned partial writes (never `smtp_password`), enable, disable, logo.

use super::*;

impl PlatformClient {
    pub async fn get_brand(&self, tenant: Uuid) -> Result<Brand, PlatformError> {
        self.get_json(&format!("/api/2/tenants/{tenant}/brand"), "brand")
            .await
    }

    /// Enable custom branding (version in the query, no body).
    pub async fn enable_brand(&self, tenant: Uuid, version: i64) -> Result<(), PlatformError> {
        self.brand_write(Method::POST, tenant, "", version, None)
            .await
    }

    pub async fn disable_brand(&self, tenant: Uuid, version: i64) -> Result<(), PlatformError> {
        self.brand_write(Method::DELETE, tenant, "", version, None)
            .await
    }

    /// Change only the given fields. `smtp_password` is never sent.
    pub async fn update_brand(
        &self,
        tenant: Uuid,
        version: i64,
        changes: &Brand,
    ) -> Result<(), PlatformError> {
        let mut body = changes.clone();
        body.remove("smtp_password");
        let bytes = serde_json::to_vec(&body).expect("brand serializes");
        self.brand_write(
            Method::PUT,
            tenant,
            "",
            version,
            Some(("application/json", bytes)),
        )
        .await
    }

    pub async fn upload_logo(
        &self,
        tenant: Uuid,
        version: i64,
        png: Vec<u8>,
    ) -> Result<(), PlatformError> {
        self.brand_write(
            Method::POST,
            tenant,
            "/logo",
            version,
            Some(("image/png", png)),
        )
        .await
    }

    pub(super) async fn brand_write(
        &self,
        method: Method,
        tenant: Uuid,
        suffix: &str,
        version: i64,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(), PlatformError> {
        let path = format!("/api/2/tenants/{tenant}/brand{suffix}");
        let call = format!("{method} {path}");
        let url = self.url(&path);
        let version = version.to_string();
        self.send(&call, |h| {
            let mut rb = h
                .request(method.clone(), &url)
                .query(&[("version", version.as_str())]);
            if let Some((ct, bytes)) = &body {
                rb = rb
                    .header(reqwest::header::CONTENT_TYPE, *ct)
                    .header(reqwest::header::CONTENT_LENGTH, bytes.len())
                    .body(bytes.clone());
            }
            rb
        })
        .await
        .map(|_| ())
    }
}
