//! Elections that ask before they disturb anyone (pre-vote).
//!
//! openraft 0.9 starts an election by moving to a new term and voting for itself. A node whose
//! log lacks the dead leader's last entry loses that election, and having voted for itself it
//! also refuses the up-to-date node's candidacy in the same term: the cluster waits one more
//! election timeout. So qvdc turns openraft's own election timer off and runs this one. A voter
//! that has not heard from a leader for a while first asks the other voters whether they would
//! vote for it: yes only if its log is at least as up to date as theirs and they have not heard
//! from a leader themselves within the leader lease. Only with a quorum of yeses does it ask
//! openraft to elect it. Asking changes no vote and no term on either side, so pre-vote only
//! decides when elections start; which one wins, and safety, stay with openraft.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use openraft::ServerState;
use qvdc_transport::bugs::{self, Bug};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::{task::JoinSet, time::Instant};
use tracing::{debug, info};

use crate::{
    network::{self, Peers},
    runtime::ThreadRng,
    store::LogStore,
    types::{LogId, NodeId, Raft},
    ELECTION_TIMEOUT_MS_MAX, ELECTION_TIMEOUT_MS_MIN,
};

/// How long a follower trusts a leader it heard from: openraft's voters refuse candidates
/// for this long after the leader's last message (its `leader_lease`, the maximal election
/// timeout), so starting an election sooner is pointless.
pub const VOTER_LEASE_MS: u64 = ELECTION_TIMEOUT_MS_MAX;
/// Random spread of the moments voters try again after an election that went nowhere.
pub const ELECTION_JITTER_MS: u64 = ELECTION_TIMEOUT_MS_MAX - ELECTION_TIMEOUT_MS_MIN;
/// How long after the voter lease a follower of a dead leader first asks for pre-votes: the
/// leader's last heartbeats reach its followers a few milliseconds apart, and a voter that
/// heard it within the lease says no.
pub const STAND_MARGIN_MS: u64 = 10;
/// Random spread of the moments the followers of a dead leader stand, so that one usually
/// asks first; [`PreVotes`] settles the rest.
pub const STAND_JITTER_MS: u64 = 80;
/// How soon a node asks again after its pre-votes found no quorum, and the random spread
/// added: asking costs only a round trip, and a voter that heard the dead leader a little
/// later than the asker says yes a moment later.
pub const REASK_MS: u64 = 40;
pub const REASK_JITTER_MS: u64 = 80;
/// How often a voter looks whether it is time to start an election.
pub const ELECTION_CHECK_MS: u64 = 10;
/// How long a voter that granted a pre-vote lets that candidate run before it stands itself.
pub const YIELD_MS: u64 = ELECTION_TIMEOUT_MS_MIN;

/// The pre-vote this node granted last, and when it last decided to stand, so that its own
/// election timer lets that candidate run first. Two followers of a dead leader time out
/// within milliseconds of each other now and then; if both stood, each would vote for itself
/// in the same term and neither win, or the second would depose the first as it won,
/// costing another election. A node that said yes to a peer does not ask for itself for a
/// while; two that asked at the same time let the lower id stand; and a node that decided to
/// stand says no to every pre-vote until its candidacy shows in its vote. Deciding to stand
/// and saying yes to a peer happen under one lock, so that neither slips in between the
/// other's check and its effect (seen in the simulation: a node passed its checks, said yes
/// to a peer with a lower id before its own election began, and both stood). Cheap to
/// clone; clones share the record.
#[derive(Debug, Clone, Default)]
pub struct PreVotes(Arc<Mutex<Record>>);

#[derive(Debug, Clone, Copy, Default)]
struct Record {
    granted: Option<Granted>,
    /// When this node last decided to stand.
    stood: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Granted {
    candidate: NodeId,
    at: Instant,
}

/// Whether something this node did at `at` still holds it to its turn.
fn within_turn(at: Instant) -> bool {
    Instant::now() < at + Duration::from_millis(YIELD_MS)
        && !bugs::active(Bug::ElectionsWithoutTurns)
}

impl PreVotes {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.0.lock().expect("pre-vote record")
    }

