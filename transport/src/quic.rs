//! The QUIC endpoint every qvdc process uses, and the one request/response pattern on it:
//! open a bidirectional stream, write one frame, read one frame.
//!
//! The same code runs over real UDP and over the simulated network (`sim`); only the socket
//! handed to quinn differs.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    codec::{self, CodecError},
    protocol::Request,
    tls::{self, Identity, PeerIdentity, Role, TlsError},
};

/// A connection with no traffic for this long is considered dead.
pub const IDLE_TIMEOUT_MS: u64 = 4_000;
/// Keep-alives keep a quiet connection (a host between heartbeats) from idling out. The
/// side that dials sends them; the side that accepts sends none (every peer that dials
/// keeps its own connections alive, and a thousand idle hosts' connections would
/// otherwise cost their node two packets a second each rather than one).
pub const KEEP_ALIVE_INTERVAL_MS: u64 = 1_000;
/// Keep-alives of a connection that only waits (a host's watch for the next leader): well
/// inside [`IDLE_TIMEOUT_MS`], with time for a lost one to be sent again.
pub const QUIET_KEEP_ALIVE_INTERVAL_MS: u64 = 2_500;
/// Bound on how many requests one peer may have in flight on one connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// The application error code of a connection closed because its peer is over a bound
/// (see `admission`); the close frame's reason says which.
pub const REFUSED_CODE: u32 = 1;
/// Time allowed for dialing and completing the handshake.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Time a peer has to send a whole request once it opened its stream: a stream that
/// trickles (slowloris) is cut off and its task freed. A caller waits as long for the
/// answer once its request is sent ([`call`]), so a request the server takes longer than
/// this to answer reaches the caller as "answer not received".
pub const REQUEST_READ_TIMEOUT_MS: u64 = 10_000;
/// Time a peer has to take our whole answer: one that stops reading does not keep the
/// answer's buffer and task alive.
pub const RESPONSE_WRITE_TIMEOUT_MS: u64 = 10_000;
/// Largest request a host or an operator may send. Raft traffic between servers may use
/// the whole [`codec::FRAME_BYTES_MAX`]; nothing a host or an operator legitimately sends
/// comes near this (a registration with a thousand existing domains is about 0.5 MiB).
pub const PEER_REQUEST_BYTES_MAX: usize = 1024 * 1024;
/// Bytes one peer may have in flight towards us on one stream, and on all its streams of
/// one connection: what a peer that sends and never finishes can pin per connection.
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 1024 * 1024;
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("could not reach {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("timed out reaching {addr} after {ms} ms")]
    ConnectTimeout { addr: SocketAddr, ms: u64 },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream failed: {0}")]
    Stream(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("could not open endpoint: {0}")]
    Endpoint(String),
}

/// A bound QUIC endpoint that can accept (if it has a server configuration) and dial.
#[derive(Clone, Debug)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    /// What this endpoint presents when it dials: endpoints made by [`Endpoint::sharing`]
    /// share one socket and present identities of their own.
    client: quinn::ClientConfig,
}

fn transport_config(keep_alive_ms: Option<u64>) -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS))
                .expect("small timeout"),
        ))
        .keep_alive_interval(keep_alive_ms.map(Duration::from_millis))
        .stream_receive_window(STREAM_RECEIVE_WINDOW_BYTES.into())
        .receive_window(CONNECTION_RECEIVE_WINDOW_BYTES.into())
        .max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into())
        .max_concurrent_uni_streams(0u32.into());
    Arc::new(config)
}

/// Endpoint settings for a peer that accepts connections: its stateless-reset secrets
/// survive restarts (see [`Identity::stateless_reset_keys`]).
pub(crate) fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let (reset_key, cid_key) = identity.stateless_reset_keys();
    let mut config = quinn::EndpointConfig::new(reset_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

pub(crate) fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, TransportError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config()?)
        .map_err(|e| TransportError::Endpoint(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(None));
    Ok(config)
}

pub(crate) fn client_config(identity: &Identity) -> Result<quinn::ClientConfig, TransportError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(identity.client_config()?)
        .map_err(|e| TransportError::Endpoint(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(Some(KEEP_ALIVE_INTERVAL_MS)));
    Ok(config)
}

