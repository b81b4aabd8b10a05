//! Building blocks of a simulated cluster: certificates, control-plane machines, host machines.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use qvdc_actors::Timings;
use qvdc_cluster::{Client, Node, NodeConfig, Storage};
use qvdc_host::{
    lease::MemoryLease, source_policy::SourcePolicy, Agent, AgentConfig, Fence, MemoryFence,
    SimHypervisor, SimMounter, SimNetworker,
};
use qvdc_raft::{store, LogRetention};
use qvdc_transport::bugs::Bug;

use crate::{faults::Chaos, harness::Faults};
use qvdc_transport::{
    protocol::{Inventory, PoolSource, PoolSpec},
    sim,
    tls::{self, Identity, Role},
    Endpoint,
};

pub(crate) const NODE_PORT: u16 = 7000;
pub(crate) const HOST_PORT: u16 = 7100;
pub(crate) const CLIENT_PORT: u16 = 7200;
pub(crate) const OPERATOR: &str = "admin";
/// The machine the operator's scripts (and the chaos driver) run on.
pub(crate) const OPERATOR_MACHINE: &str = "operator";
const HOST_DISK_BYTES: u64 = 100 << 30;

/// Shape of a simulated cluster.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: u64,
    pub hosts: usize,
    /// Hosts (1-based) whose pool mounts fail.
    pub failing_hosts: Vec<usize>,
    /// What happens to the leader once the pool is up.
    pub disruption: Disruption,
    /// Snapshot and log-purge thresholds of every node; `None`: drawn from the seed
    /// ([`SimConfig::retention`]), so that ordinary runs build, send, install and purge.
    pub retention: Option<LogRetention>,
    /// Datagram loss and duplication on every link, for the whole run.
    pub impairment: qvdc_transport::sim::Impairment,
    /// The faults the chaos scenario draws from, and for how long.
    pub chaos: Chaos,
    /// Deliberate bugs switched on for this run (needs the `deliberate-bugs` feature).
    pub bugs: Vec<Bug>,
    /// One more node, `nodes + 1`, that starts empty and waits to be added (`cluster
    /// add-node`); the chaos scenario adds it and removes it again under faults.
    pub joining_node: bool,
}

impl Default for SimConfig {
    /// Three nodes, three healthy hosts, the leader crashed, every fault in the chaos phase.
    fn default() -> Self {
        Self {
            seed: 0,
            nodes: 3,
            hosts: 3,
            failing_hosts: Vec::new(),
            disruption: Disruption::Crash,
            retention: None,
            impairment: Default::default(),
            chaos: Chaos::default(),
            bugs: Vec::new(),
            joining_node: false,
        }
    }
}

/// How the scenario takes the leader away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Disruption {
    /// The leader's machine crashes, and is restarted later.
    #[default]
    Crash,
    /// The leader is cut off from the other control-plane nodes (hosts and operators can
    /// still reach it), and the partition heals later.
    Isolate,
}

/// The thresholds a seed draws from: a snapshot after this many entries (down to every
/// few, as in no production setting, so that snapshots happen in every run)...
const SNAPSHOT_AFTER_LOGS: [u64; 5] = [3, 8, 24, 100, 5_000];
/// ... and this many entries kept behind it (none: any lag at all means a snapshot install).
const LOGS_KEPT_AFTER_SNAPSHOT: [u64; 4] = [0, 2, 16, 1_000];

impl SimConfig {
    /// This run (seed, bugs, faults) in the small world of the edge scenarios: three nodes
    /// and one host that mounts everything.
    pub(crate) fn three_nodes_one_host(&self) -> SimConfig {
        SimConfig {
            nodes: 3,
            hosts: 1,
            failing_hosts: Vec::new(),
            ..self.clone()
        }
    }

