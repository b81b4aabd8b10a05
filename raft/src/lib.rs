//! qvdc-raft: the replicated desired state. openraft with a redb log and state machine,
//! Raft RPC over the transport, and the model of what should exist (hosts, pools) with its
//! validation. It never talks to hosts.

pub mod backup;
pub mod election;
pub mod logfile;
pub mod model;
pub mod network;
pub mod runtime;
pub mod store;
pub mod types;

use std::{collections::BTreeMap, sync::Arc};

pub use model::{Command, DesiredState, Outcome, ValidationError};
pub use types::{NodeId, Raft, TypeConfig};

/// Raft timing for a LAN: a leader heartbeats every 50 ms. A voter refuses candidates for
/// `ELECTION_TIMEOUT_MS_MAX` after its leader's last message (openraft's lease); qvdc's
/// election timer (`election`) asks for a pre-vote once that lease, a 10 ms margin and a
/// jitter of up to 80 ms have passed: 410–490 ms after a leader's last message, checked
/// every 10 ms. After an election that went nowhere a node tries again after an election
/// timeout (`MIN..MAX`). See docs/adr/0003-raft-storage-and-timing.md and
/// docs/adr/0012-pre-vote.md.
pub const HEARTBEAT_INTERVAL_MS: u64 = 50;
pub const ELECTION_TIMEOUT_MS_MIN: u64 = 200;
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 400;

/// How long a leader waits for a follower's answer to a replication message (openraft
/// would wait one heartbeat interval). A follower's fsync, or the leader's own runtime on
/// a busy machine, can take longer than 50 ms now and then; counting that as a failure cost
/// a re-dial and a pause in replication, and with both followers at once, a commit stall.
/// It stays below the 410 ms after which a follower that heard nothing asks to stand for
/// election, since the next heartbeat to that follower waits behind the message.
pub const APPEND_TIMEOUT_MS: u64 = 250;

/// Most log entries openraft puts in one replication message. An entry carries up to
/// 256 batched commands, so this keeps a message to a few MiB.
pub const ENTRIES_PER_APPEND_MAX: u64 = 64;

/// When a node snapshots its state machine and how much log it keeps behind a snapshot.
/// A follower that falls further behind than the kept log catches up by snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRetention {
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log behind the latest snapshot, for followers that lag a little.
    pub logs_kept_after_snapshot: u64,
}

impl Default for LogRetention {
    fn default() -> Self {
        Self {
            snapshot_after_logs: 5_000,
            logs_kept_after_snapshot: 1_000,
        }
    }
}

/// The name a node's server certificate carries: a server certificate speaks for the node
/// of that id, and only while that node is a member.
pub fn server_cert_name(node_id: NodeId) -> String {
    format!("node-{node_id}")
}

/// The node a server certificate's name speaks for, if it is of the form `node-ID`.
pub fn node_of_server_cert(name: &str) -> Option<NodeId> {
    let id = name.strip_prefix("node-")?;
    // Exactly the digits `server_cert_name` writes: no sign, no leading zeros.
    if id.starts_with('0') || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// The openraft configuration every node runs with.
pub fn raft_config(retention: LogRetention) -> Arc<openraft::Config> {
    assert!(
        retention.snapshot_after_logs > 0,
        "snapshots need a positive threshold"
    );
    let config = openraft::Config {
        cluster_name: "qvdc".into(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS_MIN,
        election_timeout_max: ELECTION_TIMEOUT_MS_MAX,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(retention.snapshot_after_logs),
        max_in_snapshot_log_to_keep: retention.logs_kept_after_snapshot,
        max_payload_entries: ENTRIES_PER_APPEND_MAX,
        // Elections start from qvdc's own timer, which asks for a pre-vote first (election.rs).
        enable_elect: false,
        ..Default::default()
    };
    Arc::new(
        config
            .validate()
            .expect("the built-in Raft configuration is valid"),
    )
}

/// The members of a new cluster, by node id.
pub fn initial_members(peers: &BTreeMap<NodeId, String>) -> BTreeMap<NodeId, openraft::BasicNode> {
    peers
        .iter()
        .map(|(id, addr)| (*id, openraft::BasicNode::new(addr)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_certificate_names_map_to_node_ids_one_to_one() {
        for id in [1, 7, 10, u64::MAX] {
            assert_eq!(node_of_server_cert(&server_cert_name(id)), Some(id));
        }
        for name in [
            "node-",
            "node-01",
            "node-+1",
            "node-1x",
            "node--1",
            "Node-1",
            "1",
            "node-99999999999999999999",
        ] {
            assert_eq!(node_of_server_cert(name), None, "{name}");
        }
    }
}
