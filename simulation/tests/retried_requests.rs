//! Request ids at their edge: requests carried out, their answers lost with their leader,
//! retried with the same ids through the next leader.

use qvdc_simulation::{retried_requests, SimConfig};

#[test]
fn a_create_and_a_reboot_retried_through_a_new_leader_each_happen_once() {
    for seed in 0..5 {
        let config = SimConfig {
            seed,
            ..SimConfig::default()
        };
        let outcome = retried_requests::run(&config).unwrap();
        // The retries reached a new leader: each answer came after its leader crashed (a
        // QUIC idle timeout later), not from the old leader before it.
        for retried in outcome.retried_in {
            assert!(retried.as_millis() > 500, "seed {seed}: {retried:?}");
        }
    }
}
