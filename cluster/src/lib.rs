//! qvdc-cluster: a control-plane node wired from raft, actors and transport; the operator
//! client; and the binaries `qvdc` (server, local sandbox) and `qvctl` (operator CLI).
//! Business rules live in the lower crates; this crate connects them.

mod adoption;
mod api;
pub mod client;
mod forward;
mod hosts;
pub mod membership;
pub mod node;
pub mod output;
mod propose;
mod revocation;
mod stale;

pub use client::{Client, ClientError};
pub use node::{Node, NodeConfig, Storage};
