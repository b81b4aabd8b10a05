//! The supervision tree that runs on the leader: a cluster supervisor with one child per host
//! and one per pool. Children that fail are restarted with bounded backoff. Each actor only
//! decodes a message, calls its core and carries out the effects.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use qvdc_raft::{
    model::{DiffItem, NetworkRecord, OrdMap, PoolRecord, VmRecord},
    DesiredState,
};
use qvdc_transport::{
    protocol::{
        CommandId, CommandOutput, CommandResult, HostCommand, HostCommandKind, Leadership,
        Liveness, NetworkReport, NetworkView, PoolReport, PoolView, VmReport, VmView,
    },
    quic, quinn,
};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

use crate::core::{
    liveness::liveness, network, network::NetworkCore, pool, pool::PoolCore, vm, vm::VmCore,
    volumes, volumes::VolumesCore, Timings,
};

pub(crate) const RESTART_BACKOFF_MS_MIN: u64 = 100;
pub(crate) const RESTART_BACKOFF_MS_MAX: u64 = 5_000;
/// Removals one heartbeat may trigger on its host: a host that reports many objects it
/// should not have (or makes them up) costs the leader a few commands per heartbeat, not
/// one per name.
pub(crate) const STRAY_REMOVALS_PER_HEARTBEAT_MAX: usize = 8;

// ---------------------------------------------------------------------------------------
// Messages

pub(crate) enum ClusterMsg {
    DesiredChanged(Arc<DesiredState>),
    HostConnected {
        host_id: String,
        connection: quinn::Connection,
    },
    Heartbeat {
        host_id: String,
        connection: quinn::Connection,
        pools: Vec<PoolReport>,
        vms: Vec<VmReport>,
        networks: Vec<NetworkReport>,
    },
    Execute {
        host: String,
        command: HostCommand,
        done: Done,
    },
    /// The network supervisors by network name.
    Networks(RpcReplyPort<BTreeMap<String, ActorRef<NetMsg>>>),
    /// The pool supervisors by pool name; callers query them directly, so a slow child
    /// never holds up this actor.
    Pools(RpcReplyPort<BTreeMap<String, ActorRef<PoolMsg>>>),
    /// The host supervisors by host id, for the same reason.
    Hosts(RpcReplyPort<BTreeMap<String, ActorRef<HostMsg>>>),
    /// What each host said it has in its last heartbeat to this leader.
    Reported(RpcReplyPort<BTreeMap<String, crate::HostReported>>),
    /// The VM supervisors by VM name, for the same reason.
    Vms(RpcReplyPort<BTreeMap<String, ActorRef<VmMsg>>>),
    Respawn {
        child: Child,
    },
}

pub(crate) enum HostMsg {
    Connected(quinn::Connection),
    Seen(quinn::Connection),
    Execute { command: HostCommand, done: Done },
    Liveness(RpcReplyPort<Liveness>),
}

/// Called with a command's outcome once its host answered (or could not be reached).
pub(crate) type Done = Box<dyn FnOnce(Result<CommandOutput, String>) + Send>;

pub(crate) enum NetMsg {
    Record(NetworkRecord),
    Observe {
        host: String,
        at: Instant,
        report: Option<NetworkReport>,
    },
    CommandDone {
        host: String,
        id: CommandId,
        outcome: Result<(), String>,
    },
    Tick,
    View(RpcReplyPort<NetworkView>),
}

pub(crate) enum VmMsg {
    Record(VmRecord),
    Observe {
        at: Instant,
        report: Option<VmReport>,
    },
    CommandDone {
        id: CommandId,
        outcome: Result<(), String>,
    },
    Tick,
    View(RpcReplyPort<VmView>),
}

