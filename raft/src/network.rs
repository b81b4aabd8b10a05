//! Raft RPC over the transport: openraft's messages travel as opaque payloads of
//! `Request::Raft`, encoded with the transport's codec, on QUIC connections cached per peer.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use openraft::{
    error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable},
    network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
    BasicNode,
};
use qvdc_transport::{
    codec::{self, CodecError},
    protocol::{Request, Response},
    quic, Endpoint, TransportError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{
    election::{self, PreVoteRequest, PreVoteResponse},
    store::LogStore,
    types::{NodeId, Raft, TypeConfig},
};

/// A Raft RPC as it travels between nodes, inside a `Request::Raft` frame.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    PreVote(PreVoteRequest),
    /// "Stand for election now": a leader stopping on purpose hands over to a caught-up
    /// voter instead of leaving the others to wait out an election timeout.
    ElectNow,
    /// "Which release level do you run?" (`model::CLUSTER_LEVEL`): a leader raises the
    /// cluster's level once every member answers with at least that level.
    Level,
}

/// The answer to a [`RaftRpc`], inside a `Response::Raft` frame.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    PreVote(PreVoteResponse),
    /// Whether the election was started.
    ElectNow(bool),
    Level(u32),
}

/// Answers one Raft RPC received from a peer; the caller has checked that the peer is a server.
/// `log` is this node's log, which a pre-vote's answer compares with the candidate's;
/// `pre_votes` records the yes it gives, for this node's own election timer.
pub async fn handle_rpc(
    raft: &Raft,
    log: &LogStore,
    pre_votes: &election::PreVotes,
    payload: &[u8],
) -> Result<Vec<u8>, CodecError> {
    let reply = match codec::from_bytes(payload)? {
        RaftRpc::AppendEntries(rpc) => RaftReply::AppendEntries(raft.append_entries(rpc).await),
        RaftRpc::Vote(rpc) => RaftReply::Vote(raft.vote(rpc).await),
        RaftRpc::InstallSnapshot(rpc) => {
            RaftReply::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
        RaftRpc::PreVote(rpc) => {
            RaftReply::PreVote(election::answer(raft, log, pre_votes, &rpc).await)
        }
        RaftRpc::ElectNow => RaftReply::ElectNow(raft.trigger().elect().await.is_ok()),
        RaftRpc::Level => RaftReply::Level(crate::model::CLUSTER_LEVEL),
    };
    codec::to_bytes(&reply)
}

/// Decodes a payload as [`handle_rpc`] would, without answering it: for fuzzing and tests.
pub fn decode_rpc(payload: &[u8]) -> Result<(), CodecError> {
    codec::from_bytes::<RaftRpc>(payload).map(drop)
}

/// Decodes a peer's answer to an RPC as the node that sent the RPC would: for fuzzing and
/// tests.
pub fn decode_reply(payload: &[u8]) -> Result<(), CodecError> {
    codec::from_bytes::<RaftReply>(payload).map(drop)
}

/// Asks the node at `addr` for a pre-vote, waiting up to `ttl` for its answer.
pub async fn pre_vote(
    peers: &Peers,
    addr: SocketAddr,
    request: PreVoteRequest,
    ttl: Duration,
) -> Result<PreVoteResponse, PeerError> {
    match exchange(peers, addr, &RaftRpc::PreVote(request), ttl).await? {
        RaftReply::PreVote(response) => Ok(response),
        other => Err(PeerError::Protocol(format!("{other:?}"))),
    }
}

/// The release level of the node at `addr`. A node of the first release cannot decode the
/// question: that error means level 0.
pub async fn level(peers: &Peers, addr: SocketAddr, ttl: Duration) -> Result<u32, PeerError> {
    match exchange(peers, addr, &RaftRpc::Level, ttl).await? {
        RaftReply::Level(level) => Ok(level),
        other => Err(PeerError::Protocol(format!("{other:?}"))),
    }
}

/// Asks the node at `addr` to stand for election now (a planned handover).
pub async fn elect_now(peers: &Peers, addr: SocketAddr, ttl: Duration) -> Result<bool, PeerError> {
    match exchange(peers, addr, &RaftRpc::ElectNow, ttl).await? {
        RaftReply::ElectNow(started) => Ok(started),
        other => Err(PeerError::Protocol(format!("{other:?}"))),
    }
}

async fn exchange(
    peers: &Peers,
    addr: SocketAddr,
    rpc: &RaftRpc,
    ttl: Duration,
) -> Result<RaftReply, PeerError> {
    let request = Request::Raft(codec::to_bytes(rpc).map_err(TransportError::from)?);
    match peers.call(addr, &request, ttl).await? {
        Response::Raft(bytes) => {
            codec::from_bytes(&bytes).map_err(|e| PeerError::Transport(e.into()))
        }
        other => Err(PeerError::Protocol(format!("{other:?}"))),
    }
}

/// One slot per peer. Dialing a peer holds only that peer's slot: a dead peer's connect
/// timeout must never delay RPCs to live ones (it once kept a new leader from confirming
/// its quorum while it kept re-dialing the crashed old leader).
type Slot = Arc<Mutex<PeerLink>>;
type Connections = Arc<std::sync::Mutex<BTreeMap<SocketAddr, Slot>>>;

/// After a failed call, a peer is not dialed again for this long, doubling with each further
/// failure up to [`REDIAL_BACKOFF_MS_MAX`]. Raft calls every peer every heartbeat (50 ms);
/// without it, a dead or cut-off peer costs a handshake per heartbeat.
pub const REDIAL_BACKOFF_MS_MIN: u64 = 50;
/// Longest pause between dials of a failing peer: how late, at most, a restarted peer hears
/// from the others again.
pub const REDIAL_BACKOFF_MS_MAX: u64 = 800;

#[derive(Debug, Default)]
struct PeerLink {
    connection: Option<qvdc_transport::quinn::Connection>,
    /// Calls that failed in a row.
    failures: u32,
    /// No dial before this.
    quiet_until: Option<tokio::time::Instant>,
}

impl PeerLink {
    fn failed(&mut self) {
        self.connection = None;
        self.failures = self.failures.saturating_add(1);
        self.quiet_until = Some(tokio::time::Instant::now() + REDIAL.pause(self.failures));
    }
}

const REDIAL: qvdc_transport::backoff::Backoff =
    qvdc_transport::backoff::Backoff::from_millis(REDIAL_BACKOFF_MS_MIN, REDIAL_BACKOFF_MS_MAX);

/// Connections to the other control-plane nodes, one cached per address. Raft RPCs and
/// operator requests a follower passes on to the leader share them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Peers {
    endpoint: Endpoint,
    connections: Connections,
}

