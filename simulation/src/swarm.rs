//! The host swarm: thousands of real host agents in one process, against a real cluster.
//!
//! Each agent is the production agent code (registration, heartbeats, leases, pool
//! supervision, commands) with the simulated hypervisor, mounter and networker in place of
//! libvirt and the kernel, speaking real QUIC with its own real certificate, issued in
//! memory by the cluster's CA. Agents share UDP sockets (a few hundred per socket), so ten
//! thousand of them need a few dozen file descriptors. The cluster is whatever `qvdc dev`
//! started in `--dev DIR` (three `qvdc server` processes): the swarm reads the nodes'
//! addresses, process ids and metrics URLs from its `nodes.json`, and measures what the
//! leader spends (CPU and memory from `/proc`, heartbeat-to-view latency from its metrics)
//! while the hosts register, report, are read and are lost.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context};
use qvdc_cluster::Client;
use qvdc_host::{
    lease::MemoryLease, metrics::HostMetrics, source_policy::SourcePolicy, Agent, AgentConfig,
    Fence, HostParts, MemoryFence, SimHypervisor, SimMounter, SimNetworker,
};
use qvdc_transport::{
    protocol::{ApiRequest, ApiResponse, Liveness, PoolSource, PoolSpec, PoolView},
    tls::{Ca, Identity, Role},
    Endpoint,
};
use tokio::{task::JoinHandle, time::Instant};

/// What one swarm run does.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The `qvdc dev --dir` of the cluster to load.
    pub dev_dir: PathBuf,
    /// How many hosts to run.
    pub hosts: usize,
    /// Agents per UDP socket.
    pub per_socket: usize,
    /// Hosts the measured pool is assigned to (at most the cluster's per-pool bound).
    pub pool_hosts: usize,
    /// How long the steady state is watched.
    pub steady: Duration,
    /// How many `pool show` calls are timed.
    pub pool_reads: usize,
    /// How many hosts are stopped to time their loss's detection.
    pub losses: usize,
    /// The agents' heartbeat interval.
    pub heartbeat_ms: u64,
    /// Whether to `kill -9` the leader after the steady window and time the hosts' move to
    /// the new one (the killed node stays down).
    pub kill_leader: bool,
    /// Whether the agents keep a watch for the next leader (ADR 32); off only to measure
    /// what the watch costs and buys.
    pub leader_watch: bool,
}

/// A node of the dev cluster, as its `nodes.json` lists it.
#[derive(Debug, Clone)]
struct NodeInfo {
    role: String,
    id: String,
    pid: u32,
    address: Option<String>,
    metrics: String,
}

