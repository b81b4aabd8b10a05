//! Connections a host holds to control-plane nodes without using them.
//!
//! A handshake is most of what dialing a node costs, on both sides, and hosts dial in
//! crowds: at start-up, before the cluster has a leader, each host is refused or redirected
//! by node after node, and after an election every host dials the winner and then a node
//! to watch. A node that just answered is alive, so the connection it answered on is kept
//! for the next session or watch on that node instead of being closed and dialed again.
//! A connection to a node that went silent is never kept: reusing it would wait out the
//! idle timeout where a fresh dial fails in a second.

use std::{collections::BTreeMap, net::SocketAddr};

use qvdc_transport::quinn::Connection;

/// Open, unused connections, at most one per node. Ordered by address, so that closing them
/// all sends the closes in the same order on every run (the simulation replays a seed
/// exactly only if every packet goes out in the same order).
#[derive(Default)]
pub struct Spares(BTreeMap<SocketAddr, Connection>);

impl Spares {
    /// Keeps `connection` to `addr` (which has just answered on it) for later; a spare
    /// kept earlier for `addr`, if another connection, is closed.
    pub fn keep(&mut self, addr: SocketAddr, connection: Connection) {
        if connection.close_reason().is_some() {
            return;
        }
        let id = connection.stable_id();
        if let Some(earlier) = self.0.insert(addr, connection) {
            if earlier.stable_id() != id {
                earlier.close(0u32.into(), b"not needed");
            }
        }
    }

    /// The spare connection to `addr`, if one is kept and still open.
    pub fn take(&mut self, addr: SocketAddr) -> Option<Connection> {
        self.0
            .remove(&addr)
            .filter(|connection| connection.close_reason().is_none())
    }

    /// Whether an open spare to `addr` is kept.
    pub fn holds(&self, addr: SocketAddr) -> bool {
        (self.0.get(&addr)).is_some_and(|connection| connection.close_reason().is_none())
    }

    /// Moves every spare out, leaving none here.
    pub fn take_all(&mut self) -> Spares {
        std::mem::take(self)
    }

    /// Closes every spare.
    pub fn close_all(&mut self) {
        for (_, connection) in std::mem::take(&mut self.0) {
            connection.close(0u32.into(), b"not needed");
        }
    }
}
