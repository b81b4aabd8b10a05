//! qvdc-host: the host agent. It owns the host's mounts, scans its inventory, reports actual
//! state on every heartbeat and executes the leader's commands. It decides nothing
//! cluster-wide.

pub mod agent;
pub mod fence;
pub mod inventory;
pub mod mounter;
pub mod pools;

pub use agent::{Agent, AgentConfig};
pub use fence::{Fence, FileFence, MemoryFence};
pub use mounter::{Mounter, RealMounter, SimMounter};