impl NodeInfo {
    fn from_json(value: &serde_json::Value) -> Option<Self> {
        let text = |key: &str| Some(value.get(key)?.as_str()?.to_owned());
        Some(Self {
            role: text("role")?,
            id: text("id")?,
            pid: u32::try_from(value.get("pid")?.as_u64()?).ok()?,
            address: text("address"),
            metrics: text("metrics")?,
        })
    }
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1e3
        };
        if samples.is_empty() {
            return Self::default();
        }
        Self {
            count: samples.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
            self.p50_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

/// What a swarm run measured.
#[derive(Debug, Clone, Default)]
pub struct SwarmReport {
    pub hosts: usize,
    /// From the first agent started to every host Ready on the leader.
    pub registered_in: Duration,
    /// Agent sessions that ended (timeouts, refusals) while the hosts registered.
    pub session_ends_registering: u64,
    /// The leader's CPU over the steady window, in cores.
    pub leader_cores: f64,
    /// Each follower's CPU over the same window, in cores (what hosts' leader watches cost).
    pub follower_cores: Vec<f64>,
    /// The leader's resident memory at the end of the steady window.
    pub leader_rss_mib: f64,
    /// This process's CPU over the same window, in cores (the load generator's own cost, on
    /// the same machine).
    pub swarm_cores: f64,
    /// The leader's heartbeat-to-view latency over the steady window, from its histogram
    /// (bucket upper bounds).
    pub heartbeat_to_view: Option<(f64, f64)>,
    /// Pool reports the leader routed into pool views during the steady window, per second
    /// (one per heartbeat of each host of each pool).
    pub pool_reports_per_s: f64,
    /// `pool show` of the pool on `pool_hosts` hosts.
    pub pool_hosts: usize,
    pub pool_show: Spread,
    /// From an agent's stop to the leader showing its host Unreachable.
    pub detection: Spread,
    /// What a leader `kill -9` did to the hosts, when asked for.
    pub leader_kill: Option<LeaderKill>,
}

/// The hosts across a leader `kill -9`.
#[derive(Debug, Clone, Default)]
pub struct LeaderKill {
    /// From the kill to a survivor naming another leader (polled every 20 ms).
    pub elected_after: Option<Duration>,
    /// From the kill to each registration with the new leader.
    pub registered: Spread,
    /// Hosts registered out of all.
    pub registered_count: usize,
    /// The most hosts the new leader showed Unreachable at once (every host was alive).
    pub unreachable_max: usize,
    /// Agent sessions that ended meanwhile (timeouts, refusals), not counting moves.
    pub sessions_failed: u64,
}

/// Runs the swarm against the dev cluster and measures it.
pub async fn run(config: &SwarmConfig) -> anyhow::Result<SwarmReport> {
    let nodes = read_nodes(&config.dev_dir)?;
    let certs = config.dev_dir.join("certs");
    let addrs: Vec<SocketAddr> = nodes
        .iter()
        .filter(|n| n.role == "server")
        .filter_map(|n| n.address.as_deref()?.parse().ok())
        .collect();
    anyhow::ensure!(
        !addrs.is_empty(),
        "{} lists no server; start the cluster with `qvdc dev --dir {}` first",
        config.dev_dir.join("nodes.json").display(),
        config.dev_dir.display()
    );
    let mut admin = operator(&certs, &addrs)?;
    let ca =
        Ca::open(&certs).context("opening the cluster CA to issue the swarm's certificates")?;

    // Identities first: issuing is not what is measured.
    let started = Instant::now();
    let names: Vec<String> = (1..=config.hosts).map(|i| format!("swarm-{i}")).collect();
    let mut identities = Vec::with_capacity(names.len());
    for name in &names {
        identities.push(ca.identity(Role::Host, name, 1)?);
    }
    eprintln!(
        "swarm: {} certificates issued in memory in {:.1} s",
        names.len(),
        started.elapsed().as_secs_f64()
    );

    let metrics = HostMetrics::default();
    let before_registering = metrics.sessions_failed.get();
    let started = Instant::now();
    let mut agents = BTreeMap::new();
    let mut socket: Option<Endpoint> = None;
    for (i, (name, identity)) in names.iter().zip(&identities).enumerate() {
        let endpoint = match (&socket, i % config.per_socket) {
            (Some(shared), rest) if rest != 0 => shared.sharing(identity)?,
            _ => {
                let bound = Endpoint::bind("127.0.0.1:0".parse()?, identity, false)?;
                socket = Some(bound.clone());
                bound
            }
        };
        let mounter = SimMounter::new(1 << 40);
        let agent = spawn_agent(config, name, &addrs, endpoint, &metrics, mounter.clone())?;
        agents.insert(name.clone(), agent);
    }
    let ready = wait_ready(&mut admin, &names, Duration::from_secs(600)).await?;
    let registered_in = started.elapsed();
    let session_ends_registering = metrics.sessions_failed.get() - before_registering;
    eprintln!(
        "swarm: {ready} hosts Ready {:.1} s after the first agent started; {session_ends_registering} sessions ended meanwhile",
        registered_in.as_secs_f64()
    );

    // A pool on as many hosts as one pool may have, healthy on all of them.
    let pool_hosts: Vec<String> = names.iter().take(config.pool_hosts).cloned().collect();
    let pool = create_pool(&mut admin, &pool_hosts).await?;

    let leader = leader_node(&mut admin, &nodes).await?;
    let (cpu_before, swarm_before) = (cpu_seconds(leader.pid)?, cpu_seconds(std::process::id())?);
    let followers: Vec<u32> = (nodes.iter())
        .filter(|n| n.role == "server" && n.pid != leader.pid)
        .map(|n| n.pid)
        .collect();
    let followers_before = (followers.iter())
        .map(|pid| cpu_seconds(*pid))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    let histogram_before =
        scrape_histogram(&leader.metrics, "qvdc_heartbeat_to_view_seconds").await;
    let window = Instant::now();
    tokio::time::sleep(config.steady).await;
    let elapsed = window.elapsed().as_secs_f64();
    let leader_cores = (cpu_seconds(leader.pid)? - cpu_before) / elapsed;
    let swarm_cores = (cpu_seconds(std::process::id())? - swarm_before) / elapsed;
    let mut follower_cores = Vec::with_capacity(followers.len());
    for (pid, before) in followers.iter().zip(followers_before) {
        follower_cores.push((cpu_seconds(*pid)? - before) / elapsed);
    }
    let leader_rss_mib = rss_mib(leader.pid)?;
    let histogram_after = scrape_histogram(&leader.metrics, "qvdc_heartbeat_to_view_seconds").await;
    let (heartbeat_to_view, pool_reports_per_s) = match (histogram_before, histogram_after) {
        (Some(before), Some(after)) => {
            let window = after.since(&before);
            let per_s = window.count as f64 / elapsed;
            (Some((window.quantile(0.5), window.quantile(0.99))), per_s)
        }
        _ => (None, 0.0),
    };

    let mut reads = Vec::with_capacity(config.pool_reads);
    for _ in 0..config.pool_reads {
        let asked = Instant::now();
        let view = pool_view(&mut admin, &pool).await?;
        reads.push(asked.elapsed());
        anyhow::ensure!(
            view.hosts.len() == pool_hosts.len(),
            "pool {pool} shows {} hosts, not {}",
            view.hosts.len(),
            pool_hosts.len()
        );
    }

    let leader_kill = if config.kill_leader {
        let survivors: Vec<SocketAddr> = (nodes.iter())
            .filter(|n| n.role == "server" && n.pid != leader.pid)
            .filter_map(|n| n.address.as_deref()?.parse().ok())
            .collect();
        let watcher = operator(&certs, &survivors)?;
        admin = operator(&certs, &survivors)?;
        Some(kill_leader(&leader, watcher, &metrics, config.hosts).await?)
    } else {
        None
    };

    let detection = detect_losses(&mut admin, &mut agents, &names, config.losses).await?;
    for agent in agents.into_values() {
        agent.abort();
    }
    Ok(SwarmReport {
        hosts: config.hosts,
        registered_in,
        session_ends_registering,
        leader_cores,
        follower_cores,
        leader_rss_mib,
        swarm_cores,
        heartbeat_to_view,
        pool_reports_per_s,
        pool_hosts: pool_hosts.len(),
        pool_show: Spread::of(reads),
        detection,
        leader_kill,
    })
}

fn read_nodes(dir: &Path) -> anyhow::Result<Vec<NodeInfo>> {
    let path = dir.join("nodes.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}; start the cluster with `qvdc dev --dir {}` first",
            path.display(),
            dir.display()
        )
    })?;
    let unreadable = || format!("{} is not what `qvdc dev` writes", path.display());
    let values: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(unreadable)?;
    values
        .iter()
        .map(|v| NodeInfo::from_json(v).with_context(unreadable))
        .collect()
}

