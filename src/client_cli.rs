//! Operator commands that talk to a running daemon through its local API.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::cli::{ApiArgs, Command, DeadLetterCommand, EventArgs, ReconcilerName};
use crate::config::Settings;
use crate::event::IncomingEvent;
use crate::exit;
use crate::store::EventKind;

/// The local API of a running daemon.
pub struct LocalApi {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

pub enum CallError {
    /// The daemon did not answer (exit 69).
    Unreachable(String),
    /// It answered with an error (status, message).
    Refused(u16, String),
}

impl LocalApi {
    pub fn new(api: &ApiArgs, settings: &Settings) -> LocalApi {
        let base = api.api.clone().unwrap_or_else(|| {
            let mut addr = settings.api.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        });
        let token = std::env::var("STATUSD_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| settings.api.token.as_ref().map(|t| t.expose().to_string()));
        crate::platform::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            .timeout(Duration::from_secs(130))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("HTTP client builds");
        LocalApi {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), CallError> {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.map_err(|e| {
            CallError::Unreachable(format!(
                "statusd is not reachable at {}: {}",
                self.base,
                root_cause(&e)
            ))
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status >= 400 {
            let msg = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"));
            let field = value.pointer("/error/field").and_then(Value::as_str);
            let msg = match field {
                Some(f) => format!("{f}: {msg}"),
                None => msg,
            };
            return Err(CallError::Refused(status, msg));
        }
        Ok((status, value))
    }
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

fn fail(e: CallError, not_found_is_1: bool) -> ExitCode {
    match e {
        CallError::Unreachable(m) => {
            eprintln!("statusd: {m}");
            ExitCode::from(exit::UNAVAILABLE)
        }
        CallError::Refused(status, m) => {
            eprintln!("statusd: refused (HTTP {status}): {m}");
            if status == 404 && !not_found_is_1 {
                ExitCode::from(exit::ERROR)
            } else {
                ExitCode::from(exit::FAILURE)
            }
        }
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn run(cmd: &Command, settings: &Settings) -> ExitCode {
    use reqwest::Method;
    match cmd {
        Command::Healthcheck(api) => {
            let api = LocalApi::new(api, settings);
            match api.call(Method::GET, "/livez", None).await {
                Ok(_) => ExitCode::from(exit::OK),
                Err(CallError::Unreachable(m)) | Err(CallError::Refused(_, m)) => {
                    eprintln!("statusd healthcheck: {m}");
                    ExitCode::from(exit::FAILURE)
                }
            }
        }
        Command::Activate(a) => send_event(settings, a, EventKind::Activation).await,
        Command::Deactivate(a) => send_event(settings, a, EventKind::Deactivation).await,
        Command::Status(args) => {
            let api = LocalApi::new(&args.api, settings);
            match api.call(Method::GET, "/v1/status", None).await {
                Ok((_, v)) => {
                    if args.json {
                        print_json(&v);
                    } else {
                        print_status(&v);
                    }
                    ExitCode::from(exit::OK)
                }
                Err(e) => fail(e, true),
            }
        }
        Command::Tenants(args) => {
            let api = LocalApi::new(&args.api, settings);
            match api.call(Method::GET, "/v1/tenants", None).await {
                Ok((_, v)) => {
                    if args.json {
                        print_json(&v);
                    } else {
                        let rows: Vec<Vec<String>> = v["items"]
                            .as_array()
                            .map(|items| {
                                items
                                    .iter()
                                    .map(|t| {
                                        vec![
                                            s(&t["id"]),
                                            s(&t["kind"]),
                                            s(&t["name"]),
                                            s(&t["enabled"]),
                                            s(&t["deleted"]),
                                            s(&t["version"]),
                                        ]
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        print_table(
                            &["TENANT", "KIND", "NAME", "ENABLED", "DELETED", "VERSION"],
                            &rows,
                        );
                        println!("{} tenant(s)", rows.len());
                    }
                    ExitCode::from(exit::OK)
                }
                Err(e) => fail(e, true),
            }
        }
        Command::DeadLetters(dl) => dead_letters(settings, dl).await,
        Command::Reconcile(r) => {
            let api = LocalApi::new(&r.api, settings);
            let name = match r.reconciler {
                ReconcilerName::Tenants => "tenants",
                ReconcilerName::Status => "status",
                ReconcilerName::Branding => "branding",
            };
            let path = format!("/v1/reconcile/{name}?dry_run={}", r.dry_run);
            match api.call(Method::POST, &path, None).await {
                Ok((_, v)) => {
                    if r.json {
                        print_json(&v);
                    } else {
                        print_reconcile(&v);
                    }
                    reconcile_exit(&v, r.dry_run)
                }
                Err(e) => {
                    let code = fail(e, true);
                    if code == ExitCode::from(exit::UNAVAILABLE) {
                        code
                    } else {
                        ExitCode::from(exit::ERROR)
                    }
                }
            }
        }
        _ => {
            eprintln!("statusd: this command does not talk to the daemon");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// 0 no drift or applied, 1 drift found in a dry run, 2 error.
pub fn reconcile_exit(report: &Value, dry_run: bool) -> ExitCode {
    if report["outcome"] == "error" || report["errors"].as_array().is_some_and(|e| !e.is_empty()) {
        return ExitCode::from(exit::ERROR);
    }
    if dry_run && report["drift"].as_array().is_some_and(|d| !d.is_empty()) {
        return ExitCode::from(exit::FAILURE);
    }
    ExitCode::from(exit::OK)
}

async fn send_event(settings: &Settings, a: &EventArgs, kind: EventKind) -> ExitCode {
    let ev = IncomingEvent {
        tenant_id: a.tenant_id.clone(),
        kind,
        category: a.category.clone(),
        action: a.action.clone(),
        idempotency_key: a.idempotency_key.clone(),
    };
    let ev = serde_json::to_value(ev).expect("an event serializes");
    let api = LocalApi::new(&a.api, settings);
    match api
        .call(reqwest::Method::POST, "/v1/events", Some(ev))
        .await
    {
        Ok((status, v)) => {
            let dup = if status == 200 {
                " (repeated idempotency key; nothing new stored)"
            } else {
                ""
            };
            println!("{} {}{dup}", s(&v["id"]), s(&v["status"]));
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(e, true),
    }
}

async fn dead_letters(settings: &Settings, cmd: &DeadLetterCommand) -> ExitCode {
    use reqwest::Method;
    let (api, method, path, json_out) = match cmd {
        DeadLetterCommand::List(a) => (
            &a.api,
            Method::GET,
            "/v1/dead-letters?limit=1000".to_string(),
            a.json,
        ),
        DeadLetterCommand::Show { id, api } => {
            (api, Method::GET, format!("/v1/dead-letters/{id}"), true)
        }
        DeadLetterCommand::Retry {
            id: Some(id), api, ..
        } => (
            api,
            Method::POST,
            format!("/v1/dead-letters/{id}/retry"),
            true,
        ),
        DeadLetterCommand::Retry { id: None, api, .. } => (
            api,
            Method::POST,
            "/v1/dead-letters/retry-all".to_string(),
            true,
        ),
        DeadLetterCommand::Purge { id, api } => {
            (api, Method::DELETE, format!("/v1/dead-letters/{id}"), false)
        }
    };
    let client = LocalApi::new(api, settings);
    match client.call(method, &path, None).await {
        Ok((_, v)) => {
            match cmd {
                DeadLetterCommand::List(_) if !json_out => {
                    let rows: Vec<Vec<String>> = v["items"]
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .map(|e| {
                                    vec![
                                        s(&e["id"]),
                                        s(&e["tenant_id"]),
                                        s(&e["type"]),
                                        s(&e["attempts"]),
                                        clip(&s(&e["dead_reason"]), 80),
                                    ]
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    print_table(&["ID", "TENANT", "TYPE", "ATTEMPTS", "REASON"], &rows);
                    println!("{} dead letter(s)", s(&v["total"]));
                }
                DeadLetterCommand::Purge { id, .. } => println!("{id} purged"),
                _ => print_json(&v),
            }
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(e, true),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n).collect::<String>())
    } else {
        s.to_string()
    }
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

fn print_status(v: &Value) {
    let q = &v["queue"];
    println!(
        "statusd {}  accepting: {}",
        s(&v["version"]),
        s(&v["accepting"])
    );
    println!(
        "queue      depth {}  in flight {}  oldest pending {}  dead letters {}",
        s(&q["depth"]),
        s(&q["in_flight"]),
        q["oldest_pending_age_seconds"]
            .as_f64()
            .map(|a| format!("{a:.1}s"))
            .unwrap_or_else(|| "-".into()),
        s(&q["dead_letters"])
    );
    println!(
        "platform   {}  reachable: {}",
        s(&v["platform"]["base_url"]),
        s(&v["platform"]["reachable"])
    );
    if let Some(d) = v["delivery"].as_object() {
        println!(
            "delivery   lanes running {}  lanes in backoff {}  platform backoff until {}",
            s(&d["lanes_running"]),
            s(&d["lanes_waiting_backoff"]),
            d["platform_backoff_until_ms"]
                .as_i64()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "-".into())
        );
    }
    let mut rows = Vec::new();
    if let Some(r) = v["reconcilers"].as_object() {
        for (name, st) in r {
            rows.push(vec![
                name.clone(),
                s(&st["last_run_at"]),
                s(&st["outcome"]),
                s(&st["drift_items"]),
                s(&st["next_run_at"]),
            ]);
        }
    }
    println!();
    print_table(
        &["RECONCILER", "LAST RUN", "OUTCOME", "DRIFT", "NEXT RUN"],
        &rows,
    );
    let unknown = &v["unknown_tenants"]["count"];
    if unknown.as_u64().is_some_and(|n| n > 0) {
        println!(
            "\n{} tenant(s) with events are not in the tenant inventory",
            s(unknown)
        );
    }
}

pub fn print_reconcile(v: &Value) {
    println!(
        "{} reconcile{}: {} in {} ms",
        s(&v["reconciler"]),
        if v["dry_run"] == true {
            " (dry run)"
        } else {
            ""
        },
        s(&v["outcome"]),
        s(&v["duration_ms"])
    );
    let drift: Vec<Vec<String>> = v["drift"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|i| {
                    vec![
                        s(&i["tenant_id"]),
                        s(&i["field"]),
                        clip(&s(&i["platform"]), 40),
                        clip(&s(&i["intended"]), 40),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if drift.is_empty() {
        println!("no drift");
    } else {
        print_table(&["TENANT", "FIELD", "PLATFORM", "INTENDED"], &drift);
    }
    for a in v["actions"].as_array().into_iter().flatten() {
        println!("action: {}", s(a));
    }
    for k in v["skipped"].as_array().into_iter().flatten() {
        println!("skipped {}: {}", s(&k["tenant_id"]), s(&k["message"]));
    }
    for e in v["errors"].as_array().into_iter().flatten() {
        println!("error {}: {}", s(&e["tenant_id"]), s(&e["message"]));
    }
}