    /// Says yes to `candidate` unless this node decided to stand itself moments ago.
    fn grant(&self, candidate: NodeId) -> bool {
        let mut record = self.record();
        if record.stood.is_some_and(within_turn) {
            return false;
        }
        record.granted = Some(Granted {
            candidate,
            at: Instant::now(),
        });
        true
    }

    /// The candidate this node said yes to within the last [`YIELD_MS`], and when.
    fn recent(record: &Record) -> Option<Granted> {
        record.granted.filter(|granted| within_turn(granted.at))
    }

    /// Before node `me` asks: a peer it said yes to lately, which runs first.
    fn deferring_to_an_earlier(&self, me: NodeId) -> Option<Granted> {
        Self::recent(&self.record()).filter(|granted| granted.candidate != me)
    }

    /// After node `me` asked (from `asked` on) and heard a quorum say yes: stands, unless it
    /// said yes meanwhile to a peer with a lower id. The two asked at the same time and said
    /// yes to each other; the lower id stands, the other does not and gets that peer back.
    fn stand(&self, me: NodeId, asked: Instant) -> Result<(), Granted> {
        let mut record = self.record();
        let simultaneous =
            Self::recent(&record).filter(|granted| granted.at >= asked && granted.candidate < me);
        if let Some(granted) = simultaneous {
            return Err(granted);
        }
        record.stood = Some(Instant::now());
        Ok(())
    }
}

/// "Would you vote for me if I stood now?", sent by a voter before it starts an election.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The last entry of the candidate's log.
    pub last_log_id: Option<LogId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
}

/// This node's answer to a pre-vote: what openraft would answer the real vote request,
/// without changing anything but the record of whom it said yes to.
pub async fn answer(
    raft: &Raft,
    log: &LogStore,
    pre_votes: &PreVotes,
    request: &PreVoteRequest,
) -> PreVoteResponse {
    let mine = log.last_log_id();
    let lease = Duration::from_millis(VOTER_LEASE_MS);
    let candidacy = Duration::from_millis(ELECTION_TIMEOUT_MS_MIN);
    let busy = raft
        .with_raft_state(move |state| {
            let since = |window| {
                state
                    .vote_last_modified()
                    .is_some_and(|changed| Instant::now() <= changed + window)
            };
            state.server_state == ServerState::Leader
                // Heard from a leader within the lease.
                || (state.vote_ref().is_committed() && since(lease))
                // Stood, or voted for a candidate, moments ago: that election is under way.
                // (Said yes here, a second candidate would stand in a higher term and depose
                // the first as it wins: seen in the benchmark, two followers of a dead leader
                // standing 2 ms apart.)
                || (!state.vote_ref().is_committed()
                    && since(candidacy)
                    && !bugs::active(Bug::ElectionsWithoutTurns))
        })
        .await
        // A node shutting down votes for no one.
        .unwrap_or(true);
    let granted = !busy && request.last_log_id >= mine && pre_votes.grant(request.candidate);
    debug!(
        candidate = request.candidate,
        granted, busy, "answered a pre-vote"
    );
    PreVoteResponse { granted }
}

/// When this node last heard from a leader, as its election timer needs it. Read every
/// check, so it allocates nothing.
struct Silence {
    /// Whether this node may stand: a voter that does not lead.
    may_stand: bool,
    /// Whether this node follows a leader that was elected (rather than a candidate's vote).
    following_leader: bool,
    /// When this node last heard from its leader, or last changed its vote.
    heard: Option<Instant>,
}

async fn silence(raft: &Raft, me: NodeId) -> Option<Silence> {
    raft.with_raft_state(move |state| {
        let membership = state.membership_state.effective().membership();
        let voter = membership
            .get_joint_config()
            .iter()
            .any(|config| config.contains(&me));
        Silence {
            may_stand: voter
                && !matches!(
                    state.server_state,
                    ServerState::Leader | ServerState::Shutdown
                ),
            following_leader: state.vote_ref().is_committed(),
            heard: state.vote_last_modified(),
        }
    })
    .await
    .ok()
}

