//! Runs one simulated world: builds the machines, runs an operator script as turmoil's client,
//! applies the faults the script asks for between steps, and records the event trace.

use std::{cell::Cell, collections::BTreeMap, future::Future, rc::Rc, sync::Arc, time::Duration};

use anyhow::bail;
use qvdc_cluster::Client;
use qvdc_raft::runtime::seed_thread_rng;
use qvdc_transport::{
    facts::{self, Fact},
    protocol::{ApiRequest, ApiResponse, ClusterStatus, Liveness},
    sim::Impairment,
};
use tokio::time::Instant;
use tracing::info;
use tracing_subscriber::{layer::SubscriberExt, Layer};

use crate::{
    invariants,
    trace::{self, Events, TraceLayer},
    world::{self, Certs, Disruption, HostParts, Shared, SimConfig},
};

/// How often scripts poll for a condition.
pub(crate) const POLL_MS: u64 = 100;
/// Simulated time after which a run that has not finished fails.
const SIM_DURATION_S: u64 = 600;
/// Simulated time per step of the world. turmoil visits every machine and every link on
/// each step, so a run costs about machines × links × steps; 5 ms is far below every timer
/// that matters (Raft heartbeats are 50 ms) and makes large worlds 5 times cheaper than 1 ms.
pub const TICK_MS: u64 = 5;
/// Longest one-way delay of a simulated datagram (turmoil draws delays from an exponential
/// distribution up to this bound). The Raft timings are made for a LAN (heartbeat 50 ms,
/// elections after 410–490 ms of silence); turmoil's default of up to 100 ms one way is a
/// WAN, where a round trip alone can exceed an election timeout and leadership churns.
const MESSAGE_LATENCY_MS_MAX: u64 = 25;
/// turmoil drops datagrams beyond a socket's queue (64 by default); a kernel holds far more.
const UDP_QUEUE_DATAGRAMS_MAX: usize = 4096;

/// Faults a script asks the world for; each is applied once, before the next step.
#[derive(Default)]
pub(crate) struct Faults {
    pub(crate) crash: Option<String>,
    pub(crate) restart: Option<String>,
    /// Cut this control-plane machine off from the other control-plane machines.
    pub(crate) isolate: Option<String>,
    pub(crate) heal: Option<String>,
    /// Changes to the world, applied in order.
    pub(crate) actions: Vec<Action>,
    /// Each host's simulated mounter and hypervisor, as of its latest boot: for faults
    /// inside hosts, and for comparing what hosts really have with what the cluster reports.
    pub(crate) hosts: BTreeMap<String, HostParts>,
    /// Each control-plane node's disk latency, for slow-disk faults.
    pub(crate) disks: BTreeMap<String, qvdc_raft::store::DiskLatency>,
    /// Each control-plane node's lease clock, as of its latest boot, for clock drift.
    pub(crate) clocks: BTreeMap<String, qvdc_cluster::Clock>,
    /// Each control-plane node's stop switch, as of its latest boot: a planned stop (the node
    /// hands leadership over, then stops serving) until it is restarted.
    pub(crate) stops: BTreeMap<String, std::sync::Arc<tokio::sync::Notify>>,
    /// The mounts and guests of hosts whose agent was killed: they live on, and the agent's
    /// next boot finds them.
    pub(crate) kept: BTreeMap<String, HostParts>,
    /// The shared storage's image locks, across every host's hypervisor.
    pub(crate) storage_locks: qvdc_host::hypervisor::SimStorageLocks,
}

/// A change to the simulated world. Links are (from, to) machine pairs.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    Crash(String),
    Restart(String),
    Partition(Vec<(String, String)>),
    Repair(Vec<(String, String)>),
    PartitionOneway(Vec<(String, String)>),
    RepairOneway(Vec<(String, String)>),
    Hold(Vec<(String, String)>),
    Release(Vec<(String, String)>),
    Impair(Impairment),
    /// Every link between machines delivers again, held datagrams included.
    HealNetwork,
    /// A host's agent dies (`kill -9`); its guests and mounts live on. Restart it with
    /// [`Action::Restart`].
    KillAgent(String),
}

/// A finished run: what the script returned and the trace of events.
pub(crate) struct Run<T> {
    pub(crate) value: T,
    pub(crate) trace: Vec<String>,
    pub(crate) trace_hash: u64,
    pub(crate) log: LogLifecycle,
    /// What production code stated it did, with the simulated time (ms) of each.
    pub(crate) facts: Vec<(u64, Fact)>,
}

