//! `store.max_size`: a bound on the size of the store's files. At the bound, intake is refused
//! (507 `store_full`) while delivery, acknowledgements and compaction go on; delivered events
//! are compacted away at once. sled never shrinks its files, but it reuses the space freed
//! inside them, so intake resumes once a tenth of the backlog at the moment of the bound has
//! been delivered (that space is free inside the files again), or the files are back under 95 %
//! of the bound.

use super::*;

#[derive(Default)]
pub(super) struct Bound {
    /// 0: no bound.
    max: AtomicU64,
    full: std::sync::atomic::AtomicBool,
    depth_at_full: AtomicU64,
}

/// What a check of the bound found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundState {
    Unbounded,
    Room {
        size: u64,
    },
    /// Just reached.
    Reached {
        size: u64,
        max: u64,
    },
    Full {
        size: u64,
    },
    /// Room again after being full.
    Resumed {
        size: u64,
    },
}

impl SledQueue {
    pub fn set_max_size(&self, max: Option<u64>) {
        self.inner
            .bound
            .max
            .store(max.unwrap_or(0), Ordering::Relaxed);
    }

    /// At the bound: intake is refused.
    pub fn is_full(&self) -> bool {
        self.inner.bound.full.load(Ordering::Acquire)
    }

    /// Compare the files with the bound (run once a second); at the bound, delivered events
    /// are compacted away at once.
    pub async fn check_bound(&self) -> Result<BoundState, StoreError> {
        let b = &self.inner.bound;
        let max = b.max.load(Ordering::Relaxed);
        if max == 0 {
            return Ok(BoundState::Unbounded);
        }
        let size = self.size_on_disk();
        let depth = lock(&self.inner.writer).depth;
        if !self.is_full() {
            if size < max {
                return Ok(BoundState::Room { size });
            }
            b.depth_at_full.store(depth, Ordering::Relaxed);
            b.full.store(true, Ordering::Release);
            self.compact_delivered_now().await?;
            return Ok(BoundState::Reached { size, max });
        }
        self.compact_delivered_now().await?;
        let at_full = b.depth_at_full.load(Ordering::Relaxed);
        let freed = at_full.saturating_sub(depth);
        let room = freed >= at_full.div_ceil(10).max(1) || size < max / 100 * 95;
        if room {
            b.full.store(false, Ordering::Release);
            return Ok(BoundState::Resumed { size });
        }
        Ok(BoundState::Full { size })
    }

    /// Remove every delivered event now, whatever the retention.
    async fn compact_delivered_now(&self) -> Result<usize, StoreError> {
        self.compact_delivered_before(now_ms() + 1).await
    }
}
