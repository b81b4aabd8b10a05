//! The walking-skeleton scenario: hosts register, an operator creates a `dir` pool on every
//! host (one of which cannot mount it), waits for the aggregate, takes the leader away
//! (crash or isolation), sees the same aggregate from the new leader, and brings the old
//! leader back, which rejoins.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, ensure};
use qvdc_cluster::Client;
use qvdc_transport::protocol::{ApiRequest, ApiResponse, Health, PoolView};
use tokio::time::Instant;

use crate::{
    harness::{self, ask, eventually, status, Faults},
    world::{self, Certs, Shared, SimConfig},
};

const POOL: &str = "shared";

/// What a run measured, in simulated time, and its event trace.
#[derive(Debug)]
pub struct Outcome {
    pub trace: Vec<String>,
    pub trace_hash: u64,
    /// The aggregate first seen complete.
    pub view: PoolView,
    /// The aggregate seen from the new leader after the old one was taken away.
    pub view_after_failover: PoolView,
    pub create_to_aggregate: Duration,
    pub crash_to_aggregate: Duration,
    pub crashed_node: u64,
}

struct Measured {
    view: PoolView,
    view_after_failover: PoolView,
    create_to_aggregate: Duration,
    crash_to_aggregate: Duration,
    crashed_node: u64,
}

/// Runs the scenario for `config.seed`. Fails if any step of the flow does not hold.
pub fn run(config: &SimConfig) -> anyhow::Result<Outcome> {
    let run = harness::run(config, operator_script)?;
    let measured = run.value;
    Ok(Outcome {
        trace: run.trace,
        trace_hash: run.trace_hash,
        view: measured.view,
        view_after_failover: measured.view_after_failover,
        create_to_aggregate: measured.create_to_aggregate,
        crash_to_aggregate: measured.crash_to_aggregate,
        crashed_node: measured.crashed_node,
    })
}

/// The longest a pool's view may take to come back from a crashed leader's successor, in
/// simulated time: the election (410–490 ms after the dead leader's last message, and
/// the round trips to win it), then each host's move, registration and report, which must
/// follow the election at once, not a heartbeat interval later.
pub const VIEW_BACK_MS_MAX: u128 = 900;

/// The flow with the leader crashed, on `seed` with `bugs`: fails unless the pool's whole
/// view is back from the new leader within [`VIEW_BACK_MS_MAX`] of the crash. Returns how
/// long it took.
pub fn view_back_after_crash(seed: u64, bugs: &[crate::Bug]) -> anyhow::Result<Duration> {
    let config = SimConfig {
        seed,
        nodes: 3,
        hosts: 3,
        failing_hosts: vec![3],
        disruption: crate::Disruption::Crash,
        bugs: bugs.to_vec(),
        ..Default::default()
    };
    let took = run(&config)?.crash_to_aggregate;
    ensure!(
        took.as_millis() <= VIEW_BACK_MS_MAX,
        "the pool's view came back {} ms after the leader crashed (at most {VIEW_BACK_MS_MAX} \
         ms expected): the hosts did not follow the new leader when it was elected",
        took.as_millis()
    );
    Ok(took)
}

/// The aggregate once every assigned host has a fresh report and the healthy ones are up.
async fn settled_view(
    client: &mut Client,
    expected_healthy: usize,
) -> anyhow::Result<Option<PoolView>> {
    let ApiResponse::Pool(view) = ask(client, ApiRequest::PoolShow { name: POOL.into() }).await?
    else {
        bail!("pool show answered with something else");
    };
    let known = view.hosts.iter().all(|h| h.health != Health::Unknown);
    Ok((known && view.healthy_hosts.len() == expected_healthy).then_some(view))
}

async fn operator_script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<Measured> {
    let mut client = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    let hosts: Vec<String> = (1..=config.hosts).map(SimConfig::host_name).collect();
    let expected_healthy = config.hosts - config.failing_hosts.len();

    harness::all_hosts_ready(&mut client, config.hosts).await?;

    let spec = world::dir_pool(POOL);
    let created = Instant::now();
    let create = ApiRequest::PoolCreate {
        request_id: client.new_request_id(),
        spec,
        hosts: hosts.clone(),
    };
    ask(&mut client, create.clone()).await?;
    // As if the answer had been lost: the same request again gets the same answer.
    let again = ask(&mut client, create).await?;
    ensure!(
        matches!(again, ApiResponse::PoolCreated { .. }),
        "a retried create answered {again:?}"
    );
    let view = eventually("pool aggregate", Duration::from_secs(30), async || {
        settled_view(&mut client, expected_healthy).await
    })
    .await?;
    let create_to_aggregate = created.elapsed();
    check_aggregate(&view, &config)?;

    let disrupted = harness::take_leader_away(&config, &certs, &mut client, &faults).await?;
    let (before, leader, new_leader) = (disrupted.before, disrupted.leader, disrupted.after);
    let (mut majority, disrupted_at) = (disrupted.majority, disrupted.at);
    let after = eventually(
        "aggregate from the new leader",
        Duration::from_secs(60),
        async || settled_view(&mut majority, expected_healthy).await,
    )
    .await?;
    let crash_to_aggregate = disrupted_at.elapsed();
    ensure!(
        after.health == view.health
            && after.healthy_hosts == view.healthy_hosts
            && after.failed_hosts == view.failed_hosts,
        "aggregate changed across failover: {view:?} vs {after:?}"
    );

    harness::bring_back(&config, &faults, disrupted.machine);
    let applied = new_leader.last_applied;
    let mut rejoined = world::operator(&config, &certs, 1, vec![world::node_addr(leader)]).await?;
    eventually(
        "the old leader rejoins and catches up",
        Duration::from_secs(60),
        async || {
            let s = status(&mut rejoined).await?;
            Ok(
                (s.leader.is_some() && s.term > before.term && s.last_applied >= applied)
                    .then_some(()),
            )
        },
    )
    .await?;

    harness::nodes_agree(&config, &certs).await?;
    Ok(Measured {
        view,
        view_after_failover: after,
        create_to_aggregate,
        crash_to_aggregate,
        crashed_node: leader,
    })
}

fn check_aggregate(view: &PoolView, config: &SimConfig) -> anyhow::Result<()> {
    let expected = match config.failing_hosts.len() {
        0 => Health::Healthy,
        n if n == config.hosts => Health::Error,
        _ => Health::Degraded,
    };
    ensure!(
        view.health == expected,
        "pool health {} != expected {expected}",
        view.health
    );
    for host in &view.hosts {
        let index: usize = host.host_id.trim_start_matches("host-").parse()?;
        if config.failing_hosts.contains(&index) {
            ensure!(
                host.health == Health::Error,
                "{} should be ERROR: {host:?}",
                host.host_id
            );
            let error = host.error.as_deref().unwrap_or_default();
            ensure!(
                error.contains("Not a directory"),
                "{} error does not carry the cause: {error:?}",
                host.host_id
            );
        } else {
            ensure!(
                host.health == Health::Healthy && host.mounted,
                "{} should be mounted: {host:?}",
                host.host_id
            );
            ensure!(
                host.capacity.total_bytes > 0,
                "{} reports no capacity",
                host.host_id
            );
        }
    }
    Ok(())
}
