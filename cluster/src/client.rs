//! The operator's client: dial any control-plane node, follow redirects to the leader (and
//! move there once a node has passed a request on to it), retry while an election is under
//! way, and give up after a deadline with an error that says why.

use std::{net::SocketAddr, time::Duration};

use qvdc_transport::{
    backoff::Backoff,
    protocol::{ApiError, ApiErrorKind, ApiRequest, ApiResponse, Request, Response},
    quic, quinn, Endpoint, TransportError,
};
use tokio::time::Instant;

/// Pause between attempts while no leader is known: from this, doubling up to
/// [`RETRY_INTERVAL_MS_MAX`], with jitter, so clients that lost their leader together do not
/// retry together.
pub const RETRY_INTERVAL_MS: u64 = 200;
pub const RETRY_INTERVAL_MS_MAX: u64 = 1_000;
const RETRY: Backoff = Backoff::from_millis(RETRY_INTERVAL_MS, RETRY_INTERVAL_MS_MAX);
/// Redirects followed for one request before giving up (guards against redirect loops).
pub const REDIRECTS_MAX: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster answered and said no; nothing was changed.
    #[error("{0}")]
    Rejected(ApiError),
    #[error("refused: {0}")]
    Forbidden(String),
    #[error("no control-plane node answered within {waited_ms} ms (last error: {last})")]
    Unreachable { waited_ms: u64, last: String },
    #[error("the cluster did not complete the request within {waited_ms} ms (last: {last})")]
    Timeout { waited_ms: u64, last: String },
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Exit code for the CLI: 3 rejected or forbidden, 4 timed out, 5 unreachable, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Rejected(_) | ClientError::Forbidden(_) => 3,
            ClientError::Timeout { .. } => 4,
            ClientError::Unreachable { .. } => 5,
            ClientError::Protocol(_) => 1,
        }
    }
}

/// How often in a row one node may answer "unavailable" before the next node is asked.
const UNAVAILABLE_BEFORE_ROTATING: u32 = 3;

pub struct Client {
    endpoint: Endpoint,
    nodes: Vec<SocketAddr>,
    connection: Option<(SocketAddr, quinn::Connection)>,
    /// The leader, as named by a node that passed our last request on to it: where the next
    /// request goes.
    leader: Option<SocketAddr>,
    timeout: Duration,
    /// Prefix of this client's request ids; random unless set (the simulation sets it).
    request_prefix: String,
    requests_made: u64,
}

enum Attempt {
    Done(Result<ApiResponse, ClientError>),
    Redirect(SocketAddr),
    /// Try again after a pause; `reached` says whether any node answered.
    Retry {
        reason: String,
        reached: bool,
    },
    /// The node (the leader, or one passing the request on) could not do it right now and
    /// said why: ask it again after a pause.
    Unavailable(String),
}

impl Client {
    pub fn new(endpoint: Endpoint, nodes: Vec<SocketAddr>, timeout: Duration) -> Self {
        assert!(
            !nodes.is_empty(),
            "a client needs at least one node address"
        );
        Self {
            endpoint,
            nodes,
            connection: None,
            leader: None,
            timeout,
            request_prefix: format!("{:016x}", rand::random::<u64>()),
            requests_made: 0,
        }
    }