pub(crate) enum PoolMsg {
    Record(PoolRecord),
    VolumeDone {
        volume: String,
        id: CommandId,
        outcome: Result<(), String>,
    },
    Observe {
        host: String,
        at: Instant,
        report: Option<PoolReport>,
    },
    CommandDone {
        host: String,
        id: CommandId,
        outcome: Result<(), String>,
    },
    Tick,
    View(RpcReplyPort<PoolView>),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Child {
    Host(String),
    Pool(String),
    Vm(String),
    Network(String),
}

// ---------------------------------------------------------------------------------------
// Cluster supervisor

pub(crate) struct ClusterSupervisor;

pub(crate) struct ClusterArgs {
    pub leadership: Leadership,
    pub desired: watch::Receiver<Arc<DesiredState>>,
    pub timings: Timings,
}

pub(crate) struct ClusterState {
    leadership: Leadership,
    timings: Timings,
    desired: Arc<DesiredState>,
    hosts: BTreeMap<String, ActorRef<HostMsg>>,
    pools: BTreeMap<String, ActorRef<PoolMsg>>,
    vms: BTreeMap<String, ActorRef<VmMsg>>,
    networks: BTreeMap<String, ActorRef<NetMsg>>,
    /// Each host's latest heartbeat, replayed to pool and VM supervisors that start later so
    /// they can decide at once instead of waiting for the next heartbeat.
    last_heartbeat: BTreeMap<String, Heartbeat>,
    /// Domains of deleted VMs and mounts of unassigned pools being removed from their hosts,
    /// by (host, command, name), with when the last command was sent.
    removing: BTreeMap<(String, &'static str, String), Instant>,
    next_seq: u64,
    backoff_ms: BTreeMap<Child, u64>,
    watcher: tokio::task::JoinHandle<()>,
}

pub(crate) struct Heartbeat {
    at: Instant,
    pools: Vec<PoolReport>,
    vms: Vec<VmReport>,
    networks: Vec<NetworkReport>,
}

impl ClusterState {
    fn child_of(&self, cell: &ActorCell) -> Option<Child> {
        let id = cell.get_id();
        if let Some((h, _)) = self.hosts.iter().find(|(_, r)| r.get_id() == id) {
            return Some(Child::Host(h.clone()));
        }
        if let Some((p, _)) = self.pools.iter().find(|(_, r)| r.get_id() == id) {
            return Some(Child::Pool(p.clone()));
        }
        if let Some((n, _)) = self.networks.iter().find(|(_, r)| r.get_id() == id) {
            return Some(Child::Network(n.clone()));
        }
        self.vms
            .iter()
            .find(|(_, r)| r.get_id() == id)
            .map(|(v, _)| Child::Vm(v.clone()))
    }

