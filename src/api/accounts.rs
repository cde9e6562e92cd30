//! The partner accounts: where each reports, its token, and its events.

use super::answers::{AccountView, AccountsList};
use super::lookups::parse_id_text;
use super::*;
use crate::accounts::Account;
use crate::config::DEFAULT_ACCOUNT;

/// Events and tenants per account, counted in one pass over the store.
#[derive(Default, Clone, Copy)]
struct Counts {
    pending: u64,
    dead: u64,
    tenants: u64,
}

async fn counts(
    queue: &Queue,
) -> Result<std::collections::HashMap<String, Counts>, crate::store::StoreError> {
    let mut out: std::collections::HashMap<String, Counts> = Default::default();
    // Pending and dead per account as the store keeps them: no event is read.
    for (account, n) in queue.account_counts().await?.iter() {
        let c = out.entry(account.to_string()).or_default();
        c.pending = n.pending;
        c.dead = n.dead;
    }
    for t in queue.inventory_all().await? {
        out.entry(t.account.unwrap_or_else(|| DEFAULT_ACCOUNT.to_string()))
            .or_default()
            .tenants += 1;
    }
    Ok(out)
}

async fn view(a: &Account, c: Counts) -> AccountView {
    AccountView {
        id: a.id.clone(),
        datacenter_url: a.datacenter_url.clone(),
        datacenter: a.datacenter.clone(),
        source: a.source.as_str().into(),
        client_id: a.client_id.clone(),
        tenant_id: a.tenant_id,
        tenant_name: a.tenant_name.clone(),
        retiring: a.retiring,
        root_tenant_id: a.root_tenant_id,
        token: a.client.token_state().await.to_string(),
        token_error: a.client.auth_failure().await,
        pending_events: c.pending,
        dead_letters: c.dead,
        tenants_known: c.tenants,
    }
}

pub(super) async fn list_accounts(
    State(state): State<ApiState>,
) -> Result<Json<AccountsList>, ApiError> {
    let counts = counts(&state.queue).await.map_err(store_error)?;
    let mut items = Vec::new();
    for a in state.accounts.iter() {
        items.push(view(&a, counts.get(&a.id).copied().unwrap_or_default()).await);
    }
    Ok(Json(AccountsList {
        count: items.len(),
        items,
    }))
}

pub(super) async fn get_account(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let id = parse_id_text(&id)?;
    let Some(a) = state.accounts.get(&id) else {
        return Err(ApiError::not_found("account"));
    };
    let counts = counts(&state.queue).await.map_err(store_error)?;
    Ok(Json(
        view(&a, counts.get(&a.id).copied().unwrap_or_default()).await,
    ))
}

// Accounts at run time ---------------------------------------------------------------------------

use super::answers::{Accepted, AccountChanged, AccountRemoved};
use super::intake::{read_json_within, require_json_body};
use crate::accounts::{AccountSource, AccountSpec};
use crate::config::{Credentials, Secret};
use crate::platform::Invalid;
use crate::store::{AccountWrite, EventState, NewEvent, Removal, StoredAccount};

/// `?activate=true` (the account's own tenant) or `?activate=<tenant uuid>`.
#[derive(serde::Deserialize, Default)]
pub(super) struct AddQuery {
    #[serde(default)]
    activate: Option<String>,
}

#[derive(serde::Deserialize, Default)]
pub(super) struct RemoveQuery {
    #[serde(default)]
    force: Option<String>,
}

enum Activate {
    No,
    OwnTenant,
    Tenant(Uuid),
}

fn activate_of(q: &AddQuery) -> Result<Activate, ApiError> {
    match q.activate.as_deref() {
        None | Some("false") => Ok(Activate::No),
        Some("true") => Ok(Activate::OwnTenant),
        Some(t) => Uuid::parse_str(t).map(Activate::Tenant).map_err(|_| {
            ApiError::invalid(
                "activate",
                format!("expected true, false or a tenant UUID, got {:?}", clip(t)),
            )
        }),
    }
}

fn flag(value: Option<&str>, field: &str) -> Result<bool, ApiError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(ApiError::invalid(
            field,
            format!("expected true or false, got {:?}", clip(v)),
        )),
    }
}

/// The fields of an account body, each checked with its name.
struct Body<'a>(&'a serde_json::Map<String, Value>);

