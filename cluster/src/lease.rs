//! The leader lease (ADR 6). A leader cut off from its peers keeps believing it leads: Raft
//! does not step it down. A quorum's confirmation lets it act as leader — answer hosts and
//! serve reported state — for [`LEADER_LEASE_MS`] counted from when the confirmation was
//! *asked for*, by its own [`Clock`], which is shorter than the time its peers need to elect
//! a successor even if that clock runs slow.
//!
//! This module is the lease's bookkeeping alone: which leadership was confirmed and since
//! when. Asking the quorum is the caller's (`Context::leading`); time is passed in.

use std::sync::{Arc, Mutex};

use qvdc_transport::{
    bugs::{self, Bug},
    protocol::Leadership,
};
use tokio::time::{Duration, Instant};

/// How much slower than its followers' clocks a leader's clock may run with its lease still
/// safe.
pub const CLOCK_DRIFT_ALLOWANCE_PERCENT: u64 = 25;
/// The longest safe lease, by the leader's clock. A successor needs the votes of a quorum,
/// which includes a voter that confirmed the leader when the lease began; such a voter
/// refuses every candidate for `VOTER_LEASE_MS` after it last heard the leader (ADR 12). Less
/// the drift allowance, so that the lease ends first even if the leader's clock runs slow.
pub const LEADER_LEASE_MS_MAX: u64 =
    qvdc_raft::election::VOTER_LEASE_MS * (100 - CLOCK_DRIFT_ALLOWANCE_PERCENT) / 100;
/// How long a quorum's confirmation lets the leader answer hosts and reported-state queries
/// without asking again: half the longest safe lease. The lease is renewed on demand, so a
/// longer one would save few checks, while a shorter one stops a deposed leader sooner; the
/// margin also covers a confirming voter that restarts, forgetting when it heard the
/// leader, later than the lease lasts in true time (200 ms with a clock at the allowance).
/// A voter restarting sooner than that could vote for a successor while the lease holds: a
/// known gap of every lease that voters keep in memory.
pub const LEADER_LEASE_MS: u64 = LEADER_LEASE_MS_MAX / 2;
/// How long a leader waits for a quorum to confirm it before saying it cannot lead.
pub(crate) const LEADER_CONFIRM_TIMEOUT_MS: u64 = 1_000;

// An isolated leader must stop acting before the others can elect a new one: the longest
// lease, stretched in true time by a clock at the allowance, ends within the voters'
// refusal window, and the lease is at most that.
const _: () = assert!(
    LEADER_LEASE_MS_MAX * 100 / (100 - CLOCK_DRIFT_ALLOWANCE_PERCENT)
        <= qvdc_raft::election::VOTER_LEASE_MS
);
const _: () = assert!(LEADER_LEASE_MS <= LEADER_LEASE_MS_MAX);
// A lease shorter than a heartbeat interval would spare no checks.
const _: () = assert!(LEADER_LEASE_MS > qvdc_raft::HEARTBEAT_INTERVAL_MS);

/// The clock a node measures its lease with: the runtime's monotonic clock, unless it was
/// made to run at another rate ([`Clock::set_rate`]) — which only the simulation does, to
/// stand for a node whose clock drifts from its peers'. Cheap to clone; clones share the rate.
#[derive(Debug, Clone, Default)]
pub struct Clock(Arc<Mutex<Rate>>);

#[derive(Debug, Default)]
struct Rate {
    drift: Option<Drift>,
    /// A rate asked for and not yet in effect: it starts at the clock's next reading, taken
    /// on the node's own runtime (a caller on another runtime has other instants).
    asked: Option<u32>,
    /// Where wall-clock time comes from, if not the system: the simulation's clock.
    wall: Option<fn() -> u64>,
}

/// A clock running at `per_mille` thousandths of true time since `true_at`, when it read
/// `local_at`.
#[derive(Debug, Clone, Copy)]
struct Drift {
    true_at: Instant,
    local_at: Instant,
    per_mille: u32,
}

