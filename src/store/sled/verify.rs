//! `statusd store verify [--repair]`: every index checked against the records, the counters
//! against a recount, the layout, the control file, and the stored accounts' secrets against the
//! key. `--repair` rebuilds the indexes and counters from the event records; it never deletes an
//! event record.

use std::collections::{HashMap, HashSet};

use super::*;

/// One check: what it looked at, how many, and what it found wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub checked: u64,
    pub problems: Vec<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub checks: Vec<Check>,
    /// Problems `--repair` cannot mend (acknowledged events that are gone).
    pub unrepairable: Vec<String>,
    /// What `--repair` changed, when it ran.
    pub repaired: Vec<String>,
}

impl Verification {
    pub fn sound(&self) -> bool {
        self.unrepairable.is_empty() && self.checks.iter().all(|c| c.problems.is_empty())
    }
}

/// A store opened for an offline operation: no writer thread; refused while a daemon
/// holds it.
pub struct Offline {
    pub(super) db: ::sled::Db,
    pub(super) tree: ::sled::Tree,
    pub(super) path: std::path::PathBuf,
}

impl Offline {
    pub fn open(path: &Path) -> Result<Offline, StoreError> {
        super::copy::finish_interrupted(path)?;
        if !path.join("db").exists() && !path.join("conf").exists() {
            return Err(StoreError::Write(format!(
                "{} holds no store (no sled files there)",
                path.display()
            )));
        }
        let (db, tree) = open_sled_checked(path, &StoreOptions::default())?;
        Ok(Offline {
            db,
            tree,
            path: path.to_path_buf(),
        })
    }
}

fn problem(list: &mut Vec<String>, text: String) {
    // Enough to act on, not a million lines.
    if list.len() < 20 {
        list.push(text);
    } else if list.len() == 20 {
        list.push("(more not listed)".into());
    }
}

/// The state an event record's indexes must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Pending(TenantId, u64),
    Dead,
    Delivered,
}

/// One pass of `verify`: what the checks found, and the batch that mends it.
struct Pass<'a> {
    tree: &'a ::sled::Tree,
    checks: Vec<Check>,
    unrepairable: Vec<String>,
    fix: ::sled::Batch,
    /// The state each event record's indexes must show.
    expect: HashMap<Uuid, Expect>,
    max_seq: u64,
    pending_n: u64,
    dead_n: u64,
}