impl Peers {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            connections: Arc::default(),
        }
    }

    async fn connection(
        &self,
        addr: SocketAddr,
    ) -> Result<qvdc_transport::quinn::Connection, PeerError> {
        let mut slot = self.slot(addr).lock_owned().await;
        if let Some(c) = slot
            .connection
            .as_ref()
            .filter(|c| c.close_reason().is_none())
        {
            return Ok(c.clone());
        }
        if let Some(until) = slot.quiet_until {
            let now = tokio::time::Instant::now();
            if until > now {
                return Err(PeerError::BackingOff(until - now));
            }
        }
        let connection = self.endpoint.connect(addr).await?;
        slot.connection = Some(connection.clone());
        Ok(connection)
    }

    fn slot(&self, addr: SocketAddr) -> Slot {
        let mut slots = self
            .connections
            .lock()
            .expect("connection slots lock poisoned");
        slots.entry(addr).or_default().clone()
    }

    /// Sends one request to the node at `addr` and waits up to `ttl` for its answer. A call
    /// that fails or times out drops the cached connection, so the next one dials afresh: a
    /// peer that was restarted listens on a new endpoint, and a connection to its old one
    /// would otherwise swallow requests until QUIC's idle timeout.
    pub async fn call(
        &self,
        addr: SocketAddr,
        request: &Request,
        ttl: Duration,
    ) -> Result<Response, PeerError> {
        let attempt = async {
            let connection = self.connection(addr).await?;
            Ok::<_, PeerError>((
                connection.clone(),
                quic::call::<_, Response>(&connection, request).await,
            ))
        };
        let (connection, result) = match tokio::time::timeout(ttl, attempt).await {
            Ok(Ok((connection, result))) => (Some(connection), result.map_err(PeerError::from)),
            Ok(Err(e @ PeerError::BackingOff(_))) => return Err(e),
            Ok(Err(e)) => (None, Err(e)),
            Err(_) => (None, Err(PeerError::Timeout(ttl))),
        };
        let slot = self.slot(addr);
        let mut slot = slot.lock().await;
        if result.is_ok() {
            slot.failures = 0;
            slot.quiet_until = None;
        } else {
            let same = match (&slot.connection, &connection) {
                (Some(cached), Some(used)) => cached.stable_id() == used.stable_id(),
                _ => true,
            };
            if same {
                slot.failed();
            }
        }
        result
    }
}

