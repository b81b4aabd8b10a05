//! The leader lease (ADR 6). A leader cut off from its peers keeps believing it leads: Raft
//! does not step it down. A quorum's confirmation lets it act as leader — answer hosts and
//! serve reported state — for [`LEADER_LEASE_MS`] counted from when the confirmation was
//! *asked for*, which is shorter than the time its peers need to elect a successor.
//!
//! This module is the lease's bookkeeping alone: which leadership was confirmed and since
//! when. Asking the quorum is the caller's (`Context::leading`); time is passed in.

use std::sync::Mutex;

use qvdc_transport::protocol::Leadership;
use tokio::time::{Duration, Instant};

/// How long a quorum's confirmation lets the leader answer hosts and reported-state queries
/// without asking again: three quarters of the shortest election timeout, so an isolated
/// leader stops answering before its followers can have elected a successor.
pub(crate) const LEADER_LEASE_MS: u64 = qvdc_raft::ELECTION_TIMEOUT_MS_MIN * 3 / 4;
/// How long a leader waits for a quorum to confirm it before saying it cannot lead.
pub(crate) const LEADER_CONFIRM_TIMEOUT_MS: u64 = 1_000;

// An isolated leader must stop acting before the others can elect a new one.
const _: () = assert!(LEADER_LEASE_MS < qvdc_raft::ELECTION_TIMEOUT_MS_MIN);

/// The last confirmation of this node's leadership.
#[derive(Debug)]
pub(crate) struct Lease {
    length: Duration,
    /// Which leadership a quorum confirmed, and when the confirmation was asked for.
    confirmed: Mutex<Option<(Leadership, Instant)>>,
}

impl Default for Lease {
    fn default() -> Self {
        Self::new(Duration::from_millis(LEADER_LEASE_MS))
    }
}

impl Lease {
    pub(crate) fn new(length: Duration) -> Self {
        Self {
            length,
            confirmed: Mutex::new(None),
        }
    }

    /// Whether `leadership` may act at `now` without asking its peers again. A lease never
    /// carries over into another leadership, not even a later one of the same node: a new
    /// term's first confirmation is also what makes it apply what earlier terms committed.
    pub(crate) fn holds(&self, leadership: Leadership, now: Instant) -> bool {
        let confirmed = self.confirmed.lock().expect("lease lock poisoned");
        confirmed.is_some_and(|(of, at)| {
            of == leadership && now.saturating_duration_since(at) < self.length
        })
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
        (Lease::new(Duration::from_millis(100)), Instant::now())
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
    fn a_clock_reading_before_the_check_holds() {
        // `now` taken just before a concurrent confirmation landed: still within the lease.
        let (lease, start) = lease();
        lease.confirmed(TERM_5, start + ms(5));
        assert!(lease.holds(TERM_5, start));
    }
}
