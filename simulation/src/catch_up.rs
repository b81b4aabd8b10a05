//! A follower that was down longer than the log is kept catches up by snapshot: while it is
//! crashed, enough pools are created that the leader snapshots and purges the entries the
//! follower is missing; after its restart it must reach the same index and the same state.

use std::{sync::Arc, time::Duration};

use anyhow::{ensure, Context};
use qvdc_raft::LogRetention;
use qvdc_transport::protocol::{ApiRequest, ClusterStatus};

use crate::{
    harness::{self, ask, eventually, status, Faults},
    invariants,
    world::{self, Certs, Disruption, Shared, SimConfig},
};

/// Pools created while the follower is down.
const POOLS: usize = 30;
/// Small thresholds so that a few dozen writes force a snapshot and a purge.
const RETENTION: LogRetention = LogRetention {
    snapshot_after_logs: 10,
    logs_kept_after_snapshot: 0,
};

#[derive(Debug)]
pub struct CatchUp {
    pub follower: u64,
    /// The follower's applied index when it crashed.
    pub applied_before_crash: u64,
    /// The leader's purged index when the follower came back: everything up to here was
    /// only available as a snapshot.
    pub leader_purged: u64,
    /// The follower's snapshot index once it caught up.
    pub follower_snapshot: u64,
    pub trace: Vec<String>,
    pub trace_hash: u64,
}

pub fn run(seed: u64) -> anyhow::Result<CatchUp> {
    run_with_bugs(seed, &[])
}

/// [`run`] with deliberate bugs switched on (a build with the `deliberate-bugs` feature).
pub fn run_with_bugs(seed: u64, bugs: &[crate::Bug]) -> anyhow::Result<CatchUp> {
    let config = SimConfig {
        bugs: bugs.to_vec(),
        seed,
        nodes: 3,
        hosts: 1,
        failing_hosts: vec![],
        disruption: Disruption::Crash,
        retention: Some(RETENTION),
        impairment: Default::default(),
        ..Default::default()
    };
    let run = harness::run(&config, script)?;
    Ok(CatchUp {
        trace: run.trace,
        trace_hash: run.trace_hash,
        ..run.value
    })
}

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<CatchUp> {
    let mut client = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    let leader = eventually("a leader", Duration::from_secs(30), async || {
        Ok(status(&mut client).await?.leader)
    })
    .await?;
    let follower = (1..=config.nodes)
        .find(|n| *n != leader)
        .context("a follower")?;
    let mut direct = world::operator(&config, &certs, 1, vec![world::node_addr(follower)]).await?;
    let applied_before_crash = status(&mut direct).await?.last_applied.unwrap_or(0);
    faults.lock().expect("faults lock poisoned").crash = Some(SimConfig::node_name(follower));

    for i in 0..POOLS {
        let spec = world::dir_pool(&format!("pool-{i}"));
        let create = ApiRequest::PoolCreate {
            request_id: client.new_request_id(),
            spec,
            hosts: vec![SimConfig::host_name(1)],
        };
        eventually("pool create", Duration::from_secs(30), async || {
            Ok(Some(ask(&mut client, create.clone()).await?))
        })
        .await?;
    }
    let leading = eventually(
        "the leader purges what the follower lacks",
        Duration::from_secs(30),
        async || {
            let s = status(&mut client).await?;
            Ok(s.purged_index
                .filter(|p| *p > applied_before_crash)
                .map(|_| s))
        },
    )
    .await?;
    let leader_purged = leading.purged_index.expect("filtered above");

    faults.lock().expect("faults lock poisoned").restart = Some(SimConfig::node_name(follower));
    let caught_up = eventually(
        "the follower catches up",
        Duration::from_secs(60),
        async || {
            let reference = status(&mut client).await?;
            let s = status(&mut direct).await?;
            // At one index, one state: a divergence is a violation now, not a wait.
            let pair = [s.clone(), reference.clone()];
            if let Err(violation) = invariants::same_index_same_state(&pair) {
                return Ok(Some(Err(violation)));
            }
            Ok(same_state(&s, &reference).then(|| Ok(s)))
        },
    )
    .await??;
    harness::nodes_agree(&config, &certs).await?;
    let follower_snapshot = caught_up
        .snapshot_index
        .context("the follower has no snapshot")?;
    ensure!(
        follower_snapshot >= leader_purged,
        "snapshot {follower_snapshot} does not cover purged {leader_purged}"
    );
    Ok(CatchUp {
        follower,
        applied_before_crash,
        leader_purged,
        follower_snapshot,
        trace: Vec::new(),
        trace_hash: 0,
    })
}

fn same_state(follower: &ClusterStatus, leader: &ClusterStatus) -> bool {
    follower.last_applied.is_some()
        && follower.last_applied == leader.last_applied
        && follower.state_digest == leader.state_digest
}
