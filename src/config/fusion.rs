//! `[fusion]`: the second platform, Netaxis Fusion, and the branding intended for each
//! subscription of its tenants.

use super::reader::Reader;
use super::*;

/// The parts of a subscription's branding configuration, as their names in the settings.
pub const FUSION_PARTS: [&str; 5] = [
    "general",
    "pages",
    "styling.font",
    "styling.image",
    "styling.theme",
];

/// The value the platform shows for a secret property; never intended, never written back.
pub const FUSION_MASK: &str = "********";

#[derive(Debug, Clone, Serialize)]
pub struct FusionSettings {
    /// e.g. `https://apioaas-prov.netaxis.cloud`, without a trailing slash.
    pub base_url: String,
    /// The provider's DRaaS instance (e.g. `draas_v1`), given by the platform's support.
    pub draas_instance: String,
    pub username: String,
    pub password: Secret,
    /// The Fusion tenants whose subscriptions are managed.
    pub tenants: Vec<Uuid>,
    pub schedule: String,
    /// Subscriptions read per page.
    pub page_size: u64,
    /// The intent of every managed tenant, part by part (only properties set are managed).
    pub branding: FusionBranding,
    /// Per-tenant intent, merged property by property over `branding`.
    #[serde(serialize_with = "overrides_as_written")]
    pub tenants_override: BTreeMap<Uuid, FusionBranding>,
}

/// `tenants_override."<uuid>".branding...`, as the settings are written.
fn overrides_as_written<S: serde::Serializer>(
    o: &BTreeMap<Uuid, FusionBranding>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(o.len()))?;
    for (t, b) in o {
        m.serialize_entry(&t.to_string(), &serde_json::json!({ "branding": b }))?;
    }
    m.end()
}

/// Intended properties of each part (`general`, `pages`, `styling.font`, ...). Nested tables are
/// nested objects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FusionBranding {
    pub parts: BTreeMap<String, serde_json::Map<String, Value>>,
}

/// Written as the settings are: `general`, `pages`, `styling.font|image|theme` as tables.
impl Serialize for FusionBranding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = serde_json::Map::new();
        for (part, props) in &self.parts {
            match part.split_once('.') {
                Some((outer, inner)) => {
                    let entry = out
                        .entry(outer.to_string())
                        .or_insert_with(|| Value::Object(Default::default()));
                    if let Value::Object(m) = entry {
                        m.insert(inner.to_string(), Value::Object(props.clone()));
                    }
                }
                None => {
                    out.insert(part.clone(), Value::Object(props.clone()));
                }
            }
        }
        out.serialize(s)
    }
}

