//! The event contract in one place: what the vendor's backend may send (the limits of each
//! field, the defaults), how an event object is read into a [`NewEvent`] (every problem named
//! by its field), and what each kind of event means for a tenant's integration state.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::store::{EventKind, NewEvent, DEFAULT_CATEGORY};

/// Limits of the local API and of the platform's status report (platform-api.md).
pub mod limits {
    /// Largest accepted request body.
    pub const BODY_BYTES: usize = 1024 * 1024;
    /// Most events in one request.
    pub const EVENTS_PER_REQUEST: usize = 1000;
    /// `category` of a report event.
    pub const CATEGORY: usize = 150;
    /// `action` of a report event.
    pub const ACTION: usize = 500;
    /// An idempotency key, in the field or the `Idempotency-Key` header.
    pub const IDEMPOTENCY_KEY: usize = 256;
    /// `application_code` of a report.
    pub const APPLICATION_CODE: usize = 1000;
    /// `module.name`, `module.version`, `vendor_system.name` and `.version` of a report.
    pub const NAME: usize = 255;
}

/// An event as it goes over the wire (what `statusd activate` sends, what the API reads).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IncomingEvent {
    pub tenant_id: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub idempotency_key: Option<String>,
}

/// A problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// At most 64 characters of a value, for error messages.
pub fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Validate one event object; `at` prefixes field names inside arrays (`[3].tenant_id`).
pub fn parse_event(v: &Value, at: &str, header_key: Option<&str>) -> Result<NewEvent, FieldError> {
    let f = |name: &str| format!("{at}{name}");
    let obj = v.as_object().ok_or_else(|| {
        FieldError::new(
            if at.is_empty() {
                "body".into()
            } else {
                at.trim_end_matches('.').to_string()
            },
            "an event must be a JSON object",
        )
    })?;
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "tenant_id" | "type" | "category" | "action" | "idempotency_key"
        ) {
            return Err(FieldError::new(
                f(k),
                format!("unknown field {k:?} (expected tenant_id, type, category, action, idempotency_key)"),
            ));
        }
    }
    let tenant_id = match obj.get("tenant_id") {
        None | Some(Value::Null) => {
            return Err(FieldError::new(f("tenant_id"), "tenant_id is required"))
        }
        Some(Value::String(s)) => Uuid::parse_str(s).map_err(|_| {
            FieldError::new(
                f("tenant_id"),
                format!("tenant_id is not a UUID: {}", clip(s)),
            )
        })?,
        Some(_) => {
            return Err(FieldError::new(
                f("tenant_id"),
                "tenant_id must be a UUID string",
            ))
        }
    };
    let kind = match obj.get("type").and_then(Value::as_str) {
        Some("activation") => EventKind::Activation,
        Some("deactivation") => EventKind::Deactivation,
        Some("custom") => EventKind::Custom,
        Some(other) => {
            return Err(FieldError::new(
                f("type"),
                format!(
                    "unknown type {:?} (expected activation, deactivation or custom)",
                    clip(other)
                ),
            ))
        }
        None => {
            return Err(FieldError::new(
                f("type"),
                "type is required: activation, deactivation or custom",
            ))
        }
    };
    let text = |name: &str, max: usize| -> Result<Option<String>, FieldError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                let n = s.chars().count();
                if n == 0 || n > max {
                    Err(FieldError::new(
                        f(name),
                        format!("{name} must be 1 to {max} characters, got {n}"),
                    ))
                } else {
                    Ok(Some(s.clone()))
                }
            }
            Some(_) => Err(FieldError::new(f(name), format!("{name} must be a string"))),
        }
    };
    let category = text("category", limits::CATEGORY)?;
    let action = text("action", limits::ACTION)?;
    let mut idempotency_key = text("idempotency_key", limits::IDEMPOTENCY_KEY)?;
    if let Some(h) = header_key {
        match &idempotency_key {
            Some(k) if k != h => {
                return Err(FieldError::new(
                    "Idempotency-Key",
                    "the Idempotency-Key header and the idempotency_key field differ",
                ))
            }
            _ => idempotency_key = Some(h.to_string()),
        }
    }
    if kind == EventKind::Custom && (category.is_none() || action.is_none()) {
        let missing = if category.is_none() {
            "category"
        } else {
            "action"
        };
        return Err(FieldError::new(
            f(missing),
            format!("a custom event needs both category and action; {missing} is missing"),
        ));
    }
    Ok(NewEvent {
        tenant_id,
        kind,
        category: category.unwrap_or_else(|| DEFAULT_CATEGORY.into()),
        action: action.unwrap_or_else(|| kind.default_action().into()),
        idempotency_key,
    })
}