/// Who decides whether this node may stand: each configuration of the membership in force
/// (two during a change), and the other voters' addresses. Read only when it is time to ask.
struct Electorate {
    configs: Vec<BTreeSet<NodeId>>,
    others: Vec<(NodeId, String)>,
}

async fn electorate(raft: &Raft, me: NodeId) -> Option<Electorate> {
    raft.with_raft_state(move |state| {
        let membership = state.membership_state.effective().membership();
        let configs = membership.get_joint_config().clone();
        let others = membership
            .nodes()
            .filter(|(id, _)| **id != me && configs.iter().any(|c| c.contains(id)))
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        Electorate { configs, others }
    })
    .await
    .ok()
}

fn jitter(spread_ms: u64) -> Duration {
    Duration::from_millis(ThreadRng.gen_range(0..spread_ms))
}

/// Whether `granted` holds a majority of every configuration in `configs`.
fn is_quorum(configs: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    configs
        .iter()
        .all(|config| config.intersection(granted).count() * 2 > config.len())
}

/// Asks the other voters for a pre-vote; true once a quorum (this node included) said yes.
async fn canvass(
    peers: &Peers,
    me: NodeId,
    last_log_id: Option<LogId>,
    electorate: &Electorate,
) -> bool {
    let mut granted = BTreeSet::from([me]);
    if is_quorum(&electorate.configs, &granted) {
        return true;
    }
    let request = PreVoteRequest {
        candidate: me,
        last_log_id,
    };
    let mut asks = JoinSet::new();
    for (id, addr) in &electorate.others {
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            continue;
        };
        let (peers, request, id) = (peers.clone(), request.clone(), *id);
        asks.spawn(async move {
            let ttl = Duration::from_millis(ELECTION_TIMEOUT_MS_MIN);
            (id, network::pre_vote(&peers, addr, request, ttl).await)
        });
    }
    while let Some(asked) = asks.join_next().await {
        if let Ok((id, Ok(PreVoteResponse { granted: true }))) = asked {
            granted.insert(id);
            if is_quorum(&electorate.configs, &granted) {
                return true;
            }
        }
    }
    false
}

