//! `qvsim run` reports every seed, also one that never finishes.

/// A seed that outlives its wall-clock limit (here every seed: the limit is zero) is killed
/// and reported as hung, with its replay command, and the run goes on to the next seed.
#[test]
fn a_seed_that_does_not_finish_is_killed_and_reported_with_its_replay() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_qvsim"))
        .args(["run", "--seeds", "5..7", "--seed-timeout-seconds", "0"])
        .output()
        .expect("qvsim runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for seed in [5, 6] {
        assert!(
            stdout.contains(&format!(
                "seed {seed} FAILED: the run did not finish within 0 s of wall time"
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("replay: qvsim replay --seed {seed} ")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("0 passed, 2 failed"), "{stdout}");
}