impl Body<'_> {
    fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ApiError::invalid(
                k.clone(),
                format!("unknown field (known: {})", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn text(&self, name: &str, max: usize) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(ApiError::invalid(name, "is empty or blank"))
            }
            Some(Value::String(s)) if s.chars().count() > max => {
                Err(ApiError::invalid(name, format!("at most {max} characters")))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid(name, "expected a string")),
        }
    }

    fn required(&self, name: &str, max: usize, what: &str) -> Result<String, ApiError> {
        self.text(name, max)?
            .ok_or_else(|| ApiError::invalid(name, format!("required ({what})")))
    }
}

async fn body_object(
    state: &ApiState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    require_json_body(headers)?;
    match read_json_within(state.read_timeout, body).await? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::invalid("body", "expected a JSON object")),
    }
}

fn key_of(state: &ApiState) -> Result<&crate::vault::SecretKey, ApiError> {
    state.secret_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_secret_key",
            "accounts added at run time keep their client secret in the store, sealed with a key, and none is configured: create one with `statusd keygen /etc/statusd/secret.key`, set store.secret_key_file to it (or pass it as the systemd credential secret_key), and restart statusd",
        )
        .field("store.secret_key_file")
    })
}

fn exists(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "exists",
        format!("an account {id:?} exists already; rotate its credentials with PUT /v1/accounts/{id}/credentials"),
    )
    .field("id")
}

fn configured_in_file(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "configured_in_file",
        format!("account {id:?} is set in the configuration file; change it there (and restart statusd), not through the API"),
    )
    .field("id")
}

/// A validation's failure as the API answers it.
fn invalid(e: Invalid) -> ApiError {
    match e {
        Invalid::Refused { field, message } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_credentials",
            message,
        )
        .field(field),
        Invalid::NotDatacenter(m) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not_a_datacenter", m)
                .field("datacenter_url")
        }
        Invalid::Timeout(m) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "datacenter_timeout", m)
            .field("datacenter_url"),
        Invalid::Unavailable(m) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "datacenter_unavailable", m)
                .field("datacenter_url")
        }
    }
}

/// An address an account added through the API may not use (nothing was sent there).
fn not_allowed(r: crate::platform::Refused) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "host_not_allowed", r.0).field("datacenter_url")
}

/// A store refusal of an account change (it raced with another) as the API answers it.
fn account_store_error(e: crate::store::StoreError) -> ApiError {
    match e {
        crate::store::StoreError::Account(id, why) => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("account {id:?}: {why}"),
        )
        .field("id"),
        other => store_error(other),
    }
}

fn credentials_of(b: &Body) -> Result<Credentials, ApiError> {
    match b.text("credentials", 32)?.as_deref() {
        None => Ok(Credentials::ApiClient),
        Some(text) => Credentials::parse(text).ok_or_else(|| {
            ApiError::invalid(
                "credentials",
                format!(
                    "expected \"api_client\" (the default) or \"cyberapp\", got {:?}",
                    clip(text)
                ),
            )
        }),
    }
}

/// A new account's spec from its body (nothing is asked of the data center yet).
fn spec_of(b: &Body) -> Result<AccountSpec, ApiError> {
    b.only(&[
        "id",
        "datacenter_url",
        "client_id",
        "client_secret",
        "credentials",
        "root_tenant_id",
    ])?;
    let id = match b.text("id", 63)? {
        Some(id) if crate::config::valid_account_id(&id) => id,
        Some(id) => {
            return Err(ApiError::invalid(
                "id",
                format!("{:?}: an account id is 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit", clip(&id)),
            ))
        }
        None => format!("acct-{}", &Uuid::new_v4().simple().to_string()[..12]),
    };
    let url = b.required(
        "datacenter_url",
        2048,
        "the partner's data-center URL, e.g. https://eu2-cloud.acronis.com",
    )?;
    let datacenter_url = crate::config::check_datacenter_url(&url).map_err(|m| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not_a_datacenter", m)
            .field("datacenter_url")
    })?;
    let client_id = b.required("client_id", 256, "the partner's API client id")?;
    let client_secret =
        Secret::new(b.required("client_secret", 4096, "the API client's secret")?);
    let root_tenant_id = match b.text("root_tenant_id", 64)? {
        None => None,
        Some(t) => Some(Uuid::parse_str(&t).map_err(|_| {
            ApiError::invalid("root_tenant_id", format!("not a UUID: {:?}", clip(&t)))
        })?),
    };
    Ok(AccountSpec {
        id,
        datacenter_url,
        client_id,
        client_secret,
        credentials: credentials_of(b)?,
        root_tenant_id,
    })
}

