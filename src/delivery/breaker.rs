//! The outage breaker of one data center, shared by the lanes that report there.
//!
//! Reports that fail for lack of an answer (connection errors, timeouts, 5xx, 429) on
//! consecutive lanes open it: no lane starts until its window ends, and afterwards one lane
//! at a time probes until a report succeeds. A throttle (`Retry-After` on another answer) holds
//! every lane for that long. Times are on the monotonic clock, so a wall-clock jump neither
//! opens nor closes it.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::backoff::Backoff;

/// Consecutive outage failures that open the breaker and switch delivery to one probing lane.
pub const OUTAGE_THRESHOLD: u32 = 2;

#[derive(Debug, Default)]
pub struct Breaker {
    consecutive_outages: u32,
    open_until: Option<Instant>,
    /// While probing, whether the one probing report is out.
    probe_out: bool,
}

impl Breaker {
    /// Consecutive outage failures seen since the last success.
    pub fn consecutive_outages(&self) -> u32 {
        self.consecutive_outages
    }

    /// While probing, only one lane may run.
    pub fn probing(&self) -> bool {
        self.consecutive_outages >= OUTAGE_THRESHOLD
    }

    /// The end of the window in which no lane may start, if it is still ahead of `now`.
    pub fn open_until(&self, now: Instant) -> Option<Instant> {
        self.open_until.filter(|until| *until > now)
    }

    /// May a report go out now? Not while the window is open (the answer is when it ends);
    /// while probing, only one at a time (the others wait `retry`).
    pub fn admit(&mut self, now: Instant, retry: Duration) -> Result<(), Instant> {
        if let Some(until) = self.open_until(now) {
            return Err(until);
        }
        if self.probing() {
            if self.probe_out {
                return Err(now + retry);
            }
            self.probe_out = true;
        }
        Ok(())
    }

    /// A report got through: the platform is back.
    pub fn on_success(&mut self) {
        *self = Breaker::default();
    }

    /// A report admitted while probing ended without a success.
    pub fn probe_ended(&mut self) {
        self.probe_out = false;
    }

    /// A report got no usable answer. From the threshold on, the window grows with the
    /// platform's backoff (and is at least its `Retry-After`).
    pub fn on_outage(
        &mut self,
        now: Instant,
        backoff: &Backoff,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) {
        self.consecutive_outages = self.consecutive_outages.saturating_add(1);
        if self.probing() {
            let window = backoff
                .delay(self.consecutive_outages - OUTAGE_THRESHOLD, rng)
                .max(retry_after.unwrap_or_default());
            self.extend(now + window);
        }
    }

    /// The platform answered but asked every caller to wait.
    pub fn on_throttle(&mut self, now: Instant, retry_after: Duration) {
        self.extend(now + retry_after);
    }

    fn extend(&mut self, until: Instant) {
        self.open_until = Some(self.open_until.map_or(until, |u| u.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::try_new(Duration::from_secs(1), Duration::from_secs(60)).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_threshold_and_closes_after_its_window() {
        let mut b = Breaker::default();
        let mut rng = rand::rng();
        b.on_outage(Instant::now(), &backoff(), None, &mut rng);
        assert!(!b.probing());
        assert_eq!(
            b.open_until(Instant::now()),
            None,
            "one failure is no outage"
        );
        b.on_outage(Instant::now(), &backoff(), None, &mut rng);
        assert!(b.probing());
        let until = b.open_until(Instant::now()).expect("open at the threshold");
        assert!(until <= Instant::now() + backoff().ceiling(0));
        tokio::time::advance(backoff().ceiling(0)).await;
        assert_eq!(b.open_until(Instant::now()), None, "the window has ended");
        assert!(b.probing(), "still one lane until a report succeeds");
        b.on_success();
        assert!(!b.probing());
        assert_eq!(b.consecutive_outages(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_the_window_open_at_least_that_long() {
        let mut b = Breaker::default();
        let mut rng = rand::rng();
        for _ in 0..OUTAGE_THRESHOLD {
            b.on_outage(
                Instant::now(),
                &backoff(),
                Some(Duration::from_secs(120)),
                &mut rng,
            );
        }
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(b.open_until(Instant::now()).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.open_until(Instant::now()).is_none());

        let mut throttled = Breaker::default();
        throttled.on_throttle(Instant::now(), Duration::from_secs(5));
        assert!(!throttled.probing(), "a throttle is not an outage");
        assert!(throttled.open_until(Instant::now()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn while_probing_one_report_goes_out_at_a_time() {
        let mut b = Breaker::default();
        let mut rng = rand::rng();
        for _ in 0..OUTAGE_THRESHOLD {
            b.on_outage(Instant::now(), &backoff(), None, &mut rng);
        }
        let retry = Duration::from_millis(100);
        let until = b
            .admit(Instant::now(), retry)
            .expect_err("closed while open");
        tokio::time::advance(until - Instant::now()).await;
        assert!(b.admit(Instant::now(), retry).is_ok(), "the probe");
        assert!(
            b.admit(Instant::now(), retry).is_err(),
            "a second one waits"
        );
        b.probe_ended();
        assert!(b.admit(Instant::now(), retry).is_ok(), "the next probe");
        b.on_success();
        assert!(b.admit(Instant::now(), retry).is_ok());
        assert!(
            b.admit(Instant::now(), retry).is_ok(),
            "all go once it is closed"
        );
    }
}
