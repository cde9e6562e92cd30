//! What the operator commands print: tables, the status and reconcile reports.

use crate::api::answers::Status;
use crate::reconcile::Report;

/// A value for a table cell (`-` when absent).
pub fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// At most `n` characters, with an ellipsis when cut.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n).collect::<String>())
    } else {
        s.to_string()
    }
}

pub fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

pub fn print_status(v: &Status) {
    let q = &v.queue;
    println!("statusd {}  accepting: {}", v.version, v.accepting);
    if let Some(e) = &v.store_write_error {
        println!("store      cannot write: {e}");
    }
    if let Some(s) = &v.store {
        if let Some(e) = &s.unavailable {
            println!("store      {}: cannot be reached: {e}", s.backend);
        }
        if let (Some(me), Some(live), Some(n), Some(owned)) =
            (&s.member, s.live_members, s.shards, s.shards_owned)
        {
            println!(
                "cluster    member {me}  live members {live}  shards held here {owned} of {n}  unowned {}",
                s.shards_unowned.unwrap_or(0)
            );
        }
    }
    println!(
        "queue      depth {}  in flight {}  oldest pending {}  dead letters {}",
        q.depth,
        q.in_flight,
        cell(q.oldest_pending_age_seconds.map(|a| format!("{a:.1}s"))),
        q.dead_letters
    );
    println!(
        "platform   {}  reachable: {}",
        cell(v.platform.base_url.as_deref()),
        cell(v.platform.reachable)
    );
    if let Some(f) = &v.platform.authentication_failing {
        println!(
            "           authentication failing since {} ({} refusals): {}",
            f.since, f.failures, f.error
        );
    }
    if v.datacenters.len() > 1 {
        for d in &v.datacenters {
            println!(
                "           {}  {} account(s), {} failing  reachable: {}",
                d.datacenter, d.accounts, d.accounts_failing, d.reachable
            );
        }
    }
    if let Some(d) = &v.delivery {
        println!(
            "delivery   lanes running {}  lanes in backoff {}  platform backoff until {}",
            d.lanes_running,
            d.lanes_waiting_backoff,
            cell(
                d.platform_backoff_until_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339())
            )
        );
    }
    if let Some(f) = v.fusion {
        let hint = match f {
            crate::platform::FusionState::CodeRequired | crate::platform::FusionState::Refused => {
                "  (run `statusd fusion login`)"
            }
            _ => "",
        };
        println!("fusion     {}{hint}", f.as_str());
    }
    let rows: Vec<Vec<String>> = v
        .reconcilers
        .iter()
        .map(|(name, st)| {
            vec![
                name.clone(),
                cell(st.last_run_at.as_deref()),
                cell(st.outcome),
                st.drift_items.to_string(),
                cell(st.next_run_at.as_deref()),
            ]
        })
        .collect();
    println!();
    print_table(
        &["RECONCILER", "LAST RUN", "OUTCOME", "DRIFT", "NEXT RUN"],
        &rows,
    );
    if v.unknown_tenants.count > 0 {
        println!(
            "\n{} tenant(s) with events are not in the tenant inventory",
            v.unknown_tenants.count
        );
    }
}

pub fn print_reconcile(r: &Report) {
    println!(
        "{} reconcile{}: {} in {} ms",
        r.reconciler.as_str(),
        if r.dry_run { " (dry run)" } else { "" },
        r.outcome,
        r.duration_ms
    );
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let drift: Vec<Vec<String>> = r
        .drift
        .iter()
        .map(|i| {
            vec![
                i.tenant_id.to_string(),
                i.field.clone(),
                clip(&text(&i.platform), 40),
                clip(&text(&i.intended), 40),
            ]
        })
        .collect();
    if drift.is_empty() {
        println!("no drift");
    } else {
        print_table(&["TENANT", "FIELD", "PLATFORM", "INTENDED"], &drift);
    }
    for a in &r.actions {
        println!("action: {a}");
    }
    for k in &r.skipped {
        println!("skipped {}: {}", k.tenant_id, k.message);
    }
    for e in &r.errors {
        println!("error {}: {}", e.tenant_id, e.message);
    }
}