async fn changed_view(a: &Account, activation: Option<Accepted>) -> AccountChanged {
    AccountChanged {
        account: view(a, Counts::default()).await,
        activation,
    }
}

fn refuse_while_stopping(state: &ApiState) -> Result<(), ApiError> {
    if state.accepting.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "statusd is shutting down; retry against the next instance",
        ))
    }
}

/// `POST /v1/accounts[?activate=true|<tenant>]`: validate with the data center, then store
/// the account (and its activation) in one durable write.
pub(super) async fn add_account(
    State(state): State<ApiState>,
    JsonQuery(q): JsonQuery<AddQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    refuse_while_stopping(&state)?;
    super::intake::refuse_when_full(&state)?;
    let activate = activate_of(&q)?;
    let obj = body_object(&state, &headers, body).await?;
    let spec = spec_of(&Body(&obj))?;
    let key = key_of(&state)?.clone();
    let id = spec.id.clone();
    async fn taken(state: &ApiState, id: &str) -> Result<bool, ApiError> {
        Ok(state.accounts.get(id).is_some()
            || state
                .queue
                .stored_account(id)
                .await
                .map_err(store_error)?
                .is_some())
    }
    if taken(&state, &id).await? {
        return Err(exists(&id));
    }
    state
        .accounts
        .check_address(&spec.datacenter_url)
        .await
        .map_err(not_allowed)?;
    let secret = spec.client_secret.clone();
    let mut account = state
        .accounts
        .build(spec)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    // One attempt, answered: the partner is waiting for the verdict.
    let validated = account.client.validate().await.map_err(invalid)?;
    account.source = AccountSource::Store;
    account.tenant_id = Some(validated.tenant_id);
    account.tenant_name = validated.tenant_name.clone();
    let now = crate::store::now_ms();
    account.updated_at_ms = now;
    let record = sealed_record(&account, &validated, &key, &secret, now);
    let events = activation_events(&id, activate, validated.tenant_id);
    let _change = state.account_changes.lock().await;
    if taken(&state, &id).await? {
        return Err(exists(&id));
    }
    // In use before the write, so its activation is never taken for an unknown account.
    let shown = account.clone();
    let previous = state.accounts.insert(account);
    let outcomes = match state
        .queue
        .write_account(AccountWrite::Add(record), events)
        .await
    {
        Ok(o) => o,
        Err(e) => {
            state.accounts.restore(&id, previous);
            return Err(account_store_error(e));
        }
    };
    let activation = outcomes.first().map(|o| {
        state
            .metrics
            .events_accepted
            .get_or_create(&label("type", EventKind::Activation.as_str()))
            .inc();
        Accepted {
            id: o.id(),
            status: EventState::Queued,
            duplicate: false,
        }
    });
    tracing::info!(message = "account added", account = %id, datacenter = %shown.datacenter, activation = activation.is_some());
    Ok((
        StatusCode::CREATED,
        Json(changed_view(&shown, activation).await),
    )
        .into_response())
}

/// The record of a new account, its secret sealed bound to it.
fn sealed_record(
    account: &Account,
    validated: &crate::platform::Validated,
    key: &crate::vault::SecretKey,
    secret: &crate::config::Secret,
    now: i64,
) -> StoredAccount {
    let mut record = StoredAccount {
        id: account.id.clone(),
        datacenter_url: account.datacenter_url.clone(),
        client_id: account.client_id.clone(),
        client_secret_sealed: String::new(),
        credentials: account.credentials.as_str().into(),
        root_tenant_id: account.root_tenant_id,
        tenant_id: Some(validated.tenant_id),
        tenant_name: validated.tenant_name.clone(),
        created_at_ms: now,
        updated_at_ms: now,
        retiring: false,
    };
    record.client_secret_sealed = key.seal_bound(&record.binding(), secret.expose());
    record
}

/// The activation that comes with a new account (`?activate`): of its own tenant, of the one
/// named, or none.
fn activation_events(id: &str, activate: Activate, own_tenant: uuid::Uuid) -> Vec<NewEvent> {
    match activate {
        Activate::No => Vec::new(),
        Activate::OwnTenant => vec![own_tenant],
        Activate::Tenant(t) => vec![t],
    }
    .into_iter()
    .map(|t| {
        let mut ev = NewEvent::state_change(t, crate::store::IntegrationState::Active, None);
        ev.account = Some(id.to_string());
        ev
    })
    .collect()
}

