//! Fencing over the real transport: a stand-in leader (holding a server certificate) sends
//! commands to a running agent. Commands from a term lower than one the host has seen are
//! refused — including one deposed within its term by a node with a higher id — and the
//! highest leadership survives the agent's restart.

use std::{net::SocketAddr, path::Path, time::Duration};

use qvdc_host::{
    agent::AgentConfig, Agent, Fence, FileFence, HostParts, SimHypervisor, SimMounter, SimNetworker,
};
use qvdc_transport::{
    protocol::{
        CommandId, CommandOutput, CommandResult, HostCommand, HostCommandKind, HostError,
        HostErrorKind, HostMessage, HostReply, Inventory, Leadership, PoolSource, PoolSpec,
        Request, Response,
    },
    quic, quinn,
    tls::{self, Identity, Role},
    Endpoint,
};

fn identity(dir: &Path, name: &str) -> Identity {
    Identity::load(
        &dir.join("ca.crt"),
        &dir.join(format!("{name}.crt")),
        &dir.join(format!("{name}.key")),
    )
    .unwrap()
}

/// Accepts one host connection, registers it under `leadership`, acknowledges heartbeats.
async fn stand_in_leader(endpoint: &Endpoint, leadership: Leadership) -> quinn::Connection {
    let connection = endpoint.accept().await.unwrap().await.unwrap();
    let serving = connection.clone();
    tokio::spawn(async move {
        while let Ok((send, mut recv)) = serving.accept_bi().await {
            let reply = match quic::read_request::<Request>(&mut recv).await.unwrap() {
                Request::Host(HostMessage::Register { .. }) => {
                    Response::Host(HostReply::Registered { leadership })
                }
                Request::Host(HostMessage::Heartbeat { .. }) => {
                    Response::Host(HostReply::HeartbeatAck)
                }
                other => panic!("unexpected {other:?}"),
            };
            let _ = quic::respond(send, &reply).await;
        }
    });
    connection
}

fn init_pool(term: u64, node: u64, seq: u64) -> HostCommand {
    let spec = PoolSpec {
        name: "p".into(),
        source: PoolSource::Dir {
            path: "/srv/p".into(),
        },
    };
    let id = CommandId {
        leadership: Leadership { term, node },
        seq,
    };
    HostCommand {
        id,
        kind: HostCommandKind::InitStoragePool(spec),
    }
}

async fn command(
    connection: &quinn::Connection,
    term: u64,
    node: u64,
    seq: u64,
) -> Result<CommandOutput, HostError> {
    let command = init_pool(term, node, seq);
    let result: CommandResult = quic::call(connection, &command).await.unwrap();
    assert_eq!(result.id, command.id);
    result.outcome
}

fn start_agent(dir: &Path, leader: SocketAddr) -> tokio::task::JoinHandle<()> {
    let config = AgentConfig {
        host_id: "host-1".into(),
        cluster: vec![leader],
        pool_root: dir.join("pools"),
        inventory: Inventory {
            hostname: "h".into(),
            cpu_cores: 1,
            memory_bytes: 1 << 30,
            ..Inventory::default()
        },
        rescan_inventory: None,
        heartbeat_interval_ms: 200,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_a_deposed_leader_are_refused_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    tls::init_ca(dir.path()).unwrap();
    tls::issue(dir.path(), Role::Server, "node-1").unwrap();
    tls::issue(dir.path(), Role::Host, "host-1").unwrap();
    let leader = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity(dir.path(), "node-1"),
        true,
    )
    .unwrap();
    let addr = leader.local_addr().unwrap();

    let agent = start_agent(dir.path(), addr);
    let registered = Leadership { term: 5, node: 1 };
    let connection = tokio::time::timeout(
        Duration::from_secs(10),
        stand_in_leader(&leader, registered),
    )
    .await
    .unwrap();
    let refused = command(&connection, 4, 3, 1).await.unwrap_err();
    assert_eq!(refused.kind, HostErrorKind::StaleLeadership);
    assert!(refused.message.contains("deposed leader"), "{refused}");
    command(&connection, 5, 1, 2)
        .await
        .expect("the current leadership is obeyed");
    command(&connection, 5, 2, 3)
        .await
        .expect("node 2 took over within term 5: obeyed");
    let refused = command(&connection, 5, 1, 4).await.unwrap_err();
    assert!(
        refused.message.contains("has seen leadership 5/2"),
        "node 1 was deposed within its term: {refused}"
    );
    command(&connection, 7, 1, 5)
        .await
        .expect("a newer term is obeyed");
    assert!(
        command(&connection, 5, 2, 6).await.is_err(),
        "term 7 is now the floor"
    );
    let fence = || std::fs::read_to_string(dir.path().join("fence")).unwrap();
    assert_eq!(fence().trim(), "7 1");

    agent.abort();
    let _ = agent.await;
    connection.close(0u32.into(), b"restart");
    let _agent = start_agent(dir.path(), addr);
    // A node that believes it still leads term 6 registers the restarted host...
    let connection = tokio::time::timeout(
        Duration::from_secs(10),
        stand_in_leader(&leader, Leadership { term: 6, node: 3 }),
    )
    .await
    .unwrap();
    // ...but the host remembers leadership 7/1: it refuses the registration and hangs up, so the
    // deposed leader cannot deliver a command at all.
    let reason = tokio::time::timeout(Duration::from_secs(10), connection.closed())
        .await
        .unwrap();
    assert!(
        matches!(reason, quinn::ConnectionError::ApplicationClosed(_)),
        "{reason:?}"
    );
    let late = init_pool(6, 3, 1);
    assert!(quic::call::<_, CommandResult>(&connection, &late)
        .await
        .is_err());
    assert_eq!(fence().trim(), "7 1");
}
