//! `statusd store verify|compact|export|import`: operations on a store that no daemon holds.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::args::StoreCommand;
use crate::config::Settings;
use crate::exit;
use crate::store::{Moved, Offline, StoreError};

/// A progress line drawn in place on a terminal (nothing when stderr is not one).
struct Bar {
    what: &'static str,
    on: bool,
    last: std::time::Instant,
}

impl Bar {
    fn new(what: &'static str) -> Bar {
        Bar {
            what,
            on: std::io::stderr().is_terminal(),
            last: std::time::Instant::now(),
        }
    }

    fn step(&mut self, done: u64, total: u64) {
        if !self.on || (self.last.elapsed().as_millis() < 100 && done < total) {
            return;
        }
        self.last = std::time::Instant::now();
        let line = if let Some(pct) = (done.min(total) * 100).checked_div(total) {
            let pct = pct as usize;
            format!(
                "{} [{}{}] {pct:>3}% {done}/{total}",
                self.what,
                "#".repeat(pct / 4),
                " ".repeat(25 - pct / 4)
            )
        } else {
            format!("{} {done}", self.what)
        };
        eprint!("\r\x1b[2K{line}");
    }

    fn done(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
        }
    }
}

fn refused(path: &Path, e: StoreError) -> ExitCode {
    refused_at(&path.display().to_string(), e)
}

