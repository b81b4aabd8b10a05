//! The messages qvdc peers exchange. Enum variants are only ever appended: a frame's
//! protocol version (see `codec`) changes when that rule has to be broken.
//!
//! These are plain data shared by every crate; the rules about them (validation,
//! aggregation, reconciliation) live in the crates that own those decisions.

use serde::{Deserialize, Serialize};

use crate::{codec, tls::Role};

/// The protocol version this build writes in every frame. Bumped only for incompatible
/// changes; docs/compatibility.md lists the versions and which releases speak them.
pub const PROTOCOL_VERSION: u16 = 4;
/// The oldest protocol version this build still reads (4 is qvdc 0.1.0's). A release that
/// bumps [`PROTOCOL_VERSION`] keeps the previous one readable here for one release, so a
/// cluster can be upgraded one node at a time.
pub const PROTOCOL_VERSION_OLDEST: u16 = 4;
/// TLS application protocol name; a peer that does not offer it fails the handshake.
pub const ALPN: &[u8] = b"qvdc/1";

/// What a peer asks of a control-plane node. Each request travels on its own QUIC stream and
/// gets exactly one [`Response`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A Raft RPC between control-plane nodes; the payload is opaque to the transport.
    Raft(Vec<u8>),
    /// An operator's request.
    Api(ApiRequest),
    /// An operator's request that a follower passes on to the leader; only servers send it,
    /// and it is never passed on again.
    Forwarded(ApiRequest),
    /// A host agent's message.
    Host(HostMessage),
    /// An operator's request that a follower passes on to the leader, with the name in the
    /// operator's certificate, so the leader knows who asked; only servers send it, and it is
    /// never passed on again. Replaces `Forwarded`, which leaders still accept.
    ForwardedFor {
        operator: String,
        /// The serial of the operator's certificate: the leader refuses a revoked one even
        /// when the follower that passes the request on has not applied the revocation yet.
        serial: String,
        request: ApiRequest,
    },
}

impl Request {
    /// The role a certificate needs to send the kind of request whose wire variant is
    /// `tag`, and what that kind is called in a refusal; `None` for a tag that names no
    /// kind (the decoder then refuses the frame).
    pub fn needs_role(tag: u8) -> Option<(Role, &'static str)> {
        match tag {
            0 => Some((Role::Server, "Raft")),
            1 => Some((Role::Operator, "the operator API")),
            2 => Some((Role::Server, "passing on operator requests")),
            3 => Some((Role::Host, "speaking for a host")),
            4 => Some((Role::Server, "passing on operator requests")),
            _ => None,
        }
    }

    /// The wire variant of this request (see [`Request::needs_role`]).
    pub fn tag(&self) -> u8 {
        match self {
            Request::Raft(_) => 0,
            Request::Api(_) => 1,
            Request::Forwarded(_) => 2,
            Request::Host(_) => 3,
            Request::ForwardedFor { .. } => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Raft(Vec<u8>),
    Api(Result<ApiResponse, ApiError>),
    Host(HostReply),
    /// This node is not the leader; `leader` is where to go instead, if known.
    NotLeader {
        leader: Option<LeaderHint>,
    },
    /// The peer's certificate does not allow this request.
    Forbidden {
        reason: String,
    },
    /// The request could not be read (too large, another protocol version, malformed).
    Malformed {
        reason: String,
    },
    /// The leader's answer to an operator request this node passed on to it. Clients that
    /// send more than one request move to `leader`, which spares every later request the
    /// extra hop.
    ApiPassedOn {
        leader: LeaderHint,
        result: Result<ApiResponse, ApiError>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    pub node_id: u64,
    pub addr: String,
}

// ---------------------------------------------------------------------------------------
// Storage pools

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolSource {
    /// A directory on each host, bind-mounted under the host's pool root.
    Dir { path: String },
    /// An NFS export, mounted with `mount -t nfs SERVER:EXPORT` and `options` (comma-separated,
    /// as for mount(8)); every host mounts the same export.
    Nfs {
        server: String,
        export: String,
        options: Option<String>,
    },
    /// A block device (or a filesystem image, mounted through a loop device) holding a
    /// filesystem of type `fs_type`, such as ext4 or xfs.
    Block { device: String, fs_type: String },
}

impl std::fmt::Display for PoolSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolSource::Dir { path } => write!(f, "dir {path}"),
            PoolSource::Nfs { server, export, .. } => write!(f, "nfs {server}:{export}"),
            PoolSource::Block { device, fs_type } => write!(f, "block {device} ({fs_type})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub name: String,
    pub source: PoolSource,
    pub scope: PoolScope,
}

/// Whether a pool's hosts share one storage or each has its own.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PoolScope {
    /// One storage every host of the pool sees (NFS, a shared block device): a volume
    /// exists once, and a VM on it may run on any of the pool's hosts.
    #[default]
    Shared,
    /// Each host has its own storage under the pool's name (a local disk): a volume lives
    /// on one host, and a VM on it runs on that host only.
    Local,
}

impl std::fmt::Display for PoolScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolScope::Shared => "shared",
            PoolScope::Local => "local",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    Healthy,
    Degraded,
    Error,
    /// No fresh report: never counted as healthy.
    Unknown,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Healthy => "HEALTHY",
            Health::Degraded => "DEGRADED",
            Health::Error => "ERROR",
            Health::Unknown => "UNKNOWN",
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
}

/// What a host says about one pool on each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolReport {
    pub pool: String,
    pub mounted: bool,
    pub mount_path: String,
    pub capacity: Capacity,
    pub volume_count: u64,
    pub health: Health,
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Host agent <-> control plane

/// What a host has, scanned at start and sent again whenever it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    pub cpu_model: String,
    pub cpu_sockets: u32,
    pub cores_per_socket: u32,
    pub threads_per_core: u32,
    /// Logical CPUs the host can run vCPUs on.
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub disks: Vec<DiskInventory>,
    pub nics: Vec<NicInventory>,
    /// The hypervisor the agent drives, e.g. "QEMU 7.2.0 (libvirt 9.0.0)".
    pub hypervisor: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInventory {
    /// Kernel name, e.g. `sda` or `nvme0n1`.
    pub name: String,
    pub size_bytes: u64,
    pub rotational: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInventory {
    pub name: String,
    pub mac: String,
    /// Link speed; unknown for virtual or unplugged interfaces.
    pub speed_mbps: Option<u32>,
    pub up: bool,
}

// ---------------------------------------------------------------------------------------
// Volumes, VMs and networks as hosts execute and report them

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    Qcow2,
    Raw,
}

impl std::fmt::Display for VolumeFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VolumeFormat::Qcow2 => "qcow2",
            VolumeFormat::Raw => "raw",
        })
    }
}

