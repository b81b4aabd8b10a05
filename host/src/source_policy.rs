//! Which pool sources a host accepts. An operator is a cluster admin, not root on every
//! host: a host mounts only sources its owner allows (`qhost --pool-source-allow`), never
//! its own system directories or its agent's data, and never a block device that is
//! mounted or in use. The lexical rules here run on every host, simulated ones included;
//! the real mounter also checks the source's canonical path and whether a device is busy
//! (see `RealMounter`).

use std::path::{Component, Path, PathBuf};

use qvdc_transport::protocol::{HostError, HostErrorKind, PoolSource};

/// Directories whose contents belong to the host's operating system: no pool may be one of
/// them or inside one. `/dev` is among them for directories and image files; block pools
/// name devices under it, which are checked for being in use instead.
pub const SYSTEM_DIRS: [&str; 13] = [
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
    "/sbin", "/sys", "/usr",
];
/// Directories that hold other people's files: a pool may live below them (a checkout in a
/// home directory, `/var/lib/libvirt/images`) but may not be one of them, since volume
/// commands create and delete files in a pool's top directory.
pub const SHARED_DIRS: [&str; 9] = [
    "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var", "/var/lib",
];

/// The sources a host accepts for its pools.
#[derive(Debug, Clone, Default)]
pub struct SourcePolicy {
    /// When not empty, a local source must lie at or under one of these.
    allow: Vec<PathBuf>,
    /// The agent's own data (fence, pool mount points): never a pool's source.
    data_dir: Option<PathBuf>,
}

fn refused(message: String) -> HostError {
    HostError::new(HostErrorKind::Invalid, message)
}

/// `path` as an absolute path without `.` or `..` components, or why not.
fn plain(path: &str) -> Result<PathBuf, HostError> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(refused(format!(
            "pool source {path:?} must be an absolute path"
        )));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(refused(format!(
            "pool source {path:?} must not contain '.' or '..'"
        )));
    }
    Ok(path.components().collect())
}

impl SourcePolicy {
    /// Sources allowed at or under `allow` (every local path when empty), except the
    /// system directories and `data_dir`.
    pub fn new(allow: Vec<PathBuf>, data_dir: Option<PathBuf>) -> Self {
        Self { allow, data_dir }
    }

    /// Checks a source as the operator gave it.
    pub fn check(&self, source: &PoolSource) -> Result<(), HostError> {
        match source {
            PoolSource::Nfs { options, .. } => check_nfs_options(options.as_deref()),
            PoolSource::Dir { path } => self.check_path(&plain(path)?, false),
            PoolSource::Block { device, .. } => {
                let device = plain(device)?;
                let is_device = device.starts_with("/dev") && device != Path::new("/dev");
                self.check_path(&device, is_device)
            }
        }
    }

    /// Checks a local path (lexically clean, possibly after resolving links); `device` is
    /// a block device node, which may live under `/dev`.
    pub fn check_path(&self, path: &Path, device: bool) -> Result<(), HostError> {
        if path == Path::new("/") {
            return Err(refused(
                "pool source / is the host's root filesystem; use a directory of its own".into(),
            ));
        }
        let system = SYSTEM_DIRS
            .iter()
            .map(Path::new)
            .find(|dir| path.starts_with(dir) && !(device && *dir == Path::new("/dev")));
        if let Some(dir) = system {
            return Err(refused(format!(
                "pool source {} is in {}, which belongs to the host's operating system",
                path.display(),
                dir.display()
            )));
        }
        if let Some(data) = self.data_dir.as_deref() {
            if path.starts_with(data) || data.starts_with(path) {
                return Err(refused(format!(
                    "pool source {} overlaps the host agent's data directory {}",
                    path.display(),
                    data.display()
                )));
            }
        }
        if SHARED_DIRS.iter().any(|dir| path == Path::new(dir)) {
            return Err(refused(format!(
                "pool source {} holds other files of the host; give the pool a directory of its own below it",
                path.display()
            )));
        }
        // A user's private files: ~/.ssh, ~/.gnupg and the like, of root or of any user.
        let names: Vec<String> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let in_home = match names.first().map(String::as_str) {
            Some("root") => names.get(1),
            Some("home") => names.get(2),
            _ => None,
        };
        let hidden = in_home.is_some_and(|name| name.starts_with('.'));
        if hidden && !device {
            return Err(refused(format!(
                "pool source {} is in a hidden directory (such as ~/.ssh), which holds a user's private files",
                path.display()
            )));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|a| path.starts_with(a)) {
            let allowed: Vec<String> = self.allow.iter().map(|a| a.display().to_string()).collect();
            return Err(refused(format!(
                "pool source {} is not allowed on this host; it accepts sources under {} (qhost --pool-source-allow)",
                path.display(),
                allowed.join(", ")
            )));
        }
        Ok(())
    }
}

