//! The messages qvdc peers exchange. Enum variants are only ever appended: a frame's
//! protocol version (see `codec`) changes when that rule has to be broken.
//!
//! These are plain data shared by every crate; the rules about them (validation,
//! aggregation, reconciliation) live in the crates that own those decisions.

use serde::{Deserialize, Serialize};

/// Bumped only for incompatible changes; the codec rejects frames of other versions.
pub const PROTOCOL_VERSION: u16 = 1;
/// TLS application protocol name; a peer that does not offer it fails the handshake.
pub const ALPN: &[u8] = b"qvdc/1";

/// What a peer asks of a control-plane node. Each request travels on its own QUIC stream and
/// gets exactly one [`Response`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A Raft RPC between control-plane nodes; the payload is opaque to the transport.
    Raft(Vec<u8>),
    /// An operator's request.
    Api(ApiRequest),
    /// A host agent's message.
    Host(HostMessage),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Raft(Vec<u8>),
    Api(Result<ApiResponse, ApiError>),
    Host(HostReply),
    /// This node is not the leader; `leader` is where to go instead, if known.
    NotLeader {
        leader: Option<LeaderHint>,
    },
    /// The peer's certificate does not allow this request.
    Forbidden {
        reason: String,
    },
    /// The request could not be read (too large, another protocol version, malformed).
    Malformed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    pub node_id: u64,
    pub addr: String,
}

// ---------------------------------------------------------------------------------------
// Storage pools

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolSource {
    /// A directory on each host, bind-mounted under the host's pool root.
    Dir { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub name: String,
    pub source: PoolSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    Healthy,
    Degraded,
    Error,
    /// No fresh report: never counted as healthy.
    Unknown,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Healthy => "HEALTHY",
            Health::Degraded => "DEGRADED",
            Health::Error => "ERROR",
            Health::Unknown => "UNKNOWN",
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
}

/// What a host says about one pool on each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolReport {
    pub pool: String,
    pub mounted: bool,
    pub mount_path: String,
    pub capacity: Capacity,
    pub volume_count: u64,
    pub health: Health,
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Host agent <-> control plane

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostMessage {
    /// First message on a connection. The host id must equal the certificate's name.
    Register {
        host_id: String,
        inventory: Inventory,
    },
    Heartbeat {
        host_id: String,
        seq: u64,
        pools: Vec<PoolReport>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostReply {
    Registered {
        leadership: Leadership,
    },
    HeartbeatAck,
    /// The registration could not be recorded; the host retries.
    Retry {
        reason: String,
    },
}

/// One Raft leadership: its term and the leader's node id, ordered by term, then node. This
/// is the fencing token. openraft lets a node with a higher id take over within a term (it
/// breaks split votes that way), so the term alone does not tell leaderships apart.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Leadership {
    pub term: u64,
    pub node: u64,
}

impl std::fmt::Display for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.term, self.node)
    }
}

/// Identifies one command: the leadership that issued it and a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId {
    pub leadership: Leadership,
    pub seq: u64,
}

impl std::fmt::Display for CommandId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.leadership, self.seq)
    }
}

/// A command the leader pushes to a host on a stream the leader opens. Every command is
/// idempotent: executing it twice leaves the host as executing it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostCommand {
    pub id: CommandId,
    pub kind: HostCommandKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostCommandKind {
    InitStoragePool(PoolSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: CommandId,
    pub outcome: Result<(), String>,
}

// ---------------------------------------------------------------------------------------
// Operator API

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApiRequest {
    ClusterStatus,
    HostList,
    /// `request_id` makes the request safe to retry: the same id always gets the first
    /// answer and is applied at most once.
    PoolCreate {
        request_id: String,
        spec: PoolSpec,
        hosts: Vec<String>,
    },
    PoolShow {
        name: String,
    },
    PoolList,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApiResponse {
    ClusterStatus(ClusterStatus),
    Hosts(Vec<HostView>),
    PoolCreated { name: String },
    Pool(PoolView),
    Pools(Vec<PoolView>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiErrorKind {
    /// The request is invalid; nothing was changed.
    Invalid,
    NotFound,
    AlreadyExists,
    /// No leader is known right now; retry shortly.
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: u64,
    pub addr: String,
    pub voter: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// Last log index covered by this node's latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Entries up to this index are gone from this node's log (they live in the snapshot).
    pub purged_index: Option<u64>,
    /// Fingerprint of this node's applied desired state; equal on nodes at the same index.
    pub state_digest: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// Heartbeating to the current leader.
    Ready,
    /// Missed heartbeats, or not connected to the current leader yet.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub host_id: String,
    pub inventory: Inventory,
    pub liveness: Liveness,
}

/// One host's part of a pool, as the leader last heard it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolHostView {
    pub host_id: String,
    pub health: Health,
    pub mounted: bool,
    pub capacity: Capacity,
    pub volume_count: u64,
    pub error: Option<String>,
}

/// A pool as the operator sees it: its definition and the aggregate of host reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub spec: PoolSpec,
    pub health: Health,
    /// As seen by the healthy host with the least space available (not a sum: hosts
    /// share the storage).
    pub capacity: Capacity,
    pub healthy_hosts: Vec<String>,
    pub failed_hosts: Vec<String>,
    pub hosts: Vec<PoolHostView>,
}
