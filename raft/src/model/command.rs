//! Commands, the application data of Raft log entries; their outcomes; and the errors that
//! refuse them. Persisted in the log and in snapshots: variant and field order is the
//! encoding.

use std::sync::Arc;

use qvdc_transport::protocol::{
    DesiredPower, HaPolicy, Inventory, MigrationMode, NetworkSpec, PoolSpec, RevokedCertificate,
    VmSpec, VolumeFormat,
};
use serde::{Deserialize, Serialize};

use super::{
    AdoptedVolume, RequestDigest, NAME_BYTES_MAX, PATH_BYTES_MAX, POOL_HOSTS_MAX,
    REQUEST_ID_BYTES_MAX,
};

/// A change to desired state; the application data of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A host registered or re-registered with (possibly new) inventory.
    RegisterHost {
        host_id: String,
        inventory: Inventory,
    },
    /// An operator's request: applied at most once per request id; a retry gets the
    /// outcome of the first application.
    Once {
        request_id: String,
        /// The digest of the operator's request, which the id is bound to.
        digest: RequestDigest,
        #[serde(deserialize_with = "qvdc_transport::codec::nested")]
        command: Box<Command>,
    },
    CreatePool {
        spec: PoolSpec,
        hosts: Vec<String>,
    },
    /// A VM placed on `host`.
    CreateVm {
        spec: VmSpec,
        host: String,
        power: DesiredPower,
    },
    SetVmPower {
        name: String,
        power: DesiredPower,
    },
    DeleteVm {
        name: String,
    },
    AssignPool {
        pool: String,
        hosts: Vec<String>,
    },
    /// The hosts unmount the pool; its data stays.
    UnassignPool {
        pool: String,
        hosts: Vec<String>,
    },
    /// Every host unmounts the pool; its data and volume files stay on the storage.
    DeletePool {
        pool: String,
    },
    /// In a local pool `host` is the host whose storage holds it; in a shared pool `None`.
    CreateVolume {
        pool: String,
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
        host: Option<String>,
    },
    /// Grows a volume.
    ResizeVolume {
        pool: String,
        name: String,
        size_bytes: u64,
    },
    DeleteVolume {
        pool: String,
        name: String,
    },
    CreateNetwork {
        spec: NetworkSpec,
        hosts: Vec<String>,
    },
    /// Puts a host in or out of maintenance.
    SetMaintenance {
        host: String,
        on: bool,
    },
    AssignNetwork {
        network: String,
        hosts: Vec<String>,
    },
    UnassignNetwork {
        network: String,
        hosts: Vec<String>,
    },
    DeleteNetwork {
        network: String,
    },
    /// Puts a certificate on the deny list.
    RevokeCertificate(RevokedCertificate),
    /// Commands proposed at about the same time, carried by one log entry and applied in
    /// order, each on its own: concurrent writes share one append, one fsync and one
    /// replication round instead of paying for each. Shared, because openraft clones an
    /// entry for every follower it replicates to and for applying it.
    Batch(#[serde(deserialize_with = "qvdc_transport::codec::nested")] Arc<[Command]>),
    /// A domain its host reported without qvdc's metadata becomes VM `spec` on `host`, and
    /// the files its disks are become `volumes` (those not yet volumes). The domain is
    /// named by its libvirt UUID, so no other domain of that name is ever taken for it.
    AdoptVm {
        spec: VmSpec,
        host: String,
        power: DesiredPower,
        uuid: String,
        volumes: Vec<AdoptedVolume>,
    },
    /// First step of giving a VM back to its host: from now on qvdc leaves its domain alone.
    /// The host then forgets the VM, and [`Command::ForgetVm`] removes the record.
    ReleaseVm {
        name: String,
    },
    /// Removes a VM being released, and the records of its volumes no other VM uses: its
    /// host has forgotten them, and the guest runs on, unmanaged.
    ForgetVm {
        name: String,
        /// The volumes its host let go of: exactly those the VM leaves with now, or the
        /// command is refused (another VM took or dropped one meanwhile) and the release is
        /// redone.
        volumes: Vec<qvdc_transport::protocol::VmDisk>,
    },
    /// [`Command::CreateVm`] with an HA policy.
    CreateHaVm {
        spec: VmSpec,
        host: String,
        power: DesiredPower,
        ha: HaPolicy,
    },
    SetVmHa {
        name: String,
        ha: HaPolicy,
    },
    /// HA: the VM's host `from` was lost, so the VM now belongs to `to`, which defines and
    /// starts it. Refused if the VM moved meanwhile, so a restart is decided once.
    FailOverVm {
        name: String,
        from: String,
        to: String,
    },
    /// Forgets a lost host: its record, its pool and network assignments, and the records of
    /// the volumes on its own storage. Refused while VMs are on it.
    RemoveHost {
        host: String,
    },
    /// A VM starts moving to host `to`; it stays its host's until [`Command::FinishMove`].
    BeginMove {
        name: String,
        to: String,
        mode: MigrationMode,
    },
    /// The VM left `from` and is `to`'s now: it runs there (live) or is shut off at `from`
    /// (cold, and `to` starts it). Refused unless that move is under way.
    FinishMove {
        name: String,
        from: String,
        to: String,
    },
    /// The move to `to` is given up, for `reason`; the VM stays where it is.
    AbandonMove {
        name: String,
        to: String,
        reason: String,
    },
    /// `command` (a request or one of qvdc's own changes) with who asked for it and when,
    /// applied as `command` is and recorded in the audit trail. `by` is the operator
    /// certificate's name (`None` for qvdc's own), `via` the node that passed the request on.
    /// Proposed only once the cluster runs at [`super::AUDIT_LEVEL`].
    Audited {
        by: Option<String>,
        via: Option<u64>,
        at_ms: u64,
        #[serde(deserialize_with = "qvdc_transport::codec::nested")]
        command: Box<Command>,
    },
    /// Every member runs a release of at least `level`, so commands of that level may be
    /// proposed from now on. Never lowered. Proposed at `at_ms` (for the trail, which
    /// begins with it).
    SetClusterLevel {
        level: u32,
        at_ms: u64,
    },
    /// How many changes the audit trail keeps.
    SetAuditRetention(u32),
}

