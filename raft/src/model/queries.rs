//! What the desired state answers beyond its maps: lookups that say what is missing, the
//! rules that follow from the state (a VM's id is its request's, which host holds a
//! volume's file, which volumes a released VM takes along) and the state's digest.

use qvdc_transport::protocol::{PoolScope, VmSpec};

use super::{
    requests::{fnv1a, FNV_OFFSET},
    DesiredState, NetworkRecord, PoolRecord, RequestKey, ValidationError, VmRecord, VolumeRecord,
};

impl DesiredState {
    pub(super) fn network(&self, network: &str) -> Result<&NetworkRecord, ValidationError> {
        self.networks
            .get(network)
            .ok_or_else(|| ValidationError::NoSuchNetwork(network.to_owned()))
    }

    pub(super) fn pool(&self, pool: &str) -> Result<&PoolRecord, ValidationError> {
        self.pools
            .get(pool)
            .map(|record| &**record)
            .ok_or_else(|| ValidationError::NoSuchPool(pool.to_owned()))
    }

    /// The VM spec a request to create `spec` makes: its id is the request's id (unique, and
    /// a retry finds the VM by it), and its disks take their volumes' formats, never the ones
    /// the request names (a raw disk opened as qcow2 would let its guest-written header name
    /// host files).
    pub fn vm_to_make(&self, request: &RequestKey, mut spec: VmSpec) -> VmSpec {
        spec.id = request.id.clone();
        self.with_volume_formats(&mut spec);
        spec
    }

    /// `spec` with each disk in its volume's format.
    pub fn with_volume_formats(&self, spec: &mut VmSpec) {
        for disk in &mut spec.disks {
            if let Ok(volume) = self.volume(&disk.pool, &disk.volume) {
                disk.format = volume.format;
            }
        }
    }

    /// The host a new volume of `pool` goes on: the one asked for, or, for a local pool
    /// with a single host, that host (so the operator need not name it).
    pub fn volume_host(&self, pool: &str, asked: Option<String>) -> Option<String> {
        asked.or_else(|| {
            let record = self.pools.get(pool)?;
            let only = record.spec.scope == PoolScope::Local && record.hosts.len() == 1;
            only.then(|| record.hosts.first().cloned())?
        })
    }

    /// The hosts that may hold the file of volume `pool`/`name`: its own host if the record
    /// names one; every host of a local pool if the record is gone (a retried delete: each
    /// host deletes only a file marked as this volume's); none for a shared pool, whose
    /// files any healthy host reaches.
    pub fn volume_file_hosts(&self, pool: &str, name: &str) -> Vec<String> {
        let record = self.pools.get(pool);
        let local = record.is_some_and(|p| p.spec.scope == PoolScope::Local);
        match (
            self.volume(pool, name).ok().and_then(|v| v.host.clone()),
            record,
        ) {
            (Some(host), _) => vec![host],
            (None, Some(p)) if local => p.hosts.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Whether `report`, a domain without qvdc's id on `host`, is a VM adopted from it whose
    /// host has not recorded the VM's id yet: then it is that VM, not an unmanaged domain.
    pub fn is_adopted_domain(
        &self,
        host: &str,
        report: &qvdc_transport::protocol::VmReport,
    ) -> bool {
        self.vms.get(&report.name).is_some_and(|vm| {
            vm.host == host && vm.adopted.as_deref() == Some(report.uuid.as_str())
        })
    }

    pub fn volume(&self, pool: &str, name: &str) -> Result<&VolumeRecord, ValidationError> {
        self.pool(pool)?
            .volumes
            .get(name)
            .ok_or_else(|| ValidationError::NoSuchVolume {
                pool: pool.to_owned(),
                name: name.to_owned(),
            })
    }

    pub(super) fn vm(&self, name: &str) -> Result<&VmRecord, ValidationError> {
        self.vms
            .get(name)
            .ok_or_else(|| ValidationError::NoSuchVm(name.to_owned()))
    }

    /// A fingerprint of the whole desired state (FNV-1a over its encoding). Nodes that
    /// applied the same log agree on it; `cluster status` shows it so that can be checked.
    ///
    /// A state without HA policies is hashed as format 2 encodes it, so nodes of v0.1.0 and
    /// of this release show the same digest for it during a rolling upgrade.
    pub fn digest(&self) -> u64 {
        match self.to_format_2() {
            Some(old) => fnv_digest(&old),
            None => fnv_digest(self),
        }
    }

    /// The volumes that leave qvdc with `vm` when it is released: its disks that are
    /// volumes and that no other VM uses.
    pub fn released_volumes(&self, vm: &VmRecord) -> Vec<qvdc_transport::protocol::VmDisk> {
        let mut volumes: Vec<_> = vm
            .spec
            .disks
            .iter()
            .filter(|disk| self.volume(&disk.pool, &disk.volume).is_ok())
            .filter(|disk| {
                !self.vms.values().any(|other| {
                    other.spec.name != vm.spec.name
                        && other
                            .spec
                            .disks
                            .iter()
                            .any(|d| d.pool == disk.pool && d.volume == disk.volume)
                })
            })
            .cloned()
            .collect();
        volumes.sort_by(|a, b| (&a.pool, &a.volume).cmp(&(&b.pool, &b.volume)));
        volumes.dedup_by(|a, b| a.pool == b.pool && a.volume == b.volume);
        volumes
    }
}

/// FNV-1a over `value`'s encoding.
pub(super) fn fnv_digest(value: &impl serde::Serialize) -> u64 {
    struct Fnv(u64);
    impl std::io::Write for Fnv {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 = fnv1a(self.0, bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hash = Fnv(FNV_OFFSET);
    qvdc_transport::codec::encode_into(value, &mut hash).expect("encoding into memory cannot fail");
    hash.0
}
