//! Deliberate bugs, for showing that the simulation's checkers catch what they claim to.
//!
//! Each bug is a small, plausible mistake placed in production code behind
//! [`active`]. Without the `deliberate-bugs` feature, [`active`] is a constant `false` and
//! the compiler removes the faulty branches; with it, a simulation run switches one bug on
//! for its own thread (one run is one thread), so parallel runs do not see each other's bugs.

/// A mistake the simulation can be asked to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// The API answers a write once it passes validation against the leader's current
    /// state, without waiting for Raft to commit it.
    AckBeforeCommit,
    /// A leader keeps serving hosts and reads without a quorum confirming it within the
    /// lease: a deposed leader that does not know it yet keeps acting.
    NoLeaderLease,
    /// A host obeys commands and registrations of any leadership, not only of the highest
    /// it has seen.
    SkipFenceCheck,
    /// When a VM's host stops answering, the VM supervisor starts the VM on another host
    /// without waiting for the first one to be confirmed stopped.
    StartVmOnSecondHost,
    /// Releasing a VM forgets its record without its host first removing the VM's id
    /// from the domain: the host then holds a qvdc domain no VM claims.
    ReleaseWithoutHost,
    /// A node that becomes leader names its leadership after the last leader it knew of
    /// instead of itself: its commands carry another node's fencing token.
    LeadershipOfLastLeader,
    /// Snapshots are built without one of the pools: a follower that catches up from one
    /// holds another state than the others at the same index.
    SnapshotDropsAPool,
    /// A node's state machine panics when it applies the delete of a pool: a crash in
    /// production code, for showing that a panicking run is reported as its seed's failure.
    PanicOnPoolDelete,
    /// The leader lease lasts as long as voters refuse candidates after hearing the leader,
    /// leaving no allowance for a leader whose clock runs slower than its followers'.
    LeaseWithoutDriftAllowance,
    /// The request log finds no request: a retry of an operator's write is judged anew,
    /// as if it were another request, instead of getting the first outcome.
    ForgetRequests,
    /// A host reboots a VM for every copy of a reboot request it receives, not once per
    /// request: a reboot retried through a new leader runs twice.
    RebootEveryRetry,
    /// A VM's delete commits once the VM is desired stopped, without its host confirming
    /// the domain is gone: a guest still running on a host cut off keeps running unowned.
    DeleteWithoutHost,
    /// A leader waits for a write's outcome even after its leadership ended: a write whose
    /// entry the node later receives inside a snapshot is never answered, and holds up every
    /// write queued behind it.
    WaitPastLeadership,
    /// HA restarts a lost host's VMs as soon as the host looks unreachable, without waiting
    /// for its lease to lapse and its isolation response to finish.
    RestartBeforeTheLeaseLapses,
    /// A cold move records the VM as its new host's as soon as it begins, without waiting
    /// for the guest to be shut down on its old host.
    ColdMoveWithoutShutdown,
    /// The simulated hypervisor's live migration resumes the guest at the destination
    /// before it pauses it at the source: for showing the hypervisors' own "never twice"
    /// check bites (a model error, not a control-plane one).
    MigrationResumesBeforePause,
    /// The audit trail records a retried request again when it replays the first outcome:
    /// one change, two records.
    AuditRecordsRetries,
    /// The Raft log reports appended entries as flushed when they are queued, before they
    /// reach the disk: a leader counts itself among the nodes holding an entry it may yet
    /// lose.
    FlushReportedEarly,
    /// A live move whose destination is lost is given up without asking the source whether
    /// the guest already left it: the VM is started again at the source while the migrated
    /// guest may run on at the destination.
    MoveGivenUpOnALostDestination,
    /// A live move whose source answers that it has no guest (a migration sent earlier went
    /// over) is given up when the destination's latest report, possibly surveyed before the
    /// guest landed, does not list it: the VM is started again at the source while it runs
    /// at the destination.
    MoveGivenUpWhenTheSourceHasNoGuest,
    /// A node removed from the cluster keeps passing operators' requests on to the leader,
    /// which refuses its certificate: a client that reached it is answered Forbidden, again
    /// and again, and never tries another node.
    RemovedNodePassesRequestsOn,
    /// Elections take no turns: a node says yes to pre-votes while its own candidacy is
    /// under way, and stands even after saying yes to a peer. The followers of a dead
    /// leader then stand at once now and then, and the election takes another term.
    ElectionsWithoutTurns,
    /// Hosts keep no watch for a new leader: they look for one only once a heartbeat to
    /// the dead leader goes unanswered, up to a heartbeat interval after the election.
    NoLeaderWatch,
}