/// A file in a pool, as the host that lists it sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    /// From the file name's extension; `None` for files qvdc did not create.
    pub format: Option<VolumeFormat>,
    /// The size the guest sees (qcow2's virtual size is not read: this is the file's length
    /// for raw volumes and the allocated length for qcow2 ones).
    pub size_bytes: u64,
}

/// A disk of a VM: a volume in a pool that is mounted on the VM's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisk {
    pub pool: String,
    pub volume: String,
    pub format: VolumeFormat,
}

/// A network interface of a VM, attached to a network (vSwitch) configured on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNic {
    pub network: String,
    /// Chosen by the hypervisor when absent.
    pub mac: Option<String>,
}

/// What a VM is made of. The host names the libvirt domain after `name` and records `id` in
/// the domain's metadata, so operators recognise it in `virsh list` and the agent recognises
/// it after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<VmNic>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    Running,
    /// Paused by the hypervisor or an operator.
    Paused,
    ShuttingDown,
    ShutOff,
    Crashed,
    Suspended,
    Unknown,
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerState::Running => "running",
            PowerState::Paused => "paused",
            PowerState::ShuttingDown => "shutting down",
            PowerState::ShutOff => "shut off",
            PowerState::Crashed => "crashed",
            PowerState::Suspended => "suspended",
            PowerState::Unknown => "unknown",
        })
    }
}

/// One domain on a host, as the host's hypervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReport {
    /// The domain's name.
    pub name: String,
    /// The VM id from the domain's qvdc metadata; `None` for a domain qvdc does not manage
    /// (defined by someone else and not adopted): the host reports it and never touches it.
    pub id: Option<String>,
    pub power: PowerState,
    /// Why it is in that state, as the hypervisor says (e.g. "destroyed", "booted").
    pub reason: String,
    pub vcpus: u32,
    pub memory_bytes: u64,
    /// The domain's libvirt UUID: it names one domain for good, whatever it is called.
    pub uuid: String,
    /// Its disks, in the order the guest sees them.
    pub disks: Vec<DiskReport>,
}

/// One disk of a domain, as its host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    /// The guest's device name (`vda`).
    pub target: String,
    /// The file behind it; `None` for a disk that is not a file (a block device, a network
    /// disk, an empty CD-ROM drive).
    pub file: Option<String>,
    /// The format the domain opens it in, when qvdc knows that format.
    pub format: Option<VolumeFormat>,
    /// The volume it is, when the file lies directly in a pool mounted on the host: what
    /// adopting the domain makes of it.
    pub volume: Option<VmDisk>,
}

/// A vSwitch: a Linux bridge on each assigned host, optionally trunked to a VLAN on an uplink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    /// The bridge's interface name (at most 15 bytes, a Linux limit).
    pub bridge: String,
    /// With `uplink`: a VLAN sub-interface `UPLINK.VLAN` becomes a port of the bridge.
    pub vlan: Option<u16>,
    pub uplink: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkReport {
    pub network: String,
    pub bridge: String,
    pub up: bool,
    /// Why it is down (or a warning while up), in the operator's words.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostMessage {
    /// First message on a connection. The host id must equal the certificate's name.
    Register {
        host_id: String,
        inventory: Inventory,
        /// Every domain on the host, managed or not.
        vms: Vec<VmReport>,
    },
    Heartbeat {
        host_id: String,
        seq: u64,
        pools: Vec<PoolReport>,
        vms: Vec<VmReport>,
        /// Whether `vms` is the host's domain list at all: false until the hypervisor has
        /// listed them once, and then an empty `vms` says nothing about what runs there.
        vms_known: bool,
        networks: Vec<NetworkReport>,
    },
    /// The host's hardware changed since it registered.
    InventoryChanged {
        host_id: String,
        inventory: Inventory,
    },
    /// Sent after registering: what this host understands beyond its protocol version, so
    /// the leader sends it nothing it cannot read (`leases`: it takes `HostReply::Lease` for
    /// a heartbeat). A leader that cannot read this answers `Malformed`; the host then gets
    /// `HeartbeatAck` as before. `migration_uri`: the libvirt URI other hosts' libvirtd
    /// reach this host's at, to live-migrate VMs here (`qhost --migration-uri`); without it
    /// the host takes no live migrations.
    Capabilities {
        host_id: String,
        leases: bool,
        migration_uri: Option<String>,
    },
    /// Asked of another node while the host's leader is silent (it acknowledges nothing the
    /// host sends): who leads, as far as that node knows. It changes nothing, and any node answers it, with
    /// `HostReply::Leader` (a node of the previous release answers `Malformed`, which tells
    /// the host nothing).
    WhoLeads { host_id: String },
    /// Held open on a node other than the host's leader while the host is registered: the
    /// node answers with `HostReply::Leader` as soon as it knows a leader of a term after
    /// `newer_than`'s (it won an election, or heard from the winner), or after
    /// [`WATCH_LEADER_MAX_MS`] with what it knows, and the host asks again. A host so learns
    /// of a new leader when the election ends, not when its next heartbeat to the old one
    /// goes unanswered. A node of the previous release answers `Malformed`; the host then
    /// relies on its heartbeats alone.
    WatchLeader {
        host_id: String,
        newer_than: Leadership,
    },
}

/// How long a node holds a `WatchLeader` that nothing answered: well inside the time a
/// caller waits for an answer (`quic::REQUEST_READ_TIMEOUT_MS`), so an idle watch ends with
/// an answer, never with a timeout.
pub const WATCH_LEADER_MAX_MS: u64 = 8_000;

impl HostMessage {
    /// The host the message speaks for (it must match the sender's certificate).
    pub fn host_id(&self) -> &str {
        match self {
            HostMessage::Register { host_id, .. }
            | HostMessage::Heartbeat { host_id, .. }
            | HostMessage::InventoryChanged { host_id, .. }
            | HostMessage::Capabilities { host_id, .. }
            | HostMessage::WhoLeads { host_id }
            | HostMessage::WatchLeader { host_id, .. } => host_id,
        }
    }
}

