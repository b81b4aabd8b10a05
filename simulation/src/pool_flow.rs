//! The walking-skeleton scenario: hosts register, an operator creates a `dir` pool on every
//! host (one of which cannot mount it), waits for the aggregate, crashes the leader, sees
//! the same aggregate from the new leader, and restarts the crashed node, which rejoins.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, ensure, Context};
use qvdc_cluster::Client;
use qvdc_raft::runtime::seed_thread_rng;
use qvdc_transport::protocol::{
    ApiRequest, ApiResponse, ClusterStatus, Health, Liveness, PoolSource, PoolSpec, PoolView,
};
use tokio::time::Instant;
use tracing_subscriber::layer::SubscriberExt;

use crate::{
    trace::{self, Events, TraceLayer},
    world::{self, Certs, Disruption, Shared, SimConfig},
};

const POOL: &str = "shared";
const POLL_MS: u64 = 100;
const SIM_DURATION_S: u64 = 600;
const UDP_QUEUE_DATAGRAMS_MAX: usize = 4096;

/// What a run measured, in simulated time, and its event trace.
#[derive(Debug)]
pub struct Outcome {
    pub trace: Vec<String>,
    pub trace_hash: u64,
    /// The aggregate first seen complete.
    pub view: PoolView,
    /// The aggregate seen from the new leader after the old one crashed.
    pub view_after_failover: PoolView,
    pub create_to_aggregate: Duration,
    pub crash_to_aggregate: Duration,
    pub crashed_node: u64,
}

/// Requests from the operator script to the world (crash or restart a machine).
#[derive(Debug, Default)]
struct Faults {
    crash: Option<String>,
    restart: Option<String>,
    isolate: Option<String>,
    heal: Option<String>,
}

#[derive(Debug, Default)]
struct Measured {
    view: Option<PoolView>,
    view_after_failover: Option<PoolView>,
    create_to_aggregate: Duration,
    crash_to_aggregate: Duration,
    crashed_node: u64,
}

/// Runs the scenario for `config.seed`. Fails if any step of the flow does not hold.
pub fn run(config: &SimConfig) -> anyhow::Result<Outcome> {
    let events: Events = Arc::default();
    let subscriber = tracing_subscriber::registry().with(TraceLayer::new(events.clone()));
    let measured = tracing::subscriber::with_default(subscriber, || simulate(config));
    // A failed run has no outcome to carry its trace; QVSIM_DUMP=1 prints it instead.
    if measured.is_err() && std::env::var_os("QVSIM_DUMP").is_some() {
        for e in events.lock().expect("trace lock poisoned").iter() {
            eprintln!("{e}");
        }
    }
    let measured = measured?;
    let trace = std::mem::take(&mut *events.lock().expect("trace lock poisoned"));
    Ok(Outcome {
        trace_hash: trace::hash(&trace),
        trace,
        view: measured.view.context("no aggregate recorded")?,
        view_after_failover: measured
            .view_after_failover
            .context("no aggregate after failover")?,
        create_to_aggregate: measured.create_to_aggregate,
        crash_to_aggregate: measured.crash_to_aggregate,
        crashed_node: measured.crashed_node,
    })
}

fn simulate(config: &SimConfig) -> anyhow::Result<Measured> {
    seed_thread_rng(config.seed);
    let certs = Arc::new(Certs::new(config)?);
    let mut world = turmoil::Builder::new()
        .rng_seed(config.seed)
        .simulation_duration(Duration::from_secs(SIM_DURATION_S))
        // turmoil drops datagrams beyond a socket's queue (64 by default); a kernel holds far more.
        .udp_capacity(UDP_QUEUE_DATAGRAMS_MAX)
        .build();
    for i in 1..=config.nodes {
        world::add_node(&mut world, config, &certs, i)?;
    }
    for i in 1..=config.hosts {
        world::add_host(&mut world, config, &certs, i);
    }
    let faults: Shared<Faults> = Arc::default();
    let measured: Shared<Measured> = Arc::default();
    let script = operator_script(
        config.clone(),
        certs.clone(),
        faults.clone(),
        measured.clone(),
    );
    world.client("operator", async move {
        script.await.map_err(|e| format!("{e:#}").into())
    });
    while !world
        .step()
        .map_err(|e| anyhow::anyhow!("simulation failed: {e}"))?
    {
        let mut requested = faults.lock().expect("faults lock poisoned");
        if let Some(machine) = requested.crash.take() {
            world.crash(machine);
        }
        if let Some(machine) = requested.restart.take() {
            world.bounce(machine);
        }
        if let Some(machine) = requested.isolate.take() {
            for peer in peers(config.nodes, &machine) {
                world.partition(machine.as_str(), peer);
            }
        }
        if let Some(machine) = requested.heal.take() {
            for peer in peers(config.nodes, &machine) {
                world.repair(machine.as_str(), peer);
            }
        }
    }
    let measured = std::mem::take(&mut *measured.lock().expect("measured lock poisoned"));
    Ok(measured)
}