/// Mount options that would undo what the host enforces on every pool.
const NFS_OPTIONS_REFUSED: [&str; 2] = ["suid", "dev"];

fn check_nfs_options(options: Option<&str>) -> Result<(), HostError> {
    let Some(options) = options else {
        return Ok(());
    };
    if let Some(bad) = options.split(',').find(|o| NFS_OPTIONS_REFUSED.contains(o)) {
        return Err(refused(format!(
            "NFS option {bad:?} is refused: pools are always mounted nosuid,nodev"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str) -> PoolSource {
        PoolSource::Dir { path: path.into() }
    }

    fn block(device: &str) -> PoolSource {
        PoolSource::Block {
            device: device.into(),
            fs_type: "ext4".into(),
        }
    }

    fn refusal(policy: &SourcePolicy, source: PoolSource) -> String {
        let err = policy.check(&source).unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Invalid);
        err.message
    }

    #[test]
    fn system_directories_the_root_and_the_agents_data_are_refused() {
        let policy = SourcePolicy::new(Vec::new(), Some("/var/lib/qhost".into()));
        assert!(refusal(&policy, dir("/")).contains("root filesystem"));
        for path in [
            "/etc", "/etc/ssh", "/usr/lib", "/boot", "/proc/1", "/dev/shm",
        ] {
            assert!(
                refusal(&policy, dir(path)).contains("operating system"),
                "{path}"
            );
        }
        for path in [
            "/var/lib/qhost",
            "/var/lib/qhost/pools/x",
            "/var/lib",
            "/var",
        ] {
            assert!(
                refusal(&policy, dir(path)).contains("data directory"),
                "{path}"
            );
        }
        for path in ["/root", "/home", "/srv", "/tmp", "/opt"] {
            let message = refusal(&policy, dir(path));
            assert!(
                message.contains("directory of its own"),
                "{path}: {message}"
            );
        }
        for path in ["/root/.ssh", "/home/alice/.gnupg/x"] {
            let message = refusal(&policy, dir(path));
            assert!(message.contains("hidden directory"), "{path}: {message}");
        }
        policy.check(&dir("/root/qvdc/qvdc-dev/shared")).unwrap();
        policy.check(&dir("/home/alice/pools")).unwrap();
        policy.check(&dir("/tmp/.tmpAbc/pool")).unwrap();
        assert!(refusal(&policy, dir("/srv/../etc")).contains("'..'"));
        assert!(refusal(&policy, dir("srv")).contains("absolute"));
        assert!(refusal(&policy, block("/etc/passwd")).contains("operating system"));
        policy.check(&dir("/srv/pools/a")).unwrap();
        policy.check(&dir("/var/lib/libvirt/images")).unwrap();
        policy.check(&block("/dev/sdb")).unwrap();
        policy.check(&block("/srv/images/pool.img")).unwrap();
    }

    #[test]
    fn an_allow_list_narrows_what_is_accepted() {
        let policy = SourcePolicy::new(vec!["/srv/pools".into(), "/dev/sdb".into()], None);
        policy.check(&dir("/srv/pools/a")).unwrap();
        policy.check(&block("/dev/sdb")).unwrap();
        let message = refusal(&policy, dir("/srv/other"));
        assert!(message.contains("not allowed on this host"), "{message}");
        assert!(message.contains("/srv/pools, /dev/sdb"), "{message}");
        assert!(refusal(&policy, block("/dev/sdc")).contains("not allowed"));
        // The allow list never opens the system directories.
        let wide = SourcePolicy::new(vec!["/".into()], None);
        assert!(refusal(&wide, dir("/etc")).contains("operating system"));
    }

    #[test]
    fn nfs_options_that_undo_nosuid_or_nodev_are_refused() {
        let policy = SourcePolicy::default();
        let nfs = |options: &str| PoolSource::Nfs {
            server: "nfs1".into(),
            export: "/export".into(),
            options: Some(options.into()),
        };
        policy.check(&nfs("vers=4.2,hard")).unwrap();
        assert!(refusal(&policy, nfs("vers=4.2,suid")).contains("\"suid\""));
        assert!(refusal(&policy, nfs("dev")).contains("\"dev\""));
    }
}
