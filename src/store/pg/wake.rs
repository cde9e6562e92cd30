//! The owner of a shard woken at once when another replica accepted events for it: the intake's
//! transaction sends `NOTIFY` (delivered at COMMIT, only if it commits), and each replica keeps
//! one session of its own that `LISTEN`s, to `store.postgres.direct_url` (a pooler in
//! transaction mode keeps no session; unset, `store.postgres.url`). The periodic round of the
//! pool stays the safety net: a wake-up lost (the session down, a pooler in between) costs at
//! most one `cluster.retry_period`.

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use super::*;

/// The channel every store's replicas listen on; the payload names the store's schema.
pub(super) const CHANNEL: &str = "statusd_wake";
/// Tenants named in one payload at most (PostgreSQL takes up to 8 000 bytes); past it, the
/// payload asks for the heads of every shard held.
const MAX_TENANTS: usize = 150;
/// The wait before the session is opened again after it ended.
const RECONNECT: Duration = Duration::from_secs(1);

/// The payload naming `tenants` (each with its shard) of the store `schema`:
/// `schema|t1@s1,t2@s2,…`, or `schema|*` for more than a payload holds.
pub(super) fn payload(schema: &str, tenants: &[(TenantId, u32)]) -> String {
    if tenants.len() > MAX_TENANTS {
        return format!("{schema}|*");
    }
    let list: Vec<String> = tenants.iter().map(|(t, s)| format!("{t}@{s}")).collect();
    format!("{schema}|{}", list.join(","))
}

/// What a payload asks of the replicas of a store.
#[derive(Debug, PartialEq)]
enum Wake {
    /// Read the heads of these tenants (of the shard named, when it is: a replica that does
    /// not hold it has nothing to do).
    Tenants(Vec<(TenantId, Option<u32>)>),
    /// Read the heads of every shard held.
    All,
    /// A replica's own check that its session hears the store's notifications.
    Ping(String),
}

/// A session's own check: it hears this payload once its `LISTEN` works end to end.
fn ping(schema: &str, token: &str) -> String {
    format!("{schema}|ping:{token}")
}

/// What a payload asks of the replicas of `schema`; nothing for another store's payload, or
/// one not understood.
fn parse(payload: &str, schema: &str) -> Option<Wake> {
    let (of, rest) = payload.split_once('|')?;
    if of != schema {
        return None;
    }
    if rest == "*" {
        return Some(Wake::All);
    }
    if let Some(token) = rest.strip_prefix("ping:") {
        return Some(Wake::Ping(token.to_string()));
    }
    // A tenant without its shard (a payload of an older version) is read whatever its shard.
    rest.split(',')
        .map(|item| match item.split_once('@') {
            Some((t, s)) => Some((t.parse().ok()?, Some(s.parse().ok()?))),
            None => Some((item.parse().ok()?, None)),
        })
        .collect::<Option<Vec<_>>>()
        .map(Wake::Tenants)
}

/// The oldest pending event of each tenant of `$2` in the shards `$1`: one index probe per
/// tenant and shard, whatever its backlog. (Filtering one probe per tenant by the shards
/// instead would walk every pending event of a tenant whose events are in other shards.)
const HEADS_OF_TENANTS: &str = "
SELECT DISTINCT ON (t.tenant_id) h.seq, h.accepted_at_ms, h.account, t.tenant_id
FROM unnest($2::uuid[]) AS t(tenant_id) CROSS JOIN unnest($1::integer[]) AS s(shard)
CROSS JOIN LATERAL (
    SELECT seq, accepted_at_ms, account FROM events
    WHERE state = 'queued' AND shard = s.shard AND tenant_id = t.tenant_id
    ORDER BY seq LIMIT 1) AS h
ORDER BY t.tenant_id, h.seq";