impl Pass<'_> {
    /// The layout version.
    fn layout(&mut self) -> Result<(), StoreError> {
        let t = self.tree;
        let mut layout = Check {
            name: "layout",
            checked: 1,
            problems: Vec::new(),
        };
        match t
            .get(meta_key("schema"))?
            .map(|v| u64_from(&v))
            .transpose()?
        {
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) if v < SCHEMA_VERSION => layout.problems.push(format!(
                "layout {v} (this statusd writes {SCHEMA_VERSION}; `statusd run` migrates it)"
            )),
            Some(v) => self.unrepairable.push(format!(
                "layout {v} is newer than this statusd understands ({SCHEMA_VERSION})"
            )),
            None => layout.problems.push("no layout version recorded".into()),
        }
        self.checks.push(layout);
        Ok(())
    }

    /// Every event record readable, and the state its indexes must show.
    fn records(&mut self) -> Result<(), StoreError> {
        let t = self.tree;
        let mut records = Check {
            name: "event records",
            checked: 0,
            problems: Vec::new(),
        };
        for item in t.scan_prefix([b'e']) {
            let (k, v) = item?;
            records.checked += 1;
            let id = match uuid_from(&k[1..]) {
                Ok(id) => id,
                Err(_) => {
                    problem(
                        &mut records.problems,
                        format!("a record key of {} bytes", k.len()),
                    );
                    continue;
                }
            };
            let rec: EventRecord = match from_json(&v) {
                Ok(r) => r,
                Err(e) => {
                    problem(
                        &mut records.problems,
                        format!("event {id}: unreadable ({e})"),
                    );
                    continue;
                }
            };
            self.max_seq = self.max_seq.max(rec.seq);
            let state = if t.get(delivered_marker_key(&id))?.is_some() {
                Expect::Delivered
            } else if rec.state == EventState::Dead {
                Expect::Dead
            } else {
                Expect::Pending(rec.tenant_id, rec.seq)
            };
            self.expect.insert(id, state);
        }
        self.checks.push(records);
        Ok(())
    }

    /// The pending index: each key names a pending record at its place, each pending record
    /// has its key.
    fn pending(&mut self) -> Result<(), StoreError> {
        let t = self.tree;
        let mut pending = Check {
            name: "pending index",
            checked: 0,
            problems: Vec::new(),
        };
        let mut seen_pending: HashSet<Uuid> = HashSet::new();
        for item in t.scan_prefix([b'p']) {
            let (k, v) = item?;
            pending.checked += 1;
            let target =
                parse_pending_key(&k).and_then(|(tenant, seq)| Ok((tenant, seq, uuid_from(&v)?)));
            let ok = match target {
                Ok((tenant, seq, id)) => match self.expect.get(&id) {
                    Some(Expect::Pending(t2, s2)) if *t2 == tenant && *s2 == seq => {
                        seen_pending.insert(id);
                        true
                    }
                    Some(other) => {
                        problem(&mut pending.problems, format!("tenant {tenant} seq {seq}: points at event {id}, which is {other:?}"));
                        false
                    }
                    None => {
                        problem(&mut pending.problems, format!("tenant {tenant} seq {seq}: points at event {id}, which has no record"));
                        false
                    }
                },
                Err(e) => {
                    problem(&mut pending.problems, format!("a damaged pending key: {e}"));
                    false
                }
            };
            if !ok {
                self.fix.remove(k);
            }
        }
        for (id, e) in &self.expect {
            if let Expect::Pending(tenant, seq) = e {
                if !seen_pending.contains(id) {
                    problem(
                        &mut pending.problems,
                        format!("event {id} is queued but not in its tenant's queue"),
                    );
                    self.fix
                        .insert(pending_key(tenant, *seq), id.as_bytes().as_slice());
                }
            }
        }
        self.pending_n = self
            .expect
            .values()
            .filter(|e| matches!(e, Expect::Pending(..)))
            .count() as u64;
        self.checks.push(pending);
        Ok(())
    }

    /// The dead-letter index against the dead records.
    fn dead(&mut self) -> Result<(), StoreError> {
        let t = self.tree;
        let mut dead = Check {
            name: "dead-letter index",
            checked: 0,
            problems: Vec::new(),
        };
        let mut seen_dead: HashSet<Uuid> = HashSet::new();
        for k in t.scan_prefix([b'd']).keys() {
            let k = k?;
            dead.checked += 1;
            match uuid_from(&k[1..]) {
                Ok(id) if self.expect.get(&id) == Some(&Expect::Dead) => {
                    seen_dead.insert(id);
                }
                Ok(id) => {
                    problem(
                        &mut dead.problems,
                        format!("dead letter {id} has no dead record"),
                    );
                    self.fix.remove(k);
                }
                Err(e) => {
                    problem(
                        &mut dead.problems,
                        format!("a damaged dead-letter key: {e}"),
                    );
                    self.fix.remove(k);
                }
            }
        }
        for (id, e) in &self.expect {
            if *e == Expect::Dead && !seen_dead.contains(id) {
                problem(
                    &mut dead.problems,
                    format!("event {id} is dead but not listed as a dead letter"),
                );
                self.fix.insert(dead_key(id), &[]);
            }
        }
        self.dead_n = self.expect.values().filter(|e| **e == Expect::Dead).count() as u64;
        self.checks.push(dead);
        Ok(())
    }

    /// Each delivery marker has its compaction key and each compaction key its marker.
    fn delivered(&mut self) -> Result<(), StoreError> {
        let t = self.tree;
        let mut delivered = Check {
            name: "delivered index",
            checked: 0,
            problems: Vec::new(),
        };
        let mut compaction: HashSet<Uuid> = HashSet::new();
        for k in t.scan_prefix([b'c']).keys() {
            let k = k?;
            delivered.checked += 1;
            let id = k.get(9..).map(uuid_from).transpose().ok().flatten();
            match id {
                Some(id) if t.get(delivered_marker_key(&id))?.is_some() => {
                    compaction.insert(id);
                }
                _ => {
                    problem(
                        &mut delivered.problems,
                        "a compaction key without its delivery marker".into(),
                    );
                    self.fix.remove(k);
                }
            }
        }
        for item in t.scan_prefix([b'x']) {
            let (k, v) = item?;
            delivered.checked += 1;
            let Ok(id) = uuid_from(&k[1..]) else { continue };
            if v.len() != 12 {
                problem(
                    &mut delivered.problems,
                    format!("event {id}: a damaged delivery marker"),
                );
                continue;
            }
            if !compaction.contains(&id) {
                problem(
                    &mut delivered.problems,
                    format!("delivered event {id} has no compaction key"),
                );
                let at = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                self.fix.insert(delivered_key(at, &id), &[]);
            }
        }
        self.checks.push(delivered);
        Ok(())
    }

    /// Idempotency keys and their expiry index.
    fn idempotency(&mut self) -> Result<(), StoreError> {
        let t = self.tree;
        let mut idem = Check {
            name: "idempotency keys",
            checked: 0,
            problems: Vec::new(),
        };
        let mut expiring: HashSet<Vec<u8>> = HashSet::new();
        for k in t.scan_prefix([b'j']).keys() {
            let k = k?;
            if let Some(rest) = k.get(9..) {
                expiring.insert(rest.to_vec());
            }
        }
        for item in t.scan_prefix([b'i']) {
            let (k, v) = item?;
            idem.checked += 1;
            let name = &k[1..];
            if idem_target(&v).is_err() {
                problem(
                    &mut idem.problems,
                    format!("key {:?}: a damaged value", String::from_utf8_lossy(name)),
                );
                continue;
            }
            if !expiring.contains(name) {
                problem(
                    &mut idem.problems,
                    format!(
                        "key {:?} never expires (no expiry entry)",
                        String::from_utf8_lossy(name)
                    ),
                );
                let at = v
                    .get(16..24)
                    .and_then(|b| b.try_into().ok())
                    .map(i64::from_be_bytes)
                    .unwrap_or_else(now_ms);
                self.fix
                    .insert(idem_expiry_key(at, &String::from_utf8_lossy(name)), &[]);
            }
        }
        self.checks.push(idem);
        Ok(())
    }

    /// Tenant states and inventory records readable.
    fn states(&mut self) -> Result<(), StoreError> {
        let t = self.tree;
        let mut state = Check {
            name: "tenant states and inventory",
            checked: 0,
            problems: Vec::new(),
        };
        for prefix in [b't', b'n'] {
            for item in t.scan_prefix([prefix]) {
                let (k, v) = item?;
                state.checked += 1;
                let ok = if prefix == b't' {
                    from_json::<TenantState>(&v).is_ok()
                } else {
                    from_json::<InventoryTenant>(&v).is_ok()
                };
                if !ok {
                    problem(
                        &mut state.problems,
                        format!(
                            "an unreadable record under {:?}",
                            String::from_utf8_lossy(&k[..1])
                        ),
                    );
                }
            }
        }
        self.checks.push(state);
        Ok(())
    }

    /// Each stored account readable, its secret opened by `key`.
    fn accounts(&mut self, key: Option<&crate::vault::SecretKey>) -> Result<(), StoreError> {
        let t = self.tree;
        let mut accounts = Check {
            name: "accounts' secrets",
            checked: 0,
            problems: Vec::new(),
        };
        for item in t.scan_prefix([b'a']) {
            let (_, v) = item?;
            accounts.checked += 1;
            match from_json::<StoredAccount>(&v) {
                Err(e) => problem(
                    &mut accounts.problems,
                    format!("an unreadable account record ({e})"),
                ),
                Ok(a) => {
                    match key {
                        None => problem(
                            &mut accounts.problems,
                            format!(
                                "account {}: no store.secret_key_file to open its secret with",
                                a.id
                            ),
                        ),
                        Some(k) => {
                            if let Err(e) = k.open_bound(&a.binding(), &a.client_secret_sealed) {
                                problem(&mut accounts.problems, format!("account {}: store.secret_key_file cannot open its secret: {e}", a.id));
                            }
                        }
                    }
                }
            }
        }
        self.checks.push(accounts);
        Ok(())
    }

    /// The counters against the recount, and the control file's durable sequence.
    fn counters(&mut self, path: &Path) -> Result<(), StoreError> {
        let t = self.tree;
        let (pending_n, dead_n, max_seq) = (self.pending_n, self.dead_n, self.max_seq);
        let mut counters = Check {
            name: "counters",
            checked: 3,
            problems: Vec::new(),
        };
        let read = |name: &str| read_u64(t, name);
        let (depth, deadc, seq) = (
            read("depth")?.unwrap_or(0),
            read("dead")?.unwrap_or(0),
            read("seq")?.unwrap_or(0),
        );
        if depth != pending_n {
            counters.problems.push(format!(
                "pending counter {depth}, {pending_n} events pending"
            ));
            self.fix.insert(meta_key("depth"), &pending_n.to_be_bytes());
        }
        if deadc != dead_n {
            counters.problems.push(format!(
                "dead-letter counter {deadc}, {dead_n} dead letters"
            ));
            self.fix.insert(meta_key("dead"), &dead_n.to_be_bytes());
        }
        if depth != pending_n || deadc != dead_n {
            // Each account's counts are recounted at the next open.
            self.fix.remove(meta_key(ACCOUNT_COUNTS_MARK));
        }
        if seq < max_seq {
            counters
                .problems
                .push(format!("sequence {seq} is below an event's {max_seq}"));
            self.fix.insert(meta_key("seq"), &max_seq.to_be_bytes());
        }
        if let Some(c) = control::read(path)? {
            if seq.max(max_seq) < c.durable_seq {
                self.unrepairable.push(format!(
                "the highest sequence is {} but {} was durable on {}: acknowledged events are gone (restore a backup, or run with --accept-damaged-store)",
                seq.max(max_seq),
                c.durable_seq,
                c.written_at
            ));
            }
        }
        self.checks.push(counters);
        Ok(())
    }
}