/// What the nodes did with their logs in a run, summed over nodes: the parts of Raft that
/// only a long-running cluster reaches, which a run must exercise for its checks to cover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogLifecycle {
    pub snapshots_built: usize,
    pub snapshots_installed: usize,
    pub purges: usize,
}

impl LogLifecycle {
    fn of(facts: &[(u64, Fact)]) -> Self {
        let mut counts = Self::default();
        for (_, fact) in facts {
            match fact {
                Fact::SnapshotBuilt { .. } => counts.snapshots_built += 1,
                Fact::SnapshotInstalled { .. } => counts.snapshots_installed += 1,
                Fact::LogPurged { .. } => counts.purges += 1,
                _ => {}
            }
        }
        counts
    }

    /// Adds another run's counts.
    pub fn add(&mut self, other: LogLifecycle) {
        self.snapshots_built += other.snapshots_built;
        self.snapshots_installed += other.snapshots_installed;
        self.purges += other.purges;
    }
}

/// Runs `script` as the operator of a world shaped by `config`.
pub(crate) fn run<T, S, Fut>(config: &SimConfig, script: S) -> anyhow::Result<Run<T>>
where
    T: 'static,
    S: FnOnce(SimConfig, Arc<Certs>, Shared<Faults>) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
{
    let events: Events = Arc::default();
    // QVSIM_LOG=openraft=debug (any tracing filter) also prints logs to stderr while replaying.
    // Without it, the printing layer's filter is "off", so callsites nobody records stay
    // disabled (an absent layer would instead count as interested in everything).
    let filter = std::env::var("QVSIM_LOG").unwrap_or_else(|_| "off".into());
    let printed = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::EnvFilter::new(filter));
    let layer = TraceLayer::new(events.clone());
    let clock = layer.between_steps();
    let subscriber = tracing_subscriber::registry()
        .with(layer.with_filter(trace::recorded()))
        .with(printed);
    panics::watch();
    let stated = std::cell::RefCell::new(Vec::new());
    let value = tracing::subscriber::with_default(subscriber, || {
        // A panic that escapes the world (one in a machine's main task) ends the run here
        // instead of taking down the thread that runs seeds.
        let run = || simulate(config, script, &clock, &stated);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the simulation panicked")))
    });
    let value = match panics::seen() {
        Some(first) => Err(anyhow::anyhow!("a panic in the system: {first}")),
        None => value,
    };
    let trace = std::mem::take(&mut *events.lock().expect("trace lock poisoned"));
    // A failed run has no outcome to carry its trace; QVSIM_DUMP=1 prints it instead.
    if value.is_err() && std::env::var_os("QVSIM_DUMP").is_some() {
        for e in &trace {
            eprintln!("{e}");
        }
    }
    let value = value?;
    let facts = stated.into_inner();
    Ok(Run {
        value,
        trace_hash: trace::hash(&trace),
        trace,
        log: LogLifecycle::of(&facts),
        facts,
    })
}

