//! Retrying after failures, the one way every part of qvdc does it: a pause that doubles with
//! each failure in a row up to a ceiling, then is drawn at random from its upper half
//! ("equal jitter"), so that many parties failing at the same moment (hosts whose leader
//! died, nodes re-dialing a restarted peer) do not all retry at the same moment again.
//!
//! The randomness comes from this thread's RNG ([`crate::rng`]), which the simulation seeds:
//! a run's retries are the same on every replay.

use std::time::Duration;

use rand::Rng;

/// A retry schedule: from `min` after the first failure, doubling, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    pub const fn from_millis(min: u64, max: u64) -> Self {
        Self::new(Duration::from_millis(min), Duration::from_millis(max))
    }

    /// The ceiling of the pause after `failures` failures in a row (1 or more): `min` doubled
    /// `failures - 1` times, at most `max`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.min.saturating_mul(1 << doublings).min(self.max)
    }

    /// The pause after `failures` failures in a row: between half the ceiling and the
    /// ceiling, at random.
    pub fn pause(&self, failures: u32) -> Duration {
        self.pause_with(failures, &mut crate::rng::ThreadRng)
    }

    /// [`Backoff::pause`] with the randomness from `rng`.
    pub fn pause_with(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(failures);
        let half = ceiling / 2;
        half + rng.gen_range(Duration::ZERO..=ceiling - half)
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;

    #[test]
    fn pauses_double_to_the_ceiling_and_stay_in_its_upper_half() {
        let backoff = Backoff::from_millis(100, 2_000);
        let ceilings: Vec<u64> = (1..=7)
            .map(|n| backoff.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_600, 2_000, 2_000]);
        let mut rng = StdRng::seed_from_u64(7);
        for failures in 1..=10 {
            let ceiling = backoff.ceiling(failures);
            for _ in 0..100 {
                let pause = backoff.pause_with(failures, &mut rng);
                assert!(pause >= ceiling / 2 && pause <= ceiling, "{pause:?}");
            }
        }
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_millis(2_000));
    }

    #[test]
    fn parties_failing_together_spread_out() {
        let backoff = Backoff::from_millis(100, 2_000);
        let mut rng = StdRng::seed_from_u64(1);
        let pauses: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| backoff.pause_with(4, &mut rng)).collect();
        assert!(pauses.len() > 40, "{} distinct pauses of 50", pauses.len());
    }

    #[test]
    fn a_seeded_thread_draws_the_same_pauses() {
        let draw = || {
            crate::rng::seed_thread_rng(42);
            let backoff = Backoff::from_millis(50, 800);
            (1..=6).map(|n| backoff.pause(n)).collect::<Vec<_>>()
        };
        assert_eq!(draw(), draw());
    }
}
