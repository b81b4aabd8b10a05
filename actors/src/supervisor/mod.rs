//! The supervision tree that runs on the leader: a root with one child per host and one per
//! pool, VM and network. Children that stop on their own are restarted after a backoff
//! (`core::restarts`). Each actor only decodes a message, calls its core and carries out
//! the effects.

mod host;
mod object;

use std::{collections::BTreeMap, sync::Arc};

use qvdc_raft::{model::DiffItem, DesiredState};
use qvdc_transport::protocol::{HostCommand, Leadership};
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

pub(crate) use self::{
    host::{Done, HostMsg},
    object::ObjectMsg,
};
use self::{
    host::{HostArgs, HostSupervisor},
    object::{ObjectArgs, ObjectSupervisor},
};
use crate::{
    core::{
        network::NetworkCore, objects::PoolObject, restarts::Restarts, strays::Strays, vm::VmCore,
        CommandError, CommandIds, Core, HostReports, Timings,
    },
    link::Link,
};

pub(crate) type Objects<C> = BTreeMap<String, ActorRef<ObjectMsg<C>>>;

pub(crate) enum ClusterMsg {
    DesiredChanged(Arc<DesiredState>),
    HostConnected {
        host_id: String,
        link: Link,
    },
    Heartbeat {
        host_id: String,
        link: Link,
        reports: HostReports,
        /// When the heartbeat came: the time its reports are of.
        received: Instant,
    },
    Execute {
        host: String,
        command: HostCommand,
        done: Done,
    },
    /// The supervisors of each kind by name; callers query them directly, so a slow child
    /// never holds up this actor.
    Pools(RpcReplyPort<Objects<PoolObject>>),
    Vms(RpcReplyPort<Objects<VmCore>>),
    Networks(RpcReplyPort<Objects<NetworkCore>>),
    Hosts(RpcReplyPort<BTreeMap<String, ActorRef<HostMsg>>>),
    /// What each host said it has in its last heartbeat to this leader.
    Reported(RpcReplyPort<BTreeMap<String, crate::HostReported>>),
    Respawn {
        child: Child,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Child {
    Host(String),
    Pool(String),
    Vm(String),
    Network(String),
}

pub(crate) struct ClusterSupervisor;

pub(crate) struct ClusterArgs {
    pub ids: CommandIds,
    pub desired: watch::Receiver<Arc<DesiredState>>,
    pub timings: Timings,
    pub metrics: crate::CommandMetrics,
}

pub(crate) struct ClusterState {
    ids: CommandIds,
    timings: Timings,
    metrics: crate::CommandMetrics,
    desired: Arc<DesiredState>,
    hosts: BTreeMap<String, ActorRef<HostMsg>>,
    pools: Objects<PoolObject>,
    vms: Objects<VmCore>,
    networks: Objects<NetworkCore>,
    /// Each host's latest heartbeat, replayed to supervisors that start later so they can
    /// decide at once instead of waiting for the next heartbeat.
    last_heartbeat: BTreeMap<String, Heartbeat>,
    strays: Strays,
    restarts: Restarts<Child>,
    watcher: tokio::task::JoinHandle<()>,
}

pub(crate) struct Heartbeat {
    at: Instant,
    reports: HostReports,
}

impl ClusterState {
    fn leadership(&self) -> Leadership {
        self.ids.leadership()
    }

    fn child_of(&self, cell: &ActorCell) -> Option<Child> {
        fn find<M>(children: &BTreeMap<String, ActorRef<M>>, id: ActorId) -> Option<String> {
            children
                .iter()
                .find(|(_, actor)| actor.get_id() == id)
                .map(|(name, _)| name.clone())
        }
        let id = cell.get_id();
        find(&self.hosts, id)
            .map(Child::Host)
            .or_else(|| find(&self.pools, id).map(Child::Pool))
            .or_else(|| find(&self.vms, id).map(Child::Vm))
            .or_else(|| find(&self.networks, id).map(Child::Network))
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
        metrics: state.metrics.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, HostSupervisor, args, myself.get_cell()).await?;
    state.hosts.insert(host_id.to_owned(), actor);
    Ok(())
}

/// What a new object supervisor needs from the root.
struct Spawning<'a> {
    root: &'a ActorRef<ClusterMsg>,
    desired: &'a DesiredState,
    ids: &'a CommandIds,
    timings: Timings,
    last_heartbeat: &'a BTreeMap<String, Heartbeat>,
    heartbeat_to_view: &'a qvdc_transport::metrics::Histogram,
}

impl Spawning<'_> {
    /// Starts the supervisor of object `name` (if it still exists), replaying the latest
    /// heartbeat of each of its hosts.
    async fn object<C: Core>(
        &self,
        objects: &mut Objects<C>,
        name: &str,
    ) -> Result<(), ActorProcessingErr> {
        let Some(record) = C::records(self.desired).get(name) else {
            return Ok(());
        };
        let core = C::new(record, self.desired, self.ids.clone(), self.timings);
        let replay: Vec<_> = core
            .hosts()
            .into_iter()
            .filter_map(|host| {
                let beat = self.last_heartbeat.get(&host)?;
                if !C::reported(&beat.reports) {
                    return None;
                }
                let report = C::report(&beat.reports, name);
                Some(ObjectMsg::Observe {
                    host,
                    at: beat.at,
                    report,
                    live: false,
                })
            })
            .collect();
        let args = ObjectArgs {
            core,
            root: self.root.clone(),
            heartbeat_to_view: self.heartbeat_to_view.clone(),
        };
        let supervisor = ObjectSupervisor::<C>::default();
        let (actor, _) = Actor::spawn_linked(None, supervisor, args, self.root.get_cell()).await?;
        for observe in replay {
            actor.cast(observe)?;
        }
        objects.insert(name.to_owned(), actor);
        Ok(())
    }
}

