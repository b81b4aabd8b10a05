//! qvdc-host: the host agent. It owns the host's mounts, domains and bridges, scans its
//! inventory, reports actual state on every heartbeat and executes the leader's commands. It
//! decides nothing cluster-wide.

pub mod agent;
pub mod fence;
pub mod hypervisor;
pub mod inventory;
pub mod leader_watch;
pub mod lease;
pub mod libvirt;
pub mod metrics;
pub mod mounter;
pub mod network;
pub mod pools;
pub mod silence;
pub mod source_policy;
pub mod spares;
pub mod testing;
pub mod vms;

pub use agent::{Agent, AgentConfig, HostParts};
pub use fence::{Fence, FileFence, MemoryFence};
pub use hypervisor::{Hypervisor, SimHypervisor};
pub use libvirt::Libvirt;
pub use mounter::{Mounter, RealMounter, SimMounter};
pub use network::{IpNetworker, Networker, SimNetworker};
