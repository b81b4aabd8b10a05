//! Tools for tests that need the system to misbehave the way production systems do.

use std::path::{Path, PathBuf};

/// A FUSE filesystem whose daemon never answers: every call into it (stat, statvfs, readdir)
/// blocks until the filesystem is dropped, like an NFS mount whose server died. Mounted by
/// hand on /dev/fuse, so no FUSE library is needed. Needs root.
pub struct HungFuse {
    device: Option<std::fs::File>,
    target: PathBuf,
}

impl HungFuse {
    /// Mounts it on `target` (created if missing; it may be a mount point already, which the
    /// hung filesystem then covers).
    pub fn mount(target: &Path) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(target)?;
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")?;
        let data = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            device.as_raw_fd()
        );
        nix::mount::mount(
            Some("qvdc-hung"),
            target,
            Some("fuse.qvdc-hung"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )?;
        Ok(Self {
            device: Some(device),
            target: target.to_path_buf(),
        })
    }
}

impl Drop for HungFuse {
    fn drop(&mut self) {
        // Closing the device aborts the connection: blocked calls return ENOTCONN.
        drop(self.device.take());
        let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
    }
}
