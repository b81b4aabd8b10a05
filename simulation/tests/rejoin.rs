//! A follower that was cut off rejoins without unseating the leader (pre-vote).

use qvdc_simulation::rejoin;

#[test]
fn a_healed_follower_does_not_depose_the_leader() {
    for seed in 0..5 {
        if let Err(e) = rejoin::run(seed) {
            panic!("seed {seed}: {e:#}");
        }
    }
}
