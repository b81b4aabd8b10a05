//! A control-plane node: one QUIC endpoint, one Raft instance, and — while this node leads —
//! one supervision tree. Every accepted connection is served according to the role in the
//! peer's certificate.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use openraft::ServerState;
use qvdc_actors::{Supervision, Timings};
use qvdc_raft::model::Caller;
use qvdc_raft::{
    network::{self, Network, Peers},
    store, NodeId, Raft,
};
use qvdc_transport::{
    admission::Admission,
    bugs::{self, Bug},
    facts::{self, Fact},
    protocol::{Leadership, Request, Response},
    quic::{self, RequestError},
    quinn,
    tls::{PeerIdentity, Role},
    Endpoint,
};
use tokio::sync::RwLock;
use tracing::{debug, info, warn};

use crate::{
    api,
    context::{Context, Servers},
    forward, hosts,
    lease::{Clock, Lease},
    propose::Proposer,
};

/// The file in a node's data directory that holds its log, vote and snapshots.
pub const DATA_FILE: &str = "raft.redb";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("node {0} is not in --initial-cluster")]
    NotAMember(NodeId),
}

/// Where a node keeps its Raft data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// A directory: the database `<data-dir>/raft.redb` and the log's segments in
    /// `<data-dir>/raft-log/`.
    Dir(std::path::PathBuf),
    /// Storage already open: the simulation keeps one per node outside the node, so that
    /// what was written survives a simulated crash as it would on disk, with the latency
    /// its log writes take (the simulation's slow disk).
    Database(store::Data, store::DiskLatency),
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Every initial member's id and QUIC address, this node included. Empty for a node
    /// that joins a running cluster.
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// The node joins a running cluster (`qvctl cluster add-node`) instead of forming one:
    /// it never initialises a membership of its own and waits to be added.
    pub join: bool,
    pub storage: Storage,
    pub timings: Timings,
    pub retention: qvdc_raft::LogRetention,
    /// The clock the leader lease is measured with: `Clock::default()` (the system's) but in
    /// the simulation, which makes a node's clock drift to test the lease's allowance for it.
    pub clock: Clock,
}

