//! Followers with disks slower than a heartbeat interval still acknowledge writes.

use qvdc_simulation::slow_followers::{self, WRITE_TIME_MAX};

#[test]
fn followers_with_disks_slower_than_a_heartbeat_still_commit_writes() {
    for seed in 0..5 {
        let run = slow_followers::run(seed).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
        for (n, took) in run.took.iter().enumerate() {
            assert!(
                *took < WRITE_TIME_MAX,
                "seed {seed}: write {n} to leader cp{} took {took:?}",
                run.leader
            );
        }
    }
}
