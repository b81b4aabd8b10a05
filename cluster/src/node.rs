//! A control-plane node: one QUIC endpoint, one Raft instance, and — while this node leads —
//! one supervision tree. Every accepted connection is served according to the role in the
//! peer's certificate.

use std::{collections::BTreeMap, sync::Arc};

use openraft::ServerState;
use qvdc_actors::{Supervision, Timings};
use qvdc_raft::{
    network::{Network, Peers},
    store, DesiredState, NodeId, Raft,
};
use qvdc_transport::{
    admission::Admission,
    protocol::{LeaderHint, Leadership, Request, Response},
    quic::{self, RequestError},
    quinn,
    tls::{PeerIdentity, Role},
    Endpoint,
};
use tokio::{
    sync::{watch, RwLock},
    time::{Duration, Instant},
};
use tracing::{debug, info, warn};

use crate::{api, forward, hosts, propose::Proposer, revocation::Connections};

/// How long a quorum's confirmation lets the leader answer hosts and reported-state queries
/// without asking again: three quarters of the shortest election timeout, so an isolated
/// leader stops answering before its followers can have elected a successor.
pub const LEADER_LEASE_MS: u64 = qvdc_raft::ELECTION_TIMEOUT_MS_MIN * 3 / 4;
/// How long a leader waits for a quorum to confirm it before saying it cannot lead.
pub const LEADER_CONFIRM_TIMEOUT_MS: u64 = 1_000;

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
    /// A redb file: `<data-dir>/raft.redb`.
    Dir(std::path::PathBuf),
    /// An already open database: the simulation keeps one per node outside the node, so
    /// that what was committed survives a simulated crash as it would on disk, with the
    /// latency its log commits take (the simulation's slow disk).
    Database(Arc<store::Database>, store::DiskLatency),
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
}

/// Shared state of a running node.
pub struct NodeInner {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    /// The Raft log, which answers to pre-votes compare with a candidate's.
    pub(crate) log: store::LogStore,
    pub(crate) desired: watch::Receiver<Arc<DesiredState>>,
    pub(crate) proposer: Proposer,
    /// Connections to the other nodes, for passing operator requests to the leader.
    pub(crate) peers: Peers,
    pub(crate) supervision: RwLock<Option<Supervision>>,
    /// When a quorum last confirmed this node's leadership (the moment the check began), and
    /// which leadership it confirmed: a lease never carries over into a later leadership,
    /// whose first confirmation is also what makes it apply what earlier terms committed.
    pub(crate) confirmed_at: std::sync::Mutex<Option<(Leadership, Instant)>>,
    /// The last leader this node knew of, for hints while none is known.
    pub(crate) last_leader: std::sync::Mutex<Option<LeaderHint>>,
    /// The last entry in this node's log when it started. openraft 0.9 restores a node that
    /// led before it stopped as leader of the same term, without a new entry; its read
    /// index is then the committed index it read back from disk, which can lag what it had
    /// acknowledged before it stopped (found by chaos seed 132). Everything it acknowledged
    /// is in its own log, so it serves nothing until that much is applied.
    pub(crate) logged_at_start: Option<u64>,
    /// The members this node saw last and the nodes it saw removed (see `member_server`).
    pub(crate) servers: std::sync::Mutex<Servers>,
    /// The connections this node serves, for closing those of revoked certificates.
    pub(crate) connections: Arc<Connections>,
}

/// Members of the Raft membership as one node has watched it change.
#[derive(Debug, Default)]
pub(crate) struct Servers {
    members: std::collections::BTreeSet<NodeId>,
    removed: std::collections::BTreeSet<NodeId>,
}

impl Servers {
    /// Takes in the current membership: whoever was a member and is no longer is removed
    /// for good (ids are never reused).
    fn observe(&mut self, members: std::collections::BTreeSet<NodeId>) {
        self.removed.extend(self.members.difference(&members));
        // An id an operator added again anyway is a member again.
        self.removed.retain(|id| !members.contains(id));
        self.members = members;
    }
}

/// A running control-plane node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
    endpoint: Endpoint,
    tasks: Arc<Vec<tokio::task::JoinHandle<()>>>,
}

