//! The deny list at work: a node refuses a revoked certificate when it connects and closes
//! its connections when the revocation is applied, whichever node the peer is connected to.
//! The list itself is replicated state (`DesiredState::revoked`).

use std::{collections::BTreeMap, sync::Arc};

use qvdc_raft::DesiredState;
use qvdc_transport::{quic, quinn, tls::PeerIdentity};
use tokio::sync::watch;
use tracing::{info, warn};

/// The connections this node serves, by the serial of the certificate each presented, with
/// that certificate's identity (ordered maps: what is closed, and in which order, does not
/// depend on the process).
type BySerial = BTreeMap<String, BTreeMap<usize, (quinn::Connection, PeerIdentity)>>;

#[derive(Debug, Default)]
pub(crate) struct Connections {
    by_serial: std::sync::Mutex<BySerial>,
}

/// Keeps a connection in [`Connections`] while it is served.
pub(crate) struct Registered {
    connections: Arc<Connections>,
    serial: String,
    id: usize,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut by_serial = self.connections.lock();
        if let Some(of_serial) = by_serial.get_mut(&self.serial) {
            of_serial.remove(&self.id);
            if of_serial.is_empty() {
                by_serial.remove(&self.serial);
            }
        }
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BySerial> {
        self.by_serial
            .lock()
            .expect("connection registry lock poisoned")
    }

    /// Registers `connection`, then checks its certificate against `desired`'s deny list (in
    /// that order, so a revocation applied in between is seen by one or the other). A
    /// revoked certificate's connection is closed with the reason, and `None` returned.
    pub(crate) fn admit(
        self: &Arc<Self>,
        desired: &watch::Receiver<Arc<DesiredState>>,
        peer: &PeerIdentity,
        connection: &quinn::Connection,
    ) -> Option<Registered> {
        let id = connection.stable_id();
        self.lock()
            .entry(peer.serial.clone())
            .or_default()
            .insert(id, (connection.clone(), peer.clone()));
        let registered = Registered {
            connections: self.clone(),
            serial: peer.serial.clone(),
            id,
        };
        if desired.borrow().revoked.contains_key(&peer.serial) {
            warn!(role = %peer.role, name = %peer.name, serial = %peer.serial, "refused a revoked certificate");
            close(connection, peer);
            return None;
        }
        Some(registered)
    }

    /// Closes every connection whose certificate `desired` revokes.
    fn close_revoked(&self, desired: &DesiredState) -> usize {
        let doomed: Vec<(quinn::Connection, PeerIdentity)> = self
            .lock()
            .iter()
            .filter(|(serial, _)| desired.revoked.contains_key(*serial))
            .flat_map(|(_, connections)| connections.values().cloned())
            .collect();
        for (connection, peer) in &doomed {
            close(connection, peer);
        }
        doomed.len()
    }
}

fn close(connection: &quinn::Connection, peer: &PeerIdentity) {
    let reason = format!(
        "the {} certificate {:?} (serial {}) is revoked; issue a new one (`qvctl certs issue --replace`)",
        peer.role, peer.name, peer.serial
    );
    connection.close(quic::REFUSED_CODE.into(), reason.as_bytes());
}

/// Closes the connections of every revoked certificate, from the list this node has applied
/// when it starts and again whenever the list changes.
pub(crate) async fn enforce(
    connections: Arc<Connections>,
    mut desired: watch::Receiver<Arc<DesiredState>>,
) {
    // Starting from an empty list: whatever is revoked already is enforced too, in case a
    // connection was admitted just before a revocation was applied.
    let mut seen = qvdc_raft::model::OrdMap::new();
    loop {
        let state = desired.borrow_and_update().clone();
        if !state.revoked.ptr_eq(&seen) {
            let closed = connections.close_revoked(&state);
            if closed > 0 {
                info!(closed, "closed the connections of revoked certificates");
            }
            seen = state.revoked.clone();
        }
        if desired.changed().await.is_err() {
            return;
        }
    }
}
