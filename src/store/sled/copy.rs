//! Copies of a whole store: `statusd store compact` (a fresh copy swapped in with renames, so
//! the space sled holds is returned), and `export` / `import` (the whole state as JSON lines).
//!
//! Compaction is crash-safe: the copy is made in `<store>.compact-tmp`, a `COMPLETE` marker is
//! written (and synced) once it is whole, then `<store>` is renamed to `<store>.compact-old`
//! and the copy to `<store>`. Whatever point a kill stops it at, the next open
//! ([`finish_interrupted`]) either finishes the swap (the copy was whole) or removes the copy
//! (the original is untouched).

use std::io::{BufRead, Write};

use super::*;
use crate::store::export::{Line, LineReader, LineWriter};

const MARKER: &str = "COMPLETE";

/// `<store>.<suffix>` beside the store.
pub(super) fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Write(format!("{what} {}: {e}", path.display()))
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

/// A test hook: `STATUSD_FAILPOINT=<name>` makes the process stop dead at that point, as a
/// kill would.
fn failpoint(name: &str) {
    if std::env::var("STATUSD_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: stopping here");
        std::process::abort();
    }
}

/// Finish or undo a compaction or import that was stopped half-way.
pub fn finish_interrupted(path: &Path) -> Result<(), StoreError> {
    let tmp = sibling(path, "compact-tmp");
    let old = sibling(path, "compact-old");
    let complete = tmp.join(MARKER).exists();
    if !path.exists() && complete {
        // Stopped between the two renames: the copy is whole, put it in place.
        std::fs::rename(&tmp, path).map_err(|e| io("cannot rename", &tmp, e))?;
        sync_dir(path)?;
        tracing::warn!(message = "finished a compaction that was interrupted", path = %path.display());
    }
    if path.join(MARKER).exists() {
        std::fs::remove_file(path.join(MARKER)).map_err(|e| io("cannot remove", path, e))?;
    }
    if tmp.exists() {
        // A copy that was not swapped in (whole or not): the store in place is the original.
        std::fs::remove_dir_all(&tmp).map_err(|e| io("cannot remove", &tmp, e))?;
    }
    if old.exists() && path.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io("cannot remove", &old, e))?;
    }
    if !path.exists() && old.exists() {
        // Only the original is left (the copy never became whole): put it back.
        std::fs::rename(&old, path).map_err(|e| io("cannot rename", &old, e))?;
        sync_dir(path)?;
    }
    let import = sibling(path, "import-tmp");
    if import.exists() {
        std::fs::remove_dir_all(&import).map_err(|e| io("cannot remove", &import, e))?;
    }
    Ok(())
}

/// Bytes of the files under `path`.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes free for this process in the file system of `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a statvfs the call fills in.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (rc == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

/// The least free space a compaction starts with: below it, sled may not even open the store.
const MIN_FREE_TO_COMPACT: u64 = 16 << 20;

