//! Learning of a new leader when the election ends.
//!
//! A host's heartbeats notice a dead leader only once one of them goes unacknowledged: up to
//! a heartbeat interval plus [`crate::silence::SILENT_AFTER_MS`] after the leader died, and
//! later still if the election is not over by then. So while a host is registered it also
//! keeps one `WatchLeader` request open on another control-plane node, which answers the
//! moment it knows a leader of a newer term (it won the election, or heard from the winner).
//! The host then moves its session there, on the watch's own connection if the watched node
//! is the winner. One connection and one open request per host, on a follower: the watch
//! costs the leader nothing. A connection the host already holds to the node it watches
//! (one that redirected it, say) carries the watch, and the watched node's connection is
//! handed back when the watch ends, so watching costs no handshake the host need not make.

use std::{net::SocketAddr, time::Duration};

use qvdc_transport::{
    bugs::{self, Bug},
    protocol::{HostMessage, HostReply, Leadership, Request, Response},
    quic, quinn, Endpoint,
};
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::spares::Spares;

/// Pause before watching from another node after a watch's node could not be reached or
/// refused the watch; also the least time between two watches on one node.
pub const WATCH_RETRY_MS: u64 = 1_000;

/// Where a watch says the session should go.
pub struct NewLeader {
    /// The new leader's address.
    pub addr: SocketAddr,
    /// The node that named it, and the watch's connection to that node: alive a moment ago,
    /// and the session's own connection if that node is the new leader.
    pub watched: (SocketAddr, quinn::Connection),
}

/// What one watch needs: who the host is, its session's leader and the other nodes.
pub struct Watch {
    pub endpoint: Endpoint,
    pub host_id: String,
    /// The session's leader: the watch looks for a leader of a newer term than this.
    pub leader: (SocketAddr, Leadership),
    /// Control-plane addresses; every one but the leader's may be watched.
    pub cluster: Vec<SocketAddr>,
    /// Connections the host holds to nodes, unused: the one to the first node watched is
    /// used, the others are closed.
    pub spares: Spares,
}

impl Watch {
    /// Watches until a node names a leader of a newer term than the session's, then sends
    /// where to go on `found`. Ends without sending if no node but the leader is known, or
    /// if a node does not know the request (the previous release): the host then finds a
    /// new leader through its heartbeats alone. Runs until dropped otherwise.
    pub async fn run(mut self, found: oneshot::Sender<NewLeader>) {
        if bugs::active(Bug::NoLeaderWatch) {
            return;
        }
        let mut others = order(&self.cluster, self.leader.0, &self.host_id);
        // A node the host holds a connection to answered a moment ago: watch it first (after
        // an election, the other may be the dead leader).
        others.sort_by_key(|addr| !self.spares.holds(*addr));
        let mut spare = others.first().and_then(|first| self.spares.take(*first));
        self.spares.close_all();
        let (_, leadership) = self.leader;
        for addr in others.iter().copied().cycle() {
            let open = spare.take();
            match self.watch_at(addr, open, leadership).await {
                Ok(new_leader) => {
                    let _ = found.send(new_leader);
                    return;
                }
                Err(Stop::Unsupported) => {
                    info!(%addr, "this node cannot watch for a new leader (an older release)");
                    return;
                }
                Err(Stop::Retry(reason)) => {
                    debug!(%addr, %reason, "leader watch interrupted; trying another node");
                    tokio::time::sleep(Duration::from_millis(WATCH_RETRY_MS)).await;
                }
            }
        }
    }

    /// Holds watches open on `addr`, one after another, until one names a newer leader; on
    /// `open` if that is a connection to `addr` already.
    async fn watch_at(
        &self,
        addr: SocketAddr,
        open: Option<quinn::Connection>,
        leadership: Leadership,
    ) -> Result<NewLeader, Stop> {
        let connection = match open {
            Some(connection) => connection,
            None => (self.endpoint.connect_quietly(addr).await)
                .map_err(|e| Stop::Retry(e.to_string()))?,
        };
        loop {
            let asked = tokio::time::Instant::now();
            let ask = HostMessage::WatchLeader {
                host_id: self.host_id.clone(),
                newer_than: leadership,
            };
            let reply = quic::call(&connection, &Request::Host(ask))
                .await
                .map_err(|e| Stop::Retry(e.to_string()))?;
            match reply {
                Response::Host(HostReply::Leader {
                    leadership: Some(named),
                    addr: Some(at),
                }) if named.term > leadership.term => {
                    let at: SocketAddr = at.parse().map_err(|_| {
                        Stop::Retry(format!("leader address {at:?} is not an address"))
                    })?;
                    info!(watched = %addr, leader = %at, leadership = %named, "a new leader was elected");
                    return Ok(NewLeader {
                        addr: at,
                        watched: (addr, connection),
                    });
                }
                // Nothing newer within the node's bound: ask again on the same connection,
                // but not more than once per retry pause (a node that answers at once, not
                // holding the watch, must not be asked in a loop).
                Response::Host(HostReply::Leader { .. }) => {
                    let next = asked + Duration::from_millis(WATCH_RETRY_MS);
                    tokio::time::sleep_until(next).await;
                }
                Response::Malformed { .. } => return Err(Stop::Unsupported),
                other => return Err(Stop::Retry(format!("unexpected answer {other:?}"))),
            }
        }
    }
}

enum Stop {
    /// The node does not know `WatchLeader`.
    Unsupported,
    Retry(String),
}

/// The nodes to watch from, in the order to try them: every one but the leader's. Hosts
/// start at different nodes (by their id), so thousands of hosts spread their watches over
/// the followers.
fn order(cluster: &[SocketAddr], leader: SocketAddr, host_id: &str) -> Vec<SocketAddr> {
    let mut others: Vec<SocketAddr> = (cluster.iter().copied())
        .filter(|addr| *addr != leader)
        .collect();
    if !others.is_empty() {
        let start = spread(host_id) % others.len();
        others.rotate_left(start);
    }
    others
}

/// A number from a host id, the same on every run (FNV-1a).
fn spread(host_id: &str) -> usize {
    let hash = (host_id.bytes()).fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_spread_their_watches_over_the_nodes_that_do_not_lead() {
        let cluster: Vec<SocketAddr> = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let leader = cluster[0];
        let first = |host_id: &str| {
            let others = order(&cluster, leader, host_id);
            assert_eq!(others.len(), 2);
            assert!(!others.contains(&leader));
            others[0]
        };
        let mut counts = std::collections::HashMap::new();
        for i in 0..1_000 {
            *counts.entry(first(&format!("host-{i}"))).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert!(counts.values().all(|n| *n > 400), "{counts:?}");
    }
}
