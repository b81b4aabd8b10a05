//! The leader lease at its edge. A leader cut off from its peers, but not from its clients,
//! keeps believing it leads; its lease is all that stops it from answering reads once a
//! successor may have acknowledged writes it never saw. A successor needs the vote of a
//! voter that confirmed the lease, and such a voter refuses candidates for
//! `VOTER_LEASE_MS` after it last heard the leader: the lease is safe if it ends before
//! that, in true time, even with the leader's clock running slow by the drift allowance
//! (`LEADER_LEASE_MS_MAX`).
//!
//! Each round puts the system right on that edge:
//! 1. the leader's lease clock is made to run as slow as the allowance admits;
//! 2. one follower stops hearing the leader (a one-way cut), so it is already standing for
//!    election, asking for pre-votes, when the leader is cut off: the successor is elected
//!    as soon as the other follower's refusal window ends, not an election timeout later;
//! 3. the leader's lease is let lapse, then renewed by one read, so it starts as late as it
//!    can before the cut;
//! 4. the leader is cut off from its peers (clients still reach it);
//! 5. as soon as the others name a successor, a pool is created through them;
//! 6. right after that write is acknowledged, a client that reaches only the old leader asks
//!    it for the pools. It must not answer without the new pool: declining to answer (its
//!    lease ran out and it cannot confirm itself) is correct, a stale answer is not.
//!
//! A lease without the drift allowance (`lease-without-drift-allowance`) or no lease at all
//! (`no-leader-lease`) answers stale within a few seeds; a lease of exactly
//! `LEADER_LEASE_MS_MAX` passes.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context};
use qvdc_cluster::{Client, CLOCK_DRIFT_ALLOWANCE_PERCENT};
use qvdc_transport::protocol::{ApiRequest, ApiResponse};
use tokio::time::Instant;

use crate::{
    harness::{self, ask, change, eventually, status, Action, Faults},
    world::{self, Certs, Shared, SimConfig},
};

/// Rounds per seed: each draws its own election timeouts, so each is another chance at the
/// edge.
const ROUNDS: u64 = 8;
/// How long the reader of the old leader waits for an answer (simulated).
const READ_TIMEOUT_MS: u64 = 1_500;
/// How often the others are asked whether they elected a successor (simulated): a tight
/// loop, so the write follows the election as closely as a client can.
const SUCCESSOR_POLL_MS: u64 = 5;
/// First port offset of this scenario's clients.
const CLIENT_PORTS: u16 = 40;
/// How long one follower goes without hearing the leader before the leader is cut off: past
/// its election timer, so it is asking for pre-votes (which the other follower refuses while
/// it hears the leader).
const STANDING_MS: u64 = 2_000;

/// One round: who was cut off, who succeeded it, and what the old leader answered.
#[derive(Debug)]
pub struct Round {
    pub old: u64,
    pub new: u64,
    /// Simulated time from the cut to the successor's acknowledged write.
    pub cut_to_write: Duration,
    /// Whether the old leader answered the read issued right after that write (then with the
    /// new pool, or the round failed).
    pub answered: bool,
}

pub struct LeaseEdge {
    pub rounds: Vec<Round>,
    pub trace: Vec<String>,
    pub trace_hash: u64,
}

/// Runs the scenario with `config.seed` and `config.bugs`: three nodes, one host.
pub fn run(config: &SimConfig) -> anyhow::Result<LeaseEdge> {
    let config = config.three_nodes_one_host();
    let run = harness::run(&config, script)?;
    Ok(LeaseEdge {
        rounds: run.value,
        trace: run.trace,
        trace_hash: run.trace_hash,
    })
}

/// The slowest lease clock the allowance admits, in thousandths of true time.
pub const DRIFTED_PER_MILLE: u32 = 1000 - CLOCK_DRIFT_ALLOWANCE_PERCENT as u32 * 10;

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<Vec<Round>> {
    let mut admin = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    harness::all_hosts_ready(&mut admin, config.hosts).await?;
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let ports = CLIENT_PORTS + 2 * u16::try_from(round).expect("few rounds");
        rounds.push(
            one_round(&config, &certs, &faults, &mut admin, round, ports)
                .await
                .with_context(|| format!("round {round}"))?,
        );
    }
    Ok(rounds)
}