/// The oldest pending event of each tenant with events pending in the shards `$1`: the index
/// of pending events by shard and tenant skipped through, one probe per (shard, tenant), so the
/// cost follows the tenants waiting, not the events.
const HEADS_OF_SHARDS: &str = "
WITH RECURSIVE t(shard, tenant_id) AS (
    SELECT s.shard, f.tenant_id FROM unnest($1::integer[]) AS s(shard)
    CROSS JOIN LATERAL (
        SELECT tenant_id FROM events WHERE state = 'queued' AND shard = s.shard
        ORDER BY tenant_id LIMIT 1) AS f
  UNION ALL
    SELECT t.shard, n.tenant_id FROM t
    CROSS JOIN LATERAL (
        SELECT tenant_id FROM events
        WHERE state = 'queued' AND shard = t.shard AND tenant_id > t.tenant_id
        ORDER BY tenant_id LIMIT 1) AS n
)
SELECT DISTINCT ON (t.tenant_id) h.seq, h.accepted_at_ms, h.account, t.tenant_id FROM t
CROSS JOIN LATERAL (
    SELECT seq, accepted_at_ms, account FROM events
    WHERE state = 'queued' AND shard = t.shard AND tenant_id = t.tenant_id
    ORDER BY seq LIMIT 1) AS h
ORDER BY t.tenant_id, h.seq";

/// The oldest pending event of every tenant with events pending, as `HEADS_OF_SHARDS` over the
/// index of pending events by tenant.
pub(super) const HEADS_OF_ALL: &str = "
WITH RECURSIVE t(tenant_id) AS (
    (SELECT tenant_id FROM events WHERE state = 'queued' ORDER BY tenant_id LIMIT 1)
  UNION ALL
    SELECT n.tenant_id FROM t
    CROSS JOIN LATERAL (
        SELECT tenant_id FROM events WHERE state = 'queued' AND tenant_id > t.tenant_id
        ORDER BY tenant_id LIMIT 1) AS n
)
SELECT h.seq, h.accepted_at_ms, h.account, t.tenant_id FROM t
CROSS JOIN LATERAL (
    SELECT seq, accepted_at_ms, account FROM events
    WHERE state = 'queued' AND tenant_id = t.tenant_id
    ORDER BY seq LIMIT 1) AS h";

/// Keep a `LISTEN` session to `url` until `stop`, opening it again a moment after it ends.
pub(super) async fn listen(
    pg: std::sync::Weak<Pg>,
    url: secrecy::SecretString,
    ca_file: Option<std::path::PathBuf>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let ended = match connection(
            &url,
            "store.postgres.direct_url",
            ca_file.as_deref(),
            Duration::from_secs(5),
            "statusd-listen",
        ) {
            Ok((config, None)) => session(&pg, config, tokio_postgres::NoTls, &stop).await,
            Ok((config, Some(tls))) => session(&pg, config, tls, &stop).await,
            Err(e) => Err(e),
        };
        if stop.is_cancelled() {
            return;
        }
        if let Err(e) = ended {
            tracing::debug!(message = "the wake-up session ended; the periodic round delivers meanwhile", error = %e);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT) => {}
        }
    }
}

/// One session: connect, `LISTEN`, and take in each wake-up until it ends or `stop`.
async fn session<T>(
    pg: &std::sync::Weak<Pg>,
    config: tokio_postgres::Config,
    tls: T,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), StoreError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await.map_err(pg_error)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The connection is driven apart; it hands over each notification.
    let pump = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let listening = client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(pg_error);
    if let Err(e) = listening {
        pump.abort();
        return Err(e);
    }
    // Does the session hear what the store's transactions send? (Through a pooler in
    // transaction mode it does not.) Until it does, and again from the moment it ends, every
    // round reads the heads of every shard held.
    let token = Uuid::new_v4().simple().to_string();
    if let Some(pg) = pg.upgrade() {
        pg.exec(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &ping(&pg.schema, &token)],
        )
        .await?;
    }
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            got = rx.recv() => match got {
                Some(payload) => {
                    let Some(pg) = pg.upgrade() else { break Ok(()) };
                    let asked = match parse(&payload, &pg.schema) {
                        Some(Wake::Ping(t)) if t == token => {
                            // Heard: from now on a round reads only what it claims, and the
                            // wake-ups bring the rest. What came while nobody listened is
                            // read once now.
                            pg.hearing.store(true, Ordering::Release);
                            Wake::All
                        }
                        Some(Wake::Ping(_)) | None => continue,
                        Some(asked) => asked,
                    };
                    if let Err(e) = pg.woken_by_peer(asked).await {
                        tracing::debug!(message = "a wake-up could not be taken in; the periodic round delivers", error = %e);
                    }
                }
                None => break Err(StoreError::Unavailable("the wake-up session ended".into())),
            },
        }
    };
    if let Some(pg) = pg.upgrade() {
        pg.hearing.store(false, Ordering::Release);
    }
    pump.abort();
    result
}