impl Offline {
    /// Check the store; with `repair`, rebuild indexes and counters from the records. `key`
    /// opens the stored accounts' secrets (None: that check reports it could not run).
    pub fn verify(
        &self,
        key: Option<&crate::vault::SecretKey>,
        repair: bool,
    ) -> Result<Verification, StoreError> {
        let mut pass = Pass {
            tree: &self.tree,
            checks: Vec::new(),
            unrepairable: Vec::new(),
            fix: ::sled::Batch::default(),
            expect: HashMap::new(),
            max_seq: 0,
            pending_n: 0,
            dead_n: 0,
        };
        pass.layout()?;
        pass.records()?;
        pass.pending()?;
        pass.dead()?;
        pass.delivered()?;
        pass.idempotency()?;
        pass.states()?;
        pass.accounts(key)?;
        pass.counters(&self.path)?;
        let Pass {
            checks,
            unrepairable,
            fix,
            ..
        } = pass;
        let mut repaired = Vec::new();
        let found: usize = checks.iter().map(|c| c.problems.len()).sum();
        if repair && found > 0 {
            self.tree.apply_batch(fix)?;
            LogFile::open(&self.path)?.flush(&self.db)?;
            if let Some(c) = control::read(&self.path)? {
                // Recount at the next start (the counters were just rebuilt).
                let _ = control::write(&self.path, &control::Control { clean: false, ..c });
            }
            for c in &checks {
                if !c.problems.is_empty()
                    && c.name != "accounts' secrets"
                    && c.name != "tenant states and inventory"
                {
                    repaired.push(format!(
                        "{}: {} problem(s) mended",
                        c.name,
                        c.problems.len()
                    ));
                }
            }
        }
        Ok(Verification {
            checks,
            unrepairable,
            repaired,
        })
    }
}