fn operator(certs: &Path, addrs: &[SocketAddr]) -> anyhow::Result<Client> {
    let identity = Identity::load(
        &certs.join("ca.crt"),
        &certs.join("admin.crt"),
        &certs.join("admin.key"),
    )?;
    let endpoint = Endpoint::bind("127.0.0.1:0".parse()?, &identity, false)?;
    Ok(Client::new(
        endpoint,
        addrs.to_vec(),
        Duration::from_secs(30),
    ))
}

fn spawn_agent(
    config: &SwarmConfig,
    name: &str,
    cluster: &[SocketAddr],
    endpoint: Endpoint,
    metrics: &HostMetrics,
    mounter: SimMounter,
) -> anyhow::Result<JoinHandle<()>> {
    let agent_config = AgentConfig {
        host_id: name.to_owned(),
        cluster: cluster.to_vec(),
        // Only a name: the simulated mounter keeps its table in memory.
        pool_root: PathBuf::from("/nonexistent/qvsim-swarm").join(name),
        pool_sources: SourcePolicy::new(Vec::new(), None),
        inventory: crate::world::sim_inventory(name),
        rescan_inventory: None,
        heartbeat_interval_ms: config.heartbeat_ms,
        migration_uri: None,
        metrics: metrics.clone(),
        leader_watch: config.leader_watch,
    };
    let parts = HostParts {
        mounter,
        hypervisor: SimHypervisor::new(),
        networker: SimNetworker::new().with_uplinks(["eth0"]),
    };
    let fence = Fence::open(Box::new(MemoryFence::default()))?;
    let agent =
        Agent::new(agent_config, endpoint, parts, fence).with_lease_store(MemoryLease::default());
    Ok(tokio::spawn(agent.run()))
}

