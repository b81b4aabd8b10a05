//! The decisions of the supervision tree as plain state machines over plain data: no tokio,
//! no actors, `now` passed in. Actors feed them inputs and carry out the effects they return.

pub mod liveness;
pub mod network;
pub mod placement;
pub mod pool;
pub mod vm;
pub mod volumes;

use std::time::Duration;

/// Timing knobs of the supervision tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// A host silent for this long is Unreachable and its reports count as Unknown.
    pub stale_after_ms: u64,
    /// A command not confirmed by a report after this long is sent again.
    pub command_retry_ms: u64,
    /// How long the leader waits for a host to answer one command.
    pub command_timeout_ms: u64,
    /// How often pool supervisors reconcile.
    pub tick_ms: u64,
    /// How long a guest gets to shut down before its host destroys it.
    pub vm_shutdown_timeout_ms: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            stale_after_ms: 3_000,
            command_retry_ms: 2_000,
            // Long enough for a guest's shutdown (the host answers once it stopped).
            command_timeout_ms: 40_000,
            tick_ms: 250,
            vm_shutdown_timeout_ms: 30_000,
        }
    }
}

impl Timings {
    pub fn stale_after(&self) -> Duration {
        Duration::from_millis(self.stale_after_ms)
    }
    pub fn command_retry(&self) -> Duration {
        Duration::from_millis(self.command_retry_ms)
    }

    /// How long to wait before resending, after `attempts` unsuccessful commands: a host that
    /// keeps failing is asked less and less often, up to `RETRY_DOUBLINGS_MAX` doublings.
    pub fn retry_after(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(RETRY_DOUBLINGS_MAX);
        self.command_retry() * 2u32.pow(doublings)
    }
}

/// Resends back off exponentially up to this many doublings of the retry interval
/// (2 s × 2^4 = 32 s with the default timings).
pub const RETRY_DOUBLINGS_MAX: u32 = 4;