/// The other control-plane machines.
fn peers(nodes: u64, machine: &str) -> Vec<String> {
    (1..=nodes)
        .map(SimConfig::node_name)
        .filter(|n| n != machine)
        .collect()
}

async fn ask(client: &mut Client, request: ApiRequest) -> anyhow::Result<ApiResponse> {
    Ok(client.request(request).await?)
}

async fn status(client: &mut Client) -> anyhow::Result<ClusterStatus> {
    match ask(client, ApiRequest::ClusterStatus).await? {
        ApiResponse::ClusterStatus(s) => Ok(s),
        other => bail!("unexpected {other:?}"),
    }
}

/// Polls `probe` every POLL_MS until it returns Some, for at most `limit`.
async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let mut last_error = String::new();
    while started.elapsed() < limit {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    bail!("{what} did not happen within {limit:?} (last error: {last_error})")
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
    measured: Shared<Measured>,
) -> anyhow::Result<()> {
    let mut client = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    let hosts: Vec<String> = (1..=config.hosts).map(SimConfig::host_name).collect();
    let expected_healthy = config.hosts - config.failing_hosts.len();

    eventually("all hosts Ready", Duration::from_secs(60), async || {
        let ApiResponse::Hosts(list) = ask(&mut client, ApiRequest::HostList).await? else {
            bail!("not a host list")
        };
        Ok(
            (list.len() == config.hosts && list.iter().all(|h| h.liveness == Liveness::Ready))
                .then_some(()),
        )
    })
    .await?;

    let spec = PoolSpec {
        name: POOL.into(),
        source: PoolSource::Dir {
            path: "/srv/shared".into(),
        },
    };
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

    let before = status(&mut client).await?;
    let leader = before.leader.context("no leader")?;
    let name = SimConfig::node_name(leader);
    let others = (1..=config.nodes)
        .filter(|i| *i != leader)
        .map(world::node_addr)
        .collect();
    let mut majority = world::operator(&config, &certs, 2, others).await?;
    {
        let mut requested = faults.lock().expect("faults lock poisoned");
        match config.disruption {
            Disruption::Crash => requested.crash = Some(name.clone()),
            Disruption::Isolate => requested.isolate = Some(name.clone()),
        }
    }
    let disrupted = Instant::now();
    // The old leader may answer until its lease runs out; wait for a successor first.
    let new_leader = eventually("a new leader", Duration::from_secs(60), async || {
        let s = status(&mut majority).await?;
        Ok(s.leader.filter(|l| *l != leader).map(|_| s))
    })
    .await?;
    let after = eventually(
        "aggregate from the new leader",
        Duration::from_secs(60),
        async || settled_view(&mut majority, expected_healthy).await,
    )
    .await?;
    let crash_to_aggregate = disrupted.elapsed();
    ensure!(
        after.health == view.health
            && after.healthy_hosts == view.healthy_hosts
            && after.failed_hosts == view.failed_hosts,
        "aggregate changed across failover: {view:?} vs {after:?}"
    );

    {
        let mut requested = faults.lock().expect("faults lock poisoned");
        match config.disruption {
            Disruption::Crash => requested.restart = Some(name),
            Disruption::Isolate => requested.heal = Some(name),
        }
    }
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

    *measured.lock().expect("measured lock poisoned") = Measured {
        view: Some(view),
        view_after_failover: Some(after),
        create_to_aggregate,
        crash_to_aggregate,
        crashed_node: leader,
    };
    Ok(())
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
