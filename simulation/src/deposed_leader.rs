//! A leader cut off from the other nodes is deposed, yet keeps believing it leads: Raft does
//! not step it down. Here a host that already obeys the successor — which deleted a pool the
//! host had mounted — is left able to reach only the deposed leader, whose state still has
//! that pool. The deposed leader must not change the host. Two defences stand in its way:
//! its lease (it cannot confirm its leadership, so it does not accept the host) and, behind
//! that, the host's fence (it has seen a higher leadership, so it refuses the lower one).
//! Switching the lease off (`no-leader-lease`) shows the fence refusing; switching both off
//! shows the fencing invariant catching the host obeying the deposed leader.
//!
//! An operator who reaches only the deposed leader must not be told stale news either: the
//! create, the delete and a list asked of the deposed leader after it form a history that
//! must be linearizable. With its lease, the deposed leader does not answer the list.

use std::{sync::Arc, time::Duration};

use anyhow::{ensure, Context};
use qvdc_transport::protocol::{ApiRequest, ApiResponse, Liveness};
use tokio::time::Instant;

use crate::{
    harness::{self, ask, change, eventually, status, Action, Faults},
    linearizability::{self, Operation, Registry, RegistryOp, RegistryRet},
    world::{self, Certs, Disruption, Shared, SimConfig},
};

/// How long the host is left with only the deposed leader to talk to (simulated): long
/// enough for several sessions' worth of attempts (re-dials back off up to a few seconds).
const STRANDED_S: u64 = 10;
/// How long the operator asking the deposed leader waits for an answer (simulated).
const STALE_READ_TIMEOUT_S: u64 = 3;
const HOST: usize = 1;
const POOL: &str = "p";

pub struct Deposed {
    /// The deposed leader and its successor.
    pub old: u64,
    pub new: u64,
    /// How often the host's fence refused the deposed leader (0 while its lease holds).
    pub refusals: usize,
    pub trace: Vec<String>,
    pub trace_hash: u64,
}

/// Runs the scenario with `config.seed` and `config.bugs`: three nodes and one host.
pub fn run(config: &SimConfig) -> anyhow::Result<Deposed> {
    let config = SimConfig {
        nodes: 3,
        hosts: HOST,
        failing_hosts: Vec::new(),
        disruption: Disruption::Isolate,
        ..config.clone()
    };
    // The trace invariants run first: with the fence gone, the fencing invariant names it.
    let run = harness::run(&config, script)?;
    let Stranded {
        old,
        new,
        remounted,
        history,
    } = run.value;
    ensure!(
        !remounted,
        "{} obeyed the deposed leader cp{old}: pool {POOL} was mounted again after cp{new} \
         had deleted it",
        SimConfig::host_name(HOST)
    );
    linearizability::check(&Registry::for_history(&history), &history)
        .map_err(|v| anyhow::anyhow!("the pool registry history: {v}"))?;
    let refusals = run
        .trace
        .iter()
        .filter(|line| line.contains("so its sender is a deposed leader"))
        .count();
    Ok(Deposed {
        old,
        new,
        refusals,
        trace: run.trace,
        trace_hash: run.trace_hash,
    })
}

