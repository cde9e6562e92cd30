//! The export format both backends write and read: JSON lines, a header first and an end line
//! counting the lines before it (so a cut-off file is refused).

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::*;

/// How a long copy shows its progress.
pub trait Progress {
    fn step(&mut self, done: u64, total: u64);
}

impl<F: FnMut(u64, u64)> Progress for F {
    fn step(&mut self, done: u64, total: u64) {
        self(done, total)
    }
}

/// The format's name and version, on the first line of an export.
pub const EXPORT_FORMAT: &str = "statusd-store";
pub const EXPORT_VERSION: u64 = 1;

/// One line of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    Header {
        format: String,
        version: u64,
        store_id: Uuid,
        layout: u64,
        exported_at: String,
    },
    /// An event in any state: its record, where it waits (pending), whether it is dead, and
    /// when it was delivered.
    Event {
        record: EventRecord,
        #[serde(default)]
        pending: bool,
        #[serde(default)]
        dead: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivered_at_ms: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivered_attempts: Option<u32>,
    },
    Idempotency {
        key: String,
        event: Uuid,
        accepted_at_ms: i64,
    },
    Tenant {
        state: TenantState,
    },
    Inventory {
        tenant: InventoryTenant,
    },
    /// An account added at run time, its secret still sealed.
    Account {
        account: StoredAccount,
    },
    /// A named document (reconcilers' state), as JSON.
    Document {
        name: String,
        value: serde_json::Value,
    },
    /// The last line: how many lines came before it, so a cut-off file is refused.
    End {
        lines: u64,
    },
}

/// Counters of an export or import.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Moved {
    pub events: u64,
    pub pending: u64,
    pub dead: u64,
    pub lines: u64,
}

/// Writes an export for either backend: the header first, each line counted, the end line
/// last (so a cut-off file is refused by `LineReader`).
pub(crate) struct LineWriter<'a> {
    out: &'a mut dyn Write,
    moved: Moved,
}

impl<'a> LineWriter<'a> {
    /// Start an export of the store `store_id`, of layout (or schema) version `layout`.
    pub(crate) fn start(
        out: &'a mut dyn Write,
        store_id: Uuid,
        layout: u64,
    ) -> Result<LineWriter<'a>, StoreError> {
        let mut w = LineWriter {
            out,
            moved: Moved::default(),
        };
        w.line(&Line::Header {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_VERSION,
            store_id,
            layout,
            exported_at: chrono::Utc::now().to_rfc3339(),
        })?;
        Ok(w)
    }

    pub(crate) fn line(&mut self, line: &Line) -> Result<(), StoreError> {
        serde_json::to_writer(&mut *self.out, line)
            .map_err(|e| StoreError::Write(format!("export: {e}")))?;
        self.out
            .write_all(b"\n")
            .map_err(|e| StoreError::Write(format!("export: {e}")))?;
        self.moved.lines += 1;
        Ok(())
    }

    /// An event line (`Line::Event`), counted as an event, pending or dead.
    pub(crate) fn event(&mut self, line: Line) -> Result<(), StoreError> {
        if let Line::Event { pending, dead, .. } = &line {
            self.moved.events += 1;
            self.moved.pending += u64::from(*pending);
            self.moved.dead += u64::from(*dead);
        }
        self.line(&line)
    }

    /// Events written so far.
    pub(crate) fn events(&self) -> u64 {
        self.moved.events
    }

    /// Write the end line and flush; what was written.
    pub(crate) fn finish(mut self) -> Result<Moved, StoreError> {
        let lines = self.moved.lines;
        self.line(&Line::End { lines })?;
        self.out
            .flush()
            .map_err(|e| StoreError::Write(format!("export: {e}")))?;
        Ok(self.moved)
    }
}

pub(crate) fn bad(line: u64, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("line {line}: {what}"))
}

/// Reads an export line by line for either backend's import: the header must come first and be
/// of this format, the end line must count the lines before it, and a file without its end
/// line (cut off) is refused. Yields the lines between.
pub(crate) struct LineReader<'a> {
    input: &'a mut dyn BufRead,
    /// Lines read so far (the header and end line included).
    pub(crate) lines: u64,
    pub(crate) store_id: Option<Uuid>,
    ended: bool,
    text: String,
}

impl<'a> LineReader<'a> {
    pub(crate) fn new(input: &'a mut dyn BufRead) -> LineReader<'a> {
        LineReader {
            input,
            lines: 0,
            store_id: None,
            ended: false,
            text: String::new(),
        }
    }

    /// The next line of data (not the header, not the end line), or `None` once the whole file
    /// is read.
    pub(crate) fn next_line(&mut self) -> Result<Option<Line>, StoreError> {
        loop {
            self.text.clear();
            let n = self
                .input
                .read_line(&mut self.text)
                .map_err(|e| StoreError::Write(format!("import: {e}")))?;
            if n == 0 {
                if !self.ended {
                    return Err(StoreError::Corrupt(format!(
                        "the export ends after {} lines without its end line: the file is cut off",
                        self.lines
                    )));
                }
                return Ok(None);
            }
            let number = self.lines + 1;
            if self.ended {
                return Err(bad(number, "a line after the end line"));
            }
            let line: Line = serde_json::from_str(self.text.trim_end())
                .map_err(|e| bad(number, format!("not a line of a statusd export ({e})")))?;
            match line {
                Line::Header {
                    format,
                    version,
                    store_id,
                    ..
                } => {
                    if number != 1 || format != EXPORT_FORMAT {
                        return Err(bad(number, "not a statusd store export"));
                    }
                    if version != EXPORT_VERSION {
                        return Err(bad(number, format!("export format version {version}; this statusd reads version {EXPORT_VERSION}")));
                    }
                    self.store_id = Some(store_id);
                }
                _ if self.store_id.is_none() => {
                    return Err(bad(number, "no header: not a statusd store export"))
                }
                Line::End { lines } => {
                    if lines != self.lines {
                        return Err(bad(number, format!("the end line counts {lines} lines, {} came before it: the file is not whole", self.lines)));
                    }
                    self.ended = true;
                }
                data => {
                    self.lines += 1;
                    return Ok(Some(data));
                }
            }
            self.lines += 1;
        }
    }

    /// The number of the line `next_line` gave last.
    pub(crate) fn number(&self) -> u64 {
        self.lines
    }
}