/// Bounds on what one host message may hold. A host is the source of truth for its own
/// state, not for how much of the leader's memory that state may take: a message over any
/// bound is refused whole, with the bound named, before it reaches Raft or a supervisor.
pub mod host_bounds {
    /// Pools one heartbeat may report.
    pub const POOL_REPORTS_MAX: usize = 1_024;
    /// Domains one heartbeat or registration may report, qvdc's and others'.
    pub const VM_REPORTS_MAX: usize = 4_096;
    /// Networks one heartbeat may report.
    pub const NETWORK_REPORTS_MAX: usize = 1_024;
    /// Disks and NICs one inventory may list (physical ones: bridges and taps are not listed).
    pub const INVENTORY_DEVICES_MAX: usize = 512;
    /// A disk's or NIC's name or a MAC address in an inventory.
    pub const DEVICE_NAME_BYTES_MAX: usize = 64;
    /// A name in a report or an inventory (a pool, a domain, a bridge, a disk, a NIC).
    pub const NAME_BYTES_MAX: usize = 255;
    /// Free text: an error message, a CPU model, a hypervisor's version, a mount path.
    pub const TEXT_BYTES_MAX: usize = 4_096;
}

fn bounded_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!(
            "{what} is {} bytes, more than the {max} allowed",
            text.len()
        ));
    }
    Ok(())
}

fn bounded_count(what: &str, count: usize, max: usize) -> Result<(), String> {
    if count > max {
        return Err(format!(
            "{count} {what}, more than the {max} allowed in one message"
        ));
    }
    Ok(())
}

impl Inventory {
    /// Checks the inventory against [`host_bounds`].
    pub fn check(&self) -> Result<(), String> {
        use host_bounds::*;
        bounded_text("hostname", &self.hostname, NAME_BYTES_MAX)?;
        bounded_text("CPU model", &self.cpu_model, TEXT_BYTES_MAX)?;
        bounded_text("hypervisor", &self.hypervisor, TEXT_BYTES_MAX)?;
        bounded_count("disks", self.disks.len(), INVENTORY_DEVICES_MAX)?;
        bounded_count("NICs", self.nics.len(), INVENTORY_DEVICES_MAX)?;
        for disk in &self.disks {
            bounded_text("a disk name", &disk.name, DEVICE_NAME_BYTES_MAX)?;
        }
        for nic in &self.nics {
            bounded_text("a NIC name", &nic.name, DEVICE_NAME_BYTES_MAX)?;
            bounded_text("a MAC address", &nic.mac, DEVICE_NAME_BYTES_MAX)?;
        }
        Ok(())
    }
}

fn check_vm_reports(vms: &[VmReport]) -> Result<(), String> {
    use host_bounds::*;
    bounded_count("domains", vms.len(), VM_REPORTS_MAX)?;
    for vm in vms {
        bounded_text("a domain name", &vm.name, NAME_BYTES_MAX)?;
        bounded_text("a VM id", vm.id.as_deref().unwrap_or(""), NAME_BYTES_MAX)?;
        bounded_text("a power-state reason", &vm.reason, TEXT_BYTES_MAX)?;
    }
    Ok(())
}

impl HostMessage {
    /// Checks the message against [`host_bounds`]; the error names the bound.
    pub fn check(&self) -> Result<(), String> {
        use host_bounds::*;
        match self {
            HostMessage::Register { inventory, vms, .. } => {
                inventory.check()?;
                check_vm_reports(vms)
            }
            HostMessage::InventoryChanged { inventory, .. } => inventory.check(),
            HostMessage::WhoLeads { .. } | HostMessage::WatchLeader { .. } => Ok(()),
            HostMessage::Capabilities { migration_uri, .. } => {
                migration_uri.as_deref().map_or(Ok(()), |uri| {
                    bounded_text("a migration URI", uri, NAME_BYTES_MAX)
                })
            }
            HostMessage::Heartbeat {
                pools,
                vms,
                networks,
                ..
            } => {
                bounded_count("pool reports", pools.len(), POOL_REPORTS_MAX)?;
                for pool in pools {
                    bounded_text("a pool name", &pool.pool, NAME_BYTES_MAX)?;
                    bounded_text("a mount path", &pool.mount_path, TEXT_BYTES_MAX)?;
                    let error = pool.error.as_deref().unwrap_or("");
                    bounded_text("a pool error", error, TEXT_BYTES_MAX)?;
                }
                check_vm_reports(vms)?;
                bounded_count("network reports", networks.len(), NETWORK_REPORTS_MAX)?;
                for network in networks {
                    bounded_text("a network name", &network.network, NAME_BYTES_MAX)?;
                    bounded_text("a bridge name", &network.bridge, NAME_BYTES_MAX)?;
                    let error = network.error.as_deref().unwrap_or("");
                    bounded_text("a network error", error, TEXT_BYTES_MAX)?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostReply {
    Registered {
        leadership: Leadership,
    },
    HeartbeatAck,
    /// The registration could not be recorded; the host retries.
    Retry {
        reason: String,
    },
    /// A heartbeat answered by a leader whose leadership a quorum confirmed within its
    /// lease: the host's lease runs [`HOST_LEASE_MS`] from when the host sent the heartbeat.
    /// `fenced` lists what the host powers off once its lease lapses, when that changed since
    /// the connection's last answer (`None`: as before).
    Lease {
        fenced: Option<Vec<FencedVm>>,
    },
    /// The answer to `WhoLeads`: the leadership the answering node knows of (which may be
    /// its own) and that leader's address; `None` while it knows no leader (an election is
    /// under way, or it is cut off).
    Leader {
        leadership: Option<Leadership>,
        addr: Option<String>,
    },
}

/// How long a host's lease lasts from the heartbeat that renewed it. A host whose lease
/// lapsed applies each HA VM's isolation response (ADR 23).
pub const HOST_LEASE_MS: u64 = 8_000;
/// How long a leader hears nothing from a host, counted from its last heartbeat or from the
/// leadership's start, before it restarts the host's HA VMs elsewhere: the lease plus time
/// for the host's isolation response to finish, and margin for clocks that run at slightly
/// different rates.
pub const HOST_LOST_AFTER_MS: u64 = HOST_LEASE_MS + ISOLATION_RESPONSE_MS + 1_000;
/// How long an isolated host's graceful shutdown of a VM may take before it powers it off.
pub const ISOLATION_RESPONSE_MS: u64 = 3_000;

/// A VM a host stops when its lease lapses, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedVm {
    /// The VM's id, as in its domain's qvdc metadata.
    pub id: String,
    pub response: IsolationResponse,
}

/// What a host does with an HA VM once it can no longer renew its lease (isolated from the
/// control plane, or the control plane without a leader), before the VM may start elsewhere.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationResponse {
    /// Destroys the guest at once: the fastest restart elsewhere.
    #[default]
    PowerOff,
    /// Asks the guest to shut down, and destroys it if it has not within
    /// [`ISOLATION_RESPONSE_MS`].
    ShutDown,
    /// Leaves it running. The VM is still restarted elsewhere once the host is lost, where
    /// the pool's storage lock refuses the second start while the first guest holds its
    /// disks.
    Keep,
}

impl std::fmt::Display for IsolationResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IsolationResponse::PowerOff => "power-off",
            IsolationResponse::ShutDown => "shut-down",
            IsolationResponse::Keep => "keep",
        })
    }
}

