//! Exponential backoff with full jitter, validated once when it is built.
//!
//! Every retry of statusd waits a delay from here: delivery lanes, the outage breaker, brand
//! writes after a conflict, reconciler items. A delay is drawn from `[floor, ceiling]` where the
//! ceiling doubles with each attempt up to the maximum and the floor (a tenth of the initial
//! delay) keeps full jitter from ever drawing a zero wait, so no retry fires in a hot loop.

use std::time::Duration;

use rand::Rng;

/// Why a backoff cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBackoff {
    #[error("the initial delay must be above zero")]
    ZeroInitial,
    #[error("the initial delay ({initial:?}) is above the maximum ({max:?})")]
    InitialAboveMax { initial: Duration, max: Duration },
}

/// A validated backoff policy: `0 < initial <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn try_new(initial: Duration, max: Duration) -> Result<Backoff, InvalidBackoff> {
        if initial.is_zero() {
            return Err(InvalidBackoff::ZeroInitial);
        }
        if initial > max {
            return Err(InvalidBackoff::InitialAboveMax { initial, max });
        }
        Ok(Backoff { initial, max })
    }

    /// A policy fixed in the code, checked when the code is compiled.
    pub const fn fixed(initial: Duration, max: Duration) -> Backoff {
        assert!(
            !initial.is_zero() && initial.as_nanos() <= max.as_nanos(),
            "a fixed backoff needs 0 < initial <= max"
        );
        Backoff { initial, max }
    }

    pub fn initial(&self) -> Duration {
        self.initial
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The largest delay of retry number `attempt` (0 for the first retry):
    /// `min(max, initial * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.initial
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The smallest delay of any retry: a tenth of the initial delay.
    pub fn floor(&self) -> Duration {
        self.initial / 10
    }

    /// A delay for retry number `attempt` of at least half its ceiling, uniform in
    /// `[ceiling/2, ceiling]`: for a shared endpoint whose callers must add up to a known
    /// number of requests per minute, whatever the draw.
    pub fn delay_at_least_half(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let span = ceiling.saturating_sub(half).as_millis() as u64;
        half + Duration::from_millis(if span == 0 {
            0
        } else {
            rng.random_range(0..=span)
        })
    }

    /// A delay for retry number `attempt`, uniform in `[floor, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let floor = self.floor().min(ceiling);
        let span = ceiling.saturating_sub(floor).as_millis() as u64;
        floor
            + Duration::from_millis(if span == 0 {
                0
            } else {
                rng.random_range(0..=span)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn invalid_policies_are_refused() {
        assert_eq!(
            Backoff::try_new(Duration::ZERO, Duration::from_secs(1)),
            Err(InvalidBackoff::ZeroInitial)
        );
        assert!(matches!(
            Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1)),
            Err(InvalidBackoff::InitialAboveMax { .. })
        ));
        assert!(Backoff::try_new(Duration::from_secs(1), Duration::from_secs(1)).is_ok());
    }

    proptest! {
        #[test]
        fn every_delay_lies_between_the_floor_and_the_cap(
            initial_ms in 1u64..10_000,
            extra_ms in 0u64..1_000_000,
            attempt in 0u32..200,
            seed in any::<u64>(),
        ) {
            let initial = Duration::from_millis(initial_ms);
            let max = initial + Duration::from_millis(extra_ms);
            let b = Backoff::try_new(initial, max).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let d = b.delay(attempt, &mut rng);
            prop_assert!(d >= b.floor().min(b.ceiling(attempt)), "{d:?} below the floor");
            prop_assert!(d <= b.ceiling(attempt), "{d:?} above the ceiling");
            prop_assert!(d <= max, "{d:?} above the maximum");
            prop_assert!(!d.is_zero(), "a zero delay is a hot loop");
            let half = b.delay_at_least_half(attempt, &mut rng);
            prop_assert!(half >= b.ceiling(attempt) / 2 && half <= b.ceiling(attempt));
            // The ceiling never shrinks as attempts grow.
            prop_assert!(b.ceiling(attempt) <= b.ceiling(attempt.saturating_add(1)));
        }
    }
}