impl Drift {
    fn reading(&self, now: Instant) -> Instant {
        let elapsed = now.saturating_duration_since(self.true_at).as_nanos();
        let local = elapsed * u128::from(self.per_mille) / 1000;
        self.local_at + Duration::from_nanos(u64::try_from(local).unwrap_or(u64::MAX))
    }
}

impl Clock {
    /// What this clock reads now.
    pub fn now(&self) -> Instant {
        let now = Instant::now();
        let mut rate = self.0.lock().expect("clock lock poisoned");
        if let Some(per_mille) = rate.asked.take() {
            let local_at = rate.drift.map_or(now, |d| d.reading(now));
            rate.drift = Some(Drift {
                true_at: now,
                local_at,
                per_mille,
            });
        }
        rate.drift.map_or(now, |d| d.reading(now))
    }

    /// Wall-clock time in milliseconds since the Unix epoch, for the timestamps the leader
    /// stamps on what it records (never for deciding anything).
    pub fn wall_ms(&self) -> u64 {
        if let Some(wall) = self.0.lock().expect("clock lock poisoned").wall {
            return wall();
        }
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Makes [`Clock::wall_ms`] read `wall` instead of the system's clock (the simulation's
    /// time, so that a run is the same byte for byte).
    pub fn set_wall(&self, wall: fn() -> u64) {
        self.0.lock().expect("clock lock poisoned").wall = Some(wall);
    }

    /// From the clock's next reading on, it advances `per_mille` thousandths of a
    /// millisecond per true millisecond (1000: true time), carrying on from where it is.
    pub fn set_rate(&self, per_mille: u32) {
        self.0.lock().expect("clock lock poisoned").asked = Some(per_mille);
    }
}

/// The last confirmation of this node's leadership.
#[derive(Debug)]
pub(crate) struct Lease {
    length: Duration,
    clock: Clock,
    /// Which leadership a quorum confirmed, and when the confirmation was asked for.
    confirmed: Mutex<Option<(Leadership, Instant)>>,
}

impl Lease {
    /// The lease of [`LEADER_LEASE_MS`], measured by `clock`.
    pub(crate) fn measured_by(clock: Clock) -> Self {
        Self::new(Duration::from_millis(LEADER_LEASE_MS), clock)
    }

    pub(crate) fn new(length: Duration, clock: Clock) -> Self {
        Self {
            length,
            clock,
            confirmed: Mutex::new(None),
        }
    }

    /// What the lease's clock reads now: the `now` and `asked` to pass in.
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Whether `leadership` may act at `now` without asking its peers again. A lease never
    /// carries over into another leadership, not even a later one of the same node: a new
    /// term's first confirmation is also what makes it apply what earlier terms committed.
    pub(crate) fn holds(&self, leadership: Leadership, now: Instant) -> bool {
        let length = if bugs::active(Bug::LeaseWithoutDriftAllowance) {
            Duration::from_millis(qvdc_raft::election::VOTER_LEASE_MS)
        } else {
            self.length
        };
        let confirmed = self.confirmed.lock().expect("lease lock poisoned");
        confirmed
            .is_some_and(|(of, at)| of == leadership && now.saturating_duration_since(at) < length)
    }

