//! A write left waiting on a leader cut off from its peers, whose log the successor's
//! snapshot later replaces, is answered as soon as that leadership ends.

use qvdc_simulation::{stranded_write, SimConfig};

#[test]
fn a_write_stranded_on_a_deposed_leader_is_answered_once_its_leadership_ends() {
    for seed in 0..5 {
        let config = SimConfig {
            seed,
            ..SimConfig::default()
        };
        let outcome = stranded_write::run(&config).unwrap();
        assert_ne!(outcome.old, outcome.new, "seed {seed}");
        // Answered through the successor within a few round trips of the heal, not when the
        // client's call to the old leader timed out (10 s after it was sent).
        assert!(
            outcome.answered_in.as_millis() < 1_000,
            "seed {seed}: {:?}",
            outcome.answered_in
        );
    }
}
