//! Fencing over the real transport: a stand-in leader (holding a server certificate) sends
//! commands to a running agent. Commands from a term lower than one the host has seen are
//! refused, and the highest term survives the agent's restart.

use std::{net::SocketAddr, path::Path, time::Duration};

use qvdc_host::{agent::AgentConfig, Agent, Fence, FileFence, SimMounter};
use qvdc_transport::{
    protocol::{
        CommandId, CommandResult, HostCommand, HostCommandKind, HostMessage, HostReply, Inventory,
        PoolSource, PoolSpec, Request, Response,
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

/// Accepts one host connection, registers it as leader of `term`, acknowledges heartbeats.
async fn stand_in_leader(endpoint: &Endpoint, term: u64) -> quinn::Connection {
    let connection = endpoint.accept().await.unwrap().await.unwrap();
    let serving = connection.clone();
    tokio::spawn(async move {
        while let Ok((send, mut recv)) = serving.accept_bi().await {
            let reply = match quic::read_request::<Request>(&mut recv).await.unwrap() {
                Request::Host(HostMessage::Register { .. }) => {
                    Response::Host(HostReply::Registered { term })
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

async fn command(connection: &quinn::Connection, term: u64, seq: u64) -> Result<(), String> {
    let spec = PoolSpec {
        name: "p".into(),
        source: PoolSource::Dir {
            path: "/srv/p".into(),
        },
    };
    let command = HostCommand {
        id: CommandId { term, seq },
        kind: HostCommandKind::InitStoragePool(spec),
    };
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
        },
        heartbeat_interval_ms: 200,
    };
    let endpoint = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity(dir, "host-1"),
        false,
    )
    .unwrap();
    let fence = Fence::open(Box::new(FileFence::new(dir.join("fence-term")))).unwrap();
    tokio::spawn(Agent::new(config, endpoint, SimMounter::new(1 << 30), fence).run())
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
    let connection = tokio::time::timeout(Duration::from_secs(10), stand_in_leader(&leader, 5))
        .await
        .unwrap();
    let refused = command(&connection, 4, 1).await.unwrap_err();
    assert!(refused.contains("deposed leader"), "{refused}");
    command(&connection, 5, 2)
        .await
        .expect("the current term is obeyed");
    command(&connection, 7, 3)
        .await
        .expect("a newer leader is obeyed");
    assert!(
        command(&connection, 5, 4).await.is_err(),
        "term 7 is now the floor"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("fence-term"))
            .unwrap()
            .trim(),
        "7"
    );

    agent.abort();
    let _ = agent.await;
    connection.close(0u32.into(), b"restart");
    let _agent = start_agent(dir.path(), addr);
    // A node that believes it still leads term 6 registers the restarted host...
    let connection = tokio::time::timeout(Duration::from_secs(10), stand_in_leader(&leader, 6))
        .await
        .unwrap();
    // ...but the host remembers term 7: it refuses the registration and hangs up, so the
    // deposed leader cannot deliver a command at all.
    let reason = tokio::time::timeout(Duration::from_secs(10), connection.closed())
        .await
        .unwrap();
    assert!(
        matches!(reason, quinn::ConnectionError::ApplicationClosed(_)),
        "{reason:?}"
    );
    let spec = PoolSpec {
        name: "p".into(),
        source: PoolSource::Dir {
            path: "/srv/p".into(),
        },
    };
    let late = HostCommand {
        id: CommandId { term: 6, seq: 1 },
        kind: HostCommandKind::InitStoragePool(spec),
    };
    assert!(quic::call::<_, CommandResult>(&connection, &late)
        .await
        .is_err());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("fence-term"))
            .unwrap()
            .trim(),
        "7"
    );
}