/// A VM's high-availability policy.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct HaPolicy {
    /// Restart the VM on another host when its host is lost.
    pub restart: bool,
    /// Higher restarts first when not every lost VM fits.
    pub priority: u8,
    pub isolation: IsolationResponse,
}

impl std::fmt::Display for HaPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.restart {
            write!(
                f,
                "restart (priority {}, isolation {})",
                self.priority, self.isolation
            )
        } else {
            f.write_str("off")
        }
    }
}

/// A VM's HA policy and what HA is doing about it, as `vm show` and `vm list` add them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmHaView {
    pub vm: String,
    pub host: String,
    pub policy: HaPolicy,
    /// What HA is doing or waiting for ("host-1 lost 13 s ago; restarted on host-2").
    pub status: Option<String>,
}

/// One Raft leadership: its term and the leader's node id, ordered by term, then node. This
/// is the fencing token. openraft lets a node with a higher id take over within a term (it
/// breaks split votes that way), so the term alone does not tell leaderships apart.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Leadership {
    pub term: u64,
    pub node: u64,
}

impl std::fmt::Display for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.term, self.node)
    }
}

/// Identifies one command: the leadership that issued it and a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId {
    pub leadership: Leadership,
    pub seq: u64,
}

impl std::fmt::Display for CommandId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.leadership, self.seq)
    }
}

/// A command the leader pushes to a host on a stream the leader opens. Every command is
/// idempotent: executing it twice leaves the host as executing it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostCommand {
    pub id: CommandId,
    pub kind: HostCommandKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostCommandKind {
    /// Mount the pool under the host's pool root.
    InitStoragePool(PoolSpec),
    /// Unmount the pool and forget it (the pool was unassigned or deleted). Its data stays.
    RemoveStoragePool {
        pool: String,
    },
    CreateVolume {
        pool: String,
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
    },
    /// Grow (or, for raw volumes, shrink) a volume to `size_bytes`.
    ResizeVolume {
        pool: String,
        name: String,
        size_bytes: u64,
    },
    DeleteVolume {
        pool: String,
        name: String,
    },
    /// Answered with [`CommandOutput::Volumes`].
    ListVolumes {
        pool: String,
    },
    /// Define (or redefine, while shut off) the domain for this VM.
    DefineVm(VmSpec),
    StartVm {
        name: String,
    },
    /// Ask the guest to shut down; destroy it if it is still running after `timeout_ms`.
    ShutdownVm {
        name: String,
        timeout_ms: u64,
    },
    /// Reboot the guest now. `request` is the operator's request id: a host reboots once
    /// per request, so a request retried after a leader change does not reboot it twice.
    RebootVm {
        name: String,
        request: String,
    },
    /// Pull the plug.
    ForceOffVm {
        name: String,
    },
    /// Remove the domain's definition, destroying it first if it runs. Its volumes stay.
    UndefineVm {
        name: String,
    },
    /// Take over a domain qvdc did not create: mark `volumes` as qvdc's, then record `id` in
    /// the metadata of domain `name`, which must be the domain with libvirt UUID `uuid`.
    AdoptVm {
        name: String,
        id: String,
        uuid: String,
        volumes: Vec<VmDisk>,
    },
    /// Create the network's bridge (and VLAN port) on this host.
    CreateNetwork(NetworkSpec),
    RemoveNetwork {
        name: String,
    },
    /// Rename the unmanaged, shut-off domain `name` (libvirt UUID `uuid`) to `to`, to adopt
    /// it under that name.
    RenameVm {
        name: String,
        to: String,
        uuid: String,
    },
    /// Give a VM back to its host untouched: unmark `volumes`, then remove VM `id`'s metadata
    /// from domain `name`. The guest keeps running as it was.
    ReleaseVm {
        name: String,
        id: String,
        volumes: Vec<VmDisk>,
    },
    /// Live-migrate the running domain `name` (VM `id`) to the host whose libvirtd is at
    /// `to`, peer to peer: it is defined there, runs there once the memory is copied, and is
    /// undefined here. `storage_unsafe`: its disks are on a shared directory, which libvirt
    /// cannot tell is shared (`VIR_MIGRATE_UNSAFE`). Answered once the guest runs there.
    MigrateVm {
        name: String,
        id: String,
        to: String,
        storage_unsafe: bool,
    },
}

impl HostCommandKind {
    /// A short name for logs and traces.
    pub fn label(&self) -> &'static str {
        match self {
            HostCommandKind::InitStoragePool(_) => "init-pool",
            HostCommandKind::RemoveStoragePool { .. } => "remove-pool",
            HostCommandKind::CreateVolume { .. } => "create-volume",
            HostCommandKind::ResizeVolume { .. } => "resize-volume",
            HostCommandKind::DeleteVolume { .. } => "delete-volume",
            HostCommandKind::ListVolumes { .. } => "list-volumes",
            HostCommandKind::DefineVm(_) => "define-vm",
            HostCommandKind::StartVm { .. } => "start-vm",
            HostCommandKind::ShutdownVm { .. } => "shutdown-vm",
            HostCommandKind::RebootVm { .. } => "reboot-vm",
            HostCommandKind::ForceOffVm { .. } => "force-off-vm",
            HostCommandKind::UndefineVm { .. } => "undefine-vm",
            HostCommandKind::AdoptVm { .. } => "adopt-vm",
            HostCommandKind::ReleaseVm { .. } => "release-vm",
            HostCommandKind::RenameVm { .. } => "rename-vm",
            HostCommandKind::CreateNetwork(_) => "create-network",
            HostCommandKind::RemoveNetwork { .. } => "remove-network",
            HostCommandKind::MigrateVm { .. } => "migrate-vm",
        }
    }
}

