//! Telling a dead leader from a slow one, from the transport alone.
//!
//! A QUIC peer acknowledges what it receives within its maximum ACK delay (25 ms), from its
//! connection driver, whatever its application is doing. So while a request waits for its
//! answer, datagrams this side sent and the peer never acknowledged mean the peer (or the
//! path to it) is gone, while acknowledgements that keep coming mean it is alive and only
//! slow to answer. A host uses the first to look for a new leader within a fraction of a
//! second, and the second to keep a busy leader's session instead of re-dialing it, which
//! would only add a handshake to the leader's load.

use std::time::Duration;

use tokio::time::Instant;

/// How long the agent waits for an acknowledgement of what it sent before it takes the
/// leader for silent and asks another node who leads. Far above a loopback or LAN round
/// trip plus the peer's 25 ms ACK delay; far below a Raft election.
pub const SILENT_AFTER_MS: u64 = 300;
/// How often the transport's counters are looked at while an answer is awaited.
pub const CHECK_EVERY_MS: u64 = 50;

/// Follows one connection's datagram counters while a request waits.
#[derive(Debug, Clone)]
pub struct Silence {
    sent: u64,
    received: u64,
    /// Since when something sent has waited for any datagram from the peer.
    unanswered_since: Option<Instant>,
}

impl Silence {
    /// Starts from the counters as they are before the request is sent.
    pub fn new(sent: u64, received: u64) -> Self {
        Self {
            sent,
            received,
            unanswered_since: None,
        }
    }

    /// Takes the counters as they are `now`; returns how long what this side sent has gone
    /// without any datagram from the peer (zero while the peer keeps answering).
    pub fn observe(&mut self, sent: u64, received: u64, now: Instant) -> Duration {
        if received != self.received {
            self.received = received;
            self.sent = sent;
            self.unanswered_since = None;
            return Duration::ZERO;
        }
        if sent != self.sent {
            self.sent = sent;
            self.unanswered_since.get_or_insert(now);
        }
        self.unanswered_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Whether the peer has left what was sent unanswered for [`SILENT_AFTER_MS`].
    pub fn is_silent(silent_for: Duration) -> bool {
        silent_for >= Duration::from_millis(SILENT_AFTER_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_peer_that_acknowledges_is_never_silent_however_slow_its_answer() {
        let start = Instant::now();
        let mut silence = Silence::new(10, 20);
        // The request goes out, its acknowledgement comes back; then nothing for seconds
        // (the application is slow), with keep-alives answered.
        assert_eq!(silence.observe(11, 20, at(start, 0)), Duration::ZERO);
        assert_eq!(silence.observe(11, 21, at(start, 50)), Duration::ZERO);
        assert_eq!(silence.observe(11, 21, at(start, 900)), Duration::ZERO);
        assert_eq!(silence.observe(12, 21, at(start, 1_000)), Duration::ZERO);
        assert_eq!(silence.observe(12, 22, at(start, 1_050)), Duration::ZERO);
        assert!(!Silence::is_silent(silence.observe(
            12,
            22,
            at(start, 3_000)
        )));
    }

    #[test]
    fn sent_datagrams_left_unanswered_make_the_peer_silent() {
        let start = Instant::now();
        let mut silence = Silence::new(10, 20);
        // The request and then the transport's retransmissions, never acknowledged.
        assert_eq!(silence.observe(11, 20, at(start, 50)), Duration::ZERO);
        assert_eq!(
            silence.observe(12, 20, at(start, 200)),
            Duration::from_millis(150)
        );
        let silent_for = silence.observe(14, 20, at(start, 350));
        assert_eq!(silent_for, Duration::from_millis(300));
        assert!(Silence::is_silent(silent_for));
        // The peer comes back: silence ends at once.
        assert_eq!(silence.observe(14, 21, at(start, 400)), Duration::ZERO);
    }
}
