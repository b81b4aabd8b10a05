//! When the tree restarts a child supervisor that stopped on its own: after a pause that
//! doubles with each failure in a row, from [`RESTART_BACKOFF_MS_MIN`] up to
//! [`RESTART_BACKOFF_MS_MAX`], with jitter (`qvdc_transport::backoff`). A child that then ran
//! for [`RESTART_RESET_AFTER_MS`] is healthy again: its next failure starts from the
//! shortest pause.

use std::{collections::BTreeMap, time::Duration};

use qvdc_transport::backoff::Backoff;
use tokio::time::Instant;

pub const RESTART_BACKOFF_MS_MIN: u64 = 100;
pub const RESTART_BACKOFF_MS_MAX: u64 = 5_000;
pub const RESTART_RESET_AFTER_MS: u64 = 30_000;
const RESTART: Backoff = Backoff::from_millis(RESTART_BACKOFF_MS_MIN, RESTART_BACKOFF_MS_MAX);

#[derive(Debug, Clone, Copy)]
struct Record {
    /// Failures in a row.
    failures: u32,
    started_at: Instant,
}

/// Restart bookkeeping by child.
#[derive(Debug)]
pub struct Restarts<K> {
    children: BTreeMap<K, Record>,
}

impl<K: Ord + Clone> Default for Restarts<K> {
    fn default() -> Self {
        Self {
            children: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> Restarts<K> {
    /// `child` stopped at `now`: how long to wait before starting it again.
    pub fn failed(&mut self, child: &K, now: Instant) -> Duration {
        let record = self.children.entry(child.clone()).or_insert(Record {
            failures: 0,
            started_at: now,
        });
        let ran = now.saturating_duration_since(record.started_at);
        if ran >= Duration::from_millis(RESTART_RESET_AFTER_MS) {
            record.failures = 0;
        }
        record.failures += 1;
        RESTART.pause(record.failures)
    }

    /// `child` was started again at `now`.
    pub fn restarted(&mut self, child: &K, now: Instant) {
        if let Some(record) = self.children.get_mut(child) {
            record.started_at = now;
        }
    }

    /// `child` is gone for good (its object was deleted).
    pub fn forget(&mut self, child: &K) {
        self.children.remove(child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pauses_double_up_to_the_maximum() {
        let mut restarts = Restarts::default();
        let t0 = Instant::now();
        let ceilings = [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000];
        for (i, ceiling) in (0..).zip(ceilings) {
            let pause = restarts.failed(&"pool/a", t0 + ms(i * 10));
            restarts.restarted(&"pool/a", t0 + ms(i * 10) + pause);
            assert!(within(pause, ceiling), "failure {i}: {pause:?}");
        }
    }

    /// A pause drawn for this ceiling: in its upper half.
    fn within(pause: Duration, ceiling_ms: u64) -> bool {
        (ms(ceiling_ms / 2)..=ms(ceiling_ms)).contains(&pause)
    }

    #[test]
    fn a_child_that_ran_long_enough_starts_again_from_the_shortest_pause() {
        let mut restarts = Restarts::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            restarts.failed(&"vm/web", t0);
        }
        restarts.restarted(&"vm/web", t0);
        let later = t0 + ms(RESTART_RESET_AFTER_MS);
        assert!(within(
            restarts.failed(&"vm/web", later),
            RESTART_BACKOFF_MS_MIN
        ));
        // One that fails again soon after keeps backing off.
        restarts.restarted(&"vm/web", later);
        assert!(within(restarts.failed(&"vm/web", later + ms(10)), 200));
    }

    #[test]
    fn children_back_off_independently() {
        let mut restarts = Restarts::default();
        let t0 = Instant::now();
        restarts.failed(&"a", t0);
        restarts.failed(&"a", t0);
        assert!(within(restarts.failed(&"b", t0), RESTART_BACKOFF_MS_MIN));
        restarts.forget(&"a");
        assert!(within(restarts.failed(&"a", t0), RESTART_BACKOFF_MS_MIN));
    }
}
