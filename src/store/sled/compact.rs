//! Compaction of delivered events and expired idempotency keys.

use super::*;

impl SledQueue {
    /// Remove delivered events older than the retention and idempotency keys older than
    /// `max(retention, 24h)`, in chunks written through the writer thread so intake waits for one
    /// chunk at most. Returns how many events were removed.
    pub async fn compact(&self, now_ms: i64) -> Result<usize, StoreError> {
        let (cutoff, idem_cutoff) =
            compaction_cutoffs(now_ms, self.inner.options.delivered_retention);
        let removed = self.compact_delivered_before(cutoff).await?;
        while self
            .write(move |core, _| core.compact_idempotency_keys(idem_cutoff))
            .await?
            > 0
        {}
        Ok(removed)
    }
}

impl SledQueue {
    /// Remove the events delivered before `cutoff_ms`, chunk by chunk.
    pub(super) async fn compact_delivered_before(
        &self,
        cutoff_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        loop {
            let n = self
                .write(move |core, _| core.compact_delivered(cutoff_ms))
                .await?;
            if n == 0 {
                return Ok(removed);
            }
            removed += n;
        }
    }
}

/// Keys removed by one compaction step.
const COMPACTION_CHUNK: usize = 5000;

/// The part of a `c` or `j` key after its prefix and 8-byte time.
fn after_time(k: &[u8]) -> Result<&[u8], StoreError> {
    k.get(9..)
        .ok_or_else(|| StoreError::Corrupt(format!("time-ordered key of {} bytes", k.len())))
}

impl Core {
    fn keys_before(&self, prefix: u8, cutoff_ms: i64) -> Result<Vec<::sled::IVec>, StoreError> {
        self.tree
            .range(key(prefix, &[])..key(prefix, &[&(cutoff_ms.max(0) as u64).to_be_bytes()]))
            .keys()
            .take(COMPACTION_CHUNK)
            .map(|k| k.map_err(StoreError::from))
            .collect()
    }

    fn compact_delivered(&self, cutoff_ms: i64) -> Result<Wrote, StoreError> {
        let keys = self.keys_before(b'c', cutoff_ms)?;
        let mut b = ::sled::Batch::default();
        for k in &keys {
            let id = uuid_from(after_time(k)?)?;
            b.remove(event_key(&id));
            b.remove(delivered_marker_key(&id));
            b.remove(k.clone());
        }
        self.tree.apply_batch(b)?;
        Ok(Wrote {
            count: keys.len(),
            wake: Vec::new(),
        })
    }

    fn compact_idempotency_keys(&self, cutoff_ms: i64) -> Result<Wrote, StoreError> {
        let keys = self.keys_before(b'j', cutoff_ms)?;
        let mut b = ::sled::Batch::default();
        for k in &keys {
            b.remove(key(b'i', &[after_time(k)?]));
            b.remove(k.clone());
        }
        self.tree.apply_batch(b)?;
        Ok(Wrote {
            count: keys.len(),
            wake: Vec::new(),
        })
    }
}