    /// The run's log retention: as configured, or drawn from the seed (from a generator of
    /// its own, so the draw does not shift any other).
    pub fn retention(&self) -> LogRetention {
        self.retention.unwrap_or_else(|| {
            use rand::{rngs::StdRng, Rng, SeedableRng};
            let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5eed_106e);
            LogRetention {
                snapshot_after_logs: SNAPSHOT_AFTER_LOGS
                    [rng.gen_range(0..SNAPSHOT_AFTER_LOGS.len())],
                logs_kept_after_snapshot: LOGS_KEPT_AFTER_SNAPSHOT
                    [rng.gen_range(0..LOGS_KEPT_AFTER_SNAPSHOT.len())],
            }
        })
    }

    pub(crate) fn node_name(i: u64) -> String {
        format!("cp{i}")
    }
    pub(crate) fn host_name(i: usize) -> String {
        format!("host-{i}")
    }
}

/// Every identity of the cluster, created once per run: the CA in a scratch directory, the
/// identities issued from it in memory (writing each one's files would cost two fsyncs per
/// machine and run).
pub struct Certs {
    _dir: tempfile::TempDir,
    identities: BTreeMap<String, Identity>,
}

impl Certs {
    pub fn new(config: &SimConfig) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        tls::init_ca(dir.path())?;
        let ca = tls::Ca::open(dir.path())?;
        let mut names: Vec<(Role, String)> = (1..=config.nodes + u64::from(config.joining_node))
            .map(|i| (Role::Server, format!("node-{i}")))
            .collect();
        names.extend((1..=config.hosts).map(|i| (Role::Host, SimConfig::host_name(i))));
        names.push((Role::Operator, OPERATOR.to_owned()));
        let mut identities = BTreeMap::new();
        for (role, name) in names {
            let identity = ca.identity(role, &name, tls::CERT_VALIDITY_DAYS_DEFAULT)?;
            identities.insert(name, identity);
        }
        Ok(Self {
            _dir: dir,
            identities,
        })
    }

    pub(crate) fn get(&self, name: &str) -> Identity {
        self.identities[name].clone()
    }
}

fn addr_of(name: &str, port: u16) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(name), port)
}

pub(crate) fn node_addrs(nodes: u64) -> Vec<SocketAddr> {
    (1..=nodes)
        .map(|i| addr_of(&SimConfig::node_name(i), NODE_PORT))
        .collect()
}

/// Mixes the run's seed with a machine's name into a seed for that machine's QUIC endpoint.
fn endpoint_seed(seed: u64, machine: &str) -> u64 {
    machine.bytes().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
        h.rotate_left(5) ^ u64::from(b)
    })
}

