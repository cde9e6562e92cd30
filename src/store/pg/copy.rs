//! Export and import of the PostgreSQL store, in the same JSON-lines format as sled's, so a
//! store moves between backends: pending events first, in queue order.

use std::io::{BufRead, Write};

use futures_util::{pin_mut, TryStreamExt};

use super::*;
use crate::store::export::{bad, Line, LineReader, LineWriter};

/// How many lines go in one insert of an import.
const CHUNK: usize = 1000;

/// The export line of an event row. A delivered event is written as sled keeps it: the record
/// as it was before delivery, with the delivery on the line.
fn event_line(mut record: EventRecord) -> Line {
    let (pending, dead) = (
        record.state == EventState::Queued,
        record.state == EventState::Dead,
    );
    let (mut delivered_at_ms, mut delivered_attempts) = (None, None);
    if record.state == EventState::Delivered {
        delivered_at_ms = record.delivered_at_ms.take();
        delivered_attempts = Some(record.attempts);
        record.attempts = record.attempts.saturating_sub(1);
        record.state = EventState::Queued;
    }
    Line::Event {
        record,
        pending,
        dead,
        delivered_at_ms,
        delivered_attempts,
    }
}

/// Write the whole store as JSON lines: a consistent snapshot (one repeatable-read, read-only
/// transaction), so it may run beside a daemon using the store.
pub async fn export(
    opts: &PgOptions,
    out: &mut dyn Write,
    mut progress: impl Progress,
) -> Result<Moved, StoreError> {
    let pool = make_pool(opts)?;
    let mut client = pool.get().await.map_err(pool_error)?;
    schema::migrate(&mut client, &opts.schema).await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)?;
    tx.batch_execute(&prelude(&opts.schema))
        .await
        .map_err(pg_error)?;
    let store_id: String = tx
        .query_one("SELECT value FROM meta WHERE name = 'store_id'", &[])
        .await
        .map_err(pg_error)
        .and_then(|r| col(&r, 0))?;
    let mut w = LineWriter::start(
        out,
        Uuid::parse_str(&store_id).unwrap_or_else(|_| Uuid::new_v4()),
        PG_SCHEMA_VERSION as u64,
    )?;
    export_events(&tx, &mut w, &mut progress).await?;
    export_rest(&tx, &mut w).await?;
    let moved = w.finish()?;
    tx.commit().await.map_err(pg_error)?;
    Ok(moved)
}

/// Every event: those pending first, in queue order (by tenant and seq), then the rest.
async fn export_events(
    tx: &deadpool_postgres::Transaction<'_>,
    w: &mut LineWriter<'_>,
    progress: &mut impl Progress,
) -> Result<(), StoreError> {
    let total: i64 = tx
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .map_err(pg_error)
        .and_then(|r| col(&r, 0))?;
    for clause in [
        "WHERE state = 'queued' ORDER BY tenant_id, seq",
        "WHERE state <> 'queued' ORDER BY seq",
    ] {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events {clause}");
        let rows = tx
            .query_raw(&sql, std::iter::empty::<i32>())
            .await
            .map_err(pg_error)?;
        pin_mut!(rows);
        while let Some(row) = rows.try_next().await.map_err(pg_error)? {
            w.event(event_line(row_event(&row)?))?;
            if w.events() % 10_000 == 0 {
                progress.step(w.events(), total as u64);
            }
        }
    }
    progress.step(w.events(), total as u64);
    Ok(())
}

/// Idempotency keys, tenant states, inventory, accounts and documents.
async fn export_rest(
    tx: &deadpool_postgres::Transaction<'_>,
    w: &mut LineWriter<'_>,
) -> Result<(), StoreError> {
    let rows = |sql: &'static str| async move { tx.query(sql, &[]).await.map_err(pg_error) };
    for row in
        rows("SELECT key, event_id, accepted_at_ms FROM idempotency_keys ORDER BY key").await?
    {
        w.line(&Line::Idempotency {
            key: col(&row, 0)?,
            event: col(&row, 1)?,
            accepted_at_ms: col(&row, 2)?,
        })?;
    }
    for row in rows(
        "SELECT tenant_id, account, intended, intended_at_ms, last_reported, last_reported_at_ms,
                 last_sent_at_ms
         FROM tenants ORDER BY tenant_id",
    )
    .await?
    {
        w.line(&Line::Tenant {
            state: row_tenant(&row)?,
        })?;
    }
    for row in rows("SELECT record FROM inventory ORDER BY tenant_id").await? {
        w.line(&Line::Inventory {
            tenant: json_of(col(&row, 0)?)?,
        })?;
    }
    for row in rows("SELECT record FROM accounts ORDER BY id").await? {
        w.line(&Line::Account {
            account: json_of(col(&row, 0)?)?,
        })?;
    }
    for row in rows("SELECT name, value FROM documents ORDER BY name").await? {
        let name: String = col(&row, 0)?;
        w.line(&Line::Document {
            name: format!("doc/{name}"),
            value: col(&row, 1)?,
        })?;
    }
    Ok(())
}

