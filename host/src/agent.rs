//! The host agent's connection to the control plane: dial any node, follow redirects to the
//! leader, register, then heartbeat while serving the leader's commands on the same
//! connection. On any failure it re-dials with bounded backoff.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use qvdc_transport::{
    backoff::Backoff,
    bugs::{self, Bug},
    facts::{self, Fact},
    limits::{VM_MEMORY_BYTES_MIN, VM_VCPUS_MAX},
    protocol::{
        CommandOutput, CommandResult, HostCommand, HostCommandKind, HostError, HostErrorKind,
        HostMessage, HostReply, Inventory, IsolationResponse, Leadership, NetworkReport,
        PowerState, Request, Response, VmDisk, VmReport, VmSpec, HOST_LEASE_MS,
        ISOLATION_RESPONSE_MS,
    },
    quic, Endpoint, TransportError,
};
use tokio::{sync::Notify, time::Instant};
use tracing::{debug, info, warn};

use crate::{
    fence::{Fence, FenceError},
    hypervisor::{DomainDisk, DomainNic, DomainSpec, Hypervisor},
    leader_watch::{NewLeader, Watch},
    lease::{HostLease, LeaseStore},
    mounter::Mounter,
    network::{Networker, Networks},
    pools::{validate_volume_name, PoolOp, Pools},
    silence::{self, Silence},
    source_policy::SourcePolicy,
    spares::Spares,
    vms::{VmOp, Vms},
};

pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// A request whose connection has heard nothing from the leader for this long (not even an
/// acknowledgement) counts as a lost leader; so does any request not answered within
/// [`SLOW_ANSWER_MAX_MS`]. A first survey and the hypervisor's self-description wait this
/// long too.
pub const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// How long a leader whose transport still acknowledges may take to answer a request
/// before the session is given up: a busy leader keeps its hosts (re-dialing would only add
/// a handshake to its load), but not beyond the point where the host's lease
/// ([`HOST_LEASE_MS`]) could not be renewed by the answer anyway.
pub const SLOW_ANSWER_MAX_MS: u64 = 6_000;
/// While the leader is silent, how often the agent asks another control-plane node who
/// leads.
pub const ASK_WHO_LEADS_EVERY_MS: u64 = 500;
/// How long asking another node who leads may take, dialing it included.
pub const ASK_WHO_LEADS_TIMEOUT_MS: u64 = 500;
/// How long a handshake with a node just named as the new leader may take: after an
/// election every host dials it at once, and a handshake given up half done is one more to
/// start over (measured with the swarm, docs/benchmarks.md).
pub const NAMED_LEADER_CONNECT_TIMEOUT_MS: u64 = 4_000;
/// A domain list older than this many heartbeat intervals (the hypervisor has not answered
/// since) is reported with every power state Unknown.
pub const SURVEY_STALE_AFTER_BEATS: u64 = 3;
pub const REDIAL_BACKOFF_MS_MIN: u64 = 100;
pub const REDIAL_BACKOFF_MS_MAX: u64 = 2_000;
const REDIAL: Backoff = Backoff::from_millis(REDIAL_BACKOFF_MS_MIN, REDIAL_BACKOFF_MS_MAX);
/// Commands the agent executes at once; more wait for a slot (QUIC flow control pushes back).
pub const COMMANDS_IN_FLIGHT_MAX: usize = 64;
/// Reboot requests a host remembers, so that a retried one does not reboot a guest twice.
pub const REBOOTS_REMEMBERED_MAX: usize = 1_024;
/// How often the agent checks whether its lease lapsed.
const ISOLATION_CHECK_MS: u64 = 200;
/// How often `qhost` looks at its hardware again.
pub const INVENTORY_RESCAN_MS: u64 = 60_000;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host_id: String,
    /// Control-plane addresses; any one will do.
    pub cluster: Vec<SocketAddr>,
    /// `<data-dir>/pools`: where pools are mounted.
    pub pool_root: PathBuf,
    /// Which pool sources this host accepts.
    pub pool_sources: SourcePolicy,
    pub inventory: Inventory,
    /// How to look at the hardware again; the agent sends the result when it changed. `None`
    /// keeps `inventory` as given (the simulation).
    pub rescan_inventory: Option<InventoryRescan>,
    pub heartbeat_interval_ms: u64,
    /// The libvirt URI other hosts' libvirtd reach this host's at, to live-migrate VMs
    /// here; `None`: VMs come here only by shutting down and starting again.
    pub migration_uri: Option<String>,
    /// What the agent measures (served by `qhost --metrics-listen`).
    pub metrics: crate::metrics::HostMetrics,
    /// Whether the agent keeps a watch for the next leader on another node while registered
    /// (ADR 32). Always on in `qhost`; the swarm turns it off to measure what it buys.
    pub leader_watch: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct InventoryRescan {
    pub scan: fn() -> Inventory,
    pub every_ms: u64,
}

/// What executes commands on this host: mounts, domains and bridges.
pub struct HostParts<M, H, N> {
    pub mounter: M,
    pub hypervisor: H,
    pub networker: N,
}

/// The host's actual state and the actors that own it.
struct Host<M, H, N> {
    /// This host's id, as its certificate names it.
    id: String,
    metrics: crate::metrics::HostMetrics,
    pools: Pools<M>,
    vms: Vms<H>,
    networks: Networks<N>,
    /// The domains and networks as last surveyed: what heartbeats send.
    survey: std::sync::Mutex<Survey>,
    /// The reboots of recent operator requests (request id, VM), latest last.
    rebooted: std::sync::Mutex<std::collections::VecDeque<((String, String), RebootOnce)>>,
    lease: HostLease,
}