/// What a successful command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutput {
    Done,
    Volumes(Vec<VolumeInfo>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostErrorKind {
    /// The command came from a leadership older than one the host has obeyed.
    StaleLeadership,
    /// The command names a pool, volume, VM or network the host does not have.
    NotFound,
    /// The command cannot be carried out as given (a bad name, a size of zero, ...).
    Invalid,
    /// Something already exists in a way that contradicts the command.
    Conflict,
    /// The operation did not finish in time (a hung mount, a guest that ignores shutdown).
    Timeout,
    /// The operating system or hypervisor refused; the message carries its words.
    Failed,
}

/// A command that failed, with a message the operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostError {
    pub kind: HostErrorKind,
    pub message: String,
}

impl HostError {
    pub fn new(kind: HostErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HostError {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: CommandId,
    pub outcome: Result<CommandOutput, HostError>,
}

// ---------------------------------------------------------------------------------------
// Operator API

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApiRequest {
    ClusterStatus,
    /// A read answered by whichever node receives it, from its own copy of the desired
    /// state, without the leader: available during elections, possibly behind, and with
    /// reported state unknown (`qvctl --stale`).
    Stale(#[serde(deserialize_with = "codec::nested")] Box<ApiRequest>),
    /// Adds a node started with `qvdc server --join`: first as a learner that copies the log
    /// (or a snapshot), then as a voter once it has caught up. Answered with the new status.
    ClusterAddNode {
        node_id: u64,
        addr: String,
    },
    /// Removes a node (voter or learner) from the membership. Answered with the new status.
    ClusterRemoveNode {
        node_id: u64,
    },
    HostList,
    /// `request_id` makes the request safe to retry: the same id always gets the first
    /// answer and is applied at most once.
    PoolCreate {
        request_id: String,
        spec: PoolSpec,
        hosts: Vec<String>,
    },
    PoolShow {
        name: String,
    },
    PoolList,
    /// Defines a VM on `host`, or on a host the leader picks when `host` is `None`. The VM's
    /// id is assigned by the control plane (`spec.id` is ignored).
    VmCreate {
        request_id: String,
        spec: VmSpec,
        host: Option<String>,
        start: bool,
    },
    /// Sets whether the VM should run (start / stop).
    VmSetPower {
        request_id: String,
        name: String,
        power: DesiredPower,
    },
    /// Reboots a running VM now (nothing changes in desired state); once per request id,
    /// which its host remembers.
    VmReboot {
        request_id: String,
        name: String,
    },
    /// Stops the VM at once and keeps it stopped.
    VmForceOff {
        request_id: String,
        name: String,
    },
    /// Removes the VM once its host has destroyed and undefined its domain (the VM is
    /// stopped first; Unavailable while the host does not answer). Its volumes stay.
    VmDelete {
        request_id: String,
        name: String,
    },
    VmShow {
        name: String,
    },
    VmList,
    PoolAssign {
        request_id: String,
        pool: String,
        hosts: Vec<String>,
    },
    /// The hosts unmount the pool; its data stays.
    PoolUnassign {
        request_id: String,
        pool: String,
        hosts: Vec<String>,
    },
    /// Every host unmounts the pool; its data and volume files stay on the storage.
    PoolDelete {
        request_id: String,
        pool: String,
    },
    /// The files in a pool as a host sees them (the first healthy one unless `host` is given).
    PoolFiles {
        pool: String,
        host: Option<String>,
    },
    /// In a local pool, `host` names the host the volume is made on (it may be left out
    /// when the pool has one host); in a shared pool it must be `None`.
    VolumeCreate {
        request_id: String,
        pool: String,
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
        host: Option<String>,
    },
    VolumeResize {
        request_id: String,
        pool: String,
        name: String,
        size_bytes: u64,
    },
    VolumeDelete {
        request_id: String,
        pool: String,
        name: String,
    },
    VolumeList {
        pool: String,
    },
    HostShow {
        host: String,
    },
    NetworkCreate {
        request_id: String,
        spec: NetworkSpec,
        hosts: Vec<String>,
    },
    NetworkAssign {
        request_id: String,
        network: String,
        hosts: Vec<String>,
    },
    NetworkUnassign {
        request_id: String,
        network: String,
        hosts: Vec<String>,
    },
    NetworkDelete {
        request_id: String,
        network: String,
    },
    NetworkShow {
        network: String,
    },
    NetworkList,
    HostMaintenance {
        request_id: String,
        host: String,
        on: bool,
    },
    /// Adds a certificate to the cluster's deny list: every node refuses it from then on and
    /// closes the connections that presented it.
    CertRevoke {
        request_id: String,
        certificate: RevokedCertificate,
    },
    /// The deny list.
    CertRevoked,
    /// Where `spec` would be placed and why each other host would not do, without creating
    /// anything (`vm create --dry-run`). With `host`, whether that host would take it.
    VmPlacement {
        spec: VmSpec,
        host: Option<String>,
    },
    /// The hosts that still have `pool` mounted although it is no longer assigned to them
    /// (deleted, or unassigned): what `pool delete --wait` waits for.
    PoolRemnants {
        pool: String,
    },
    /// Brings domain `domain`, which `host` reports and qvdc does not manage, under
    /// management as a VM of the same name. Its disks must be files directly in pools mounted
    /// on that host; they become volumes. Answered with `VmCreated`.
    /// With `name`, the domain (which must be shut off: libvirt renames no running one) is
    /// renamed to it first.
    VmAdopt {
        request_id: String,
        host: String,
        domain: String,
        name: Option<String>,
    },
    /// Gives a VM back to its host untouched: its host forgets that qvdc manages the domain
    /// and its disks, then the VM and its volumes' records are removed. The guest keeps
    /// running as it was (Unavailable while the host does not answer).
    VmRelease {
        request_id: String,
        name: String,
    },
    /// A consistent snapshot of the whole desired state, taken through the leader after
    /// everything committed before the request was applied: a backup file
    /// (`qvctl cluster snapshot save`). Answered with [`ApiResponse::Backup`].
    ClusterBackup,
    /// [`ApiRequest::VmCreate`] with an HA policy, created with it in one step.
    VmCreateHa {
        request_id: String,
        spec: VmSpec,
        host: Option<String>,
        start: bool,
        ha: HaPolicy,
    },
    /// Changes a VM's HA policy.
    VmSetHa {
        request_id: String,
        name: String,
        ha: HaPolicy,
    },
    /// The HA policy and status of one VM, or of all. Answered with [`ApiResponse::VmHa`].
    VmHa {
        name: Option<String>,
    },
    /// Forgets a host the control plane has lost: its record and its pool and network
    /// assignments go (a host that comes back registers as new, with nothing assigned).
    /// Refused while it is heard from or still has VMs.
    HostRemove {
        request_id: String,
        host: String,
    },
    /// Moves a VM to host `to` (or one placement picks): a running VM live, when both hosts
    /// can migrate, else by shutting it down and starting it there. Answered with
    /// [`ApiResponse::Moves`] holding the move.
    VmMigrate {
        request_id: String,
        name: String,
        to: Option<String>,
    },
    /// The moves under way, the last failed one of each VM, and each host in maintenance
    /// with what it still runs. Answered with [`ApiResponse::Moves`].
    Moves,
    /// The changes applied to desired state from `since` on (the audit trail, by sequence
    /// number) and what the leader learned of reported state after `reported`, waiting up to
    /// `wait_ms` for the first one (a blocking query: ask again with the cursors of the
    /// answer to follow). Answered with [`ApiResponse::Events`].
    Events {
        since: u64,
        reported: Option<ReportedCursor>,
        wait_ms: u32,
        max: u32,
    },
    /// How many changes the audit trail keeps (the oldest go first).
    SetAuditRetention {
        request_id: String,
        entries: u32,
    },
}

impl ApiRequest {
    /// Assigns `pool` to `hosts` (`assign`) or takes it from them.
    pub fn pool_hosts(request_id: String, pool: String, hosts: Vec<String>, assign: bool) -> Self {
        if assign {
            ApiRequest::PoolAssign {
                request_id,
                pool,
                hosts,
            }
        } else {
            ApiRequest::PoolUnassign {
                request_id,
                pool,
                hosts,
            }
        }
    }

    /// The request's kind in snake case (`pool_create`), for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiRequest::ClusterStatus => "cluster_status",
            ApiRequest::Stale(_) => "stale",
            ApiRequest::ClusterAddNode { .. } => "cluster_add_node",
            ApiRequest::ClusterRemoveNode { .. } => "cluster_remove_node",
            ApiRequest::HostList => "host_list",
            ApiRequest::PoolCreate { .. } => "pool_create",
            ApiRequest::PoolShow { .. } => "pool_show",
            ApiRequest::PoolList => "pool_list",
            ApiRequest::VmCreate { .. } => "vm_create",
            ApiRequest::VmSetPower { .. } => "vm_set_power",
            ApiRequest::VmReboot { .. } => "vm_reboot",
            ApiRequest::VmForceOff { .. } => "vm_force_off",
            ApiRequest::VmDelete { .. } => "vm_delete",
            ApiRequest::VmShow { .. } => "vm_show",
            ApiRequest::VmList => "vm_list",
            ApiRequest::PoolAssign { .. } => "pool_assign",
            ApiRequest::PoolUnassign { .. } => "pool_unassign",
            ApiRequest::PoolDelete { .. } => "pool_delete",
            ApiRequest::PoolFiles { .. } => "pool_files",
            ApiRequest::VolumeCreate { .. } => "volume_create",
            ApiRequest::VolumeResize { .. } => "volume_resize",
            ApiRequest::VolumeDelete { .. } => "volume_delete",
            ApiRequest::VolumeList { .. } => "volume_list",
            ApiRequest::HostShow { .. } => "host_show",
            ApiRequest::NetworkCreate { .. } => "network_create",
            ApiRequest::NetworkAssign { .. } => "network_assign",
            ApiRequest::NetworkUnassign { .. } => "network_unassign",
            ApiRequest::NetworkDelete { .. } => "network_delete",
            ApiRequest::NetworkShow { .. } => "network_show",
            ApiRequest::NetworkList => "network_list",
            ApiRequest::HostMaintenance { .. } => "host_maintenance",
            ApiRequest::CertRevoke { .. } => "cert_revoke",
            ApiRequest::CertRevoked => "cert_revoked",
            ApiRequest::VmPlacement { .. } => "vm_placement",
            ApiRequest::PoolRemnants { .. } => "pool_remnants",
            ApiRequest::VmAdopt { .. } => "vm_adopt",
            ApiRequest::VmRelease { .. } => "vm_release",
            ApiRequest::ClusterBackup => "cluster_backup",
            ApiRequest::VmCreateHa { .. } => "vm_create_ha",
            ApiRequest::VmSetHa { .. } => "vm_set_ha",
            ApiRequest::VmHa { .. } => "vm_ha",
            ApiRequest::HostRemove { .. } => "host_remove",
            ApiRequest::VmMigrate { .. } => "vm_migrate",
            ApiRequest::Moves => "moves",
            ApiRequest::Events { .. } => "events",
            ApiRequest::SetAuditRetention { .. } => "set_audit_retention",
        }
    }
}

/// Where a subscriber stands in the leader's reported-state changes: they are numbered per
/// leadership (by its Raft term), so a cursor of an earlier leadership asks for a resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedCursor {
    pub term: u64,
    pub next: u64,
}

