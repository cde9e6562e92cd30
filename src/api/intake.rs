//! `POST /v1/events`: read the request, store the events durably, answer.

use super::answers::{Accepted, AcceptedMany};
use super::*;
use crate::event::parse_event;
use crate::store::{EventState, NewEvent};

pub(super) async fn post_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !state.accepting.load(Ordering::Acquire) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "statusd is shutting down; retry against the next instance",
        ));
    }
    refuse_when_full(&state)?;
    require_json_body(&headers)?;
    let value = read_json_within(state.read_timeout, body).await?;
    let header_key = idempotency_header(&headers)?;
    let (mut events, is_array) = events_of(&value, header_key.as_deref())?;
    route(&state, &mut events, is_array).await?;
    let retire = retiring(&state, &value, &events, is_array)?;
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    let outcomes = match &retire {
        None => state.queue.enqueue(events).await.map_err(store_error)?,
        Some(id) => {
            // The mark and the deactivation are one write: both, or neither.
            let outcomes = state
                .queue
                .write_account(crate::store::AccountWrite::Retire(id.clone()), events)
                .await
                .map_err(|e| match e {
                    crate::store::StoreError::Account(id, why) => ApiError::new(
                        StatusCode::CONFLICT,
                        "conflict",
                        format!("account {id:?}: {why}"),
                    )
                    .field("retire_account"),
                    other => store_error(other),
                })?;
            state.accounts.mark_retiring(id);
            tracing::info!(message = "account retiring: removed once its events are settled", account = %id);
            outcomes
        }
    };
    for (o, k) in outcomes.iter().zip(&kinds) {
        if matches!(o, Enqueued::Accepted(_)) {
            state
                .metrics
                .events_accepted
                .get_or_create(&label("type", k.as_str()))
                .inc();
        }
    }
    if is_array {
        let ids = outcomes.iter().map(|o| o.id()).collect();
        let answer = AcceptedMany {
            ids,
            status: EventState::Queued,
        };
        return Ok((StatusCode::ACCEPTED, Json(answer)).into_response());
    }
    Ok(match outcomes[0] {
        Enqueued::Accepted(id) => {
            let answer = Accepted {
                id,
                status: EventState::Queued,
                duplicate: false,
            };
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
        Enqueued::Duplicate(id) => {
            // The first event's state; compacted away long after its delivery.
            let status = state
                .queue
                .event(&id)
                .await
                .ok()
                .flatten()
                .map_or(EventState::Delivered, |e| e.state);
            let answer = Accepted {
                id,
                status,
                duplicate: true,
            };
            (StatusCode::OK, Json(answer)).into_response()
        }
    })
}

/// The account each event is reported for: the one it names (which must be configured), else
/// the only account, else the account whose tenant inventory holds the tenant; refused otherwise
/// (nothing is stored).
async fn route(state: &ApiState, events: &mut [NewEvent], is_array: bool) -> Result<(), ApiError> {
    // One look at the accounts for the whole request, however many events it holds.
    let accounts = state.accounts.snapshot();
    let configured = || accounts.keys().cloned().collect::<Vec<_>>().join(", ");
    let only = (accounts.len() == 1)
        .then(|| accounts.keys().next().cloned())
        .flatten();
    // The field named by a refusal (built only when one is refused).
    let field = |i: usize| {
        if is_array {
            format!("[{i}].account")
        } else {
            "account".to_string()
        }
    };
    for (i, ev) in events.iter_mut().enumerate() {
        if let Some(id) = &ev.account {
            match accounts.get(id) {
                None => {
                    return Err(ApiError::invalid(
                        field(i),
                        format!("unknown account {id:?} (configured: {})", configured()),
                    ))
                }
                Some(a) if a.retiring => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "retiring",
                        format!("account {id:?} is retiring (a deactivation asked for it to go once its events are settled); add it again to report for it"),
                    )
                    .field(field(i)))
                }
                Some(_) => {}
            }
            continue;
        }
        if let Some(only) = &only {
            ev.account = Some(only.clone());
            continue;
        }
        let known = state
            .queue
            .inventory(&ev.tenant_id)
            .await
            .map_err(store_error)?
            .and_then(|t| t.account)
            .filter(|id| accounts.contains_key(id));
        match known {
            Some(id) => ev.account = Some(id),
            None => {
                return Err(ApiError::invalid(
                    field(i),
                    format!(
                        "name the account: several are configured ({}) and no tenant inventory holds tenant {}",
                        configured(),
                        ev.tenant_id
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// 507 while the store is at `store.max_size`.
pub(super) fn refuse_when_full(state: &ApiState) -> Result<(), ApiError> {
    if state.queue.is_full() {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "store_full",
            "the store is at its bound (store.max_size): nothing was stored; intake resumes by itself once delivery frees room",
        )
        .field("store.max_size"));
    }
    Ok(())
}

/// The account the request retires, if an event asks for it: one added through the API, the
/// same for every event of the request that asks.
fn retiring(
    state: &ApiState,
    value: &Value,
    events: &[NewEvent],
    is_array: bool,
) -> Result<Option<String>, ApiError> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut account: Option<String> = None;
    for (i, (v, ev)) in items.iter().zip(events).enumerate() {
        let at = if is_array {
            format!("[{i}].")
        } else {
            String::new()
        };
        if !crate::event::retire_flag(v, &at)? {
            continue;
        }
        let field = format!("{at}retire_account");
        let id = ev.account.clone().unwrap_or_else(|| "default".into());
        match state.accounts.get(&id) {
            Some(a) if a.source == crate::accounts::AccountSource::File => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "configured_in_file",
                    format!("account {id:?} is set in the configuration file; remove it there, not with retire_account"),
                )
                .field(field))
            }
            _ => {}
        }
        if account.as_ref().is_some_and(|a| *a != id) {
            return Err(ApiError::invalid(
                field,
                "one request can retire one account only",
            ));
        }
        account = Some(id);
    }
    Ok(account)
}