/// A running control-plane node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Context>,
    endpoint: Endpoint,
    tasks: Arc<Vec<tokio::task::JoinHandle<()>>>,
    /// Tasks started after the node (its metrics server).
    extra_tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Node {
    /// Opens storage, starts Raft, initialises the cluster if it is new, and serves `endpoint`.
    pub async fn start(config: NodeConfig, endpoint: Endpoint) -> Result<Self, NodeError> {
        if !config.join && !config.initial_cluster.contains_key(&config.node_id) {
            return Err(NodeError::NotAMember(config.node_id));
        }
        let (db, latency) = match &config.storage {
            Storage::Dir(dir) => (
                store::open(&dir.join(DATA_FILE))?,
                store::DiskLatency::default(),
            ),
            Storage::Database(db, latency) => (db.clone(), latency.clone()),
        };
        let metrics = crate::metrics::NodeMetrics::default();
        let (machine, desired) =
            store::StateMachine::measured(db.clone(), config.node_id, metrics.store.clone())?;
        let peers = Peers::new(endpoint.clone());
        let network = Network::new(peers.clone());
        let log = store::LogStore::measured(db, latency, config.node_id, metrics.store.clone())?;
        let logged_at_start = log.last_log_id().map(|id| id.index);
        let raft = Raft::new(
            config.node_id,
            qvdc_raft::raft_config(config.retention),
            network,
            log.clone(),
            machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if !initialized && config.join {
            info!(node = config.node_id, "waiting to be added to a cluster");
        } else if !initialized {
            // Every initial member proposes the same membership; openraft accepts that.
            let members = qvdc_raft::initial_members(&config.initial_cluster);
            if let Err(e) = raft.initialize(members).await {
                debug!(error = %e, "cluster already initialised by a peer");
            }
        }
        let (proposer, proposing) = Proposer::start(raft.clone());
        let pre_votes = qvdc_raft::election::PreVotes::default();
        let elections = tokio::spawn(qvdc_raft::election::run(
            raft.clone(),
            log.clone(),
            peers.clone(),
            pre_votes.clone(),
            config.node_id,
        ));
        let inner = Arc::new(Context {
            id: config.node_id,
            raft,
            log,
            pre_votes,
            proposer,
            peers,
            desired,
            supervision: RwLock::new(None),
            lease: Lease::measured_by(config.clock.clone()),
            confirming: Default::default(),
            clock: config.clock.clone(),
            last_leader: std::sync::Mutex::new(None),
            known_leader: tokio::sync::watch::channel(None).0,
            logged_at_start,
            servers: std::sync::Mutex::new(Servers::default()),
            connections: Arc::default(),
            stepping_down: Default::default(),
            ha: Default::default(),
            moves: Default::default(),
            events: Default::default(),
            metrics,
        });
        let revocations = tokio::spawn(crate::revocation::enforce(
            inner.connections.clone(),
            inner.desired.clone(),
        ));
        let leadership = tokio::spawn(follow_leadership(inner.clone(), config.timings));
        let serving = tokio::spawn(accept_loop(inner.clone(), endpoint.clone()));
        info!(node = config.node_id, "control-plane node started");
        Ok(Self {
            inner,
            endpoint,
            tasks: Arc::new(vec![leadership, serving, proposing, elections, revocations]),
            extra_tasks: Arc::default(),
        })
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Serves this node's Prometheus metrics at `/metrics` on `addr` (ADR 26) until the
    /// node shuts down. Fails if the address cannot be bound.
    pub async fn serve_metrics(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let serving = tokio::spawn(crate::metrics::serve(self.inner.clone(), listener));
        self.extra_tasks
            .lock()
            .expect("task list lock poisoned")
            .push(serving);
        Ok(bound)
    }

    /// Stops serving, stops supervision, shuts Raft down and closes every connection, so hosts
    /// and peers re-dial at once instead of waiting for an idle timeout.
    /// Before a planned stop: if this node leads, it stops serving as leader and asks the
    /// most caught-up voter to stand for election, so that no write waits for an election
    /// timeout. Returns once another node leads, or after [`HANDOVER_TIMEOUT_MS`] (then the
    /// others elect a leader the usual way). Returns whether leadership was handed over.
    pub async fn hand_over(&self) -> bool {
        let ctx = &self.inner;
        let others = {
            let metrics = ctx.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .any(|id| id != ctx.id)
        };
        // A lone voter has no one to hand over to: it just stops.
        if !ctx.is_leader() || !others {
            return false;
        }
        ctx.stepping_down.store(true, Ordering::SeqCst);
        if let Some(supervision) = ctx.supervision.write().await.take() {
            supervision.stop().await;
        }
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(HANDOVER_TIMEOUT_MS);
        let mut metrics = ctx.raft.metrics();
        let mut asked: Option<(NodeId, tokio::time::Instant)> = None;
        loop {
            let (leader, target) = {
                let m = metrics.borrow_and_update();
                (m.current_leader, handover_target(&m, ctx.id))
            };
            // Done once another node leads; not when this one merely stopped leading (it
            // does the moment it votes for the candidate, who may still lose).
            if leader.is_some_and(|leader| leader != ctx.id) {
                info!(
                    node = ctx.id,
                    leader = ?leader,
                    ms = started.elapsed().as_millis() as u64,
                    "leadership handed over"
                );
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                warn!(node = ctx.id, "no voter took over in time; stopping anyway");
                return false;
            }
            // Ask a caught-up voter; ask again if its election did not take.
            let due =
                asked.is_none_or(|(_, at)| now >= at + Duration::from_millis(HANDOVER_RETRY_MS));
            if let (Some((target, addr)), true) = (target, due) {
                let ttl = Duration::from_millis(HANDOVER_RETRY_MS);
                match network::elect_now(&ctx.peers, addr, ttl).await {
                    Ok(started) => debug!(node = ctx.id, target, started, "asked to take over"),
                    Err(e) => debug!(node = ctx.id, target, error = %e, "handover request failed"),
                }
                asked = Some((target, now));
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(HANDOVER_POLL_MS), metrics.changed())
                    .await;
        }
    }

    pub async fn shutdown(&self) {
        for task in self.tasks.iter() {
            task.abort();
        }
        for task in self
            .extra_tasks
            .lock()
            .expect("task list lock poisoned")
            .drain(..)
        {
            task.abort();
        }
        if let Some(supervision) = self.inner.supervision.write().await.take() {
            supervision.stop().await;
        }
        let _ = self.inner.raft.shutdown().await;
        self.endpoint.close();
    }
}

/// How long a node stopping on purpose tries to hand its leadership over.
pub const HANDOVER_TIMEOUT_MS: u64 = 2_000;
/// How long a handover waits for the chosen voter's election before asking again.
const HANDOVER_RETRY_MS: u64 = 300;
const HANDOVER_POLL_MS: u64 = 20;

/// The voter to hand leadership to: one whose replicated log has everything this leader
/// has, so that this leader grants it its vote; none while every voter lags behind.
fn handover_target(
    m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
    me: NodeId,
) -> Option<(NodeId, SocketAddr)> {
    let replication = m.replication.as_ref()?;
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().filter(|id| *id != me).collect();
    let best = voters
        .iter()
        .filter_map(|id| Some((*id, replication.get(id)?.map(|log| log.index)?)))
        .max_by_key(|(id, index)| (*index, std::cmp::Reverse(*id)))?;
    if best.1 < m.last_log_index.unwrap_or(0) {
        return None;
    }
    let addr = membership.get_node(&best.0)?.addr.parse().ok()?;
    Some((best.0, addr))
}

/// Starts the supervision tree when this node becomes leader and stops it when it is not.
async fn follow_leadership(node: Arc<Context>, timings: Timings) {
    let mut metrics = node.raft.metrics();
    let mut last_leader = None;
    loop {
        let (leading, leadership) = {
            let m = metrics.borrow_and_update();
            if m.current_leader != last_leader {
                last_leader = m.current_leader;
                node.metrics.leader_changes.inc();
            }
            let mut leadership = Leadership {
                term: m.current_term,
                node: node.id,
            };
            if bugs::active(Bug::LeadershipOfLastLeader) {
                let last = node.last_leader.lock().expect("leader hint lock poisoned");
                if let Some(hint) = last.as_ref() {
                    leadership.node = hint.node_id;
                }
            }
            let members = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect();
            node.servers
                .lock()
                .expect("server list lock poisoned")
                .observe(members);
            let leading = m.state == ServerState::Leader && !node.is_stepping_down();
            (leading, leadership)
        };
        let mut slot = node.supervision.write().await;
        // A planned stop may have begun while the lock was awaited: it took the tree away
        // and must not get a new one.
        let leading = leading && !node.is_stepping_down();
        let current = slot.as_ref().map(Supervision::leadership);
        if let Some(current) = current.filter(|c| !leading || *c != leadership) {
            info!(node = node.id, leadership = %current, "leadership lost: stopping supervision");
            slot.take().expect("checked above").stop().await;
        }
        if leading && slot.is_none() {
            let counted = node.metrics.commands.clone();
            match Supervision::measured(leadership, node.desired.clone(), timings, counted).await {
                Ok(supervision) => {
                    info!(node = node.id, %leadership, "became leader: supervision started");
                    facts::state(Fact::LeadershipTaken {
                        node: node.id,
                        leadership,
                    });
                    *slot = Some(supervision);
                    tokio::spawn(crate::ha::watch(node.clone(), leadership));
                    tokio::spawn(crate::moves::watch(node.clone(), leadership, timings));
                    tokio::spawn(crate::events::watch(node.clone(), leadership));
                    tokio::spawn(crate::level::raise(node.clone(), leadership));
                }
                Err(e) => warn!(error = %e, "could not start supervision"),
            }
        }
        let known = known_leader(&node, &metrics.borrow(), slot.as_ref());
        drop(slot);
        node.known_leader.send_if_modified(|current| {
            let changed = *current != known;
            *current = known;
            changed
        });
        node.leader_hint(); // remembers the leader while one is known
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The leader hosts may go to, as these metrics and this node's supervision (`leading`)
/// show it: another node once it is known, this one once its supervision runs (a host
/// registering before then would be turned away).
fn known_leader(
    node: &Context,
    m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
    leading: Option<&Supervision>,
) -> Option<(Leadership, String)> {
    let hint = crate::context::current_leader(m)?;
    if hint.node_id == node.id && leading.is_none() {
        return None;
    }
    let leadership = Leadership {
        term: m.current_term,
        node: hint.node_id,
    };
    Some((leadership, hint.addr))
}

async fn accept_loop(node: Arc<Context>, endpoint: Endpoint) {
    let admission = Admission::default();
    while let Some(incoming) = endpoint.accept().await {
        let Some(incoming) = admission.screen(incoming) else {
            continue;
        };
        let (node, admission) = (node.clone(), admission.clone());
        tokio::spawn(async move {
            match admission.admit(incoming).await {
                Ok((connection, peer, admitted)) => {
                    serve_connection(node, connection, peer).await;
                    drop(admitted);
                }
                Err(e) => debug!(error = %e, "connection not admitted"),
            }
        });
    }
}

async fn serve_connection(node: Arc<Context>, connection: quinn::Connection, peer: PeerIdentity) {
    debug!(role = %peer.role, name = %peer.name, remote = %connection.remote_address(), "peer connected");
    let Some(_registered) = node.connections.admit(&node.desired, &peer, &connection) else {
        return;
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(Admission::streams_max(
        peer.role,
    )));
    let peer = Arc::new(peer);
    loop {
        let permit = permits.clone().acquire_owned().await;
        let permit = permit.expect("the semaphore is never closed");
        let Ok((send, mut recv)) = connection.accept_bi().await else {
            break;
        };
        let (node, peer, connection) = (node.clone(), peer.clone(), connection.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let response = match quic::read_request_from(&mut recv, &peer).await {
                Ok(request) => dispatch(&node, &peer, &connection, request).await,
                Err(RequestError::Forbidden(reason)) => {
                    debug!(peer = %peer.name, %reason, "request refused by kind");
                    Response::Forbidden { reason }
                }
                Err(RequestError::Unreadable(e)) => {
                    debug!(error = %e, peer = %peer.name, "unreadable request");
                    Response::Malformed {
                        reason: e.to_string(),
                    }
                }
            };
            if let Err(e) = quic::respond(send, &response).await {
                debug!(error = %e, "could not answer");
            }
        });
    }
}

fn forbidden(peer: &PeerIdentity, what: &str, needed: Role) -> Response {
    Response::Forbidden {
        reason: quic::forbidden_reason(peer, what, needed),
    }
}

async fn dispatch(
    node: &Context,
    peer: &PeerIdentity,
    connection: &quinn::Connection,
    request: Request,
) -> Response {
    if peer.role == Role::Server {
        let strict = matches!(
            request,
            Request::Forwarded(_) | Request::ForwardedFor { .. }
        );
        if let Err(reason) = node.member_server(peer, strict) {
            return Response::Forbidden { reason };
        }
    }
    match request {
        Request::Raft(payload) if peer.role == Role::Server => {
            match qvdc_raft::network::handle_rpc(&node.raft, &node.log, &node.pre_votes, &payload)
                .await
            {
                Ok(reply) => Response::Raft(reply),
                Err(e) => Response::Malformed {
                    reason: format!("Raft RPC: {e}"),
                },
            }
        }
        Request::Raft(_) => forbidden(peer, "Raft", Role::Server),
        Request::Host(message) if peer.role == Role::Host => {
            hosts::handle(node, peer, connection, message).await
        }
        Request::Host(_) => forbidden(peer, "speaking for a host", Role::Host),
        Request::Api(request) if peer.role == Role::Operator => {
            let (kind, started) = (request.kind(), tokio::time::Instant::now());
            let response = if node.is_leader() || !forward::needs_leader(&request) {
                let caller = Caller {
                    name: Some(peer.name.clone()),
                    via: None,
                };
                api::handle(node, caller, request).await
            } else {
                forward::to_leader(node, peer, request).await
            };
            let seconds = qvdc_transport::metrics::since(started);
            node.metrics.answered(kind, &response, seconds);
            response
        }
        Request::Api(_) => forbidden(peer, "the operator API", Role::Operator),
        Request::Forwarded(request) if peer.role == Role::Server => {
            if node.is_leader() {
                // The previous release's form, which does not say who asked.
                let caller = Caller {
                    name: Some("(not named: passed on by a node of the previous release)".into()),
                    via: qvdc_raft::node_of_server_cert(&peer.name),
                };
                api::handle(node, caller, request).await
            } else {
                node.not_leader()
            }
        }
        Request::ForwardedFor {
            operator,
            serial,
            request,
        } if peer.role == Role::Server => {
            if let Some(revoked) = node.desired.borrow().revoked.get(&serial) {
                return Response::Forbidden {
                    reason: format!(
                        "the operator certificate {:?} (serial {serial}) is revoked",
                        revoked.name
                    ),
                };
            }
            if node.is_leader() {
                debug!(%operator, via = %peer.name, "operator request passed on");
                let caller = Caller {
                    name: Some(operator),
                    via: qvdc_raft::node_of_server_cert(&peer.name),
                };
                api::handle(node, caller, request).await
            } else {
                node.not_leader()
            }
        }
        Request::Forwarded(_) | Request::ForwardedFor { .. } => {
            forbidden(peer, "passing on operator requests", Role::Server)
        }
    }
}
