//! Compaction of delivered events and expired idempotency keys.

use super::*;

impl Queue {
    /// Remove delivered events older than the retention and idempotency keys older than
    /// `max(retention, 24h)`. Returns how many events were removed.
    pub fn compact(&self, now_ms: i64) -> Result<usize, StoreError> {
        let retention = self.inner.options.delivered_retention.as_millis() as i64;
        let cutoff = now_ms - retention;
        let idem_cutoff = now_ms - retention.max(IDEMPOTENCY_WINDOW.as_millis() as i64);
        let mut removed = 0;
        loop {
            // Chunks keep the writer lock short so intake is not stalled.
            let keys: Vec<sled::IVec> = self
                .inner
                .tree
                .range(key(b'c', &[])..key(b'c', &[&(cutoff.max(0) as u64).to_be_bytes()]))
                .keys()
                .take(1000)
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                break;
            }
            let _w = lock(&self.inner.writer);
            let mut b = sled::Batch::default();
            for k in &keys {
                let id = uuid_from(&k[9..])?;
                b.remove(event_key(&id));
                b.remove(delivered_marker_key(&id));
                b.remove(k.clone());
            }
            self.inner.tree.apply_batch(b)?;
            removed += keys.len();
        }
        loop {
            let keys: Vec<sled::IVec> = self
                .inner
                .tree
                .range(key(b'j', &[])..key(b'j', &[&(idem_cutoff.max(0) as u64).to_be_bytes()]))
                .keys()
                .take(1000)
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                break;
            }
            let _w = lock(&self.inner.writer);
            let mut b = sled::Batch::default();
            for k in &keys {
                b.remove(key(b'i', &[&k[9..]]));
                b.remove(k.clone());
            }
            self.inner.tree.apply_batch(b)?;
        }
        Ok(removed)
    }
}