/// Registers control-plane node `i` with the world. Its database lives outside the machine,
/// so a crash keeps what was committed; its disk's latency is in `faults.disks`.
pub(crate) fn add_node(
    world: &mut turmoil::Sim<'_>,
    config: &SimConfig,
    certs: &Certs,
    i: u64,
    faults: &Shared<Faults>,
) -> anyhow::Result<()> {
    let name = SimConfig::node_name(i);
    let identity = certs.get(&format!("node-{i}"));
    let db = store::open_in_memory()?;
    let latency = store::DiskLatency::default();
    faults
        .lock()
        .expect("faults lock poisoned")
        .disks
        .insert(name.clone(), latency.clone());
    let (seed, nodes, retention) = (config.seed, config.nodes, config.retention());
    let faults = faults.clone();
    world.host(name.clone(), move || {
        let (identity, db, name) = (identity.clone(), db.clone(), name.clone());
        let latency = latency.clone();
        let faults = faults.clone();
        async move {
            // Each boot's lease clock starts true; scenarios reach it to make it drift. (Not
            // before the boot runs: a restart is asked for with the faults locked.)
            let clock = qvdc_cluster::Clock::default();
            let stop = std::sync::Arc::new(tokio::sync::Notify::new());
            {
                let mut faults = faults.lock().expect("faults lock poisoned");
                faults.clocks.insert(name.clone(), clock.clone());
                faults.stops.insert(name.clone(), stop.clone());
            }
            let endpoint = sim::bind(
                SocketAddr::from(([0, 0, 0, 0], NODE_PORT)),
                &identity,
                true,
                endpoint_seed(seed, &name),
            )
            .await?;
            // A node beyond the initial ones starts empty and waits to be added.
            let join = i > nodes;
            let initial_cluster = if join {
                BTreeMap::new()
            } else {
                (1..=nodes)
                    .zip(node_addrs(nodes))
                    .map(|(id, a)| (id, a.to_string()))
                    .collect()
            };
            // Audited changes carry the simulation's time, so a run is the same byte for byte.
            clock.set_wall(sim_wall_ms);
            let node_config = NodeConfig {
                node_id: i,
                initial_cluster,
                join,
                storage: Storage::Database(db, latency),
                timings: Timings::default(),
                retention,
                clock,
            };
            let node = Node::start(node_config, endpoint).await?;
            // A planned stop, as `qvdc server` does on SIGTERM; the machine stays down until
            // the fault is undone with a restart.
            stop.notified().await;
            node.hand_over().await;
            node.shutdown().await;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    Ok(())
}

/// The simulated parts of a host that the simulation reaches into.
#[derive(Debug, Clone)]
pub(crate) struct HostParts {
    pub(crate) mounter: SimMounter,
    pub(crate) hypervisor: SimHypervisor,
}

/// Registers host agent `i` with the world, with a simulated mounter and hypervisor. A crash
/// loses both (the host rebooted); each boot registers its new ones in `faults`.
pub(crate) fn add_host(
    world: &mut turmoil::Sim<'_>,
    config: &SimConfig,
    certs: &Certs,
    i: usize,
    faults: &Shared<Faults>,
) {
    let name = SimConfig::host_name(i);
    let faults = faults.clone();
    let identity = certs.get(&name);
    let failing = config.failing_hosts.contains(&i);
    // The last host takes no live migrations: VMs reach it by a cold move.
    let migration_uri = (i < config.hosts).then(|| qvdc_host::hypervisor::sim_migration_uri(&name));
    let (seed, nodes) = (config.seed, config.nodes);
    // Outside the machine, like a file on its disk: the fencing term survives a crash.
    let fence_store = MemoryFence::default();
    // Likewise the lease, as the host's lease file would be; a power loss forgets it (the
    // guests it was about died), as a new boot ignores the file.
    let lease_store = MemoryLease::on_clock(turmoil::sim_elapsed);
    world.host(name.clone(), move || {
        let (identity, name, fence_store) = (identity.clone(), name.clone(), fence_store.clone());
        let lease_store = lease_store.clone();
        let faults = faults.clone();
        let migration_uri = migration_uri.clone();
        async move {
            let fence = Fence::open(Box::new(fence_store))?;
            let endpoint = sim::bind(
                SocketAddr::from(([0, 0, 0, 0], HOST_PORT)),
                &identity,
                false,
                endpoint_seed(seed, &name),
            )
            .await?;
            // After an agent's death its guests and mounts are still there; after a power
            // loss (or at first boot) the host starts empty.
            let kept = faults
                .lock()
                .expect("faults lock poisoned")
                .kept
                .remove(&name);
            let survived = kept.is_some();
            let (mut mounter, hypervisor) = match kept {
                Some(parts) => (parts.mounter, parts.hypervisor),
                None => {
                    let locks = faults
                        .lock()
                        .expect("faults lock poisoned")
                        .storage_locks
                        .clone();
                    (
                        SimMounter::new(HOST_DISK_BYTES),
                        SimHypervisor::with_storage_locks(&locks, &name, pool_root(&name)),
                    )
                }
            };
            if failing && !survived {
                mounter = mounter.failing_mounts("Not a directory (os error 20)");
            }
            let config = AgentConfig {
                host_id: name.clone(),
                cluster: node_addrs(nodes),
                pool_root: pool_root(&name),
                pool_sources: SourcePolicy::new(
                    Vec::new(),
                    pool_root(&name).parent().map(Into::into),
                ),
                inventory: sim_inventory(&name),
                rescan_inventory: None,
                heartbeat_interval_ms: qvdc_host::agent::HEARTBEAT_INTERVAL_MS_DEFAULT,
                migration_uri: migration_uri.clone(),
                metrics: Default::default(),
                leader_watch: true,
            };
            // A domain defined before qvdc, on every host: reported, never touched. The
            // first host's has a disk in what will be pool `legacy` once mounted there.
            if !survived {
                let disks = if i == 1 {
                    let dir = pool_target(&name, LEGACY_POOL);
                    mounter.plant_foreign(&dir, LEGACY_DISK);
                    vec![dir.join(LEGACY_DISK)]
                } else {
                    Vec::new()
                };
                hypervisor.add_foreign(UNMANAGED_DOMAIN, unmanaged_runs(seed, i), &disks);
            }
            let reachable = HostParts {
                mounter: mounter.clone(),
                hypervisor: hypervisor.clone(),
            };
            faults
                .lock()
                .expect("faults lock poisoned")
                .hosts
                .insert(name.clone(), reachable);
            let parts = qvdc_host::HostParts {
                mounter,
                hypervisor,
                networker: SimNetworker::new().with_uplinks(["eth0"]),
            };
            if !survived {
                lease_store.forget();
            }
            Agent::new(config, endpoint, parts, fence)
                .with_lease_store(lease_store)
                .run()
                .await;
            Ok(())
        }
    });
}

/// The domain every simulated host has that qvdc did not define.
pub(crate) const UNMANAGED_DOMAIN: &str = "legacy-db";
/// The pool whose directory holds the first host's unmanaged domain's disk (raw), once a
/// scenario creates it.
pub(crate) const LEGACY_POOL: &str = "legacy";
pub(crate) const LEGACY_DISK: &str = "legacy-db.raw";

/// Whether host `i`'s unmanaged domain runs (the seed decides, so both kinds occur).
pub(crate) fn unmanaged_runs(seed: u64, i: usize) -> bool {
    (seed + i as u64).is_multiple_of(2)
}

fn pool_root(host: &str) -> std::path::PathBuf {
    format!("/var/lib/qhost/{host}/pools").into()
}

/// A `dir` pool named `name` on `/srv/<name>`: the pool every scenario creates.
pub(crate) fn dir_pool(name: &str) -> PoolSpec {
    PoolSpec {
        scope: Default::default(),
        name: name.to_owned(),
        source: PoolSource::Dir {
            path: format!("/srv/{name}"),
        },
    }
}

/// What every simulated host has: one 8-core socket and 32 GiB.
pub(crate) fn sim_inventory(host: &str) -> Inventory {
    Inventory {
        hostname: host.to_owned(),
        cpu_model: "Simulated CPU".into(),
        cpu_sockets: 1,
        cores_per_socket: 8,
        threads_per_core: 1,
        cpu_cores: 8,
        memory_bytes: 32 << 30,
        ..Inventory::default()
    }
}

/// Where `host` mounts `pool`.
pub(crate) fn pool_target(host: &str, pool: &str) -> std::path::PathBuf {
    pool_root(host).join(pool)
}

/// An operator's client inside the world, talking to every node or to chosen ones.
pub(crate) async fn operator(
    config: &SimConfig,
    certs: &Certs,
    port_offset: u16,
    nodes: Vec<SocketAddr>,
) -> anyhow::Result<Client> {
    let identity = certs.get(OPERATOR);
    let endpoint: Endpoint = sim::bind(
        SocketAddr::from(([0, 0, 0, 0], CLIENT_PORT + port_offset)),
        &identity,
        false,
        endpoint_seed(config.seed + u64::from(port_offset), OPERATOR),
    )
    .await?;
    let prefix = format!("op{port_offset}-{}", config.seed);
    Ok(Client::new(endpoint, nodes, Duration::from_secs(30)).with_request_prefix(prefix))
}

pub(crate) fn node_addr(i: u64) -> SocketAddr {
    addr_of(&SimConfig::node_name(i), NODE_PORT)
}

pub(crate) type Shared<T> = Arc<std::sync::Mutex<T>>;

/// Wall-clock time in the simulation: a fixed epoch (2026-01-01) plus simulated time.
fn sim_wall_ms() -> u64 {
    const EPOCH_MS: u64 = 1_767_225_600_000;
    EPOCH_MS + turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}
