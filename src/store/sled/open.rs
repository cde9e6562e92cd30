//! Opening a store: its private directory, sled (whose panics on damage become `Damaged`), the
//! layout's migration, and the counters checked against the control file.

use super::*;

/// The store's directory, readable by statusd alone: it holds the events and, later,
/// credentials.
pub(super) fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| StoreError::Write(format!("cannot create {}: {e}", path.display())))
}

fn damaged(path: &Path, reason: String) -> StoreError {
    StoreError::Damaged {
        path: path.display().to_string(),
        reason,
    }
}

/// sled, opened; it panics on some damage, which is a damaged store, not a crash of statusd.
pub(super) fn open_sled_checked(
    path: &Path,
    options: &StoreOptions,
) -> Result<(::sled::Db, ::sled::Tree), StoreError> {
    open_sled_mode(path, options, ::sled::Mode::HighThroughput)
}

/// The same, in a given mode (a copy is written in `LowSpace`).
pub(super) fn open_sled_mode(
    path: &Path,
    options: &StoreOptions,
    mode: ::sled::Mode,
) -> Result<(::sled::Db, ::sled::Tree), StoreError> {
    let config = ::sled::Config::new()
        .path(path)
        .cache_capacity(options.cache_capacity_mb.saturating_mul(1024 * 1024))
        .mode(mode);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open_sled(&config, path))).map_err(
        |panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            damaged(path, format!("sled failed while opening it: {what}"))
        },
    )?
}

