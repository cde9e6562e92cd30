//! Membership and shard leases in the PostgreSQL store: the database's transactions are the
//! arbiter. Members heartbeat; each shard's record is claimed, renewed and given back by
//! compare-and-swap, every claim raising its epoch; state changes of a shard are written in a
//! transaction that checks that epoch (the fencing token).

use super::*;
use crate::cluster::{LeaseStore, MemberRow, ShardRow};

#[async_trait::async_trait]
impl LeaseStore for PgQueue {
    type Error = StoreError;

    /// Create the shard records (once per store) and check the store's shard count: fixed for
    /// a store, since every event carries its shard.
    async fn init_shards(&self, shards: u32) -> Result<(), StoreError> {
        let n = shards as i32;
        let rows = self
            .rows(
                "WITH set AS (INSERT INTO meta (name, value) VALUES ('shards', $1::text)
                     ON CONFLICT (name) DO NOTHING RETURNING value)
                 SELECT value FROM set UNION ALL SELECT value FROM meta WHERE name = 'shards'",
                &[&n.to_string()],
            )
            .await?;
        let stored: i32 = rows
            .first()
            .map(|r| col::<String>(r, 0))
            .transpose()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(n);
        if stored != n {
            return Err(StoreError::ShardsFixed {
                stored: stored as u32,
                configured: shards,
            });
        }
        self.rows(
            "INSERT INTO shards (shard) SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
            &[&n],
        )
        .await?;
        Ok(())
    }

    /// This member's heartbeat (its record is created on the first).
    async fn heartbeat(&self, me: &str, api: &str) -> Result<(), StoreError> {
        // Members gone for an hour (killed, never back) are forgotten.
        self.rows(
            "DELETE FROM members WHERE heartbeat_at < now() - interval '1 hour'",
            &[],
        )
        .await?;
        self.rows(
            "INSERT INTO members (id, api, heartbeat_at, version) VALUES ($1, $2, now(), 1)
             ON CONFLICT (id) DO UPDATE SET api = EXCLUDED.api, heartbeat_at = now(),
                 version = members.version + 1",
            &[&me, &api],
        )
        .await
        .map(|_| ())
    }

    /// Remove this member's record (a graceful stop).
    async fn leave(&self, me: &str) -> Result<(), StoreError> {
        self.rows("DELETE FROM members WHERE id = $1", &[&me])
            .await
            .map(|_| ())
    }

    async fn members(&self) -> Result<Vec<MemberRow>, StoreError> {
        self.rows(
            "SELECT id, api, version, extract(epoch FROM now() - heartbeat_at)::float8
                 FROM members ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(MemberRow {
                id: col(r, 0)?,
                api: col(r, 1)?,
                version: col::<i64>(r, 2)? as u64,
                heartbeat_age_s: col(r, 3)?,
            })
        })
        .collect()
    }

    async fn shard_rows(&self) -> Result<Vec<ShardRow>, StoreError> {
        self.rows(
            "SELECT shard, owner, epoch, version, extract(epoch FROM now() - changed_at)::float8
                 FROM shards ORDER BY shard",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(ShardRow {
                shard: col::<i32>(r, 0)? as u32,
                owner: col(r, 1)?,
                epoch: col::<i64>(r, 2)? as u64,
                version: col::<i64>(r, 3)? as u64,
                changed_age_s: col(r, 4)?,
            })
        })
        .collect()
    }

    /// Renew these (shard, epoch) leases of `me`; answers the shards renewed.
    async fn renew(&self, me: &str, leases: &[(u32, u64)]) -> Result<Vec<u32>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let shards: Vec<i32> = leases.iter().map(|l| l.0 as i32).collect();
        let epochs: Vec<i64> = leases.iter().map(|l| l.1 as i64).collect();
        self.rows(
            "UPDATE shards SET version = shards.version + 1, changed_at = now()
                 FROM unnest($2::integer[], $3::bigint[]) AS l(shard, epoch)
                 WHERE shards.shard = l.shard AND shards.epoch = l.epoch AND shards.owner = $1
                 RETURNING shards.shard",
            &[&me, &shards, &epochs],
        )
        .await?
        .iter()
        .map(|r| Ok(col::<i32>(r, 0)? as u32))
        .collect()
    }

    /// Claim a shard whose record still has `version`; answers its new epoch.
    async fn claim(
        &self,
        me: &str,
        shard: u32,
        version: u64,
    ) -> Result<Option<(u64, Option<String>)>, StoreError> {
        let rows = self
            .rows(
                "UPDATE shards SET owner = $1, epoch = shards.epoch + 1,
                     version = shards.version + 1, changed_at = now()
                 FROM (SELECT shard, owner AS previous FROM shards WHERE shard = $2 FOR UPDATE) AS p
                 WHERE shards.shard = p.shard AND shards.version = $3
                 RETURNING shards.epoch, p.previous",
                &[&me, &(shard as i32), &(version as i64)],
            )
            .await?;
        rows.first()
            .map(|r| Ok((col::<i64>(r, 0)? as u64, col::<Option<String>>(r, 1)?)))
            .transpose()
    }

    /// Give shards back (owner cleared, version raised: a peer may take them at once).
    async fn release(&self, me: &str, leases: &[(u32, u64)]) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let shards: Vec<i32> = leases.iter().map(|l| l.0 as i32).collect();
        let epochs: Vec<i64> = leases.iter().map(|l| l.1 as i64).collect();
        self.rows(
            "UPDATE shards SET owner = NULL, version = shards.version + 1, changed_at = now()
             FROM unnest($2::integer[], $3::bigint[]) AS l(shard, epoch)
             WHERE shards.shard = l.shard AND shards.epoch = l.epoch AND shards.owner = $1",
            &[&me, &shards, &epochs],
        )
        .await
        .map(|_| ())
    }

    /// Claim a reconciler's scheduled slot for a shard: true for the one replica that gets it.
    async fn claim_slot(
        &self,
        name: &str,
        shard: u32,
        slot: i64,
        me: &str,
    ) -> Result<bool, StoreError> {
        Ok(!self
            .rows(
                "INSERT INTO reconcile_slots (name, shard, slot, member) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING RETURNING slot",
                &[&name, &(shard as i32), &slot, &me],
            )
            .await?
            .is_empty())
    }

    /// Load the heads of every tenant with pending events in these shards (taken over, or
    /// written by other replicas), and wake them; with the counters read afresh.
    fn hears_wake_ups(&self) -> bool {
        self.inner.hearing.load(Ordering::Acquire)
    }

    async fn load_shards(&self, shards: &[u32]) -> Result<(), StoreError> {
        self.inner.read_heads(shards, None).await
    }

    async fn recount(&self) -> Result<(), StoreError> {
        let (depth, dead) = PgQueue::recount(self).await?;
        let mut mem = lock(&self.inner.mem);
        mem.depth = depth;
        mem.dead = dead;
        Ok(())
    }

    async fn late_reports(&self, shards: &[u32]) -> Result<Vec<TenantId>, StoreError> {
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<i32> = shards.iter().map(|s| *s as i32).collect();
        self.rows(
            "SELECT tenant_id FROM late_reports WHERE shard = ANY($1)",
            &[&list],
        )
        .await?
        .iter()
        .map(|r| col(r, 0))
        .collect()
    }

    async fn forget_late(&self, tenants: &[TenantId]) -> Result<(), StoreError> {
        self.inner
            .exec(
                "DELETE FROM late_reports WHERE tenant_id = ANY($1)",
                &[&tenants],
            )
            .await
            .map(|_| ())
    }
}
