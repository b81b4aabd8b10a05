//! Growing, shrinking and repairing the control plane with real processes: two nodes join a
//! running cluster (one catches up from a snapshot because the log behind it is purged), the
//! five-voter cluster survives losing two nodes, the dead ones are removed, and a third dead
//! node is replaced by a fresh one.

mod support;

use std::time::{Duration, Instant};

use qvdc_cluster::{Client, ClientError};
use qvdc_transport::{
    protocol::{
        ApiErrorKind, ApiRequest, ApiResponse, ClusterStatus, Health, PoolSource, PoolSpec,
        Request, Response,
    },
    quic,
    tls::Role,
};
use support::Nodes;

const OPERATOR: &str = "admin";
const HOST: &str = "host-1";

fn client(nodes: &Nodes, ids: &[usize]) -> Client {
    nodes.client(OPERATOR, ids, Duration::from_secs(20))
}

async fn create_pool(client: &mut Client, name: &str) {
    let request = ApiRequest::PoolCreate {
        request_id: client.new_request_id(),
        spec: PoolSpec {
            scope: Default::default(),
            name: name.into(),
            source: PoolSource::Dir {
                path: format!("/srv/{name}"),
            },
        },
        hosts: vec![HOST.into()],
    };
    match client.request(request).await {
        Ok(ApiResponse::PoolCreated { .. }) => {}
        other => panic!("creating pool {name}: {other:?}"),
    }
}

async fn status_of(nodes: &Nodes, id: usize) -> Option<ClusterStatus> {
    support::status_of(client(nodes, &[id]), id).await
}

async fn change(client: &mut Client, request: ApiRequest) -> ClusterStatus {
    match client.request(request.clone()).await {
        Ok(ApiResponse::ClusterStatus(s)) => s,
        other => panic!("{request:?} answered {other:?}"),
    }
}

fn voters(s: &ClusterStatus) -> Vec<u64> {
    s.members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect()
}

