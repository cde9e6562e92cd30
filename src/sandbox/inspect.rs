//! `/_sandbox/`: inspection of what was received, and fault injection.

use super::*;

#[derive(Deserialize)]
pub(super) struct ReportsQuery {
    #[serde(default)]
    pub(super) tenant_id: Option<Uuid>,
}

pub(super) async fn sb_reports(
    State(state): State<Shared>,
    Query(q): Query<ReportsQuery>,
) -> Response {
    let s = state.lock().expect("sandbox lock");
    let items: Vec<&ReceivedReport> = s
        .reports
        .iter()
        .filter(|r| q.tenant_id.is_none_or(|t| r.tenant_id == t))
        .collect();
    Json(json!({"count": items.len(), "items": items})).into_response()
}

pub(super) async fn sb_stats(State(state): State<Shared>) -> Response {
    let s = state.lock().expect("sandbox lock");
    Json(json!({
        "stats": s.stats,
        "reports": s.reports.len(),
        "tenants": s.tenants.len(),
        "root_tenant_id": s.root,
        "faults_pending": s.faults.len(),
    }))
    .into_response()
}

pub(super) async fn sb_add_fault(State(state): State<Shared>, body: Bytes) -> Response {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return bad_request(&format!("not a fault: {e}")),
    };
    if fault.fraction.is_some_and(|f| !(0.0..=1.0).contains(&f)) {
        return bad_request("fraction must be between 0 and 1");
    }
    state.lock().expect("sandbox lock").faults.push_back(fault);
    StatusCode::CREATED.into_response()
}

pub(super) async fn sb_faults(State(state): State<Shared>) -> Response {
    let s = state.lock().expect("sandbox lock");
    Json(json!({"items": s.faults})).into_response()
}

pub(super) async fn sb_clear_faults(State(state): State<Shared>) -> Response {
    state.lock().expect("sandbox lock").faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn sb_tenants(State(state): State<Shared>) -> Response {
    let s = state.lock().expect("sandbox lock");
    let items: Vec<Value> = (0..s.tenants.len()).map(|i| s.tenant_json(i)).collect();
    Json(json!({"root_tenant_id": s.root, "items": items})).into_response()
}

pub(super) async fn sb_mutate_tenant(
    State(state): State<Shared>,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Response {
    let change: TenantChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return bad_request(&format!("not a tenant change: {e}")),
    };
    if state.lock().expect("sandbox lock").mutate(id, change) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        envelope(StatusCode::NOT_FOUND, json!(1003), "tenant not found")
    }
}

pub(super) async fn sb_brand(State(state): State<Shared>, Path(id): Path<Uuid>) -> Response {
    let s = state.lock().expect("sandbox lock");
    let logo_sha = s.logos.get(&id).map(|b| {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(b))
    });
    match s.brands.get(&id) {
        Some(b) => Json(json!({"brand": b, "logo_sha256": logo_sha})).into_response(),
        None => envelope(StatusCode::NOT_FOUND, json!(1003), "no brand"),
    }
}
