//! Fencing over the real transport: a stand-in leader (holding a server certificate) sends
//! commands to a running agent. Commands from a term lower than one the host has seen are
//! refused — including one deposed within its term by a node with a higher id — and the
//! highest leadership survives the agent's restart.

use std::{net::SocketAddr, path::Path, time::Duration};

use qvdc_transport::{
    protocol::{
        CommandId, CommandOutput, CommandResult, HostCommand, HostCommandKind, HostError,
        HostErrorKind, Leadership, PoolSource, PoolSpec,
    },
    quic, quinn, Endpoint,
};

mod support;

use support::{accept_host, certificates, identity, start_sim_agent, HostSession};

fn init_pool() -> HostCommandKind {
    HostCommandKind::InitStoragePool(PoolSpec {
        scope: Default::default(),
        name: "p".into(),
        source: PoolSource::Dir {
            path: "/srv/p".into(),
        },
    })
}

async fn command(
    session: &HostSession,
    term: u64,
    node: u64,
    seq: u64,
) -> Result<CommandOutput, HostError> {
    let leadership = Leadership { term, node };
    session.command_as(leadership, seq, init_pool()).await
}

fn start_agent(dir: &Path, leader: SocketAddr) -> tokio::task::JoinHandle<()> {
    start_sim_agent(dir, leader, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_a_deposed_leader_are_refused_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let leader = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity(dir.path(), "node-1"),
        true,
    )
    .unwrap();
    let addr = leader.local_addr().unwrap();

    let agent = start_agent(dir.path(), addr);
    let registered = Leadership { term: 5, node: 1 };
    let session = tokio::time::timeout(Duration::from_secs(10), accept_host(&leader, registered))
        .await
        .unwrap();
    let refused = command(&session, 4, 3, 1).await.unwrap_err();
    assert_eq!(refused.kind, HostErrorKind::StaleLeadership);
    assert!(refused.message.contains("deposed leader"), "{refused}");
    command(&session, 5, 1, 2)
        .await
        .expect("the current leadership is obeyed");
    command(&session, 5, 2, 3)
        .await
        .expect("node 2 took over within term 5: obeyed");
    let refused = command(&session, 5, 1, 4).await.unwrap_err();
    assert!(
        refused.message.contains("has seen leadership 5/2"),
        "node 1 was deposed within its term: {refused}"
    );
    command(&session, 7, 1, 5)
        .await
        .expect("a newer term is obeyed");
    assert!(
        command(&session, 5, 2, 6).await.is_err(),
        "term 7 is now the floor"
    );
    let fence = || std::fs::read_to_string(dir.path().join("fence")).unwrap();
    assert_eq!(fence().trim(), "7 1");

    agent.abort();
    let _ = agent.await;
    session.connection.close(0u32.into(), b"restart");
    let _agent = start_agent(dir.path(), addr);
    // A node that believes it still leads term 6 registers the restarted host...
    let deposed = Leadership { term: 6, node: 3 };
    let session = tokio::time::timeout(Duration::from_secs(10), accept_host(&leader, deposed))
        .await
        .unwrap();
    // ...but the host remembers leadership 7/1: it refuses the registration and hangs up, so the
    // deposed leader cannot deliver a command at all.
    let reason = tokio::time::timeout(Duration::from_secs(10), session.connection.closed())
        .await
        .unwrap();
    assert!(
        matches!(reason, quinn::ConnectionError::ApplicationClosed(_)),
        "{reason:?}"
    );
    let late = HostCommand {
        id: CommandId {
            leadership: deposed,
            seq: 1,
        },
        kind: init_pool(),
    };
    assert!(quic::call::<_, CommandResult>(&session.connection, &late)
        .await
        .is_err());
    assert_eq!(fence().trim(), "7 1");
}
