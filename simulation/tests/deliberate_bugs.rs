//! The checkers bite: with a deliberate bug switched on, a scenario fails within a few
//! seeds, and the failure names the invariant that caught it. The same seeds pass without
//! the bug (the CI sweep and the scenarios' own tests run them). Needs `--features
//! deliberate-bugs`.

use qvdc_simulation::{
    adoption, catch_up, chaos, deposed_leader, elections, ha_flow, lease_edge, move_flow,
    pool_flow, retried_requests, stranded_write, vm_flow, Bug, SimConfig,
};

/// Seeds tried per bug before the test gives up on it.
const SEEDS_MAX: u64 = 20;

fn config(seed: u64, hosts: usize, bugs: &[Bug]) -> SimConfig {
    SimConfig {
        seed,
        hosts,
        bugs: bugs.to_vec(),
        ..SimConfig::default()
    }
}

/// `config` as `qvsim run` shapes a chaos seed: with a node added and removed meanwhile.
fn with_joining_node(config: SimConfig) -> SimConfig {
    SimConfig {
        joining_node: true,
        ..config
    }
}

/// Runs `scenario` from seed 0 until it fails, and asserts the failure names `checker`.
fn caught(bugs: &[Bug], checker: &str, scenario: impl Fn(u64) -> anyhow::Result<()>) {
    caught_by_one_of(bugs, &[checker], scenario);
}

/// [`caught`], where the bug's effects may first meet one of several checkers.
fn caught_by_one_of(bugs: &[Bug], checkers: &[&str], scenario: impl Fn(u64) -> anyhow::Result<()>) {
    let Some((seed, error)) =
        (0..SEEDS_MAX).find_map(|seed| scenario(seed).err().map(|e| (seed, format!("{e:#}"))))
    else {
        panic!("{bugs:?} went unnoticed for {SEEDS_MAX} seeds");
    };
    assert!(
        checkers.iter().any(|checker| error.contains(checker)),
        "{bugs:?} failed seed {seed}, but not by one of {checkers:?}: {error}"
    );
    eprintln!("{bugs:?}: caught on seed {seed}: {error}");
}

/// A chaos run of `config` (one seed whose story the bug needs) fails, by `checker`.
fn caught_on_chaos_seed(config: SimConfig, checker: &str) {
    let (seed, bugs) = (config.seed, config.bugs.clone());
    let Err(error) = chaos::run(&config) else {
        panic!("{bugs:?} went unnoticed on chaos seed {seed}");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains(checker),
        "{bugs:?} failed chaos seed {seed}, but not by {checker:?}: {error}"
    );
}

/// A live move gives up on a lost destination without asking the source whether the guest
/// already left it: the VM runs at both. Chaos seed 442 has that story (a migration's answer
/// lost, the destination then isolated with its guest kept running); the first seeds of the
/// sweep do not, so this one seed is run.
///
/// Not run for now: since hosts keep the connections of nodes that answered (ADR 33), seed
/// 442 no longer has the story, and no seed searched since has (chaos with this test's
/// fixed membership 400..700; with a joining node 0..700 with 10 hosts, 0..300 with 5,
/// 0..300 with host faults only; move-flow and ha-flow 0..100). Run it with `--ignored`
/// once a seed is found again.
#[test]
#[ignore = "seed 442 lost its story when hosts began reusing connections; no seed found since"]
fn a_move_given_up_on_a_lost_destination_runs_the_vm_twice() {
    let bugs = [Bug::MoveGivenUpOnALostDestination];
    caught_on_chaos_seed(config(442, 10, &bugs), "began to run on");
}

/// A live move whose source answers that it has no guest is given up on the destination's
/// latest report, which may predate the guest's arrival: the VM is started again at the
/// source. Chaos seed 96 has that story (a migration sent by a leader that then lost its
/// leadership finishes while its successor sends it again); the sweep's first seeds do not.
#[test]
fn a_move_given_up_when_the_source_has_no_guest_runs_the_vm_twice() {
    let bugs = [Bug::MoveGivenUpWhenTheSourceHasNoGuest];
    caught_on_chaos_seed(with_joining_node(config(96, 10, &bugs)), "began to run on");
}

/// A removed node keeps passing an operator's requests on to a leader that refuses its
/// certificate, so a client that reached it never gets an answer. Chaos seed 85 has the
/// operator connected to the joining node (it led for a while) when the node is removed.
#[test]
fn a_removed_node_that_passes_requests_on_holds_its_clients() {
    let bugs = [Bug::RemovedNodePassesRequestsOn];
    caught_on_chaos_seed(
        with_joining_node(config(85, 10, &bugs)),
        "the joining node removed did not happen",
    );
}

#[test]
fn acknowledging_before_commit_is_not_linearizable() {
    let bugs = [Bug::AckBeforeCommit];
    caught(&bugs, "not linearizable", |seed| {
        chaos::run(&config(seed, 10, &bugs)).map(drop)
    });
}

