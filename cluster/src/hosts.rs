//! The control plane's side of the host protocol: registration (recorded through Raft) and
//! heartbeats (soft state, handed to the supervision tree). Only the leader accepts either.

use std::sync::Arc;

use qvdc_actors::{Call, HostLink, HostReports, Link};
use qvdc_raft::Command;
use qvdc_transport::{
    protocol::{CommandResult, HostCommand, HostMessage, HostReply, Inventory, Response},
    quic, quinn,
    tls::PeerIdentity,
};
use tracing::info;

use crate::{context::Context, write::propose};

pub(crate) async fn handle(
    node: &Context,
    peer: &PeerIdentity,
    connection: &quinn::Connection,
    message: HostMessage,
) -> Response {
    let host_id = message.host_id();
    if host_id != peer.name {
        return Response::Forbidden {
            reason: format!(
                "certificate of host {:?} cannot speak for host {host_id:?}",
                peer.name
            ),
        };
    }
    if let Err(reason) = message.check() {
        return Response::Malformed {
            reason: format!("host {host_id}: {reason}"),
        };
    }
    if let HostMessage::WatchLeader { newer_than, .. } = message {
        // Held open by a host while it is registered elsewhere: answered when this node
        // knows a newer leader than the host's, so the host moves when the election ends.
        return Response::Host(node.leader_after(newer_than, connection).await);
    }
    if let HostMessage::WhoLeads { .. } = message {
        // Asked by a host whose leader went silent: what this node knows, at once, whether
        // it leads or follows (no confirmation round: the host registers with the node named
        // and that registration confirms it).
        return Response::Host(node.who_leads());
    }
    let supervision = match node.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    match message {
        HostMessage::Register {
            host_id, inventory, ..
        } => {
            if let Err(response) = record_inventory(node, &host_id, inventory).await {
                return response;
            }
            // Leadership may have changed while the registration went through Raft: attach
            // the host to the tree that is current now, and tell it that tree's term.
            let supervision = match node.leading().await {
                Ok(supervision) => supervision,
                Err(response) => return response,
            };
            info!(host = %host_id, leadership = %supervision.leadership(), "host registered");
            supervision.host_connected(host_id, link(connection));
            Response::Host(HostReply::Registered {
                leadership: supervision.leadership(),
            })
        }
        HostMessage::Heartbeat {
            host_id,
            pools,
            vms,
            vms_known,
            networks,
            ..
        } => {
            let reports = HostReports {
                pools,
                vms,
                vms_known,
                networks,
            };
            let lease = crate::ha::lease(node, &host_id, connection.stable_id());
            supervision.heartbeat(host_id, link(connection), reports);
            Response::Host(lease)
        }
        HostMessage::Capabilities {
            host_id,
            leases,
            migration_uri,
        } => {
            crate::ha::capabilities(node, &host_id, connection.stable_id(), leases);
            crate::moves::capabilities(node, &host_id, migration_uri);
            Response::Host(HostReply::HeartbeatAck)
        }
        HostMessage::InventoryChanged { host_id, inventory } => {
            match record_inventory(node, &host_id, inventory).await {
                Ok(()) => Response::Host(HostReply::HeartbeatAck),
                Err(response) => response,
            }
        }
        HostMessage::WhoLeads { .. } | HostMessage::WatchLeader { .. } => {
            Response::Host(node.who_leads())
        }
    }
}

/// Records the host and its inventory through Raft unless the state machine has it already.
async fn record_inventory(
    node: &Context,
    host_id: &str,
    inventory: Inventory,
) -> Result<(), Response> {
    let known = node
        .desired
        .borrow()
        .hosts
        .get(host_id)
        .is_some_and(|h| h.inventory == inventory);
    if known {
        return Ok(());
    }
    let command = Command::RegisterHost {
        host_id: host_id.to_owned(),
        inventory,
    };
    propose(node, command)
        .await
        .map(drop)
        .map_err(|response| match response {
            Response::Api(Err(e)) => Response::Host(HostReply::Retry { reason: e.message }),
            other => other,
        })
}

/// A host's QUIC connection, as the supervision tree's way to it.
struct QuicLink(quinn::Connection);

impl HostLink for QuicLink {
    fn call(&self, command: HostCommand) -> Call {
        let connection = self.0.clone();
        Box::pin(async move {
            quic::call::<_, CommandResult>(&connection, &command)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

fn link(connection: &quinn::Connection) -> Link {
    Arc::new(QuicLink(connection.clone()))
}
