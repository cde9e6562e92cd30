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
    /// How far in the future an event's `occurred_at` may lie (clock skew between the vendor's
    /// backend and statusd).
    pub const OCCURRED_AT_SKEW: std::time::Duration = std::time::Duration::from_secs(60);
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
    /// When the change happened, RFC 3339 with an offset (default: when statusd accepts it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub occurred_at: Option<String>,
    /// The partner account (default: the only one, or the one whose inventory has the tenant).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub account: Option<String>,
    /// A deactivation that retires its account once the account's events are settled.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub retire_account: bool,
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
    let obj = v.as_object().ok_or_else(|| {
        let field = if at.is_empty() {
            "body"
        } else {
            at.trim_end_matches('.')
        };
        FieldError::new(field, "an event must be a JSON object")
    })?;
    let fields = Fields { obj, at };
    fields.only_known()?;
    let tenant_id = fields.tenant_id()?;
    let kind = fields.kind()?;
    let category = fields.text("category", limits::CATEGORY)?;
    let action = fields.text("action", limits::ACTION)?;
    let idempotency_key = one_idempotency_key(
        fields.text("idempotency_key", limits::IDEMPOTENCY_KEY)?,
        header_key,
    )?;
    let occurred_at_ms = fields.occurred_at()?;
    if kind == EventKind::Custom {
        for (name, value) in [("category", &category), ("action", &action)] {
            if value.is_none() {
                return Err(FieldError::new(
                    fields.name(name),
                    format!("a custom event needs both category and action; {name} is missing"),
                ));
            }
        }
    }
    Ok(NewEvent {
        tenant_id,
        kind,
        category: category.unwrap_or_else(|| DEFAULT_CATEGORY.into()),
        action: action.unwrap_or_else(|| kind.default_action().into()),
        idempotency_key,
        occurred_at_ms,
        account: fields.account()?,
    })
}

/// An event's `retire_account` flag: a deactivation that asks for its account (one added
/// through the API) to be removed once the account's events are settled.
pub fn retire_flag(v: &Value, at: &str) -> Result<bool, FieldError> {
    let field = format!("{at}retire_account");
    match v.get("retire_account") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(false),
        Some(Value::Bool(true)) => match v.get("type").and_then(Value::as_str) {
            Some("deactivation") => Ok(true),
            _ => Err(FieldError::new(
                field,
                "only a deactivation can retire its account",
            )),
        },
        Some(_) => Err(FieldError::new(field, "expected true or false")),
    }
}

/// The event's key: its own `idempotency_key` field, else the request's `Idempotency-Key`
/// header (the field is the more specific of the two, as for the elements of an array).
fn one_idempotency_key(
    field: Option<String>,
    header: Option<&str>,
) -> Result<Option<String>, FieldError> {
    Ok(field.or_else(|| header.map(str::to_string)))
}

/// The fields of one event object, each read with its full name for errors.
struct Fields<'a> {
    obj: &'a serde_json::Map<String, Value>,
    at: &'a str,
}

impl Fields<'_> {
    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.at)
    }

    fn only_known(&self) -> Result<(), FieldError> {
        match self.obj.keys().find(|k| {
            !matches!(
                k.as_str(),
                "tenant_id"
                    | "type"
                    | "category"
                    | "action"
                    | "idempotency_key"
                    | "occurred_at"
                    | "account"
                    | "retire_account"
            )
        }) {
            Some(k) => Err(FieldError::new(
                self.name(k),
                format!("unknown field {k:?} (expected tenant_id, type, category, action, idempotency_key, occurred_at, account, retire_account)"),
            )),
            None => Ok(()),
        }
    }

    fn tenant_id(&self) -> Result<Uuid, FieldError> {
        let field = self.name("tenant_id");
        match self.obj.get("tenant_id") {
            None | Some(Value::Null) => Err(FieldError::new(field, "tenant_id is required")),
            Some(Value::String(s)) => Uuid::parse_str(s).map_err(|_| {
                FieldError::new(field, format!("tenant_id is not a UUID: {}", clip(s)))
            }),
            Some(_) => Err(FieldError::new(field, "tenant_id must be a UUID string")),
        }
    }

    fn kind(&self) -> Result<EventKind, FieldError> {
        let field = self.name("type");
        match self.obj.get("type").and_then(Value::as_str) {
            Some("activation") => Ok(EventKind::Activation),
            Some("deactivation") => Ok(EventKind::Deactivation),
            Some("custom") => Ok(EventKind::Custom),
            Some(other) => Err(FieldError::new(
                field,
                format!(
                    "unknown type {:?} (expected activation, deactivation or custom)",
                    clip(other)
                ),
            )),
            None => Err(FieldError::new(
                field,
                "type is required: activation, deactivation or custom",
            )),
        }
    }

    /// The partner account named, if any (whether it is configured is the API's check).
    fn account(&self) -> Result<Option<String>, FieldError> {
        let account = self.text("account", 63)?;
        match account {
            Some(id) if !crate::config::valid_account_id(&id) => Err(FieldError::new(
                self.name("account"),
                format!(
                    "account {:?} is not an account id (1 to 63 of a-z, 0-9, '.', '_', '-')",
                    clip(&id)
                ),
            )),
            other => Ok(other),
        }
    }

    /// When the change happened (Unix milliseconds): RFC 3339 with an offset, not further in
    /// the future than the clock skew allowed.
    fn occurred_at(&self) -> Result<Option<i64>, FieldError> {
        let Some(text) = self.text("occurred_at", 64)? else {
            return Ok(None);
        };
        let at = chrono::DateTime::parse_from_rfc3339(&text).map_err(|e| {
            FieldError::new(
                self.name("occurred_at"),
                format!(
                    "occurred_at is not an RFC 3339 time with an offset (e.g. 2026-11-28T09:30:00Z): {} ({e})",
                    clip(&text)
                ),
            )
        })?;
        let ms = at.timestamp_millis();
        let latest = crate::store::now_ms() + limits::OCCURRED_AT_SKEW.as_millis() as i64;
        if ms > latest {
            return Err(FieldError::new(
                self.name("occurred_at"),
                format!(
                    "occurred_at {} is in the future (more than {} s ahead of this host's clock)",
                    clip(&text),
                    limits::OCCURRED_AT_SKEW.as_secs()
                ),
            ));
        }
        Ok(Some(ms))
    }

    /// An optional text of 1 to `max` characters.
    fn text(&self, name: &str, max: usize) -> Result<Option<String>, FieldError> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                let n = s.chars().count();
                if n == 0 || n > max {
                    Err(FieldError::new(
                        self.name(name),
                        format!("{name} must be 1 to {max} characters, got {n}"),
                    ))
                } else {
                    Ok(Some(s.clone()))
                }
            }
            Some(_) => Err(FieldError::new(
                self.name(name),
                format!("{name} must be a string"),
            )),
        }
    }
}
