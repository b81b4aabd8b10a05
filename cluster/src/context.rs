//! The context every request handler of a node works with, and the questions only it can
//! answer: who leads, whether this node may act as leader right now (its lease), whether a
//! peer's server certificate still speaks for a member. Handlers sit above this module;
//! nothing here knows of them.

use std::{collections::BTreeMap, sync::Arc};

use qvdc_actors::Supervision;
use qvdc_raft::{network::Peers, runtime::ThreadRng, store, DesiredState, NodeId, Raft};
use qvdc_transport::{
    protocol::{
        ClusterStatus, HostView, LeaderHint, Leadership, Liveness, MemberStatus, Response,
        WATCH_LEADER_MAX_MS,
    },
    quinn,
    tls::PeerIdentity,
};
use rand::Rng;
use tokio::{
    sync::{watch, RwLock},
    time::Duration,
};
use tracing::{debug, warn};

use crate::{
    lease::{Lease, LEADER_CONFIRM_TIMEOUT_MS},
    propose::Proposer,
    revocation::Connections,
};

/// What every handler of a running node works with: its Raft instance, its view of the
/// desired state, its supervision tree while it leads, and its leader lease.
pub(crate) struct Context {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    /// The Raft log, which answers to pre-votes compare with a candidate's.
    pub(crate) log: store::LogStore,
    /// The pre-votes this node granted, which its election timer reads (ADR 12).
    pub(crate) pre_votes: qvdc_raft::election::PreVotes,
    pub(crate) desired: watch::Receiver<Arc<DesiredState>>,
    pub(crate) proposer: Proposer,
    /// Connections to the other nodes, for passing operator requests to the leader.
    pub(crate) peers: Peers,
    pub(crate) supervision: RwLock<Option<Supervision>>,
    /// The last quorum confirmation of this node's leadership.
    pub(crate) lease: Lease,
    /// Held while a confirmation is asked for, so that callers who find the lease lapsed
    /// share one round trip to the peers instead of each starting their own (thousands of
    /// heartbeats a second each started one, and under that load every one timed out).
    /// Holds when the last confirmation that failed had begun.
    pub(crate) confirming: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    /// The lease's clock, also for the wall-clock time stamped on audited changes.
    pub(crate) clock: crate::lease::Clock,
    /// The last leader this node knew of, for hints while none is known.
    pub(crate) last_leader: std::sync::Mutex<Option<LeaderHint>>,
    /// The leader this node knows now, with its term and address, once it can take hosts:
    /// another node as soon as this one heard from it, this node once its supervision runs.
    /// What hosts' `WatchLeader` requests wait on (a channel of its own: Raft's metrics
    /// change on every commit, and thousands of watches must not wake for each).
    pub(crate) known_leader: watch::Sender<Option<(Leadership, String)>>,
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
    /// Set when the node is being stopped on purpose: it no longer serves as leader (no
    /// supervision, no reads, no writes) while it hands leadership over.
    pub(crate) stepping_down: std::sync::atomic::AtomicBool,
    /// HA's soft state on the leader: the latest plan, the fence lists sent to hosts.
    pub(crate) ha: std::sync::Mutex<crate::ha::HaState>,
    /// What this node counts, for `/metrics`.
    pub(crate) metrics: crate::metrics::NodeMetrics,
    /// Reported-state changes for subscribers of the watch API, on the leader.
    pub(crate) events: crate::events::EventsHub,
    /// Moves' soft state on the leader: which hosts take live migrations, what each move
    /// is doing, what each host in maintenance still runs.
    pub(crate) moves: std::sync::Mutex<crate::moves::MovesState>,
}

/// How far apart, per host in the cluster, the answers to hosts' leader watches are spread
/// once a new leader is known: 1,000 hosts move to it over a second, three within 3 ms.
pub(crate) const WATCH_SPREAD_PER_HOST_US: u64 = 1_000;

/// Members of the Raft membership as one node has watched it change.
#[derive(Debug, Default)]
pub(crate) struct Servers {
    members: std::collections::BTreeSet<NodeId>,
    removed: std::collections::BTreeSet<NodeId>,
}

