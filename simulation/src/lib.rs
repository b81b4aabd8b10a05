//! qvdc-simulation: the whole system — control-plane nodes, host agents and an operator —
//! in one deterministic turmoil world. Production code runs unchanged: the same Raft,
//! supervisors, host agent and QUIC transport; only the UDP socket, the mounter and the
//! storage medium are simulated. A seed fixes the run; its event trace replays exactly.

pub mod adoption;
pub mod catch_up;
pub mod chaos;
pub mod deposed_leader;
pub mod elections;
pub mod faults;
pub mod ha_flow;
mod harness;
pub mod invariants;
pub mod lagging_follower;
pub mod lease_edge;
pub mod linearizability;
pub mod move_flow;
pub mod passed_on;
pub mod pool_flow;
pub mod retried_requests;
pub mod slow_followers;
pub mod steady;
pub mod stranded_write;
pub mod swarm;
pub mod trace;
pub mod vm_flow;
mod world;

pub use faults::{Chaos, FaultKind};
pub use harness::{LogLifecycle, TICK_MS};
pub use qvdc_transport::bugs::Bug;
pub use world::{Certs, Disruption, SimConfig};