/// One operator request's reboot: done at most once, its answer shared by retries.
type RebootOnce = Arc<tokio::sync::OnceCell<CommandOutput>>;

/// The host's domains and networks as the survey task last found them. Heartbeats send
/// this and never wait on the hypervisor or `ip` themselves: a hung libvirtd (whose calls
/// take up to `HYPERVISOR_CALL_TIMEOUT_MS` to fail) must not make a host whose pools are
/// healthy look Unreachable.
#[derive(Debug, Default)]
struct Survey {
    vms: Vec<VmReport>,
    /// When the listing that gave `vms` began.
    vms_at: Option<Instant>,
    /// Why the last listing failed, if it did.
    vms_error: Option<String>,
    networks: Vec<NetworkReport>,
    /// Surveys finished so far.
    count: u64,
    /// When a command last finished: a listing begun before then may not show its effect.
    changed_at: Option<Instant>,
    /// When the last finished survey began, whether its listing succeeded or not.
    surveyed_from: Option<Instant>,
}

/// The running agent. Cheap to share: the state lives behind `Arc`s.
pub struct Agent<M, H, N> {
    config: AgentConfig,
    endpoint: Endpoint,
    host: Arc<Host<M, H, N>>,
    /// The highest leader term seen; commands from lower terms are refused.
    fence: Arc<Fence>,
    /// Signalled after a command ran (or a pool changed), so its effect is surveyed and
    /// reported now rather than a heartbeat later.
    report_now: Arc<Notify>,
    /// Signalled when a survey asked for by `report_now` is done: time to send a heartbeat.
    surveyed: Arc<Notify>,
    /// The session's leader and its leadership, once registered.
    leader: Option<(SocketAddr, Leadership)>,
    /// Connections to nodes that answered and are not in use: the next session, watch or
    /// question on that node goes over one instead of a new handshake (a node asked who
    /// leads may become the leader; one that redirected the host is one it may watch).
    spares: Spares,
    /// How many times another node was asked who leads (picks the next one to ask).
    asked: usize,
    /// While registered: where the session's leader watch says a newer leader is.
    moved: Option<tokio::sync::oneshot::Receiver<NewLeader>>,
}

/// How a session reaches its node.
enum Dial {
    /// On a connection open already (the one a new leader was found on).
    Open(qvdc_transport::quinn::Connection),
    /// A node another node just named as the new leader: alive, and likely dialed by every
    /// host at once, so its handshake is given [`NAMED_LEADER_CONNECT_TIMEOUT_MS`].
    NamedLeader,
    Plain,
}

enum SessionEnd {
    Redirect(SocketAddr),
    /// Another node leads at a newer term than the session's leader: go there at once,
    /// on the connection already open to it if there is one.
    Moved(SocketAddr, Option<qvdc_transport::quinn::Connection>),
    Failed(String),
}

impl From<TransportError> for SessionEnd {
    fn from(e: TransportError) -> Self {
        SessionEnd::Failed(e.to_string())
    }
}

impl<M: Mounter, H: Hypervisor, N: Networker> Agent<M, H, N> {
    /// `fence` holds the highest leader term seen, loaded from its store.
    pub fn new(
        config: AgentConfig,
        endpoint: Endpoint,
        parts: HostParts<M, H, N>,
        fence: Fence,
    ) -> Self {
        assert!(
            !config.cluster.is_empty(),
            "an agent needs at least one control-plane address"
        );
        let report_now = Arc::new(Notify::new());
        let probe_interval = Duration::from_millis(config.heartbeat_interval_ms);
        let pools = Pools::new(
            parts.mounter,
            config.pool_root.clone(),
            config.pool_sources.clone(),
            probe_interval,
            report_now.clone(),
        )
        .measured(config.metrics.clone());
        let host = Host {
            id: config.host_id.clone(),
            metrics: config.metrics.clone(),
            pools,
            vms: Vms::new(parts.hypervisor).on_host(&config.host_id),
            networks: Networks::new(parts.networker),
            survey: std::sync::Mutex::default(),
            rebooted: std::sync::Mutex::default(),
            lease: HostLease::default(),
        };
        Self {
            config,
            endpoint,
            host: Arc::new(host),
            fence: Arc::new(fence),
            report_now,
            surveyed: Arc::new(Notify::new()),
            leader: None,
            spares: Spares::default(),
            asked: 0,
            moved: None,
        }
    }

