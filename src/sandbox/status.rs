//! The status endpoint, validating each report as the platform documents it.

use super::*;

pub(super) fn check_len(
    obj: &Map<String, Value>,
    field: &str,
    path: &str,
    min: usize,
    max: usize,
    required: bool,
) -> Result<(), String> {
    match obj.get(field) {
        None | Some(Value::Null) if !required => Ok(()),
        None | Some(Value::Null) => Err(format!("{path}{field} is required")),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n < min || n > max {
                Err(format!(
                    "{path}{field} must be {min} to {max} characters, got {n}"
                ))
            } else {
                Ok(())
            }
        }
        Some(_) => Err(format!("{path}{field} must be a string")),
    }
}

pub(super) fn check_bool(
    obj: &Map<String, Value>,
    field: &str,
    path: &str,
) -> Result<bool, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("{path}{field} must be a boolean")),
    }
}

/// The field table of the status endpoint, checked strictly.
pub fn validate_status_body(body: &Value) -> Result<(), String> {
    let obj = body.as_object().ok_or("body must be a JSON object")?;
    let code = obj.get("application_code").filter(|v| !v.is_null());
    let id = obj.get("application_id").filter(|v| !v.is_null());
    match (code, id) {
        (Some(_), Some(_)) => {
            return Err("send exactly one of application_code and application_id".into())
        }
        (None, None) => return Err("application_code or application_id is required".into()),
        (Some(_), None) => check_len(
            obj,
            "application_code",
            "",
            1,
            limits::APPLICATION_CODE,
            true,
        )?,
        (None, Some(v)) => {
            if v.as_str().is_none_or(|s| Uuid::parse_str(s).is_err()) {
                return Err("application_id must be a UUID".into());
            }
        }
    }
    let module = obj
        .get("module")
        .and_then(Value::as_object)
        .ok_or("module is required and must be an object")?;
    check_len(module, "name", "module.", 1, limits::NAME, true)?;
    check_len(module, "version", "module.", 0, limits::NAME, false)?;
    match obj.get("vendor_system") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vs)) => {
            check_len(vs, "name", "vendor_system.", 1, limits::NAME, true)?;
            check_len(vs, "version", "vendor_system.", 0, limits::NAME, false)?;
        }
        Some(_) => return Err("vendor_system must be an object".into()),
    }
    for field in ["activated_at", "deactivated_at"] {
        if let Some(v) = obj.get(field).filter(|v| !v.is_null()) {
            if v.as_str()
                .is_none_or(|s| chrono::DateTime::parse_from_rfc3339(s).is_err())
            {
                return Err(format!("{field} must be an RFC 3339 timestamp"));
            }
        }
    }
    match obj.get("events") {
        None | Some(Value::Null) => {}
        Some(Value::Array(events)) => {
            for (i, e) in events.iter().enumerate() {
                let path = format!("events[{i}].");
                let e = e
                    .as_object()
                    .ok_or(format!("events[{i}] must be an object"))?;
                check_len(e, "category", &path, 1, limits::CATEGORY, true)?;
                check_len(e, "action", &path, 1, limits::ACTION, true)?;
                let a = check_bool(e, "activation_event", &path)?;
                let d = check_bool(e, "deactivation_event", &path)?;
                if a && d {
                    return Err(format!(
                        "{path}activation_event and deactivation_event are both true"
                    ));
                }
            }
        }
        Some(_) => return Err("events must be an array".into()),
    }
    Ok(())
}

pub(super) async fn status_report(
    _auth: Authorized,
    State(state): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = require_json(&headers) {
        return r;
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("body is not JSON: {e}")),
    };
    if let Err(m) = validate_status_body(&body) {
        return bad_request(&m);
    }
    let mut s = state.lock().expect("sandbox lock");
    let tenant = match q.get("tenantID") {
        None => s.root,
        Some(t) => match Uuid::parse_str(t) {
            Ok(u) => u,
            Err(_) => return bad_request("tenantID must be a UUID"),
        },
    };
    if !s.index.contains_key(&tenant) {
        return envelope(StatusCode::NOT_FOUND, json!(1003), "tenant not found");
    }
    let seq = s.reports.len() as u64 + 1;
    s.reports.push(ReceivedReport {
        seq,
        tenant_id: tenant,
        body,
        received_at: now_text(),
    });
    StatusCode::NO_CONTENT.into_response()
}
