//! Mounting pools: the `Mounter` trait, its real implementation on mount(2) and statvfs(3),
//! and a simulated one for the deterministic simulation.
//!
//! Real filesystem calls can block forever (a dead NFS server, a hung FUSE daemon), so the
//! real mounter runs each one on a blocking thread under a timeout and reports the timeout as
//! an error instead of stalling the agent.

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use qvdc_transport::protocol::Capacity;

/// How long one filesystem call may take before the agent gives up on it.
pub const MOUNT_OP_TIMEOUT_MS: u64 = 5_000;
/// Directory entries counted as volumes at most; a pool with more reports this many.
pub const VOLUME_COUNT_MAX: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    #[error("source directory {path} is not usable on this host: {reason}; create it or fix the pool's path")]
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
    #[error("{op} on {path} failed: {reason}")]
    Io {
        op: &'static str,
        path: String,
        reason: String,
    },
}

/// What a mounted pool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub capacity: Capacity,
    pub volume_count: u64,
}

/// Mounts and inspects pool filesystems. Implementations must be idempotent: binding a
/// target that is already bound to the same source succeeds without a second mount.
pub trait Mounter: Send + Sync + 'static {
    fn bind(
        &self,
        source: PathBuf,
        target: PathBuf,
    ) -> impl Future<Output = Result<(), MountError>> + Send;
    fn is_mounted(&self, target: PathBuf) -> impl Future<Output = Result<bool, MountError>> + Send;
    fn usage(&self, target: PathBuf) -> impl Future<Output = Result<Usage, MountError>> + Send;
    fn unmount(&self, target: PathBuf) -> impl Future<Output = Result<(), MountError>> + Send;
}

// ---------------------------------------------------------------------------------------
// Real mounts

/// mount(2) and statvfs(3) on this machine. Needs root (CAP_SYS_ADMIN) to mount.
#[derive(Debug, Default, Clone)]
pub struct RealMounter;

async fn blocking<T: Send + 'static>(
    op: &'static str,
    path: &Path,
    f: impl FnOnce() -> Result<T, MountError> + Send + 'static,
) -> Result<T, MountError> {
    let timeout = Duration::from_millis(MOUNT_OP_TIMEOUT_MS);
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(MountError::Io {
            op,
            path: path.display().to_string(),
            reason: join.to_string(),
        }),
        Err(_) => Err(MountError::Timeout {
            op,
            path: path.display().to_string(),
            ms: MOUNT_OP_TIMEOUT_MS,
        }),
    }
}

/// Whether `target` is a mount point, per the kernel's mount table.
fn mounted_in_mountinfo(target: &Path) -> Result<bool, MountError> {
    let io = |reason: std::io::Error| MountError::Io {
        op: "read mountinfo",
        path: target.display().to_string(),
        reason: reason.to_string(),
    };
    let canonical = match std::fs::canonicalize(target) {
        Ok(path) => path,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(e)),
    };
    let table = std::fs::read_to_string("/proc/self/mountinfo").map_err(io)?;
    let wanted = canonical.to_string_lossy().replace(' ', "\\040");
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| point == wanted))
}

fn bind_now(source: &Path, target: &Path) -> Result<(), MountError> {
    let shown = |p: &Path| p.display().to_string();
    match std::fs::metadata(source) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(MountError::Source {
                path: shown(source),
                reason: "not a directory".into(),
            })
        }
        Err(e) => {
            return Err(MountError::Source {
                path: shown(source),
                reason: e.to_string(),
            })
        }
    }
    std::fs::create_dir_all(target).map_err(|e| MountError::MountPoint {
        path: shown(target),
        reason: e.to_string(),
    })?;
    if mounted_in_mountinfo(target)? {
        return Ok(());
    }
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| MountError::Mount {
        from: shown(source),
        target: shown(target),
        reason: e.desc().into(),
    })
}

fn usage_now(target: &Path) -> Result<Usage, MountError> {
    let path = target.display().to_string();
    let stat = nix::sys::statvfs::statvfs(target).map_err(|e| MountError::Io {
        op: "statvfs",
        path: path.clone(),
        reason: e.desc().into(),
    })?;
    let fragment = stat.fragment_size();
    let capacity = Capacity {
        total_bytes: stat.blocks() * fragment,
        used_bytes: (stat.blocks() - stat.blocks_free()) * fragment,
        available_bytes: stat.blocks_available() * fragment,
    };
    let entries = std::fs::read_dir(target).map_err(|e| MountError::Io {
        op: "list",
        path,
        reason: e.to_string(),
    })?;
    let volume_count = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .take(VOLUME_COUNT_MAX as usize)
        .count() as u64;
    Ok(Usage {
        capacity,
        volume_count,
    })
}

impl Mounter for RealMounter {
    async fn bind(&self, source: PathBuf, target: PathBuf) -> Result<(), MountError> {
        let shown = target.clone();
        blocking("mount", &shown, move || bind_now(&source, &target)).await
    }

    async fn is_mounted(&self, target: PathBuf) -> Result<bool, MountError> {
        let shown = target.clone();
        blocking("read mountinfo", &shown, move || {
            mounted_in_mountinfo(&target)
        })
        .await
    }

    async fn usage(&self, target: PathBuf) -> Result<Usage, MountError> {
        let shown = target.clone();
        blocking("statvfs", &shown, move || usage_now(&target)).await
    }

