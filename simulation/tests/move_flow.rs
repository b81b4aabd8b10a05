//! Moving VMs in the deterministic simulation: live and cold migrations, a leader crash and
//! a source host's power loss mid-way, and a host's evacuation for maintenance (see
//! `move_flow`).

use std::time::Duration;

use qvdc_simulation::{move_flow, Disruption, SimConfig};

fn config(seed: u64, disruption: Disruption) -> SimConfig {
    SimConfig {
        seed,
        disruption,
        ..Default::default()
    }
}

#[test]
fn vms_move_live_or_cold_and_survive_failures_mid_move_without_running_twice() {
    let outcome = move_flow::run(&config(1, Disruption::Crash)).unwrap();
    assert!(
        outcome.live_move < Duration::from_secs(5),
        "a live migration of an idle simulated guest took {:?}",
        outcome.live_move
    );
    assert_ne!(outcome.evacuated_to, "host-2");
    eprintln!(
        "simulated: live move {:?}; db evacuated to {}",
        outcome.live_move, outcome.evacuated_to
    );
}

#[test]
fn ten_seeds_of_moves_with_leader_crashes_and_isolations_pass() {
    for seed in 0..10 {
        let disruption = if seed % 2 == 0 {
            Disruption::Crash
        } else {
            Disruption::Isolate
        };
        if let Err(e) = move_flow::run(&config(seed, disruption)) {
            panic!("seed {seed} ({disruption:?}) failed: {e:#}");
        }
    }
}