/// `PUT /v1/accounts/{id}/credentials`: validate the new credentials, then use them for
/// every later request, those of events already queued too.
pub(super) async fn rotate_credentials(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    refuse_while_stopping(&state)?;
    let id = parse_id_text(&id)?;
    let current = state
        .accounts
        .get(&id)
        .ok_or_else(|| ApiError::not_found("account"))?;
    if current.source == AccountSource::File {
        return Err(configured_in_file(&id));
    }
    let obj = body_object(&state, &headers, body).await?;
    let b = Body(&obj);
    b.only(&["client_id", "client_secret"])?;
    let client_id = b
        .text("client_id", 256)?
        .unwrap_or_else(|| current.client_id.clone());
    let secret = Secret::new(b.required("client_secret", 4096, "the API client's new secret")?);
    let key = key_of(&state)?.clone();
    state
        .accounts
        .check_address(&current.datacenter_url)
        .await
        .map_err(not_allowed)?;
    let mut account = state
        .accounts
        .build(AccountSpec {
            id: id.clone(),
            datacenter_url: current.datacenter_url.clone(),
            client_id,
            client_secret: secret.clone(),
            credentials: current.credentials,
            root_tenant_id: current.root_tenant_id,
        })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let validated = account.client.validate().await.map_err(invalid)?;
    let _change = state.account_changes.lock().await;
    let Some(stored) = state.queue.stored_account(&id).await.map_err(store_error)? else {
        return Err(ApiError::not_found("account"));
    };
    account.source = AccountSource::Store;
    account.tenant_id = Some(validated.tenant_id);
    account.tenant_name = validated.tenant_name.clone();
    account.retiring = stored.retiring;
    account.updated_at_ms = crate::store::now_ms();
    let mut record = StoredAccount {
        client_id: account.client_id.clone(),
        client_secret_sealed: String::new(),
        tenant_id: Some(validated.tenant_id),
        tenant_name: validated.tenant_name,
        updated_at_ms: account.updated_at_ms,
        ..stored
    };
    record.client_secret_sealed = key.seal_bound(&record.binding(), secret.expose());
    let shown = account.clone();
    let previous = state.accounts.insert(account);
    if let Err(e) = state
        .queue
        .write_account(AccountWrite::Replace(record), Vec::new())
        .await
    {
        state.accounts.restore(&id, previous);
        return Err(account_store_error(e));
    }
    tracing::info!(message = "account credentials replaced", account = %id);
    Ok(Json(changed_view(&shown, None).await).into_response())
}

/// How long a removal waits for the account's reports in flight.
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `DELETE /v1/accounts/{id}[?force=true]`.
pub(super) async fn remove_account(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonQuery(q): JsonQuery<RemoveQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id_text(&id)?;
    let force = flag(q.force.as_deref(), "force")?;
    let Some(current) = state.accounts.get(&id) else {
        return Err(ApiError::not_found("account"));
    };
    if current.source == AccountSource::File {
        return Err(configured_in_file(&id));
    }
    let _change = state.account_changes.lock().await;
    // Out of use first, so no event is accepted for it while it goes.
    let previous = state.accounts.remove(&id);
    // A report of the account in flight settles within a request timeout: wait for it (its
    // tenant takes no new batch meanwhile, the account being out of use) rather than refuse.
    let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
    let removal = loop {
        match state.queue.remove_account(&id, force).await {
            Err(crate::store::StoreError::Account(_, why))
                if why == crate::store::IN_FLIGHT && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    match removal {
        Ok(Removal::Removed(dropped)) => {
            tracing::info!(message = "account removed", account = %id, pending_dropped = dropped.pending_events, dead_dropped = dropped.dead_letters);
            Ok(Json(AccountRemoved {
                id,
                removed: true,
                dropped,
            })
            .into_response())
        }
        Ok(Removal::HasEvents(n)) => {
            state.accounts.restore(&id, previous);
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "has_events",
                format!(
                    "account {id:?} has {} pending event(s) and {} dead letter(s); let them be delivered, retry or purge the dead letters, or remove it with ?force=true (which drops them)",
                    n.pending, n.dead
                ),
            )
            .field("force"))
        }
        Ok(Removal::NotStored) => {
            state.accounts.restore(&id, previous);
            Err(ApiError::not_found("account"))
        }
        Err(e) => {
            state.accounts.restore(&id, previous);
            Err(account_store_error(e))
        }
    }
}
