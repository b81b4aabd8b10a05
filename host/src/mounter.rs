//! Pool storage on a host: the `Mounter` trait (mount, inspect and unmount pool filesystems;
//! create, resize, delete and list the volume files in them), its real implementation on
//! mount(2), mount(8), statvfs(3) and qemu-img, and a simulated one for the deterministic
//! simulation.
//!
//! Real filesystem calls can block forever (a dead NFS server, a hung FUSE daemon). The real
//! mounter runs each one on a blocking thread and never starts a second call on a path whose
//! previous call has not returned, so a hung mount costs one thread, not one per heartbeat.
//! Callers bound the wait with a timeout (see `pools`), which is where a hang becomes a report.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    io::Read,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use qvdc_transport::protocol::{
    Capacity, HostError, HostErrorKind, PoolSource, VolumeFormat, VolumeInfo,
};

use crate::source_policy::SourcePolicy;

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

// ---------------------------------------------------------------------------------------
// Real mounts

/// mount(2), mount(8), statvfs(3) and qemu-img on this machine. Needs root to mount.
#[derive(Debug, Default, Clone)]
pub struct RealMounter {
    /// Paths with a call still running on a blocking thread.
    in_flight: Arc<Mutex<BTreeMap<PathBuf, &'static str>>>,
    /// Checked again on a source's canonical path, after following links.
    policy: Arc<SourcePolicy>,
}

impl RealMounter {
    /// A mounter that accepts every source outside the system directories.
    pub fn new() -> Self {
        Self::default()
    }

    /// A mounter that accepts only what `policy` allows, also after following links.
    pub fn with_policy(policy: SourcePolicy) -> Self {
        Self {
            policy: Arc::new(policy),
            ..Self::default()
        }
    }

    /// Runs `f` on a blocking thread unless a call on `path` is still running.
    async fn blocking<T: Send + 'static, E: From<MountError> + Send + 'static>(
        &self,
        op: &'static str,
        path: &Path,
        f: impl FnOnce() -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        let key = path.to_path_buf();
        {
            let mut in_flight = self.in_flight.lock().expect("in-flight table poisoned");
            if in_flight.contains_key(&key) {
                return Err(MountError::Stuck {
                    path: path.display().to_string(),
                }
                .into());
            }
            in_flight.insert(key.clone(), op);
        }
        let table = self.in_flight.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = f();
            table.lock().expect("in-flight table poisoned").remove(&key);
            result
        })
        .await;
        joined.unwrap_or_else(|join| {
            Err(MountError::Io {
                op,
                path: path.display().to_string(),
                reason: join.to_string(),
            }
            .into())
        })
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
        // Nothing is mounted where no directory is, nor under a file.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(false)
        }
        Err(e) => return Err(io(e)),
    };
    let table = std::fs::read_to_string("/proc/self/mountinfo").map_err(io)?;
    let wanted = canonical.to_string_lossy().replace(' ', "\\040");
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| point == wanted))
}

/// The filesystem type and source of the mount at `target`, from the kernel's mount table.
fn mount_source_at(target: &Path) -> Option<(String, String)> {
    let canonical = std::fs::canonicalize(target).ok()?;
    let wanted = canonical.to_string_lossy().replace(' ', "\\040");
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().rev().find_map(|line| {
        let (mine, theirs) = line.split_once(" - ")?;
        (mine.split(' ').nth(4)? == wanted).then_some(())?;
        let mut fields = theirs.split(' ');
        Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
    })
}

/// Whether what is mounted at `target` is `source`. A restarted agent finds its old mounts
/// in place; one left from an earlier pool of the same name must not be taken for this one.
fn mounted_from(source: &PoolSource, target: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let same_file = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    };
    match source {
        // A bind mount's root is the source directory itself.
        PoolSource::Dir { path } => same_file(Path::new(path), target),
        PoolSource::Nfs { server, export, .. } => {
            mount_source_at(target).is_some_and(|(_, from)| from == format!("{server}:{export}"))
        }
        PoolSource::Block { device, .. } => {
            let Some((_, from)) = mount_source_at(target) else {
                return false;
            };
            let wanted = std::fs::canonicalize(device).ok();
            let from = Path::new(&from);
            // An image file is mounted through a loop device that names its backing file.
            let backing = from
                .file_name()
                .map(|loop_name| {
                    Path::new("/sys/block")
                        .join(loop_name)
                        .join("loop/backing_file")
                })
                .and_then(|file| std::fs::read_to_string(file).ok())
                .map(|text| PathBuf::from(text.trim()));
            wanted.is_some() && (std::fs::canonicalize(from).ok() == wanted || backing == wanted)
        }
    }
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Options every pool is mounted with: nothing on a pool runs set-uid or opens the host's
/// devices through a device node someone placed there.
const POOL_MOUNT_OPTIONS: &str = "nosuid,nodev";