fn simulate<T, S, Fut>(
    config: &SimConfig,
    script: S,
    clock: &std::sync::atomic::AtomicU64,
    stated: &std::cell::RefCell<Vec<(u64, Fact)>>,
) -> anyhow::Result<T>
where
    T: 'static,
    S: FnOnce(SimConfig, Arc<Certs>, Shared<Faults>) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
{
    seed_thread_rng(config.seed);
    inject_bugs(&config.bugs)?;
    let retention = config.retention();
    info!(
        snapshot_after_logs = retention.snapshot_after_logs,
        logs_kept_after_snapshot = retention.logs_kept_after_snapshot,
        "log retention"
    );
    // What production code states it did, stamped with simulated time (between steps, when
    // the harness itself crashes a machine, the time of the last step).
    let facts: invariants::Facts = Rc::default();
    let last_step_ms = Rc::new(Cell::new(0u64));
    let _watching = {
        let (into, last_step_ms) = (facts.clone(), last_step_ms.clone());
        facts::watch(move |fact| {
            let at_ms = turmoil::sim_elapsed().map_or(last_step_ms.get(), |at| {
                u64::try_from(at.as_millis()).unwrap_or(u64::MAX)
            });
            into.borrow_mut().push((at_ms, fact.clone()));
        })
    };
    qvdc_transport::sim::impair(config.impairment, config.seed);
    let certs = Arc::new(Certs::new(config)?);
    let mut world = turmoil::Builder::new()
        .rng_seed(config.seed)
        .simulation_duration(Duration::from_secs(SIM_DURATION_S))
        .udp_capacity(UDP_QUEUE_DATAGRAMS_MAX)
        .tick_duration(Duration::from_millis(TICK_MS))
        .min_message_latency(Duration::ZERO)
        .max_message_latency(Duration::from_millis(MESSAGE_LATENCY_MS_MAX))
        .build();
    let faults: Shared<Faults> = Arc::default();
    for i in 1..=config.nodes + u64::from(config.joining_node) {
        world::add_node(&mut world, config, &certs, i, &faults)?;
    }
    for i in 1..=config.hosts {
        world::add_host(&mut world, config, &certs, i, &faults);
    }
    let result: Shared<Option<T>> = Arc::new(std::sync::Mutex::new(None));
    let script = script(config.clone(), certs, faults.clone());
    let slot = result.clone();
    world.client(world::OPERATOR_MACHINE, async move {
        let value = script.await.map_err(|e| format!("{e:#}"))?;
        *slot.lock().expect("result lock poisoned") = Some(value);
        Ok(())
    });
    // The invariants see each step's facts as soon as it is over: a run stops at its first
    // violation, which names the fact (and its simulated time) that broke it.
    let mut checks = invariants::FactChecks::default();
    loop {
        let stepped = world.step();
        checks.check(&facts.borrow())?;
        if stepped.map_err(|e| anyhow::anyhow!("simulation failed: {e}"))? {
            break;
        }
        let now_ms = u64::try_from(world.elapsed().as_millis()).unwrap_or(u64::MAX);
        clock.store(now_ms, std::sync::atomic::Ordering::Relaxed);
        last_step_ms.set(now_ms);
        apply(
            &mut world,
            config,
            &mut faults.lock().expect("faults lock poisoned"),
        );
    }
    *stated.borrow_mut() = facts.borrow().clone();
    let value = result.lock().expect("result lock poisoned").take();
    value.ok_or_else(|| anyhow::anyhow!("the operator script finished without a result"))
}

#[cfg(feature = "deliberate-bugs")]
fn inject_bugs(bugs: &[qvdc_transport::bugs::Bug]) -> anyhow::Result<()> {
    qvdc_transport::bugs::inject(bugs);
    Ok(())
}

#[cfg(not(feature = "deliberate-bugs"))]
fn inject_bugs(bugs: &[qvdc_transport::bugs::Bug]) -> anyhow::Result<()> {
    anyhow::ensure!(
        bugs.is_empty(),
        "deliberate bugs {bugs:?} need a build with the `deliberate-bugs` feature \
         (cargo run -p qvdc-simulation --features deliberate-bugs --bin qvsim)"
    );
    Ok(())
}

/// Panics anywhere in a run, also in tasks whose runtime swallows them: a hook records each
/// on the thread it happens on (a run is one thread), and the run fails if it saw any.
mod panics {
    use std::{cell::RefCell, sync::Once};

    thread_local! {
        static SEEN: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// Starts watching this thread for panics (again), forgetting earlier ones.
    pub(super) fn watch() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let _ = SEEN.try_with(|seen| {
                    seen.borrow_mut().get_or_insert_with(|| info.to_string());
                });
                default(info);
            }));
        });
        SEEN.with(|seen| *seen.borrow_mut() = None);
    }

    /// The first panic since [`watch`].
    pub(super) fn seen() -> Option<String> {
        SEEN.with(|seen| seen.borrow_mut().take())
    }
}