/// Merge `over` into `base`, object by object: a nested object is merged, anything else
/// replaced.
pub fn merge_into(
    base: &mut serde_json::Map<String, Value>,
    over: &serde_json::Map<String, Value>,
) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(o)) => merge_into(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

impl FusionSettings {
    /// The intent of one tenant: the common one with its override set over it.
    pub fn intent_of(&self, tenant: &Uuid) -> FusionBranding {
        let mut out = self.branding.clone();
        if let Some(over) = self.tenants_override.get(tenant) {
            for (part, props) in &over.parts {
                merge_into(out.parts.entry(part.clone()).or_default(), props);
            }
        }
        out
    }
}

impl Reader {
    pub(super) fn fusion(&mut self) -> Option<FusionSettings> {
        self.raw("fusion")?;
        let base_url = self.fusion_url("fusion.base_url");
        let draas_instance = self
            .string("fusion.draas_instance")
            .filter(|s| !s.trim().is_empty());
        if draas_instance.is_none() && !self.has_problem("fusion.draas_instance") {
            self.problem("fusion.draas_instance", "required (the provider's DRaaS instance, e.g. \"draas_v1\", given by the platform's support)");
        }
        let username = self
            .string("fusion.username")
            .filter(|s| !s.trim().is_empty());
        if username.is_none() {
            self.problem("fusion.username", "required (the Fusion API user)");
        }
        let password = self.secret("fusion.password", Some("fusion_password"));
        if password.is_none() && !self.has_problem_prefix("fusion.password") {
            self.problem(
                "fusion.password",
                "required: set fusion.password_file (preferred) or fusion.password",
            );
        }
        let tenants = match self.raw("fusion.tenants") {
            None => {
                self.problem(
                    "fusion.tenants",
                    "required (the Fusion tenant UUIDs whose subscriptions are managed)",
                );
                Vec::new()
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(
                    |(i, v)| match v.as_str().map(|s| Uuid::parse_str(s.trim())) {
                        Some(Ok(u)) => Some(u),
                        _ => {
                            self.problem(
                                &format!("fusion.tenants[{i}]"),
                                format!("not a tenant UUID: {v}"),
                            );
                            None
                        }
                    },
                )
                .collect(),
            Some(other) => {
                self.problem(
                    "fusion.tenants",
                    format!("expected a list of tenant UUIDs, got {}", kind_of(&other)),
                );
                Vec::new()
            }
        };
        let schedule = self.schedule("fusion.schedule", "0 30 * * * *");
        let page_size = self.u64_in("fusion.page_size", 100, 1, 1000);
        let branding = self.fusion_branding("fusion.branding");
        let mut tenants_override = BTreeMap::new();
        if let Some(v) = self.raw("fusion.tenants_override") {
            match v {
                Value::Object(map) => {
                    for id in map.keys() {
                        let key = format!("fusion.tenants_override.{id}");
                        let Ok(uuid) = Uuid::parse_str(id) else {
                            self.problem(&key, "the table's name must be a tenant UUID");
                            continue;
                        };
                        self.raw(&key);
                        let b = self.fusion_branding(&format!("{key}.branding"));
                        let other: Vec<String> = map[id]
                            .as_object()
                            .map(|o| o.keys().filter(|k| *k != "branding").cloned().collect())
                            .unwrap_or_default();
                        for k in other {
                            self.problem(
                                &format!("{key}.{k}"),
                                "unknown setting (a tenant override holds only branding)",
                            );
                        }
                        tenants_override.insert(uuid, b);
                    }
                }
                other => self.problem(
                    "fusion.tenants_override",
                    format!("expected tables per tenant UUID, got {}", kind_of(&other)),
                ),
            }
        }
        Some(FusionSettings {
            base_url: base_url?,
            draas_instance: draas_instance?,
            username: username?,
            password: password?,
            tenants,
            schedule,
            page_size,
            branding,
            tenants_override,
        })
    }

    fn fusion_url(&mut self, key: &str) -> Option<String> {
        let Some(raw) = self.string(key) else {
            self.problem(key, "required (e.g. https://apioaas-prov.netaxis.cloud)");
            return None;
        };
        match check_origin(&raw, "https://apioaas-prov.netaxis.cloud") {
            Ok(u) => Some(u),
            Err(m) => {
                self.problem(key, m);
                None
            }
        }
    }

    /// The parts of a branding table; a literal mask anywhere is refused.
    fn fusion_branding(&mut self, at: &str) -> FusionBranding {
        let mut out = FusionBranding::default();
        let Some(section) = self.raw(at) else {
            return out;
        };
        let Value::Object(section) = section else {
            self.problem(
                at,
                "expected tables [.general], [.pages], [.styling.font|image|theme]",
            );
            return out;
        };
        for (name, value) in &section {
            let parts: Vec<(String, Value)> = if name == "styling" {
                match value {
                    Value::Object(m) => m
                        .iter()
                        .map(|(k, v)| (format!("styling.{k}"), v.clone()))
                        .collect(),
                    _ => vec![(name.clone(), value.clone())],
                }
            } else {
                vec![(name.clone(), value.clone())]
            };
            for (part, v) in parts {
                let key = format!("{at}.{part}");
                if !FUSION_PARTS.contains(&part.as_str()) {
                    self.problem(
                        &key,
                        format!(
                            "not a branding part (expected one of {})",
                            FUSION_PARTS.join(", ")
                        ),
                    );
                    continue;
                }
                match v {
                    Value::Object(m) => {
                        if let Some(path) = masked_path(&m, "") {
                            self.problem(&format!("{key}.{path}"), format!("{FUSION_MASK:?} is how the platform masks a secret; it cannot be an intended value"));
                            continue;
                        }
                        out.parts.insert(part, m);
                    }
                    other => self.problem(
                        &key,
                        format!("expected a table of properties, got {}", kind_of(&other)),
                    ),
                }
            }
        }
        out
    }
}

/// The path of the first value that is the mask.
fn masked_path(m: &serde_json::Map<String, Value>, at: &str) -> Option<String> {
    for (k, v) in m {
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        match v {
            Value::String(s) if s == FUSION_MASK => return Some(path),
            Value::Object(o) => {
                if let Some(p) = masked_path(o, &path) {
                    return Some(p);
                }
            }
            _ => {}
        }
    }
    None
}