/// Checks a local source's canonical path (links followed) against `policy`, and that a
/// block device is not in use.
fn check_real_source(policy: &SourcePolicy, source: &PoolSource) -> Result<(), MountError> {
    use std::os::unix::fs::FileTypeExt;
    let (PoolSource::Dir { path } | PoolSource::Block { device: path, .. }) = source else {
        return Ok(());
    };
    let canonical = std::fs::canonicalize(path).map_err(|e| MountError::Source {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let device = std::fs::metadata(&canonical).is_ok_and(|m| m.file_type().is_block_device());
    policy
        .check_path(&canonical, device)
        .map_err(|e| MountError::Refused(e.message))?;
    if device {
        if let Some(why) = device_in_use(&canonical) {
            return Err(MountError::Refused(format!(
                "block device {} is in use ({why}); qvdc formats and mounts only devices nothing else uses",
                canonical.display()
            )));
        }
    }
    Ok(())
}

/// Why block device `device` must not become a pool, if it is in use: it or one of its
/// partitions is mounted, held by another device (LVM, RAID, dm-crypt) or used as swap.
fn device_in_use(device: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(device).ok()?.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let disk = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let mut parts = vec![(format!("{major}:{minor}"), disk.clone())];
    for entry in std::fs::read_dir(&disk).into_iter().flatten().flatten() {
        let dir = entry.path();
        if dir.join("partition").exists() {
            if let Ok(dev) = std::fs::read_to_string(dir.join("dev")) {
                parts.push((dev.trim().to_owned(), dir));
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for (dev, dir) in &parts {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_else(|| dev.clone());
        let mounted_at = mountinfo.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.get(2) == Some(&dev.as_str())).then(|| fields.get(4).copied().unwrap_or("?"))
        });
        if let Some(at) = mounted_at {
            return Some(format!("{name} is mounted on {at}"));
        }
        let holders: Vec<String> = std::fs::read_dir(dir.join("holders"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !holders.is_empty() {
            return Some(format!("{name} is held by {}", holders.join(", ")));
        }
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    let swapped = swaps.lines().skip(1).any(|line| {
        let used = line.split_whitespace().next().map(Path::new);
        used.and_then(|p| std::fs::canonicalize(p).ok()).as_deref() == Some(device)
    });
    swapped.then(|| "it is used as swap".to_owned())
}

fn mount_now(policy: &SourcePolicy, source: &PoolSource, target: &Path) -> Result<(), MountError> {
    if let PoolSource::Dir { path } | PoolSource::Block { device: path, .. } = source {
        if let Err(e) = std::fs::metadata(path) {
            return Err(MountError::Source {
                path: path.clone(),
                reason: e.to_string(),
            });
        }
    }
    std::fs::create_dir_all(target).map_err(|e| MountError::MountPoint {
        path: shown(target),
        reason: e.to_string(),
    })?;
    if mounted_in_mountinfo(target)? {
        if mounted_from(source, target) {
            return Ok(());
        }
        // Left from an earlier pool of this name (the agent restarted since): the mount
        // point is the agent's own, so the stale mount goes and the pool's source comes.
        nix::mount::umount(target).map_err(|e| MountError::Mount {
            from: source.to_string(),
            target: shown(target),
            reason: format!(
                "a stale mount is in the way and cannot be unmounted: {}",
                e.desc()
            ),
        })?;
    }
    check_real_source(policy, source)?;
    match source {
        PoolSource::Dir { path } => bind_now(Path::new(path), target),
        PoolSource::Nfs {
            server,
            export,
            options,
        } => {
            let from = format!("{server}:{export}");
            let mut args = vec!["-t".to_owned(), "nfs".to_owned()];
            if let Some(options) = options {
                args.extend(["-o".to_owned(), options.clone()]);
            }
            run_mount(&from, target, args)
        }
        PoolSource::Block { device, fs_type } => {
            let mut args = vec!["-t".to_owned(), fs_type.clone()];
            // An image file goes through a loop device, released again on unmount.
            if std::fs::metadata(device).is_ok_and(|m| m.is_file()) {
                args.extend(["-o".to_owned(), "loop".to_owned()]);
            }
            run_mount(device, target, args)
        }
    }
}

fn bind_now(source: &Path, target: &Path) -> Result<(), MountError> {
    if !source.is_dir() {
        return Err(MountError::Source {
            path: shown(source),
            reason: "not a directory".into(),
        });
    }
    use nix::mount::MsFlags;
    let failed = |e: nix::Error| MountError::Mount {
        from: shown(source),
        target: shown(target),
        reason: e.desc().into(),
    };
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(failed)?;
    // A bind mount takes no flags of its own at first: they come with a remount.
    let restricted =
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if let Err(e) = nix::mount::mount(None::<&str>, target, None::<&str>, restricted, None::<&str>)
    {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        return Err(failed(e));
    }
    Ok(())
}

/// mount(8), which knows the helpers (mount.nfs, loop devices) that mount(2) alone does not.
fn run_mount(from: &str, target: &Path, mut args: Vec<String>) -> Result<(), MountError> {
    // Last, so that no option given before can undo them.
    args.extend(["-o".to_owned(), POOL_MOUNT_OPTIONS.to_owned()]);
    args.extend([from.to_owned(), shown(target)]);
    let failed = |reason: String| MountError::Mount {
        from: from.to_owned(),
        target: shown(target),
        reason,
    };
    let output = Command::new("mount")
        .args(&args)
        .output()
        .map_err(|e| failed(format!("cannot run mount(8): {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    // mount(8) adds a hint about dmesg that says nothing about this failure.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reason: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("mount: "))
        .filter(|l| !l.is_empty() && !l.starts_with("dmesg(1)"))
        .collect();
    Err(failed(reason.join("; ")))
}

fn usage_now(target: &Path) -> Result<Usage, MountError> {
    let path = shown(target);
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
        read_only: stat.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
    })
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// A volume file's format and the size its guest sees: a qcow2 header's virtual size, or the
/// length of a raw file.
fn volume_info(path: &Path) -> std::io::Result<VolumeInfo> {
    let mut header = [0u8; 32];
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let len = file.metadata()?.len();
    let read = file.read(&mut header)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if read == header.len() && &header[..4] == QCOW2_MAGIC {
        let size = u64::from_be_bytes(header[24..32].try_into().expect("8 bytes"));
        return Ok(VolumeInfo {
            name,
            format: Some(VolumeFormat::Qcow2),
            size_bytes: size,
        });
    }
    Ok(VolumeInfo {
        name,
        format: Some(VolumeFormat::Raw),
        size_bytes: len,
    })
}

fn io_failed(op: &str, path: &Path, e: impl std::fmt::Display) -> HostError {
    HostError::new(
        HostErrorKind::Failed,
        format!("{op} {} failed: {e}", path.display()),
    )
}

fn qemu_img(args: &[&str]) -> Result<(), HostError> {
    let output = Command::new("qemu-img").args(args).output().map_err(|e| {
        HostError::new(
            HostErrorKind::Failed,
            format!("cannot run qemu-img ({e}); install qemu-utils on this host"),
        )
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(HostError::new(
        HostErrorKind::Failed,
        format!(
            "qemu-img {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    ))
}

/// The volume at `path` read as `format`, the format its record says: a raw volume's size
/// is its length whatever its bytes say (its guest may have written a qcow2 header into
/// it), and a qcow2 volume must start with the qcow2 header. `None` if there is no file.
fn volume_as(path: &Path, format: VolumeFormat) -> Result<Option<VolumeInfo>, HostError> {
    let found = match volume_info(path) {
        Ok(found) => found,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_failed("reading", path, e)),
    };
    match format {
        VolumeFormat::Qcow2 if found.format != Some(VolumeFormat::Qcow2) => {
            Err(volume_exists_differently(&found.name, &found, format, 0))
        }
        VolumeFormat::Qcow2 => Ok(Some(found)),
        VolumeFormat::Raw => {
            let len = std::fs::metadata(path)
                .map_err(|e| io_failed("reading", path, e))?
                .len();
            Ok(Some(VolumeInfo {
                format: Some(VolumeFormat::Raw),
                size_bytes: len,
                ..found
            }))
        }
    }
}

/// Where the mark of the volume at `path` is.
fn mark_of(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(path);
    dir.join(OWNERSHIP_DIR)
        .join(path.file_name().unwrap_or_default())
}

/// Refuses a marks directory or mark that is not a real directory or file: a symlink
/// planted there by someone with access to the pool's storage would make every file look
/// like qvdc's, or make qvdc unlink a file outside the pool as root.
fn refuse_link(path: &Path, meta: &std::fs::Metadata, want_dir: bool) -> Result<(), HostError> {
    let right = if want_dir {
        meta.file_type().is_dir()
    } else {
        meta.file_type().is_file()
    };
    if right {
        return Ok(());
    }
    Err(HostError::new(
        HostErrorKind::Conflict,
        format!(
            "{} is not the {} qvdc keeps its ownership marks in (a symlink or something else was put there); qvdc will not use it: remove it",
            path.display(),
            if want_dir { "directory" } else { "file" }
        ),
    ))
}

/// Whether the volume file at `path` exists; an error if it exists without qvdc's mark.
fn check_ours(path: &Path) -> Result<bool, HostError> {
    let mark = mark_of(path);
    let marks = mark.parent().unwrap_or(&mark);
    match std::fs::symlink_metadata(marks) {
        Ok(meta) => refuse_link(marks, &meta, true)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_failed("reading", marks, e)),
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_failed("reading", path, e)),
        Ok(_) => match std::fs::symlink_metadata(&mark) {
            Ok(meta) => refuse_link(&mark, &meta, false).map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = path.parent().unwrap_or(path);
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                Err(not_ours(&name, dir))
            }
            Err(e) => Err(io_failed("reading", &mark, e)),
        },
    }
}

/// Whether the file at `path` carries qvdc's mark (a linked mark or marks directory is an
/// error, as in [`check_ours`]).
fn marked(path: &Path) -> Result<bool, HostError> {
    let mark = mark_of(path);
    let marks = mark.parent().unwrap_or(&mark);
    for (at, want_dir) in [(marks, true), (mark.as_path(), false)] {
        match std::fs::symlink_metadata(at) {
            Ok(meta) => refuse_link(at, &meta, want_dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_failed("reading", at, e)),
        }
    }
    Ok(true)
}

fn claim_volume_now(path: &Path, format: VolumeFormat) -> Result<(), HostError> {
    if volume_as(path, format)?.is_none() {
        let dir = path.parent().unwrap_or(path);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        return Err(no_volume(&name, dir));
    }
    if !marked(path)? {
        mark(path)?;
    }
    Ok(())
}

fn disown_volume_now(path: &Path) -> Result<(), HostError> {
    if !marked(path)? {
        return Ok(());
    }
    let mark = mark_of(path);
    match std::fs::remove_file(&mark) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_failed("unmarking", &mark, e)),
        _ => Ok(()),
    }
}

/// Marks the volume at `path` as qvdc's, durably, before the volume is created: a crash in
/// between leaves a mark without a volume, which a retry completes.
fn mark(path: &Path) -> Result<(), HostError> {
    let mark = mark_of(path);
    let marks = mark.parent().unwrap_or(&mark);
    match std::fs::DirBuilder::new().mode(0o700).create(marks) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta =
                std::fs::symlink_metadata(marks).map_err(|e| io_failed("reading", marks, e))?;
            refuse_link(marks, &meta, true)?;
        }
        Err(e) => return Err(io_failed("creating", marks, e)),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&mark)
        .and_then(|file| file.sync_all())
        .and_then(|()| std::fs::File::open(marks)?.sync_all())
        .map_err(|e| io_failed("marking", &mark, e))
}

fn create_volume_now(path: &Path, format: VolumeFormat, size: u64) -> Result<(), HostError> {
    if !check_ours(path)? {
        mark(path)?;
    }
    match volume_as(path, format)? {
        Some(have) if have.size_bytes == size => return Ok(()),
        Some(have) if have.size_bytes < size => return resize_volume_now(path, format, size),
        Some(have) => {
            let name = have.name.clone();
            return Err(volume_exists_differently(&name, &have, format, size));
        }
        None => {}
    }
    match format {
        VolumeFormat::Raw => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| io_failed("creating", path, e))?;
            file.set_len(size)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_failed("sizing", path, e))
        }
        VolumeFormat::Qcow2 => {
            let path = path.to_string_lossy();
            qemu_img(&["create", "-q", "-f", "qcow2", &path, &size.to_string()])
        }
    }
}

fn resize_volume_now(path: &Path, format: VolumeFormat, size: u64) -> Result<(), HostError> {
    check_ours(path)?;
    let Some(have) = volume_as(path, format)? else {
        let dir = path.parent().unwrap_or(path);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        return Err(no_volume(&name, dir));
    };
    if size < have.size_bytes {
        return Err(shrink_refused(&have.name, have.size_bytes, size));
    }
    if size == have.size_bytes {
        return Ok(());
    }
    match format {
        VolumeFormat::Qcow2 => {
            let path = path.to_string_lossy();
            qemu_img(&["resize", "-q", "-f", "qcow2", &path, &size.to_string()])
        }
        VolumeFormat::Raw => std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .and_then(|f| f.set_len(size).and_then(|()| f.sync_all()))
            .map_err(|e| io_failed("resizing", path, e)),
    }
}

fn list_volumes_now(dir: &Path) -> Result<Vec<VolumeInfo>, HostError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_failed("listing", dir, e))?;
    let mut volumes = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Ok(info) = volume_info(&entry.path()) {
            volumes.push(info);
        }
        if volumes.len() as u64 >= VOLUME_COUNT_MAX {
            break;
        }
    }
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(volumes)
}