/// Brings one kind of children from `previous` to the desired state: stops the children
/// whose object is gone, hands the others their record if it changed, and starts the ones
/// missing, in name order. It walks only what differs between the two versions (they share
/// everything else), so a write costs in proportion to what it changed.
async fn sync_children<C: Core>(
    spawning: &Spawning<'_>,
    objects: &mut Objects<C>,
    previous: &DesiredState,
) -> Result<(), ActorProcessingErr> {
    let mut unsupervised = Vec::new();
    for change in C::records(previous).diff(C::records(spawning.desired)) {
        let (name, now) = match change {
            DiffItem::Remove(name, _) => {
                if let Some(actor) = objects.remove(name) {
                    actor.stop(Some(format!("{} deleted", C::KIND)));
                }
                continue;
            }
            DiffItem::Add(name, now)
            | DiffItem::Update {
                new: (name, now), ..
            } => (name, now),
        };
        match objects.get(name) {
            Some(actor) => actor.cast(ObjectMsg::Record(now.clone()))?,
            None => unsupervised.push(name.clone()),
        }
    }
    for name in unsupervised {
        spawning.object(objects, &name).await?;
    }
    Ok(())
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
    let spawning = Spawning {
        root: myself,
        desired: &state.desired,
        ids: &state.ids,
        timings: state.timings,
        last_heartbeat: &state.last_heartbeat,
        heartbeat_to_view: &state.metrics.heartbeat_to_view,
    };
    sync_children(&spawning, &mut state.pools, previous).await?;
    sync_children(&spawning, &mut state.vms, previous).await?;
    sync_children(&spawning, &mut state.networks, previous).await?;
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
            leadership = %args.ids.leadership(),
            hosts = desired.hosts.len(),
            pools = desired.pools.len(),
            "supervision started"
        );
        Ok(ClusterState {
            ids: args.ids,
            timings: args.timings,
            metrics: args.metrics,
            desired: Arc::new(DesiredState::default()),
            hosts: BTreeMap::new(),
            pools: BTreeMap::new(),
            vms: BTreeMap::new(),
            networks: BTreeMap::new(),
            last_heartbeat: BTreeMap::new(),
            strays: Strays::new(args.timings),
            restarts: Restarts::default(),
            watcher,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<ClusterMsg>,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        state.watcher.abort();
        info!(leadership = %state.leadership(), "supervision stopped");
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
            ClusterMsg::HostConnected { host_id, link } => {
                if !state.hosts.contains_key(&host_id) {
                    spawn_host(&myself, state, &host_id).await?;
                }
                state.hosts[&host_id].cast(HostMsg::Connected(link))?;
            }
            ClusterMsg::Heartbeat {
                host_id,
                link,
                reports,
                received,
            } => route_heartbeat(state, host_id, link, reports, received),
            ClusterMsg::Execute {
                host,
                command,
                done,
            } => match state.hosts.get(&host) {
                Some(actor) => actor.cast(HostMsg::Execute { command, done })?,
                None => done(Err(CommandError::NoSupervisor(host))),
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
                        (
                            host.clone(),
                            crate::HostReported::of(&beat.reports, beat.at),
                        )
                    })
                    .collect();
                let _ = reply.send(reported);
            }
            ClusterMsg::Respawn { child } => respawn(&myself, state, child).await?,
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
        let deleted = match &child {
            Child::Host(h) => {
                state.hosts.remove(h);
                false
            }
            Child::Pool(p) => {
                state.pools.remove(p).is_some() && !state.desired.pools.contains_key(p)
            }
            Child::Vm(v) => state.vms.remove(v).is_some() && !state.desired.vms.contains_key(v),
            Child::Network(n) => {
                state.networks.remove(n).is_some() && !state.desired.networks.contains_key(n)
            }
        };
        if deleted {
            state.restarts.forget(&child);
            return Ok(()); // stopped because its object was deleted
        }
        let pause = state.restarts.failed(&child, Instant::now());
        warn!(?child, %why, pause_ms = pause.as_millis() as u64, "child stopped; restarting");
        myself.send_after(pause, move || ClusterMsg::Respawn { child });
        Ok(())
    }
}