    fn next_id(&mut self) -> CommandId {
        self.next_seq += 1;
        CommandId {
            leadership: self.leadership,
            seq: self.next_seq,
        }
    }
}

async fn spawn_host(
    myself: &ActorRef<ClusterMsg>,
    state: &mut ClusterState,
    host_id: &str,
) -> Result<(), ActorProcessingErr> {
    let args = HostArgs {
        host_id: host_id.to_owned(),
        timings: state.timings,
    };
    let (actor, _) = Actor::spawn_linked(None, HostSupervisor, args, myself.get_cell()).await?;
    state.hosts.insert(host_id.to_owned(), actor);
    Ok(())
}

async fn spawn_pool(
    myself: &ActorRef<ClusterMsg>,
    state: &mut ClusterState,
    name: &str,
) -> Result<(), ActorProcessingErr> {
    let Some(record) = state.desired.pools.get(name) else {
        return Ok(());
    };
    let core = PoolCore::new(
        record.spec.clone(),
        record.hosts.clone(),
        state.leadership,
        state.timings,
    );
    let mut volumes = VolumesCore::new(name.to_owned(), state.leadership, state.timings);
    volumes.set_desired(record.volumes.clone());
    let args = PoolArgs {
        core,
        volumes,
        cluster: myself.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, PoolSupervisor, args, myself.get_cell()).await?;
    info!(pool = %name, leadership = %state.leadership, "pool supervisor started");
    for host in &record.hosts {
        if let Some(beat) = state.last_heartbeat.get(host) {
            let report = beat.pools.iter().find(|r| r.pool == name).cloned();
            actor.cast(PoolMsg::Observe {
                host: host.clone(),
                at: beat.at,
                report,
            })?;
        }
    }
    state.pools.insert(name.to_owned(), actor);
    Ok(())
}

async fn spawn_network(
    myself: &ActorRef<ClusterMsg>,
    state: &mut ClusterState,
    name: &str,
) -> Result<(), ActorProcessingErr> {
    let Some(record) = state.desired.networks.get(name) else {
        return Ok(());
    };
    let args = NetArgs {
        core: NetworkCore::new(record.clone(), state.leadership, state.timings),
        cluster: myself.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, NetSupervisor, args, myself.get_cell()).await?;
    for host in &record.hosts {
        if let Some(beat) = state.last_heartbeat.get(host) {
            let report = beat.networks.iter().find(|r| r.network == name).cloned();
            actor.cast(NetMsg::Observe {
                host: host.clone(),
                at: beat.at,
                report,
            })?;
        }
    }
    state.networks.insert(name.to_owned(), actor);
    Ok(())
}

async fn spawn_vm(
    myself: &ActorRef<ClusterMsg>,
    state: &mut ClusterState,
    name: &str,
) -> Result<(), ActorProcessingErr> {
    let Some(record) = state.desired.vms.get(name) else {
        return Ok(());
    };
    let mut core = VmCore::new(record.clone(), state.leadership, state.timings);
    if qvdc_transport::bugs::active(qvdc_transport::bugs::Bug::StartVmOnSecondHost) {
        if let Some(spare) = state.desired.hosts.keys().find(|h| **h != record.host) {
            core = core.with_spare_host(spare.clone());
        }
    }
    let args = VmArgs {
        core,
        cluster: myself.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, VmSupervisor, args, myself.get_cell()).await?;
    if let Some(beat) = state.last_heartbeat.get(&record.host) {
        let report = beat.vms.iter().find(|v| v.name == name).cloned();
        actor.cast(VmMsg::Observe {
            at: beat.at,
            report,
        })?;
    }
    state.vms.insert(name.to_owned(), actor);
    Ok(())
}

/// Brings one kind of children from `previous` to `desired`: stops the children whose object
/// is gone, hands the others their record if it changed, and returns the objects that have
/// no child yet, in name order. It walks only what differs between the two versions (they
/// share everything else), so a write costs in proportion to what it changed.
fn sync_children<R: Clone + PartialEq, M: ractor::Message>(
    children: &mut BTreeMap<String, ActorRef<M>>,
    previous: &OrdMap<String, R>,
    desired: &OrdMap<String, R>,
    record: fn(R) -> M,
    gone: &str,
) -> Result<Vec<String>, ActorProcessingErr> {
    let mut unsupervised = Vec::new();
    for change in previous.diff(desired) {
        let (name, now) = match change {
            DiffItem::Remove(name, _) => {
                if let Some(actor) = children.remove(name) {
                    actor.stop(Some(gone.into()));
                }
                continue;
            }
            DiffItem::Add(name, now)
            | DiffItem::Update {
                new: (name, now), ..
            } => (name, now),
        };
        match children.get(name) {
            Some(actor) => actor.cast(record(now.clone()))?,
            None => unsupervised.push(name.clone()),
        }
    }
    Ok(unsupervised)
}

/// Makes the children match the desired state: one per host, pool, VM and network.
/// `previous` is the state the children were last given.
async fn converge(
    myself: &ActorRef<ClusterMsg>,
    state: &mut ClusterState,
    previous: &DesiredState,
) -> Result<(), ActorProcessingErr> {
    let hosts: Vec<String> = previous
        .hosts
        .diff(&state.desired.hosts)
        .filter_map(|change| match change {
            DiffItem::Add(host, _) if !state.hosts.contains_key(host) => Some(host.clone()),
            _ => None,
        })
        .collect();
    for host in hosts {
        spawn_host(myself, state, &host).await?;
    }
    let desired = state.desired.clone();
    let pools = sync_children(
        &mut state.pools,
        &previous.pools,
        &desired.pools,
        |record| PoolMsg::Record(PoolRecord::clone(&record)),
        "pool deleted",
    )?;
    for pool in pools {
        spawn_pool(myself, state, &pool).await?;
    }
    let vms = sync_children(
        &mut state.vms,
        &previous.vms,
        &desired.vms,
        VmMsg::Record,
        "VM deleted",
    )?;
    for vm in vms {
        spawn_vm(myself, state, &vm).await?;
    }
    let networks = sync_children(
        &mut state.networks,
        &previous.networks,
        &desired.networks,
        NetMsg::Record,
        "network deleted",
    )?;
    for network in networks {
        spawn_network(myself, state, &network).await?;
    }
    Ok(())
}

impl Actor for ClusterSupervisor {
    type Msg = ClusterMsg;
    type State = ClusterState;
    type Arguments = ClusterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ClusterMsg>,
        args: ClusterArgs,
    ) -> Result<ClusterState, ActorProcessingErr> {
        let mut desired_rx = args.desired;
        let desired = desired_rx.borrow_and_update().clone();
        let forward = myself.clone();
        let watcher = tokio::spawn(async move {
            while desired_rx.changed().await.is_ok() {
                let latest = desired_rx.borrow_and_update().clone();
                if forward.cast(ClusterMsg::DesiredChanged(latest)).is_err() {
                    return;
                }
            }
        });
        // Children start in the tree's first message, not here: `spawn` waits for
        // `pre_start`, and a new leader must not keep operators waiting while thousands of
        // supervisors start (it measured ~0.6 s of failover at 25,000 pools).
        myself
            .cast(ClusterMsg::DesiredChanged(desired.clone()))
            .map_err(|e| format!("the supervision tree cannot reach itself: {e}"))?;
        info!(
            leadership = %args.leadership,
            hosts = desired.hosts.len(),
            pools = desired.pools.len(),
            "supervision started"
        );
        let state = ClusterState {
            leadership: args.leadership,
            timings: args.timings,
            desired: Arc::new(DesiredState::default()),
            hosts: BTreeMap::new(),
            pools: BTreeMap::new(),
            vms: BTreeMap::new(),
            networks: BTreeMap::new(),
            last_heartbeat: BTreeMap::new(),
            removing: BTreeMap::new(),
            next_seq: 0,
            backoff_ms: BTreeMap::new(),
            watcher,
        };
        Ok(state)
    }