impl Mounter for RealMounter {
    async fn mount(&self, source: PoolSource, target: PathBuf) -> Result<(), MountError> {
        let path = target.clone();
        let policy = self.policy.clone();
        self.blocking("mount", &path, move || mount_now(&policy, &source, &target))
            .await
    }

    async fn is_mounted(&self, target: PathBuf) -> Result<bool, MountError> {
        let path = target.clone();
        self.blocking("read mountinfo", &path, move || {
            mounted_in_mountinfo(&target)
        })
        .await
    }

    async fn usage(&self, target: PathBuf) -> Result<Usage, MountError> {
        let path = target.clone();
        self.blocking("statvfs", &path, move || usage_now(&target))
            .await
    }

    async fn unmount(&self, target: PathBuf) -> Result<(), MountError> {
        let path = target.clone();
        self.blocking("umount", &path, move || {
            if !mounted_in_mountinfo(&target)? {
                return Ok(());
            }
            nix::mount::umount(&target).map_err(|e| MountError::Io {
                op: "umount",
                path: shown(&target),
                reason: e.desc().into(),
            })
        })
        .await
    }

    async fn create_volume(
        &self,
        dir: PathBuf,
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
    ) -> Result<(), HostError> {
        self.blocking("create volume", &dir.clone(), move || {
            create_volume_now(&dir.join(name), format, size_bytes)
        })
        .await
    }