/// Open sled at `path`. sled's own background flusher releases the directory lock shortly after
/// the last handle is dropped; a reopen in the same process waits for it (briefly) rather than
/// failing. Another process holding the store still fails after the wait. Whether the lock is
/// held is asked of the lock itself (sled's `flock` on its `db` file), not read from an error's
/// text.
pub(super) fn open_sled(
    config: &::sled::Config,
    path: &Path,
) -> Result<(::sled::Db, ::sled::Tree), StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while lock_held(&path.join("db")) {
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::Locked {
                path: path.display().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let db = config.open()?;
    let tree = db.open_tree("statusd")?;
    Ok((db, tree))
}

/// Whether a process (this one included) holds the exclusive `flock` sled takes on `file`.
fn lock_held(file: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::OpenOptions::new().read(true).open(file) else {
        // No file yet: a new store, which nothing holds.
        return false;
    };
    let fd = f.as_raw_fd();
    // SAFETY: flock on a descriptor this function owns; the lock taken is released at once
    // (and in any case with the descriptor when `f` is dropped).
    let got = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if got {
        // SAFETY: as above.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
    }
    !got
}

/// Each account's pending and dead events: as kept, after a clean close of a store that keeps
/// them; else recounted from the events (once: after an unclean stop, an import, or a store
/// written before they were kept) and written back.
fn account_counts(tree: &::sled::Tree, trusted: bool) -> Result<AccountCounts, StoreError> {
    let mut counts = AccountCounts::default();
    if trusted && tree.get(meta_key(ACCOUNT_COUNTS_MARK))?.is_some() {
        for item in tree.scan_prefix([b'k']) {
            let (k, v) = item?;
            counts.set(&String::from_utf8_lossy(&k[1..]), account_count_from(&v)?);
        }
        return Ok(counts);
    }
    let record = |id: &Uuid| -> Result<Option<EventRecord>, StoreError> {
        tree.get(event_key(id))?.map(|v| from_json(&v)).transpose()
    };
    for item in tree.scan_prefix([b'p']) {
        let (_, v) = item?;
        if let Some(rec) = record(&uuid_from(&v)?)? {
            counts.count(rec.account.as_deref(), true);
        }
    }
    for k in tree.scan_prefix([b'd']).keys() {
        if let Some(rec) = record(&uuid_from(&k?[1..])?)? {
            counts.count(rec.account.as_deref(), false);
        }
    }
    let mut b = ::sled::Batch::default();
    for k in tree.scan_prefix([b'k']).keys() {
        b.remove(k?);
    }
    for (account, n) in counts.iter() {
        b.insert(account_count_key(account), account_count_value(n));
    }
    b.insert(meta_key(ACCOUNT_COUNTS_MARK), b"1".to_vec());
    tree.apply_batch(b)?;
    Ok(counts)
}

pub(super) fn read_u64(tree: &::sled::Tree, name: &str) -> Result<Option<u64>, StoreError> {
    tree.get(meta_key(name))?.map(|v| u64_from(&v)).transpose()
}

/// The layout version found (None: a new store), older layouts migrated, newer refused.
pub(super) fn migrate_schema(
    db: &::sled::Db,
    tree: &::sled::Tree,
    path: &Path,
) -> Result<Option<u64>, StoreError> {
    let schema = read_u64(tree, "schema")?;
    match schema {
        Some(found) if found > SCHEMA_VERSION => {
            return Err(StoreError::SchemaTooNew {
                path: path.display().to_string(),
                found,
            })
        }
        Some(found) if found < SCHEMA_VERSION => {
            migrate_to_2(tree)?;
            tree.insert(meta_key("schema"), &SCHEMA_VERSION.to_be_bytes())?;
            db.flush()?;
            tracing::info!(
                message = "store migrated",
                from = found,
                to = SCHEMA_VERSION
            );
        }
        _ => {}
    }
    Ok(schema)
}

/// The counters and the store's identity, checked against the control file (and, after an
/// unclean stop, against a recount). A damaged store is refused unless accepted; accepted, the
/// counters are repaired from what is left.
pub(super) fn read_checked_counters(
    tree: &::sled::Tree,
    path: &Path,
    control: Option<&control::Control>,
    schema: Option<u64>,
    options: &StoreOptions,
) -> Result<(Counters, Uuid), StoreError> {
    // After a clean close the counters are trusted; after anything else, recounted.
    let recount = match control {
        Some(c) if c.clean => None,
        _ => Some((
            tree.scan_prefix([b'p']).count() as u64,
            tree.scan_prefix([b'd']).count() as u64,
        )),
    };
    let mut counters = Counters {
        heads: read_heads(tree)?,
        seq: read_u64(tree, "seq")?.unwrap_or(0),
        depth: read_u64(tree, "depth")?.unwrap_or(0),
        dead: read_u64(tree, "dead")?.unwrap_or(0),
        accounts: account_counts(tree, recount.is_none())?,
    };
    let stored_id = tree
        .get(meta_key("store_id"))?
        .map(|v| uuid_from(&v))
        .transpose()?;
    let findings = control::check(control, stored_id, schema.is_some(), &counters, recount);
    if !findings.problems.is_empty() {
        let reason = findings.problems.join("; ");
        if !options.accept_damaged {
            return Err(damaged(path, reason));
        }
        tracing::error!(
            message = "store damaged; starting on what is left, as asked",
            path = %path.display(),
            what_is_missing = %reason
        );
        if let Some((depth, dead)) = recount {
            counters.depth = depth;
            counters.dead = dead;
        }
        counters.seq = counters.seq.max(control.map_or(0, |c| c.durable_seq));
        tree.insert(meta_key("seq"), &counters.seq.to_be_bytes())?;
        tree.insert(meta_key("depth"), &counters.depth.to_be_bytes())?;
        tree.insert(meta_key("dead"), &counters.dead.to_be_bytes())?;
    }
    let store_id = stored_id
        .or(control.map(|c| c.store_id))
        .unwrap_or_else(Uuid::new_v4);
    if stored_id != Some(store_id) {
        tree.insert(meta_key("store_id"), store_id.as_bytes().as_slice())?;
    }
    Ok((counters, store_id))
}

/// sled's log file, kept open to make each flush durable.
///
/// sled 0.34 writes its log with `sync_file_range` and never calls `fsync` while it runs. That
/// call neither records the file's metadata (its length, as the log grows) nor flushes the
/// drive's write cache, so an event acknowledged after `Db::flush` alone could still be lost to
/// a power cut. `fdatasync` on the log file after the flush does both.
pub(super) struct LogFile(std::fs::File);

impl LogFile {
    pub(super) fn open(path: &Path) -> Result<LogFile, StoreError> {
        let file = path.join("db");
        std::fs::File::open(&file)
            .map(LogFile)
            .map_err(|e| StoreError::Write(format!("cannot open {}: {e}", file.display())))
    }

    /// Flush sled, then make what it wrote durable.
    pub(super) fn flush(&self, db: &::sled::Db) -> Result<(), StoreError> {
        db.flush()?;
        self.sync()
    }

    /// Make what sled has flushed so far durable.
    pub(super) fn sync(&self) -> Result<(), StoreError> {
        self.0
            .sync_data()
            .map_err(|e| StoreError::Flush(format!("cannot sync the store's log: {e}")))
    }
}
