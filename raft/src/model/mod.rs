//! The desired-state model: what should exist in the cluster. Commands are validated against
//! the current state before they are proposed, and applied deterministically once committed.
//!
//! Everything here is plain data and pure functions; the Raft state machine (`store`) holds one
//! `DesiredState` and feeds it committed commands.
//!
//! By concern: `records` (what is kept of each object), `state` (the desired state, its
//! per-host index and its decoding), `requests` (the request log and request keys),
//! `command` (commands, outcomes and validation errors), `validate` (whether a command may
//! enter the log), `apply` (what a committed command changes) and `queries` (lookups and the
//! rules that follow from the state). Every public item is re-exported here.

mod apply;
mod audit;
mod command;
mod queries;
mod records;
mod requests;
mod state;
#[cfg(test)]
mod tests;
mod validate;

pub use imbl::{ordmap::DiffItem, OrdMap, OrdSet};

pub use audit::{
    describe, Audit, Caller, AUDIT_LEVEL, AUDIT_RETENTION_DEFAULT, AUDIT_RETENTION_MAX,
    AUDIT_TEXT_BYTES_MAX, CLUSTER_LEVEL,
};
pub use command::{Command, Outcome, ValidationError};
use queries::fnv_digest;
pub use records::{
    AdoptedVolume, FailedMove, HostRecord, Move, NetworkRecord, PoolRecord, VmRecord, VolumeRecord,
};
pub use requests::{RequestDigest, RequestKey, RequestLog};
pub use state::{format_2, DesiredState};
pub use validate::{validate_name, BLOCK_FS_TYPES, MOVE_REASON_BYTES_MAX};

pub use qvdc_transport::limits::{
    NAME_BYTES_MAX, PATH_BYTES_MAX, VM_DISKS_MAX, VM_MEMORY_BYTES_MIN, VM_NICS_MAX, VM_VCPUS_MAX,
    VOLUME_BYTES_MAX,
};

pub const POOL_HOSTS_MAX: usize = 1024;
/// Operator requests whose results are remembered for retries; older ones are forgotten.
pub const REQUESTS_REMEMBERED_MAX: usize = 10_000;
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Objects of each kind the desired state may hold. Every node holds the whole state in
/// memory and in every snapshot: these keep both bounded (a full state is a few hundred
/// MiB at most) while leaving room far beyond today's largest clusters.
pub const HOSTS_MAX: usize = 16_384;
pub const POOLS_MAX: usize = 100_000;
pub const VMS_MAX: usize = 100_000;
pub const NETWORKS_MAX: usize = 10_000;
pub const VOLUMES_PER_POOL_MAX: usize = 100_000;
/// Certificates the deny list may hold. Certificates expire (a year by default), so a
/// cluster that needs more has issued them for too long.
pub const REVOKED_MAX: usize = 100_000;
/// The longest certificate name a revocation records (an X.520 common name is at most 64
/// characters of up to 4 bytes).
pub const REVOKED_NAME_BYTES_MAX: usize = 256;
/// The largest command one operator request or host registration may propose, encoded. A
/// log entry batches commands up to [`BATCH_BYTES_MAX`], and one replication message
/// carries up to `ENTRIES_PER_APPEND_MAX` entries, which must fit the transport's frame.
pub const COMMAND_BYTES_MAX: usize = 192 * 1024;
/// The largest batch of commands in one log entry, encoded (a lone command may reach
/// [`COMMAND_BYTES_MAX`]).
pub const BATCH_BYTES_MAX: usize = 192 * 1024;
const _: () = assert!(
    crate::ENTRIES_PER_APPEND_MAX as usize * BATCH_BYTES_MAX
        <= qvdc_transport::codec::FRAME_BYTES_MAX * 3 / 4,
    "a replication message of full entries fits a frame, with room for its envelope"
);