fn refused_at(location: &str, e: StoreError) -> ExitCode {
    match e {
        StoreError::Locked { .. } => eprintln!(
            "statusd: the store at {location} is in use by a running statusd: stop it first (store commands work on a store no daemon holds)"
        ),
        other => eprintln!("statusd: {location}: {other}"),
    }
    ExitCode::from(exit::FAILURE)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub fn run(settings: Settings, cmd: &StoreCommand) -> ExitCode {
    use crate::store::chosen;
    let path = settings.store.path.clone();
    let location = settings.store.location();
    match cmd {
        StoreCommand::Rekey => return rekey(&settings),
        StoreCommand::Migrate => return migrate(&settings),
        StoreCommand::Export { out } => {
            return export(&location, out.as_deref(), |w, bar| {
                chosen::export(&settings, w, |d, t| bar.step(d, t))
            })
        }
        StoreCommand::Import { file } => {
            return import(&location, file, |r, bar| {
                chosen::import(&settings, r, |d, t| bar.step(d, t))
            })
        }
        StoreCommand::Verify { .. } | StoreCommand::Compact if !chosen::is_local(&settings) => {
            eprintln!("statusd: store verify and store compact are for the sled backend: PostgreSQL keeps its own indexes consistent, and autovacuum returns the space of deleted rows");
            return ExitCode::from(exit::FAILURE);
        }
        _ => {}
    }
    match cmd {
        StoreCommand::Verify { repair, json } => verify(&settings, &path, *repair, *json),
        StoreCommand::Compact => {
            if let Err(e) = crate::store::check_room_to_compact(&path) {
                return refused(&path, e);
            }
            let store = match Offline::open(&path) {
                Ok(s) => s,
                Err(e) => return refused(&path, e),
            };
            let mut bar = Bar::new("copying");
            match store.compact(|d, t| bar.step(d, t)) {
                Ok(c) => {
                    bar.done();
                    println!(
                        "compacted {}: {} keys copied in {} ms; {} before, {} after",
                        path.display(),
                        c.keys,
                        c.took_ms,
                        mb(c.bytes_before),
                        mb(c.bytes_after)
                    );
                    ExitCode::from(exit::OK)
                }
                Err(e) => {
                    bar.done();
                    refused(&path, e)
                }
            }
        }
        StoreCommand::Export { .. }
        | StoreCommand::Import { .. }
        | StoreCommand::Migrate
        | StoreCommand::Rekey => unreachable!("answered above"),
    }
}

/// `statusd store rekey`: every sealed value opened (current or previous key) and sealed again
/// under the current key, bound to its record.
fn rekey(settings: &Settings) -> ExitCode {
    let Some(key) = settings.store.secret_key.clone() else {
        eprintln!("statusd: store.secret_key_file is not set: set it to the new key (and store.previous_secret_key_file to the key being replaced), then run statusd store rekey");
        return ExitCode::from(exit::CONFIG);
    };
    let location = settings.store.location();
    let done = tokio::runtime::Handle::current().block_on(async {
        let queue = crate::app::open_store(settings)
            .await
            .map_err(|e| e.to_string())?;
        let stored = queue.stored_accounts().await.map_err(|e| e.to_string())?;
        let (mut sealed, mut already, mut failed) = (0usize, 0usize, Vec::new());
        let total = stored.len();
        for (n, s) in stored.into_iter().enumerate() {
            let id = s.id.clone();
            match crate::accounts::reseal(&queue, &key, s, |o| o.stale)
                .await
                .map_err(|e| e.to_string())?
            {
                crate::accounts::Reseal::Sealed(_) => sealed += 1,
                crate::accounts::Reseal::Already => already += 1,
                crate::accounts::Reseal::Unopened(e) => failed.push(format!("account {id}: {e}")),
            }
            if (n + 1) % 100 == 0 {
                eprintln!("  {} of {total} account(s) checked", n + 1);
            }
        }
        match crate::reconcile::reseal_session(&queue, settings, &key).await {
            Ok(Some(true)) => sealed += 1,
            Ok(Some(false)) => already += 1,
            Ok(None) => {}
            Err(e) => failed.push(e.to_string()),
        }
        queue.sync().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((sealed, already, failed))
    });
    match done {
        Ok((sealed, already, failed)) => {
            println!(
                "{location}: {sealed} value(s) sealed again under key {}, {already} already under it",
                key.id()
            );
            if failed.is_empty() {
                if key.has_previous() {
                    println!("every value opens with the current key: store.previous_secret_key_file can now be removed (on every replica)");
                }
                ExitCode::from(exit::OK)
            } else {
                for f in &failed {
                    eprintln!("statusd: not sealed again: {f}");
                }
                ExitCode::from(exit::FAILURE)
            }
        }
        Err(e) => {
            eprintln!("statusd: {location}: {e}");
            ExitCode::from(2)
        }
    }
}

/// `statusd store migrate`: apply the schema migrations this build has, and nothing else.
fn migrate(settings: &Settings) -> ExitCode {
    match tokio::runtime::Handle::current().block_on(crate::store::chosen::migrate(settings)) {
        Ok(None) => {
            println!("store.backend is sled: nothing to migrate (a sled store is migrated when it is opened)");
            ExitCode::from(exit::OK)
        }
        Ok(Some(m)) if m.applied.is_empty() => {
            println!(
                "{}: schema at version {}, nothing to apply",
                settings.store.location(),
                m.to
            );
            ExitCode::from(exit::OK)
        }
        Ok(Some(m)) => {
            for (v, what) in &m.applied {
                println!("applied migration {v}: {what}");
            }
            println!(
                "{}: schema migrated from version {} to {}",
                settings.store.location(),
                m.from,
                m.to
            );
            ExitCode::from(exit::OK)
        }
        Err(e @ StoreError::PgSchemaTooNew { .. }) => {
            eprintln!("statusd: {e}");
            ExitCode::from(exit::CONFIG)
        }
        Err(e) => {
            eprintln!("statusd: {}: {e}", settings.store.location());
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn verify(settings: &Settings, path: &Path, repair: bool, json: bool) -> ExitCode {
    let store = match Offline::open(path) {
        Ok(s) => s,
        Err(e @ StoreError::Locked { .. }) => return refused(path, e),
        Err(e) => {
            eprintln!("statusd: cannot open the store at {}: {e}", path.display());
            return ExitCode::from(exit::ERROR);
        }
    };
    let v = match store.verify(settings.store.secret_key.as_ref(), repair) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("statusd: cannot read the store at {}: {e}", path.display());
            return ExitCode::from(exit::ERROR);
        }
    };
    // After a repair, what is left is checked again.
    let after = if repair && !v.repaired.is_empty() {
        match store.verify(settings.store.secret_key.as_ref(), false) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("statusd: cannot read the store at {}: {e}", path.display());
                return ExitCode::from(exit::ERROR);
            }
        }
    } else {
        None
    };
    if json {
        let doc = serde_json::json!({"found": v, "after_repair": after});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!("store {}", path.display());
        for c in &v.checks {
            let verdict = if c.problems.is_empty() {
                "ok"
            } else {
                "PROBLEMS"
            };
            println!("  {:<28} {:>10} checked  {verdict}", c.name, c.checked);
            for p in &c.problems {
                println!("      - {p}");
            }
        }
        for u in &v.unrepairable {
            println!("  NOT REPAIRABLE: {u}");
        }
        for r in &v.repaired {
            println!("  repaired: {r}");
        }
    }
    let final_state = after.as_ref().unwrap_or(&v);
    if final_state.sound() {
        if !json {
            println!("sound");
        }
        ExitCode::from(exit::OK)
    } else {
        if !json {
            println!(
                "problems found{}",
                if repair {
                    ""
                } else {
                    " (statusd store verify --repair rebuilds indexes and counters from the records)"
                }
            );
        }
        ExitCode::from(exit::FAILURE)
    }
}

