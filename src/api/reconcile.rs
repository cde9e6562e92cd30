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
                "unknown reconciler {:?} (expected tenants, status or branding)",
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
    match r.run_now_for(kind, dry_run, q.account.as_deref()).await {
        Ok(report) => Ok((StatusCode::OK, Json(serde_json::to_value(report).unwrap_or(json!({}))))
            .into_response()),
        Err(crate::reconcile::RunError::AlreadyRunning) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_running",
            format!("the {name} reconciler is running a dry run or a real run now; try again when it ends"),
        )),
    }
}