impl Pg {
    /// Events another replica accepted for shards this one may hold: read the heads of those
    /// tenants in the shards held (or of every shard held), and wake them for delivery.
    async fn woken_by_peer(self: &Arc<Self>, asked: Wake) -> Result<(), StoreError> {
        let Some(own) = self.ownership.get() else {
            return Ok(());
        };
        let Wake::Tenants(tenants) = asked else {
            return self.read_heads(&own.owned(), None).await;
        };
        // Tenants of shards held by others are theirs to read. A tenant whose oldest pending
        // event is known already, in a shard held, keeps it: the new events queue behind it,
        // and delivery reads them from the table when it gets there. Only the others are
        // read (so a backlog costs no reads here).
        let (known, unknown): (Vec<TenantId>, Vec<TenantId>) = {
            let mem = lock(&self.mem);
            tenants
                .into_iter()
                .filter(|(_, shard)| shard.is_none_or(|s| own.may_act(s).is_some()))
                .map(|(t, _)| t)
                .partition(|t| {
                    mem.heads
                        .get(t)
                        .is_some_and(|h| own.owns_account(h.account.as_deref()))
                })
        };
        self.wake_tenants(known);
        if unknown.is_empty() {
            return Ok(());
        }
        self.read_heads(&own.owned(), Some(&unknown)).await
    }

    /// Read the heads of the tenants with pending events in `shards` (of these `tenants` only,
    /// when given), and wake each: one found while its shard was not held yet was set aside by
    /// delivery.
    pub(super) async fn read_heads(
        &self,
        shards: &[u32],
        tenants: Option<&[TenantId]>,
    ) -> Result<(), StoreError> {
        if shards.is_empty() {
            return Ok(());
        }
        let shards: Vec<i32> = shards.iter().map(|s| *s as i32).collect();
        let rows = match tenants {
            Some(tenants) => self.rows(HEADS_OF_TENANTS, &[&shards, &tenants]).await?,
            None => self.rows(HEADS_OF_SHARDS, &[&shards]).await?,
        };
        let mut woken = Vec::with_capacity(rows.len());
        {
            let mut mem = lock(&self.mem);
            for r in &rows {
                let tenant: TenantId = col(r, 3)?;
                mem.set_head(tenant, Some(Head::of_row(r)?));
                woken.push(tenant);
            }
        }
        self.wake_tenants(woken);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_its_store_and_tenants_or_asks_for_every_shard() {
        let t: Vec<(TenantId, u32)> = (0..3).map(|s| (Uuid::new_v4(), s)).collect();
        assert_eq!(
            parse(&payload("s1", &t), "s1"),
            Some(Wake::Tenants(
                t.iter().map(|(t, s)| (*t, Some(*s))).collect()
            ))
        );
        // A payload of an older version names tenants only.
        assert_eq!(
            parse(&format!("s1|{}", t[0].0), "s1"),
            Some(Wake::Tenants(vec![(t[0].0, None)]))
        );
        assert_eq!(parse(&format!("s1|{}@x", t[0].0), "s1"), None);
        assert_eq!(parse(&payload("s1", &t), "s2"), None);
        let many: Vec<(TenantId, u32)> = (0..=MAX_TENANTS).map(|_| (Uuid::new_v4(), 99)).collect();
        let p = payload("s1", &many);
        assert!(p.len() < 8000);
        assert_eq!(parse(&p, "s1"), Some(Wake::All));
        assert_eq!(
            parse(&ping("s1", "ab"), "s1"),
            Some(Wake::Ping("ab".into()))
        );
        let most: Vec<(TenantId, u32)> = (0..MAX_TENANTS).map(|_| (Uuid::new_v4(), 999)).collect();
        assert!(payload("s1", &most).len() < 8000);
        assert_eq!(parse("s1|not-a-uuid", "s1"), None);
    }
}
