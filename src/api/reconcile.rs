//! `POST /v1/reconcile/{name}`.

use super::*;

#[derive(serde::Deserialize)]
pub(super) struct ReconcileQuery {
    #[serde(default)]
    dry_run: Option<String>,
    /// Run for this account only.
    #[serde(default)]
    account: Option<String>,
}

pub(super) async fn run_reconcile(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    JsonQuery(q): JsonQuery<ReconcileQuery>,
) -> Result<Response, ApiError> {
    let kind = crate::reconcile::Kind::parse(&name).ok_or_else(|| {
        ApiError::invalid(
            "name",
            format!(
                "unknown reconciler {:?} (expected tenants, status, branding or fusion-branding)",
                clip(&name)
            ),
        )
    })?;
    let dry_run = match q.dry_run.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "dry_run",
                format!("expected true or false, got {:?}", clip(other)),
            ))
        }
    };
    let Some(r) = &state.reconcilers else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "reconcilers are not running",
        ));
    };
    if kind == crate::reconcile::Kind::FusionBranding && r.fusion_state().await.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            "fusion-branding needs a [fusion] section in the configuration",
        )
        .field("name"));
    }
    if let Some(id) = &q.account {
        if state.accounts.get(id).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("account {:?} is not configured", clip(id)),
            )
            .field("account"));
        }
    }
    // On a shared store, work held by another replica is its to do: one account (or Fusion)
    // held elsewhere is answered 409 naming the owner's API address.
    let key = match (&q.account, kind) {
        (Some(id), _) => Some(id.clone()),
        (None, crate::reconcile::Kind::FusionBranding) => Some("fusion".to_string()),
        _ => None,
    };
    if let Some(key) = &key {
        if let Some((member, api)) = owner_elsewhere(&state, key).await? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "owned_elsewhere",
                format!(
                    "{} is held by the replica {member} at {api}: send this request there",
                    clip(key)
                ),
            ));
        }
    }
    match r.run_now_for(kind, dry_run, q.account.as_deref()).await {
        Ok(report) => {
            let mut body = serde_json::to_value(report).unwrap_or(json!({}));
            // A run of every account: the accounts held by other replicas, with their owners.
            if key.is_none() {
                let mut others = serde_json::Map::new();
                for a in state.accounts.iter() {
                    if let Some((member, api)) = owner_elsewhere(&state, &a.id).await? {
                        others.insert(a.id.clone(), json!({"member": member, "api": api}));
                    }
                }
                if !others.is_empty() {
                    body["held_elsewhere"] = serde_json::Value::Object(others);
                }
            }
            Ok((StatusCode::OK, Json(body)).into_response())
        }
        Err(crate::reconcile::RunError::AlreadyRunning) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_running",
            format!("the {name} reconciler is running a dry run or a real run now; try again when it ends"),
        )),
        Err(crate::reconcile::RunError::NotConfigured) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            format!("the {name} reconciler is not configured"),
        )
        .field("name")),
    }
}

/// The replica holding an account's shard (member id, API address), when it is not this one.
async fn owner_elsewhere(
    state: &ApiState,
    account: &str,
) -> Result<Option<(String, String)>, ApiError> {
    let Some(pool) = state.queue.pool() else {
        return Ok(None);
    };
    let own = &pool.ownership;
    if own.owns_account(Some(account)) {
        return Ok(None);
    }
    let shard = own.map.of(Some(account));
    let rows = pool.leases.shard_rows().await.map_err(store_error)?;
    let owner = rows
        .iter()
        .find(|r| r.shard == shard)
        .and_then(|r| r.owner.clone());
    let Some(owner) = owner else {
        return Ok(Some((
            "none".into(),
            "nobody holds its shard yet: try again in a moment".into(),
        )));
    };
    let members = pool.leases.members().await.map_err(store_error)?;
    let api = members
        .iter()
        .find(|m| m.id == owner)
        .map(|m| m.api.clone())
        .unwrap_or_default();
    Ok(Some((owner, api)))
}

/// `POST /v1/fusion/login` `{"code"?}`: log in to Fusion now; `code_required` when the
/// platform asks for a second factor (send the code the user received in a second call).
pub(super) async fn fusion_login(
    State(state): State<ApiState>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = super::intake::read_bytes_within(state.read_timeout, body).await?;
    let code = if body.is_empty() {
        None
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid("body", format!("malformed JSON: {e}")))?;
        match v.get("code") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) if !c.trim().is_empty() && c.chars().count() <= 64 => {
                Some(c.trim().to_string())
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "code",
                    "expected the code as a string of 1 to 64 characters",
                ))
            }
        }
    };
    let Some(r) = &state.reconcilers else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "reconcilers are not running",
        ));
    };
    if r.fusion_state().await.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            "no [fusion] section in the configuration",
        ));
    }
    if code.is_none() {
        // A login may send the user a second factor's code: not more than one a while.
        let now = tokio::time::Instant::now();
        let mut last = state
            .fusion_login_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(wait) = last
            .map(|at| (at + super::FUSION_LOGIN_EVERY).saturating_duration_since(now))
            .filter(|w| !w.is_zero())
        {
            let secs = wait.as_secs().max(1);
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_logins",
                format!("a Fusion login was asked for less than {} s ago (each may send the user a new code): send the code received with {{\"code\": \"...\"}}, or try again in {secs} s", super::FUSION_LOGIN_EVERY.as_secs()),
            )
            .into_response();
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
            return Ok(resp);
        }
        *last = Some(now);
    }
    match r.fusion_login(code.as_deref()).await {
        Ok(crate::platform::LoginOutcome::LoggedIn) => Ok(Json(json!({"state": "logged_in"})).into_response()),
        Ok(crate::platform::LoginOutcome::CodeRequired) => Ok(Json(json!({"state": "code_required", "message": "the platform sent a code to the user: send it with {\"code\": \"...\"}"})).into_response()),
        Err(e) => {
            let field = if code.is_some() { "code" } else { "fusion.password" };
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "login_refused", e.to_string()).field(field))
        }
    }
}