    /// A quorum confirmed `leadership` in answer to a check begun at `asked`. Checks may
    /// finish out of order: a lease never moves back to an earlier check's start.
    pub(crate) fn confirmed(&self, leadership: Leadership, asked: Instant) {
        let mut confirmed = self.confirmed.lock().expect("lease lock poisoned");
        let at = match *confirmed {
            Some((of, previous)) if of == leadership => previous.max(asked),
            _ => asked,
        };
        *confirmed = Some((leadership, at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM_5: Leadership = Leadership { term: 5, node: 1 };

    fn lease() -> (Lease, Instant) {
        (
            Lease::new(Duration::from_millis(100), Clock::default()),
            Instant::now(),
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_confirmation_no_lease() {
        let (lease, now) = lease();
        assert!(!lease.holds(TERM_5, now));
    }

    #[test]
    fn a_lease_runs_from_when_the_check_was_asked_for_and_ends_at_its_length() {
        let (lease, asked) = lease();
        // The quorum answered 60 ms after the check began: only 40 ms of lease are left.
        lease.confirmed(TERM_5, asked);
        assert!(lease.holds(TERM_5, asked + ms(60)));
        assert!(lease.holds(TERM_5, asked + ms(99)));
        assert!(
            !lease.holds(TERM_5, asked + ms(100)),
            "the lease ends exactly at its length"
        );
        assert!(!lease.holds(TERM_5, asked + ms(10_000)));
    }

    #[test]
    fn a_lease_never_carries_over_into_another_leadership() {
        let (lease, asked) = lease();
        lease.confirmed(TERM_5, asked);
        let next_term = Leadership { term: 6, node: 1 };
        let other_node = Leadership { term: 5, node: 2 };
        assert!(!lease.holds(next_term, asked));
        assert!(!lease.holds(other_node, asked));
        // Confirming the next term replaces the old one's lease.
        lease.confirmed(next_term, asked + ms(10));
        assert!(lease.holds(next_term, asked + ms(10)));
        assert!(!lease.holds(TERM_5, asked + ms(10)));
    }

    #[test]
    fn a_late_answer_to_an_earlier_check_does_not_shorten_the_lease() {
        let (lease, start) = lease();
        lease.confirmed(TERM_5, start + ms(50));
        // A check begun earlier finishes after the later one.
        lease.confirmed(TERM_5, start);
        assert!(
            lease.holds(TERM_5, start + ms(120)),
            "the later check's start still counts"
        );
        assert!(!lease.holds(TERM_5, start + ms(150)));
    }

    #[test]
    fn a_renewed_lease_extends_from_the_new_check() {
        let (lease, start) = lease();
        lease.confirmed(TERM_5, start);
        lease.confirmed(TERM_5, start + ms(90));
        assert!(lease.holds(TERM_5, start + ms(189)));
        assert!(!lease.holds(TERM_5, start + ms(190)));
    }

    #[test]
    fn a_new_leadership_runs_from_its_own_check_even_if_an_older_one_was_later() {
        let (lease, start) = lease();
        lease.confirmed(TERM_5, start + ms(50));
        let next_term = Leadership { term: 6, node: 1 };
        // The next term's check began before the old term's: its lease is its own.
        lease.confirmed(next_term, start);
        assert!(lease.holds(next_term, start + ms(99)));
        assert!(!lease.holds(next_term, start + ms(120)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_clock_stretches_the_lease_in_true_time() {
        let clock = Clock::default();
        let lease = Lease::new(ms(100), clock.clone());
        clock.set_rate(750);
        let asked = lease.now();
        lease.confirmed(TERM_5, asked);
        tokio::time::advance(ms(132)).await;
        assert!(lease.holds(TERM_5, lease.now()), "99 ms by its clock");
        tokio::time::advance(ms(2)).await;
        assert!(!lease.holds(TERM_5, lease.now()), "100.5 ms by its clock");
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_changing_its_rate_never_goes_back() {
        let clock = Clock::default();
        tokio::time::advance(ms(10)).await;
        clock.set_rate(500);
        let before = clock.now();
        tokio::time::advance(ms(100)).await;
        let slow = clock.now();
        assert_eq!(slow - before, ms(50));
        clock.set_rate(2000);
        let fast = clock.now();
        assert_eq!(fast, slow, "a new rate starts where the clock is");
        tokio::time::advance(ms(100)).await;
        assert_eq!(clock.now() - fast, ms(200));
    }

    #[test]
    fn a_clock_reading_before_the_check_holds() {
        // `now` taken just before a concurrent confirmation landed: still within the lease.
        let (lease, start) = lease();
        lease.confirmed(TERM_5, start + ms(5));
        assert!(lease.holds(TERM_5, start));
    }
}