impl Endpoint {
    /// Binds a real UDP socket. With `accept`, the endpoint also serves incoming connections.
    pub fn bind(
        addr: SocketAddr,
        identity: &Identity,
        accept: bool,
    ) -> Result<Self, TransportError> {
        let server = accept.then(|| server_config(identity)).transpose()?;
        let bind_err = |e: std::io::Error| TransportError::Endpoint(format!("bind {addr}: {e}"));
        let inner = match server {
            Some(server) => {
                let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
                quinn::Endpoint::new(
                    endpoint_config(identity),
                    Some(server),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
            }
            None => quinn::Endpoint::client(addr),
        }
        .map_err(bind_err)?;
        Self::from_quinn(inner, identity)
    }

    /// Wraps an endpoint built elsewhere (the simulated network builds its own).
    pub fn from_quinn(inner: quinn::Endpoint, identity: &Identity) -> Result<Self, TransportError> {
        let client = client_config(identity)?;
        let mut inner = inner;
        inner.set_default_client_config(client.clone());
        Ok(Self { inner, client })
    }

    /// An endpoint on this one's socket that dials as `identity`: many peers of one
    /// process (a load generator's thousands of hosts) need not hold a socket each.
    /// Closing any of them closes the socket for all.
    pub fn sharing(&self, identity: &Identity) -> Result<Self, TransportError> {
        Ok(Self {
            inner: self.inner.clone(),
            client: client_config(identity)?,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner
            .local_addr()
            .map_err(|e| TransportError::Endpoint(e.to_string()))
    }

    /// Dials a control-plane node and completes the mutual-TLS handshake.
    pub async fn connect(&self, addr: SocketAddr) -> Result<quinn::Connection, TransportError> {
        self.connect_as(self.client.clone(), addr, CONNECT_TIMEOUT_MS)
            .await
    }

    /// [`Endpoint::connect`], allowing the handshake `ms` rather than
    /// [`CONNECT_TIMEOUT_MS`]: for a peer known to be alive and busy (a new leader that
    /// thousands of hosts dial at once), where giving up a handshake half done only to start
    /// another adds to the load that made it slow.
    pub async fn connect_within(
        &self,
        addr: SocketAddr,
        ms: u64,
    ) -> Result<quinn::Connection, TransportError> {
        self.connect_as(self.client.clone(), addr, ms).await
    }

    /// [`Endpoint::connect`], for a connection that mostly waits: it keeps itself alive
    /// with a keep-alive every [`QUIET_KEEP_ALIVE_INTERVAL_MS`] rather than every second.
    pub async fn connect_quietly(
        &self,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, TransportError> {
        let mut config = self.client.clone();
        config.transport_config(transport_config(Some(QUIET_KEEP_ALIVE_INTERVAL_MS)));
        self.connect_as(config, addr, CONNECT_TIMEOUT_MS).await
    }

    async fn connect_as(
        &self,
        config: quinn::ClientConfig,
        addr: SocketAddr,
        timeout_ms: u64,
    ) -> Result<quinn::Connection, TransportError> {
        let connecting = self
            .inner
            .connect_with(config, addr, tls::SERVER_NAME)
            .map_err(|e| TransportError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        match tokio::time::timeout(Duration::from_millis(timeout_ms), connecting).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(TransportError::Connect {
                addr,
                reason: e.to_string(),
            }),
            Err(_) => Err(TransportError::ConnectTimeout {
                addr,
                ms: timeout_ms,
            }),
        }
    }

    /// Waits for the next incoming connection; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.inner.accept().await
    }

    pub fn close(&self) {
        self.inner.close(0u32.into(), b"shutdown");
    }
}

/// The identity a connected peer proved during the handshake.
pub fn peer_identity(connection: &quinn::Connection) -> Result<PeerIdentity, TransportError> {
    let certs = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| TlsError::PeerCertificate("peer presented no certificate".into()))?;
    let first = certs
        .first()
        .ok_or_else(|| TlsError::PeerCertificate("empty certificate chain".into()))?;
    Ok(tls::identity_of(first)?)
}

/// Sends one request on a fresh stream and waits for its one response.
pub async fn call<Q, A>(connection: &quinn::Connection, request: &Q) -> Result<A, TransportError>
where
    Q: Serialize,
    A: DeserializeOwned,
{
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        codec::write_frame(&mut send, request).await?;
        send.finish()
            .map_err(|e| TransportError::Stream(e.to_string()))?;
        let bytes = read_last_frame(&mut recv, codec::FRAME_BYTES_MAX, "answer").await?;
        Ok(codec::decode_frame_body(&bytes)?)
    };
    // A stream's error says only "connection lost"; the connection knows why (a peer that
    // refused us says so in its close frame).
    exchange.await.map_err(|e| match connection.close_reason() {
        Some(reason) => TransportError::Connection(reason),
        None => e,
    })
}

/// Reads the one request on an accepted stream from a trusted sender (a host reading its
/// leader's commands); the caller answers with [`respond`].
pub async fn read_request<Q: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Q, TransportError> {
    let bytes = read_last_frame(recv, codec::FRAME_BYTES_MAX, "request").await?;
    Ok(codec::decode_frame_body(&bytes)?)
}

/// Why a control-plane node did not take a request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The sender's certificate does not allow this kind of request; nothing of it was
    /// decoded.
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Unreadable(#[from] TransportError),
}

/// Reads the one [`Request`] on a stream accepted from a peer with `role`. The role bounds
/// the frame's size and decides which kinds of request are decoded at all: a host's or an
/// operator's frame is refused by its first byte when it is of a kind their role may not
/// send, so no bytes of it reach the decoder.
pub async fn read_request_from(
    recv: &mut quinn::RecvStream,
    peer: &PeerIdentity,
) -> Result<Request, RequestError> {
    let limit = match peer.role {
        Role::Server => codec::FRAME_BYTES_MAX,
        Role::Host | Role::Operator => PEER_REQUEST_BYTES_MAX,
    };
    let frame = read_last_frame(recv, limit, "request").await?;
    gate_and_decode(&frame, peer)
}

/// Decodes a request frame (version and body) from `peer` if its role may send that kind
/// of request, judged by the body's first byte before anything is decoded.
pub fn gate_and_decode(frame: &[u8], peer: &PeerIdentity) -> Result<Request, RequestError> {
    let body = frame.get(2..).unwrap_or_default();
    // A kind written in bincode's long form (found by the `request_frame` fuzz target) or
    // unknown is refused here too: no qvdc peer writes one, and it would pass the gate.
    let Some((needed, what)) = codec::peek_variant(body).and_then(Request::needs_role) else {
        let reason = "the request's kind is missing, unknown or not written in one byte";
        return Err(RequestError::Unreadable(TransportError::Codec(
            CodecError::Malformed(reason.into()),
        )));
    };
    if needed != peer.role {
        return Err(RequestError::Forbidden(forbidden_reason(
            peer, what, needed,
        )));
    }
    let request: Request = codec::decode_frame_body(frame).map_err(TransportError::from)?;
    assert_eq!(
        request.tag(),
        body[0],
        "a request decodes as the kind its first byte names"
    );
    Ok(request)
}

/// The words of a refusal: who asked, what they asked for, and which certificate to use.
pub fn forbidden_reason(peer: &PeerIdentity, what: &str, needed: Role) -> String {
    format!(
        "certificate {:?} has role {}, but {what} needs role {needed}; use a {needed} certificate",
        peer.name, peer.role
    )
}

/// Reads a stream's one frame (`what` it is: a request or an answer, for the error) and
/// then its end, within [`REQUEST_READ_TIMEOUT_MS`]. A
/// stream dropped before its end was read is stopped, which costs a STOP_SENDING frame to
/// the peer and an acknowledgement back on every request; the sender finishes right after
/// the frame, so the end arrives with it.
async fn read_last_frame(
    recv: &mut quinn::RecvStream,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, TransportError> {
    let read = async {
        let frame = codec::read_frame_bytes(recv, limit).await?;
        // An ordered read: quinn's `read_to_end` reads unordered, which must not follow
        // ordered reads on one stream (quinn-proto 0.11 then underflows its flow-control
        // count).
        let mut more = [0u8; 1];
        match recv.read(&mut more).await {
            Ok(None) => Ok(frame),
            Ok(Some(_)) => Err(TransportError::Stream(
                "more than one frame on a one-request stream".into(),
            )),
            Err(e) => Err(TransportError::Stream(e.to_string())),
        }
    };
    let deadline = Duration::from_millis(REQUEST_READ_TIMEOUT_MS);
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or_else(|_| {
            Err(TransportError::Stream(format!(
                "{what} not received within {REQUEST_READ_TIMEOUT_MS} ms"
            )))
        })
}

/// Writes the one response on an accepted stream and closes our side, giving up after
/// [`RESPONSE_WRITE_TIMEOUT_MS`] if the peer does not take it.
pub async fn respond<A: Serialize>(
    mut send: quinn::SendStream,
    response: &A,
) -> Result<(), TransportError> {
    let write = async {
        codec::write_frame(&mut send, response).await?;
        send.finish()
            .map_err(|e| TransportError::Stream(e.to_string()))
    };
    let deadline = Duration::from_millis(RESPONSE_WRITE_TIMEOUT_MS);
    match tokio::time::timeout(deadline, write).await {
        Ok(result) => result,
        Err(_) => {
            let _ = send.reset(0u32.into());
            Err(TransportError::Stream(format!(
                "answer not taken within {RESPONSE_WRITE_TIMEOUT_MS} ms"
            )))
        }
    }
}
