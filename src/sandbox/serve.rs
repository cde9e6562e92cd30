//! The accept loop (on hyper, so a fault can drop a connection without an answer), the routes,
//! the error envelope and fault injection.

use super::*;

/// The request's declared content type ("" without one).
pub(super) fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// 415 with the envelope unless the body is declared as JSON.
pub(super) fn require_json(headers: &HeaderMap) -> Result<(), Response> {
    if content_type(headers).starts_with("application/json") {
        Ok(())
    } else {
        Err(envelope(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!(1015),
            "Content-Type must be application/json",
        ))
    }
}

pub(super) fn envelope(status: StatusCode, code: Value, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {
            "code": code,
            "message": message,
            "domain": "PlatformAccountServer",
            "context": {},
            "details": {"info": message},
        }})),
    )
        .into_response()
}

pub(super) fn bad_request(message: &str) -> Response {
    envelope(StatusCode::BAD_REQUEST, json!(1006), message)
}

pub(super) fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/2/idp/token", post(token))
        // A CyberApp's API key gets its tokens here, with the same form.
        .route("/bc/idp/token", post(token))
        .route("/api/2/clients/{id}", get(client_info))
        .route("/api/integration_management/v2/status", post(status_report))
        .route("/api/2/tenants", get(list_tenants))
        .route("/api/2/tenants/{id}", get(get_tenant))
        .route(
            "/api/2/tenants/{id}/brand",
            get(get_brand)
                .post(enable_brand)
                .put(put_brand)
                .delete(delete_brand),
        )
        .route(
            "/api/2/tenants/{id}/brand/logo",
            get(get_logo).post(post_logo),
        )
        .route("/_sandbox/reports", get(sb_reports))
        .route("/_sandbox/stats", get(sb_stats))
        .route(
            "/_sandbox/faults",
            post(sb_add_fault).delete(sb_clear_faults).get(sb_faults),
        )
        .route("/api/v01/auth/login", post(fusion_login))
        .route("/api/v01/auth/2fa", post(fusion_2fa))
        .route("/api/v01/auth/access_token", get(fusion_access_token))
        .route("/api/v01/auth/logout", get(fusion_logout))
        .route(
            "/api/v01/draas/{instance}/tenants/{tenant}/subscriptions",
            get(fusion_subscriptions),
        )
        .route(
            "/api/v01/draas/{instance}/tenants/{tenant}/subscriptions/{sub}/configurations/branding/{part}",
            get(fusion_get_part).put(fusion_put_part),
        )
        .route("/_sandbox/clients", post(sb_create_client))
        .route("/_sandbox/clients/{id}/reset-secret", post(sb_reset_client))
        .route("/_sandbox/tenants", get(sb_tenants))
        .route("/_sandbox/tenants/{id}", post(sb_mutate_tenant))
        .route("/_sandbox/tenants/{id}/brand", get(sb_brand))
        .fallback(|| async {
            envelope(
                StatusCode::NOT_FOUND,
                json!("not_found"),
                "unknown endpoint",
            )
        })
        .with_state(state)
}

/// Name an endpoint for request counting.
pub(super) fn endpoint_name(method: &str, path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    let shape: Vec<&str> = parts
        .iter()
        .map(|p| {
            if Uuid::parse_str(p).is_ok() {
                "{id}"
            } else {
                p
            }
        })
        .collect();
    let shape = shape.join("/");
    let name = if shape.ends_with("/bc/idp/token") {
        "cyberapp_token"
    } else if shape.ends_with("/idp/token") {
        "token"
    } else if shape.contains("/integration_management/v2/status") {
        "status"
    } else if shape.ends_with("/brand/logo") {
        "brand_logo"
    } else if shape.ends_with("/brand") {
        "brand"
    } else if shape.contains("/clients/") {
        "client"
    } else if shape.ends_with("/tenants") {
        "tenants_list"
    } else if shape.contains("/tenants/") {
        "tenant"
    } else {
        "other"
    };
    format!("{method} {name}")
}

pub(super) enum FaultAction {
    Pass,
    Respond(Response),
    Drop,
}

pub(super) async fn apply_faults(
    state: &Shared,
    method: &str,
    path: &str,
    query: &str,
) -> FaultAction {
    let chosen = {
        let mut s = state.lock().expect("sandbox lock");
        let mut chosen = None;
        let mut exhausted = None;
        let roll: f64 = s.rng.random();
        for (i, f) in s.faults.iter_mut().enumerate() {
            if f.path_contains
                .as_deref()
                .is_some_and(|p| !path.contains(p))
            {
                continue;
            }
            if f.query_contains
                .as_deref()
                .is_some_and(|q| !query.contains(q))
            {
                continue;
            }
            if f.fraction.is_some_and(|fr| roll >= fr) {
                continue;
            }
            if let Some(c) = f.count.as_mut() {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    exhausted = Some(i);
                }
            }
            chosen = Some(f.clone());
            break;
        }
        if let Some(i) = exhausted {
            s.faults.remove(i);
        }
        if chosen.is_some() {
            s.stats.faults_applied += 1;
        }
        if chosen.as_ref().is_some_and(|f| f.expire_tokens) {
            s.tokens.clear();
        }
        chosen
    };
    let Some(f) = chosen else {
        return FaultAction::Pass;
    };
    tracing::debug!(message = "sandbox fault applied", method, path, fault = ?f);
    if let Some(ms) = f.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if f.drop_connection {
        return FaultAction::Drop;
    }
    if let Some(body) = f.body {
        let status = f
            .status
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
        return FaultAction::Respond((status, Json(body)).into_response());
    }
    if let Some(code) = f.status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut resp = envelope(status, json!(code), "injected fault");
        if let Some(ra) = f.retry_after {
            if let Ok(v) = ra.parse() {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        return FaultAction::Respond(resp);
    }
    FaultAction::Pass
}

#[derive(Debug)]
pub(super) struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}
impl std::error::Error for Dropped {}

/// The accept loop: hyper directly (not `axum::serve`) so a fault can close a connection
/// without any answer, as a crashing load balancer would.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    state: Shared,
    stop: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt;
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        let router = router.clone();
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let router = router.clone();
                let state = state.clone();
                async move {
                    let method = req.method().to_string();
                    let path = req.uri().path().to_string();
                    let query = req.uri().query().unwrap_or("").to_string();
                    let counted = !path.starts_with("/_sandbox");
                    if counted {
                        let mut s = state.lock().expect("sandbox lock");
                        s.stats.requests += 1;
                        *s.stats
                            .by_endpoint
                            .entry(endpoint_name(&method, &path))
                            .or_default() += 1;
                        s.stats.in_flight += 1;
                        s.stats.max_in_flight = s.stats.max_in_flight.max(s.stats.in_flight);
                    }
                    let action = if counted {
                        apply_faults(&state, &method, &path, &query).await
                    } else {
                        FaultAction::Pass
                    };
                    let result = match action {
                        FaultAction::Drop => Err(Dropped),
                        FaultAction::Respond(r) => Ok(r),
                        FaultAction::Pass => {
                            let req = req.map(Body::new);
                            Ok(router.oneshot(req).await.unwrap_or_else(|e| match e {}))
                        }
                    };
                    if counted {
                        let mut s = state.lock().expect("sandbox lock");
                        s.stats.in_flight -= 1;
                        if let Ok(r) = &result {
                            *s.stats.by_status.entry(r.status().as_u16()).or_default() += 1;
                        }
                    }
                    result
                }
            });
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let io = TokioIo::new(stream);
            tokio::select! {
                _ = conn.serve_connection(io, service) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}
