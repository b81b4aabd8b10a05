//! Elections with pre-vote: a healed follower does not depose the leader, and a follower that
//! missed the last entry does not cost the next election a term, and a dead leader's
//! successor is elected in the next term.

use qvdc_simulation::elections;

#[test]
fn a_healed_follower_does_not_depose_the_leader() {
    for seed in 0..5 {
        if let Err(e) = elections::rejoin(seed) {
            panic!("seed {seed}: {e:#}");
        }
    }
}

#[test]
fn a_follower_that_missed_the_last_entry_does_not_cost_a_term() {
    for seed in 0..10 {
        if let Err(e) = elections::missed_entry(seed) {
            panic!("seed {seed}: {e:#}");
        }
    }
}

#[test]
fn a_dead_leader_is_succeeded_in_the_next_term() {
    for seed in 0..20 {
        if let Err(e) = elections::dead_leader(seed, &[]) {
            panic!("seed {seed}: {e:#}");
        }
    }
}