    async fn post_stop(
        &self,
        _: ActorRef<ClusterMsg>,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        state.watcher.abort();
        info!(leadership = %state.leadership, "supervision stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ClusterMsg>,
        message: ClusterMsg,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ClusterMsg::DesiredChanged(desired) => {
                let previous = std::mem::replace(&mut state.desired, desired);
                converge(&myself, state, &previous).await?;
            }
            ClusterMsg::HostConnected {
                host_id,
                connection,
            } => {
                if !state.hosts.contains_key(&host_id) {
                    spawn_host(&myself, state, &host_id).await?;
                }
                state.hosts[&host_id].cast(HostMsg::Connected(connection))?;
            }
            ClusterMsg::Heartbeat {
                host_id,
                connection,
                pools,
                vms,
                networks,
            } => route_heartbeat(state, host_id, connection, pools, vms, networks),
            ClusterMsg::Execute {
                host,
                command,
                done,
            } => match state.hosts.get(&host) {
                Some(actor) => actor.cast(HostMsg::Execute { command, done })?,
                None => done(Err(format!("host {host} has no supervisor"))),
            },
            ClusterMsg::Vms(reply) => {
                let _ = reply.send(state.vms.clone());
            }
            ClusterMsg::Networks(reply) => {
                let _ = reply.send(state.networks.clone());
            }
            ClusterMsg::Pools(reply) => {
                let _ = reply.send(state.pools.clone());
            }
            ClusterMsg::Hosts(reply) => {
                let _ = reply.send(state.hosts.clone());
            }
            ClusterMsg::Reported(reply) => {
                let reported = state
                    .last_heartbeat
                    .iter()
                    .map(|(host, beat)| {
                        let reported = crate::HostReported {
                            pools: beat
                                .pools
                                .iter()
                                .filter(|p| p.mounted)
                                .map(|p| p.pool.clone())
                                .collect(),
                            unmanaged: beat
                                .vms
                                .iter()
                                .filter(|v| v.id.is_none())
                                .cloned()
                                .collect(),
                        };
                        (host.clone(), reported)
                    })
                    .collect();
                let _ = reply.send(reported);
            }
            ClusterMsg::Respawn { child } => match &child {
                Child::Host(h) if !state.hosts.contains_key(h) => {
                    spawn_host(&myself, state, h).await?
                }
                Child::Pool(p) if !state.pools.contains_key(p) => {
                    spawn_pool(&myself, state, p).await?
                }
                Child::Vm(v) if !state.vms.contains_key(v) => spawn_vm(&myself, state, v).await?,
                Child::Network(n) if !state.networks.contains_key(n) => {
                    spawn_network(&myself, state, n).await?
                }
                _ => {}
            },
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ClusterMsg>,
        event: SupervisionEvent,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_default())
            }
            _ => return Ok(()),
        };
        let Some(child) = state.child_of(&cell) else {
            return Ok(());
        };
        match &child {
            Child::Host(h) => drop(state.hosts.remove(h)),
            Child::Pool(p) => {
                if state.pools.remove(p).is_some() && !state.desired.pools.contains_key(p) {
                    return Ok(()); // stopped because the pool was deleted
                }
            }
            Child::Vm(v) => {
                if state.vms.remove(v).is_some() && !state.desired.vms.contains_key(v) {
                    return Ok(()); // stopped because the VM was deleted
                }
            }
            Child::Network(n) => {
                if state.networks.remove(n).is_some() && !state.desired.networks.contains_key(n) {
                    return Ok(()); // stopped because the network was deleted
                }
            }
        }
        let backoff = state
            .backoff_ms
            .entry(child.clone())
            .or_insert(RESTART_BACKOFF_MS_MIN);
        warn!(?child, %why, backoff_ms = *backoff, "child stopped; restarting");
        myself.send_after(Duration::from_millis(*backoff), move || {
            ClusterMsg::Respawn { child }
        });
        *backoff = (*backoff * 2).min(RESTART_BACKOFF_MS_MAX);
        Ok(())
    }
}

