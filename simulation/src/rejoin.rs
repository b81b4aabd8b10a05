//! A follower cut off from the others, then healed, must not unseat their leader. Without
//! pre-vote it would stand for election in term after term while alone, and on its return
//! its higher term would depose a healthy leader. With pre-vote (qvdc-raft's `election`) it
//! asks first, hears no yes while cut off, and so never moves to a new term: after the heal
//! the leader and its term are the same as before.

use std::{sync::Arc, time::Duration};

use anyhow::ensure;

use crate::{
    harness::{self, Faults},
    world::{self, Certs, Disruption, Shared, SimConfig},
};

/// How long the follower stays cut off: many election timeouts.
pub const ISOLATION_MS: u64 = 3_000;

pub fn run(seed: u64) -> anyhow::Result<Vec<String>> {
    let config = SimConfig {
        seed,
        nodes: 3,
        hosts: 1,
        failing_hosts: vec![],
        disruption: Disruption::Isolate,
        retention: Default::default(),
        impairment: Default::default(),
        ..Default::default()
    };
    Ok(harness::run(&config, script)?.trace)
}

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<Vec<String>> {
    let mut client = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    harness::all_hosts_ready(&mut client, config.hosts).await?;
    let (leader, follower) = harness::leader_and_follower(&config, &mut client).await?;
    let mut at_leader = world::operator(&config, &certs, 1, vec![world::node_addr(leader)]).await?;
    let before = harness::status(&mut at_leader).await?;

    faults.lock().expect("faults lock poisoned").isolate = Some(SimConfig::node_name(follower));
    tokio::time::sleep(Duration::from_millis(ISOLATION_MS)).await;
    faults.lock().expect("faults lock poisoned").heal = Some(SimConfig::node_name(follower));
    // Long enough for a returning node with a higher term to have deposed the leader.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let after = harness::status(&mut at_leader).await?;
    ensure!(
        after.leader == Some(leader) && after.term == before.term,
        "cp{follower}, cut off for {ISOLATION_MS} ms and healed, disturbed the leader: before \
         cp{leader} in term {}, after {:?} in term {}",
        before.term,
        after.leader.map(|l| format!("cp{l}")),
        after.term
    );
    let mut at_follower =
        world::operator(&config, &certs, 2, vec![world::node_addr(follower)]).await?;
    let rejoined = harness::status(&mut at_follower).await?;
    ensure!(
        rejoined.leader == Some(leader) && rejoined.term == before.term,
        "healed cp{follower} follows {:?} in term {}, not cp{leader} in term {}",
        rejoined.leader.map(|l| format!("cp{l}")),
        rejoined.term,
        before.term
    );
    Ok(Vec::new())
}
