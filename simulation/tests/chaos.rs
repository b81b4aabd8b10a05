//! The default scenario: concurrent operators under faults drawn from the seed, then healing.

use qvdc_simulation::{chaos, FaultKind, SimConfig};

fn config(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        hosts: 10,
        ..SimConfig::default()
    }
}

#[test]
fn a_chaos_run_replays_to_the_same_trace() {
    let first = chaos::run(&config(3)).unwrap();
    let again = chaos::run(&config(3)).unwrap();
    assert_eq!(first.trace_hash, again.trace_hash, "seed 3 did not replay");
    assert!(first.faults.injected >= 10, "{:?}", first.faults);
    assert!(first.operations >= 50, "{} operations", first.operations);
    // Faults are in the trace, so a replay shows what hit the system.
    let injected = first.trace.iter().filter(|l| l.contains("fault injected"));
    assert_eq!(injected.count(), first.faults.injected);
    let other = chaos::run(&config(4)).unwrap();
    assert_ne!(first.trace_hash, other.trace_hash);
}

/// Retention drawn from the seed brings snapshots, their installs on lagging or restarted
/// followers, and log purges into ordinary runs, under the same faults as everything else.
#[test]
fn ordinary_seeds_build_install_and_purge_under_faults() {
    let mut log = qvdc_simulation::LogLifecycle::default();
    for seed in 0..6 {
        let outcome = chaos::run(&config(seed)).unwrap();
        assert!(outcome.faults.injected >= 10, "{:?}", outcome.faults);
        log.add(outcome.log);
    }
    assert!(log.snapshots_built >= 10, "{log:?}");
    assert!(log.snapshots_installed >= 1, "{log:?}");
    assert!(log.purges >= 10, "{log:?}");
}

#[test]
fn only_the_chosen_faults_are_drawn() {
    let mut only = config(5);
    only.chaos.kinds = [FaultKind::HostCrash].into();
    let outcome = chaos::run(&only).unwrap();
    let injected: Vec<&String> = outcome
        .trace
        .iter()
        .filter(|l| l.contains("fault injected"))
        .collect();
    assert!(!injected.is_empty());
    assert!(
        injected.iter().all(|l| l.contains("fault=\"host-crash\"")),
        "{injected:?}"
    );
}

#[test]
fn five_nodes_come_through_the_chaos_and_agree() {
    let five = SimConfig {
        nodes: 5,
        ..config(1)
    };
    let outcome = chaos::run(&five).unwrap();
    assert!(outcome.faults.injected >= 10, "{:?}", outcome.faults);
    // The run checked that all nodes ended at one index with one state; that they were
    // five shows in their start-up lines (restarts after crashes repeat a node's line).
    let started: std::collections::BTreeSet<&str> = outcome
        .trace
        .iter()
        .filter(|l| l.contains("control-plane node started"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("node=")))
        .collect();
    assert_eq!(
        started,
        ["node=1", "node=2", "node=3", "node=4", "node=5"].into(),
        "nodes that started"
    );
}

/// Seeds the sweep once failed on, kept so they keep passing. 442: a live move's answer was
/// lost, then its destination was isolated (isolation response: keep) with the migrated
/// guest on it; the move was given up and the VM started again at the source, while the
/// guest ran on at the destination. The mover now asks the source whether the guest left.
#[test]
fn seeds_that_once_failed_pass() {
    for seed in [442] {
        if let Err(e) = chaos::run(&config(seed)) {
            panic!("chaos seed {seed} failed: {e:#}");
        }
    }
}
