//! Growing, shrinking and repairing the control plane: `qvctl cluster add-node` and
//! `remove-node`. A new node starts empty with `qvdc server --join`; the leader adds it as a
//! learner, which copies the log (or, if the log behind the latest snapshot is gone, the
//! snapshot), and makes it a voter once it has caught up. Replacing a dead node is removing
//! it and adding a fresh one under a new id: a fresh data dir must never reuse the id of a
//! node that may have voted, or one term could see two votes from "the same" node.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use openraft::{
    error::{ClientWriteError, RaftError},
    BasicNode, ChangeMembers,
};
use qvdc_raft::NodeId;
use qvdc_transport::protocol::{ApiError, ApiErrorKind, ApiResponse, Response};

use crate::{context::Context, propose::while_leading, reply::unavailable};

/// How long a new node may take to catch up before the operator is told what to check.
pub(crate) const CATCH_UP_TIMEOUT_MS: u64 = 30_000;

fn rejected(kind: ApiErrorKind, message: String) -> Response {
    Response::Api(Err(ApiError::new(kind, message)))
}

/// What openraft's answer to a membership change means for the operator.
fn failed(
    node: &Context,
    what: &str,
    e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> Response {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => node.not_leader(),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            rejected(ApiErrorKind::Invalid, format!("{what}: {e}"))
        }
        e => unavailable(format!("{what}: {e}; retry")),
    }
}

fn members(node: &Context) -> (BTreeSet<NodeId>, Vec<(NodeId, String)>) {
    let metrics = node.raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let voters = membership.voter_ids().collect();
    let all = membership
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    (voters, all)
}

fn status(node: &Context) -> Response {
    Response::Api(Ok(ApiResponse::ClusterStatus(node.cluster_status())))
}

/// How long a node being added gets to say which release level it runs.
const JOINER_ANSWER_MS: u64 = 5_000;

pub(crate) async fn add_node(node: &Context, id: NodeId, addr: String) -> Response {
    if id == 0 {
        return rejected(ApiErrorKind::Invalid, "node ids start at 1".into());
    }
    if addr.parse::<SocketAddr>().is_err() {
        return rejected(
            ApiErrorKind::Invalid,
            format!("node address {addr:?} is not IP:PORT (for example 10.0.0.4:7100)"),
        );
    }
    let (voters, all) = members(node);
    if let Some((other, _)) = all.iter().find(|(other, a)| *a == addr && *other != id) {
        return rejected(
            ApiErrorKind::AlreadyExists,
            format!("node {other} already listens on {addr}; one address, one node"),
        );
    }
    if let Some((_, known)) = all.iter().find(|(other, _)| *other == id) {
        if *known != addr {
            return rejected(
                ApiErrorKind::AlreadyExists,
                format!(
                    "node {id} is already a member at {known}; remove it first \
                     (`qvctl cluster remove-node {id}`) or add the new node under another id"
                ),
            );
        }
        if voters.contains(&id) {
            return status(node); // already done: adding is safe to retry
        }
    }
    // A node that cannot decode what the cluster already commits would stall on its log.
    // A node just started may take a moment to answer.
    let cluster_level = node.desired().audit.level;
    if cluster_level > 0 {
        let asked = tokio::time::Instant::now();
        let mut level = crate::level::member_level(node, id, &addr).await;
        while level < cluster_level && asked.elapsed() < Duration::from_millis(JOINER_ANSWER_MS) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            level = crate::level::member_level(node, id, &addr).await;
        }
        if level < cluster_level {
            return rejected(
                ApiErrorKind::Invalid,
                format!(
                    "node {id} at {addr} runs an older release (level {level}) than the cluster \
                     (level {cluster_level}), or is not running: start it with this release's \
                     `qvdc server --join` first"
                ),
            );
        }
    }
    let catch_up = while_leading(
        &node.raft,
        node.raft.add_learner(id, BasicNode::new(&addr), true),
    );
    match tokio::time::timeout(Duration::from_millis(CATCH_UP_TIMEOUT_MS), catch_up).await {
        Ok(Some(Ok(_))) => {}
        Ok(Some(Err(e))) => return failed(node, &format!("adding node {id} as a learner"), e),
        Ok(None) => return node.not_leader(),
        Err(_) => {
            return unavailable(format!(
                "node {id} at {addr} did not catch up within {CATCH_UP_TIMEOUT_MS} ms; check \
                 that it runs `qvdc server --join` with a server certificate of this cluster's \
                 CA and is reachable from the leader. It stays a learner (no vote) until the \
                 same add-node succeeds"
            ))
        }
    }
    let promote = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
    match while_leading(&node.raft, node.raft.change_membership(promote, false)).await {
        Some(Ok(_)) => status(node),
        Some(Err(e)) => failed(node, &format!("making node {id} a voter"), e),
        None => node.not_leader(),
    }
}

pub(crate) async fn remove_node(node: &Context, id: NodeId) -> Response {
    let (voters, all) = members(node);
    if !all.iter().any(|(other, _)| *other == id) && node.was_removed(id) {
        return status(node); // already done: removing is safe to retry
    }
    if !all.iter().any(|(other, _)| *other == id) {
        return rejected(
            ApiErrorKind::NotFound,
            format!("node {id} is not a member; `qvctl cluster status` lists the members"),
        );
    }
    if voters.len() == 1 && voters.contains(&id) {
        return rejected(
            ApiErrorKind::Invalid,
            format!("node {id} is the last voter; add another node before removing it"),
        );
    }
    let change = if voters.contains(&id) {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    match while_leading(&node.raft, node.raft.change_membership(change, false)).await {
        Some(Ok(_)) => status(node),
        Some(Err(e)) => failed(node, &format!("removing node {id}"), e),
        None => node.not_leader(),
    }
}
