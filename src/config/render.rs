//! The effective settings as TOML, secrets redacted (`statusd check-config`).

use super::*;

impl Settings {
    /// Built-in defaults for local use (demo, tests); never fails.
    pub fn local_defaults() -> Settings {
        load(&Sources::default(), Purpose::Local).expect("built-in defaults are valid")
    }

    /// The effective settings as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let value = serde_json::to_value(self).expect("settings serialize");
        let mut out = String::new();
        write_toml(&value, &mut Vec::new(), &mut out);
        out
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