fn apply(world: &mut turmoil::Sim<'_>, config: &SimConfig, requested: &mut Faults) {
    for action in std::mem::take(&mut requested.actions) {
        match action {
            // A host that crashes loses power: its guests stop and free their disks.
            Action::Crash(machine) if requested.hosts.contains_key(&machine) => {
                requested.hosts[&machine].hypervisor.power_loss();
                // Guests an agent's death left running die with the power too: the host
                // boots as new, whether or not its agent restarted in between.
                requested.kept.remove(&machine);
                crash(world, machine);
            }
            Action::KillAgent(machine) => {
                info!(machine = %machine, "host agent killed; its guests run on");
                facts::state(Fact::AgentKilled {
                    machine: machine.clone(),
                });
                if let Some(parts) = requested.hosts.get(&machine) {
                    parts.hypervisor.agent_gone();
                    requested.kept.insert(machine.clone(), parts.clone());
                }
                world.crash(machine);
            }
            action => act(world, config, action),
        }
    }
    if let Some(machine) = requested.crash.take() {
        if let Some(parts) = requested.hosts.get(&machine) {
            parts.hypervisor.power_loss();
            requested.kept.remove(&machine);
        }
        crash(world, machine);
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

fn act(world: &mut turmoil::Sim<'_>, config: &SimConfig, action: Action) {
    match action {
        Action::Crash(machine) => crash(world, machine),
        Action::Restart(machine) => world.bounce(machine),
        Action::Partition(links) => links
            .iter()
            .for_each(|(a, b)| world.partition(a.as_str(), b.as_str())),
        Action::Repair(links) => links
            .iter()
            .for_each(|(a, b)| world.repair(a.as_str(), b.as_str())),
        Action::PartitionOneway(links) => links
            .iter()
            .for_each(|(a, b)| world.partition_oneway(a.as_str(), b.as_str())),
        Action::RepairOneway(links) => links
            .iter()
            .for_each(|(a, b)| world.repair_oneway(a.as_str(), b.as_str())),
        Action::Hold(links) => links
            .iter()
            .for_each(|(a, b)| world.hold(a.as_str(), b.as_str())),
        Action::Release(links) => links
            .iter()
            .for_each(|(a, b)| world.release(a.as_str(), b.as_str())),
        Action::Impair(impairment) => qvdc_transport::sim::set_impairment(impairment),
        Action::KillAgent(_) => unreachable!("applied with the faults at hand"),
        Action::HealNetwork => {
            // Every link that carries traffic has a node at one end: hosts and the operator
            // talk only to the control plane. Touching the others would make turmoil track
            // links that never carry a message, and it walks every link on every step.
            let nodes: Vec<String> = (1..=config.nodes).map(SimConfig::node_name).collect();
            let mut others: Vec<String> = (1..=config.hosts).map(SimConfig::host_name).collect();
            others.push(world::OPERATOR_MACHINE.to_owned());
            for (i, a) in nodes.iter().enumerate() {
                for b in nodes[i + 1..].iter().chain(&others) {
                    world.release(a.as_str(), b.as_str());
                    world.repair(a.as_str(), b.as_str());
                }
            }
            qvdc_transport::sim::set_impairment(Impairment::default());
        }
    }
}

/// Crashes `machine` and records it: a crashed host's guests stop with it, which the VM
/// invariant must know.
fn crash(world: &mut turmoil::Sim<'_>, machine: String) {
    info!(machine = %machine, "machine crashed");
    facts::state(Fact::MachineCrashed {
        machine: machine.clone(),
    });
    world.crash(machine);
}

/// The other control-plane machines.
fn peers(nodes: u64, machine: &str) -> Vec<String> {
    (1..=nodes)
        .map(SimConfig::node_name)
        .filter(|n| n != machine)
        .collect()
}

/// Asks the world for `action` before its next step.
pub(crate) fn change(faults: &Shared<Faults>, action: Action) {
    faults
        .lock()
        .expect("faults lock poisoned")
        .actions
        .push(action);
}

pub(crate) async fn ask(client: &mut Client, request: ApiRequest) -> anyhow::Result<ApiResponse> {
    Ok(client.request(request).await?)
}

pub(crate) async fn status(client: &mut Client) -> anyhow::Result<ClusterStatus> {
    match ask(client, ApiRequest::ClusterStatus).await? {
        ApiResponse::ClusterStatus(s) => Ok(s),
        other => bail!("unexpected {other:?}"),
    }
}

/// Once every node is up and has applied the same log, checks that they hold the same state.
pub(crate) async fn nodes_agree(config: &SimConfig, certs: &Certs) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for i in 1..=config.nodes {
        let port_offset = 10 + u16::try_from(i).expect("few nodes");
        clients.push(world::operator(config, certs, port_offset, vec![world::node_addr(i)]).await?);
    }
    let statuses = eventually(
        "all nodes at the same index",
        Duration::from_secs(60),
        async || {
            let mut statuses = Vec::with_capacity(clients.len());
            for client in &mut clients {
                statuses.push(status(client).await?);
            }
            let applied = statuses[0].last_applied;
            Ok(statuses
                .iter()
                .all(|s| s.last_applied == applied)
                .then_some(statuses))
        },
    )
    .await?;
    invariants::same_index_same_state(&statuses)
}

/// Polls `probe` every POLL_MS of simulated time until it returns Some, for at most `limit`.
pub(crate) async fn eventually<T>(
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

/// What a script has once the leader was taken away (see [`take_leader_away`]).
pub(crate) struct Disrupted {
    /// The status that named the old leader.
    pub(crate) before: ClusterStatus,
    pub(crate) leader: u64,
    /// The old leader's machine, for bringing it back.
    pub(crate) machine: String,
    /// A client of the other nodes only.
    pub(crate) majority: Client,
    /// When the fault was asked for.
    pub(crate) at: Instant,
    /// The status that named the successor.
    pub(crate) after: ClusterStatus,
}

/// The usual start of a scenario: an operator who knows every node (client 0), every host
/// Ready, and then the leader and a node that follows it.
pub(crate) async fn ready(config: &SimConfig, certs: &Certs) -> anyhow::Result<(Client, u64, u64)> {
    let mut client = world::operator(config, certs, 0, world::node_addrs(config.nodes)).await?;
    all_hosts_ready(&mut client, config.hosts).await?;
    let (leader, follower) = leader_and_follower(config, &mut client).await?;
    Ok((client, leader, follower))
}

/// The leader, once one is known, and a node that follows it.
pub(crate) async fn leader_and_follower(
    config: &SimConfig,
    client: &mut Client,
) -> anyhow::Result<(u64, u64)> {
    let leader = eventually("a known leader", Duration::from_secs(30), async || {
        Ok(status(client).await?.leader)
    })
    .await?;
    let follower = (1..=config.nodes)
        .find(|i| *i != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower of cp{leader}"))?;
    Ok((leader, follower))
}

/// Crashes or isolates the current leader, as `config.disruption` says, and waits until the
/// other nodes have elected a successor.
pub(crate) async fn take_leader_away(
    config: &SimConfig,
    certs: &Certs,
    client: &mut Client,
    faults: &Shared<Faults>,
) -> anyhow::Result<Disrupted> {
    // Any node answers a status; the one that does may not know the leader at that moment.
    let before = eventually("a known leader", Duration::from_secs(30), async || {
        let s = status(client).await?;
        Ok(s.leader.is_some().then_some(s))
    })
    .await?;
    let leader = before.leader.expect("filtered above");
    let machine = SimConfig::node_name(leader);
    let others = (1..=config.nodes)
        .filter(|i| *i != leader)
        .map(world::node_addr)
        .collect();
    let mut majority = world::operator(config, certs, 2, others).await?;
    {
        let mut requested = faults.lock().expect("faults lock poisoned");
        match config.disruption {
            Disruption::Crash => requested.crash = Some(machine.clone()),
            Disruption::Isolate => requested.isolate = Some(machine.clone()),
        }
    }
    let at = Instant::now();
    // The old leader may answer until its lease runs out; wait for a successor.
    let after = eventually("a new leader", Duration::from_secs(60), async || {
        let s = status(&mut majority).await?;
        Ok(s.leader.filter(|l| *l != leader).map(|_| s))
    })
    .await?;
    Ok(Disrupted {
        before,
        leader,
        machine,
        majority,
        at,
        after,
    })
}

/// Undoes [`take_leader_away`]: restarts or heals the old leader's machine.
pub(crate) fn bring_back(config: &SimConfig, faults: &Shared<Faults>, machine: String) {
    let mut requested = faults.lock().expect("faults lock poisoned");
    match config.disruption {
        Disruption::Crash => requested.restart = Some(machine),
        Disruption::Isolate => requested.heal = Some(machine),
    }
}

/// Host `host`'s liveness as the cluster reports it (`None`: not registered).
pub(crate) async fn liveness_of(
    client: &mut Client,
    host: &str,
) -> anyhow::Result<Option<Liveness>> {
    let ApiResponse::Hosts(list) = ask(client, ApiRequest::HostList).await? else {
        bail!("not a host list")
    };
    Ok(list
        .into_iter()
        .find(|h| h.host_id == host)
        .map(|h| h.liveness))
}

/// Waits until the cluster reports host `host` as `liveness`.
pub(crate) async fn host_becomes(
    client: &mut Client,
    host: &str,
    liveness: Liveness,
) -> anyhow::Result<()> {
    let what = format!("{host} {liveness:?}");
    eventually(&what, Duration::from_secs(60), async || {
        Ok((liveness_of(client, host).await? == Some(liveness)).then_some(()))
    })
    .await
}

/// Waits until `hosts` hosts are registered and Ready.
pub(crate) async fn all_hosts_ready(client: &mut Client, hosts: usize) -> anyhow::Result<()> {
    eventually("all hosts Ready", Duration::from_secs(60), async || {
        let ApiResponse::Hosts(list) = ask(client, ApiRequest::HostList).await? else {
            bail!("not a host list")
        };
        let ready = list
            .iter()
            .filter(|h| h.liveness == Liveness::Ready)
            .count();
        Ok((list.len() == hosts && ready == hosts).then_some(()))
    })
    .await
}

/// VM `name` as the cluster shows it.
pub(crate) async fn vm_view(
    client: &mut Client,
    name: &str,
) -> anyhow::Result<qvdc_transport::protocol::VmView> {
    match ask(client, ApiRequest::VmShow { name: name.into() }).await? {
        ApiResponse::Vm(view) => Ok(view),
        other => anyhow::bail!("vm show answered {other:?}"),
    }
}

/// What `host`'s simulated hypervisor really has.
pub(crate) fn host_domains(
    faults: &Shared<Faults>,
    host: &str,
) -> BTreeMap<String, qvdc_transport::protocol::PowerState> {
    faults.lock().expect("faults lock poisoned").hosts[host]
        .hypervisor
        .domains()
}

/// Creates qcow2 volume `volume` in shared pool `pool` and waits until it is ready; returns
/// it as a VM's disk.
pub(crate) async fn shared_disk(
    client: &mut Client,
    pool: &str,
    volume: &str,
) -> anyhow::Result<qvdc_transport::protocol::VmDisk> {
    use qvdc_transport::protocol::{VmDisk, VolumeFormat};
    let create = ApiRequest::VolumeCreate {
        request_id: client.new_request_id(),
        pool: pool.into(),
        name: volume.into(),
        format: VolumeFormat::Qcow2,
        size_bytes: 64 << 20,
        host: None,
    };
    ask(client, create).await?;
    eventually("volume ready", Duration::from_secs(60), async || match ask(
        client,
        ApiRequest::VolumeList { pool: pool.into() },
    )
    .await?
    {
        ApiResponse::Volumes(v) => Ok(v.iter().any(|v| v.name == volume && v.ready).then_some(())),
        other => anyhow::bail!("volume list answered {other:?}"),
    })
    .await?;
    Ok(VmDisk {
        pool: pool.into(),
        volume: volume.into(),
        format: VolumeFormat::Qcow2,
    })
}

/// Waits until the audit trail has begun: every member told the leader it runs this
/// release and the cluster level was raised, so every change from now on is recorded.
pub(crate) async fn audit_begun(client: &mut Client) -> anyhow::Result<()> {
    eventually(
        "the audit trail begins",
        Duration::from_secs(30),
        async || Ok((audit_page(client, u64::MAX).await?.latest > 1).then_some(())),
    )
    .await
}

async fn audit_page(
    client: &mut Client,
    since: u64,
) -> anyhow::Result<qvdc_transport::protocol::EventsPage> {
    let request = ApiRequest::Events {
        since,
        reported: None,
        wait_ms: 0,
        max: 1_000,
    };
    match ask(client, request).await? {
        ApiResponse::Events(page) => Ok(page),
        other => bail!("an events query answered {other:?}"),
    }
}

/// The whole audit trail as the leader holds it, read page by page; an error if the leader
/// reports a gap (a change it no longer keeps).
pub(crate) async fn audit_trail(
    client: &mut Client,
) -> anyhow::Result<Vec<qvdc_transport::protocol::AuditRecord>> {
    let mut trail = Vec::new();
    let mut since = 1;
    loop {
        let page = audit_page(client, since).await?;
        if let Some(gap) = page.gap {
            bail!("the audit trail has a gap: {gap}");
        }
        if page.changes.is_empty() {
            return Ok(trail);
        }
        since = page.next;
        trail.extend(page.changes);
    }
}
