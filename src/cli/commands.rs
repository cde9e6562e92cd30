//! The operator commands that talk to a running daemon through its local API.

use std::process::ExitCode;

use reqwest::Method;

use super::args::{ApiArgs, DeadLetterCommand, EventArgs, ReconcileArgs, StatusArgs};
use super::client::{CallError, LocalApi};
use super::table::{cell, clip, print_json, print_reconcile, print_status, print_table};
use crate::api::answers::{
    Accepted, AccountsList, DeadLetters, EventView, Retried, Status, Tenants,
};
use crate::config::Settings;
use crate::event::IncomingEvent;
use crate::exit;
use crate::reconcile::{Outcome, Report};
use crate::store::EventKind;

/// Print why a call failed; 69 when the daemon did not answer, else 1.
fn fail(e: CallError) -> ExitCode {
    match e {
        CallError::Unreachable(m) => {
            eprintln!("statusd: {m}");
            ExitCode::from(exit::UNAVAILABLE)
        }
        CallError::Refused(status, m) => {
            eprintln!("statusd: refused (HTTP {status}): {m}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

pub async fn healthcheck(settings: Settings, api: &ApiArgs) -> ExitCode {
    let api = LocalApi::new(api, &settings);
    match api
        .call::<serde_json::Value>(Method::GET, "/livez", None)
        .await
    {
        Ok(_) => ExitCode::from(exit::OK),
        Err(CallError::Unreachable(m)) | Err(CallError::Refused(_, m)) => {
            eprintln!("statusd healthcheck: {m}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

pub async fn send_event(settings: Settings, a: &EventArgs, kind: EventKind) -> ExitCode {
    let ev = IncomingEvent {
        tenant_id: a.tenant_id.clone(),
        kind,
        category: a.category.clone(),
        action: a.action.clone(),
        idempotency_key: a.idempotency_key.clone(),
        occurred_at: a.occurred_at.clone(),
        account: a.account.clone(),
    };
    let body = serde_json::to_value(ev).expect("an event serializes");
    let api = LocalApi::new(&a.api, &settings);
    match api
        .call::<Accepted>(Method::POST, "/v1/events", Some(body))
        .await
    {
        Ok((_, answer)) => {
            let dup = if answer.duplicate {
                " (repeated idempotency key; nothing new stored)"
            } else {
                ""
            };
            let status = serde_json::to_value(answer.status).unwrap_or_default();
            println!("{} {}{dup}", answer.id, status.as_str().unwrap_or("-"));
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(e),
    }
}

pub async fn status(settings: Settings, args: &StatusArgs) -> ExitCode {
    let api = LocalApi::new(&args.api, &settings);
    match api.call::<Status>(Method::GET, "/v1/status", None).await {
        Ok((_, v)) if args.json => {
            print_json(&v);
            ExitCode::from(exit::OK)
        }
        Ok((_, v)) => {
            print_status(&v);
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(e),
    }
}

/// A listing: GET `path`; with `--json` the answer as is, else a table of `rows` and a count.
async fn listing<T>(
    settings: Settings,
    args: &StatusArgs,
    path: &str,
    headers: &[&str],
    rows: impl Fn(&T) -> Vec<Vec<String>>,
    noun: &str,
) -> ExitCode
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let api = LocalApi::new(&args.api, &settings);
    let v = match api.call::<T>(Method::GET, path, None).await {
        Ok((_, v)) => v,
        Err(e) => return fail(e),
    };
    if args.json {
        print_json(&v);
        return ExitCode::from(exit::OK);
    }
    let rows = rows(&v);
    print_table(headers, &rows);
    println!("{} {noun}", rows.len());
    ExitCode::from(exit::OK)
}

pub async fn tenants(settings: Settings, args: &StatusArgs) -> ExitCode {
    let rows = |v: &Tenants| {
        v.items
            .iter()
            .map(|t| {
                vec![
                    t.id.to_string(),
                    cell(t.kind.as_deref()),
                    cell(t.name.as_deref()),
                    cell(t.enabled),
                    t.deleted.to_string(),
                    t.version.to_string(),
                ]
            })
            .collect()
    };
    let headers = ["TENANT", "KIND", "NAME", "ENABLED", "DELETED", "VERSION"];
    listing(settings, args, "/v1/tenants", &headers, rows, "tenant(s)").await
}

pub async fn accounts(settings: Settings, args: &StatusArgs) -> ExitCode {
    let rows = |v: &AccountsList| {
        v.items
            .iter()
            .map(|a| {
                let token = match &a.token_error {
                    Some(f) => format!("failing: {}", clip(&f.error, 60)),
                    None => a.token.clone(),
                };
                vec![
                    a.id.clone(),
                    a.datacenter.clone(),
                    token,
                    a.pending_events.to_string(),
                    a.dead_letters.to_string(),
                    a.tenants_known.to_string(),
                ]
            })
            .collect()
    };
    let headers = [
        "ACCOUNT",
        "DATA CENTER",
        "TOKEN",
        "PENDING",
        "DEAD",
        "TENANTS",
    ];
    listing(settings, args, "/v1/accounts", &headers, rows, "account(s)").await
}

pub async fn dead_letters(settings: Settings, cmd: &DeadLetterCommand) -> ExitCode {
    let result = match cmd {
        DeadLetterCommand::List(a) => {
            let api = LocalApi::new(&a.api, &settings);
            api.call::<DeadLetters>(Method::GET, "/v1/dead-letters?limit=1000", None)
                .await
                .map(|(_, v)| {
                    if a.json {
                        print_json(&v);
                    } else {
                        print_dead_letters(&v);
                    }
                })
        }
        DeadLetterCommand::Show { id, api } => LocalApi::new(api, &settings)
            .call::<EventView>(Method::GET, &format!("/v1/dead-letters/{id}"), None)
            .await
            .map(|(_, v)| print_json(&v)),
        DeadLetterCommand::Retry {
            id: Some(id), api, ..
        } => LocalApi::new(api, &settings)
            .call::<Accepted>(Method::POST, &format!("/v1/dead-letters/{id}/retry"), None)
            .await
            .map(|(_, v)| print_json(&v)),
        DeadLetterCommand::Retry { id: None, api, .. } => LocalApi::new(api, &settings)
            .call::<Retried>(Method::POST, "/v1/dead-letters/retry-all", None)
            .await
            .map(|(_, v)| print_json(&v)),
        DeadLetterCommand::Purge { id, api } => LocalApi::new(api, &settings)
            .call::<serde_json::Value>(Method::DELETE, &format!("/v1/dead-letters/{id}"), None)
            .await
            .map(|_| println!("{id} purged")),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => fail(e),
    }
}

fn print_dead_letters(v: &DeadLetters) {
    let rows: Vec<Vec<String>> = v
        .items
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.tenant_id.to_string(),
                e.kind.as_str().to_string(),
                e.attempts.to_string(),
                clip(e.dead_reason.as_deref().unwrap_or("-"), 80),
            ]
        })
        .collect();
    print_table(&["ID", "TENANT", "TYPE", "ATTEMPTS", "REASON"], &rows);
    println!("{} dead letter(s)", v.total);
}

pub async fn reconcile(settings: Settings, r: &ReconcileArgs) -> ExitCode {
    let api = LocalApi::new(&r.api, &settings);
    let mut path = format!(
        "/v1/reconcile/{}?dry_run={}",
        r.reconciler.kind().as_str(),
        r.dry_run
    );
    if let Some(id) = &r.account {
        path.push_str(&format!("&account={id}"));
    }
    match api.call::<Report>(Method::POST, &path, None).await {
        Ok((_, report)) => {
            if r.json {
                print_json(&report);
            } else {
                print_reconcile(&report);
            }
            reconcile_exit(&report, r.dry_run)
        }
        Err(e @ CallError::Unreachable(_)) => fail(e),
        Err(e) => {
            fail(e);
            ExitCode::from(exit::ERROR)
        }
    }
}

/// 0 no drift or applied, 1 drift found in a dry run, 2 error.
pub fn reconcile_exit(report: &Report, dry_run: bool) -> ExitCode {
    if report.outcome == Outcome::Error || !report.errors.is_empty() {
        return ExitCode::from(exit::ERROR);
    }
    if dry_run && !report.drift.is_empty() {
        return ExitCode::from(exit::FAILURE);
    }
    ExitCode::from(exit::OK)
}