/// What the script saw: who was deposed, who took over, whether the host's mount table
/// changed while only the deposed leader could reach it, and the operators' history.
struct Stranded {
    old: u64,
    new: u64,
    remounted: bool,
    history: Vec<Operation<Registry>>,
}

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<Stranded> {
    let host = SimConfig::host_name(HOST);
    let mut client = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    harness::all_hosts_ready(&mut client, config.hosts).await?;
    let start = Instant::now();
    let at = || u64::try_from(start.elapsed().as_millis()).expect("a short run");
    let mut history: Vec<Operation<Registry>> = Vec::new();
    let call = at();
    let request_id = client.new_request_id();
    let create = ApiRequest::PoolCreate {
        request_id: request_id.clone(),
        spec: world::dir_pool(POOL),
        hosts: vec![host.clone()],
    };
    ask(&mut client, create).await?;
    let op = RegistryOp::Create {
        name: POOL.into(),
        request_id,
    };
    history.push(Operation::answered(0, call, at(), op, RegistryRet::Created));
    mounted_within(&faults, &host, true, "the pool mounted on the host").await?;

    // Depose the leader: cut it off from the other nodes, not from the host.
    let s = eventually("a known leader", Duration::from_secs(30), async || {
        let s = status(&mut client).await?;
        Ok(s.leader.is_some().then_some(s))
    })
    .await?;
    let old = s.leader.context("filtered above")?;
    let others: Vec<u64> = (1..=config.nodes).filter(|i| *i != old).collect();
    let mut majority = world::operator(
        &config,
        &certs,
        1,
        others.iter().copied().map(world::node_addr).collect(),
    )
    .await?;
    faults.lock().expect("faults lock poisoned").isolate = Some(SimConfig::node_name(old));
    let new = eventually("a successor", Duration::from_secs(60), async || {
        let s = status(&mut majority).await?;
        Ok(s.leader.filter(|l| *l != old))
    })
    .await?;

    // The host moves to the successor, which deletes the pool: the host unmounts it.
    let old_link = vec![(host.clone(), SimConfig::node_name(old))];
    change(&faults, Action::Partition(old_link.clone()));
    harness::host_becomes(&mut majority, &host, Liveness::Ready).await?;
    let call = at();
    let request_id = majority.new_request_id();
    let delete = ApiRequest::PoolDelete {
        request_id: request_id.clone(),
        pool: POOL.into(),
    };
    ask(&mut majority, delete).await?;
    let op = RegistryOp::Delete {
        name: POOL.into(),
        request_id,
    };
    history.push(Operation::answered(1, call, at(), op, RegistryRet::Deleted));

    // An operator who reaches only the deposed leader asks for the pools.
    let mut stranded = world::operator(&config, &certs, 2, vec![world::node_addr(old)])
        .await?
        .with_timeout(Duration::from_secs(STALE_READ_TIMEOUT_S));
    // Strictly after the delete's answer, in the history's millisecond clock.
    tokio::time::sleep(Duration::from_millis(harness::POLL_MS)).await;
    let call = at();
    history.push(match stranded.request(ApiRequest::PoolList).await {
        Ok(ApiResponse::Pools(pools)) => {
            let names = pools.into_iter().map(|p| p.spec.name).collect();
            Operation::answered(2, call, at(), RegistryOp::Read, RegistryRet::Names(names))
        }
        // No answer (the lease at work) tells the operator nothing, stale or not.
        _ => Operation::unknown(2, call, RegistryOp::Read),
    });

    mounted_within(&faults, &host, false, "the pool unmounted by the successor").await?;

    // Strand the host with the deposed leader alone; its state still has the pool there.
    let new_links: Vec<(String, String)> = others
        .iter()
        .map(|i| (host.clone(), SimConfig::node_name(*i)))
        .collect();
    change(&faults, Action::Repair(old_link));
    change(&faults, Action::Partition(new_links.clone()));
    tokio::time::sleep(Duration::from_secs(STRANDED_S)).await;
    let remounted = is_mounted(&faults, &host)?;

    change(&faults, Action::Repair(new_links));
    faults.lock().expect("faults lock poisoned").heal = Some(SimConfig::node_name(old));
    harness::nodes_agree(&config, &certs).await?;
    Ok(Stranded {
        old,
        new,
        remounted,
        history,
    })
}

/// Whether `host`'s simulated mount table holds the pool.
fn is_mounted(faults: &Shared<Faults>, host: &str) -> anyhow::Result<bool> {
    let requested = faults.lock().expect("faults lock poisoned");
    let parts = requested
        .hosts
        .get(host)
        .context("a host that never booted")?;
    Ok(parts
        .mounter
        .mounts()
        .contains(&world::pool_target(host, POOL)))
}

async fn mounted_within(
    faults: &Shared<Faults>,
    host: &str,
    want: bool,
    what: &str,
) -> anyhow::Result<()> {
    eventually(what, Duration::from_secs(30), async || {
        Ok((is_mounted(faults, host)? == want).then_some(()))
    })
    .await
}
