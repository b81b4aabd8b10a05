//! The checkers bite: with one deliberate bug switched on, the chaos scenario fails within a
//! few seeds, and the failure names the invariant that caught it. The same seeds pass
//! without the bug (the CI sweep runs them). Needs `--features deliberate-bugs`.

use qvdc_simulation::{chaos, Bug, SimConfig};

/// Seeds tried per bug before the test gives up on it.
const SEEDS_MAX: u64 = 20;

/// The first seed (from 0) on which the chaos scenario fails with `bugs`, and its error.
fn first_failure(bugs: &[Bug]) -> Option<(u64, String)> {
    (0..SEEDS_MAX).find_map(|seed| {
        let config = SimConfig {
            seed,
            hosts: 10,
            bugs: bugs.to_vec(),
            ..SimConfig::default()
        };
        chaos::run(&config).err().map(|e| (seed, format!("{e:#}")))
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
fn a_leader_without_a_lease_serves_stale_reads() {
    caught(&[Bug::NoLeaderLease], "not linearizable");
}

#[test]
fn a_vm_started_on_a_second_host_is_caught() {
    caught(&[Bug::StartVmOnSecondHost], "runs on");
}
