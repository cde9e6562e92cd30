//! What goes over the wire: token answers, tenants and their pages, report bodies, brands.

use super::*;

/// Platform timestamps: RFC 3339, or without a zone (taken as UTC), with or without fractions.
pub fn parse_platform_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%.f%:z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub expires_on: Option<i64>,
    #[serde(default)]
    pub expires_in: Option<i64>,
}

/// A tenant as listed; only `id`, `parent_id` and `version` are required, unknown fields are
/// ignored, and enum-like fields stay strings so new values never break decoding.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Tenant {
    pub id: Uuid,
    pub parent_id: Uuid,
    pub version: i64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub brand_enabled: Option<bool>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub deleted_at: Option<String>,
}

impl Tenant {
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.as_deref().is_some_and(|d| !d.is_empty())
    }
    pub fn kind_is(&self, k: &str) -> bool {
        self.kind.as_deref() == Some(k)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct TenantPage {
    #[serde(default)]
    pub(super) items: Vec<Tenant>,
    #[serde(default)]
    pub(super) timestamp: Option<String>,
    #[serde(default)]
    pub(super) paging: Option<Paging>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Paging {
    #[serde(default)]
    pub(super) cursors: Option<Cursors>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Cursors {
    #[serde(default)]
    pub(super) after: Option<String>,
}

/// Which tenants to list.
#[derive(Debug, Clone)]
pub enum TenantSelector {
    SubtreeRoot(Uuid),
    Parent(Uuid),
    Uuids(Vec<Uuid>),
}

#[derive(Debug, Clone)]
pub struct TenantListing {
    pub items: Vec<Tenant>,
    /// The first page's `timestamp`, for the next `updated_since`.
    pub timestamp: Option<String>,
    pub pages: usize,
}

/// One event of a status report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportEvent {
    pub category: String,
    pub action: String,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub activation_event: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub deactivation_event: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct NameVersion {
    pub(super) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct StatusReport<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) application_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) application_id: Option<&'a str>,
    pub(super) module: NameVersion,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) vendor_system: Option<NameVersion>,
    pub(super) events: &'a [ReportEvent],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) activated_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) deactivated_at: Option<&'a str>,
}

/// The report's own times: when the newest activation and deactivation it carries happened
/// (RFC 3339, UTC). Without them the platform stamps the time it receives the report, which
/// would date a change held back by an outage days late.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportTimes {
    pub activated_at: Option<String>,
    pub deactivated_at: Option<String>,
}

/// A brand as read: every field kept, known or not, so nothing is lost when it is shown.
pub type Brand = Map<String, Value>;