/// vm-flow cuts the VM's host off for a while; the bug starts the VM elsewhere meanwhile.
/// The VM's disk is on a shared pool, whose lock (modelled since ADR 23) refuses the second
/// start; the checker that sees it is the one for restarts that lean on the lock.
#[test]
fn a_vm_started_on_a_second_host_is_caught() {
    let bugs = [Bug::StartVmOnSecondHost];
    caught(&bugs, "the storage lock refused", |seed| {
        vm_flow::run(&config(seed, 3, &bugs)).map(drop)
    });
}

/// ha-flow isolates a host with an HA VM: restarting the VM before the host's lease lapsed
/// (and it fenced itself) leaves only the storage lock between the VM and a second copy.
#[test]
fn an_ha_restart_before_the_lease_lapses_is_caught() {
    let bugs = [Bug::RestartBeforeTheLeaseLapses];
    caught(&bugs, "whose agent was alive", |seed| {
        ha_flow::run(&config(seed, 4, &bugs)).map(drop)
    });
}

/// A deposed leader without a lease answers an operator from its stale state. Its host's
/// fence still refuses it, so what fails is the history, not the fencing invariant.
#[test]
fn a_deposed_leader_without_a_lease_serves_stale_reads() {
    let bugs = [Bug::NoLeaderLease];
    caught(&bugs, "not linearizable", |seed| {
        deposed_leader::run(&config(seed, 1, &bugs)).map(drop)
    });
}

/// The fence stands behind the lease: a deposed leader gets hold of a host only when its
/// lease is broken too; then a host without its fence obeys it.
#[test]
fn a_host_without_its_fence_obeying_a_deposed_leader_is_caught() {
    let bugs = [Bug::NoLeaderLease, Bug::SkipFenceCheck];
    caught(&bugs, "obeyed command", |seed| {
        deposed_leader::run(&config(seed, 1, &bugs)).map(drop)
    });
}

/// A release that forgets the VM before its host let go of the domain leaves a qvdc domain
/// no VM claims: the host removes it as a stray, and the guest the operator got back is gone.
#[test]
fn a_release_that_skips_the_host_is_caught() {
    let bugs = [Bug::ReleaseWithoutHost];
    caught(&bugs, "qvdc touched it after letting go", |seed| {
        adoption::run(&config(seed, 3, &bugs)).map(drop)
    });
}

/// A new leader that names its leadership after the previous leader takes up a leadership
/// it did not win: its first failover shows it.
#[test]
fn a_leader_under_another_nodes_name_is_caught() {
    let bugs = [Bug::LeadershipOfLastLeader];
    caught(&bugs, "which names another node", |seed| {
        chaos::run(&config(seed, 3, &bugs)).map(drop)
    });
}

/// A follower that misses the purged log catches up from a snapshot; a snapshot missing a
/// pool leaves it with another state than the others at the same index.
#[test]
fn a_snapshot_that_drops_a_pool_is_caught() {
    let bugs = [Bug::SnapshotDropsAPool];
    caught(&bugs, "hold different states", |seed| {
        catch_up::run_with_bugs(seed, &bugs).map(drop)
    });
}

/// The chaos scenario draws its log retention from the seed, so ordinary seeds build and
/// install snapshots under faults: the same bug fails them too, not only the catch-up test.
/// Where a node that installed such a snapshot leads, the lost pool's VM is never defined,
/// which the convergence check may see before the nodes' digests are compared; or, its
/// state missing a VM's restart elsewhere, it starts the VM where it was, and the shared
/// storage's lock refuses what the lease did not call for.
#[test]
fn a_snapshot_that_drops_a_pool_fails_ordinary_chaos_seeds() {
    let bugs = [Bug::SnapshotDropsAPool];
    let checkers = [
        "hold different states",
        "not defined on its host yet",
        "the storage lock refused",
    ];
    caught_by_one_of(&bugs, &checkers, |seed| {
        chaos::run(&config(seed, 10, &bugs)).map(drop)
    });
}

/// A lease as long as the voters' refusal window, with no allowance for a slow clock,
/// outlives the leadership when the successor is elected the moment that window ends.
#[test]
fn a_lease_without_the_drift_allowance_is_caught_at_its_edge() {
    let bugs = [Bug::LeaseWithoutDriftAllowance];
    caught(&bugs, "its lease outlived its leadership", |seed| {
        lease_edge::run(&config(seed, 1, &bugs)).map(drop)
    });
}

#[test]
fn a_leader_without_a_lease_is_caught_at_the_edge() {
    let bugs = [Bug::NoLeaderLease];
    caught(&bugs, "its lease outlived its leadership", |seed| {
        lease_edge::run(&config(seed, 1, &bugs)).map(drop)
    });
}

