//! Followers whose disks are slower than a heartbeat interval: every fsync takes longer than
//! the 50 ms between a leader's heartbeats, as on a busy cloud volume or a spinning disk. The
//! cluster must still commit at the pace of those disks. A leader that gives up on a
//! replication message after one heartbeat interval hears a follower's answer only when
//! the follower's disk happened to be almost done, and each give-up pauses replication.

use std::{sync::Arc, time::Duration};

use anyhow::{ensure, Context};
use qvdc_transport::protocol::{ApiRequest, ApiResponse};
use tokio::time::Instant;

use crate::{
    harness::{self, Faults},
    world::{self, Certs, Shared, SimConfig},
};

/// Every commit of each follower's disk waits this long.
pub const FOLLOWER_DISK: Duration = Duration::from_millis(120);
/// Writes asked of the leader, one after another, while the followers' disks are slow.
const WRITES: usize = 5;
/// The longest any of them may take: a follower's disk commit (one, or two when the write
/// arrives just after one began), a replication round trip and the leader's own commit,
/// with room to spare. A leader that gave up on a follower after a heartbeat interval and
/// then paused replication took 600 ms or more per write here, when it committed at all.
pub const WRITE_TIME_MAX: Duration = Duration::from_millis(500);
/// How long the operator's client keeps trying: long enough that a slow write is measured
/// rather than abandoned.
const PATIENCE: Duration = Duration::from_secs(5);

pub struct SlowFollowers {
    pub leader: u64,
    /// How long each write took, in simulated time.
    pub took: Vec<Duration>,
    pub trace: Vec<String>,
}

pub fn run(seed: u64) -> anyhow::Result<SlowFollowers> {
    let config = SimConfig {
        seed,
        hosts: 1,
        ..Default::default()
    };
    let run = harness::run(&config, script)?;
    let (leader, took) = run.value;
    Ok(SlowFollowers {
        leader,
        took,
        trace: run.trace,
    })
}

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<(u64, Vec<Duration>)> {
    let (_admin, leader, _) = harness::ready(&config, &certs).await?;
    let followers: Vec<u64> = (1..=config.nodes).filter(|i| *i != leader).collect();
    let set_disks = |latency: Duration| -> anyhow::Result<()> {
        let faults = faults.lock().expect("faults lock poisoned");
        for follower in &followers {
            let machine = SimConfig::node_name(*follower);
            faults
                .disks
                .get(&machine)
                .context("a node's disk")?
                .set(latency);
        }
        Ok(())
    };
    set_disks(FOLLOWER_DISK)?;

    let mut client = world::operator(&config, &certs, 1, vec![world::node_addr(leader)])
        .await?
        .with_timeout(PATIENCE);
    let mut took = Vec::new();
    for n in 0..WRITES {
        let create = ApiRequest::PoolCreate {
            request_id: client.new_request_id(),
            spec: world::dir_pool(&format!("patient-{n}")),
            hosts: vec![SimConfig::host_name(1)],
        };
        let started = Instant::now();
        let answer = client.request(create).await;
        ensure!(
            matches!(answer, Ok(ApiResponse::PoolCreated { .. })),
            "write {n} to leader cp{leader}, with followers' disks taking {FOLLOWER_DISK:?} \
             per commit, answered {answer:?}"
        );
        took.push(started.elapsed());
    }

    set_disks(Duration::ZERO)?;
    harness::nodes_agree(&config, &certs).await?;
    Ok((leader, took))
}
