//! qvdc-cluster: a control-plane node wired from raft, actors and transport; the operator
//! client; and the binaries `qvdc` (server, local sandbox) and `qvctl` (operator CLI).
//! Business rules live in the lower crates; this crate connects them.
//!
//! Within the crate, modules only look down: `node` (wiring: accept, dispatch by role, follow
//! leadership) → `forward`, `hosts`, `api` (handlers) → `write`, `calls`, `reply` → `context`
//! (who leads, the lease, membership checks) → `lease`, `propose`, `revocation`.

mod api;
mod calls;
pub mod client;
mod context;
mod events;
pub mod follow;
mod forward;
mod ha;
mod hosts;
mod lease;
mod level;
mod metrics;
mod moves;
pub mod node;
pub mod output;
mod propose;
mod reply;
mod revocation;
mod write;

pub use client::{Client, ClientError};

/// This build's release and commit, as `--version` prints them: `0.2.0 (commit 1a2b3c4d5e6f)`.
pub const RELEASE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("QVDC_COMMIT"),
    ")"
);
pub use lease::{Clock, CLOCK_DRIFT_ALLOWANCE_PERCENT, LEADER_LEASE_MS, LEADER_LEASE_MS_MAX};
pub use node::{Node, NodeConfig, Storage};