/// A retry of a committed create, sent to the next leader, is judged anew without the
/// request log: "already exists", although this very request created the pool.
#[test]
fn a_request_log_that_forgets_is_caught_by_a_retry_through_a_new_leader() {
    let bugs = [Bug::ForgetRequests];
    caught(&bugs, "the request was judged twice", |seed| {
        retried_requests::run(&config(seed, 1, &bugs)).map(drop)
    });
}

/// The same retry, recorded again in the audit trail when its outcome is replayed: one
/// change, two records.
#[test]
fn an_audit_trail_that_records_retries_is_caught() {
    let bugs = [Bug::AuditRecordsRetries];
    caught(
        &bugs,
        "a retry was recorded as a change of its own",
        |seed| retried_requests::run(&config(seed, 1, &bugs)).map(drop),
    );
}

/// A reboot the host carried out for a leader that crashed, asked again by the next one:
/// without the host's record of the request, the guest boots twice.
#[test]
fn a_host_that_reboots_for_every_retry_is_caught() {
    let bugs = [Bug::RebootEveryRetry];
    caught(&bugs, "the host carried out a request twice", |seed| {
        retried_requests::run(&config(seed, 1, &bugs)).map(drop)
    });
}

/// A delete that does not wait for the VM's host answers while the host is cut off.
#[test]
fn a_delete_that_skips_the_host_is_caught() {
    let bugs = [Bug::DeleteWithoutHost];
    caught(&bugs, "a delete must wait for the host", |seed| {
        vm_flow::run(&config(seed, 3, &bugs)).map(drop)
    });
}

/// A panic in production code fails its seed alone: `qvsim run` names each panicking seed
/// with the panic and its replay command, keeps running the other seeds, and exits with a
/// failure instead of aborting. (In one process the panic would abort it: tearing down the
/// panicking node's runtime panics again in a destructor.)
#[test]
fn a_panicking_seed_is_reported_with_its_replay_and_the_others_still_run() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_qvsim"))
        .args(["run", "--seeds", "0..3", "--bug", "panic-on-pool-delete"])
        .output()
        .expect("qvsim runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{:?}: {stdout}",
        output.status
    );
    for seed in 0..3 {
        let report = stdout
            .lines()
            .skip_while(|l| !l.starts_with(&format!("seed {seed} FAILED:")))
            .take(2)
            .collect::<Vec<_>>();
        assert_eq!(report.len(), 2, "seed {seed} not reported: {stdout}");
        assert!(
            report[0].contains("the state machine cannot apply a pool's delete"),
            "{}",
            report[0]
        );
        assert!(
            report[1].contains(&format!("replay: qvsim replay --seed {seed} "))
                && report[1].contains("--bug panic-on-pool-delete"),
            "{}",
            report[1]
        );
    }
    assert!(stdout.contains("0 passed, 3 failed"), "{stdout}");
}

/// A leader that waits for a write's outcome after its leadership ended never answers a
/// write whose entry it later received inside its successor's snapshot.
#[test]
fn waiting_for_a_write_past_the_leadership_is_caught() {
    let bugs = [Bug::WaitPastLeadership];
    caught(&bugs, "kept waiting for a write's outcome", |seed| {
        stranded_write::run(&config(seed, 1, &bugs)).map(drop)
    });
}

/// move-flow moves a VM cold to a host that takes no live migrations: recording the move
/// before the guest is shut down has the new host start it while the old one still runs
/// it, which only the storage lock stops.
#[test]
fn a_cold_move_before_the_shutdown_is_caught() {
    let bugs = [Bug::ColdMoveWithoutShutdown];
    // Seeds from 20: the first seed whose story has the race is 28 (hosts' connection
    // reuse moved the earlier ones' timing off it).
    caught(&bugs, "whose agent was alive", |seed| {
        move_flow::run(&config(seed + 20, 4, &bugs)).map(drop)
    });
}

/// The simulated hypervisors check "never twice" themselves whenever a guest starts to
/// run: a live migration that resumes the copy before pausing the original is caught.
#[test]
fn a_migration_that_resumes_before_it_pauses_is_caught() {
    let bugs = [Bug::MigrationResumesBeforePause];
    caught(&bugs, "began to run on", |seed| {
        move_flow::run(&config(seed, 4, &bugs)).map(drop)
    });
}

/// Without turns, the followers of a dead leader stand at once now and then and split the
/// votes: the election takes another term.
#[test]
fn elections_without_turns_cost_a_term() {
    let bugs = [Bug::ElectionsWithoutTurns];
    caught(&bugs, "took more than one term", |seed| {
        elections::dead_leader(seed, &bugs).map(drop)
    });
}

/// Without the leader watch, hosts find a crashed leader's successor only when a heartbeat
/// to the dead one goes unanswered: the pool's view comes back a heartbeat interval late.
#[test]
fn hosts_without_a_leader_watch_come_back_late() {
    let bugs = [Bug::NoLeaderWatch];
    caught(&bugs, "did not follow the new leader", |seed| {
        pool_flow::view_back_after_crash(seed, &bugs).map(drop)
    });
}
