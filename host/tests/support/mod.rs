//! A stand-in leader for host-agent tests: it holds a server certificate, accepts one host
//! connection, registers the host under a chosen leadership, records every message the host
//! sends, and sends it commands.

#![allow(dead_code, unreachable_pub)] // each test binary uses part of it

use std::{net::SocketAddr, path::Path};

use qvdc_host::{
    agent::{AgentConfig, InventoryRescan},
    Agent, Fence, FileFence, HostParts, SimHypervisor, SimMounter, SimNetworker,
};
use qvdc_transport::{
    protocol::{
        CommandId, CommandOutput, CommandResult, HostCommand, HostCommandKind, HostError,
        HostMessage, HostReply, Inventory, Leadership, Request, Response,
    },
    quic, quinn,
    tls::{self, Identity, Role},
    Endpoint,
};
use tokio::sync::mpsc;

pub fn identity(dir: &Path, name: &str) -> Identity {
    Identity::load(
        &dir.join("ca.crt"),
        &dir.join(format!("{name}.crt")),
        &dir.join(format!("{name}.key")),
    )
    .unwrap()
}

/// A CA, server certificates `node-1` and `node-2` and a host certificate `host-1` in `dir`.
pub fn certificates(dir: &Path) {
    tls::init_ca(dir).unwrap();
    tls::issue(dir, Role::Server, "node-1").unwrap();
    tls::issue(dir, Role::Server, "node-2").unwrap();
    tls::issue(dir, Role::Host, "host-1").unwrap();
}

/// The inventory a simulated test host starts with.
pub fn small_inventory() -> Inventory {
    Inventory {
        hostname: "h".into(),
        cpu_cores: 1,
        memory_bytes: 1 << 30,
        ..Inventory::default()
    }
}

/// An agent `host-1` in this process with simulated mounts, domains and bridges, its fence
/// in `dir`, dialing `leader`.
pub fn start_sim_agent(
    dir: &Path,
    leader: SocketAddr,
    rescan_inventory: Option<InventoryRescan>,
) -> tokio::task::JoinHandle<()> {
    start_sim_agent_in(dir, vec![leader], rescan_inventory)
}

/// `start_sim_agent` with a control plane of several nodes, dialed in the order given.
pub fn start_sim_agent_in(
    dir: &Path,
    cluster: Vec<SocketAddr>,
    rescan_inventory: Option<InventoryRescan>,
) -> tokio::task::JoinHandle<()> {
    let config = AgentConfig {
        host_id: "host-1".into(),
        cluster,
        pool_root: dir.join("pools"),
        pool_sources: qvdc_host::source_policy::SourcePolicy::new(Vec::new(), Some(dir.into())),
        inventory: small_inventory(),
        rescan_inventory,
        heartbeat_interval_ms: 200,
        migration_uri: None,
        metrics: Default::default(),
        leader_watch: true,
    };
    let endpoint = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity(dir, "host-1"),
        false,
    )
    .unwrap();
    let fence = Fence::open(Box::new(FileFence::new(dir.join("fence")))).unwrap();
    let parts = HostParts {
        mounter: SimMounter::new(1 << 30),
        hypervisor: SimHypervisor::new(),
        networker: SimNetworker::new(),
    };
    tokio::spawn(Agent::new(config, endpoint, parts, fence).run())
}

/// The leader's end of one host's connection.
pub struct HostSession {
    pub connection: quinn::Connection,
    /// Everything the host sent, in order (registration, heartbeats, inventory changes).
    pub messages: mpsc::UnboundedReceiver<HostMessage>,
    pub leadership: Leadership,
    next_seq: u64,
}

/// Accepts one host connection on `endpoint` and registers it under `leadership`.
pub async fn accept_host(endpoint: &Endpoint, leadership: Leadership) -> HostSession {
    let connection = endpoint.accept().await.unwrap().await.unwrap();
    let serving = connection.clone();
    let (record, messages) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((send, mut recv)) = serving.accept_bi().await {
            let Request::Host(message) = quic::read_request::<Request>(&mut recv).await.unwrap()
            else {
                panic!("a host sent a non-host request");
            };
            let reply = match &message {
                HostMessage::Register { .. } => HostReply::Registered { leadership },
                HostMessage::Heartbeat { .. }
                | HostMessage::InventoryChanged { .. }
                | HostMessage::Capabilities { .. } => HostReply::HeartbeatAck,
                HostMessage::WhoLeads { .. } | HostMessage::WatchLeader { .. } => {
                    HostReply::Leader {
                        leadership: Some(leadership),
                        addr: None,
                    }
                }
            };
            let _ = record.send(message);
            let _ = quic::respond(send, &Response::Host(reply)).await;
        }
    });
    HostSession {
        connection,
        messages,
        leadership,
        next_seq: 1,
    }
}

impl HostSession {
    /// Sends `kind` under `leadership` and returns the host's answer.
    pub async fn command_as(
        &self,
        leadership: Leadership,
        seq: u64,
        kind: HostCommandKind,
    ) -> Result<CommandOutput, HostError> {
        let command = HostCommand {
            id: CommandId { leadership, seq },
            kind,
        };
        let result: CommandResult = quic::call(&self.connection, &command).await.unwrap();
        assert_eq!(result.id, command.id);
        result.outcome
    }

    /// Sends `kind` under the session's leadership.
    pub async fn command(&mut self, kind: HostCommandKind) -> Result<CommandOutput, HostError> {
        self.next_seq += 1;
        self.command_as(self.leadership, self.next_seq, kind).await
    }

    /// Waits for the first heartbeat for which `check` returns `Some`.
    pub async fn heartbeat_where<T>(
        &mut self,
        mut check: impl FnMut(&HostMessage) -> Option<T>,
    ) -> T {
        loop {
            let message = self.messages.recv().await.expect("the host hung up");
            if matches!(message, HostMessage::Heartbeat { .. }) {
                if let Some(found) = check(&message) {
                    return found;
                }
            }
        }
    }
}
