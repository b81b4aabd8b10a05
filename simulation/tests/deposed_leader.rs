//! A host left with only a deposed leader keeps its state: the deposed leader's lease has
//! run out, so it does not even accept the host (the fence is never needed).

use qvdc_simulation::{deposed_leader, SimConfig};

#[test]
fn a_deposed_leader_cannot_change_a_host() {
    for seed in 0..5 {
        let config = SimConfig {
            seed,
            ..SimConfig::default()
        };
        let o = deposed_leader::run(&config).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
        assert_ne!(o.old, o.new, "seed {seed}");
        assert_eq!(
            o.refusals, 0,
            "seed {seed}: cp{} accepted the host after it was deposed; its lease should \
             have stopped it before the host's fence had to",
            o.old
        );
    }
}

#[test]
fn the_deposed_leader_scenario_replays_exactly() {
    let config = SimConfig {
        seed: 7,
        ..SimConfig::default()
    };
    let first = deposed_leader::run(&config).unwrap();
    let second = deposed_leader::run(&config).unwrap();
    assert_eq!(first.trace_hash, second.trace_hash);
}
