//! A damaged record on the PostgreSQL store, through the real binary: a column of another type
//! than the store reads, and an event of a kind this build does not know, answer 500
//! `store_damaged` (never a panic, never a 503 that invites a retry), are counted in
//! `statusd_store_errors_total{kind="damaged"}`, and the daemon goes on serving.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::{json, Value};

/// The damaged-errors count `/metrics` shows.
async fn damaged(pool: &Pool, port: u16) -> u64 {
    let text = get_text(&pool.http, &format!("http://127.0.0.1:{port}/metrics")).await;
    text.lines()
        .find(|l| l.starts_with("statusd_store_errors_total{kind=\"damaged\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_row_answers_500_store_damaged_and_is_counted() {
    let Some(pool) = Pool::start("damaged", 1).await else {
        return;
    };
    let port = pool.ports()[0];
    let tenant = customers(&pool.sb, 1)[0];
    let r = pool
        .http
        .post(format!("http://127.0.0.1:{port}/v1/events"))
        .json(&json!({"tenant_id": tenant, "account": "a00", "type": "activation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let event_url = format!("http://127.0.0.1:{port}/v1/events/{id}");
    let tenant_url = format!("http://127.0.0.1:{port}/v1/tenants/{tenant}");
    wait_for_async(Duration::from_secs(20), "the report", || async {
        get_json(&pool.http, &event_url).await["status"] == "delivered"
    })
    .await;
    assert_eq!(
        pool.http.get(&tenant_url).send().await.unwrap().status(),
        200
    );
    assert_eq!(damaged(&pool, port).await, 0);

    // Whoever can change the schema or write the table: a column of another type, an event
    // kind no build knows.
    pool.server.psql(&format!(
        "ALTER TABLE damaged.tenants ALTER COLUMN intended_at_ms TYPE text USING intended_at_ms::text;
         UPDATE damaged.events SET kind = 'no-such-kind' WHERE id = '{id}';"
    ));
    for (url, what) in [
        (&tenant_url, "intended_at_ms"),
        (&event_url, "no-such-kind"),
    ] {
        let r = pool.http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 500, "{url}");
        assert!(r.headers().get("retry-after").is_none());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "store_damaged", "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(what),
            "{body}"
        );
    }
    assert!(damaged(&pool, port).await >= 2);
    // Still serving.
    let live = pool
        .http
        .get(format!("http://127.0.0.1:{port}/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
}
