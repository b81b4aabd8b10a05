//! HA in the deterministic simulation: a host's power loss with a leader crash, an isolated
//! host, an agent killed with its guest running (see `ha_flow`).

use std::time::Duration;

use qvdc_simulation::{ha_flow, Disruption, SimConfig};

fn config(seed: u64, disruption: Disruption) -> SimConfig {
    SimConfig {
        seed,
        disruption,
        ..Default::default()
    }
}

#[test]
fn lost_hosts_vms_run_elsewhere_within_twenty_seconds_and_never_twice() {
    let outcome = ha_flow::run(&config(1, Disruption::Crash)).unwrap();
    assert_eq!(
        outcome.restarts.len(),
        3,
        "three VMs on the host that lost power"
    );
    for took in &outcome.restarts {
        assert!(
            (Duration::from_secs(12)..=Duration::from_secs(20)).contains(took),
            "{took:?}: a restart waits the host's lease out, and ends within 20 s"
        );
    }
    let fenced = outcome
        .trace
        .iter()
        .any(|e| e.contains("host-2") && e.contains("isolation response: stopped"));
    assert!(fenced, "the isolated host stopped its guest itself");
    eprintln!(
        "simulated: power loss -> running elsewhere {:?}; isolation -> {:?}",
        outcome.restarts, outcome.isolation_restart
    );
}

#[test]
fn twenty_seeds_of_leader_crashes_and_isolations_pass() {
    for seed in 0..20 {
        let disruption = if seed % 2 == 0 {
            Disruption::Crash
        } else {
            Disruption::Isolate
        };
        if let Err(e) = ha_flow::run(&config(seed, disruption)) {
            panic!("seed {seed} ({disruption:?}) failed: {e:#}");
        }
    }
}
