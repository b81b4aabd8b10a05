//! Adopting and releasing a domain qvdc did not create, in the deterministic simulation,
//! across leader crashes and isolations.

use qvdc_simulation::{adoption, Disruption, SimConfig};

fn config(seed: u64, disruption: Disruption) -> SimConfig {
    SimConfig {
        seed,
        nodes: 3,
        hosts: 3,
        disruption,
        ..Default::default()
    }
}

#[test]
fn ten_seeds_of_adoption_and_release_across_leader_loss_pass() {
    for seed in 0..10 {
        let disruption = if seed % 2 == 0 {
            Disruption::Crash
        } else {
            Disruption::Isolate
        };
        match adoption::run(&config(seed, disruption)) {
            Ok(outcome) => eprintln!("seed {seed}: adopted in {:?}", outcome.adopted_in),
            Err(e) => panic!("seed {seed} ({disruption:?}) failed: {e:#}"),
        }
    }
}