/// One applied change to desired state, as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Its place in the trail: consecutive from 1, so a reader sees any gap.
    pub seq: u64,
    /// When the leader proposed it, in milliseconds since the Unix epoch by its clock.
    pub at_ms: u64,
    /// The name in the certificate of the operator who asked; `None` for qvdc's own changes
    /// (host registration, HA restarts, moves).
    pub by: Option<String>,
    /// The node that passed the operator's request on to the leader.
    pub via: Option<u64>,
    pub request_id: Option<String>,
    /// What changed, in words: "pool create shared-nfs (nfs) on host-1, host-2".
    pub change: String,
    pub outcome: AuditOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditOutcome {
    Applied,
    /// It was in effect already.
    Unchanged,
    /// Refused when applied, with the reason.
    Refused(String),
}

/// Something the leader learned from hosts' reports: an object's state on a host changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedEvent {
    pub seq: u64,
    pub at_ms: u64,
    /// `host/NAME`, `pool/NAME@HOST`, `vm/NAME` or `network/NAME@HOST`.
    pub object: String,
    /// Its state now ("Ready", "FAILED: Connection refused", "Running on host-2"); `None`
    /// once the object is gone.
    pub state: Option<String>,
}

/// An answer to [`ApiRequest::Events`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsPage {
    /// The node that answered (the leader).
    pub leader: u64,
    pub changes: Vec<AuditRecord>,
    /// Ask with `since` = this to continue.
    pub next: u64,
    /// The sequence number the next change will get (the trail's end).
    pub latest: u64,
    /// Changes between `since` and the first returned that the trail no longer keeps, and
    /// why; `None` when nothing was skipped.
    pub gap: Option<String>,
    pub reported: Vec<ReportedEvent>,
    /// Ask with this to continue.
    pub reported_cursor: ReportedCursor,
    /// Set when `reported` is the state of everything now rather than changes after the
    /// cursor asked for (the first answer, a new leader, or a subscriber that fell behind
    /// the leader's bounded buffer), saying which.
    pub resync: Option<String>,
}

