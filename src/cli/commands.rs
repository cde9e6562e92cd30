//! The operator commands that talk to a running daemon through its local API.

use std::process::ExitCode;

use reqwest::Method;

use super::args::{
    AccountCommand, AccountsArgs, ApiArgs, DeadLetterCommand, EventArgs, FusionCommand,
    ReconcileArgs, SecretSource, StatusArgs,
};
use super::client::{CallError, LocalApi};
use super::table::{cell, clip, print_json, print_reconcile, print_status, print_table};
use crate::api::answers::{
    Accepted, AccountChanged, AccountRemoved, AccountsList, DeadLetters, EventView, Retried,
    Status, Tenants,
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
        retire_account: a.retire_account,
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

pub async fn accounts(settings: Settings, args: &AccountsArgs) -> ExitCode {
    match &args.command {
        None => list_accounts(settings, &args.list).await,
        Some(AccountCommand::List(a)) => list_accounts(settings, a).await,
        Some(AccountCommand::Show { id, api }) => {
            let api = LocalApi::new(api, &settings);
            match api
                .call::<serde_json::Value>(Method::GET, &format!("/v1/accounts/{id}"), None)
                .await
            {
                Ok((_, v)) => {
                    print_json(&v);
                    ExitCode::from(exit::OK)
                }
                Err(e) => fail(e),
            }
        }
        Some(AccountCommand::Add {
            datacenter_url,
            client_id,
            secret,
            id,
            credentials,
            root_tenant_id,
            activate,
            api,
        }) => {
            let client_secret = match read_client_secret(secret) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let mut body = serde_json::json!({
                "datacenter_url": datacenter_url,
                "client_id": client_id,
                "client_secret": client_secret.expose(),
            });
            for (k, v) in [
                ("id", id),
                ("credentials", credentials),
                ("root_tenant_id", root_tenant_id),
            ] {
                if let Some(v) = v {
                    body[k] = serde_json::json!(v);
                }
            }
            let path = match activate {
                Some(t) => format!("/v1/accounts?activate={t}"),
                None => "/v1/accounts".to_string(),
            };
            account_change(&settings, api, Method::POST, &path, body, "added").await
        }
        Some(AccountCommand::Rotate {
            id,
            client_id,
            secret,
            api,
        }) => {
            let client_secret = match read_client_secret(secret) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let mut body = serde_json::json!({"client_secret": client_secret.expose()});
            if let Some(c) = client_id {
                body["client_id"] = serde_json::json!(c);
            }
            let path = format!("/v1/accounts/{id}/credentials");
            account_change(
                &settings,
                api,
                Method::PUT,
                &path,
                body,
                "credentials replaced",
            )
            .await
        }
        Some(AccountCommand::Remove { id, force, api }) => {
            remove_account(&settings, id, *force, api).await
        }
    }
}

/// `statusd accounts remove`: what the daemon dropped with the account.
async fn remove_account(settings: &Settings, id: &str, force: bool, api: &ApiArgs) -> ExitCode {
    let api = LocalApi::new(api, settings);
    let path = format!(
        "/v1/accounts/{id}{}",
        if force { "?force=true" } else { "" }
    );
    match api
        .call::<AccountRemoved>(Method::DELETE, &path, None)
        .await
    {
        Ok((_, r)) => {
            println!(
                "account {} removed (dropped: {} pending event(s), {} dead letter(s), {} tenant state(s), {} inventory record(s))",
                r.id,
                r.dropped.pending_events,
                r.dropped.dead_letters,
                r.dropped.tenant_states,
                r.dropped.inventory
            );
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(e),
    }
}

/// The client secret from its file, else one line of standard input.
fn read_client_secret(source: &SecretSource) -> Result<crate::config::Secret, ExitCode> {
    let text = match &source.client_secret_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            eprintln!("statusd: --client-secret-file {}: {e}", path.display());
            ExitCode::from(exit::FAILURE)
        })?,
        None => {
            use std::io::IsTerminal;
            if std::io::stdin().is_terminal() {
                eprint!("client secret (not echoed to the log; end with Enter): ");
            }
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| {
                eprintln!("statusd: cannot read the client secret from standard input: {e}");
                ExitCode::from(exit::FAILURE)
            })?;
            line
        }
    };
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.trim().is_empty() {
        eprintln!("statusd: the client secret is empty (give it with --client-secret-file PATH or on standard input)");
        return Err(ExitCode::from(exit::FAILURE));
    }
    Ok(crate::config::Secret::new(secret))
}

async fn account_change(
    settings: &Settings,
    api: &ApiArgs,
    method: Method,
    path: &str,
    body: serde_json::Value,
    done: &str,
) -> ExitCode {
    let api = LocalApi::new(api, settings);
    match api.call::<AccountChanged>(method, path, Some(body)).await {
        Ok((_, a)) => {
            println!(
                "account {} {done}: data center {}, tenant {} ({})",
                a.account.id,
                a.account.datacenter,
                cell(a.account.tenant_id),
                a.account
                    .tenant_name
                    .as_deref()
                    .unwrap_or("name not readable")
            );
            if let Some(act) = a.activation {
                println!("activation queued: event {}", act.id);
            }
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(e),
    }
}

async fn list_accounts(settings: Settings, args: &StatusArgs) -> ExitCode {
    let rows = |v: &AccountsList| {
        v.items
            .iter()
            .map(|a| {
                let token = match &a.token_error {
                    Some(f) => format!("failing: {}", clip(&f.error, 60)),
                    None => a.token.clone(),
                };
                let source = if a.retiring {
                    format!("{} (retiring)", a.source)
                } else {
                    a.source.clone()
                };
                vec![
                    a.id.clone(),
                    source,
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
        "SOURCE",
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

pub async fn fusion(settings: Settings, cmd: &FusionCommand) -> ExitCode {
    let FusionCommand::Login { code, api } = cmd;
    let api = LocalApi::new(api, &settings);
    let login = |code: Option<String>| {
        let body = match code {
            Some(c) => serde_json::json!({ "code": c }),
            None => serde_json::json!({}),
        };
        api.call::<serde_json::Value>(Method::POST, "/v1/fusion/login", Some(body))
    };
    let mut answer = login(code.clone()).await;
    if let Ok((_, v)) = &answer {
        if v["state"] == "code_required" && code.is_none() {
            use std::io::IsTerminal;
            if !std::io::stdin().is_terminal() {
                eprintln!("statusd: Fusion asks for the code it sent to the user: run `statusd fusion login --code CODE`");
                return ExitCode::from(exit::FAILURE);
            }
            eprint!("Fusion sent a code to the user; enter it: ");
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() || line.trim().is_empty() {
                eprintln!("statusd: no code given");
                return ExitCode::from(exit::FAILURE);
            }
            answer = login(Some(line.trim().to_string())).await;
        }
    }
    match answer {
        Ok((_, v)) if v["state"] == "logged_in" => {
            println!("logged in to Fusion; the session is kept by the daemon");
            ExitCode::from(exit::OK)
        }
        Ok((_, v)) => {
            eprintln!(
                "statusd: Fusion asks for a code: run `statusd fusion login --code CODE` ({})",
                v["message"].as_str().unwrap_or("")
            );
            ExitCode::from(exit::FAILURE)
        }
        Err(e) => fail(e),
    }
}
