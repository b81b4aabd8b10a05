//! Who gets a connection to a control-plane node: bounds on handshakes in progress, on
//! connections in total and per certificate, and on concurrent requests per connection by
//! role, so that no one peer (a leaked certificate, a buggy host, a flood of handshakes from
//! spoofed addresses) can take the memory or tasks that honest peers need.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use crate::{
    quic::{self, TransportError},
    tls::{PeerIdentity, Role},
};

/// Connections a node keeps at once, all peers together: room for a large fleet of hosts.
pub const CONNECTIONS_MAX: usize = 16_384;
/// Handshakes in progress from addresses QUIC has not validated yet; past this, new ones
/// must first prove their address with a Retry round trip (a spoofed flood cannot).
pub const HANDSHAKES_UNVALIDATED_MAX: usize = 64;
/// Connections one host certificate may hold: one to the leader, plus a re-dial that
/// overlaps the old connection's last moments.
pub const CONNECTIONS_PER_HOST_MAX: usize = 4;
/// Connections one server certificate may hold: Raft and passed-on requests share one,
/// restarts overlap.
pub const CONNECTIONS_PER_SERVER_MAX: usize = 8;
/// Connections one operator certificate may hold: tools and benchmarks open many.
pub const CONNECTIONS_PER_OPERATOR_MAX: usize = 1_024;
/// Requests a host may have in flight on its connection: a heartbeat, a registration and a
/// few command results. Further streams wait, unread, until one of these is answered.
pub const STREAMS_PER_HOST_MAX: usize = 16;

/// The bounds, shared by every connection one endpoint accepts.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    state: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    handshaking: usize,
    total: usize,
    per_peer: BTreeMap<(Role, String), usize>,
}

/// A connection that was admitted; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    state: Arc<Mutex<Counts>>,
    key: (Role, String),
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.state.lock().expect("admission lock poisoned");
        counts.total -= 1;
        let count = counts
            .per_peer
            .get_mut(&self.key)
            .expect("an admitted peer is counted");
        *count -= 1;
        if *count == 0 {
            counts.per_peer.remove(&self.key);
        }
    }
}

struct Handshaking(Arc<Mutex<Counts>>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.lock().expect("admission lock poisoned").handshaking -= 1;
    }
}

fn per_identity_max(role: Role) -> usize {
    match role {
        Role::Server => CONNECTIONS_PER_SERVER_MAX,
        Role::Host => CONNECTIONS_PER_HOST_MAX,
        Role::Operator => CONNECTIONS_PER_OPERATOR_MAX,
    }
}

impl Admission {
    /// Decides what to do with a connection attempt: `None` if it was answered with a
    /// Retry (or refused) and is gone, otherwise the attempt to complete with [`Self::admit`].
    pub fn screen(&self, incoming: quinn::Incoming) -> Option<quinn::Incoming> {
        let counts = self.state.lock().expect("admission lock poisoned");
        if counts.total >= CONNECTIONS_MAX {
            drop(counts);
            incoming.refuse();
            return None;
        }
        let busy = counts.handshaking >= HANDSHAKES_UNVALIDATED_MAX;
        drop(counts);
        if busy && !incoming.remote_address_validated() && incoming.may_retry() {
            // quinn answers with a Retry token; an honest peer comes back at once.
            let _ = incoming.retry();
            return None;
        }
        Some(incoming)
    }

    /// Completes the handshake and admits the peer if its certificate has room left. A peer
    /// over its bound gets the connection closed with a reason that says so.
    pub async fn admit(
        &self,
        incoming: quinn::Incoming,
    ) -> Result<(quinn::Connection, PeerIdentity, Admitted), TransportError> {
        let handshake = {
            let mut counts = self.state.lock().expect("admission lock poisoned");
            counts.handshaking += 1;
            Handshaking(self.state.clone())
        };
        let connection = incoming.await?;
        drop(handshake);
        let peer = quic::peer_identity(&connection)?;
        let key = (peer.role, peer.name.clone());
        let refused = {
            let mut counts = self.state.lock().expect("admission lock poisoned");
            let held = counts.per_peer.get(&key).copied().unwrap_or(0);
            let bound = per_identity_max(peer.role);
            if held >= bound {
                Some(format!(
                    "certificate {:?} already holds {held} connections, the most a {} may; close one first",
                    peer.name, peer.role
                ))
            } else if counts.total >= CONNECTIONS_MAX {
                Some(format!(
                    "this node holds {CONNECTIONS_MAX} connections, its limit; try another node"
                ))
            } else {
                counts.total += 1;
                *counts.per_peer.entry(key.clone()).or_default() += 1;
                None
            }
        };
        if let Some(reason) = refused {
            connection.close(quic::REFUSED_CODE.into(), reason.as_bytes());
            return Err(TransportError::Stream(reason));
        }
        let admitted = Admitted {
            state: self.state.clone(),
            key,
        };
        Ok((connection, peer, admitted))
    }

    /// How many requests a peer with `role` may have served at once on one connection. QUIC's
    /// stream limit is advertised before the peer's certificate is known, so the bound for
    /// hosts is kept by the server not accepting more streams than this at a time.
    pub fn streams_max(role: Role) -> usize {
        match role {
            Role::Host => STREAMS_PER_HOST_MAX,
            Role::Server | Role::Operator => quic::STREAMS_PER_CONNECTION_MAX as usize,
        }
    }

    /// Connections admitted and not yet dropped, for tests and metrics.
    pub fn connections(&self) -> usize {
        self.state.lock().expect("admission lock poisoned").total
    }
}