/// Starts a stopped child again, unless it was started meanwhile or its object is gone.
async fn respawn(
    myself: &ActorRef<ClusterMsg>,
    state: &mut ClusterState,
    child: Child,
) -> Result<(), ActorProcessingErr> {
    let spawning = Spawning {
        root: myself,
        desired: &state.desired,
        ids: &state.ids,
        timings: state.timings,
        last_heartbeat: &state.last_heartbeat,
        heartbeat_to_view: &state.metrics.heartbeat_to_view,
    };
    match &child {
        Child::Host(h) if !state.hosts.contains_key(h) => spawn_host(myself, state, h).await?,
        Child::Pool(p) if !state.pools.contains_key(p) => {
            spawning.object(&mut state.pools, p).await?
        }
        Child::Vm(v) if !state.vms.contains_key(v) => spawning.object(&mut state.vms, v).await?,
        Child::Network(n) if !state.networks.contains_key(n) => {
            spawning.object(&mut state.networks, n).await?
        }
        _ => return Ok(()),
    }
    state.restarts.restarted(&child, Instant::now());
    Ok(())
}

/// Hands each of `host`'s objects its part of a heartbeat.
fn observe_all<C: Core>(
    objects: &Objects<C>,
    desired: &DesiredState,
    host: &str,
    reports: &HostReports,
    at: Instant,
) {
    if !C::reported(reports) {
        return; // its objects' last reports age until the host knows again
    }
    for name in C::of_host(desired, host) {
        if let Some(actor) = objects.get(&name) {
            let _ = actor.cast(ObjectMsg::Observe {
                host: host.to_owned(),
                at,
                report: C::report(reports, &name),
                live: true,
            });
        }
    }
}

/// Hands a heartbeat to the host's supervisor (with the link it came on: a host that
/// registered with an earlier tree of this node never registers again), each object's part
/// of it to that object's supervisor, and sends the host the removals of what it should no
/// longer have.
fn route_heartbeat(
    state: &mut ClusterState,
    host_id: String,
    link: Link,
    reports: HostReports,
    now: Instant,
) {
    let host = state.hosts.get(&host_id);
    if let Some(actor) = host {
        let _ = actor.cast(HostMsg::Seen(link));
    }
    observe_all(&state.pools, &state.desired, &host_id, &reports, now);
    observe_all(&state.vms, &state.desired, &host_id, &reports, now);
    observe_all(&state.networks, &state.desired, &host_id, &reports, now);
    let removals = state
        .strays
        .heartbeat(&state.desired, &host_id, &reports, now, &state.ids);
    for command in removals {
        let (what, id) = (command.kind.label(), command.id);
        info!(host = %host_id, %what, %id, "removing what is no longer assigned to the host");
        let Some(actor) = state.hosts.get(&host_id) else {
            break;
        };
        let on = host_id.clone();
        let done: Done = Box::new(move |outcome| {
            if let Err(reason) = outcome {
                warn!(host = %on, %what, %id, %reason, "could not remove it");
            }
        });
        let _ = actor.cast(HostMsg::Execute { command, done });
    }
    let beat = Heartbeat { at: now, reports };
    state.last_heartbeat.insert(host_id, beat);
}

#[cfg(test)]
mod tests;