/// What applying a command did; the application response of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Applied,
    /// The command changed nothing (it was already in effect).
    Unchanged,
    Rejected(ValidationError),
    /// The outcome of each command of a [`Command::Batch`], in order.
    Batch(Vec<Outcome>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ValidationError {
    #[error("{what} name must not be empty")]
    EmptyName { what: String },
    #[error("{what} name {name:?} is longer than {NAME_BYTES_MAX} bytes")]
    NameTooLong { what: String, name: String },
    #[error("{what} name {name:?} may only contain letters, digits, '.', '_' and '-', and must not start with '.' or '-'")]
    BadName { what: String, name: String },
    #[error("pool {0:?} already exists; pick another name or delete the existing pool first")]
    PoolExists(String),
    #[error("a pool needs at least one host; pass --hosts h1,h2,...")]
    NoHosts,
    #[error("host {0:?} is listed twice")]
    DuplicateHost(String),
    #[error("a pool may be assigned to at most {POOL_HOSTS_MAX} hosts")]
    TooManyHosts,
    #[error("unknown host(s): {}; `qvctl host list` shows the registered hosts", .0.join(", "))]
    UnknownHosts(Vec<String>),
    #[error("pool path {0:?} must be an absolute path")]
    RelativePath(String),
    #[error("pool path is longer than {PATH_BYTES_MAX} bytes")]
    PathTooLong,
    #[error("{0}")]
    BadSource(String),
    #[error("VM {0:?} already exists; pick another name or delete the existing VM first")]
    VmExists(String),
    #[error("no VM named {0:?}; `qvctl vm list` shows the VMs")]
    NoSuchVm(String),
    #[error("{0}")]
    BadVm(String),
    #[error("no pool named {0:?}; `qvctl pool list` shows the pools")]
    NoSuchPool(String),
    #[error("{0}")]
    InUse(String),
    #[error("volume {pool}/{name} already exists; pick another name or delete it first")]
    VolumeExists { pool: String, name: String },
    #[error("no volume {name:?} in pool {pool}; `qvctl volume list {pool}` shows its volumes")]
    NoSuchVolume { pool: String, name: String },
    #[error("{0}")]
    BadVolume(String),
    #[error("network {0:?} already exists; pick another name or delete it first")]
    NetworkExists(String),
    #[error("no network named {0:?}; `qvctl network list` shows the networks")]
    NoSuchNetwork(String),
    #[error("{0}")]
    BadNetwork(String),
    #[error("request id must be 1 to {REQUEST_ID_BYTES_MAX} bytes")]
    BadRequestId,
    #[error("{0}")]
    BadCertificate(String),
    #[error("request id {0:?} was already used for a different request; a retry must repeat its request exactly: use a new request id (or leave out --request-id) for a new request")]
    RequestIdReused(String),
    #[error("a request or batch cannot contain another request or batch")]
    NestedRequest,
    #[error("inventory refused: {0}")]
    BadInventory(String),
    #[error("the cluster already holds {max} {what}, its limit; delete some first")]
    TooMany { what: String, max: usize },
    #[error("{0}")]
    BadRetention(String),
}
