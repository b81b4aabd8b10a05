//! Operator requests that reach a follower are passed on to the leader over the nodes' own
//! connections, so a client may talk to any node. A follower that loses its leader while a
//! request is on its way waits for the next one and passes the request on again; retried
//! mutations are safe because each carries its request id (the first outcome is replayed).

use std::time::Duration;

use openraft::RaftMetrics;
use qvdc_raft::NodeId;
use qvdc_transport::{
    bugs::{self, Bug},
    protocol::{ApiRequest, LeaderHint, Request, Response},
    tls::PeerIdentity,
};
use tokio::{sync::watch, time::Instant};

use qvdc_raft::model::Caller;

use crate::{api, context::Context};

/// How long a follower keeps trying to reach a known leader for one request before it sends
/// the client there itself. Several election timeouts, so one failover fits in it.
pub(crate) const FORWARD_DEADLINE_MS: u64 = 5_000;
/// How long a follower that knows of no leader waits for one before it tells the client to
/// try another node: longer than an election, shorter than the client's patience. A follower
/// cut off from the others stays leaderless and must not hold clients long.
pub(crate) const LEADERLESS_WAIT_MS: u64 = 1_000;
/// How often a follower that knows of no leader looks again.
const LEADER_POLL_MS: u64 = 20;

type Metrics = watch::Receiver<RaftMetrics<NodeId, openraft::BasicNode>>;

/// Whether a request must be answered by the leader. `cluster status` is answered by the
/// node asked (it says who that node believes leads), and so are stale reads.
pub(crate) fn needs_leader(request: &ApiRequest) -> bool {
    !matches!(request, ApiRequest::ClusterStatus | ApiRequest::Stale(_))
}

enum Leader {
    Me,
    At(NodeId, std::net::SocketAddr),
    Unknown,
}

fn leader_of(metrics: &Metrics, me: NodeId) -> Leader {
    match known_leader(&metrics.borrow()) {
        Some((id, _)) if id == me => Leader::Me,
        Some((id, addr)) => Leader::At(id, addr),
        None => Leader::Unknown,
    }
}

/// The leader as this module reads it, wherever it decides or waits: a member with an
/// address one can dial. A leader that is no longer a member, or whose address does not
/// parse, is none.
fn known_leader(
    metrics: &RaftMetrics<NodeId, openraft::BasicNode>,
) -> Option<(NodeId, std::net::SocketAddr)> {
    let hint = crate::context::current_leader(metrics)?;
    Some((hint.node_id, hint.addr.parse().ok()?))
}

/// Resolves once this node believes someone other than `from` leads (or no one), by the
/// same reading as [`leader_of`] ([`known_leader`]): a leader that is no longer a member
/// (just removed) counts as none. Comparing Raft's raw leader instead made a follower whose leader had been
/// removed spin without yielding, leader "unknown" yet "changed" on every turn.
async fn leader_changes(metrics: &mut Metrics, from: Option<NodeId>) {
    loop {
        let now = known_leader(&metrics.borrow_and_update()).map(|(id, _)| id);
        if now != from {
            return;
        }
        if metrics.changed().await.is_err() {
            return std::future::pending().await; // Raft stopped; the deadline ends the wait
        }
    }
}

/// Passes `request` to the leader and returns its answer, naming the leader so the client can
/// go there itself next time, following leadership changes until [`FORWARD_DEADLINE_MS`] has
/// passed.
/// `operator` is the name in the certificate of the operator who asked.
pub(crate) async fn to_leader(
    node: &Context,
    operator: &PeerIdentity,
    request: ApiRequest,
) -> Response {
    if node.was_removed(node.id) && !bugs::active(Bug::RemovedNodePassesRequestsOn) {
        // The leader refuses a removed node's certificate, and would answer Forbidden to
        // every request passed on from here: send the client to the leader, or on to
        // another node, instead of holding it here.
        return node.not_leader();
    }
    let started = Instant::now();
    let deadline = started + Duration::from_millis(FORWARD_DEADLINE_MS);
    let mut leaderless_since = Some(started);
    let mut metrics: Metrics = node.raft.metrics();
    let forwarded = Request::ForwardedFor {
        operator: operator.name.clone(),
        serial: operator.serial.clone(),
        request: request.clone(),
    };
    let mut last = String::from("no leader is known");
    loop {
        let (known, call) = match leader_of(&metrics, node.id) {
            Leader::Me => {
                let caller = Caller {
                    name: Some(operator.name.clone()),
                    via: None,
                };
                return api::handle(node, caller, request).await;
            }
            Leader::At(id, addr) => {
                leaderless_since = None;
                (Some(id), Some((id, addr)))
            }
            Leader::Unknown => {
                let since = *leaderless_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(LEADERLESS_WAIT_MS) {
                    break;
                }
                (None, None)
            }
        };
        if let Some((id, addr)) = call {
            tokio::select! {
                answer = node.peers.call(addr, &forwarded, deadline - Instant::now()) => match answer {
                    Ok(Response::NotLeader { .. }) => last = format!("node {id} no longer leads"),
                    Ok(Response::Api(result)) => {
                        let leader = LeaderHint { node_id: id, addr: addr.to_string() };
                        return Response::ApiPassedOn { leader, result };
                    }
                    Ok(response) => return response,
                    Err(e) => last = format!("leader {id} at {addr}: {e}"),
                },
                () = leader_changes(&mut metrics, known) => continue,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        tokio::select! {
            () = leader_changes(&mut metrics, known) => {}
            () = tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)) => {}
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    // Let the client try on its own: towards the leader this node believes in, if any, which
    // the client may reach when this node cannot; otherwise to another node.
    tracing::debug!(node = node.id, %last, "could not pass a request on to a leader");
    node.not_leader()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader that is no longer a member reads as no leader, both where the loop decides
    /// what to do and where it waits for a change: with the two readings apart, waiting for
    /// a change from "no leader" returned at once, forever, and the loop never yielded.
    #[tokio::test(start_paused = true)]
    async fn a_removed_leader_is_no_leader_while_waiting_for_a_change() {
        let mut removed = RaftMetrics::new_initial(1);
        removed.current_leader = Some(4); // not in the (empty) membership
        let (_tx, mut rx) = watch::channel(removed);
        assert!(matches!(leader_of(&rx, 1), Leader::Unknown));
        let wait = leader_changes(&mut rx, None);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), wait)
                .await
                .is_err(),
            "no change happened, so the wait must not end"
        );
    }
}