    async fn unmount(&self, target: PathBuf) -> Result<(), MountError> {
        let shown = target.clone();
        blocking("umount", &shown, move || {
            if !mounted_in_mountinfo(&target)? {
                return Ok(());
            }
            nix::mount::umount(&target).map_err(|e| MountError::Io {
                op: "umount",
                path: target.display().to_string(),
                reason: e.desc().into(),
            })
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// Simulated mounts

/// An in-memory mount table for the simulation. Source directories always exist; a failure
/// can be configured per host to exercise the error path. No threads, no clocks.
#[derive(Debug)]
pub struct SimMounter {
    capacity: Capacity,
    mount_failure: Option<String>,
    mounts: Mutex<BTreeMap<PathBuf, PathBuf>>,
}

impl SimMounter {
    pub fn new(total_bytes: u64) -> Self {
        let capacity = Capacity {
            total_bytes,
            used_bytes: total_bytes / 4,
            available_bytes: total_bytes - total_bytes / 4,
        };
        Self {
            capacity,
            mount_failure: None,
            mounts: Mutex::new(BTreeMap::new()),
        }
    }

    /// Every mount fails with `reason`, as when the pool root cannot be created.
    pub fn failing_mounts(mut self, reason: impl Into<String>) -> Self {
        self.mount_failure = Some(reason.into());
        self
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, PathBuf>> {
        self.mounts.lock().expect("sim mount table poisoned")
    }
}

impl Mounter for SimMounter {
    async fn bind(&self, source: PathBuf, target: PathBuf) -> Result<(), MountError> {
        if let Some(reason) = &self.mount_failure {
            return Err(MountError::MountPoint {
                path: target.display().to_string(),
                reason: reason.clone(),
            });
        }
        let mut table = self.table();
        match table.get(&target) {
            Some(existing) if *existing == source => Ok(()),
            Some(existing) => Err(MountError::Mount {
                from: source.display().to_string(),
                target: target.display().to_string(),
                reason: format!("already mounted from {}", existing.display()),
            }),
            None => {
                table.insert(target, source);
                Ok(())
            }
        }
    }

    async fn is_mounted(&self, target: PathBuf) -> Result<bool, MountError> {
        Ok(self.table().contains_key(&target))
    }

    async fn usage(&self, target: PathBuf) -> Result<Usage, MountError> {
        if !self.table().contains_key(&target) {
            return Err(MountError::Io {
                op: "statvfs",
                path: target.display().to_string(),
                reason: "not mounted".into(),
            });
        }
        Ok(Usage {
            capacity: self.capacity,
            volume_count: 0,
        })
    }

    async fn unmount(&self, target: PathBuf) -> Result<(), MountError> {
        self.table().remove(&target);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The behaviour every `Mounter` must show. Runs against the simulated mounter always and
    /// against real mounts when this process may mount (root).
    async fn conformance(mounter: &impl Mounter, scratch: &Path) {
        let source = scratch.join("source");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("vol-a.qcow2"), b"x").unwrap();
        let target = scratch.join("root/pools/p1");

        assert!(!mounter.is_mounted(target.clone()).await.unwrap());
        mounter.bind(source.clone(), target.clone()).await.unwrap();
        assert!(mounter.is_mounted(target.clone()).await.unwrap());
        mounter
            .bind(source.clone(), target.clone())
            .await
            .expect("binding twice is idempotent");
        let usage = mounter.usage(target.clone()).await.unwrap();
        assert!(usage.capacity.total_bytes > 0);
        assert!(usage.capacity.available_bytes <= usage.capacity.total_bytes);
        mounter.unmount(target.clone()).await.unwrap();
        assert!(!mounter.is_mounted(target.clone()).await.unwrap());
        mounter
            .unmount(target.clone())
            .await
            .expect("unmounting twice is idempotent");
    }

    #[tokio::test]
    async fn sim_mounter_conforms() {
        let scratch = tempfile::tempdir().unwrap();
        conformance(&SimMounter::new(1 << 30), scratch.path()).await;
    }

    #[tokio::test]
    async fn sim_mounter_reports_configured_failure() {
        let mounter = SimMounter::new(1 << 30).failing_mounts("Permission denied");
        let err = mounter.bind("/a".into(), "/b".into()).await.unwrap_err();
        assert!(err.to_string().contains("Permission denied"), "{err}");
    }

    /// Whether this process may mount. Without root the real tests skip — unless
    /// QVDC_REQUIRE_REAL=1 says the environment was set up for them, and then they fail.
    fn may_mount() -> bool {
        let root = nix::unistd::geteuid().is_root();
        let required = std::env::var("QVDC_REQUIRE_REAL").is_ok_and(|v| v == "1");
        assert!(
            root || !required,
            "QVDC_REQUIRE_REAL=1 but this test needs root to mount"
        );
        root
    }

    #[tokio::test]
    async fn real_mounter_conforms_needs_root() {
        if !may_mount() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        conformance(&RealMounter, scratch.path()).await;
        let usage_of_source = RealMounter
            .usage(scratch.path().join("source"))
            .await
            .unwrap();
        assert_eq!(usage_of_source.volume_count, 1);
    }

    #[tokio::test]
    async fn real_mounter_names_a_missing_source_needs_root() {
        if !may_mount() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let err = RealMounter
            .bind(scratch.path().join("nope"), scratch.path().join("t"))
            .await
            .unwrap_err();
        assert!(matches!(err, MountError::Source { .. }), "{err}");
        assert!(
            err.to_string().contains("No such file or directory"),
            "{err}"
        );
    }
}
