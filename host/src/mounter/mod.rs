//! Pool storage on a host: the `Mounter` trait (mount, inspect and unmount pool filesystems;
//! create, resize, delete and list the volume files in them), its real implementation on
//! mount(2), mount(8), statvfs(3) and qemu-img, and a simulated one for the deterministic
//! simulation.
//!
//! Real filesystem calls can block forever (a dead NFS server, a hung FUSE daemon). The real
//! mounter runs each one on a blocking thread and never starts a second call on a path whose
//! previous call has not returned, so a hung mount costs one thread, not one per heartbeat.
//! Callers bound the wait with a timeout (see `pools`), which is where a hang becomes a report.
//!
//! The trait and what its implementations share are here; `real` mounts on this machine and
//! `sim` keeps an in-memory table. `tests` holds the conformance suite both must pass.

mod real;
mod sim;
#[cfg(test)]
mod tests;

use std::{
    future::Future,
    path::{Path, PathBuf},
};

use qvdc_transport::protocol::{
    Capacity, HostError, HostErrorKind, PoolSource, VolumeFormat, VolumeInfo,
};

pub use real::RealMounter;
pub use sim::SimMounter;

/// Directory entries counted as volumes at most; a pool with more reports this many.
pub const VOLUME_COUNT_MAX: u64 = 1_000_000;
/// The directory in a pool that marks the volume files qvdc created: `NAME` in it for the
/// volume `NAME`. A file in the pool without its mark is someone else's: qvdc does not
/// resize, overwrite or delete it. The marks live on the pool's storage, with the volumes,
/// so every host of a shared pool sees them. Volume names cannot start with '.', so no
/// volume can be called this.
pub const OWNERSHIP_DIR: &str = ".qvdc-volumes";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    #[error(
        "source {path} is not usable on this host: {reason}; create it or fix the pool's source"
    )]
    Source { path: String, reason: String },
    #[error("cannot create mount point {path}: {reason}; check the host's --data-dir")]
    MountPoint { path: String, reason: String },
    #[error("mount {from} on {target} failed: {reason}")]
    Mount {
        from: String,
        target: String,
        reason: String,
    },
    #[error("{op} on {path} did not return within {ms} ms; the filesystem may be hung")]
    Timeout {
        op: &'static str,
        path: String,
        ms: u64,
    },
    #[error("an earlier call on {path} has not returned yet; the filesystem may be hung")]
    Stuck { path: String },
    #[error("{op} on {path} failed: {reason}")]
    Io {
        op: &'static str,
        path: String,
        reason: String,
    },
    /// The host does not accept this source (see `source_policy`).
    #[error("{0}")]
    Refused(String),
}

impl From<MountError> for HostError {
    fn from(e: MountError) -> Self {
        let kind = match e {
            MountError::Timeout { .. } | MountError::Stuck { .. } => HostErrorKind::Timeout,
            MountError::Source { .. } => HostErrorKind::NotFound,
            MountError::Refused(_) => HostErrorKind::Invalid,
            _ => HostErrorKind::Failed,
        };
        HostError::new(kind, e.to_string())
    }
}

/// What a mounted pool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub capacity: Capacity,
    pub volume_count: u64,
    /// The filesystem is mounted read-only (by an operator, or by the kernel after errors).
    pub read_only: bool,
}

/// Mounts and inspects pool filesystems and the volume files in them. Every operation is
/// idempotent: mounting what is mounted, deleting what is gone and creating a volume that
/// exists as asked all succeed without changing anything.
pub trait Mounter: Send + Sync + 'static {
    fn mount(
        &self,
        source: PoolSource,
        target: PathBuf,
    ) -> impl Future<Output = Result<(), MountError>> + Send;
    fn is_mounted(&self, target: PathBuf) -> impl Future<Output = Result<bool, MountError>> + Send;
    fn usage(&self, target: PathBuf) -> impl Future<Output = Result<Usage, MountError>> + Send;
    fn unmount(&self, target: PathBuf) -> impl Future<Output = Result<(), MountError>> + Send;
    /// The names of the mounts directly below `root` (the pools an earlier run of the agent
    /// left mounted), sorted.
    fn mounted_below(
        &self,
        root: PathBuf,
    ) -> impl Future<Output = Result<Vec<String>, MountError>> + Send;

    /// Creates the volume, or grows it to `size_bytes` if it exists smaller in that format.
    fn create_volume(
        &self,
        dir: PathBuf,
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Grows a volume of the given format; shrinking is refused (it would cut off data the
    /// guest may use). The format comes from the volume's record, never from its bytes.
    fn resize_volume(
        &self,
        dir: PathBuf,
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    fn delete_volume(
        &self,
        dir: PathBuf,
        name: String,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    /// The regular files in `dir`, sorted by name.
    fn list_volumes(
        &self,
        dir: PathBuf,
    ) -> impl Future<Output = Result<Vec<VolumeInfo>, HostError>> + Send;
    /// Takes an existing file (the disk of a domain being adopted) as a volume of `format`:
    /// marks it as qvdc's. Its bytes are not touched.
    fn claim_volume(
        &self,
        dir: PathBuf,
        name: String,
        format: VolumeFormat,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Gives a volume back (its VM was released): removes qvdc's mark, so qvdc never
    /// resizes or deletes the file again. Its bytes are not touched.
    fn disown_volume(
        &self,
        dir: PathBuf,
        name: String,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
}

fn volume_exists_differently(
    name: &str,
    have: &VolumeInfo,
    format: VolumeFormat,
    size: u64,
) -> HostError {
    HostError::new(
        HostErrorKind::Conflict,
        format!(
            "volume {name} already exists as {} of {} bytes (asked: {format} of {size} bytes); delete it first or pick another name",
            have.format.map_or("an unknown format".to_owned(), |f| f.to_string()),
            have.size_bytes
        ),
    )
}

fn shrink_refused(name: &str, have: u64, want: u64) -> HostError {
    HostError::new(
        HostErrorKind::Invalid,
        format!(
            "volume {name} is {have} bytes; shrinking it to {want} bytes is refused because it would cut off data the guest may use"
        ),
    )
}

fn not_ours(name: &str, dir: &Path) -> HostError {
    HostError::new(
        HostErrorKind::Conflict,
        format!(
            "{} was not created by qvdc (it has no mark in {}/{OWNERSHIP_DIR}/), so qvdc leaves it alone: move the file away or pick another volume name",
            dir.join(name).display(),
            dir.display()
        ),
    )
}

fn no_volume(name: &str, dir: &Path) -> HostError {
    HostError::new(
        HostErrorKind::NotFound,
        format!("no volume {name} in {}", dir.display()),
    )
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}