/// How a VM moves between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMode {
    /// Live migration: the guest runs on, paused only for the last copy of its memory.
    Live,
    /// The guest is shut down on its host and started on the other.
    Cold,
}

impl std::fmt::Display for MigrationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MigrationMode::Live => "live",
            MigrationMode::Cold => "cold",
        })
    }
}

/// One VM's move: under way, or the last that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveView {
    pub vm: String,
    pub from: String,
    pub to: String,
    pub mode: MigrationMode,
    /// What the move is doing or waiting for; for a failed one, why it failed.
    pub status: String,
    pub failed: bool,
}

/// A host in maintenance and what still keeps it from being empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvacuationView {
    pub host: String,
    /// Its VMs that should run, with what is happening to each ("moving live to host-2",
    /// "no other host fits: ...").
    pub remaining: Vec<(String, String)>,
    /// Running domains qvdc does not manage, which maintenance leaves where they are.
    pub unmanaged: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovesView {
    pub moves: Vec<MoveView>,
    pub evacuations: Vec<EvacuationView>,
}

/// Where a VM would go: the host placement picks (or the one asked for, if it fits), each
/// host's fit, and why the cluster would refuse the VM whatever the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub vm: String,
    /// The host the request named, if any.
    pub asked: Option<String>,
    pub chosen: Option<String>,
    pub hosts: Vec<HostFit>,
    /// The cluster would refuse the VM itself (a disk that is no volume, a name in use...).
    pub refused: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFit {
    pub host: String,
    pub fits: bool,
    pub reason: Option<String>,
    pub free_memory_bytes: u64,
}

/// A certificate on the cluster's deny list. The serial decides; role and name are what
/// the certificate said, for the operator reading the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCertificate {
    /// As [`crate::tls::serial_hex`] writes it.
    pub serial: String,
    pub role: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApiResponse {
    ClusterStatus(ClusterStatus),
    Hosts(Vec<HostView>),
    PoolCreated {
        name: String,
    },
    Pool(PoolView),
    Pools(Vec<PoolView>),
    VmCreated {
        name: String,
        id: String,
        host: String,
    },
    Vm(VmView),
    Vms(Vec<VmView>),
    /// The request was carried out and has nothing to report.
    Done,
    Files {
        pool: String,
        host: String,
        files: Vec<VolumeInfo>,
    },
    Volumes(Vec<VolumeView>),
    Host(HostDetail),
    Network(NetworkView),
    Networks(Vec<NetworkView>),
    Revoked(Vec<RevokedCertificate>),
    Placement(Placement),
    /// Hosts that still have a pool mounted that is not assigned to them, with their
    /// liveness (an unreachable host cannot unmount until it is back).
    Remnants {
        pool: String,
        hosts: Vec<(String, Liveness)>,
        /// Registered hosts this leader has had no heartbeat from yet (it took over since):
        /// whether they still have the pool mounted is not known.
        unheard: Vec<String>,
    },
    /// A backup file (its layout is `qvdc_raft::backup`'s) and where in the log it stands.
    Backup {
        index: u64,
        term: u64,
        file: Vec<u8>,
    },
    /// HA policy and status, by VM name.
    VmHa(Vec<VmHaView>),
    Moves(MovesView),
    Events(EventsPage),
}

/// One host: what it has, whether it is alive, and what is assigned to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDetail {
    pub host: HostView,
    pub pools: Vec<HostPool>,
    pub vms: Vec<VmView>,
}

/// A pool as one host reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPool {
    pub pool: String,
    pub health: Health,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiErrorKind {
    /// The request is invalid; nothing was changed.
    Invalid,
    NotFound,
    AlreadyExists,
    /// No leader is known right now; retry shortly.
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: u64,
    pub addr: String,
    pub voter: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// Last log index covered by this node's latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Entries up to this index are gone from this node's log (they live in the snapshot).
    pub purged_index: Option<u64>,
    /// Fingerprint of this node's applied desired state; equal on nodes at the same index.
    pub state_digest: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// Heartbeating to the current leader.
    Ready,
    /// Missed heartbeats, or not connected to the current leader yet.
    Unreachable,
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Liveness::Ready => "Ready",
            Liveness::Unreachable => "Unreachable",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub host_id: String,
    pub inventory: Inventory,
    pub liveness: Liveness,
    /// In maintenance: runs what it has, gets no new VMs.
    pub maintenance: bool,
}

/// Whether a VM should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredPower {
    Running,
    Stopped,
}

impl std::fmt::Display for DesiredPower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DesiredPower::Running => "running",
            DesiredPower::Stopped => "stopped",
        })
    }
}

/// A VM as the operator sees it: what should be, and what its host last said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmView {
    pub spec: VmSpec,
    pub host: String,
    /// `false` for a domain qvdc does not manage (defined on its host by someone else):
    /// the host reports it, qvdc shows it and never starts, stops or removes it. Its
    /// `desired` then only mirrors its power, and its spec has no id or NICs and lists only
    /// the disks that lie in pools (what adopting it would make volumes of).
    pub managed: bool,
    pub desired: DesiredPower,
    /// As the host last reported it; `Unknown` without a fresh report.
    pub power: PowerState,
    pub reason: String,
    /// The last failure closing the gap (a start that failed, a conflicting domain).
    pub error: Option<String>,
}

impl VmView {
    /// A domain `host` reports that qvdc does not manage, as the host sees it.
    pub fn unmanaged(host: &str, report: &VmReport) -> Self {
        let desired = match report.power {
            PowerState::Running | PowerState::Paused => DesiredPower::Running,
            _ => DesiredPower::Stopped,
        };
        Self {
            spec: VmSpec {
                id: String::new(),
                name: report.name.clone(),
                vcpus: report.vcpus,
                memory_bytes: report.memory_bytes,
                disks: report
                    .disks
                    .iter()
                    .filter_map(|d| d.volume.clone())
                    .collect(),
                nics: Vec::new(),
            },
            host: host.to_owned(),
            managed: false,
            desired,
            power: report.power,
            reason: report.reason.clone(),
            error: None,
        }
    }
}

