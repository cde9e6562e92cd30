//! The alert rules and the Grafana dashboard in `deploy/` ask only for metric families and labels
//! that a running daemon really exposes, so a renamed metric breaks this test rather than a
//! production dashboard.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{harness, wait_for_async};
use serde_json::json;
use statusd::sandbox::{Fault, SandboxOptions};

/// Every `statusd_*` name in `text`, with the suffixes of the exposition format removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("statusd_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_string());
        i = end;
    }
    out
}

/// Label names used in `by (...)` clauses and `{label="..."}` matchers.
fn label_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in text.split("by (").skip(1) {
        if let Some(list) = part.split(')').next() {
            out.extend(list.split(',').map(|l| l.trim().to_string()));
        }
    }
    for part in text.split("statusd_").skip(1) {
        let Some(rest) = part.split_once('{').map(|(_, r)| r) else {
            continue;
        };
        let Some(inner) = rest.split('}').next() else {
            continue;
        };
        for m in inner.split(',') {
            if let Some((name, _)) = m.split_once("=") {
                out.insert(name.trim_end_matches(['!', '~']).trim().to_string());
            }
        }
    }
    out.retain(|l| !l.is_empty() && !matches!(l.as_str(), "le" | "instance" | "job"));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_use_only_exposed_metrics() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let customers = h.sandbox.tenant_ids(Some("customer"));
    // One tenant is refused for good, so the dead-letter families carry their labels too.
    h.sandbox.inject(Fault {
        status: Some(400),
        query_contains: None,
        path_contains: Some("integration_management".into()),
        count: Some(1),
        ..Default::default()
    });
    let r = h
        .post_events(json!([
            {"tenant_id": customers[0], "type": "activation"},
            {"tenant_id": customers[1], "type": "deactivation"},
        ]))
        .await;
    assert_eq!(r.status(), 202);
    for name in ["tenants", "status", "branding"] {
        let r = h
            .call(reqwest::Method::POST, &format!("/v1/reconcile/{name}"))
            .await;
        assert!(r.status().is_success(), "{name}: {}", r.status());
    }
    let fetch = || async {
        h.call(reqwest::Method::GET, "/metrics")
            .await
            .text()
            .await
            .unwrap()
    };
    wait_for_async(
        Duration::from_secs(20),
        "deliveries, a dead letter and a run of every reconciler",
        || async {
            let m = fetch().await;
            m.contains("statusd_events_dead_lettered_total{")
                && ["tenants", "status", "branding"].iter().all(|r| {
                    m.contains(&format!(
                        "statusd_reconcile_duration_seconds_count{{reconciler=\"{r}\"}}"
                    ))
                })
        },
    )
    .await;
    let exposed = fetch().await;
    let exposed_names = metric_names(&exposed);

    let root = env!("CARGO_MANIFEST_DIR");
    let alerts = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let dashboard_text =
        std::fs::read_to_string(format!("{root}/deploy/grafana/statusd-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push_str(target["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    assert!(exprs.lines().count() >= 15, "{exprs}");

    for (what, text) in [("alerts.yml", &alerts), ("dashboard", &exprs)] {
        let used = metric_names(text);
        assert!(used.len() >= 8, "{what}: {used:?}");
        for name in &used {
            assert!(
                exposed_names.contains(name),
                "{what} uses {name}, which /metrics does not expose"
            );
        }
        for label in label_names(text) {
            assert!(
                exposed.contains(&format!("{{{label}=\""))
                    || exposed.contains(&format!(",{label}=\"")),
                "{what} uses the label {label}, which no exposed sample carries"
            );
        }
    }
    // Every family of the spec is on the dashboard.
    let on_dashboard = metric_names(&exprs);
    for name in &exposed_names {
        if name != "statusd_" {
            assert!(
                on_dashboard.contains(name),
                "{name} is not on the dashboard"
            );
        }
    }
}

/// The families of the spec (§5), each exposed by a daemon that has done nothing yet, with the
/// label values known in advance at zero, so `rate()` and "never happened" alerts work from the
/// first scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_daemon_exposes_every_family_from_the_first_scrape() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let exposed = h.get_text("/metrics").await;
    let names = metric_names(&exposed);
    for family in [
        "statusd_events_accepted",
        "statusd_events_delivered",
        "statusd_events_dead_lettered",
        "statusd_delivery_attempts",
        "statusd_delivery_request_duration_seconds",
        "statusd_event_delivery_lag_seconds",
        "statusd_queue_depth",
        "statusd_queue_oldest_event_age_seconds",
        "statusd_dead_letters",
        "statusd_platform_up",
        "statusd_token_refreshes",
        "statusd_reconcile_runs",
        "statusd_reconcile_duration_seconds",
        "statusd_reconcile_drift_items",
        "statusd_reconcile_last_success_timestamp_seconds",
        "statusd_build_info",
    ] {
        assert!(names.contains(family), "{family} missing:\n{exposed}");
    }
    for sample in [
        "statusd_events_dead_lettered_total{reason=\"permanent\"} 0",
        "statusd_events_dead_lettered_total{reason=\"max_age\"} 0",
        "statusd_token_refreshes_total{outcome=\"failure\",datacenter=\"127.0.0.1:",
        "statusd_accounts{state=\"failing\"} 0",
        "statusd_reconcile_runs_total{reconciler=\"branding\",outcome=\"error\"} 0",
        "statusd_reconcile_duration_seconds_count{reconciler=\"tenants\"} 0",
        "statusd_reconcile_last_success_timestamp_seconds{reconciler=\"status\"} 0",
    ] {
        assert!(exposed.contains(sample), "{sample} missing:\n{exposed}");
    }
}
