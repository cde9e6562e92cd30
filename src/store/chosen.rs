//! The store the settings choose (`store.backend`), opened or copied without the caller
//! naming a backend.

use std::io::{BufRead, Write};

use super::pg::{Migrated, PgOptions, PgQueue};
use super::*;
use crate::cluster::ShardMap;
use crate::config::{Settings, StoreBackend};

/// The store's options from the settings.
pub fn options_of(settings: &Settings) -> StoreOptions {
    StoreOptions {
        cache_capacity_mb: settings.store.cache_capacity_mb,
        delivered_retention: settings.store.delivered_retention,
        accept_damaged: settings.store.accept_damaged,
        // Retries wait at most max_backoff, or a Retry-After up to its cap.
        max_retry_delay: settings
            .delivery
            .max_backoff
            .max(crate::config::MAX_RETRY_AFTER),
    }
}

/// The database's options, when the settings choose a database.
fn database(settings: &Settings) -> Option<PgOptions> {
    match (settings.store.backend, &settings.store.postgres) {
        (StoreBackend::Postgres, Some(pg)) => {
            Some(PgOptions::of(pg, ShardMap::of_settings(settings)))
        }
        _ => None,
    }
}

/// Whether the chosen store is kept in files that only one process opens (its offline
/// commands, `verify` and `compact`, apply).
pub fn is_local(settings: &Settings) -> bool {
    database(settings).is_none()
}

/// Open the chosen store (sled is opened off the async workers: it reads every pending key).
pub async fn open(settings: &Settings) -> Result<Queue, StoreError> {
    let opts = options_of(settings);
    if let Some(pg) = database(settings) {
        return Queue::open_postgres(&pg, opts).await;
    }
    let path = settings.store.path.clone();
    tokio::task::spawn_blocking(move || Queue::open(&path, opts))
        .await
        .map_err(|e| StoreError::Write(format!("the store's open task failed: {e}")))?
}

/// Apply the schema migrations of a database store, and nothing else: `None` for a store
/// migrated when it is opened.
pub async fn migrate(settings: &Settings) -> Result<Option<Migrated>, StoreError> {
    match database(settings) {
        Some(pg) => PgQueue::migrate_only(&pg).await.map(Some),
        None => Ok(None),
    }
}

/// Write the whole chosen store as JSON lines (a database: one consistent snapshot, beside a
/// running daemon; sled: a store no daemon holds). Call from a blocking thread.
pub fn export(
    settings: &Settings,
    out: &mut dyn Write,
    progress: impl Progress,
) -> Result<Moved, StoreError> {
    match database(settings) {
        Some(pg) => {
            tokio::runtime::Handle::current().block_on(super::pg::export(&pg, out, progress))
        }
        None => Offline::open(&settings.store.path)?.export(out, progress),
    }
}

/// Import an export into the chosen store, which must be empty. Call from a blocking thread.
pub fn import(
    settings: &Settings,
    input: &mut dyn BufRead,
    progress: impl Progress,
) -> Result<Moved, StoreError> {
    match database(settings) {
        Some(pg) => {
            tokio::runtime::Handle::current().block_on(super::pg::import(&pg, input, progress))
        }
        None => self::sled::import(&settings.store.path, input, progress),
    }
}