pub(super) fn require_json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("Content-Type must be application/json, got {:?}", clip(ct)),
    )
    .field("Content-Type"))
}

/// The JSON body, refused (408) when it does not arrive within `api.read_timeout`.
pub(super) async fn read_json_within(
    timeout: std::time::Duration,
    body: Body,
) -> Result<Value, ApiError> {
    let bytes = read_bytes_within(timeout, body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("body", format!("malformed JSON: {e}")))
}

/// A body past the limit whose length is at most this is read to its end (and dropped) before
/// the 413 goes out: a client still writing it would otherwise see its connection cut (a broken
/// pipe) instead of the answer. A longer one is refused from its `Content-Length` at once.
const DRAIN_BYTES: u64 = 4 * limits::BODY_BYTES as u64;

/// The body's bytes, at most the body limit (413 past it), refused (408) when they do not
/// arrive within `api.read_timeout`.
pub(super) async fn read_bytes_within(
    timeout: std::time::Duration,
    body: Body,
) -> Result<Bytes, ApiError> {
    use futures_util::StreamExt;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is over {} bytes", limits::BODY_BYTES),
        )
        .field("body")
    };
    // A Content-Length far past the limit is refused at once, not after the bytes came.
    if axum::body::HttpBody::size_hint(&body).lower() > DRAIN_BYTES {
        return Err(too_large());
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut seen: u64 = 0;
    let read = async {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::invalid("body", format!("the body could not be read: {e}"))
            })?;
            seen += chunk.len() as u64;
            if seen > DRAIN_BYTES {
                break;
            }
            if seen <= limits::BODY_BYTES as u64 {
                chunks.push(chunk);
            } else {
                chunks.clear();
            }
        }
        Ok::<(), ApiError>(())
    };
    match tokio::time::timeout(timeout, read).await {
        _ if seen > limits::BODY_BYTES as u64 => return Err(too_large()),
        Ok(read) => read?,
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the body did not arrive within {} (api.read_timeout)",
                    humantime::format_duration(timeout)
                ),
            )
            .field("body"))
        }
    }
    Ok(match chunks.len() {
        1 => chunks.pop().unwrap_or_default(),
        _ => chunks.concat().into(),
    })
}

fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let k = v
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key", "not visible ASCII"))?;
    if k.is_empty() || k.len() > limits::IDEMPOTENCY_KEY {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            format!("must be 1 to {} characters", limits::IDEMPOTENCY_KEY),
        ));
    }
    Ok(Some(k.to_string()))
}

/// The events of a body (one object, or an array of them: all valid or none taken), and
/// whether it was an array.
fn events_of(value: &Value, header_key: Option<&str>) -> Result<(Vec<NewEvent>, bool), ApiError> {
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::invalid("body", "the array is empty"));
            }
            if items.len() > limits::EVENTS_PER_REQUEST {
                return Err(ApiError::invalid(
                    "body",
                    format!(
                        "at most {} events per request, got {}",
                        limits::EVENTS_PER_REQUEST,
                        items.len()
                    ),
                ));
            }
            let events = items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let mut ev = parse_event(v, &format!("[{i}]."), None)?;
                    // The header keys the whole request: each element without a key of its own
                    // gets one derived from it, so the same request sent again stores nothing.
                    if let (None, Some(h)) = (&ev.idempotency_key, header_key) {
                        ev.idempotency_key = Some(format!("{h}#{i}"));
                    }
                    Ok::<_, ApiError>(ev)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((events, true))
        }
        Value::Object(_) => Ok((vec![parse_event(value, "", header_key)?], false)),
        _ => Err(ApiError::invalid(
            "body",
            "expected an event object or an array of events",
        )),
    }
}
