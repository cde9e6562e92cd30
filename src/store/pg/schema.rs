//! The PostgreSQL schema: versioned migrations inside the binary, each applied in its own
//! transaction under an advisory lock, so replicas starting together apply each once.

use super::*;

/// The schema version this build writes; a store with a newer one is refused.
pub const PG_SCHEMA_VERSION: i32 = 3;

/// One migration: its version, what it does, its SQL (the schema is the transaction's
/// `search_path`, so the statements name none), and whether it only adds.
///
/// A migration that only adds (a table, an index, a column that is nullable or has a default)
/// is `additive`: a build that knows only the versions before it runs on the schema unchanged,
/// since every statement of statusd names its columns. During a rolling update the older
/// replicas go on beside the newer ones while the schema is ahead of them, as long as every
/// migration they do not know is additive; the first one that is not (a column dropped,
/// renamed or made stricter) ends that window: an older build then refuses to start on it
/// (exit 78), and the update must stop the older replicas before that version is applied.
pub(super) struct Migration {
    pub(super) version: i32,
    pub(super) what: &'static str,
    sql: &'static str,
    additive: bool,
}

/// The migrations, in order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        what: "events, idempotency keys, tenants, inventory, accounts, documents",
        additive: false,
        sql: r#"
CREATE TABLE events (
    id uuid PRIMARY KEY,
    seq bigint NOT NULL,
    tenant_id uuid NOT NULL,
    account text,
    kind text NOT NULL,
    category text NOT NULL,
    action text NOT NULL,
    idempotency_key text,
    accepted_at_ms bigint NOT NULL,
    occurred_at_ms bigint,
    state text NOT NULL CHECK (state IN ('queued', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    next_attempt_at_ms bigint,
    delivered_at_ms bigint,
    dead_reason text
);
CREATE UNIQUE INDEX events_seq ON events (seq);
CREATE INDEX events_pending ON events (tenant_id, seq) WHERE state = 'queued';
CREATE INDEX events_due ON events (state, next_attempt_at_ms);
CREATE INDEX events_delivered ON events (delivered_at_ms) WHERE state = 'delivered';
CREATE INDEX events_dead ON events (seq) WHERE state = 'dead';
CREATE SEQUENCE event_seq;
CREATE TABLE idempotency_keys (
    key text PRIMARY KEY,
    event_id uuid NOT NULL,
    accepted_at_ms bigint NOT NULL
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (accepted_at_ms);
CREATE TABLE tenants (
    tenant_id uuid PRIMARY KEY,
    account text,
    intended text,
    intended_at_ms bigint,
    last_reported text,
    last_reported_at_ms bigint
);
CREATE TABLE inventory (
    tenant_id uuid PRIMARY KEY,
    account text NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX inventory_account ON inventory (account);
CREATE TABLE accounts (id text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE documents (name text PRIMARY KEY, value jsonb NOT NULL);
CREATE TABLE meta (name text PRIMARY KEY, value text NOT NULL);
INSERT INTO meta (name, value) VALUES ('store_id', gen_random_uuid()::text);
"#,
    },
    Migration {
        version: 2,
        what: "shards: each event's shard, members, shard leases, reconciler slots",
        additive: true,
        sql: r#"
ALTER TABLE events ADD COLUMN shard integer NOT NULL DEFAULT 0;
CREATE INDEX events_shard_pending ON events (shard, tenant_id, seq) WHERE state = 'queued';
ALTER TABLE tenants ADD COLUMN last_sent_at_ms bigint;
CREATE TABLE members (
    id text PRIMARY KEY,
    api text NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    version bigint NOT NULL
);
CREATE TABLE shards (
    shard integer PRIMARY KEY,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    version bigint NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE reconcile_slots (
    name text NOT NULL,
    shard integer NOT NULL,
    slot bigint NOT NULL,
    member text NOT NULL,
    PRIMARY KEY (name, shard, slot)
);
"#,
    },
    Migration {
        version: 3,
        what: "late reports: tenants a replica reported to after it lost their shard",
        additive: true,
        sql: r#"
CREATE TABLE late_reports (
    tenant_id uuid PRIMARY KEY,
    shard integer NOT NULL,
    noted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX late_reports_shard ON late_reports (shard);
"#,
    },
];

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    pub from: i32,
    pub to: i32,
    pub applied: Vec<(i32, &'static str)>,
}

/// The advisory lock that serializes migrations of one database (any schema).
const MIGRATION_LOCK: i64 = 0x7374_6174_7573_6400; // "statusd\0"

/// Create the schema if need be and apply every migration it lacks, each in a transaction.
/// A schema newer than this build is refused, naming both versions.
pub(super) async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<Migrated, StoreError> {
    // Quoted: a valid name may still be a keyword (`order`, `user`).
    let schema = &format!("\"{schema}\"");
    let mut done = Migrated::default();
    let mut first = true;
    loop {
        let tx = client.transaction().await.map_err(pg_error)?;
        // As every transaction of the store: no statement left on the server connection by
        // another client of a pooler (see `prelude`).
        tx.batch_execute("DEALLOCATE ALL").await.map_err(pg_error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_error)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version integer PRIMARY KEY,
                 description text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );
             ALTER TABLE {schema}.schema_migrations
                 ADD COLUMN IF NOT EXISTS additive boolean NOT NULL DEFAULT false;"
        ))
        .await
        .map_err(pg_error)?;
        let current: i32 = tx
            .query_one(
                &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"),
                &[],
            )
            .await
            .map_err(pg_error)
            .and_then(|r| col(&r, 0))?;
        if first {
            done.from = current;
            first = false;
        }
        done.to = current;
        if current > PG_SCHEMA_VERSION {
            // A schema ahead of this build: run on it while every migration this build does
            // not know only adds (a rolling update under way), else refuse.
            let breaking: i64 = tx
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {schema}.schema_migrations
                         WHERE version > $1 AND NOT additive"
                    ),
                    &[&PG_SCHEMA_VERSION],
                )
                .await
                .map_err(pg_error)
                .and_then(|r| col(&r, 0))?;
            tx.commit().await.map_err(pg_error)?;
            if breaking > 0 {
                return Err(StoreError::PgSchemaTooNew {
                    schema: schema.trim_matches('"').to_string(),
                    found: current,
                });
            }
            tracing::warn!(
                message = "the store's schema is ahead of this build, by migrations that only add: running on it (a rolling update under way; update this replica too)",
                schema = %schema.trim_matches('"'),
                version = current,
                this_build = PG_SCHEMA_VERSION
            );
            return Ok(done);
        }
        let Some(m) = MIGRATIONS.iter().find(|m| m.version > current) else {
            tx.commit().await.map_err(pg_error)?;
            return Ok(done);
        };
        let (version, what) = (m.version, m.what);
        tx.batch_execute(&format!("SET LOCAL search_path TO {schema}; {}", m.sql))
            .await
            .map_err(pg_error)?;
        tx.execute(
            &format!(
                "INSERT INTO {schema}.schema_migrations (version, description, additive)
                 VALUES ($1, $2, $3)"
            ),
            &[&version, &what, &m.additive],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(message = "store schema migrated", schema = %schema.trim_matches('"'), version, what);
        done.applied.push((version, what));
        done.to = version;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
        }
        assert_eq!(
            MIGRATIONS.last().map(|m| m.version),
            Some(PG_SCHEMA_VERSION)
        );
    }
}
