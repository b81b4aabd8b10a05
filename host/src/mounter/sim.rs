//! The simulated mounter: an in-memory mount table and volume store for the deterministic
//! simulation, which can be told to fail mounts or hang.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use qvdc_transport::protocol::{Capacity, HostError, PoolSource, VolumeFormat, VolumeInfo};

use super::{
    no_volume, not_ours, shown, shrink_refused, volume_exists_differently, MountError, Mounter,
    Usage,
};

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

    async fn mounted_below(&self, root: PathBuf) -> Result<Vec<String>, MountError> {
        self.unless_hung().await;
        Ok(self
            .table()
            .mounts
            .keys()
            .filter(|target| target.parent() == Some(root.as_path()))
            .filter_map(|target| Some(target.file_name()?.to_string_lossy().into_owned()))
            .collect())
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
