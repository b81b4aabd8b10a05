//! A follower that missed more than the kept log catches up by snapshot.

use qvdc_simulation::catch_up;

#[test]
fn a_follower_that_missed_the_purged_log_catches_up_by_snapshot() {
    let outcome = catch_up::run(3).unwrap();
    assert!(
        outcome.leader_purged > outcome.applied_before_crash,
        "{outcome:?}"
    );
    assert!(
        outcome.follower_snapshot >= outcome.leader_purged,
        "{outcome:?}"
    );
    eprintln!("{outcome:?}");
}
