//! The control file: a small record beside sled and outside it (as PostgreSQL keeps
//! `pg_control`) of the store's identity, its layout and the highest sequence known durable.
//!
//! sled recovers a damaged log to its last consistent prefix without a word, so a store that
//! lost acknowledged events would otherwise open as if nothing were missing. At open the store
//! is checked against this file; a store that opens empty, a highest sequence below the file's,
//! counters that disagree with a recount, another store's identity, or a panic inside sled make
//! it `Damaged`, and statusd refuses to start on it unless told to.
//!
//! The counters are recounted (a scan of every pending and dead-letter key) only when the last
//! stop was not a clean close: after a crash, when damage is likely, and not on every start of a
//! large store.
//!
//! The trade-off: the file is rewritten (write, fsync, rename, fsync of the directory) by the
//! writer thread at most once per [`CONTROL_INTERVAL`] and at every clean close, not after every
//! group, so it costs intake one small fsync a second. Damage that loses only the events
//! acknowledged in the last interval before the file was last written goes unseen by the
//! sequence check (the counters check may still see it).

use std::io::Write;

use super::*;

pub(super) const CONTROL_FILE: &str = "statusd.control";

/// How often the writer thread records the highest durable sequence, at most.
pub(super) const CONTROL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Control {
    pub(super) store_id: Uuid,
    pub(super) layout: u64,
    /// Every event with a sequence up to this one was durable when the file was written.
    pub(super) durable_seq: u64,
    /// Written by a clean close: the counters were flushed with everything they count. After
    /// anything else (a crash, a kill) they are checked against a recount at the next open.
    #[serde(default)]
    pub(super) clean: bool,
    pub(super) written_at: String,
}

impl Control {
    pub(super) fn new(store_id: Uuid, durable_seq: u64, clean: bool) -> Control {
        Control {
            store_id,
            layout: SCHEMA_VERSION,
            durable_seq,
            clean,
            written_at: chrono::Utc::now().to_rfc3339(),
        }
    }
}

/// The control file of the store at `dir`, if it has one. One that cannot be read is damage.
pub(super) fn read(dir: &Path) -> Result<Option<Control>, StoreError> {
    let path = dir.join(CONTROL_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Damaged {
                path: dir.display().to_string(),
                reason: format!("its control file {} cannot be read: {e}", path.display()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Damaged {
            path: dir.display().to_string(),
            reason: format!("its control file {} cannot be read: {e}", path.display()),
        }),
    }
}

/// Replace the control file atomically: a crash leaves the old one or the new one.
pub(super) fn write(dir: &Path, control: &Control) -> std::io::Result<()> {
    let tmp = dir.join(format!("{CONTROL_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(control).expect("control serializes"))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(CONTROL_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// What the checks at open found wrong, if anything.
pub(super) struct Findings {
    pub(super) problems: Vec<String>,
}

/// Check an opened store against its control file and its own counters.
pub(super) fn check(
    control: Option<&Control>,
    store_id: Option<Uuid>,
    schema_present: bool,
    counters: &Counters,
    recount: Option<(u64, u64)>,
) -> Findings {
    let mut problems = Vec::new();
    if let Some(c) = control {
        if !schema_present {
            problems.push(format!(
                "it held a store (control file of {}, sequence {}) but opens empty",
                c.written_at, c.durable_seq
            ));
        } else {
            if store_id.is_some_and(|id| id != c.store_id) {
                problems.push(format!(
                    "its control file belongs to another store ({}, this one is {})",
                    c.store_id,
                    store_id.map(|i| i.to_string()).unwrap_or_default()
                ));
            }
            if counters.seq < c.durable_seq {
                problems.push(format!(
                    "its highest sequence is {} but {} was durable on {}: acknowledged events are missing",
                    counters.seq, c.durable_seq, c.written_at
                ));
            }
        }
    }
    if let Some((depth, dead)) = recount {
        if counters.depth != depth {
            problems.push(format!(
                "its pending counter says {} but {depth} events are pending",
                counters.depth
            ));
        }
        if counters.dead != dead {
            problems.push(format!(
                "its dead-letter counter says {} but {dead} are stored",
                counters.dead
            ));
        }
    }
    Findings { problems }
}
