//! QUIC over the simulated network: an `AsyncUdpSocket` on turmoil's UDP socket, so the
//! same quinn endpoint, TLS and codec run in the deterministic simulation as in production.
//! Only the socket differs; quinn's randomness is seeded through `EndpointConfig::rng_seed`.

use std::{
    fmt,
    future::Future,
    io::{self, IoSliceMut},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use quinn::udp::{RecvMeta, Transmit};

use crate::{
    quic::{server_config, TransportError},
    tls::Identity,
    Endpoint,
};

type Readiness = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// Loss and duplication the simulated network applies to datagrams, in parts per thousand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Impairment {
    pub loss_per_mille: u32,
    pub duplicate_per_mille: u32,
}

thread_local! {
    /// The impairment for every simulated send on this thread (one simulation runs on one
    /// thread), and the generator that decides each datagram's fate: an xorshift seeded by
    /// the run, so a seed replays the same losses.
    static IMPAIRED: std::cell::Cell<(Impairment, u64)> = const {
        std::cell::Cell::new((
            Impairment { loss_per_mille: 0, duplicate_per_mille: 0 },
            0x9e37_79b9_7f4a_7c15,
        ))
    };
}

/// Sets the loss and duplication of this thread's simulated network; `seed` fixes which
/// datagrams are hit. The harness calls it when a run starts and when its faults change.
pub fn impair(impairment: Impairment, seed: u64) {
    IMPAIRED.with(|cell| cell.set((impairment, seed | 1)));
}

/// Changes the loss and duplication of this thread's simulated network and keeps the
/// generator's position, so a run that switches impairment on and off still replays.
pub fn set_impairment(impairment: Impairment) {
    IMPAIRED.with(|cell| {
        let (_, state) = cell.get();
        cell.set((impairment, state));
    });
}

/// What happens to the next datagram: how many copies go out (0, 1 or 2).
fn copies() -> usize {
    IMPAIRED.with(|cell| {
        let (impairment, mut state) = cell.get();
        if impairment == Impairment::default() {
            return 1;
        }
        let mut draw = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 1000) as u32
        };
        let copies = if draw() < impairment.loss_per_mille {
            0
        } else if draw() < impairment.duplicate_per_mille {
            2
        } else {
            1
        };
        cell.set((impairment, state));
        copies
    })
}

/// A turmoil UDP socket seen through quinn's socket interface.
pub struct SimSocket {
    socket: Arc<turmoil::net::UdpSocket>,
    /// The wait for the next datagram, kept across polls.
    readable: Mutex<Option<Readiness>>,
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSocket")
            .field("socket", &self.socket)
            .finish()
    }
}

/// turmoil's UDP has no back-pressure: a send never waits.
#[derive(Debug)]
struct AlwaysWritable;

impl quinn::UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl quinn::AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        assert!(
            transmit.segment_size.is_none(),
            "one datagram per transmit (max_transmit_segments is 1)"
        );
        let copies = copies();
        if copies == 0 {
            return Ok(()); // lost on the way
        }
        for _ in 1..copies {
            let _ = self
                .socket
                .try_send_to(transmit.contents, transmit.destination);
        }
        match self
            .socket
            .try_send_to(transmit.contents, transmit.destination)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            // quinn treats any other send error as fatal to the endpoint; on a real network
            // such a datagram is simply lost, and QUIC recovers from loss.
            Err(e) => {
                tracing::debug!(error = %e, to = %transmit.destination, "simulated datagram lost");
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut readable = self
            .readable
            .lock()
            .expect("socket readiness lock poisoned");
        loop {
            if let Some(wait) = readable.as_mut() {
                let ready = std::task::ready!(wait.as_mut().poll(cx));
                *readable = None;
                ready?;
            }
            match self.socket.try_recv_from(&mut bufs[0]) {
                Ok((len, addr)) => {
                    meta[0] = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: None,
                    };
                    return Poll::Ready(Ok(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let socket = self.socket.clone();
                    *readable = Some(Box::pin(async move { socket.readable().await }));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// Binds a QUIC endpoint on the simulated network. `seed` fixes quinn's randomness
/// (connection ids and the like) for this endpoint.
pub async fn bind(
    addr: SocketAddr,
    identity: &Identity,
    accept: bool,
    seed: u64,
) -> Result<Endpoint, TransportError> {
    let socket = turmoil::net::UdpSocket::bind(addr)
        .await
        .map_err(|e| TransportError::Endpoint(format!("bind {addr}: {e}")))?;
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut config = crate::quic::endpoint_config(identity);
    config.rng_seed(Some(seed_bytes));
    let server = accept.then(|| server_config(identity)).transpose()?;
    let socket = Arc::new(SimSocket {
        socket: Arc::new(socket),
        readable: Mutex::new(None),
    });
    let inner = quinn::Endpoint::new_with_abstract_socket(
        config,
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| TransportError::Endpoint(e.to_string()))?;
    Endpoint::from_quinn(inner, identity)
}
