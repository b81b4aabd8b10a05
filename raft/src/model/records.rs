//! The records the desired state keeps: hosts, pools and the volumes in them, networks and
//! VMs. Persisted in snapshots: field order is the encoding.

use std::collections::{BTreeMap, BTreeSet};

use qvdc_transport::protocol::{
    DesiredPower, HaPolicy, Inventory, MigrationMode, NetworkSpec, PoolScope, PoolSpec, VmSpec,
    VolumeFormat,
};
use serde::{Deserialize, Serialize};

use super::ValidationError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    pub inventory: Inventory,
    /// In maintenance, a host keeps what it runs but gets no new VMs.
    pub maintenance: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub spec: PoolSpec,
    pub hosts: BTreeSet<String>,
    /// Volume files qvdc created in the pool, by name. A pool is one storage seen by all its
    /// hosts, so a volume exists once, created through any healthy host.
    pub volumes: BTreeMap<String, VolumeRecord>,
}

/// A file an adopted domain uses, recorded as a volume of `pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptedVolume {
    pub pool: String,
    pub name: String,
    pub record: VolumeRecord,
}

impl PoolRecord {
    /// Whether a volume of this pool may live on `host`: a local pool's volume on one of its
    /// hosts, a shared pool's on none in particular.
    pub fn check_volume_host(&self, host: Option<&str>) -> Result<(), ValidationError> {
        let pool = &self.spec.name;
        let bad = |m: String| Err(ValidationError::BadVolume(m));
        let hosts = || self.hosts.iter().cloned().collect::<Vec<_>>().join(", ");
        match (self.spec.scope, host) {
            (PoolScope::Shared, None) => Ok(()),
            (PoolScope::Shared, Some(host)) => bad(format!(
                "pool {pool} is shared: its hosts see the same volumes, so a volume is on no host in particular (drop --host {host})"
            )),
            (PoolScope::Local, None) => bad(format!(
                "pool {pool} is local: name the host whose storage holds the volume with --host, one of {}",
                hosts()
            )),
            (PoolScope::Local, Some(host)) if !self.hosts.contains(host) => bad(format!(
                "pool {pool} is not assigned to host {host}; name one of {}",
                hosts()
            )),
            (PoolScope::Local, Some(_)) => Ok(()),
        }
    }

    /// The volumes of this pool that live on `host` (a local pool's), in name order.
    pub fn volumes_on<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.volumes
            .iter()
            .filter(move |(_, v)| v.host.as_deref() == Some(host))
            .map(|(name, _)| name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub format: VolumeFormat,
    pub size_bytes: u64,
    /// In a local pool, the host whose storage holds it; `None` in a shared pool.
    pub host: Option<String>,
}

/// A vSwitch and the hosts that carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub spec: NetworkSpec,
    pub hosts: BTreeSet<String>,
}

/// A VM and the placement decision for it: which host runs it, and whether it should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub spec: VmSpec,
    pub host: String,
    pub power: DesiredPower,
    /// For a VM adopted from its host: the libvirt UUID of the domain it was. That domain,
    /// found on the VM's host under the VM's name without qvdc's metadata, is this VM, and
    /// its host is told to record the VM's id in it.
    pub adopted: Option<String>,
    /// The VM is being given back to its host: qvdc no longer acts on its domain, and
    /// removes the record once the host has forgotten it (see [`Command::ReleaseVm`]).
    ///
    /// [`Command::ReleaseVm`]: super::Command::ReleaseVm
    pub releasing: bool,
    /// Whether the VM is restarted elsewhere when its host is lost (storage format 3 on;
    /// off for VMs made before).
    pub ha: HaPolicy,
    /// A move to another host under way: until it finishes or is abandoned, `host` stays
    /// the VM's host and nothing else is done to its domain (storage format 3 on).
    pub moving: Option<Move>,
    /// Why the VM's last move failed, until the next one starts.
    pub move_failed: Option<FailedMove>,
}

/// A VM's move to host `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub to: String,
    pub mode: MigrationMode,
}

/// A move that was given up, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedMove {
    pub to: String,
    pub mode: MigrationMode,
    pub reason: String,
}