/// Hands a heartbeat to the host's supervisor (with the connection it came on: a host that
/// registered with an earlier tree of this node never registers again), each pool's part of
/// it to that pool's supervisor and each VM's to that VM's, and removes the domains of
/// deleted VMs from the host.
fn route_heartbeat(
    state: &mut ClusterState,
    host_id: String,
    connection: quinn::Connection,
    pools: Vec<PoolReport>,
    vms: Vec<VmReport>,
    networks: Vec<NetworkReport>,
) {
    let now = Instant::now();
    if let Some(actor) = state.hosts.get(&host_id) {
        let _ = actor.cast(HostMsg::Seen(connection));
    }
    for record in state.desired.pools_of_host(&host_id) {
        let name = &record.spec.name;
        if let Some(actor) = state.pools.get(name) {
            let report = pools.iter().find(|r| r.pool == *name).cloned();
            let _ = actor.cast(PoolMsg::Observe {
                host: host_id.clone(),
                at: now,
                report,
            });
        }
    }
    for record in state.desired.vms_of_host(&host_id) {
        let name = &record.spec.name;
        if let Some(actor) = state.vms.get(name) {
            let report = vms.iter().find(|v| v.name == *name).cloned();
            let _ = actor.cast(VmMsg::Observe { at: now, report });
        }
    }
    for record in state.desired.networks_of_host(&host_id) {
        let name = &record.spec.name;
        if let Some(actor) = state.networks.get(name) {
            let report = networks.iter().find(|r| r.network == *name).cloned();
            let _ = actor.cast(NetMsg::Observe {
                host: host_id.clone(),
                at: now,
                report,
            });
        }
    }
    let strays = [
        (
            "remove-pool",
            pool::strays(&state.desired, &host_id, &pools),
        ),
        ("undefine-vm", vm::strays(&state.desired, &host_id, &vms)),
        (
            "remove-network",
            network::strays(&state.desired, &host_id, &networks),
        ),
    ];
    remove_strays(state, &host_id, strays, now);
    let beat = Heartbeat {
        at: now,
        pools,
        vms,
        networks,
    };
    state.last_heartbeat.insert(host_id, beat);
}

