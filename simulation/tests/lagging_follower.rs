//! Requests that reach only a lagging follower are judged by the leader.

use qvdc_simulation::lagging_follower;

#[test]
fn a_lagging_follower_sends_writes_on_instead_of_judging_them() {
    for seed in 0..5 {
        if let Err(e) = lagging_follower::run(seed) {
            panic!("seed {seed}: {e:#}");
        }
    }
}