async fn converged(nodes: &Nodes, ids: &[usize]) -> ClusterStatus {
    support::converged(ids, |id| client(nodes, &[id]), Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_leave_and_are_replaced() {
    // Snapshot every 20 entries and keep 5 behind it: a node that joins after 60 writes
    // cannot get them from the log and must install a snapshot.
    let mut nodes = Nodes::start_with_args(
        &[(Role::Operator, OPERATOR), (Role::Host, HOST)],
        true,
        &[
            "--snapshot-after-logs",
            "20",
            "--logs-kept-after-snapshot",
            "5",
        ],
    );
    nodes.register_host(HOST).await;
    let mut admin = client(&nodes, &[1, 2, 3]);
    for i in 0..60 {
        create_pool(&mut admin, &format!("before-{i}")).await;
    }

    // Bad requests name the problem.
    match admin
        .request(ApiRequest::ClusterAddNode {
            node_id: 4,
            addr: "somewhere".into(),
        })
        .await
    {
        Err(ClientError::Rejected(e)) => {
            assert_eq!(e.kind, ApiErrorKind::Invalid);
            assert!(e.message.contains("IP:PORT"), "{}", e.message);
        }
        other => panic!("a bad address was accepted: {other:?}"),
    }
    match admin
        .request(ApiRequest::ClusterRemoveNode { node_id: 9 })
        .await
    {
        Err(ClientError::Rejected(e)) => assert_eq!(e.kind, ApiErrorKind::NotFound),
        other => panic!("removing a stranger: {other:?}"),
    }

    // Grow to five voters.
    for id in [4, 5] {
        let addr = nodes.start_joining(id);
        let started = Instant::now();
        let status = change(
            &mut admin,
            ApiRequest::ClusterAddNode {
                node_id: id as u64,
                addr,
            },
        )
        .await;
        eprintln!("node {id} added in {:?}", started.elapsed());
        assert!(voters(&status).contains(&(id as u64)), "{status:#?}");
    }
    let five = converged(&nodes, &[1, 2, 3, 4, 5]).await;
    assert_eq!(voters(&five), vec![1, 2, 3, 4, 5]);
    let joined = status_of(&nodes, 5).await.unwrap();
    assert!(
        joined.snapshot_index.is_some_and(|i| i >= 20),
        "node 5 joined after the log was purged, so it holds a snapshot: {joined:#?}"
    );
    // Adding again is a no-op that answers with the same membership.
    let again = change(
        &mut admin,
        ApiRequest::ClusterAddNode {
            node_id: 5,
            addr: nodes.addrs[4].clone(),
        },
    )
    .await;
    assert_eq!(voters(&again), vec![1, 2, 3, 4, 5]);

    // Five voters survive two dead nodes, the leader among them.
    let leader = five.leader.expect("a leader") as usize;
    let other = [1, 2, 3, 4, 5]
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    nodes.kill(leader);
    nodes.kill(other);
    let live: Vec<usize> = (1..=5).filter(|id| ![leader, other].contains(id)).collect();
    let mut survivor = client(&nodes, &live);
    create_pool(&mut survivor, "with-two-dead").await;

    // Remove the dead: back to three voters, which still commit.
    for dead in [leader, other] {
        change(
            &mut survivor,
            ApiRequest::ClusterRemoveNode {
                node_id: dead as u64,
            },
        )
        .await;
    }
    let three = converged(&nodes, &live).await;
    assert_eq!(
        voters(&three),
        live.iter().map(|id| *id as u64).collect::<Vec<_>>()
    );
    // A retried removal (its answer lost, say) finds it done, not "no such node".
    change(
        &mut survivor,
        ApiRequest::ClusterRemoveNode {
            node_id: leader as u64,
        },
    )
    .await;
    create_pool(&mut survivor, "after-removal").await;

    // The removed nodes' certificates may no longer take part in Raft or pass requests on.
    let removed = format!("node-{leader}");
    let connection = nodes
        .endpoint(&removed)
        .connect(nodes.addrs[live[0] - 1].parse().unwrap())
        .await
        .unwrap();
    for request in [
        Request::Raft(vec![0]),
        Request::Forwarded(ApiRequest::PoolList),
        Request::ForwardedFor {
            operator: OPERATOR.into(),
            serial: "01".into(),
            request: ApiRequest::PoolList,
        },
    ] {
        match quic::call::<_, Response>(&connection, &request)
            .await
            .unwrap()
        {
            Response::Forbidden { reason } => {
                assert!(
                    reason.contains("which was removed from this cluster"),
                    "{reason}"
                )
            }
            other => panic!("a removed node's {request:?} got {other:?}"),
        }
    }

    // Replace one more dead node with a fresh one (new id, empty data dir).
    let victim = live[0];
    nodes.kill(victim);
    let addr = nodes.start_joining(6);
    change(
        &mut survivor,
        ApiRequest::ClusterAddNode { node_id: 6, addr },
    )
    .await;
    change(
        &mut survivor,
        ApiRequest::ClusterRemoveNode {
            node_id: victim as u64,
        },
    )
    .await;
    let mut now_live: Vec<usize> = live.iter().copied().filter(|id| *id != victim).collect();
    now_live.push(6);
    let mut latest = client(&nodes, &now_live);
    create_pool(&mut latest, "after-replacement").await;
    let replaced = converged(&nodes, &now_live).await;
    let expected: Vec<u64> = now_live.iter().map(|id| *id as u64).collect();
    assert_eq!(voters(&replaced), expected);
    match latest.request(ApiRequest::PoolList).await {
        Ok(ApiResponse::Pools(pools)) => {
            assert_eq!(pools.len(), 63, "60 + 3 pools, each once");
        }
        other => panic!("pool list: {other:?}"),
    }

    // With two of three voters gone there is no leader: a linearizable read cannot be
    // answered, a stale one is, from the survivor's own state.
    let lone = now_live[0];
    for dead in &now_live[1..] {
        nodes.kill(*dead);
    }
    // Past the leader's lease (150 ms): a leader may serve reads within it without asking.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let mut impatient = nodes.client(OPERATOR, &[lone], Duration::from_secs(3));
    match impatient.request(ApiRequest::PoolList).await {
        Err(ClientError::Timeout { .. } | ClientError::Unreachable { .. }) => {}
        Ok(answer) => {
            panic!("a node without a quorum answered a linearizable read: {answer:.200?}")
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    let stale = ApiRequest::Stale(Box::new(ApiRequest::PoolShow {
        name: "after-replacement".into(),
    }));
    match impatient.request(stale).await {
        Ok(ApiResponse::Pool(view)) => {
            assert_eq!(view.spec.name, "after-replacement");
            assert_eq!(view.health, Health::Unknown, "no reports without a leader");
        }
        other => panic!("stale read from node {lone}: {other:?}"),
    }
    let stale_write = ApiRequest::Stale(Box::new(ApiRequest::PoolDelete {
        request_id: "x".into(),
        pool: "after-replacement".into(),
    }));
    match impatient.request(stale_write).await {
        Err(ClientError::Rejected(e)) => assert!(e.message.contains("--stale"), "{}", e.message),
        other => panic!("a stale write was not refused: {other:?}"),
    }
}