async fn one_round(
    config: &SimConfig,
    certs: &Certs,
    faults: &Shared<Faults>,
    admin: &mut Client,
    round: u64,
    ports: u16,
) -> anyhow::Result<Round> {
    let old = eventually("a known leader", Duration::from_secs(30), async || {
        Ok(status(admin).await?.leader)
    })
    .await?;
    let machine = SimConfig::node_name(old);
    let others: Vec<u64> = (1..=config.nodes).filter(|i| *i != old).collect();
    // The follower that stops hearing the leader first; which one, the seed decides.
    let standing = others[usize::try_from(config.seed.wrapping_add(round)).unwrap_or(0) % 2];

    let mut reader = world::operator(config, certs, ports, vec![world::node_addr(old)])
        .await?
        .with_timeout(Duration::from_millis(READ_TIMEOUT_MS));
    // The writer talks to the standing follower, the likely successor, so the write needs
    // no passing on.
    let mut majority =
        world::operator(config, certs, ports + 1, vec![world::node_addr(standing)]).await?;
    status(&mut majority).await?; // connected before the cut

    let clock = faults
        .lock()
        .expect("faults lock poisoned")
        .clocks
        .get(&machine)
        .cloned()
        .context("a node that never booted")?;
    clock.set_rate(DRIFTED_PER_MILLE);
    let ripe = vec![(machine.clone(), SimConfig::node_name(standing))];
    change(faults, Action::PartitionOneway(ripe.clone()));
    tokio::time::sleep(Duration::from_millis(STANDING_MS)).await;
    // Let the lease lapse, then renew it: the renewing read's check is where it starts.
    let lapse = 4 * qvdc_cluster::LEADER_LEASE_MS;
    tokio::time::sleep(Duration::from_millis(lapse)).await;
    eventually(
        "a read the leader answers",
        Duration::from_secs(10),
        async || Ok(pool_names(&mut reader).await.ok()),
    )
    .await?;

    faults.lock().expect("faults lock poisoned").isolate = Some(machine.clone());
    let cut = Instant::now();
    let new = successor(&mut majority, old).await?;
    let pool = format!("edge-{round}");
    let create = ApiRequest::PoolCreate {
        request_id: majority.new_request_id(),
        spec: world::dir_pool(&pool),
        hosts: vec![SimConfig::host_name(1)],
    };
    ask(&mut majority, create).await?;
    let cut_to_write = cut.elapsed();

    // Strictly after the acknowledgement: any answer must show the pool.
    let answered = match pool_names(&mut reader).await {
        Ok(names) if names.contains(&pool) => true,
        Ok(names) => bail!(
            "cp{old}, cut off from its peers {} ms earlier with its clock {}% slow, answered \
             a list right after cp{new} acknowledged creating {pool}, without it ({names:?}): \
             its lease outlived its leadership, so the history is not linearizable",
            cut_to_write.as_millis(),
            CLOCK_DRIFT_ALLOWANCE_PERCENT
        ),
        Err(_) => false,
    };

    clock.set_rate(1000);
    change(faults, Action::RepairOneway(ripe));
    faults.lock().expect("faults lock poisoned").heal = Some(machine);
    harness::nodes_agree(config, certs).await?;
    Ok(Round {
        old,
        new,
        cut_to_write,
        answered,
    })
}

/// The successor of `old`, as soon as the node `majority` talks to names one.
async fn successor(majority: &mut Client, old: u64) -> anyhow::Result<u64> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(s) = status(majority).await {
            if let Some(new) = s.leader.filter(|l| *l != old) {
                return Ok(new);
            }
        }
        tokio::time::sleep(Duration::from_millis(SUCCESSOR_POLL_MS)).await;
    }
    bail!("no successor of cp{old} within 30 s")
}

async fn pool_names(client: &mut Client) -> anyhow::Result<Vec<String>> {
    match client.request(ApiRequest::PoolList).await? {
        ApiResponse::Pools(pools) => Ok(pools.into_iter().map(|p| p.spec.name).collect()),
        other => bail!("unexpected {other:?}"),
    }
}
