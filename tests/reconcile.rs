//! Reconcilers against the sandbox: inventory over many pages, deltas, removed tenants per
//! policy, branding dry-run / apply / no drift, conflicts, customers skipped, logo once, cron.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use statusd::reconcile::{Kind, ListMode};
use statusd::sandbox::{Fault, SandboxOptions, TenantChange};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_inventory_full_then_delta_and_removed_tenants_are_deactivated() {
    let h = harness(
        SandboxOptions {
            tenants: 3000,
            page_limit: 200,
            ..Default::default()
        },
        &[],
    )
    .await;
    let r = &h.running().reconcilers;
    let full = r.run_now(Kind::Tenants, false).await.unwrap();
    assert_eq!(full.outcome, "success", "{:?}", full.errors);
    assert_eq!(full.details.mode, Some(ListMode::Full));
    assert_eq!(full.details.fetched, Some(3001));
    assert!(full.details.pages.unwrap() >= 15);
    assert_eq!(h.running().queue.inventory_len().await.unwrap(), 3001);
    // An active tenant gets disabled on the platform.
    let t = h.sandbox.tenant_ids(Some("customer"))[3];
    assert_eq!(
        h.post_events(json!({"tenant_id": t, "type": "activation"}))
            .await
            .status(),
        202
    );
    h.drained(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.sandbox.mutate_tenant(
        t,
        TenantChange {
            enabled: Some(false),
            ..Default::default()
        },
    );
    let dry = r.run_now(Kind::Tenants, true).await.unwrap();
    assert_eq!(dry.details.mode, Some(ListMode::Delta));
    assert_eq!(dry.drift.len(), 1);
    assert_eq!(dry.drift[0].tenant_id, t);
    let delta = r.run_now(Kind::Tenants, false).await.unwrap();
    assert_eq!(
        delta.details.fetched,
        Some(1),
        "only what changed is fetched"
    );
    h.drained(Duration::from_secs(10)).await;
    let last = h
        .sandbox
        .reports()
        .into_iter()
        .rfind(|r| r.tenant_id == t)
        .unwrap();
    assert_eq!(last.body["events"][0]["deactivation_event"], true);
    // Now intended inactive: no more drift.
    let again = r.run_now(Kind::Tenants, true).await.unwrap();
    assert!(again.drift.is_empty(), "{:?}", again.drift);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_removed_report_only_reports() {
    let h = harness(
        SandboxOptions::default(),
        &[("STATUSD__RECONCILE__TENANTS__ON_REMOVED", "report")],
    )
    .await;
    let r = &h.running().reconcilers;
    r.run_now(Kind::Tenants, false).await.unwrap();
    let t = h.sandbox.tenant_ids(Some("customer"))[0];
    h.post_events(json!({"tenant_id": t, "type": "activation"}))
        .await;
    h.drained(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.sandbox.mutate_tenant(
        t,
        TenantChange {
            deleted: Some(true),
            ..Default::default()
        },
    );
    let report = r.run_now(Kind::Tenants, false).await.unwrap();
    assert_eq!(report.drift.len(), 1);
    assert_eq!(report.drift[0].field, "deleted");
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(h.running().queue.stats().depth, 0, "nothing enqueued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reconcile_reasserts_each_tenant_once() {
    let h = harness(SandboxOptions::default(), &[]).await;
    let ts = h.sandbox.tenant_ids(Some("customer"));
    h.post_events(json!([{"tenant_id": ts[0], "type": "activation"}, {"tenant_id": ts[1], "type": "deactivation"}])).await;
    h.drained(Duration::from_secs(10)).await;
    let before = h.sandbox.reports().len();
    let report = h
        .running()
        .reconcilers
        .run_now(Kind::Status, false)
        .await
        .unwrap();
    assert_eq!(report.details.tenants, Some(2));
    h.drained(Duration::from_secs(10)).await;
    let reports = h.sandbox.reports();
    assert_eq!(reports.len(), before + 2, "one report per tenant");
    let r1 = reports.iter().rev().find(|r| r.tenant_id == ts[1]).unwrap();
    assert_eq!(r1.body["events"][0]["deactivation_event"], true);
    // Dated as the decision it repeats, not as the run: a newer decision accepted meanwhile
    // stays the newer one.
    let first = reports[..before]
        .iter()
        .rfind(|r| r.tenant_id == ts[1])
        .unwrap();
    assert!(first.body["deactivated_at"].is_string());
    assert_eq!(r1.body["deactivated_at"], first.body["deactivated_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branding_dry_run_apply_then_no_drift_with_conflicts_customers_and_logo() {
    let dir = tempfile::tempdir().unwrap();
    let logo = dir.path().join("logo.png");
    std::fs::write(&logo, b"\x89PNG\r\n\x1a\nlogo-v1").unwrap();
    let customer_holder = statusd::sandbox::Sandbox::start(SandboxOptions::default())
        .await
        .unwrap();
    let customer = customer_holder.tenant_ids(Some("customer"))[0];
    drop(customer_holder);
    let targets = format!("partners,{customer}");
    let h = harness(
        SandboxOptions::default(),
        &[
            ("STATUSD__RECONCILE__BRANDING__TARGETS", targets.as_str()),
            ("STATUSD__BRANDING__COMPANY_NAME", "Demo Cloud"),
            ("STATUSD__BRANDING__COLOR", "1A6FB0"),
            (
                "STATUSD__BRANDING__UPSELL_URL",
                "https://shop.example.com/buy",
            ),
            ("STATUSD__BRANDING__WHITE_LABELED_AGENT", "true"),
            ("STATUSD__BRANDING__LOGO_FILE", logo.to_str().unwrap()),
        ],
    )
    .await;
    let r = &h.running().reconcilers;
    let partners = h.sandbox.tenant_ids(Some("partner"));
    let dry = r.run_now(Kind::Branding, true).await.unwrap();
    assert!(!dry.drift.is_empty());
    assert!(
        h.sandbox.brand(partners[0]).is_none(),
        "a dry run changes nothing"
    );
    assert!(
        dry.skipped
            .iter()
            .any(|s| s.tenant_id == customer && s.message.contains("customer")),
        "{:?}",
        dry.skipped
    );
    // Conflicts on the first brand writes converge.
    h.sandbox.inject(Fault {
        status: Some(409),
        count: Some(3),
        path_contains: Some("/brand".into()),
        ..Default::default()
    });
    let apply = r.run_now(Kind::Branding, false).await.unwrap();
    assert_eq!(apply.outcome, "success", "{:?}", apply.errors);
    for p in &partners {
        let b = h.sandbox.brand(*p).unwrap();
        assert_eq!(b["company_name"], "Demo Cloud");
        assert_eq!(b["upsell_url"], "https://shop.example.com/buy");
        assert_eq!(b["white_labeled_agent"], true);
        assert_eq!(b["color_scheme"], "default", "unmanaged fields untouched");
        assert_eq!(h.sandbox.logo(*p).unwrap(), b"\x89PNG\r\n\x1a\nlogo-v1");
    }
    let after = r.run_now(Kind::Branding, true).await.unwrap();
    assert!(after.drift.is_empty(), "{:?}", after.drift);
    let logo_posts = h.sandbox.requests_to("brand_logo");
    r.run_now(Kind::Branding, false).await.unwrap();
    assert_eq!(
        h.sandbox.requests_to("brand_logo"),
        logo_posts,
        "logo not uploaded again"
    );
    std::fs::write(&logo, b"\x89PNG\r\n\x1a\nlogo-v2").unwrap();
    r.run_now(Kind::Branding, false).await.unwrap();
    assert_eq!(
        h.sandbox.logo(partners[0]).unwrap(),
        b"\x89PNG\r\n\x1a\nlogo-v2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_schedules_fire_and_never_overlap() {
    let sb = statusd::sandbox::Sandbox::start(SandboxOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Each tenant listing takes 1.5 s, longer than the 1 s schedule.
    sb.inject(Fault {
        delay_ms: Some(1500),
        path_contains: Some("/api/2/tenants".into()),
        ..Default::default()
    });
    let running = start_scheduled(
        &sb,
        dir.path(),
        &[
            ("STATUSD__RECONCILE__TENANTS__SCHEDULE", "* * * * * *"),
            ("STATUSD__RECONCILE__STATUS__SCHEDULE", "0 0 0 1 1 *"),
        ],
    )
    .await;
    wait_for(Duration::from_secs(15), "two scheduled tenant runs", || {
        sb.requests_to("tenants_list") >= 2
    })
    .await;
    assert!(
        sb.stats().max_in_flight <= 1,
        "a reconciler ran twice at once"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brand_writes_wait_before_each_retry_after_a_conflict() {
    let holder = statusd::sandbox::Sandbox::start(SandboxOptions::default())
        .await
        .unwrap();
    let partner = holder.tenant_ids(Some("partner"))[0];
    drop(holder);
    let target = partner.to_string();
    let h = harness(
        SandboxOptions::default(),
        &[
            ("STATUSD__RECONCILE__BRANDING__TARGETS", target.as_str()),
            ("STATUSD__BRANDING__COMPANY_NAME", "Demo Cloud"),
        ],
    )
    .await;
    h.sandbox.inject(Fault {
        status: Some(409),
        count: Some(3),
        path_contains: Some("/brand".into()),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let apply = h
        .running()
        .reconcilers
        .run_now(Kind::Branding, false)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(apply.outcome, "success", "{:?}", apply.errors);
    assert_eq!(
        h.sandbox.brand(partner).unwrap()["company_name"],
        "Demo Cloud"
    );
    let floor = statusd::reconcile::CONFLICT_BACKOFF.floor();
    assert!(
        took >= floor * 3,
        "three conflicts retried in {took:?}, less than three waits of at least {floor:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_run_shown_in_the_status_moves_on_as_runs_go_by() {
    let sb = statusd::sandbox::Sandbox::start(SandboxOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = start_scheduled(
        &sb,
        dir.path(),
        &[("STATUSD__RECONCILE__TENANTS__SCHEDULE", "* * * * * *")],
    )
    .await;
    let next_run = |status: &std::collections::BTreeMap<String, statusd::reconcile::LastRun>| {
        let text = status["tenants"]
            .next_run_at
            .clone()
            .unwrap_or_else(|| panic!("no next run in {status:?}"));
        chrono::DateTime::parse_from_rfc3339(&text).unwrap()
    };
    let first = next_run(&running.reconcilers.status().await);
    wait_for(
        Duration::from_secs(10),
        "the first next run to pass",
        || chrono::Utc::now() > first,
    )
    .await;
    let second = next_run(&running.reconcilers.status().await);
    assert!(
        second > first,
        "next run still {second} after {first} passed"
    );
    assert!(second > chrono::Utc::now() - chrono::Duration::seconds(1));
    running.shutdown().await;
}
