//! A client that first reached a follower moves to the leader the follower named; a client
//! whose only node dies under it gets its error when its timeout ends.

use qvdc_simulation::passed_on;

#[test]
fn a_client_moves_to_the_leader_its_request_was_passed_on_to() {
    for seed in 0..5 {
        if let Err(e) = passed_on::run(seed) {
            panic!("seed {seed}: {e:#}");
        }
    }
}
