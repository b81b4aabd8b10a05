//! The decisions of the supervision tree as plain state machines over plain data: no tokio,
//! no actors, `now` passed in. Actors feed them inputs and carry out the effects they return.

pub mod adoption;
pub mod ha;
pub mod liveness;
pub mod moves;
pub mod network;
pub mod objects;
pub mod placement;
pub mod pool;
pub mod protocols;
pub mod restarts;
pub mod strays;
pub mod vm;
pub mod volumes;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use qvdc_raft::{model::OrdMap, DesiredState};
use qvdc_transport::backoff::Backoff;
use qvdc_transport::protocol::{
    CommandId, HostCommand, HostError, Leadership, NetworkReport, PoolReport, VmReport,
};

use tokio::time::Instant;

/// Why a command sent to a host did not succeed: the host's own typed error, or why no
/// answer came.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// The host carried it out and failed, or refused it.
    #[error("{0}")]
    Host(HostError),
    #[error("host is not connected")]
    NotConnected,
    #[error("host {0} has no supervisor")]
    NoSupervisor(String),
    #[error("could not deliver command: {0}")]
    Undelivered(String),
    #[error("host did not answer within {0} ms")]
    NoAnswer(u64),
    #[error("the supervision tree stopped before the host answered")]
    Stopped,
}

/// A host's refusal with the hypervisor's or OS's words, for tests.
#[cfg(test)]
pub(crate) fn failed(message: &str) -> CommandError {
    CommandError::Host(HostError::new(
        qvdc_transport::protocol::HostErrorKind::Failed,
        message,
    ))
}

/// What one host's heartbeat says it has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostReports {
    pub pools: Vec<PoolReport>,
    pub vms: Vec<VmReport>,
    /// Whether `vms` is the host's domain list: false while its hypervisor has not listed
    /// them yet, when no VM may take "not reported" for "gone".
    pub vms_known: bool,
    pub networks: Vec<NetworkReport>,
}

/// A command one object's core wants sent, and what its answer goes back to within the
/// object (`tag`).
#[derive(Debug, Clone, PartialEq)]
pub struct Order<T> {
    pub host: String,
    pub command: HostCommand,
    pub tag: T,
}

/// One object the tree supervises — a pool with its volumes, a VM, a network — as the one
/// generic supervisor drives it: the actor hands it its record when the desired state
/// changes, each host's report on every heartbeat, each command's answer, and asks it after
/// each input (and when `next_due` falls) what to send. Nothing here waits or does I/O.
pub trait Core: Send + Sized + 'static {
    /// Its entry in the desired state.
    type Record: Clone + PartialEq + Send + 'static;
    /// What one host reports of it.
    type Report: Clone + Send + 'static;
    type View: Send + 'static;
    /// What a command's answer goes back to within the object.
    type Tag: Send + 'static;
    /// What it is, for logs: "pool", "VM", "network".
    const KIND: &'static str;

    /// Every object of this kind in the desired state, by name.
    fn records(desired: &DesiredState) -> &OrdMap<String, Self::Record>;
    /// The names of the objects of this kind assigned to `host`.
    fn of_host(desired: &DesiredState, host: &str) -> Vec<String>;
    /// This kind's part of a host's reports, for object `name`.
    fn report(reports: &HostReports, name: &str) -> Option<Self::Report>;
    /// Whether the reports say anything about this kind (a missing report then means
    /// "not there").
    fn reported(_reports: &HostReports) -> bool {
        true
    }
    fn new(
        record: &Self::Record,
        desired: &DesiredState,
        ids: CommandIds,
        timings: Timings,
    ) -> Self;

    fn name(&self) -> &str;
    /// The hosts whose reports it takes.
    fn hosts(&self) -> Vec<String>;
    fn set_record(&mut self, record: Self::Record);
    fn observe(&mut self, host: &str, at: Instant, report: Option<Self::Report>);
    fn command_done(&mut self, tag: Self::Tag, id: CommandId, outcome: Result<(), CommandError>);
    fn tick(&mut self, now: Instant) -> Vec<Order<Self::Tag>>;
    /// When a tick may next act differently without an input.
    fn next_due(&self, now: Instant) -> Option<Instant>;
    fn view(&self, now: Instant) -> Self::View;
}

/// Where the commands of one leadership get their ids: one counter shared by every core of
/// the tree (cheap to clone), so no two commands of a leadership share an id and a host's
/// log names each command once.
#[derive(Debug, Clone)]
pub struct CommandIds {
    leadership: Leadership,
    next: Arc<AtomicU64>,
}

