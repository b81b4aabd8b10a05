//! A leader's own disk and replication overlap, and a leader counts itself among the nodes
//! holding an entry only once its disk has it (ADR 31).
//!
//! Real openraft nodes with the real redb log and state machine (in memory, with the
//! simulation's disk latency to make one disk slow), joined by an in-process network.
//! With `--features deliberate-bugs`, `flush-reported-early` (the log reports entries as
//! flushed when queued) is shown to be caught.

// The error types are the ones openraft's `RaftNetwork` returns.
#![allow(clippy::result_large_err)]

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use openraft::{
    error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError},
    network::{RPCOption, RaftNetwork, RaftNetworkFactory},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
    BasicNode,
};
use qvdc_raft::{
    store::{self, DiskLatency, LogStore, StateMachine},
    Command, LogRetention, NodeId, Raft, TypeConfig,
};
use qvdc_transport::protocol::Inventory;
use tokio::time::Instant;

/// The nodes of one test, by id: the network reaches them through here.
type Nodes = Arc<Mutex<BTreeMap<NodeId, Raft>>>;

#[derive(Clone)]
struct Net(Nodes);

struct Client {
    nodes: Nodes,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, _: &BasicNode) -> Client {
        Client {
            nodes: self.0.clone(),
            target,
        }
    }
}

impl Client {
    fn node<E: std::error::Error>(&self) -> Result<Raft, RPCError<NodeId, BasicNode, E>> {
        let nodes = self.nodes.lock().unwrap();
        nodes.get(&self.target).cloned().ok_or_else(|| {
            let gone = std::io::Error::other(format!("node {} is gone", self.target));
            RPCError::Network(NetworkError::new(&gone))
        })
    }
}

fn remote<T, E: std::error::Error>(
    target: NodeId,
    result: Result<T, RaftError<NodeId, E>>,
) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
    result.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        remote(self.target, self.node()?.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        remote(self.target, self.node()?.install_snapshot(rpc).await)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        remote(self.target, self.node()?.vote(rpc).await)
    }
}

/// Starts `voters` nodes, node 1 the leader, and returns them with each one's disk latency.
async fn cluster(voters: u64) -> (BTreeMap<NodeId, Raft>, BTreeMap<NodeId, DiskLatency>) {
    let nodes: Nodes = Arc::default();
    let mut disks = BTreeMap::new();
    let mut members = BTreeMap::new();
    for id in 1..=voters {
        let db = store::open_in_memory().unwrap();
        let latency = DiskLatency::default();
        let log = LogStore::new(db.clone(), latency.clone(), id).unwrap();
        let (machine, _) = StateMachine::open(db, id).unwrap();
        let config = qvdc_raft::raft_config(LogRetention::default());
        let raft = Raft::new(id, config, Net(nodes.clone()), log, machine)
            .await
            .unwrap();
        nodes.lock().unwrap().insert(id, raft);
        disks.insert(id, latency);
        members.insert(id, BasicNode::new(format!("node-{id}")));
    }
    let nodes = nodes.lock().unwrap().clone();
    nodes[&1].initialize(members).await.unwrap();
    nodes[&1].trigger().elect().await.unwrap();
    nodes[&1]
        .wait(Some(Duration::from_secs(5)))
        .current_leader(1, "node 1 leads")
        .await
        .unwrap();
    // The leader's first entry (its blank one) committed everywhere before the test begins.
    let first = nodes[&1].metrics().borrow().last_log_index;
    for raft in nodes.values() {
        raft.wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(first, "blank entry applied")
            .await
            .unwrap();
    }
    (nodes, disks)
}

fn register(host: &str) -> Command {
    Command::RegisterHost {
        host_id: host.into(),
        inventory: Inventory {
            hostname: host.into(),
            cpu_cores: 1,
            memory_bytes: 1,
            ..Inventory::default()
        },
    }
}

const SLOW_DISK: Duration = Duration::from_millis(300);

/// How long one write takes to commit and apply on node 1 (the leader) with its disk slow.
async fn write_with_a_slow_leader_disk(voters: u64) -> Duration {
    let (nodes, disks) = cluster(voters).await;
    disks[&1].set(SLOW_DISK);
    let started = Instant::now();
    nodes[&1].client_write(register("host-a")).await.unwrap();
    started.elapsed()
}

/// With one voter, the leader's disk is the only quorum: the write cannot be acknowledged
/// before the leader's disk has it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lone_leader_acknowledges_only_what_its_disk_holds() {
    let took = write_with_a_slow_leader_disk(1).await;
    assert!(
        took >= SLOW_DISK,
        "acknowledged {took:?} after the write, before its disk had it"
    );
}

/// With three voters, the two followers' disks commit the entry while the leader's own
/// slow disk is still writing it: the leader sent the entry before its flush ended.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn followers_commit_while_the_leader_s_disk_is_slow() {
    let took = write_with_a_slow_leader_disk(3).await;
    assert!(
        took < SLOW_DISK / 2,
        "the write took {took:?}: it waited for the leader's slow disk before replicating"
    );
}

/// The check above bites: with the log reporting entries flushed when they are only
/// queued, a lone leader acknowledges before its disk holds the write.
#[cfg(feature = "deliberate-bugs")]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_flush_reported_early_is_caught() {
    use qvdc_transport::bugs::{inject, Bug};
    inject(&[Bug::FlushReportedEarly]);
    let took = write_with_a_slow_leader_disk(1).await;
    inject(&[]);
    assert!(
        took < SLOW_DISK,
        "with the bug the write was acknowledged after {took:?}: the check would not catch it"
    );
}