    async fn resize_volume(
        &self,
        dir: PathBuf,
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
    ) -> Result<(), HostError> {
        self.blocking("resize volume", &dir.clone(), move || {
            resize_volume_now(&dir.join(name), format, size_bytes)
        })
        .await
    }

    async fn delete_volume(&self, dir: PathBuf, name: String) -> Result<(), HostError> {
        self.blocking("delete volume", &dir.clone(), move || {
            let path = dir.join(name);
            check_ours(&path)?;
            let gone = |result: std::io::Result<()>, what: &Path| match result {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io_failed("deleting", what, e))
                }
                _ => Ok(()),
            };
            // The volume first: a crash in between leaves a mark without a volume.
            gone(std::fs::remove_file(&path), &path)?;
            let mark = mark_of(&path);
            gone(std::fs::remove_file(&mark), &mark)
        })
        .await
    }

    async fn list_volumes(&self, dir: PathBuf) -> Result<Vec<VolumeInfo>, HostError> {
        self.blocking("list volumes", &dir.clone(), move || list_volumes_now(&dir))
            .await
    }

    async fn claim_volume(
        &self,
        dir: PathBuf,
        name: String,
        format: VolumeFormat,
    ) -> Result<(), HostError> {
        self.blocking("claim volume", &dir.clone(), move || {
            claim_volume_now(&dir.join(name), format)
        })
        .await
    }

    async fn disown_volume(&self, dir: PathBuf, name: String) -> Result<(), HostError> {
        self.blocking("disown volume", &dir.clone(), move || {
            disown_volume_now(&dir.join(name))
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// Simulated mounts

#[derive(Debug, Default)]
struct SimTable {
    mounts: BTreeMap<PathBuf, PoolSource>,
    /// Volume files by directory, then name.
    files: BTreeMap<PathBuf, BTreeMap<String, VolumeInfo>>,
    /// Files among `files` that qvdc did not create (no ownership mark).
    foreign: BTreeSet<PathBuf>,
    mount_failure: Option<String>,
    hung: bool,
}

/// An in-memory mount table and volume store for the simulation. Sources always exist; a
/// mount failure or a hang can be switched on to exercise those paths. No threads, no clocks.
/// Clones share the table, so a simulation can fault the mounter a host agent owns.
#[derive(Debug, Clone)]
pub struct SimMounter {
    capacity: Capacity,
    table: Arc<Mutex<SimTable>>,
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
            table: Arc::default(),
        }
    }

    /// Every mount fails with `reason`, as when the pool root cannot be created.
    pub fn failing_mounts(self, reason: impl Into<String>) -> Self {
        self.table().mount_failure = Some(reason.into());
        self
    }

    /// From now on every mount fails with `reason` (`None`: mounts work again). Mounts
    /// already in the table stay.
    pub fn set_mount_failure(&self, reason: Option<String>) {
        self.table().mount_failure = reason;
    }

    /// Puts a file that qvdc did not create into `dir`, as someone with access to the
    /// pool's storage might.
    pub fn plant_foreign(&self, dir: &Path, name: &str) {
        let mut table = self.table();
        let info = VolumeInfo {
            name: name.into(),
            format: Some(VolumeFormat::Raw),
            size_bytes: 1,
        };
        table
            .files
            .entry(dir.to_owned())
            .or_default()
            .insert(name.into(), info);
        table.foreign.insert(dir.join(name));
    }

    /// An error if `dir/name` is a file qvdc did not create.
    fn check_ours(table: &SimTable, dir: &Path, name: &str) -> Result<(), HostError> {
        if table.foreign.contains(&dir.join(name)) {
            return Err(not_ours(name, dir));
        }
        Ok(())
    }

    /// The mount table: what the host really has mounted.
    pub fn mounts(&self) -> Vec<PathBuf> {
        self.table().mounts.keys().cloned().collect()
    }

    /// While hung, calls into a mounted filesystem do not return, like those to a dead NFS
    /// server; they resume once it is no longer hung.
    pub fn set_hung(&self, hung: bool) {
        self.table().hung = hung;
    }

    fn table(&self) -> std::sync::MutexGuard<'_, SimTable> {
        self.table.lock().expect("sim mount table poisoned")
    }

    /// Waits for as long as the filesystem is hung.
    async fn unless_hung(&self) {
        while self.table().hung {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Mounter for SimMounter {
    async fn mount(&self, source: PoolSource, target: PathBuf) -> Result<(), MountError> {
        let mut table = self.table();
        if let Some(reason) = &table.mount_failure {
            return Err(MountError::MountPoint {
                path: shown(&target),
                reason: reason.clone(),
            });
        }
        // Like the real mounter: a mount of another source at the target is replaced.
        table.mounts.insert(target, source);
        Ok(())
    }

    async fn is_mounted(&self, target: PathBuf) -> Result<bool, MountError> {
        self.unless_hung().await;
        Ok(self.table().mounts.contains_key(&target))
    }

    async fn usage(&self, target: PathBuf) -> Result<Usage, MountError> {
        self.unless_hung().await;
        let table = self.table();
        if !table.mounts.contains_key(&target) {
            return Err(MountError::Io {
                op: "statvfs",
                path: shown(&target),
                reason: "not mounted".into(),
            });
        }
        let volume_count = table.files.get(&target).map_or(0, |f| f.len() as u64);
        Ok(Usage {
            capacity: self.capacity,
            volume_count,
            read_only: false,
        })
    }

    async fn unmount(&self, target: PathBuf) -> Result<(), MountError> {
        self.table().mounts.remove(&target);
        Ok(())
    }

    async fn create_volume(
        &self,
        dir: PathBuf,
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
    ) -> Result<(), HostError> {
        self.unless_hung().await;
        let mut table = self.table();
        Self::check_ours(&table, &dir, &name)?;
        let files = table.files.entry(dir).or_default();
        match files.get(&name) {
            Some(have) if have.format == Some(format) && have.size_bytes == size_bytes => Ok(()),
            Some(have) if have.format == Some(format) && have.size_bytes < size_bytes => {
                files.get_mut(&name).expect("just seen").size_bytes = size_bytes;
                Ok(())
            }
            Some(have) => Err(volume_exists_differently(&name, have, format, size_bytes)),
            None => {
                let info = VolumeInfo {
                    name: name.clone(),
                    format: Some(format),
                    size_bytes,
                };
                files.insert(name, info);
                Ok(())
            }
        }
    }

    async fn resize_volume(
        &self,
        dir: PathBuf,
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
    ) -> Result<(), HostError> {
        self.unless_hung().await;
        let mut table = self.table();
        Self::check_ours(&table, &dir, &name)?;
        let Some(have) = table.files.get_mut(&dir).and_then(|f| f.get_mut(&name)) else {
            return Err(no_volume(&name, &dir));
        };
        if have.format != Some(format) {
            return Err(volume_exists_differently(&name, have, format, size_bytes));
        }
        if size_bytes < have.size_bytes {
            return Err(shrink_refused(&name, have.size_bytes, size_bytes));
        }
        have.size_bytes = size_bytes;
        Ok(())
    }

    async fn delete_volume(&self, dir: PathBuf, name: String) -> Result<(), HostError> {
        self.unless_hung().await;
        let mut table = self.table();
        Self::check_ours(&table, &dir, &name)?;
        if let Some(files) = table.files.get_mut(&dir) {
            files.remove(&name);
        }
        Ok(())
    }

    async fn list_volumes(&self, dir: PathBuf) -> Result<Vec<VolumeInfo>, HostError> {
        self.unless_hung().await;
        let table = self.table();
        Ok(table
            .files
            .get(&dir)
            .map(|f| f.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn claim_volume(
        &self,
        dir: PathBuf,
        name: String,
        format: VolumeFormat,
    ) -> Result<(), HostError> {
        self.unless_hung().await;
        let mut table = self.table();
        match table.files.get(&dir).and_then(|f| f.get(&name)) {
            None => return Err(no_volume(&name, &dir)),
            Some(have) if have.format != Some(format) => {
                return Err(volume_exists_differently(
                    &name,
                    have,
                    format,
                    have.size_bytes,
                ))
            }
            Some(_) => {}
        }
        table.foreign.remove(&dir.join(name));
        Ok(())
    }

    async fn disown_volume(&self, dir: PathBuf, name: String) -> Result<(), HostError> {
        self.unless_hung().await;
        let mut table = self.table();
        if table.files.get(&dir).is_some_and(|f| f.contains_key(&name)) {
            table.foreign.insert(dir.join(name));
        }
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn dir_source(path: &Path) -> PoolSource {
        PoolSource::Dir { path: shown(path) }
    }

    /// The behaviour every `Mounter` must show. Runs against the simulated mounter always and
    /// against real mounts when this process may mount (root).
    /// `plant` puts a file qvdc did not create into a pool directory.
    async fn conformance(mounter: &impl Mounter, scratch: &Path, plant: &dyn Fn(&Path, &str)) {
        let source = scratch.join("source");
        std::fs::create_dir_all(&source).unwrap();
        let target = scratch.join("root/pools/p1");

        assert!(!mounter.is_mounted(target.clone()).await.unwrap());
        mounter
            .mount(dir_source(&source), target.clone())
            .await
            .unwrap();
        assert!(mounter.is_mounted(target.clone()).await.unwrap());
        mounter
            .mount(dir_source(&source), target.clone())
            .await
            .expect("mounting twice is idempotent");
        let usage = mounter.usage(target.clone()).await.unwrap();
        assert!(usage.capacity.total_bytes > 0);
        assert!(usage.capacity.available_bytes <= usage.capacity.total_bytes);
        assert!(!usage.read_only);
        assert_eq!(usage.volume_count, 0);

        let create = |name: &str, format, size| {
            mounter.create_volume(target.clone(), name.into(), format, size)
        };
        create("disk.qcow2", VolumeFormat::Qcow2, 64 << 20)
            .await
            .unwrap();
        create("disk.qcow2", VolumeFormat::Qcow2, 64 << 20)
            .await
            .expect("creating the same volume twice is idempotent");
        create("data.img", VolumeFormat::Raw, 1 << 20)
            .await
            .unwrap();
        create("data.img", VolumeFormat::Raw, 2 << 20)
            .await
            .expect("creating it larger grows it");
        create("data.img", VolumeFormat::Raw, 1 << 20)
            .await
            .expect_err("a larger volume of that name exists");
        let err = create("data.img", VolumeFormat::Qcow2, 2 << 20)
            .await
            .unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
        let listed = mounter.list_volumes(target.clone()).await.unwrap();
        let expected = vec![
            VolumeInfo {
                name: "data.img".into(),
                format: Some(VolumeFormat::Raw),
                size_bytes: 2 << 20,
            },
            VolumeInfo {
                name: "disk.qcow2".into(),
                format: Some(VolumeFormat::Qcow2),
                size_bytes: 64 << 20,
            },
        ];
        assert_eq!(listed, expected);
        assert_eq!(mounter.usage(target.clone()).await.unwrap().volume_count, 2);

        let formats = [
            ("disk.qcow2", VolumeFormat::Qcow2, 128 << 20),
            ("data.img", VolumeFormat::Raw, 4 << 20),
        ];
        for (name, format, size) in formats {
            mounter
                .resize_volume(target.clone(), name.into(), format, size)
                .await
                .unwrap();
        }
        // A volume is resized only as the format it was created with.
        let err = mounter
            .resize_volume(
                target.clone(),
                "data.img".into(),
                VolumeFormat::Qcow2,
                8 << 20,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
        let sizes: Vec<u64> = mounter
            .list_volumes(target.clone())
            .await
            .unwrap()
            .iter()
            .map(|v| v.size_bytes)
            .collect();
        assert_eq!(sizes, [4 << 20, 128 << 20]);
        let err = mounter
            .resize_volume(target.clone(), "data.img".into(), VolumeFormat::Raw, 1)
            .await
            .unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Invalid, "{err}");
        let err = mounter
            .resize_volume(target.clone(), "nope".into(), VolumeFormat::Raw, 1)
            .await
            .unwrap_err();
        assert_eq!(err.kind, HostErrorKind::NotFound, "{err}");

        for _ in 0..2 {
            mounter
                .delete_volume(target.clone(), "data.img".into())
                .await
                .expect("deleting is idempotent");
        }
        assert_eq!(mounter.list_volumes(target.clone()).await.unwrap().len(), 1);
        mounter
            .delete_volume(target.clone(), "disk.qcow2".into())
            .await
            .unwrap();

        // A file qvdc did not create is neither taken over, resized nor deleted.
        plant(&target, "theirs.img");
        let refusals = [
            create("theirs.img", VolumeFormat::Raw, 1).await,
            mounter
                .resize_volume(target.clone(), "theirs.img".into(), VolumeFormat::Raw, 8)
                .await,
            mounter
                .delete_volume(target.clone(), "theirs.img".into())
                .await,
        ];
        for refused in refusals {
            let err = refused.unwrap_err();
            assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
            assert!(err.message.contains("was not created by qvdc"), "{err}");
        }
        let listed = mounter.list_volumes(target.clone()).await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            (listed[0].name.as_str(), listed[0].size_bytes),
            ("theirs.img", 1)
        );

        // Claimed (its domain was adopted), it is qvdc's; given back, it is not again.
        let claim = |name: &str, format| mounter.claim_volume(target.clone(), name.into(), format);
        let err = claim("absent.img", VolumeFormat::Raw).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::NotFound, "{err}");
        let err = claim("theirs.img", VolumeFormat::Qcow2).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
        for _ in 0..2 {
            claim("theirs.img", VolumeFormat::Raw).await.unwrap();
        }
        mounter
            .resize_volume(target.clone(), "theirs.img".into(), VolumeFormat::Raw, 8)
            .await
            .expect("a claimed file is a volume");
        for _ in 0..2 {
            mounter
                .disown_volume(target.clone(), "theirs.img".into())
                .await
                .unwrap();
        }
        let err = mounter
            .delete_volume(target.clone(), "theirs.img".into())
            .await
            .unwrap_err();
        assert!(err.message.contains("was not created by qvdc"), "{err}");
        let listed = mounter.list_volumes(target.clone()).await.unwrap();
        assert_eq!(
            (listed[0].name.as_str(), listed[0].size_bytes),
            ("theirs.img", 8)
        );

        mounter.unmount(target.clone()).await.unwrap();
        assert!(!mounter.is_mounted(target.clone()).await.unwrap());
        mounter
            .unmount(target.clone())
            .await
            .expect("unmounting twice is idempotent");
    }

    /// A pool whose mount point cannot exist (its parent is a file) was never mounted, so
    /// removing it succeeds: before, the host kept reporting it forever.
    #[tokio::test]
    async fn nothing_is_mounted_under_a_file() {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::write(scratch.path().join("pools"), b"not a directory").unwrap();
        let target = scratch.path().join("pools/p1");
        let mounter = RealMounter::new();
        assert!(!mounter.is_mounted(target.clone()).await.unwrap());
        mounter.unmount(target).await.unwrap();
    }

    #[tokio::test]
    async fn sim_mounter_conforms() {
        let scratch = tempfile::tempdir().unwrap();
        let mounter = SimMounter::new(1 << 30);
        let plant = |dir: &Path, name: &str| mounter.plant_foreign(dir, name);
        conformance(&mounter, scratch.path(), &plant).await;
    }

    #[tokio::test]
    async fn sim_mounter_reports_configured_failure() {
        let mounter = SimMounter::new(1 << 30).failing_mounts("Permission denied");
        let err = mounter
            .mount(dir_source(Path::new("/a")), "/b".into())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("Permission denied"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn sim_mounter_hangs_when_told() {
        let mounter = SimMounter::new(1 << 30);
        mounter
            .mount(dir_source(Path::new("/a")), "/b".into())
            .await
            .unwrap();
        mounter.set_hung(true);
        let stalled = tokio::time::timeout(Duration::from_secs(60), mounter.usage("/b".into()));
        assert!(stalled.await.is_err(), "a hung statvfs never returns");
        mounter.set_hung(false);
        assert!(mounter.usage("/b".into()).await.is_ok());
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

    /// Whether `program` is installed; a missing one fails the test under QVDC_REQUIRE_REAL=1.
    fn have(program: &str) -> bool {
        let found = Command::new(program).arg("--version").output().is_ok();
        let required = std::env::var("QVDC_REQUIRE_REAL").is_ok_and(|v| v == "1");
        assert!(
            found || !required,
            "QVDC_REQUIRE_REAL=1 but {program} is not installed; run scripts/setup.sh"
        );
        found
    }

    /// A marks directory replaced by a symlink (by anyone who can write to the pool's
    /// storage) neither makes foreign files qvdc's nor lets qvdc unlink outside the pool.
    #[tokio::test]
    async fn a_symlinked_marks_directory_is_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let (pool, elsewhere) = (
            scratch.path().join("pool"),
            scratch.path().join("elsewhere"),
        );
        std::fs::create_dir_all(&pool).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(pool.join("theirs.img"), b"x").unwrap();
        std::fs::write(elsewhere.join("web.qcow2"), b"precious").unwrap();
        let mounter = RealMounter::new();
        for target in [Path::new("."), elsewhere.as_path()] {
            let _ = std::fs::remove_file(pool.join(OWNERSHIP_DIR));
            std::os::unix::fs::symlink(target, pool.join(OWNERSHIP_DIR)).unwrap();
            for name in ["theirs.img", "web.qcow2"] {
                let err = mounter
                    .delete_volume(pool.clone(), name.into())
                    .await
                    .unwrap_err();
                assert!(err.message.contains("ownership marks"), "{err}");
            }
            let err = mounter
                .create_volume(pool.clone(), "new.img".into(), VolumeFormat::Raw, 1 << 20)
                .await
                .unwrap_err();
            assert!(err.message.contains("ownership marks"), "{err}");
            for result in [
                mounter
                    .claim_volume(pool.clone(), "theirs.img".into(), VolumeFormat::Raw)
                    .await,
                mounter
                    .disown_volume(pool.clone(), "theirs.img".into())
                    .await,
            ] {
                let err = result.unwrap_err();
                assert!(err.message.contains("ownership marks"), "{err}");
            }
        }
        assert!(pool.join("theirs.img").exists());
        assert_eq!(
            std::fs::read(elsewhere.join("web.qcow2")).unwrap(),
            b"precious"
        );
        assert!(!pool.join("new.img").exists());
    }

    #[tokio::test]
    async fn real_mounter_conforms_needs_root() {
        if !may_mount() || !have("qemu-img") {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let plant = |dir: &Path, name: &str| std::fs::write(dir.join(name), b"x").unwrap();
        conformance(&RealMounter::new(), scratch.path(), &plant).await;
    }

    /// A guest owns its raw disk's bytes and can write a qcow2 header into them, naming a
    /// backing file on the host. The volume is still raw: it grows as a raw file, and no
    /// qemu-img ever opens it as qcow2.
    #[tokio::test]
    async fn a_raw_volume_with_a_guest_written_qcow2_header_stays_raw_needs_root() {
        if !may_mount() || !have("qemu-img") {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        let mounter = RealMounter::new();
        let name = "guest.img".to_string();
        mounter
            .create_volume(dir.clone(), name.clone(), VolumeFormat::Raw, 1 << 20)
            .await
            .unwrap();
        let path = dir.join(&name);
        let mut header = vec![0u8; 512];
        header[..4].copy_from_slice(QCOW2_MAGIC);
        header[4..8].copy_from_slice(&3u32.to_be_bytes()); // version
        header[24..32].copy_from_slice(&(1u64 << 40).to_be_bytes()); // "virtual size"
        {
            use std::io::{Seek, Write};
            let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.seek(std::io::SeekFrom::Start(0)).unwrap();
            file.write_all(&header).unwrap();
        }
        mounter
            .resize_volume(dir.clone(), name.clone(), VolumeFormat::Raw, 2 << 20)
            .await
            .unwrap();
        mounter
            .create_volume(dir.clone(), name.clone(), VolumeFormat::Raw, 3 << 20)
            .await
            .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 << 20);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            &bytes[..512],
            &header[..],
            "the guest's bytes are untouched"
        );
        let err = mounter
            .resize_volume(dir.clone(), name, VolumeFormat::Raw, 1 << 20)
            .await
            .unwrap_err();
        assert!(
            err.message.contains(&format!("is {} bytes", 3 << 20)),
            "{err}"
        );
    }

    /// The mount options of `target` in the kernel's mount table.
    fn mount_options(target: &Path) -> String {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let target = shown(target);
        mountinfo
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                (fields.get(4) == Some(&target.as_str())).then(|| fields[5].to_owned())
            })
            .next_back()
            .unwrap_or_else(|| panic!("{target} is not mounted"))
    }

    #[tokio::test]
    async fn real_pools_are_mounted_nosuid_nodev_needs_root() {
        if !may_mount() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let source = scratch.path().join("source");
        let target = scratch.path().join("target");
        std::fs::create_dir_all(&source).unwrap();
        let mounter = RealMounter::new();
        mounter
            .mount(dir_source(&source), target.clone())
            .await
            .unwrap();
        let options = mount_options(&target);
        mounter.unmount(target.clone()).await.unwrap();
        let options: Vec<&str> = options.split(',').collect();
        assert!(
            options.contains(&"nosuid") && options.contains(&"nodev"),
            "{options:?}"
        );
    }

    /// A mount left at a pool's mount point by an earlier pool of the same name (the agent
    /// restarted in between and forgot it) is replaced, not taken for the new source.
    #[tokio::test]
    async fn a_stale_mount_of_another_source_is_replaced_needs_root() {
        if !may_mount() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let (old, new) = (scratch.path().join("old"), scratch.path().join("new"));
        for (dir, marker) in [(&old, "old-marker"), (&new, "new-marker")] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(marker), "").unwrap();
        }
        let target = scratch.path().join("target");
        RealMounter::new()
            .mount(dir_source(&old), target.clone())
            .await
            .unwrap();
        // A new agent: no memory of the first mount.
        let mounter = RealMounter::new();
        mounter
            .mount(dir_source(&old), target.clone())
            .await
            .unwrap();
        assert!(
            target.join("old-marker").exists(),
            "the same source is kept"
        );
        mounter
            .mount(dir_source(&new), target.clone())
            .await
            .unwrap();
        let replaced = target.join("new-marker").exists() && !target.join("old-marker").exists();
        mounter.unmount(target.clone()).await.unwrap();
        assert!(
            !mounted_in_mountinfo(&target).unwrap(),
            "one mount, not two stacked"
        );
        assert!(replaced, "the stale mount was reused");
    }

    /// The block device under the root filesystem, as measured once: a `block` pool on the
    /// host's own root disk was accepted and mounted.
    fn root_device() -> PathBuf {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let devices = mountinfo.lines().filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (dev, at) = (fields[2], fields[4]);
            let uevent = std::fs::read_to_string(format!("/sys/dev/block/{dev}/uevent")).ok()?;
            let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
            Some((at == "/", PathBuf::from(format!("/dev/{name}"))))
        });
        // The root's device if it is a block device, else any mounted block device.
        let mut devices: Vec<(bool, PathBuf)> = devices.filter(|(_, d)| d.exists()).collect();
        devices.sort_by_key(|(root, _)| !root);
        devices
            .into_iter()
            .next()
            .expect("a mounted block device")
            .1
    }

    #[tokio::test]
    async fn real_mounter_refuses_a_block_device_that_is_mounted_needs_root() {
        if !may_mount() {
            return;
        }
        let device = root_device();
        let scratch = tempfile::tempdir().unwrap();
        let source = PoolSource::Block {
            device: shown(&device),
            fs_type: "ext4".into(),
        };
        let err = RealMounter::new()
            .mount(source, scratch.path().join("target"))
            .await
            .unwrap_err();
        let MountError::Refused(message) = &err else {
            panic!("{device:?} was not refused: {err:?}")
        };
        assert!(
            message.contains("is in use") && message.contains("is mounted on"),
            "{message}"
        );
    }

    /// A link to a system directory is followed before the source is judged.
    #[tokio::test]
    async fn real_mounter_refuses_a_link_into_a_system_directory_needs_root() {
        if !may_mount() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let link = scratch.path().join("innocent");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        let err = RealMounter::new()
            .mount(dir_source(&link), scratch.path().join("target"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, MountError::Refused(m) if m.contains("/etc is in /etc")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn real_mounter_names_a_missing_source_needs_root() {
        if !may_mount() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let err = RealMounter::new()
            .mount(
                dir_source(&scratch.path().join("nope")),
                scratch.path().join("t"),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, MountError::Source { .. }), "{err}");
        assert!(
            err.to_string().contains("No such file or directory"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn real_mount_gone_read_only_is_seen_needs_root() {
        if !may_mount() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let source = scratch.path().join("source");
        std::fs::create_dir(&source).unwrap();
        let target = scratch.path().join("pools/p");
        let mounter = RealMounter::new();
        mounter
            .mount(dir_source(&source), target.clone())
            .await
            .unwrap();
        // What an operator (or the kernel, after I/O errors) may do behind the agent's back.
        nix::mount::mount(
            None::<&str>,
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT
                | nix::mount::MsFlags::MS_BIND
                | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap();
        let usage = mounter.usage(target.clone()).await.unwrap();
        mounter.unmount(target).await.unwrap();
        assert!(usage.read_only, "{usage:?}");
    }

    #[tokio::test]
    async fn real_block_pool_mounts_a_loop_backed_ext4_image_needs_root() {
        if !may_mount() || !have("mkfs.ext4") {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let image = scratch.path().join("pool.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .status()
            .unwrap();
        assert!(mkfs.success());
        let source = PoolSource::Block {
            device: shown(&image),
            fs_type: "ext4".into(),
        };
        let target = scratch.path().join("pools/blk");
        let mounter = RealMounter::new();
        mounter.mount(source.clone(), target.clone()).await.unwrap();
        mounter
            .mount(source, target.clone())
            .await
            .expect("mounting twice is idempotent");
        let usage = mounter.usage(target.clone()).await.unwrap();
        // ext4 keeps some of 64 MiB for itself; the rest is the pool's.
        assert!(
            (40 << 20..=64 << 20).contains(&usage.capacity.total_bytes),
            "{usage:?}"
        );
        mounter
            .create_volume(target.clone(), "v.raw".into(), VolumeFormat::Raw, 1 << 20)
            .await
            .unwrap();
        assert_eq!(mounter.usage(target.clone()).await.unwrap().volume_count, 1);
        mounter.unmount(target.clone()).await.unwrap();
        assert!(!mounter.is_mounted(target).await.unwrap());
    }

    #[tokio::test]
    async fn real_nfs_pool_fails_with_the_kernels_message_needs_root() {
        if !may_mount() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let source = PoolSource::Nfs {
            server: "127.0.0.1".into(),
            export: "/export".into(),
            options: Some("vers=4.2".into()),
        };
        let err = RealMounter::new()
            .mount(source, scratch.path().join("nfs"))
            .await
            .unwrap_err();
        let MountError::Mount { from, reason, .. } = &err else {
            panic!("expected a mount failure, got {err}");
        };
        assert_eq!(from, "127.0.0.1:/export");
        let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap();
        if filesystems.contains("\tnfs\n") {
            // A kernel with an NFS client fails differently (nothing serves NFS on loopback
            // here), but still in the system's words.
            assert!(
                !reason.is_empty() && !reason.contains("cannot run"),
                "{err}"
            );
        } else {
            assert!(reason.ends_with("unknown filesystem type 'nfs'."), "{err}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_hung_filesystem_costs_one_thread_and_never_blocks_the_caller_needs_root() {
        if !may_mount() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let target = scratch.path().join("hung");
        let fuse = crate::testing::HungFuse::mount(&target).expect("mount a hung FUSE filesystem");
        let mounter = RealMounter::new();
        let first = tokio::time::timeout(Duration::from_millis(300), mounter.usage(target.clone()));
        assert!(
            first.await.is_err(),
            "statvfs on a hung FUSE mount returned"
        );
        let second =
            tokio::time::timeout(Duration::from_millis(300), mounter.usage(target.clone()))
                .await
                .expect("a second call must not wait for the hung one");
        assert!(
            matches!(second, Err(MountError::Stuck { .. })),
            "{second:?}"
        );
        drop(fuse);
        // Once the filesystem is gone, the stuck call returns and the path is usable again.
        tokio::time::timeout(Duration::from_secs(5), async {
            while mounter.in_flight.lock().unwrap().contains_key(&target) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the hung call returns after the connection is aborted");
    }
}
