//! Elections with pre-vote (qvdc-raft's `election`), in two scenarios.
//!
//! `rejoin`: a follower cut off from the others, then healed, must not unseat their leader.
//! Without pre-vote it would stand for election in term after term while alone, and on its
//! return its higher term would depose a healthy leader. With pre-vote it asks first, hears
//! no yes while cut off, and so never moves to a new term.
//!
//! `missed_entry`: the leader dies right after a write that one follower missed. Without
//! pre-vote, if that follower times out first it stands, is refused (shorter log) and, having
//! voted for itself, refuses the other follower in that term if its node id is the higher
//! (openraft orders same-term candidacies by node id): the election takes a second term and
//! another timeout. With pre-vote it is told no before it moves, and the up-to-date
//! follower wins the very next term.
//!
//! `dead_leader`: the leader dies. Its two followers time out within a few milliseconds of
//! each other now and then; if both stood, each would vote for itself and neither win, and
//! the election would take another term. The one that said yes to the other's pre-vote lets
//! it run, and the new leader is elected in the next term, soon after the voters' lease.

use std::{sync::Arc, time::Duration};

use anyhow::ensure;
use qvdc_cluster::Client;
use qvdc_transport::protocol::{ApiRequest, ClusterStatus};

use crate::{
    harness::{self, Faults},
    world::{self, Certs, Shared, SimConfig},
};

/// How long the follower stays cut off: many election timeouts.
pub const ISOLATION_MS: u64 = 3_000;

fn config(seed: u64) -> SimConfig {
    // Three nodes (the default); the scripts cut nodes off and crash them themselves.
    SimConfig {
        seed,
        hosts: 1,
        ..Default::default()
    }
}

pub fn rejoin(seed: u64) -> anyhow::Result<Vec<String>> {
    Ok(harness::run(&config(seed), rejoin_script)?.trace)
}

pub fn missed_entry(seed: u64) -> anyhow::Result<Vec<String>> {
    Ok(harness::run(&config(seed), missed_entry_script)?.trace)
}

/// The leader crashes; its successor must lead in the next term. `bugs` are switched on for
/// the run (needs the `deliberate-bugs` feature).
pub fn dead_leader(seed: u64, bugs: &[crate::Bug]) -> anyhow::Result<Vec<String>> {
    let config = SimConfig {
        bugs: bugs.to_vec(),
        ..config(seed)
    };
    Ok(harness::run(&config, dead_leader_script)?.trace)
}

/// The longest a dead leader's successor may take to be elected, in simulated time: the
/// voters' lease and the followers' margin and jitter (410–490 ms), a pre-vote and a vote
/// round trip on the simulated LAN, and the status polls that notice it.
const SUCCESSION_MS_MAX: u64 = 800;

/// Once the hosts are ready: the leader, a client of it alone, and its status.
async fn settled(
    config: &SimConfig,
    certs: &Certs,
) -> anyhow::Result<(u64, Client, ClusterStatus)> {
    let (_, leader, _) = harness::ready(config, certs).await?;
    let mut at_leader = world::operator(config, certs, 1, vec![world::node_addr(leader)]).await?;
    let status = harness::status(&mut at_leader).await?;
    Ok((leader, at_leader, status))
}

async fn rejoin_script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<Vec<String>> {
    let (leader, mut at_leader, before) = settled(&config, &certs).await?;
    let follower = (1..=config.nodes)
        .find(|i| *i != leader)
        .expect("three nodes");

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

async fn missed_entry_script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<Vec<String>> {
    let (leader, mut at_leader, before) = settled(&config, &certs).await?;
    // openraft orders two candidacies of one term by node id: only a lagging candidate with
    // the higher id blocks the other's candidacy in that term, so that one lags.
    let followers: Vec<u64> = (1..=config.nodes).filter(|i| *i != leader).collect();
    let (current, lagging) = (followers[0], followers[1]);

    // Cut the follower off for less than an election timeout, write meanwhile (the leader and
    // the other follower commit it), then kill the leader as the follower comes back.
    faults.lock().expect("faults lock poisoned").isolate = Some(SimConfig::node_name(lagging));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let create = ApiRequest::PoolCreate {
        request_id: at_leader.new_request_id(),
        spec: world::dir_pool("missed"),
        hosts: vec![SimConfig::host_name(1)],
    };
    harness::ask(&mut at_leader, create).await?;
    {
        let mut requested = faults.lock().expect("faults lock poisoned");
        requested.crash = Some(SimConfig::node_name(leader));
        requested.heal = Some(SimConfig::node_name(lagging));
    }

    let survivors = vec![world::node_addr(lagging), world::node_addr(current)];
    let mut majority = world::operator(&config, &certs, 2, survivors).await?;
    let after = harness::eventually("a new leader", Duration::from_secs(30), async || {
        let s = harness::status(&mut majority).await?;
        Ok(s.leader.filter(|l| *l != leader).map(|_| s))
    })
    .await?;
    ensure!(
        after.leader == Some(current) && after.term == before.term + 1,
        "after cp{leader} (term {}) died with an entry cp{lagging} lacked, {:?} leads in term {}; \
         expected cp{current} in term {}",
        before.term,
        after.leader.map(|l| format!("cp{l}")),
        after.term,
        before.term + 1
    );
    Ok(Vec::new())
}

async fn dead_leader_script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<Vec<String>> {
    let (leader, _, before) = settled(&config, &certs).await?;
    let survivors: Vec<_> = (1..=config.nodes)
        .filter(|i| *i != leader)
        .map(world::node_addr)
        .collect();
    let mut majority = world::operator(&config, &certs, 2, survivors).await?;
    faults.lock().expect("faults lock poisoned").crash = Some(SimConfig::node_name(leader));
    let crashed = tokio::time::Instant::now();
    let after = harness::eventually("a new leader", Duration::from_secs(30), async || {
        let s = harness::status(&mut majority).await?;
        Ok(s.leader.filter(|l| *l != leader).map(|_| s))
    })
    .await?;
    let took = crashed.elapsed();
    ensure!(
        after.term == before.term + 1,
        "after cp{leader} (term {}) died, {:?} leads only in term {}, {} ms later: the election \
         took more than one term",
        before.term,
        after.leader.map(|l| format!("cp{l}")),
        after.term,
        took.as_millis()
    );
    ensure!(
        took <= Duration::from_millis(SUCCESSION_MS_MAX),
        "after cp{leader} died, its successor was elected only {} ms later (at most \
         {SUCCESSION_MS_MAX} ms expected)",
        took.as_millis()
    );
    Ok(Vec::new())
}