    /// How long [`Client::request`] keeps trying before it gives up.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Fixes the prefix of this client's request ids (the simulation derives it from its seed).
    pub fn with_request_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.request_prefix = prefix.into();
        self
    }

    /// A fresh request id for a mutation. Sending the same request again — as
    /// [`Client::request`] does after a lost answer — must reuse it.
    pub fn new_request_id(&mut self) -> String {
        self.requests_made += 1;
        format!("{}-{}", self.request_prefix, self.requests_made)
    }

    async fn connect(&mut self, addr: SocketAddr) -> Result<quinn::Connection, TransportError> {
        if let Some((cached, connection)) = &self.connection {
            if *cached == addr && connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let connection = self.endpoint.connect(addr).await?;
        self.connection = Some((addr, connection.clone()));
        Ok(connection)
    }

    /// Dials every node at once and keeps the first connection whose handshake completes, so
    /// a dead node costs nothing while another one answers. `None` if none answered.
    async fn connect_first(&mut self) -> Option<SocketAddr> {
        let mut dials = tokio::task::JoinSet::new();
        for addr in self.nodes.clone() {
            let endpoint = self.endpoint.clone();
            dials.spawn(async move { (addr, endpoint.connect(addr).await) });
        }
        while let Some(joined) = dials.join_next().await {
            if let Ok((addr, Ok(connection))) = joined {
                self.connection = Some((addr, connection));
                return Some(addr); // dropping `dials` abandons the slower handshakes
            }
        }
        None
    }

    async fn attempt(&mut self, addr: SocketAddr, request: &ApiRequest) -> Attempt {
        let connection = match self.connect(addr).await {
            Ok(c) => c,
            Err(e) => {
                return Attempt::Retry {
                    reason: e.to_string(),
                    reached: false,
                }
            }
        };
        let answer =
            match quic::call::<_, Response>(&connection, &Request::Api(request.clone())).await {
                Ok(Response::ApiPassedOn { leader, result }) => {
                    self.leader = leader.addr.parse().ok().filter(|leader| *leader != addr);
                    Ok(Response::Api(result))
                }
                other => other,
            };
        match answer {
            Ok(Response::Api(Ok(response))) => Attempt::Done(Ok(response)),
            Ok(Response::Api(Err(e))) if e.kind == ApiErrorKind::Unavailable => {
                Attempt::Unavailable(e.message)
            }
            Ok(Response::Api(Err(e))) => Attempt::Done(Err(ClientError::Rejected(e))),
            Ok(Response::Forbidden { reason }) => {
                Attempt::Done(Err(ClientError::Forbidden(reason)))
            }
            Ok(Response::Malformed { reason }) => Attempt::Done(Err(ClientError::Protocol(reason))),
            Ok(Response::NotLeader { leader: Some(hint) }) => match hint.addr.parse() {
                Ok(leader) if leader != addr => Attempt::Redirect(leader),
                _ => Attempt::Retry {
                    reason: "leader hint points back here".into(),
                    reached: true,
                },
            },
            Ok(Response::NotLeader { leader: None }) => Attempt::Retry {
                reason: "no leader elected yet".into(),
                reached: true,
            },
            Ok(other) => Attempt::Done(Err(ClientError::Protocol(format!("{other:?}")))),
            Err(e) => {
                self.connection = None;
                Attempt::Retry {
                    reason: e.to_string(),
                    reached: false,
                }
            }
        }
    }

    /// Sends `request` to the leader, wherever it is, until it is answered or the timeout
    /// passes. The timeout holds even while a handshake or a call hangs on a node that died.
    pub async fn request(&mut self, request: ApiRequest) -> Result<ApiResponse, ClientError> {
        let started = Instant::now();
        let mut progress = Progress {
            reached_any: false,
            last: String::from("nothing tried"),
            unavailable: None,
        };
        let answered =
            tokio::time::timeout(self.timeout, self.until_answered(&request, &mut progress));
        if let Ok(result) = answered.await {
            return result;
        }
        let waited_ms = started.elapsed().as_millis() as u64;
        let last = progress.unavailable.unwrap_or(progress.last);
        Err(if progress.reached_any {
            ClientError::Timeout { waited_ms, last }
        } else {
            ClientError::Unreachable { waited_ms, last }
        })
    }

    /// Tries until a node answers for good, recording in `progress` what the error should say
    /// if the caller's timeout ends it first.
    async fn until_answered(
        &mut self,
        request: &ApiRequest,
        progress: &mut Progress,
    ) -> Result<ApiResponse, ClientError> {
        let mut next = match (self.leader.take(), &self.connection) {
            // A node passed our last request on to the leader: go there directly. If the
            // leader cannot be reached, the attempt fails over to the other nodes as usual.
            (Some(leader), _) => Some(leader),
            (None, Some((addr, connection))) if connection.close_reason().is_none() => Some(*addr),
            (None, _) => self.connect_first().await,
        };
        let mut rotation = 0usize;
        let mut redirects = 0u32;
        let mut failures = 0u32;
        loop {
            let addr = next.take().unwrap_or_else(|| {
                rotation += 1;
                self.nodes[(rotation - 1) % self.nodes.len()]
            });
            match self.attempt(addr, request).await {
                Attempt::Done(result) => return result,
                Attempt::Redirect(leader) if redirects < REDIRECTS_MAX => {
                    redirects += 1;
                    progress.reached_any = true;
                    next = Some(leader);
                }
                Attempt::Redirect(leader) => {
                    progress.last = format!("too many redirects (last to {leader})")
                }
                Attempt::Unavailable(reason) => {
                    progress.reached_any = true;
                    progress.unavailable = Some(format!("{addr}: {reason}"));
                    failures += 1;
                    tokio::time::sleep(RETRY.pause(failures)).await;
                    // The leader short of a quorum for a moment is worth asking again; a node
                    // that keeps failing (one removed from the cluster, or cut off from the
                    // leader it passes requests on to) is not: the others are asked in turn,
                    // and they redirect to the leader.
                    next = (!failures.is_multiple_of(UNAVAILABLE_BEFORE_ROTATING)).then_some(addr);
                }
                Attempt::Retry { reason, reached } => {
                    progress.reached_any |= reached;
                    progress.last = format!("{addr}: {reason}");
                    failures += 1;
                    tokio::time::sleep(RETRY.pause(failures)).await;
                    if !reached {
                        next = self.connect_first().await;
                    }
                }
            }
        }
    }
}

/// What the attempts of one request ran into, for the error if none succeeds.
struct Progress {
    reached_any: bool,
    last: String,
    /// Why the cluster could not do it, which says more than a dead node's silence.
    unavailable: Option<String>,
}