impl Node {
    /// Opens storage, starts Raft, initialises the cluster if it is new, and serves `endpoint`.
    pub async fn start(config: NodeConfig, endpoint: Endpoint) -> Result<Self, NodeError> {
        if !config.join && !config.initial_cluster.contains_key(&config.node_id) {
            return Err(NodeError::NotAMember(config.node_id));
        }
        let (db, latency) = match &config.storage {
            Storage::Dir(dir) => (
                store::open(&dir.join("raft.redb"))?,
                store::DiskLatency::default(),
            ),
            Storage::Database(db, latency) => (db.clone(), latency.clone()),
        };
        let (machine, desired) = store::StateMachine::open(db.clone())?;
        let peers = Peers::new(endpoint.clone());
        let network = Network::new(peers.clone());
        let log = store::LogStore::new(db, latency)?;
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
        let elections = tokio::spawn(qvdc_raft::election::run(
            raft.clone(),
            log.clone(),
            peers.clone(),
            config.node_id,
        ));
        let inner = Arc::new(NodeInner {
            id: config.node_id,
            raft,
            log,
            proposer,
            peers,
            desired,
            supervision: RwLock::new(None),
            confirmed_at: std::sync::Mutex::new(None),
            last_leader: std::sync::Mutex::new(None),
            logged_at_start,
            servers: std::sync::Mutex::new(Servers::default()),
            connections: Arc::default(),
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
        })
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Stops serving, stops supervision, shuts Raft down and closes every connection, so hosts
    /// and peers re-dial at once instead of waiting for an idle timeout.
    pub async fn shutdown(&self) {
        for task in self.tasks.iter() {
            task.abort();
        }
        if let Some(supervision) = self.inner.supervision.write().await.take() {
            supervision.stop().await;
        }
        let _ = self.inner.raft.shutdown().await;
        self.endpoint.close();
    }
}

/// Starts the supervision tree when this node becomes leader and stops it when it is not.
async fn follow_leadership(node: Arc<NodeInner>, timings: Timings) {
    let mut metrics = node.raft.metrics();
    loop {
        let (leading, leadership) = {
            let m = metrics.borrow_and_update();
            let leadership = Leadership {
                term: m.current_term,
                node: node.id,
            };
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
            (m.state == ServerState::Leader, leadership)
        };
        let mut slot = node.supervision.write().await;
        let current = slot.as_ref().map(Supervision::leadership);
        if let Some(current) = current.filter(|c| !leading || *c != leadership) {
            info!(node = node.id, leadership = %current, "leadership lost: stopping supervision");
            slot.take().expect("checked above").stop().await;
        }
        if leading && slot.is_none() {
            match Supervision::start(leadership, node.desired.clone(), timings).await {
                Ok(supervision) => {
                    info!(node = node.id, %leadership, "became leader: supervision started");
                    *slot = Some(supervision);
                }
                Err(e) => warn!(error = %e, "could not start supervision"),
            }
        }
        drop(slot);
        node.leader_hint(); // remembers the leader while one is known
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The leader these metrics name, with its address from the membership.
pub(crate) fn current_leader(
    metrics: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
) -> Option<LeaderHint> {
    let leader = metrics.current_leader?;
    let node = metrics.membership_config.membership().get_node(&leader)?;
    Some(LeaderHint {
        node_id: leader,
        addr: node.addr.clone(),
    })
}

impl NodeInner {
    /// Where to send a client that reached a follower.
    /// The current leader, or while an election is under way (or this node is cut off) the
    /// last leader it knew: a hint the client can try, which beats no hint at all.
    pub(crate) fn leader_hint(&self) -> Option<LeaderHint> {
        let current = current_leader(&self.raft.metrics().borrow());
        let mut last = self.last_leader.lock().expect("leader hint lock poisoned");
        if current.is_some() {
            last.clone_from(&current);
        }
        last.clone().filter(|hint| hint.node_id != self.id)
    }

    /// Whether a peer with a server certificate may still take part in Raft and pass
    /// requests on: not if it speaks for a node this node has seen removed from the
    /// membership. A node id this node does not know yet is let through: this node may lag
    /// behind the membership that added it (a new leader, a joiner's snapshot), and Raft's
    /// terms already refuse what an outdated peer sends.
    ///
    /// Passing an operator's request on is for current members only (`strict`): only a
    /// leader receives them, and a leader knows every member.
    pub(crate) fn member_server(&self, peer: &PeerIdentity, strict: bool) -> Result<(), String> {
        let Some(id) = qvdc_raft::node_of_server_cert(&peer.name) else {
            return Err(format!(
                "server certificate {:?} names no node; a node's certificate is named node-ID",
                peer.name
            ));
        };
        let servers = self.servers.lock().expect("server list lock poisoned");
        let (removed, member) = (servers.removed.contains(&id), servers.members.contains(&id));
        drop(servers);
        if strict && !member && !removed {
            return Err(format!(
                "server certificate {:?} is not of a member of this cluster; add node {id} with `qvctl cluster add-node` first",
                peer.name
            ));
        }
        if !removed {
            return Ok(());
        }
        warn!(peer = %peer.name, "refused the certificate of a removed node");
        Err(format!(
            "server certificate {:?} is of node {id}, which was removed from this cluster; node ids are never reused: start a new node with a new id and add it with `qvctl cluster add-node`",
            peer.name
        ))
    }

    pub(crate) fn not_leader(&self) -> Response {
        Response::NotLeader {
            leader: self.leader_hint(),
        }
    }

    /// The supervision tree, if this node leads.
    pub(crate) async fn supervision(&self) -> Option<Supervision> {
        self.supervision.read().await.clone()
    }

    /// The supervision tree, if this node leads *and* a quorum has confirmed it within the
    /// lease. A leader cut off from its peers keeps believing it leads (Raft does not step
    /// it down); this is what stops it from holding on to hosts and serving stale views.
    /// The error is the response to give: a redirect from a follower, or "no leader here"
    /// from a leader that could not confirm itself.
    pub(crate) async fn leading(&self) -> Result<Supervision, Response> {
        let Some(supervision) = self.supervision().await else {
            return Err(self.not_leader());
        };
        let lease = Duration::from_millis(LEADER_LEASE_MS);
        let leadership = supervision.leadership();
        let fresh = |confirmed: &Option<(Leadership, Instant)>| {
            confirmed.is_some_and(|(of, at)| of == leadership && at.elapsed() < lease)
        };
        if fresh(&self.confirmed_at.lock().expect("lease lock poisoned"))
            || qvdc_transport::bugs::active(qvdc_transport::bugs::Bug::NoLeaderLease)
        {
            return Ok(supervision);
        }
        let asked = Instant::now();
        let confirm = tokio::time::timeout(
            Duration::from_millis(LEADER_CONFIRM_TIMEOUT_MS),
            self.raft.ensure_linearizable(),
        );
        let caught_up = async {
            confirm.await.ok()?.ok()?;
            let timeout = Duration::from_millis(LEADER_CONFIRM_TIMEOUT_MS);
            let wait = self.raft.wait(Some(timeout));
            let applied = wait.applied_index_at_least(self.logged_at_start, "log at start applied");
            applied.await.ok()
        };
        match caught_up.await {
            Some(_) => {
                let mut confirmed = self.confirmed_at.lock().expect("lease lock poisoned");
                let at = match *confirmed {
                    Some((of, previous)) if of == leadership => previous.max(asked),
                    _ => asked,
                };
                *confirmed = Some((leadership, at));
                Ok(supervision)
            }
            None => {
                debug!(node = self.id, "leadership not confirmed by a quorum");
                Err(Response::NotLeader { leader: None })
            }
        }
    }
}

async fn accept_loop(node: Arc<NodeInner>, endpoint: Endpoint) {
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

async fn serve_connection(node: Arc<NodeInner>, connection: quinn::Connection, peer: PeerIdentity) {
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
    node: &NodeInner,
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
            match qvdc_raft::network::handle_rpc(&node.raft, &node.log, &payload).await {
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
            if forward::is_leader(node) || !forward::needs_leader(&request) {
                api::handle(node, request).await
            } else {
                forward::to_leader(node, peer, request).await
            }
        }
        Request::Api(_) => forbidden(peer, "the operator API", Role::Operator),
        Request::Forwarded(request) if peer.role == Role::Server => {
            if forward::is_leader(node) {
                api::handle(node, request).await
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
            if forward::is_leader(node) {
                debug!(%operator, via = %peer.name, "operator request passed on");
                api::handle(node, request).await
            } else {
                node.not_leader()
            }
        }
        Request::Forwarded(_) | Request::ForwardedFor { .. } => {
            forbidden(peer, "passing on operator requests", Role::Server)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_gone_from_the_membership_is_removed_for_good() {
        let mut servers = Servers::default();
        let set = |ids: &[NodeId]| ids.iter().copied().collect();
        servers.observe(set(&[]));
        servers.observe(set(&[1, 2, 3]));
        assert!(
            servers.removed.is_empty(),
            "a joiner's first membership removes nobody"
        );
        servers.observe(set(&[1, 2, 3, 4]));
        servers.observe(set(&[1, 3, 4]));
        assert_eq!(servers.removed, set(&[2]));
        // A lagging node jumps ahead by snapshot: everyone gone meanwhile is removed.
        servers.observe(set(&[4, 5, 6]));
        assert_eq!(servers.removed, set(&[1, 2, 3]));
        servers.observe(set(&[3, 4, 5, 6]));
        assert_eq!(
            servers.removed,
            set(&[1, 2]),
            "an id added again is a member again"
        );
    }
}