fn export(
    location: &str,
    out: Option<&Path>,
    mut store: impl FnMut(&mut dyn std::io::Write, &mut Bar) -> Result<Moved, StoreError>,
) -> ExitCode {
    let started = std::time::Instant::now();
    let mut bar = Bar::new("exporting");
    let result = match out {
        Some(file) => {
            // Written beside its place and renamed, so a failed export leaves no half file.
            let tmp = file.with_extension("partial");
            // It holds sealed secrets and tenant data: readable by its owner alone.
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let _ = std::fs::remove_file(&tmp);
            let f = match options.open(&tmp) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("statusd: cannot create {}: {e}", tmp.display());
                    return ExitCode::from(exit::FAILURE);
                }
            };
            let mut w = std::io::BufWriter::new(f);
            let r = store(&mut w, &mut bar);
            let r = r.and_then(|m| {
                let f = w
                    .into_inner()
                    .map_err(|e| StoreError::Write(e.to_string()))?;
                f.sync_all().map_err(|e| StoreError::Write(e.to_string()))?;
                std::fs::rename(&tmp, file).map_err(|e| StoreError::Write(e.to_string()))?;
                Ok(m)
            });
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            store(&mut w, &mut bar)
        }
    };
    bar.done();
    match result {
        Ok(m) => {
            eprintln!(
                "exported {} events ({} pending, {} dead) in {} lines, {} ms",
                m.events,
                m.pending,
                m.dead,
                m.lines,
                started.elapsed().as_millis()
            );
            ExitCode::from(exit::OK)
        }
        Err(e) => refused_at(location, e),
    }
}

fn import(
    location: &str,
    file: &PathBuf,
    store: impl FnOnce(&mut dyn std::io::BufRead, &mut Bar) -> Result<Moved, StoreError>,
) -> ExitCode {
    let started = std::time::Instant::now();
    let input = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("statusd: cannot open {}: {e}", file.display());
            return ExitCode::from(exit::FAILURE);
        }
    };
    let mut reader = std::io::BufReader::new(input);
    let mut bar = Bar::new("importing");
    let result = store(&mut reader, &mut bar);
    bar.done();
    match result {
        Ok(m) => {
            println!(
                "imported {} events ({} pending, {} dead) from {} into {} in {} ms",
                m.events,
                m.pending,
                m.dead,
                file.display(),
                location,
                started.elapsed().as_millis()
            );
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!(
                "statusd: import of {} refused, nothing was written: {e}",
                file.display()
            );
            ExitCode::from(exit::FAILURE)
        }
    }
}
