use qvdc_simulation::{steady, SimConfig};

#[test]
fn a_quiet_cluster_keeps_its_leader_and_its_hosts() {
    for seed in 0..3 {
        let config = SimConfig {
            seed,
            hosts: 3,
            ..Default::default()
        };
        let quiet = steady::run(&config).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
        assert!(quiet.simulated >= config.chaos.duration);
    }
}
