//! The real mounter: mount(2) for directory pools (bind mounts), mount(8) for NFS and block
//! pools, statvfs(3) for usage, and volume files with qemu-img, each call on a blocking
//! thread and never two at once on one path. Needs root to mount.

use std::{
    collections::BTreeMap,
    io::Read,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use qvdc_transport::protocol::{
    Capacity, HostError, HostErrorKind, PoolSource, VolumeFormat, VolumeInfo,
};

use super::{
    no_volume, not_ours, shown, shrink_refused, volume_exists_differently, MountError, Mounter,
    Usage, OWNERSHIP_DIR, VOLUME_COUNT_MAX,
};
use crate::source_policy::SourcePolicy;

/// mount(2), mount(8), statvfs(3) and qemu-img on this machine. Needs root to mount.
#[derive(Debug, Default, Clone)]
pub struct RealMounter {
    /// Paths with a call still running on a blocking thread.
    pub(super) in_flight: Arc<Mutex<BTreeMap<PathBuf, &'static str>>>,
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

/// Every mount point in the kernel's mount table (`\040` read back as a space); `path` names
/// what the caller was looking at, for the error.
fn mount_points(path: &Path) -> Result<Vec<PathBuf>, MountError> {
    let table =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|reason| MountError::Io {
            op: "read mountinfo",
            path: path.display().to_string(),
            reason: reason.to_string(),
        })?;
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .collect())
}

/// `path` resolved, or `None` where nothing can be mounted (no such directory, or a file).
fn canonical_dir(path: &Path) -> Result<Option<PathBuf>, MountError> {
    match std::fs::canonicalize(path) {
        Ok(path) => Ok(Some(path)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(MountError::Io {
            op: "read mountinfo",
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Whether `target` is a mount point, per the kernel's mount table.
pub(super) fn mounted_in_mountinfo(target: &Path) -> Result<bool, MountError> {
    let Some(canonical) = canonical_dir(target)? else {
        return Ok(false);
    };
    Ok(mount_points(target)?.contains(&canonical))
}

/// The names of the mount points directly below `root`, from the kernel's mount table.
fn mounted_below_now(root: &Path) -> Result<Vec<String>, MountError> {
    let Some(canonical) = canonical_dir(root)? else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = mount_points(root)?
        .into_iter()
        .filter(|point| point.parent() == Some(canonical.as_path()))
        .filter_map(|point| Some(point.file_name()?.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
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

pub(super) const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

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

    async fn mounted_below(&self, root: PathBuf) -> Result<Vec<String>, MountError> {
        let path = root.clone();
        self.blocking("read mountinfo", &path, move || mounted_below_now(&root))
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