/// A network as the operator sees it: its definition and each host's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    pub spec: NetworkSpec,
    pub hosts: Vec<NetworkHostView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkHostView {
    pub host_id: String,
    pub up: bool,
    pub error: Option<String>,
}

/// One host's part of a pool, as the leader last heard it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolHostView {
    pub host_id: String,
    pub health: Health,
    pub mounted: bool,
    pub capacity: Capacity,
    pub volume_count: u64,
    pub error: Option<String>,
}

/// A pool as the operator sees it: its definition and the aggregate of host reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub spec: PoolSpec,
    pub health: Health,
    /// For a shared pool, as seen by the healthy host with the least space available (not
    /// a sum: hosts share the storage); for a local pool, the sum of its healthy hosts' own
    /// storage (each host's is in `hosts`).
    pub capacity: Capacity,
    pub healthy_hosts: Vec<String>,
    pub failed_hosts: Vec<String>,
    pub hosts: Vec<PoolHostView>,
    pub volumes: Vec<VolumeView>,
}

/// A volume qvdc manages in a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    pub format: VolumeFormat,
    pub size_bytes: u64,
    /// The host it lives on, in a local pool.
    pub host: Option<String>,
    /// A host confirmed the file exists at this size.
    pub ready: bool,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_frame_body, from_bytes, to_bytes, CodecError, NESTING_DEPTH_MAX};

    /// A reader refuses a request by its first byte before decoding it (`needs_role`): the
    /// byte must be the variant each request encodes as.
    #[test]
    fn request_tags_are_their_wire_variants() {
        let requests = [
            Request::Raft(vec![1]),
            Request::Api(ApiRequest::ClusterStatus),
            Request::Forwarded(ApiRequest::HostList),
            Request::ForwardedFor {
                operator: "alice".into(),
                serial: "01".into(),
                request: ApiRequest::HostList,
            },
            Request::Host(HostMessage::InventoryChanged {
                host_id: "h".into(),
                inventory: Inventory::default(),
            }),
        ];
        for request in requests {
            let body = to_bytes(&request).unwrap();
            assert_eq!(body[0], request.tag(), "{request:?}");
            assert!(Request::needs_role(request.tag()).is_some());
        }
        assert_eq!(Request::needs_role(5), None);
    }

    /// A frame of nothing but nested stale reads: before the nesting bound, 10 KB of them
    /// overflowed a 2 MiB stack while decoding (and a 100 KB one sent by a host certificate
    /// aborted a node). Now it is a typed error, at any size up to the frame limit.
    #[test]
    fn deeply_nested_stale_reads_are_refused_not_recursed_into() {
        for depth in [NESTING_DEPTH_MAX as usize + 1, 10_000, 1_000_000] {
            let mut frame = crate::protocol::PROTOCOL_VERSION.to_be_bytes().to_vec();
            frame.push(Request::Api(ApiRequest::ClusterStatus).tag());
            frame.extend(std::iter::repeat_n(1u8, depth)); // ApiRequest::Stale, over and over
            frame.push(0); // ApiRequest::ClusterStatus
            let err = decode_frame_body::<Request>(&frame).unwrap_err();
            assert!(
                matches!(&err, CodecError::Malformed(m) if m.contains("nested more than")),
                "{err}"
            );
        }
        // As deep as the bound allows still decodes.
        let mut request = ApiRequest::ClusterStatus;
        for _ in 0..NESTING_DEPTH_MAX {
            request = ApiRequest::Stale(Box::new(request));
        }
        let body = to_bytes(&request).unwrap();
        assert_eq!(from_bytes::<ApiRequest>(&body).unwrap(), request);
        // The bound counts depth, not how many nested messages a decode met before.
        for _ in 0..3 {
            assert_eq!(from_bytes::<ApiRequest>(&body).unwrap(), request);
        }
    }

    /// Variants are numbered by position on the wire (ADR 2: enums only gain variants at the
    /// end). A variant inserted mid-enum renumbers the ones after it, and a peer of the same
    /// protocol version reads one reply as another: this pins the numbers.
    #[test]
    fn response_variants_keep_their_wire_numbers() {
        let reason = || "r".to_string();
        let hint = LeaderHint {
            node_id: 1,
            addr: "a".into(),
        };
        let numbered = [
            (0u8, Response::Raft(vec![])),
            (1, Response::Api(Ok(ApiResponse::Done))),
            (2, Response::Host(HostReply::HeartbeatAck)),
            (3, Response::NotLeader { leader: None }),
            (4, Response::Forbidden { reason: reason() }),
            (5, Response::Malformed { reason: reason() }),
            (
                6,
                Response::ApiPassedOn {
                    leader: hint,
                    result: Ok(ApiResponse::Done),
                },
            ),
        ];
        for (number, response) in numbered {
            let body = to_bytes(&response).unwrap();
            assert_eq!(body[0], number, "{response:?} is variant {}", body[0]);
        }
    }

    /// The host protocol's variants keep their numbers too, and a variant a peer does not
    /// know is refused as malformed: that is how a node of the previous release answers
    /// `WhoLeads`, which its enum lacks, and the host takes that answer for "no idea".
    #[test]
    fn host_variants_keep_their_wire_numbers_and_an_unknown_one_is_malformed() {
        let host_id = || "host-1".to_string();
        let messages = [
            (
                3u8,
                HostMessage::Capabilities {
                    host_id: host_id(),
                    leases: true,
                    migration_uri: None,
                },
            ),
            (4, HostMessage::WhoLeads { host_id: host_id() }),
            (
                5,
                HostMessage::WatchLeader {
                    host_id: host_id(),
                    newer_than: Leadership { term: 6, node: 2 },
                },
            ),
        ];
        for (number, message) in messages {
            let body = to_bytes(&message).unwrap();
            assert_eq!(body[0], number, "{message:?} is variant {}", body[0]);
        }
        let replies = [
            (3u8, HostReply::Lease { fenced: None }),
            (
                4,
                HostReply::Leader {
                    leadership: Some(Leadership { term: 6, node: 2 }),
                    addr: Some("127.0.0.1:7101".into()),
                },
            ),
        ];
        for (number, reply) in replies {
            let body = to_bytes(&reply).unwrap();
            assert_eq!(body[0], number, "{reply:?} is variant {}", body[0]);
            assert_eq!(from_bytes::<HostReply>(&body).unwrap(), reply);
        }
        let unknown = [6u8, 8, b'h', b'o', b's', b't', b'-', b'1'];
        assert!(matches!(
            from_bytes::<HostMessage>(&unknown),
            Err(CodecError::Malformed(_))
        ));
    }
}