/// Refuse a compaction before the store is opened when its file system is nearly full (sled
/// writes while it opens a store, and a copy needs room of its own).
pub fn check_room_to_compact(path: &Path) -> Result<(), StoreError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match free_space(parent) {
        Some(free) if free < MIN_FREE_TO_COMPACT => Err(StoreError::Write(format!(
            "not enough free space to compact: {} MB are free in {}; the copy needs at least {} MB and up to the store's size ({} MB now). The store is unchanged",
            free >> 20,
            parent.display(),
            MIN_FREE_TO_COMPACT >> 20,
            dir_size(path) >> 20
        ))),
        _ => Ok(()),
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Compacted {
    pub keys: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub took_ms: u64,
}

/// Keys copied per batch: small batches in sled's low-space mode make the smallest copy (large
/// ones leave a copy bigger than its original).
const COPY_CHUNK: usize = 64;
/// Lines imported per batch (an import writes in the export's order, not in key order, so
/// small batches gain it nothing).
const IMPORT_CHUNK: usize = 1000;

impl Offline {
    /// Live bytes: the keys and values the store holds.
    fn live(&self) -> Result<(u64, u64), StoreError> {
        let mut keys = 0;
        let mut bytes = 0;
        for item in self.tree.iter() {
            let (k, v) = item?;
            keys += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        Ok((keys, bytes))
    }

    /// Copy the live data into a fresh store beside this one and swap it in.
    pub fn compact(self, mut progress: impl Progress) -> Result<Compacted, StoreError> {
        let started = std::time::Instant::now();
        let path = self.path.clone();
        let before = dir_size(&path);
        let (total, live) = self.live()?;
        // sled writes each page at least once more than its data, and keeps some segments
        // free: ask for twice the live bytes and a margin.
        let needed = live.saturating_mul(2) + (16 << 20);
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Some(free) = free_space(parent) {
            if free < needed {
                return Err(StoreError::Write(format!(
                    "not enough free space to compact: the copy needs about {} MB in {}, {} MB are free (the store is unchanged)",
                    needed >> 20,
                    parent.display(),
                    free >> 20
                )));
            }
        }
        let tmp = sibling(&path, "compact-tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io("cannot remove", &tmp, e))?;
        }
        create_private_dir(&tmp)?;
        {
            let (db, tree) =
                open_sled_mode(&tmp, &StoreOptions::default(), ::sled::Mode::LowSpace)?;
            let mut done = 0u64;
            let mut batch = ::sled::Batch::default();
            let mut in_batch = 0;
            for item in self.tree.iter() {
                let (k, v) = item?;
                batch.insert(k, v);
                in_batch += 1;
                done += 1;
                if in_batch == COPY_CHUNK {
                    tree.apply_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                    progress.step(done, total);
                }
            }
            tree.apply_batch(batch)?;
            progress.step(done, total);
            LogFile::open(&tmp)?.flush(&db)?;
            failpoint("compact-copied");
        }
        // The control file goes with the data (identity, durable sequence, clean close).
        let control = path.join(control::CONTROL_FILE);
        if control.exists() {
            std::fs::copy(&control, tmp.join(control::CONTROL_FILE))
                .map_err(|e| io("cannot copy", &control, e))?;
        }
        let marker = tmp.join(MARKER);
        std::fs::File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("cannot write", &marker, e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("cannot sync", &tmp, e))?;
        failpoint("compact-marked");
        let Offline { db, tree, .. } = self;
        drop(tree);
        drop(db);
        let old = sibling(&path, "compact-old");
        std::fs::rename(&path, &old).map_err(|e| io("cannot rename", &path, e))?;
        sync_dir(&path)?;
        failpoint("compact-half-swapped");
        std::fs::rename(&tmp, &path).map_err(|e| io("cannot rename", &tmp, e))?;
        sync_dir(&path)?;
        failpoint("compact-swapped");
        std::fs::remove_file(path.join(MARKER)).map_err(|e| io("cannot remove", &path, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| io("cannot remove", &old, e))?;
        Ok(Compacted {
            keys: total,
            bytes_before: before,
            bytes_after: dir_size(&path),
            took_ms: started.elapsed().as_millis() as u64,
        })
    }
}

// Export and import --------------------------------------------------------------------------

/// Metadata names that are not documents: recomputed on import.
const COUNTER_NAMES: [&str; 6] = [
    "schema",
    "seq",
    "depth",
    "dead",
    "store_id",
    ACCOUNT_COUNTS_MARK,
];

impl Offline {
    /// Write the whole state as JSON lines.
    pub fn export(
        &self,
        out: &mut dyn Write,
        mut progress: impl Progress,
    ) -> Result<Moved, StoreError> {
        let t = &self.tree;
        let store_id = t
            .get(meta_key("store_id"))?
            .map(|v| uuid_from(&v))
            .transpose()?
            .unwrap_or_else(Uuid::new_v4);
        let mut w = LineWriter::start(out, store_id, SCHEMA_VERSION)?;
        self.export_events(&mut w, &mut progress)?;
        self.export_rest(&mut w)?;
        w.finish()
    }

    /// Every event: those pending first, in queue order (by tenant and seq), then the rest by id.
    fn export_events(
        &self,
        w: &mut LineWriter<'_>,
        progress: &mut impl Progress,
    ) -> Result<(), StoreError> {
        let t = &self.tree;
        let total = t.scan_prefix([b'e']).count() as u64;
        let mut done: HashSet<Uuid> = HashSet::new();
        for item in t.scan_prefix([b'p']) {
            let (_, v) = item?;
            let id = uuid_from(&v)?;
            if let Some(record) = self.record(&id)? {
                done.insert(id);
                w.event(Line::Event {
                    record,
                    pending: true,
                    dead: false,
                    delivered_at_ms: None,
                    delivered_attempts: None,
                })?;
            }
        }
        for item in t.scan_prefix([b'e']) {
            let (k, v) = item?;
            let id = uuid_from(&k[1..])?;
            if done.contains(&id) {
                continue;
            }
            let record: EventRecord = from_json(&v)?;
            let dead = t.get(dead_key(&id))?.is_some();
            let (at, attempts) = match t.get(delivered_marker_key(&id))? {
                Some(m) if m.len() == 12 => (
                    Some(i64::from_be_bytes(m[..8].try_into().expect("8 bytes"))),
                    Some(u32::from_be_bytes(m[8..].try_into().expect("4 bytes"))),
                ),
                _ => (None, None),
            };
            w.event(Line::Event {
                record,
                pending: false,
                dead,
                delivered_at_ms: at,
                delivered_attempts: attempts,
            })?;
            if w.events() % 10_000 == 0 {
                progress.step(w.events(), total);
            }
        }
        progress.step(w.events(), total);
        Ok(())
    }

    /// Idempotency keys, tenant states, inventory, accounts and documents.
    fn export_rest(&self, w: &mut LineWriter<'_>) -> Result<(), StoreError> {
        let t = &self.tree;
        for item in t.scan_prefix([b'i']) {
            let (k, v) = item?;
            let accepted_at_ms = v
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_be_bytes)
                .unwrap_or(0);
            w.line(&Line::Idempotency {
                key: String::from_utf8_lossy(&k[1..]).into_owned(),
                event: idem_target(&v)?,
                accepted_at_ms,
            })?;
        }
        for item in t.scan_prefix([b't']) {
            w.line(&Line::Tenant {
                state: from_json(&item?.1)?,
            })?;
        }
        for item in t.scan_prefix([b'n']) {
            w.line(&Line::Inventory {
                tenant: from_json(&item?.1)?,
            })?;
        }
        for item in t.scan_prefix([b'a']) {
            w.line(&Line::Account {
                account: from_json(&item?.1)?,
            })?;
        }
        for item in t.scan_prefix([b'm']) {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            if COUNTER_NAMES.contains(&name.as_str()) {
                continue;
            }
            if let Ok(value) = serde_json::from_slice(&v) {
                w.line(&Line::Document { name, value })?;
            }
        }
        Ok(())
    }

    fn record(&self, id: &Uuid) -> Result<Option<EventRecord>, StoreError> {
        self.tree
            .get(event_key(id))?
            .map(|v| from_json(&v))
            .transpose()
    }
}

/// Import an export into a new store at `path` (which must not hold one): built beside it in
/// `<store>.import-tmp`, then renamed into place, so a failed import leaves nothing behind.
pub fn import(
    path: &Path,
    input: &mut dyn BufRead,
    mut progress: impl Progress,
) -> Result<Moved, StoreError> {
    finish_interrupted(path)?;
    if path.exists()
        && std::fs::read_dir(path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(StoreError::Write(format!(
            "{} is not empty: import only into a new store (move the old one away first)",
            path.display()
        )));
    }
    let tmp = sibling(path, "import-tmp");
    let result = import_into(&tmp, input, &mut progress);
    match result {
        Ok(moved) => {
            if path.exists() {
                std::fs::remove_dir(path).map_err(|e| io("cannot replace", path, e))?;
            }
            std::fs::rename(&tmp, path).map_err(|e| io("cannot rename", &tmp, e))?;
            sync_dir(path)?;
            Ok(moved)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn import_into(
    tmp: &Path,
    input: &mut dyn BufRead,
    progress: &mut dyn Progress,
) -> Result<Moved, StoreError> {
    create_private_dir(tmp)?;
    let (db, tree) = open_sled_checked(tmp, &StoreOptions::default())?;
    let mut moved = Moved::default();
    let mut seq = 0u64;
    let mut batch = ::sled::Batch::default();
    let mut in_batch = 0usize;
    let mut reader = LineReader::new(input);
    while let Some(line) = reader.next_line()? {
        match line {
            Line::Event {
                record,
                pending,
                dead,
                delivered_at_ms,
                delivered_attempts,
            } => {
                let id = record.id;
                seq = seq.max(record.seq);
                if pending {
                    batch.insert(
                        pending_key(&record.tenant_id, record.seq),
                        id.as_bytes().as_slice(),
                    );
                    moved.pending += 1;
                }
                if dead {
                    batch.insert(dead_key(&id), &[]);
                    moved.dead += 1;
                }
                if let Some(at) = delivered_at_ms {
                    batch.insert(
                        delivered_marker_key(&id),
                        delivered_marker(at, delivered_attempts.unwrap_or(1)),
                    );
                    batch.insert(delivered_key(at, &id), &[]);
                }
                batch.insert(event_key(&id), to_json(&record));
                moved.events += 1;
            }
            Line::Idempotency {
                key,
                event,
                accepted_at_ms,
            } => {
                let mut v = event.as_bytes().to_vec();
                v.extend_from_slice(&accepted_at_ms.to_be_bytes());
                batch.insert(idem_key(&key), v);
                batch.insert(idem_expiry_key(accepted_at_ms, &key), &[]);
            }
            Line::Tenant { state } => batch.insert(tenant_key(&state.tenant_id), to_json(&state)),
            Line::Inventory { tenant } => batch.insert(inventory_key(&tenant.id), to_json(&tenant)),
            Line::Account { account } => {
                batch.insert(super::accounts::account_key(&account.id), to_json(&account))
            }
            Line::Document { name, value } => batch.insert(meta_key(&name), to_json(&value)),
            // Checked and kept by the reader.
            Line::Header { .. } | Line::End { .. } => {}
        }
        in_batch += 1;
        if in_batch >= IMPORT_CHUNK {
            tree.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
            progress.step(moved.events, 0);
        }
    }
    moved.lines = reader.lines;
    let store_id = reader.store_id.expect("a header was read");
    batch.insert(meta_key("schema"), &SCHEMA_VERSION.to_be_bytes());
    batch.insert(meta_key("seq"), &seq.to_be_bytes());
    batch.insert(meta_key("depth"), &moved.pending.to_be_bytes());
    batch.insert(meta_key("dead"), &moved.dead.to_be_bytes());
    batch.insert(meta_key("store_id"), store_id.as_bytes().as_slice());
    tree.apply_batch(batch)?;
    progress.step(moved.events, moved.events);
    LogFile::open(tmp)?.flush(&db)?;
    drop(tree);
    drop(db);
    control::write(tmp, &control::Control::new(store_id, seq, true))
        .map_err(|e| io("cannot write the control file of", tmp, e))?;
    Ok(moved)
}