/// Insert imported events, each in the state it was exported in, in one statement.
async fn insert_events(
    tx: &deadpool_postgres::Transaction<'_>,
    map: &crate::cluster::ShardMap,
    ev: &[EventRecord],
) -> Result<(), StoreError> {
    let col = |f: &dyn Fn(&EventRecord) -> Option<String>| -> Vec<Option<String>> {
        ev.iter().map(f).collect()
    };
    let ids: Vec<Uuid> = ev.iter().map(|e| e.id).collect();
    let seqs: Vec<i64> = ev.iter().map(|e| e.seq as i64).collect();
    let tenants: Vec<Uuid> = ev.iter().map(|e| e.tenant_id).collect();
    let accounts = col(&|e| e.account.clone());
    let kinds = col(&|e| Some(e.kind.as_str().to_string()));
    let cats = col(&|e| Some(e.category.clone()));
    let actions = col(&|e| Some(e.action.clone()));
    let keys = col(&|e| e.idempotency_key.clone());
    let accepted: Vec<i64> = ev.iter().map(|e| e.accepted_at_ms).collect();
    let occurred: Vec<Option<i64>> = ev.iter().map(|e| e.occurred_at_ms).collect();
    let states = col(&|e| {
        Some(
            match e.state {
                EventState::Dead => "dead",
                EventState::Delivered => "delivered",
                _ => "queued",
            }
            .to_string(),
        )
    });
    let attempts: Vec<i32> = ev.iter().map(|e| e.attempts as i32).collect();
    let errors = col(&|e| e.last_error.clone());
    let next: Vec<Option<i64>> = ev.iter().map(|e| e.next_attempt_at_ms).collect();
    let delivered: Vec<Option<i64>> = ev.iter().map(|e| e.delivered_at_ms).collect();
    let reasons = col(&|e| e.dead_reason.clone());
    let shards: Vec<i32> = ev
        .iter()
        .map(|e| map.of(e.account.as_deref()) as i32)
        .collect();
    tx.execute(
        &format!(
            "INSERT INTO events ({EVENT_COLUMNS}, shard) SELECT * FROM unnest(
             $1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[],
             $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::text[],
             $12::integer[], $13::text[], $14::bigint[], $15::bigint[], $16::text[],
             $17::integer[])"
        ),
        &[
            &ids, &seqs, &tenants, &accounts, &kinds, &cats, &actions, &keys, &accepted, &occurred,
            &states, &attempts, &errors, &next, &delivered, &reasons, &shards,
        ],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// What an import gathers before it inserts a chunk.
#[derive(Default)]
struct Chunk {
    events: Vec<EventRecord>,
    keys: Vec<(String, Uuid, i64)>,
    tenants: Vec<TenantState>,
    inventory: Vec<InventoryTenant>,
    accounts: Vec<StoredAccount>,
    documents: Vec<(String, serde_json::Value)>,
}

impl Chunk {
    fn len(&self) -> usize {
        self.events.len()
            + self.keys.len()
            + self.tenants.len()
            + self.inventory.len()
            + self.accounts.len()
            + self.documents.len()
    }

    async fn insert(
        &mut self,
        tx: &deadpool_postgres::Transaction<'_>,
        map: &crate::cluster::ShardMap,
    ) -> Result<(), StoreError> {
        let ev = std::mem::take(&mut self.events);
        if !ev.is_empty() {
            insert_events(tx, map, &ev).await?;
        }
        for (key, event, at) in std::mem::take(&mut self.keys) {
            tx.execute(
                "INSERT INTO idempotency_keys (key, event_id, accepted_at_ms) VALUES ($1, $2, $3)",
                &[&key, &event, &at],
            )
            .await
            .map_err(pg_error)?;
        }
        for t in std::mem::take(&mut self.tenants) {
            tx.execute(
                "INSERT INTO tenants (tenant_id, account, intended, intended_at_ms, last_reported,
                     last_reported_at_ms, last_sent_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &t.tenant_id,
                    &t.account,
                    &state_text(t.intended),
                    &t.intended_at_ms,
                    &state_text(t.last_reported),
                    &t.last_reported_at_ms,
                    &t.last_sent_at_ms,
                ],
            )
            .await
            .map_err(pg_error)?;
        }
        for t in std::mem::take(&mut self.inventory) {
            let account = t
                .account
                .clone()
                .unwrap_or_else(|| crate::config::DEFAULT_ACCOUNT.into());
            tx.execute(
                "INSERT INTO inventory (tenant_id, account, record) VALUES ($1, $2, $3)",
                &[&t.id, &account, &value_of(&t)],
            )
            .await
            .map_err(pg_error)?;
        }
        for a in std::mem::take(&mut self.accounts) {
            tx.execute(
                "INSERT INTO accounts (id, record) VALUES ($1, $2)",
                &[&a.id, &value_of(&a)],
            )
            .await
            .map_err(pg_error)?;
        }
        for (name, value) in std::mem::take(&mut self.documents) {
            tx.execute(
                "INSERT INTO documents (name, value) VALUES ($1, $2)",
                &[&name, &value],
            )
            .await
            .map_err(pg_error)?;
        }
        Ok(())
    }
}

