//! The checkers bite: with a deliberate bug switched on, a scenario fails within a few
//! seeds, and the failure names the invariant that caught it. The same seeds pass without
//! the bug (the CI sweep and the scenarios' own tests run them). Needs `--features
//! deliberate-bugs`.

use qvdc_simulation::{chaos, deposed_leader, Bug, SimConfig};

/// Seeds tried per bug before the test gives up on it.
const SEEDS_MAX: u64 = 20;

fn config(seed: u64, bugs: &[Bug]) -> SimConfig {
    SimConfig {
        seed,
        hosts: 10,
        bugs: bugs.to_vec(),
        ..SimConfig::default()
    }
}

/// The first seed (from 0) on which the chaos scenario fails with `bugs`, and its error.
fn first_failure(bugs: &[Bug]) -> Option<(u64, String)> {
    (0..SEEDS_MAX).find_map(|seed| {
        chaos::run(&config(seed, bugs))
            .err()
            .map(|e| (seed, format!("{e:#}")))
    })
}

fn caught(bugs: &[Bug], checker: &str) {
    let Some((seed, error)) = first_failure(bugs) else {
        panic!("{bugs:?} went unnoticed for {SEEDS_MAX} seeds");
    };
    assert!(
        error.contains(checker),
        "{bugs:?} failed seed {seed}, but not by {checker:?}: {error}"
    );
    eprintln!("{bugs:?}: caught on seed {seed}: {error}");
}

#[test]
fn acknowledging_before_commit_is_not_linearizable() {
    caught(&[Bug::AckBeforeCommit], "not linearizable");
}

#[test]
fn a_vm_started_on_a_second_host_is_caught() {
    caught(&[Bug::StartVmOnSecondHost], "runs on");
}

/// A deposed leader without a lease answers an operator from its stale state. Its host's
/// fence still refuses it, so what fails is the history, not the fencing invariant.
#[test]
fn a_deposed_leader_without_a_lease_serves_stale_reads() {
    deposed_caught(&[Bug::NoLeaderLease], "not linearizable");
}

/// The fence stands behind the lease: a deposed leader gets hold of a host only when its
/// lease is broken too; then a host without its fence obeys it.
#[test]
fn a_host_without_its_fence_obeying_a_deposed_leader_is_caught() {
    deposed_caught(
        &[Bug::NoLeaderLease, Bug::SkipFenceCheck],
        "executed a command of leadership",
    );
}

fn deposed_caught(bugs: &[Bug], checker: &str) {
    let (seed, error) = (0..SEEDS_MAX)
        .find_map(|seed| {
            deposed_leader::run(&config(seed, bugs))
                .err()
                .map(|e| (seed, format!("{e:#}")))
        })
        .unwrap_or_else(|| panic!("{bugs:?} went unnoticed for {SEEDS_MAX} seeds"));
    assert!(
        error.contains(checker),
        "{bugs:?} failed seed {seed}, but not by {checker:?}: {error}"
    );
}
