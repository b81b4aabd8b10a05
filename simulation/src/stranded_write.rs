//! A write stranded on a deposed leader. A leader cut off from its peers still accepts a
//! write: it appends the entry and waits for a quorum that cannot answer. Meanwhile the
//! others elect a successor, which commits enough to build a snapshot and purge its log
//! behind it. When the cut heals, the old leader steps down and, its log too far behind,
//! receives the successor's snapshot: unless the install happens to truncate it as a
//! conflict, the entry it was waiting for is gone without ever being applied or overwritten
//! on that node, so Raft never answers it.
//!
//! The old leader must answer the stranded write anyway, as soon as its leadership ends:
//! "not the leader" sends the client on to the successor with the same request id, which
//! settles whether the write happened. A node that kept waiting (`wait-past-leadership`)
//! leaves the client hanging until its transport gives up on the call, and, worse, holds up
//! every later write it is asked to propose: all writes queue behind the stranded one, for
//! good (this is how chaos seed 103 with membership changes stalled: a leader that lost and
//! regained its leadership never committed another operator's write).

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context};
use qvdc_raft::LogRetention;
use qvdc_transport::facts::Fact;
use qvdc_transport::protocol::{ApiRequest, ApiResponse};
use tokio::time::Instant;

use crate::{
    harness::{self, ask, change, eventually, status, Action, Faults},
    world::{self, Certs, Shared, SimConfig},
};

/// Writes the successor commits while the old leader is cut off: with a snapshot every
/// three entries and none kept behind it, enough to purge the entry the old leader appended.
const WRITES: usize = 6;
/// How long after the cut heals the stranded write must be answered (simulated): the old
/// leader steps down within a heartbeat or two of hearing its successor, and the client's
/// retry through the successor is one more round trip and one commit. A node that waits on
/// answers only when the client's call times out, 10 s after it was sent.
const ANSWER_BOUND: Duration = Duration::from_secs(2);
/// First port offset of this scenario's clients.
const CLIENT_PORTS: u16 = 50;
const STRANDED_POOL: &str = "stranded";

pub struct StrandedWrite {
    /// The leader cut off with the write, and its successor.
    pub old: u64,
    pub new: u64,
    /// Simulated time from the heal to the stranded write's answer.
    pub answered_in: Duration,
    pub trace: Vec<String>,
    pub trace_hash: u64,
}

/// Runs the scenario with `config.seed` and `config.bugs`: three nodes, one host, and a
/// snapshot every three entries with nothing kept behind it.
pub fn run(config: &SimConfig) -> anyhow::Result<StrandedWrite> {
    let config = SimConfig {
        retention: Some(LogRetention {
            snapshot_after_logs: 3,
            logs_kept_after_snapshot: 0,
        }),
        ..config.three_nodes_one_host()
    };
    let run = harness::run(&config, script)?;
    let (old, new, answered_in, healed_ms) = run.value;
    // The write took the path the scenario is about only if the old leader caught up by
    // its successor's snapshot, which replaced the entry it had appended.
    let installed = run.facts.iter().any(|(at_ms, fact)| {
        matches!(fact, Fact::SnapshotInstalled { node, .. } if *node == old) && *at_ms >= healed_ms
    });
    if !installed {
        bail!("cp{old} did not install a snapshot after the cut healed: the write never stranded");
    }
    Ok(StrandedWrite {
        old,
        new,
        answered_in,
        trace: run.trace,
        trace_hash: run.trace_hash,
    })
}

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<(u64, u64, Duration, u64)> {
    let all = world::node_addrs(config.nodes);
    let mut admin = world::operator(&config, &certs, CLIENT_PORTS, all).await?;
    harness::all_hosts_ready(&mut admin, config.hosts).await?;
    let old = eventually("a known leader", Duration::from_secs(30), async || {
        Ok(status(&mut admin).await?.leader)
    })
    .await?;
    let others: Vec<u64> = (1..=config.nodes).filter(|n| *n != old).collect();
    let mut stranded = world::operator(
        &config,
        &certs,
        CLIENT_PORTS + 1,
        vec![world::node_addr(old)],
    )
    .await?
    .with_timeout(Duration::from_secs(60));
    let mut successors = world::operator(
        &config,
        &certs,
        CLIENT_PORTS + 2,
        others.iter().map(|n| world::node_addr(*n)).collect(),
    )
    .await?;
    // The client of the old leader has its connection up before the cut, so its write
    // arrives at once.
    let _ = stranded.request(ApiRequest::ClusterStatus).await?;

    let links: Vec<(String, String)> = others
        .iter()
        .map(|n| (SimConfig::node_name(old), SimConfig::node_name(*n)))
        .collect();
    change(&faults, Action::Partition(links.clone()));
    let write = ApiRequest::PoolCreate {
        request_id: stranded.new_request_id(),
        spec: world::dir_pool(STRANDED_POOL),
        hosts: vec![SimConfig::host_name(1)],
    };
    let stranded_write = async {
        let answer = stranded.request(write).await;
        (answer, Instant::now())
    };
    let successor = async {
        let new = eventually("a successor", Duration::from_secs(30), async || {
            Ok(status(&mut successors).await?.leader.filter(|n| *n != old))
        })
        .await?;
        for i in 0..WRITES {
            let create = ApiRequest::PoolCreate {
                request_id: successors.new_request_id(),
                spec: world::dir_pool(&format!("after-{i}")),
                hosts: vec![SimConfig::host_name(1)],
            };
            ask(&mut successors, create).await?;
        }
        change(&faults, Action::Repair(links.clone()));
        let healed_ms = turmoil::sim_elapsed().map_or(0, |at| at.as_millis() as u64);
        anyhow::Ok((new, Instant::now(), healed_ms))
    };
    let ((answer, answered_at), healed) = tokio::join!(stranded_write, successor);
    let (new, healed_at, healed_ms) = healed?;
    let answer = answer
        .with_context(|| format!("the write stranded on deposed cp{old} was never answered"))?;
    if !matches!(answer, ApiResponse::PoolCreated { .. }) {
        bail!("the write stranded on deposed cp{old} was answered {answer:?}");
    }
    if answered_at <= healed_at {
        bail!("the write sent to cp{old} was answered before the cut healed: it never stranded");
    }
    let answered_in = answered_at - healed_at;
    if answered_in > ANSWER_BOUND {
        bail!(
            "the write stranded on deposed cp{old} was answered {answered_in:?} after the cut \
             healed (bound {ANSWER_BOUND:?}): a leader kept waiting for a write's outcome after \
             its leadership ended"
        );
    }
    // The retry through the successor was answered "created" (checked above), not "already
    // exists": the write happened once. Every node holds it, with the successor's writes.
    harness::nodes_agree(&config, &certs).await?;
    Ok((old, new, answered_in, healed_ms))
}