/// Import an export into an empty PostgreSQL store, in one transaction: a failed import leaves
/// nothing behind. Refused when the store holds any event, account or document.
pub async fn import(
    opts: &PgOptions,
    input: &mut dyn BufRead,
    mut progress: impl Progress,
) -> Result<Moved, StoreError> {
    let pool = make_pool(opts)?;
    let mut client = pool.get().await.map_err(pool_error)?;
    schema::migrate(&mut client, &opts.schema).await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.batch_execute(&prelude(&opts.schema))
        .await
        .map_err(pg_error)?;
    let used: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM events) OR EXISTS (SELECT 1 FROM accounts)
                 OR EXISTS (SELECT 1 FROM documents) OR EXISTS (SELECT 1 FROM tenants)",
            &[],
        )
        .await
        .map_err(pg_error)
        .and_then(|r| col(&r, 0))?;
    if used {
        return Err(StoreError::Write(format!(
            "the PostgreSQL store (schema {:?}) is not empty: import only into a new store (use another store.postgres.schema, or drop this one first)",
            opts.schema
        )));
    }
    let mut moved = Moved::default();
    let mut chunk = Chunk::default();
    let mut max_seq = 0u64;
    let mut reader = LineReader::new(input);
    while let Some(line) = reader.next_line()? {
        match line {
            Line::Event {
                mut record,
                pending,
                dead,
                delivered_at_ms,
                delivered_attempts,
            } => {
                max_seq = max_seq.max(record.seq);
                if pending {
                    record.state = EventState::Queued;
                    moved.pending += 1;
                } else if dead {
                    record.state = EventState::Dead;
                    moved.dead += 1;
                } else if let Some(at) = delivered_at_ms {
                    record.state = EventState::Delivered;
                    record.delivered_at_ms = Some(at);
                    record.attempts = delivered_attempts.unwrap_or(record.attempts + 1);
                    record.next_attempt_at_ms = None;
                } else {
                    return Err(bad(
                        reader.number(),
                        format!("event {} is neither pending, dead nor delivered", record.id),
                    ));
                }
                chunk.events.push(record);
                moved.events += 1;
            }
            Line::Idempotency {
                key,
                event,
                accepted_at_ms,
            } => chunk.keys.push((key, event, accepted_at_ms)),
            Line::Tenant { state } => chunk.tenants.push(state),
            Line::Inventory { tenant } => chunk.inventory.push(tenant),
            Line::Account { account } => chunk.accounts.push(account),
            Line::Document { name, value } => {
                if let Some(name) = name.strip_prefix("doc/") {
                    chunk.documents.push((name.to_string(), value));
                }
            }
            // Checked and kept by the reader.
            Line::Header { .. } | Line::End { .. } => {}
        }
        if chunk.len() >= CHUNK {
            chunk.insert(&tx, &opts.shards).await?;
            progress.step(moved.events, 0);
        }
    }
    chunk.insert(&tx, &opts.shards).await?;
    moved.lines = reader.lines;
    let store_id = reader.store_id.expect("a header was read").to_string();
    tx.execute(
        "UPDATE meta SET value = $1 WHERE name = 'store_id'",
        &[&store_id],
    )
    .await
    .map_err(pg_error)?;
    if max_seq > 0 {
        tx.execute("SELECT setval('event_seq', $1)", &[&(max_seq as i64)])
            .await
            .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;
    progress.step(moved.events, moved.events);
    Ok(moved)
}
