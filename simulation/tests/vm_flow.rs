//! The VM flow in the deterministic simulation, across leader crashes and isolations.

use qvdc_simulation::{vm_flow, Disruption, SimConfig};

fn config(seed: u64, disruption: Disruption) -> SimConfig {
    SimConfig {
        seed,
        nodes: 3,
        hosts: 3,
        failing_hosts: vec![3],
        disruption,
        impairment: Default::default(),
        ..Default::default()
    }
}

#[test]
fn a_vm_keeps_running_on_its_host_across_a_leader_crash() {
    let outcome = vm_flow::run(&config(1, Disruption::Crash)).unwrap();
    assert_eq!(
        outcome.host, "host-1",
        "ties in free memory go to the first host"
    );
    assert!(
        outcome
            .trace
            .iter()
            .any(|e| e.contains("vm operation done") && e.contains("op=start")),
        "the host started it"
    );
    eprintln!(
        "simulated: vm create -> running {:?}",
        outcome.create_to_running
    );
}

#[test]
fn twenty_seeds_of_crashes_and_isolations_pass() {
    for seed in 0..20 {
        let disruption = if seed % 2 == 0 {
            Disruption::Crash
        } else {
            Disruption::Isolate
        };
        if let Err(e) = vm_flow::run(&config(seed, disruption)) {
            panic!("seed {seed} ({disruption:?}) failed: {e:#}");
        }
    }
}