impl Servers {
    /// Takes in the current membership: whoever was a member and is no longer is removed
    /// for good (ids are never reused).
    pub(crate) fn observe(&mut self, members: std::collections::BTreeSet<NodeId>) {
        self.removed.extend(self.members.difference(&members));
        // An id an operator added again anyway is a member again.
        self.removed.retain(|id| !members.contains(id));
        self.members = members;
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

impl Context {
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

    /// Whether this node saw node `id` removed from the membership (ids are never reused).
    pub(crate) fn was_removed(&self, id: NodeId) -> bool {
        let servers = self.servers.lock().expect("server list lock poisoned");
        servers.removed.contains(&id)
    }

    pub(crate) fn is_stepping_down(&self) -> bool {
        self.stepping_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The leadership this node knows of, for a host whose leader went silent: the term and
    /// its leader (this node or another) with the leader's address.
    pub(crate) fn who_leads(&self) -> qvdc_transport::protocol::HostReply {
        let watch = self.raft.metrics();
        let metrics = watch.borrow();
        let leader = current_leader(&metrics);
        qvdc_transport::protocol::HostReply::Leader {
            leadership: leader
                .as_ref()
                .map(|hint| qvdc_transport::protocol::Leadership {
                    term: metrics.current_term,
                    node: hint.node_id,
                }),
            addr: leader.map(|hint| hint.addr),
        }
    }

    /// Answers a host's `WatchLeader`: once this node knows a leader of a term after
    /// `newer_than`'s, or after [`WATCH_LEADER_MAX_MS`] with what it knows then. It stops
    /// waiting when the host's connection closes (a node shutting down closes them all, and
    /// must not be held by watches).
    pub(crate) async fn leader_after(
        &self,
        newer_than: Leadership,
        connection: &quinn::Connection,
    ) -> qvdc_transport::protocol::HostReply {
        let mut known = self.known_leader.subscribe();
        let newer = |known: &Option<(Leadership, String)>| {
            known
                .as_ref()
                .is_some_and(|(leadership, _)| leadership.term > newer_than.term)
        };
        let limit = Duration::from_millis(WATCH_LEADER_MAX_MS);
        let newer_known = async {
            let found = tokio::time::timeout(limit, known.wait_for(newer)).await;
            found.is_ok_and(|found| found.is_ok())
        };
        tokio::select! {
            found = newer_known => {
                // Every watching host moves as soon as it hears: spread their answers, so
                // that a thousand registrations (and handshakes) do not reach the new leader
                // in the same instant, time out and come back as retries (measured with the
                // swarm, docs/benchmarks.md).
                if found {
                    let hosts = self.desired.borrow().hosts.len() as u64;
                    let spread = hosts.saturating_mul(WATCH_SPREAD_PER_HOST_US).max(1);
                    let wait = ThreadRng.gen_range(0..spread);
                    tokio::time::sleep(Duration::from_micros(wait)).await;
                }
            }
            _ = connection.closed() => {}
        }
        let known = known.borrow().clone();
        qvdc_transport::protocol::HostReply::Leader {
            leadership: known.as_ref().map(|(leadership, _)| *leadership),
            addr: known.map(|(_, addr)| addr),
        }
    }

    pub(crate) fn not_leader(&self) -> Response {
        Response::NotLeader {
            leader: self.leader_hint(),
        }
    }

    /// Runs `round` every `period` for as long as this node leads for `leadership`, on the
    /// rounds when a quorum has confirmed it (a deposed leader that does not know it yet
    /// must not act); a failed round is logged and the next one tries again. A round
    /// nobody needs (`wanted` says no) is skipped before the confirmation: a confirmation
    /// is a round trip to the peers, and a lease renewed by idle loops would start at their
    /// whim rather than at the requests that need it.
    pub(crate) async fn each_leader_round<R>(
        &self,
        leadership: qvdc_transport::protocol::Leadership,
        period: Duration,
        what: &str,
        wanted: impl Fn() -> bool,
        mut round: impl FnMut(Supervision) -> R,
    ) where
        R: std::future::Future<Output = Result<(), String>>,
    {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(supervision) = self.supervision().await else {
                return;
            };
            if supervision.leadership() != leadership {
                return;
            }
            if !wanted() || self.leading().await.is_err() {
                continue;
            }
            if let Err(e) = round(supervision).await {
                warn!(error = %e, "{what} round failed; retrying");
            }
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
        if self.is_stepping_down() {
            return Err(Response::NotLeader { leader: None });
        }
        let Some(supervision) = self.supervision().await else {
            return Err(self.not_leader());
        };
        let leadership = supervision.leadership();
        if self.lease.holds(leadership, self.lease.now())
            || qvdc_transport::bugs::active(qvdc_transport::bugs::Bug::NoLeaderLease)
        {
            return Ok(supervision);
        }
        let arrived = self.lease.now();
        let mut last_failed = self.confirming.lock().await;
        // Whoever held the lock confirmed the lease (a lease is a bound on time, whoever
        // asked for it), or failed to after this caller arrived: the answer is the same.
        if self.lease.holds(leadership, self.lease.now()) {
            return Ok(supervision);
        }
        if last_failed.is_some_and(|began| began >= arrived) {
            return Err(Response::NotLeader { leader: None });
        }
        let asked = self.lease.now();
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
                self.lease.confirmed(leadership, asked);
                Ok(supervision)
            }
            None => {
                debug!(node = self.id, "leadership not confirmed by a quorum");
                *last_failed = Some(asked);
                Err(Response::NotLeader { leader: None })
            }
        }
    }

    /// Whether this node believes it leads (without asking anyone).
    pub(crate) fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The desired state as this node has applied it.
    pub(crate) fn desired(&self) -> Arc<DesiredState> {
        self.desired.borrow().clone()
    }

    /// Every registered host with the liveness `live` gives it (Unreachable if none).
    pub(crate) fn host_views(&self, live: &BTreeMap<String, Liveness>) -> Vec<HostView> {
        let desired = self.desired.borrow();
        desired
            .hosts
            .values()
            .map(|h| HostView {
                host_id: h.host_id.clone(),
                inventory: h.inventory.clone(),
                liveness: live
                    .get(&h.host_id)
                    .copied()
                    .unwrap_or(Liveness::Unreachable),
                maintenance: h.maintenance,
            })
            .collect()
    }

    /// What this node knows of the cluster: members, leader, term, log and state digest.
    pub(crate) fn cluster_status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| MemberStatus {
                node_id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        ClusterStatus {
            node_id: self.id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            last_applied: metrics.last_applied.map(|l| l.index),
            members,
            snapshot_index: metrics.snapshot.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
            state_digest: self.desired.borrow().digest(),
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