    /// Keeps the host's lease in `store`, so a restarted agent knows when its lease lapses
    /// and what to stop then. Without it, the lease lives in the agent's memory.
    pub fn with_lease_store(mut self, store: impl LeaseStore) -> Self {
        let host = Arc::get_mut(&mut self.host).expect("set before the agent runs");
        host.lease = HostLease::new(Box::new(store));
        self
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let interval = Duration::from_millis(self.config.heartbeat_interval_ms);
        let _surveying = AbortOnDrop(tokio::spawn(survey_loop(
            self.host.clone(),
            interval,
            self.report_now.clone(),
            self.surveyed.clone(),
        )));
        self.host.pools.discover().await;
        let _fencing = AbortOnDrop(tokio::spawn(isolation_loop(
            self.host.clone(),
            self.report_now.clone(),
        )));
        let describe = self.host.vms.hypervisor().describe();
        let described = tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), describe);
        match described.await.unwrap_or_else(|_| {
            Err(HostError::new(
                HostErrorKind::Timeout,
                format!("no answer within {REQUEST_TIMEOUT_MS} ms"),
            ))
        }) {
            Ok(hypervisor) => self.config.inventory.hypervisor = hypervisor,
            Err(e) => {
                warn!(error = %e, "the hypervisor does not answer; VMs cannot run here until it does")
            }
        }
        let mut next = 0usize;
        // Where the last session said to go next, and how to reach it.
        let mut then: Option<(SocketAddr, Dial)> = None;
        let mut failed: Option<SocketAddr> = None;
        let mut failures = 0u32;
        loop {
            let (addr, dial) = then
                .take()
                .unwrap_or_else(|| (self.next_address(&mut next, failed), Dial::Plain));
            let end = self.session(addr, dial, &mut failures).await;
            self.leader = None;
            self.moved = None;
            match end {
                SessionEnd::Redirect(leader) => {
                    debug!(%addr, %leader, "redirected to the leader");
                    then = Some((leader, Dial::Plain));
                    tokio::time::sleep(Duration::from_millis(REDIAL_BACKOFF_MS_MIN / 2)).await;
                }
                SessionEnd::Moved(leader, connection) => {
                    info!(from = %addr, to = %leader, "another node leads now; moving there");
                    then = Some((leader, connection.map_or(Dial::NamedLeader, Dial::Open)));
                }
                SessionEnd::Failed(reason) => {
                    self.config.metrics.sessions_failed.inc();
                    failed = Some(addr);
                    failures = failures.saturating_add(1);
                    let pause = REDIAL.pause(failures);
                    let pause_ms = pause.as_millis();
                    warn!(%addr, %reason, "control plane session ended; re-dialing in {pause_ms} ms");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// The next control-plane address in rotation, skipping the one that just failed: after a
    /// leader dies, its address is the one least likely to answer.
    fn next_address(&self, next: &mut usize, failed: Option<SocketAddr>) -> SocketAddr {
        let cluster = &self.config.cluster;
        let mut addr = cluster[*next % cluster.len()];
        *next += 1;
        if Some(addr) == failed && cluster.len() > 1 {
            addr = cluster[*next % cluster.len()];
            *next += 1;
        }
        addr
    }

    /// Sends `message` to the leader and waits for its answer: for as long as the leader's
    /// transport acknowledges what this host sends (up to [`SLOW_ANSWER_MAX_MS`]), and not
    /// once it has acknowledged nothing for [`REQUEST_TIMEOUT_MS`]. While it is silent,
    /// other nodes are asked who leads; one that names a newer leader ends the session
    /// with a move there.
    async fn request(
        &mut self,
        connection: &qvdc_transport::quinn::Connection,
        message: HostMessage,
    ) -> Result<Response, SessionEnd> {
        let counters = |c: &qvdc_transport::quinn::Connection| {
            let stats = c.stats();
            (stats.udp_tx.datagrams, stats.udp_rx.datagrams)
        };
        let (sent, received) = counters(connection);
        let mut silence = Silence::new(sent, received);
        let request = Request::Host(message);
        let call = quic::call(connection, &request);
        tokio::pin!(call);
        let started = Instant::now();
        let mut next_ask = started;
        let mut check = tokio::time::interval(Duration::from_millis(silence::CHECK_EVERY_MS));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                reply = &mut call => return Ok(reply?),
                found = new_leader(&mut self.moved) => return Err(self.moved_to(found)),
                _ = check.tick() => {}
            }
            let now = Instant::now();
            let (sent, received) = counters(connection);
            let silent_for = silence.observe(sent, received, now);
            let waited = now - started;
            if silent_for >= Duration::from_millis(REQUEST_TIMEOUT_MS) {
                return Err(SessionEnd::Failed(format!(
                    "the leader acknowledged nothing for {} ms",
                    silent_for.as_millis()
                )));
            }
            if waited >= Duration::from_millis(SLOW_ANSWER_MAX_MS) {
                return Err(SessionEnd::Failed(format!(
                    "no answer within {SLOW_ANSWER_MAX_MS} ms"
                )));
            }
            // Only a silent leader makes the host ask around: a slow one is alive, and
            // thousands of hosts waiting on a busy leader must not turn to its followers.
            if Silence::is_silent(silent_for) && now >= next_ask {
                if let Some((at, leadership)) = self.leader {
                    next_ask = now + Duration::from_millis(ASK_WHO_LEADS_EVERY_MS);
                    if let Some(moved) = self.who_leads(at, leadership).await {
                        return Err(moved);
                    }
                }
            }
        }
    }

    /// Asks another control-plane node who leads (one node per call, in turn). Returns a
    /// move if it names a leader of a newer term than `leadership`, the session's.
    async fn who_leads(
        &mut self,
        leader: SocketAddr,
        leadership: Leadership,
    ) -> Option<SessionEnd> {
        let others: Vec<SocketAddr> = (self.config.cluster.iter().copied())
            .filter(|addr| *addr != leader)
            .collect();
        let addr = *others.get(self.asked % others.len().max(1))?;
        self.asked = self.asked.wrapping_add(1);
        let limit = Duration::from_millis(ASK_WHO_LEADS_TIMEOUT_MS);
        let asked = async {
            let connection = match self.spares.take(addr) {
                Some(connection) => connection,
                None => self.endpoint.connect(addr).await.ok()?,
            };
            let ask = HostMessage::WhoLeads {
                host_id: self.config.host_id.clone(),
            };
            let reply = quic::call(&connection, &Request::Host(ask)).await.ok();
            Some((connection, reply))
        };
        let (connection, reply) = tokio::time::timeout(limit, asked).await.ok()??;
        let named = match reply {
            Some(Response::Host(HostReply::Leader {
                leadership: Some(named),
                addr: Some(at),
            })) if named.term > leadership.term && named.node != leadership.node => {
                at.parse::<SocketAddr>().ok()
            }
            _ => None,
        };
        match named {
            Some(new_leader) => {
                let reuse = (new_leader == addr).then_some(connection);
                Some(SessionEnd::Moved(new_leader, reuse))
            }
            None => {
                self.spares.keep(addr, connection);
                None
            }
        }
    }

    /// One session with the control plane at `addr` (on `open` if a connection to it is
    /// open already); a registration resets `failures`.
    async fn session(&mut self, addr: SocketAddr, dial: Dial, failures: &mut u32) -> SessionEnd {
        let dialed = match (dial, self.spares.take(addr)) {
            (Dial::Open(connection), _) | (_, Some(connection)) => Ok(connection),
            (Dial::NamedLeader, None) => {
                (self.endpoint)
                    .connect_within(addr, NAMED_LEADER_CONNECT_TIMEOUT_MS)
                    .await
            }
            (Dial::Plain, None) => self.endpoint.connect(addr).await,
        };
        let connection = match dialed {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        // A first registration waits briefly for the first survey, so the leader does not
        // take an empty domain list for what the host runs.
        let first = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let surveyed = tokio::time::timeout(first, self.host.surveyed_once(&self.surveyed));
        let _ = surveyed.await;
        let stale_after = self.stale_after();
        let register = HostMessage::Register {
            host_id: self.config.host_id.clone(),
            inventory: self.config.inventory.clone(),
            vms: self.host.vm_reports(Instant::now(), stale_after),
        };
        let leadership = match self.request(&connection, register).await {
            Ok(Response::Host(HostReply::Registered { leadership })) => leadership,
            Ok(other) => {
                // It answered: alive, and maybe the leader or the node to watch soon.
                self.spares.keep(addr, connection);
                return not_registered(other);
            }
            Err(end) => return end,
        };
        info!(%addr, %leadership, host_id = %self.config.host_id, "registered with the leader");
        if let Err(e) = self.fence.admit(leadership) {
            // A node that still believes it leads an old term: find the real leader.
            return SessionEnd::Failed(e.to_string());
        }
        *failures = 0;
        self.config.metrics.registrations.inc();
        self.leader = Some((addr, leadership));
        if !self.config.leader_watch {
            // Nothing will take the spares over: a session needs no other connection.
            self.spares.close_all();
        }
        let _watching = self.config.leader_watch.then(|| {
            let (found, moved) = tokio::sync::oneshot::channel();
            self.moved = Some(moved);
            let watch = Watch {
                endpoint: self.endpoint.clone(),
                host_id: self.config.host_id.clone(),
                leader: (addr, leadership),
                cluster: self.config.cluster.clone(),
                spares: self.spares.take_all(),
            };
            AbortOnDrop(tokio::spawn(watch.run(found)))
        });
        let capabilities = HostMessage::Capabilities {
            host_id: self.config.host_id.clone(),
            leases: true,
            migration_uri: self.config.migration_uri.clone(),
        };
        match self.request(&connection, capabilities).await {
            Ok(Response::Host(HostReply::HeartbeatAck)) => {}
            // A leader of a release without leases: heartbeats are acknowledged as before.
            Ok(Response::Malformed { .. }) => {
                info!("the leader does not grant host leases; this host will not fence itself");
            }
            Ok(other) => return not_registered(other),
            Err(end) => return end,
        }
        let commands = tokio::spawn(serve_commands(
            connection.clone(),
            self.host.clone(),
            self.fence.clone(),
            self.report_now.clone(),
        ));
        let end = self.heartbeat(&connection).await;
        commands.abort();
        connection.close(0u32.into(), b"session over");
        end
    }

    /// Where the session goes after its watch named a new leader: onto the watch's
    /// connection if the watched node won, else to the winner, keeping the watched node's
    /// connection (it just answered) for what comes next.
    fn moved_to(&mut self, found: NewLeader) -> SessionEnd {
        let NewLeader {
            addr,
            watched: (watched, connection),
        } = found;
        if watched == addr {
            return SessionEnd::Moved(addr, Some(connection));
        }
        self.spares.keep(watched, connection);
        SessionEnd::Moved(addr, None)
    }

    async fn heartbeat(&mut self, connection: &qvdc_transport::quinn::Connection) -> SessionEnd {
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.config.heartbeat_interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let rescan_ms = self
            .config
            .rescan_inventory
            .map_or(INVENTORY_RESCAN_MS, |r| r.every_ms);
        let mut rescan = tokio::time::interval(Duration::from_millis(rescan_ms));
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescan.reset();
        let mut waited_for = None;
        for seq in 1.. {
            let surveyed = tokio::select! {
                found = new_leader(&mut self.moved) => return self.moved_to(found),
                _ = ticker.tick() => false,
                () = self.surveyed.notified() => {
                    ticker.reset();
                    true
                }
                _ = rescan.tick() => {
                    if let Err(end) = self.send_inventory_if_changed(connection).await {
                        return end;
                    }
                    continue;
                }
            };
            // A tick right after a command waits for the survey the command asked for (which
            // reports at once), but one tick only: a slow survey never silences the host.
            if let Some(changed) = self.host.awaiting_survey().filter(|_| !surveyed) {
                if waited_for != Some(changed) {
                    waited_for = Some(changed);
                    continue;
                }
            }
            let now = Instant::now();
            let (vms, vms_known) = self.host.domains(now, self.stale_after());
            let beat = HostMessage::Heartbeat {
                host_id: self.config.host_id.clone(),
                seq,
                pools: self.host.pools.reports(),
                vms,
                vms_known,
                networks: self.host.network_reports(),
            };
            let sent_at = Instant::now();
            match self.request(connection, beat).await {
                Ok(Response::Host(HostReply::Lease { fenced })) => {
                    self.host.lease.renew(sent_at, fenced);
                }
                // A leader of a release without HA: it restarts nothing elsewhere, so this
                // host has nothing to fence.
                Ok(Response::Host(HostReply::HeartbeatAck)) => self.host.lease.disarm(),
                Ok(other) => return not_registered(other),
                Err(end) => return end,
            }
        }
        unreachable!("heartbeat sequence numbers do not run out")
    }

    /// How old a domain list may be before its power states are reported as unknown.
    fn stale_after(&self) -> Duration {
        Duration::from_millis(self.config.heartbeat_interval_ms * SURVEY_STALE_AFTER_BEATS)
    }

    async fn send_inventory_if_changed(
        &mut self,
        connection: &qvdc_transport::quinn::Connection,
    ) -> Result<(), SessionEnd> {
        let Some(rescan) = self.config.rescan_inventory else {
            return Ok(());
        };
        let mut inventory = tokio::task::spawn_blocking(rescan.scan)
            .await
            .map_err(|e| SessionEnd::Failed(format!("inventory scan failed: {e}")))?;
        inventory.hypervisor = self.config.inventory.hypervisor.clone();
        if inventory == self.config.inventory {
            return Ok(());
        }
        info!("hardware changed; sending the new inventory");
        let message = HostMessage::InventoryChanged {
            host_id: self.config.host_id.clone(),
            inventory: inventory.clone(),
        };
        match self.request(connection, message).await? {
            Response::Host(HostReply::HeartbeatAck) => {
                self.config.inventory = inventory;
                Ok(())
            }
            other => Err(not_registered(other)),
        }
    }
}

/// Waits until the session's leader watch names a newer leader; forever if there is no
/// watch or it ended without one (the heartbeats then find the next leader).
async fn new_leader(moved: &mut Option<tokio::sync::oneshot::Receiver<NewLeader>>) -> NewLeader {
    if let Some(found) = moved {
        match found.await {
            Ok(new_leader) => {
                *moved = None;
                return new_leader;
            }
            Err(_) => *moved = None,
        }
    }
    std::future::pending().await
}

fn not_registered(reply: Response) -> SessionEnd {
    match reply {
        Response::NotLeader { leader: Some(hint) } => match hint.addr.parse() {
            Ok(addr) => SessionEnd::Redirect(addr),
            Err(_) => {
                SessionEnd::Failed(format!("leader address {:?} is not an address", hint.addr))
            }
        },
        Response::NotLeader { leader: None } => SessionEnd::Failed("no leader elected yet".into()),
        Response::Host(HostReply::Retry { reason }) => SessionEnd::Failed(reason),
        Response::Forbidden { reason } => SessionEnd::Failed(format!("refused: {reason}")),
        Response::Malformed { reason } => SessionEnd::Failed(format!(
            "the control plane could not read our request: {reason}"
        )),
        other => SessionEnd::Failed(format!("unexpected reply {other:?}")),
    }
}

/// Surveys the host's domains and networks every `interval`, and at once when something
/// changed (`asked`), telling the heartbeat (`done`) after each survey it was asked for.
async fn survey_loop<M: Mounter, H: Hypervisor, N: Networker>(
    host: Arc<Host<M, H, N>>,
    interval: Duration,
    asked: Arc<Notify>,
    done: Arc<Notify>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let report = tokio::select! {
            _ = ticker.tick() => false,
            () = asked.notified() => true,
        };
        host.survey().await;
        if report || host.survey.lock().expect("survey poisoned").count == 1 {
            done.notify_one();
        }
    }
}

