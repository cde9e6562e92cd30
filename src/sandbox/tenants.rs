//! Tenants: cursor-paged listing with `updated_since`, `uuids` and deleted tenants, and reads.

use super::*;

pub(super) async fn list_tenants(
    _auth: Authorized,
    State(state): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().expect("sandbox lock");
    let selectors: Vec<&str> = ["uuids", "parent_id", "subtree_root_id", "after"]
        .into_iter()
        .filter(|k| q.contains_key(*k))
        .collect();
    if selectors.len() != 1 {
        return bad_request("exactly one of uuids, parent_id, subtree_root_id, after is required");
    }
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 5000,
        Some(Ok(l)) if l >= 1 => l,
        _ => return bad_request("limit must be a whole number of at least 1"),
    }
    .min(s.opts.page_limit);
    let ids: Vec<Uuid> = if let Some(cursor) = q.get("after") {
        if q.len() != 1 {
            return bad_request("after must be sent alone: the cursor carries the filters");
        }
        match s.cursors.remove(cursor) {
            Some(c) => c.remaining,
            None => return bad_request("unknown or used cursor"),
        }
    } else {
        let parse =
            |v: &str| Uuid::parse_str(v).map_err(|_| bad_request(&format!("not a UUID: {v}")));
        let mut ids: Vec<Uuid> = if let Some(u) = q.get("uuids") {
            let parts: Vec<&str> = u.split(',').filter(|p| !p.is_empty()).collect();
            if parts.len() > 100 {
                return bad_request("uuids takes at most 100 ids");
            }
            let mut out = Vec::new();
            for p in parts {
                match parse(p) {
                    Ok(id) => out.push(id),
                    Err(r) => return r,
                }
            }
            out
        } else if let Some(p) = q.get("parent_id") {
            let parent = match parse(p) {
                Ok(id) => id,
                Err(r) => return r,
            };
            s.tenants
                .iter()
                .filter(|t| t.parent_id == parent && t.id != parent)
                .map(|t| t.id)
                .collect()
        } else {
            let root = match parse(&q["subtree_root_id"]) {
                Ok(id) => id,
                Err(r) => return r,
            };
            if !s.index.contains_key(&root) {
                return envelope(StatusCode::NOT_FOUND, json!(1003), "tenant not found");
            }
            s.subtree(root)
        };
        let allow_deleted = q
            .get("allow_deleted")
            .is_some_and(|v| v == "true" || v == "1");
        let since = match q.get("updated_since") {
            None => None,
            Some(t) => match crate::platform::parse_platform_time(t) {
                Some(t) => Some(t.timestamp_millis()),
                None => return bad_request("updated_since must be an RFC 3339 timestamp"),
            },
        };
        ids.retain(|id| match s.index.get(id) {
            None => false,
            Some(&i) => {
                let t = &s.tenants[i];
                (allow_deleted || t.deleted_at.is_none())
                    && since.is_none_or(|ms| t.updated_ms > ms)
            }
        });
        ids
    };
    let take = limit.min(ids.len());
    let page: Vec<Value> = ids[..take]
        .iter()
        .filter_map(|id| s.index.get(id).map(|&i| s.tenant_json(i)))
        .collect();
    let rest = ids[take..].to_vec();
    let mut resp = json!({"items": page, "timestamp": now_text()});
    if !rest.is_empty() {
        let cursor = format!("{:032x}", s.rng.random::<u128>());
        s.cursors.insert(cursor.clone(), Cursor { remaining: rest });
        resp["paging"] = json!({"cursors": {"after": cursor}});
    }
    Json(resp).into_response()
}

pub(super) fn tenant_index(s: &SbState, id: &str) -> Result<usize, Response> {
    Uuid::parse_str(id)
        .ok()
        .and_then(|u| s.index.get(&u).copied())
        .ok_or_else(|| envelope(StatusCode::NOT_FOUND, json!(1003), "tenant not found"))
}

pub(super) async fn get_tenant(
    _auth: Authorized,
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Response {
    let s = state.lock().expect("sandbox lock");
    match tenant_index(&s, &id) {
        Ok(i) if s.tenants[i].deleted_at.is_none() => Json(s.tenant_json(i)).into_response(),
        Ok(_) => envelope(StatusCode::NOT_FOUND, json!(1003), "tenant deleted"),
        Err(r) => r,
    }
}