/// The election timer of node `me`; runs until Raft shuts down. A follower of an elected
/// leader asks for pre-votes once it has heard nothing from it for the voter lease, a margin
/// and a jitter: 410–490 ms. A node whose last election went nowhere tries again 200–400 ms
/// after its vote changed. Asking again after no quorum said yes costs only a round trip, so
/// it waits 40–120 ms: the other follower may have heard the leader a little later than this
/// one, and its lease ends soon after.
pub async fn run(raft: Raft, log: LogStore, peers: Peers, pre_votes: PreVotes, me: NodeId) {
    let mut stand_wait = jitter(STAND_JITTER_MS);
    let mut retry_wait = jitter(ELECTION_JITTER_MS);
    let mut not_before = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(ELECTION_CHECK_MS)).await;
        // The leader (the busiest node) need not ask its Raft core.
        if raft.metrics().borrow().state == ServerState::Leader {
            continue;
        }
        let Some(before) = silence(&raft, me).await else {
            return; // Raft has stopped
        };
        if !before.may_stand {
            continue;
        }
        let long_enough = if before.following_leader {
            Duration::from_millis(VOTER_LEASE_MS + STAND_MARGIN_MS) + stand_wait
        } else {
            Duration::from_millis(ELECTION_TIMEOUT_MS_MIN) + retry_wait
        };
        let now = Instant::now();
        if now < not_before || before.heard.is_some_and(|heard| now < heard + long_enough) {
            continue;
        }
        // A peer that asked first, and was told yes, runs first: asking now would make it
        // yield to this node in turn (below), and neither would stand.
        if let Some(granted) = pre_votes.deferring_to_an_earlier(me) {
            not_before = granted.at + Duration::from_millis(YIELD_MS);
            continue;
        }
        stand_wait = jitter(STAND_JITTER_MS);
        retry_wait = jitter(ELECTION_JITTER_MS);
        let Some(electorate) = electorate(&raft, me).await else {
            return;
        };
        if !canvass(&peers, me, log.last_log_id(), &electorate).await {
            debug!(node = me, "pre-vote found no quorum; not standing");
            not_before = Instant::now() + Duration::from_millis(REASK_MS) + jitter(REASK_JITTER_MS);
            continue;
        }
        // Asking takes a round trip or more. If this node voted for another candidate or
        // heard from a leader meanwhile, the yeses are stale, and standing now would depose
        // whoever just won (seen in the benchmark: a node granted its vote, a leader was
        // elected, and 14 ms later the node stood on a quorum of pre-votes asked before; the
        // cluster lost one more election round).
        let Some(after) = silence(&raft, me).await else {
            return;
        };
        if after.heard != before.heard || !after.may_stand {
            debug!(
                node = me,
                "voted or heard a leader while asking; not standing"
            );
            not_before = Instant::now() + Duration::from_millis(ELECTION_TIMEOUT_MS_MIN);
            continue;
        }
        // Two that asked at the same time said yes to each other: the lower id stands.
        if let Err(granted) = pre_votes.stand(me, now) {
            debug!(
                node = me,
                candidate = granted.candidate,
                "asked at the same time as a peer with a lower id; letting it stand"
            );
            not_before = granted.at + Duration::from_millis(YIELD_MS);
            continue;
        }
        info!(
            node = me,
            "a quorum would vote for this node: standing for election"
        );
        not_before = Instant::now() + Duration::from_millis(ELECTION_TIMEOUT_MS_MIN) + retry_wait;
        if raft.trigger().elect().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_said_yes_lets_that_candidate_run_first() {
        let pre_votes = PreVotes::default();
        assert!(pre_votes.deferring_to_an_earlier(3).is_none());
        assert!(pre_votes.grant(2));
        tokio::time::advance(Duration::from_millis(YIELD_MS - 1)).await;
        assert_eq!(
            pre_votes.deferring_to_an_earlier(3).map(|g| g.candidate),
            Some(2),
            "node 3 said yes to node 2 and must not ask for itself yet"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            pre_votes.deferring_to_an_earlier(3).is_none(),
            "node 2 had its turn; node 3 may stand now"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn of_two_that_asked_at_once_the_lower_id_stands() {
        let (at_2, at_3) = (PreVotes::default(), PreVotes::default());
        let asked = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        // Each one's request reached the other after both had begun to ask.
        assert!(at_2.grant(3));
        assert!(at_3.grant(2));
        assert!(at_2.stand(2, asked).is_ok());
        assert_eq!(at_3.stand(3, asked).map_err(|g| g.candidate), Err(2));
        // A yes given before this node began to ask is the other rule's: it never asked.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(at_3.stand(3, Instant::now()).is_ok());
    }

    /// Node 2 decided to stand; node 1's pre-vote, arriving before node 2's candidacy shows
    /// in its vote, must be refused: said yes to, node 1 (the lower id) would stand too.
    #[tokio::test(start_paused = true)]
    async fn a_node_that_decided_to_stand_says_no_to_pre_votes() {
        let at_2 = PreVotes::default();
        let asked = Instant::now();
        assert!(at_2.stand(2, asked).is_ok());
        assert!(
            !at_2.grant(1),
            "node 2 is standing; it must not say yes to node 1"
        );
        tokio::time::advance(Duration::from_millis(YIELD_MS)).await;
        assert!(at_2.grant(1), "its candidacy is long over");
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_configuration() {
        let three = vec![set(&[1, 2, 3])];
        assert!(!is_quorum(&three, &set(&[1])));
        assert!(is_quorum(&three, &set(&[1, 2])));
        let single = vec![set(&[1])];
        assert!(is_quorum(&single, &set(&[1])));
        // Joint: {1,2,3} → {3,4,5}: 1,2,3 hold the old majority but only one of the new.
        let joint = vec![set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert!(!is_quorum(&joint, &set(&[1, 2, 3])));
        assert!(is_quorum(&joint, &set(&[2, 3, 4])));
    }
}