async fn hosts(admin: &mut Client) -> anyhow::Result<Vec<qvdc_transport::protocol::HostView>> {
    match admin.request(ApiRequest::HostList).await? {
        ApiResponse::Hosts(hosts) => Ok(hosts),
        other => bail!("host list answered {other:?}"),
    }
}

/// Waits until every host in `names` is Ready; returns how many are.
async fn wait_ready(
    admin: &mut Client,
    names: &[String],
    bound: Duration,
) -> anyhow::Result<usize> {
    let started = Instant::now();
    let wanted: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let mut last_report = Instant::now();
    loop {
        let ready = match hosts(admin).await {
            Ok(hosts) => hosts
                .iter()
                .filter(|h| h.liveness == Liveness::Ready && wanted.contains(h.host_id.as_str()))
                .count(),
            Err(_) => 0,
        };
        if ready == names.len() {
            return Ok(ready);
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "swarm: {ready} of {} hosts Ready after {:.0} s",
                names.len(),
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        if started.elapsed() > bound {
            bail!(
                "only {ready} of {} hosts Ready after {} s",
                names.len(),
                bound.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn pool_view(admin: &mut Client, pool: &str) -> anyhow::Result<PoolView> {
    match admin
        .request(ApiRequest::PoolShow { name: pool.into() })
        .await?
    {
        ApiResponse::Pool(view) => Ok(view),
        other => bail!("pool show answered {other:?}"),
    }
}

/// Creates a dir pool on `hosts` (reusing one a previous run left) and waits until every
/// host reports it healthy.
async fn create_pool(admin: &mut Client, hosts: &[String]) -> anyhow::Result<String> {
    let name = format!("swarm-{}", hosts.len());
    let create = ApiRequest::PoolCreate {
        request_id: admin.new_request_id(),
        spec: PoolSpec {
            scope: Default::default(),
            name: name.clone(),
            source: PoolSource::Dir {
                path: "/srv/swarm".into(),
            },
        },
        hosts: hosts.to_vec(),
    };
    if let Err(e) = admin.request(create).await {
        // A pool of that name from an earlier run on the same hosts serves as well.
        pool_view(admin, &name)
            .await
            .with_context(|| format!("creating pool {name}: {e}"))?;
    }
    let started = Instant::now();
    loop {
        let view = pool_view(admin, &name).await?;
        if view.healthy_hosts.len() == hosts.len() {
            eprintln!(
                "swarm: pool {name} healthy on {} hosts {:.1} s after it was created",
                hosts.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(name);
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "pool {name} healthy on {} of {} hosts after 300 s",
                view.healthy_hosts.len(),
                hosts.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn leader_node(admin: &mut Client, nodes: &[NodeInfo]) -> anyhow::Result<NodeInfo> {
    let ApiResponse::ClusterStatus(status) = admin.request(ApiRequest::ClusterStatus).await? else {
        bail!("cluster status answered something else");
    };
    let leader = status.leader.context("no leader")?;
    nodes
        .iter()
        .find(|n| n.role == "server" && n.id == leader.to_string())
        .cloned()
        .with_context(|| format!("node {leader} is not in nodes.json"))
}

/// Kills the leader (`kill -9`) and times, from then on, a survivor naming a new leader and
/// each host's registration with it (from the agents' own counter), while the new leader's
/// host list is read for hosts shown Unreachable (none should be: every agent runs on).
async fn kill_leader(
    leader: &NodeInfo,
    mut watcher: Client,
    metrics: &HostMetrics,
    hosts: usize,
) -> anyhow::Result<LeaderKill> {
    let (registrations, failures) = (metrics.registrations.get(), metrics.sessions_failed.get());
    let killed = std::process::Command::new("kill")
        .args(["-9", &leader.pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(killed.success(), "kill -9 {} failed", leader.pid);
    let killed_at = Instant::now();
    let old_leader = leader.id.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let watching = tokio::spawn(async move {
        let (mut elected_after, mut unreachable_max) = (None, 0);
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            let ask = async {
                if elected_after.is_none() {
                    if let Ok(ApiResponse::ClusterStatus(status)) =
                        watcher.request(ApiRequest::ClusterStatus).await
                    {
                        let named = status.leader.map(|id| id.to_string());
                        if named.is_some_and(|id| id != old_leader) {
                            elected_after = Some(killed_at.elapsed());
                        }
                    }
                } else if let Ok(ApiResponse::Hosts(list)) =
                    watcher.request(ApiRequest::HostList).await
                {
                    let lost = list.iter().filter(|h| h.liveness == Liveness::Unreachable);
                    unreachable_max = unreachable_max.max(lost.count());
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), ask).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (elected_after, unreachable_max)
    });
    let mut registered = Vec::with_capacity(hosts);
    while registered.len() < hosts && killed_at.elapsed() < Duration::from_secs(60) {
        let now = (metrics.registrations.get() - registrations) as usize;
        let at = killed_at.elapsed();
        registered.extend(std::iter::repeat_n(
            at,
            now.saturating_sub(registered.len()),
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The host list keeps being read for a while after the last registration: a new leader
    // that shows live hosts Unreachable does so one liveness bound after it took over.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (elected_after, unreachable_max) = watching.await.context("the host-list reader")?;
    Ok(LeaderKill {
        elected_after,
        registered_count: registered.len(),
        registered: Spread::of(registered),
        unreachable_max,
        sessions_failed: metrics.sessions_failed.get() - failures,
    })
}

/// Stops `count` agents at once (from the end of the list, outside the measured pool when
/// there are hosts enough) and times, for each, until the leader shows its host
/// Unreachable.
async fn detect_losses(
    admin: &mut Client,
    agents: &mut BTreeMap<String, JoinHandle<()>>,
    names: &[String],
    count: usize,
) -> anyhow::Result<Spread> {
    let victims: Vec<&String> = names.iter().rev().take(count).collect();
    let stopped = Instant::now();
    for name in &victims {
        if let Some(agent) = agents.remove(*name) {
            agent.abort();
        }
    }
    let mut detected: BTreeMap<&str, Duration> = BTreeMap::new();
    while detected.len() < victims.len() {
        if stopped.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} of {} stopped hosts still Ready after 60 s",
                victims.len() - detected.len(),
                victims.len()
            );
        }
        for name in &victims {
            if detected.contains_key(name.as_str()) {
                continue;
            }
            let show = ApiRequest::HostShow {
                host: (*name).clone(),
            };
            if let Ok(ApiResponse::Host(detail)) = admin.request(show).await {
                if detail.host.liveness == Liveness::Unreachable {
                    detected.insert(name.as_str(), stopped.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Spread::of(detected.into_values().collect()))
}

/// User plus system CPU time of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are plain.
    let after = stat.rsplit_once(')').context("unreadable stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // Linux reports these in USER_HZ, 100 on every architecture qvdc runs on.
    Ok(ticks / 100.0)
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// A Prometheus histogram as scraped: cumulative counts by upper bound.
#[derive(Debug, Clone)]
struct Scraped {
    buckets: Vec<(f64, u64)>,
    count: u64,
}

impl Scraped {
    /// What was counted between `earlier` and this scrape.
    fn since(&self, earlier: &Scraped) -> Scraped {
        let buckets = self
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|((le, now), (_, then))| (*le, now - then))
            .collect();
        Scraped {
            buckets,
            count: self.count - earlier.count,
        }
    }

    /// The upper bound of the bucket holding quantile `q`, in milliseconds.
    fn quantile(&self, q: f64) -> f64 {
        let wanted = (self.count as f64 * q).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= wanted)
            .map_or(f64::INFINITY, |(le, _)| le * 1e3)
    }
}

/// Reads histogram `name` from the metrics endpoint at `addr` (plain HTTP on loopback).
async fn scrape_histogram(addr: &str, name: &str) -> Option<Scraped> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let mut buckets = Vec::new();
    let mut count = 0;
    let bucket = format!("{name}_bucket{{le=\"");
    let total = format!("{name}_count ");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&bucket) {
            let (le, n) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            buckets.push((le, n.trim().parse().ok()?));
        } else if let Some(n) = line.strip_prefix(&total) {
            count = n.trim().parse().ok()?;
        }
    }
    (!buckets.is_empty()).then_some(Scraped { buckets, count })
}
