//! qvdc-transport: how qvdc processes talk. The versioned wire protocol and its codec, the
//! QUIC endpoint with mutual TLS, certificate tooling, and the adapter that runs the same
//! QUIC code over the simulated network.
//!
//! This crate knows nothing of Raft, libvirt or actors: Raft messages cross it as opaque bytes.

pub mod admission;
pub mod backoff;
pub mod bugs;
pub mod codec;
pub mod facts;
pub mod http;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod quic;
pub mod rng;
#[cfg(feature = "sim")]
pub mod sim;
pub mod tls;

pub use quic::{Endpoint, TransportError};
/// The QUIC implementation, re-exported so that every crate names the same version.
pub use quinn;