/// Removes from `host_id` what is no longer meant to be there: mounts of pools unassigned
/// from it, domains of deleted VMs (or of VMs placed elsewhere). Domains without a qvdc id
/// are not qvdc's and are never among them. Each removal is resent until the host stops
/// reporting the object, at most once per retry interval.
fn remove_strays(
    state: &mut ClusterState,
    host_id: &str,
    strays: [(&'static str, std::collections::BTreeSet<String>); 3],
    now: Instant,
) {
    state.removing.retain(|(host, what, name), _| {
        host != host_id
            || strays
                .iter()
                .any(|(kind, names)| kind == what && names.contains(name))
    });
    let mut sent = 0;
    for (what, names) in strays {
        for name in names {
            if sent == STRAY_REMOVALS_PER_HEARTBEAT_MAX {
                return; // the rest on a later heartbeat
            }
            let key = (host_id.to_owned(), what, name.clone());
            let due = state.removing.get(&key).is_none_or(|sent| {
                now.saturating_duration_since(*sent) >= state.timings.command_retry()
            });
            if !due {
                continue;
            }
            state.removing.insert(key, now);
            sent += 1;
            let kind = match what {
                "remove-pool" => HostCommandKind::RemoveStoragePool { pool: name.clone() },
                "remove-network" => HostCommandKind::RemoveNetwork { name: name.clone() },
                _ => HostCommandKind::UndefineVm { name: name.clone() },
            };
            let command = HostCommand {
                id: state.next_id(),
                kind,
            };
            info!(host = %host_id, %what, %name, "removing what is no longer assigned to the host");
            if let Some(actor) = state.hosts.get(host_id) {
                let host = host_id.to_owned();
                let done: Done = Box::new(move |outcome| {
                    if let Err(reason) = outcome {
                        warn!(%host, %what, %name, %reason, "could not remove it");
                    }
                });
                let _ = actor.cast(HostMsg::Execute { command, done });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Host supervisor

pub(crate) struct HostSupervisor;

pub(crate) struct HostArgs {
    host_id: String,
    timings: Timings,
}

pub(crate) struct HostState {
    host_id: String,
    timings: Timings,
    connection: Option<quinn::Connection>,
    last_seen: Option<Instant>,
}

impl Actor for HostSupervisor {
    type Msg = HostMsg;
    type State = HostState;
    type Arguments = HostArgs;

    async fn pre_start(
        &self,
        _: ActorRef<HostMsg>,
        args: HostArgs,
    ) -> Result<HostState, ActorProcessingErr> {
        Ok(HostState {
            host_id: args.host_id,
            timings: args.timings,
            connection: None,
            last_seen: None,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<HostMsg>,
        message: HostMsg,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HostMsg::Connected(connection) => {
                info!(host = %state.host_id, "host connected");
                state.connection = Some(connection);
                state.last_seen = Some(Instant::now());
            }
            HostMsg::Seen(connection) => {
                state.connection = Some(connection);
                state.last_seen = Some(Instant::now());
            }
            HostMsg::Execute { command, done } => execute(state, command, done),
            HostMsg::Liveness(reply) => {
                let _ = reply.send(liveness(
                    state.last_seen,
                    Instant::now(),
                    state.timings.stale_after(),
                ));
            }
        }
        Ok(())
    }
}

/// Sends one command to the host in its own task, so a slow host never blocks this actor,
/// and hands the outcome to `done`.
fn execute(state: &HostState, command: HostCommand, done: Done) {
    let host = state.host_id.clone();
    let id = command.id;
    let Some(connection) = state.connection.clone() else {
        return done(Err("host is not connected".into()));
    };
    let timeout = Duration::from_millis(state.timings.command_timeout_ms);
    info!(%host, %id, command = command.kind.label(), "sending command");
    tokio::spawn(async move {
        let outcome = match tokio::time::timeout(
            timeout,
            quic::call::<_, CommandResult>(&connection, &command),
        )
        .await
        {
            Ok(Ok(result)) => {
                assert_eq!(result.id, id, "a host answers the command it was sent");
                result.outcome.map_err(|e| e.message)
            }
            Ok(Err(e)) => Err(format!("could not deliver command: {e}")),
            Err(_) => Err(format!(
                "host did not answer within {} ms",
                timeout.as_millis()
            )),
        };
        done(outcome);
    });
}

/// Sends `command` to `host` through the cluster supervisor; its outcome comes back to `me`
/// as the message `done` makes of it.
fn send<M: ractor::Message>(
    cluster: &ActorRef<ClusterMsg>,
    me: &ActorRef<M>,
    host: String,
    command: HostCommand,
    done: impl FnOnce(CommandId, Result<(), String>) -> M + Send + 'static,
) -> Result<(), ActorProcessingErr> {
    let (me, id) = (me.clone(), command.id);
    let done: Done = Box::new(move |outcome| {
        let _ = me.cast(done(id, outcome.map(drop)));
    });
    cluster.cast(ClusterMsg::Execute {
        host,
        command,
        done,
    })?;
    Ok(())
}

/// When a supervisor next reconciles without an input: one timer, set to the earliest instant
/// its core reports due and moved only when something falls due sooner. A supervisor also
/// reconciles after every message, so an object with nothing pending costs nothing between
/// events (a fixed 250 ms tick per object had the leader wake ~100,000 times a second at
/// 25,000 pools).
struct Alarm<M: ractor::Message> {
    ring: fn() -> M,
    set_for: Option<Instant>,
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl<M: ractor::Message> Alarm<M> {
    fn new(ring: fn() -> M) -> Self {
        Self {
            ring,
            set_for: None,
            timer: None,
        }
    }

    /// Rings `actor` at `due`, unless the alarm already rings no later.
    fn set(&mut self, actor: &ActorRef<M>, due: Option<Instant>) {
        let Some(due) = due else { return };
        if self.set_for.is_some_and(|at| at <= due) {
            return;
        }
        self.cancel();
        let (actor, ring) = (actor.clone(), self.ring);
        self.timer = Some(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let _ = actor.cast(ring());
        }));
        self.set_for = Some(due);
    }

    /// A ring arrived at `now`. It may come from a timer cancelled too late, when the alarm is
    /// already set for later: that one stays set.
    fn rang(&mut self, now: Instant) {
        if self.set_for.is_some_and(|at| at <= now) {
            self.set_for = None;
            self.timer = None;
        }
    }

    fn cancel(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        self.set_for = None;
    }
}

impl<M: ractor::Message> Drop for Alarm<M> {
    fn drop(&mut self) {
        self.cancel();
    }
}

// ---------------------------------------------------------------------------------------
// Pool supervisor

pub(crate) struct PoolSupervisor;

pub(crate) struct PoolArgs {
    core: PoolCore,
    volumes: VolumesCore,
    cluster: ActorRef<ClusterMsg>,
}

pub(crate) struct PoolState {
    core: PoolCore,
    volumes: VolumesCore,
    cluster: ActorRef<ClusterMsg>,
    alarm: Alarm<PoolMsg>,
}

impl Actor for PoolSupervisor {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        _: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        Ok(PoolState {
            core: args.core,
            volumes: args.volumes,
            cluster: args.cluster,
            alarm: Alarm::new(|| PoolMsg::Tick),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<PoolMsg>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        reconcile_pool(&myself, state)
    }

    async fn handle(
        &self,
        myself: ActorRef<PoolMsg>,
        message: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PoolMsg::Record(record) => {
                state.core.set_record(record.spec, record.hosts);
                state.volumes.set_desired(record.volumes);
            }
            PoolMsg::VolumeDone {
                volume,
                id,
                outcome,
            } => {
                if let Err(reason) = &outcome {
                    warn!(pool = %state.core.spec().name, %volume, %id, %reason, "volume command failed");
                }
                state.volumes.command_done(&volume, id, outcome);
            }
            PoolMsg::Observe { host, at, report } => state.core.observe(&host, at, report),
            PoolMsg::CommandDone { host, id, outcome } => {
                if let Err(reason) = &outcome {
                    warn!(pool = %state.core.spec().name, %host, %id, %reason, "command failed");
                }
                state.core.command_done(&host, id, outcome);
            }
            PoolMsg::Tick => state.alarm.rang(Instant::now()),
            PoolMsg::View(reply) => {
                let mut view = state.core.view(Instant::now());
                view.volumes = state.volumes.views();
                let _ = reply.send(view);
                return Ok(());
            }
        }
        reconcile_pool(&myself, state)
    }
}

/// Sends what the pool's core finds due and sets the alarm for the next resend.
fn reconcile_pool(
    myself: &ActorRef<PoolMsg>,
    state: &mut PoolState,
) -> Result<(), ActorProcessingErr> {
    let now = Instant::now();
    for pool::Effect::Send { host, command } in state.core.tick(now) {
        let to = host.clone();
        send(&state.cluster, myself, host, command, move |id, outcome| {
            PoolMsg::CommandDone {
                host: to,
                id,
                outcome,
            }
        })?;
    }
    let healthy = state.core.healthy_hosts(now);
    for effect in state.volumes.tick(now, &healthy) {
        let volumes::Effect::Send {
            host,
            volume,
            command,
        } = effect;
        send(&state.cluster, myself, host, command, move |id, outcome| {
            PoolMsg::VolumeDone {
                volume,
                id,
                outcome,
            }
        })?;
    }
    let due = [state.core.next_due(now), state.volumes.next_due(now)];
    state.alarm.set(myself, due.into_iter().flatten().min());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// VM supervisor

pub(crate) struct VmSupervisor;

pub(crate) struct VmArgs {
    core: VmCore,
    cluster: ActorRef<ClusterMsg>,
}

pub(crate) struct VmState {
    core: VmCore,
    cluster: ActorRef<ClusterMsg>,
    alarm: Alarm<VmMsg>,
}

impl Actor for VmSupervisor {
    type Msg = VmMsg;
    type State = VmState;
    type Arguments = VmArgs;

    async fn pre_start(
        &self,
        _: ActorRef<VmMsg>,
        args: VmArgs,
    ) -> Result<VmState, ActorProcessingErr> {
        Ok(VmState {
            core: args.core,
            cluster: args.cluster,
            alarm: Alarm::new(|| VmMsg::Tick),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<VmMsg>,
        state: &mut VmState,
    ) -> Result<(), ActorProcessingErr> {
        reconcile_vm(&myself, state)
    }

    async fn handle(
        &self,
        myself: ActorRef<VmMsg>,
        message: VmMsg,
        state: &mut VmState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            VmMsg::Record(record) => state.core.set_record(record),
            VmMsg::Observe { at, report } => state.core.observe(at, report),
            VmMsg::CommandDone { id, outcome } => {
                if let Err(reason) = &outcome {
                    let vm = &state.core.record().spec.name;
                    warn!(%vm, %id, %reason, "command failed");
                }
                state.core.command_done(id, outcome);
            }
            VmMsg::Tick => state.alarm.rang(Instant::now()),
            VmMsg::View(reply) => {
                let _ = reply.send(state.core.view(Instant::now()));
                return Ok(());
            }
        }
        reconcile_vm(&myself, state)
    }
}

/// Sends what the VM's core finds due and sets the alarm for when it may next act.
fn reconcile_vm(myself: &ActorRef<VmMsg>, state: &mut VmState) -> Result<(), ActorProcessingErr> {
    let now = Instant::now();
    for vm::Effect::Send { host, command } in state.core.tick(now) {
        send(&state.cluster, myself, host, command, |id, outcome| {
            VmMsg::CommandDone { id, outcome }
        })?;
    }
    state.alarm.set(myself, state.core.next_due(now));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Network supervisor

pub(crate) struct NetSupervisor;

pub(crate) struct NetArgs {
    core: NetworkCore,
    cluster: ActorRef<ClusterMsg>,
}

pub(crate) struct NetState {
    core: NetworkCore,
    cluster: ActorRef<ClusterMsg>,
    alarm: Alarm<NetMsg>,
}

impl Actor for NetSupervisor {
    type Msg = NetMsg;
    type State = NetState;
    type Arguments = NetArgs;

    async fn pre_start(
        &self,
        _: ActorRef<NetMsg>,
        args: NetArgs,
    ) -> Result<NetState, ActorProcessingErr> {
        Ok(NetState {
            core: args.core,
            cluster: args.cluster,
            alarm: Alarm::new(|| NetMsg::Tick),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<NetMsg>,
        state: &mut NetState,
    ) -> Result<(), ActorProcessingErr> {
        reconcile_network(&myself, state)
    }

    async fn handle(
        &self,
        myself: ActorRef<NetMsg>,
        message: NetMsg,
        state: &mut NetState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NetMsg::Record(record) => state.core.set_record(record),
            NetMsg::Observe { host, at, report } => state.core.observe(&host, at, report),
            NetMsg::CommandDone { host, id, outcome } => {
                if let Err(reason) = &outcome {
                    let network = state.core.name();
                    warn!(%network, %host, %id, %reason, "command failed");
                }
                state.core.command_done(&host, id, outcome);
            }
            NetMsg::Tick => state.alarm.rang(Instant::now()),
            NetMsg::View(reply) => {
                let _ = reply.send(state.core.view(Instant::now()));
                return Ok(());
            }
        }
        reconcile_network(&myself, state)
    }
}

/// Sends what the network's core finds due and sets the alarm for the next resend.
fn reconcile_network(
    myself: &ActorRef<NetMsg>,
    state: &mut NetState,
) -> Result<(), ActorProcessingErr> {
    let now = Instant::now();
    for network::Effect::Send { host, command } in state.core.tick(now) {
        let to = host.clone();
        send(&state.cluster, myself, host, command, move |id, outcome| {
            NetMsg::CommandDone {
                host: to,
                id,
                outcome,
            }
        })?;
    }
    state.alarm.set(myself, state.core.next_due(now));
    Ok(())
}