/// Creates one Raft client per peer; all share [`Peers`].
#[derive(Debug, Clone)]
pub struct Network {
    peers: Peers,
}

impl Network {
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.parse().map_err(|_| node.addr.clone()),
            peers: self.peers.clone(),
        }
    }
}

#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: Result<SocketAddr, String>,
    peers: Peers,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer address {0:?} is not HOST:PORT")]
    BadAddress(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("not dialed again for {0:?} after failing")]
    BackingOff(Duration),
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

impl PeerClient {
    async fn exchange(&self, rpc: &RaftRpc, ttl: Duration) -> Result<RaftReply, PeerError> {
        let addr = self.addr.clone().map_err(PeerError::BadAddress)?;
        exchange(&self.peers, addr, rpc, ttl).await
    }
}

fn failed<E: std::error::Error>(e: PeerError) -> RPCError<NodeId, BasicNode, E> {
    match e {
        PeerError::Transport(
            TransportError::Connect { .. } | TransportError::ConnectTimeout { .. },
        )
        | PeerError::BackingOff(_) => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

#[allow(clippy::result_large_err)] // the error type is the one openraft's RaftNetwork returns
fn remote<T, E: std::error::Error>(
    target: NodeId,
    result: Result<T, RaftError<NodeId, E>>,
) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
    result.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        // A leader's read confirmation sends its own heartbeats under openraft's shorter
        // timeout, which still applies to them.
        let ttl = option
            .hard_ttl()
            .max(Duration::from_millis(crate::APPEND_TIMEOUT_MS));
        match self.exchange(&RaftRpc::AppendEntries(rpc), ttl).await {
            Ok(RaftReply::AppendEntries(result)) => remote(self.target, result),
            Ok(other) => Err(failed(PeerError::Protocol(format!("{other:?}")))),
            Err(e) => Err(failed(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .exchange(&RaftRpc::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(RaftReply::InstallSnapshot(result)) => remote(self.target, result),
            Ok(other) => Err(failed(PeerError::Protocol(format!("{other:?}")))),
            Err(e) => Err(failed(e)),
        }
    }

    /// After an unreachable peer, replication pauses as long as the peer is not dialed
    /// again ([`REDIAL_BACKOFF_MS_MIN`], doubling to [`REDIAL_BACKOFF_MS_MAX`]), not
    /// openraft's flat 500 ms: one failed call to a live follower no longer halts its
    /// replication for half a second.
    fn backoff(&self) -> Backoff {
        Backoff::new((1..).map(|failures| REDIAL.pause(failures)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.exchange(&RaftRpc::Vote(rpc), option.hard_ttl()).await {
            Ok(RaftReply::Vote(result)) => remote(self.target, result),
            Ok(other) => Err(failed(PeerError::Protocol(format!("{other:?}")))),
            Err(e) => Err(failed(e)),
        }
    }
}