impl CommandIds {
    pub fn new(leadership: Leadership) -> Self {
        Self {
            leadership,
            next: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The leadership every id carries: the fencing token of its command.
    pub fn leadership(&self) -> Leadership {
        self.leadership
    }

    pub fn next(&self) -> CommandId {
        CommandId {
            leadership: self.leadership,
            seq: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// A counter of its own, for a core on its own (a stale view, a test).
impl From<Leadership> for CommandIds {
    fn from(leadership: Leadership) -> Self {
        Self::new(leadership)
    }
}

/// Timing knobs of the supervision tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// A host silent for this long is Unreachable and its reports count as Unknown.
    pub stale_after_ms: u64,
    /// A command not confirmed by a report after this long is sent again.
    pub command_retry_ms: u64,
    /// How long the leader waits for a host to answer one command.
    pub command_timeout_ms: u64,
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

    /// When a command sent at `sent_at`, the `attempts`-th in a row, may be sent again.
    pub fn resend_at(&self, sent_at: Instant, attempts: u32) -> Instant {
        sent_at + self.retry_after(attempts)
    }

    /// How long to wait before resending, after `attempts` unsuccessful commands: a host that
    /// keeps failing is asked less and less often, up to `RETRY_DOUBLINGS_MAX` doublings.
    /// The schedule's ceiling, without jitter: cores are pure functions of their inputs and
    /// time, and each object's resends are already spread by when its own command went out.
    pub fn retry_after(&self, attempts: u32) -> Duration {
        let most = self.command_retry() * 2u32.pow(RETRY_DOUBLINGS_MAX);
        Backoff::new(self.command_retry(), most).ceiling(attempts)
    }
}

/// Resends back off exponentially up to this many doublings of the retry interval
/// (2 s × 2^4 = 32 s with the default timings).
pub const RETRY_DOUBLINGS_MAX: u32 = 4;

/// The earliest of `deadlines` still ahead of `now`: when a core's next tick may act
/// differently from a tick now. Deadlines already past are left out: what they allowed was
/// either done by the tick at `now` or waits for an input (a host that is silent).
pub(crate) fn next_after(
    now: Instant,
    deadlines: impl IntoIterator<Item = Instant>,
) -> Option<Instant> {
    deadlines.into_iter().filter(|&t| t > now).min()
}

/// Checks that a core's `next_due` is honest: a supervisor ticks it only after inputs and when
/// the alarm rings, and that must send exactly what ticking every millisecond sends.
#[cfg(test)]
pub(crate) mod alarm_check {
    use std::time::Duration;

    use tokio::time::Instant;

    /// One way to drive a core: `input` is a host's heartbeat (called every `report_every_ms`,
    /// from 0), `tick` returns the sequence numbers of the commands it sent.
    pub(crate) struct Drive<C> {
        pub report_every_ms: u64,
        pub until_ms: u64,
        pub input: fn(&mut C, Instant),
        pub tick: fn(&mut C, Instant) -> Vec<u64>,
        pub next_due: fn(&C, Instant) -> Option<Instant>,
    }

    impl<C> Drive<C> {
        /// (ms, seq) of every command sent, ticking every millisecond (`event_driven` false)
        /// or after every heartbeat and at `next_due` only.
        pub(crate) fn sends(&self, mut core: C, event_driven: bool) -> Vec<(u64, u64)> {
            let t0 = Instant::now();
            let mut sent = Vec::new();
            let mut ms = 0;
            while ms <= self.until_ms {
                if ms % self.report_every_ms == 0 {
                    (self.input)(&mut core, t0 + Duration::from_millis(ms));
                }
                let now = t0 + Duration::from_millis(ms);
                sent.extend((self.tick)(&mut core, now).into_iter().map(|seq| (ms, seq)));
                ms = if event_driven {
                    let report = (ms / self.report_every_ms + 1) * self.report_every_ms;
                    let due = (self.next_due)(&core, now)
                        .map(|at| at.duration_since(t0).as_nanos().div_ceil(1_000_000) as u64);
                    assert!(due.is_none_or(|due| due > ms), "due at {due:?}, now {ms}");
                    due.map_or(report, |due| due.min(report))
                } else {
                    ms + 1
                };
            }
            sent
        }

        /// Both ways send the same commands at the same moments, and the alarm mattered: without
        /// it (heartbeats only) the resends would come later.
        pub(crate) fn check(&self, core: impl Fn() -> C) {
            let every_ms = self.sends(core(), false);
            assert!(
                every_ms.len() >= 3,
                "too few commands to tell: {every_ms:?}"
            );
            assert_eq!(self.sends(core(), true), every_ms);
            let heartbeats_only = Drive {
                report_every_ms: self.report_every_ms,
                until_ms: self.until_ms,
                input: self.input,
                tick: self.tick,
                next_due: |_, _| None,
            };
            assert_ne!(
                heartbeats_only.sends(core(), true),
                every_ms,
                "resends must fall between heartbeats for this check to mean anything"
            );
        }
    }
}
