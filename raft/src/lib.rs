//! qvdc-raft: the replicated desired state. openraft with a redb log and state machine,
//! Raft RPC over the transport, and the model of what should exist (hosts, pools) with its
//! validation. It never talks to hosts.

pub mod model;
pub mod network;
pub mod runtime;
pub mod store;
pub mod types;

use std::{collections::BTreeMap, sync::Arc};

pub use model::{Command, DesiredState, Outcome, ValidationError};
pub use types::{NodeId, Raft, TypeConfig};

/// Raft timing for a LAN: a leader heartbeats every 100 ms; a follower that hears nothing for
/// 400–800 ms (randomised) starts an election. See docs/adr/0003-raft-timing.md.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
pub const ELECTION_TIMEOUT_MS_MIN: u64 = 400;
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 800;

/// The openraft configuration every node runs with.
pub fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "qvdc".into(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS_MIN,
        election_timeout_max: ELECTION_TIMEOUT_MS_MAX,
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
