//! The effective settings as TOML, secrets redacted (`statusd check-config`).

use super::*;

impl Settings {
    /// Built-in defaults for local use (demo, tests); never fails.
    pub fn local_defaults() -> Settings {
        load(&Sources::default(), Purpose::Local).expect("built-in defaults are valid")
    }

    /// The effective settings as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut value = serde_json::to_value(self).expect("settings serialize");
        accounts_as_tables(&mut value);
        if let Some(platform) = value.get_mut("platform").and_then(Value::as_object_mut) {
            // The `[platform]` credentials are shown as the account they stand for.
            for key in [
                "base_url",
                "client_id",
                "client_secret",
                "client_secret_file",
            ] {
                platform.remove(key);
            }
        }
        if let Some(branding) = value.get_mut("branding") {
            branding_as_written(branding);
        }
        let mut out = String::new();
        write_toml(&value, &mut Vec::new(), &mut out);
        out
    }
}

/// Accounts are shown as they are written: `[accounts.<id>]`, with their branding targets as
/// `targets` in `[accounts.<id>.branding]`.
fn accounts_as_tables(settings: &mut Value) {
    let Some(Value::Array(list)) = settings.get_mut("accounts").map(Value::take) else {
        return;
    };
    let mut tables = serde_json::Map::new();
    for mut account in list {
        let Value::Object(fields) = &mut account else {
            continue;
        };
        let Some(Value::String(id)) = fields.remove("id") else {
            continue;
        };
        let targets = fields.remove("branding_targets").unwrap_or(Value::Null);
        let mut branding = match fields.remove("branding") {
            Some(Value::Object(branding)) => branding,
            _ => serde_json::Map::new(),
        };
        if !targets.is_null() {
            branding.insert("targets".into(), targets);
        }
        if !branding.is_empty() {
            let mut branding = Value::Object(branding);
            branding_as_written(&mut branding);
            fields.insert("branding".into(), branding);
        }
        tables.insert(id, account);
    }
    settings["accounts"] = Value::Object(tables);
}

/// Brand fields sit in the branding table itself (`company_name = ...`), and a table with no
/// tenants is left out.
fn branding_as_written(branding: &mut Value) {
    let Value::Object(table) = branding else {
        return;
    };
    if let Some(Value::Object(fields)) = table.remove("fields") {
        table.extend(fields);
    }
    if table
        .get("tenants")
        .and_then(Value::as_object)
        .is_some_and(|t| t.is_empty())
    {
        table.remove("tenants");
    }
}

pub(super) fn write_toml(v: &Value, path: &mut Vec<String>, out: &mut String) {
    let Value::Object(map) = v else { return };
    let (tables, leaves): (Vec<_>, Vec<_>) = map.iter().partition(|(_, v)| v.is_object());
    if !path.is_empty() && (!leaves.is_empty() || tables.is_empty()) {
        out.push_str(&format!("\n[{}]\n", path.join(".")));
    }
    for (k, v) in leaves {
        match v {
            Value::Null => out.push_str(&format!("# {} = (unset)\n", toml_key(k))),
            other => out.push_str(&format!("{} = {}\n", toml_key(k), toml_value(other))),
        }
    }
    for (k, v) in tables {
        path.push(toml_key(k));
        write_toml(v, path, out);
        path.pop();
    }
}

pub(super) fn toml_key(k: &str) -> String {
    if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

pub(super) fn toml_value(v: &Value) -> String {
    match v {
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(m) => {
            let inner: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
        other => other.to_string(),
    }
}