/// Aborts a task when dropped: a task that lives as long as its owner's future.
/// Runs the isolation response while the lease is lapsed: on every check, every qvdc domain
/// the hypervisor lists that is not shut off is stopped as its response says (one on no
/// fence list is powered off: the list naming it may not have arrived), so a stop that
/// failed is tried again and a guest that started late is stopped too. The first check
/// runs before anything else the agent does after `AgentStarted`.
async fn isolation_loop<M: Mounter, H: Hypervisor, N: Networker>(
    host: Arc<Host<M, H, N>>,
    report_now: Arc<Notify>,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(ISOLATION_CHECK_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stops: tokio::task::JoinSet<String> = tokio::task::JoinSet::new();
    let mut stopping = std::collections::BTreeSet::new();
    let mut kept = std::collections::BTreeSet::new();
    let mut first = true;
    loop {
        ticker.tick().await;
        while let Some(done) = stops.try_join_next() {
            if let Ok(name) = done {
                stopping.remove(&name);
            }
        }
        let lapse = host.lease.respond(Instant::now());
        if let Some((fenced, new_lapse)) = lapse {
            if new_lapse {
                warn!("lease lapsed: no leader renewed it for {HOST_LEASE_MS} ms; stopping HA VMs so they can run elsewhere");
                kept.clear();
            }
            match host.vms.reports().await {
                Err(e) => {
                    warn!(error = %e, "lease lapsed, but the hypervisor does not list its domains; retrying")
                }
                Ok(domains) => {
                    for domain in domains.iter().filter(|d| d.power != PowerState::ShutOff) {
                        let Some(id) = domain.id.as_deref() else {
                            continue; // not qvdc's: never touched
                        };
                        let response = fenced
                            .iter()
                            .find(|f| f.id == id)
                            .map_or(IsolationResponse::PowerOff, |f| f.response);
                        let name = domain.name.clone();
                        let op = match response {
                            IsolationResponse::Keep => {
                                if kept.insert(name.clone()) {
                                    info!(vm = %name, "isolation response: kept running");
                                    facts::state(Fact::KeptOnIsolation {
                                        host: host.id.clone(),
                                        vm: name,
                                    });
                                }
                                continue;
                            }
                            IsolationResponse::ShutDown => Some(VmOp::Shutdown {
                                timeout_ms: ISOLATION_RESPONSE_MS,
                            }),
                            IsolationResponse::PowerOff => None,
                        };
                        if !stopping.insert(name.clone()) {
                            continue; // a stop is under way
                        }
                        let (host, report_now) = (host.clone(), report_now.clone());
                        stops.spawn(async move {
                            // A shutdown through the domain's actor, given the response time
                            // (it may wait behind a migration); then, or at once, the plug.
                            let shut_down = match op {
                                Some(op) => {
                                    let grace = Duration::from_millis(ISOLATION_RESPONSE_MS + 500);
                                    matches!(
                                        tokio::time::timeout(grace, host.vms.execute(&name, op)).await,
                                        Ok(Ok(_))
                                    )
                                }
                                None => false,
                            };
                            let stopped = if shut_down {
                                Ok(())
                            } else {
                                host.vms.destroy_now(&name).await
                            };
                            match stopped {
                                Ok(()) => info!(vm = %name, "isolation response: stopped"),
                                Err(e) => warn!(vm = %name, error = %e, "isolation response failed; retrying"),
                            }
                            host.command_finished();
                            report_now.notify_one();
                            name
                        });
                    }
                }
            }
        }
        if std::mem::take(&mut first) {
            facts::state(Fact::AgentStarted {
                host: host.id.clone(),
            });
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the leader's commands: one stream per command, answered with its result.
async fn serve_commands<M: Mounter, H: Hypervisor, N: Networker>(
    connection: qvdc_transport::quinn::Connection,
    host: Arc<Host<M, H, N>>,
    fence: Arc<Fence>,
    report_now: Arc<Notify>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(COMMANDS_IN_FLIGHT_MAX));
    while let Ok((send, mut recv)) = connection.accept_bi().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (host, fence, report_now) = (host.clone(), fence.clone(), report_now.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let command: HostCommand = match quic::read_request(&mut recv).await {
                Ok(c) => c,
                Err(e) => return warn!(error = %e, "unreadable command"),
            };
            let result = execute(command, &host, &fence).await;
            host.command_finished();
            report_now.notify_one();
            if let Err(e) = quic::respond(send, &result).await {
                warn!(error = %e, "could not answer a command");
            }
        });
    }
}

/// What a command works on, for counting its failures.
enum Family {
    Vm,
    Pool,
    Other,
}

fn family_of(kind: &HostCommandKind) -> Family {
    use HostCommandKind as K;
    match kind {
        K::InitStoragePool(_)
        | K::RemoveStoragePool { .. }
        | K::CreateVolume { .. }
        | K::ResizeVolume { .. }
        | K::DeleteVolume { .. }
        | K::ListVolumes { .. } => Family::Pool,
        K::CreateNetwork(_) | K::RemoveNetwork { .. } => Family::Other,
        _ => Family::Vm,
    }
}

async fn execute<M: Mounter, H: Hypervisor, N: Networker>(
    command: HostCommand,
    host: &Host<M, H, N>,
    fence: &Fence,
) -> CommandResult {
    if let Err(e) = fence.admit(command.id.leadership) {
        if matches!(e, FenceError::Stale { .. }) {
            warn!(id = %command.id, error = %e, "command refused");
        }
        let kind = match e {
            FenceError::Stale { .. } => HostErrorKind::StaleLeadership,
            _ => HostErrorKind::Failed,
        };
        host.metrics.command(command.kind.label(), "stale", 0.0);
        return CommandResult {
            id: command.id,
            outcome: Err(HostError::new(kind, e.to_string())),
        };
    }
    let kind = command.kind.label();
    info!(id = %command.id, command = kind, "executing command");
    facts::state(Fact::CommandObeyed {
        host: host.id.clone(),
        id: command.id,
    });
    let family = family_of(&command.kind);
    let started = Instant::now();
    let outcome = host.execute(command.kind).await;
    let seconds = qvdc_transport::metrics::since(started);
    match &outcome {
        Ok(_) => host.metrics.command(kind, "ok", seconds),
        Err(e) => {
            warn!(id = %command.id, error = %e, "command failed");
            host.metrics.command(kind, "failed", seconds);
            match family {
                Family::Vm => host.metrics.libvirt_error(kind),
                Family::Pool => host.metrics.mount_error(kind),
                Family::Other => {}
            }
        }
    }
    CommandResult {
        id: command.id,
        outcome,
    }
}

impl<M: Mounter, H: Hypervisor, N: Networker> Host<M, H, N> {
    /// The reboot of VM `name` for operator request `request`, new or under way or done.
    fn reboot_of(&self, request: String, name: String) -> RebootOnce {
        let key = (request, name);
        if bugs::active(Bug::RebootEveryRetry) {
            return RebootOnce::default();
        }
        let mut rebooted = self.rebooted.lock().expect("reboots poisoned");
        if let Some((_, once)) = rebooted.iter().find(|(seen, _)| *seen == key) {
            return once.clone();
        }
        if rebooted.len() >= REBOOTS_REMEMBERED_MAX {
            // The oldest finished one: a reboot under way is never forgotten (at most
            // COMMANDS_IN_FLIGHT_MAX run at once).
            if let Some(done) = rebooted.iter().position(|(_, once)| once.initialized()) {
                rebooted.remove(done);
            }
        }
        let once = RebootOnce::default();
        rebooted.push_back((key, once.clone()));
        once
    }

    async fn execute(&self, kind: HostCommandKind) -> Result<CommandOutput, HostError> {
        use HostCommandKind as K;
        let pools = &self.pools;
        let vm = |name: String, op| async move { self.vms.execute(&name, op).await };
        match kind {
            K::InitStoragePool(spec) => pools.execute(&spec.name.clone(), PoolOp::Init(spec)).await,
            K::RemoveStoragePool { pool } => pools.execute(&pool, PoolOp::Remove).await,
            K::CreateVolume {
                pool,
                name,
                format,
                size_bytes,
            } => {
                let op = PoolOp::CreateVolume {
                    name,
                    format,
                    size_bytes,
                };
                pools.execute(&pool, op).await
            }
            // The leader grows a volume with CreateVolume, which names the volume's format; a
            // resize without one would have to guess it from bytes a guest may have written.
            K::ResizeVolume { pool, name, .. } => Err(HostError::new(
                HostErrorKind::Invalid,
                format!("resizing {pool}/{name} needs the volume's format; send CreateVolume with the new size"),
            )),
            K::DeleteVolume { pool, name } => {
                pools.execute(&pool, PoolOp::DeleteVolume { name }).await
            }
            K::ListVolumes { pool } => pools.execute(&pool, PoolOp::ListVolumes).await,
            K::DefineVm(spec) => {
                let domain = self.resolve(spec)?;
                vm(domain.name.clone(), VmOp::Define(domain)).await
            }
            K::StartVm { name } if self.lease.lapsed(Instant::now()) => Err(HostError::new(
                HostErrorKind::Conflict,
                format!("not starting {name}: this host's lease lapsed (it lost the control plane), so its HA VMs may be restarted elsewhere; it starts guests again once a leader renews the lease"),
            )),
            K::StartVm { name } => vm(name, VmOp::Start).await,
            K::ShutdownVm { name, timeout_ms } => vm(name, VmOp::Shutdown { timeout_ms }).await,
            K::RebootVm { name, request } => {
                // Once per operator request: a retry after a leader change, even one that
                // arrives while the first reboot runs, waits for it and shares its answer; a
                // failed reboot is tried again.
                let once = self.reboot_of(request, name.clone());
                once.get_or_try_init(|| vm(name, VmOp::Reboot))
                    .await
                    .cloned()
            }
            K::ForceOffVm { name } => vm(name, VmOp::ForceOff).await,
            K::UndefineVm { name } => vm(name, VmOp::Undefine).await,
            K::AdoptVm {
                name,
                id,
                uuid,
                volumes,
            } => {
                // The domain must be the one adopted before its files are marked; the files are
                // marked before the id is recorded: a VM whose id is recorded owns its volumes.
                let check = VmOp::Adopt {
                    id: id.clone(),
                    uuid: uuid.clone(),
                    dry: true,
                };
                vm(name.clone(), check).await?;
                for disk in volumes {
                    let claim = PoolOp::ClaimVolume {
                        name: disk.volume,
                        format: disk.format,
                    };
                    pools.execute(&disk.pool, claim).await?;
                }
                let adopt = VmOp::Adopt {
                    id,
                    uuid,
                    dry: false,
                };
                vm(name, adopt).await
            }
            K::RenameVm { name, to, uuid } => vm(name, VmOp::Rename { to, uuid }).await,
            K::ReleaseVm { name, id, volumes } => {
                let check = VmOp::Release {
                    id: id.clone(),
                    dry: true,
                };
                vm(name.clone(), check).await?;
                for disk in volumes {
                    let disown = PoolOp::DisownVolume { name: disk.volume };
                    pools.execute(&disk.pool, disown).await?;
                }
                vm(name, VmOp::Release { id, dry: false }).await
            }
            K::MigrateVm {
                name,
                id,
                to,
                storage_unsafe,
            } => {
                let op = VmOp::Migrate {
                    id,
                    to,
                    storage_unsafe,
                };
                vm(name, op).await
            }
            K::CreateNetwork(spec) => self.networks.ensure(spec).await,
            K::RemoveNetwork { name } => self.networks.remove(&name).await,
        }
    }

    /// Makes a VM concrete for this host: its disks become files in pools mounted here and
    /// its NICs ports on bridges configured here.
    fn resolve(&self, spec: VmSpec) -> Result<DomainSpec, HostError> {
        let invalid = |message: String| HostError::new(HostErrorKind::Invalid, message);
        validate_volume_name(&spec.name).map_err(|_| {
            invalid(format!(
                "VM name {:?} must be letters, digits, '.', '_' or '-', not starting with '.' or '-'",
                spec.name
            ))
        })?;
        if spec.vcpus == 0 || spec.vcpus > VM_VCPUS_MAX {
            return Err(invalid(format!(
                "a VM needs 1 to {VM_VCPUS_MAX} vCPUs, not {}",
                spec.vcpus
            )));
        }
        if spec.memory_bytes < VM_MEMORY_BYTES_MIN {
            return Err(invalid(format!(
                "a VM needs at least 16 MiB of memory, not {} bytes",
                spec.memory_bytes
            )));
        }
        let mounted: std::collections::BTreeSet<String> = self
            .pools
            .reports()
            .into_iter()
            .filter(|r| r.mounted)
            .map(|r| r.pool)
            .collect();
        let mut disks = Vec::with_capacity(spec.disks.len());
        for disk in &spec.disks {
            validate_volume_name(&disk.volume)?;
            if !mounted.contains(&disk.pool) {
                return Err(HostError::new(
                    HostErrorKind::NotFound,
                    format!(
                        "pool {} is not mounted on this host; assign the pool to this host first",
                        disk.pool
                    ),
                ));
            }
            disks.push(DomainDisk {
                path: self.pools.mount_path(&disk.pool).join(&disk.volume),
                format: disk.format,
            });
        }
        let mut nics = Vec::with_capacity(spec.nics.len());
        for nic in &spec.nics {
            let bridge = self.networks.bridge_of(&nic.network).ok_or_else(|| {
                HostError::new(
                    HostErrorKind::NotFound,
                    format!(
                        "network {} is not configured on this host; assign the network to this host first",
                        nic.network
                    ),
                )
            })?;
            nics.push(DomainNic {
                bridge,
                mac: nic.mac.clone(),
            });
        }
        Ok(DomainSpec {
            id: spec.id,
            name: spec.name,
            vcpus: spec.vcpus,
            memory_bytes: spec.memory_bytes,
            disks,
            nics,
        })
    }

    /// Names the volume each file disk is, when it lies directly in a pool mounted here.
    fn locate_disks(&self, reports: &mut [VmReport]) {
        let mounted: Vec<(PathBuf, String)> = self
            .pools
            .reports()
            .into_iter()
            .filter(|r| r.mounted)
            .map(|r| (self.pools.mount_path(&r.pool), r.pool))
            .collect();
        for disk in reports.iter_mut().flat_map(|r| &mut r.disks) {
            let (Some(file), Some(format)) = (&disk.file, disk.format) else {
                continue;
            };
            let file = Path::new(file);
            let (Some(dir), Some(volume)) = (file.parent(), file.file_name()) else {
                continue;
            };
            let volume = volume.to_string_lossy();
            if validate_volume_name(&volume).is_err() {
                continue;
            }
            disk.volume = mounted
                .iter()
                .find(|(path, _)| path == dir)
                .map(|(_, pool)| VmDisk {
                    pool: pool.clone(),
                    volume: volume.into_owned(),
                    format,
                });
        }
    }

    /// Lists the domains and networks now and keeps what it found for the heartbeats. Slow
    /// only when the hypervisor or `ip` is: every call is bounded, and the two are listed
    /// side by side, so a hung hypervisor does not hold the networks' reports back.
    async fn survey(&self) {
        let began = Instant::now();
        let metrics = &self.metrics;
        let domains = async {
            let listed = self.vms.reports().await;
            let mut survey = self.survey.lock().expect("survey poisoned");
            match listed {
                Ok(mut reports) => {
                    self.locate_disks(&mut reports);
                    survey.vms = reports;
                    survey.vms_at = Some(began);
                    survey.vms_error = None;
                }
                Err(e) => {
                    metrics.libvirt_error("list");
                    warn!(error = %e, "cannot list domains; reporting them as unknown");
                    survey.vms_error = Some(e.to_string());
                }
            }
        };
        let networks = async {
            let reports = self.networks.reports().await;
            self.survey.lock().expect("survey poisoned").networks = reports;
        };
        tokio::join!(domains, networks);
        metrics
            .survey_seconds
            .observe(qvdc_transport::metrics::since(began));
        let mut survey = self.survey.lock().expect("survey poisoned");
        survey.count += 1;
        survey.surveyed_from = Some(began);
    }

    /// A command finished: domain lists begun before now may not show what it did.
    fn command_finished(&self) {
        self.survey.lock().expect("survey poisoned").changed_at = Some(Instant::now());
    }

    /// The last command's end, if no survey begun after it has finished yet (one is under
    /// way: a command asks for one).
    fn awaiting_survey(&self) -> Option<Instant> {
        let survey = self.survey.lock().expect("survey poisoned");
        let changed = survey.changed_at?;
        survey
            .surveyed_from
            .is_none_or(|began| began < changed)
            .then_some(changed)
    }

    /// Waits until a first survey has finished.
    async fn surveyed_once(&self, surveyed: &Notify) {
        loop {
            let notified = surveyed.notified();
            if self.survey.lock().expect("survey poisoned").count > 0 {
                return;
            }
            notified.await;
        }
    }

    /// The domains as last surveyed. If the last listing failed, or is older than
    /// `stale_after` (the hypervisor has not answered since), each with its power state
    /// Unknown: an old answer must not pass for a fresh one.
    fn vm_reports(&self, now: Instant, stale_after: Duration) -> Vec<VmReport> {
        self.domains(now, stale_after).0
    }

    /// The domains as last surveyed (see `vm_reports`), and whether the hypervisor has
    /// listed them at all yet.
    fn domains(&self, now: Instant, stale_after: Duration) -> (Vec<VmReport>, bool) {
        let survey = self.survey.lock().expect("survey poisoned");
        let mut reports = survey.vms.clone();
        let age = survey.vms_at.map(|at| now.saturating_duration_since(at));
        let why = match (&survey.vms_error, age) {
            (Some(error), _) => Some(format!("the hypervisor does not answer: {error}")),
            (None, Some(age)) if age > stale_after => Some(format!(
                "the hypervisor has not answered for {} ms",
                age.as_millis()
            )),
            _ => None,
        };
        if let Some(why) = &why {
            for report in &mut reports {
                report.power = PowerState::Unknown;
                report.reason.clone_from(why);
            }
        }
        // A list that failed or is stale is sent for what it shows (every power Unknown),
        // but not as the host's domain list: a VM missing from it is not known to be gone.
        let known = survey.vms_at.is_some() && why.is_none();
        (reports, known)
    }

    fn network_reports(&self) -> Vec<NetworkReport> {
        self.survey
            .lock()
            .expect("survey poisoned")
            .networks
            .clone()
    }
}