impl Bug {
    pub const ALL: [Bug; 23] = [
        Bug::AckBeforeCommit,
        Bug::NoLeaderLease,
        Bug::SkipFenceCheck,
        Bug::StartVmOnSecondHost,
        Bug::ReleaseWithoutHost,
        Bug::LeadershipOfLastLeader,
        Bug::SnapshotDropsAPool,
        Bug::PanicOnPoolDelete,
        Bug::LeaseWithoutDriftAllowance,
        Bug::ForgetRequests,
        Bug::RebootEveryRetry,
        Bug::DeleteWithoutHost,
        Bug::WaitPastLeadership,
        Bug::RestartBeforeTheLeaseLapses,
        Bug::ColdMoveWithoutShutdown,
        Bug::MigrationResumesBeforePause,
        Bug::AuditRecordsRetries,
        Bug::FlushReportedEarly,
        Bug::MoveGivenUpOnALostDestination,
        Bug::MoveGivenUpWhenTheSourceHasNoGuest,
        Bug::RemovedNodePassesRequestsOn,
        Bug::ElectionsWithoutTurns,
        Bug::NoLeaderWatch,
    ];

    /// The bug's name on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::NoLeaderLease => "no-leader-lease",
            Bug::SkipFenceCheck => "skip-fence-check",
            Bug::StartVmOnSecondHost => "start-vm-on-second-host",
            Bug::ReleaseWithoutHost => "release-without-host",
            Bug::LeadershipOfLastLeader => "leadership-of-last-leader",
            Bug::SnapshotDropsAPool => "snapshot-drops-a-pool",
            Bug::PanicOnPoolDelete => "panic-on-pool-delete",
            Bug::LeaseWithoutDriftAllowance => "lease-without-drift-allowance",
            Bug::ForgetRequests => "forget-requests",
            Bug::RebootEveryRetry => "reboot-every-retry",
            Bug::DeleteWithoutHost => "delete-without-host",
            Bug::WaitPastLeadership => "wait-past-leadership",
            Bug::RestartBeforeTheLeaseLapses => "restart-before-the-lease-lapses",
            Bug::ColdMoveWithoutShutdown => "cold-move-without-shutdown",
            Bug::MigrationResumesBeforePause => "migration-resumes-before-pause",
            Bug::AuditRecordsRetries => "audit-records-retries",
            Bug::FlushReportedEarly => "flush-reported-early",
            Bug::MoveGivenUpOnALostDestination => "move-given-up-on-a-lost-destination",
            Bug::MoveGivenUpWhenTheSourceHasNoGuest => "move-given-up-when-the-source-has-no-guest",
            Bug::RemovedNodePassesRequestsOn => "removed-node-passes-requests-on",
            Bug::ElectionsWithoutTurns => "elections-without-turns",
            Bug::NoLeaderWatch => "no-leader-watch",
        }
    }
}

impl std::str::FromStr for Bug {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Bug::ALL
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                format!("no bug named {name:?}; the bugs are {}", names.join(", "))
            })
    }
}

#[cfg(feature = "deliberate-bugs")]
thread_local! {
    static ACTIVE: std::cell::RefCell<Vec<Bug>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `bug` is switched on for this thread.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "deliberate-bugs")]
    {
        ACTIVE.with(|a| a.borrow().contains(&bug))
    }
    #[cfg(not(feature = "deliberate-bugs"))]
    {
        let _ = bug;
        false
    }
}

/// Switches exactly `bugs` on for this thread.
#[cfg(feature = "deliberate-bugs")]
pub fn inject(bugs: &[Bug]) {
    ACTIVE.with(|a| *a.borrow_mut() = bugs.to_vec());
}
