//! Whether a command may enter the log: `DesiredState::validate`, run on the leader before
//! proposing and again when applying, and the checks of names, sizes, paths and pool sources
//! it rests on.

use std::collections::BTreeSet;

use qvdc_transport::protocol::{
    DesiredPower, HaPolicy, MigrationMode, NetworkSpec, PoolScope, PoolSource, PoolSpec,
    RevokedCertificate, VmSpec,
};

use super::{
    AdoptedVolume, Command, DesiredState, ValidationError, VmRecord, HOSTS_MAX, NAME_BYTES_MAX,
    NETWORKS_MAX, PATH_BYTES_MAX, POOLS_MAX, POOL_HOSTS_MAX, REQUEST_ID_BYTES_MAX, REVOKED_MAX,
    REVOKED_NAME_BYTES_MAX, VMS_MAX, VM_DISKS_MAX, VM_MEMORY_BYTES_MIN, VM_NICS_MAX, VM_VCPUS_MAX,
    VOLUMES_PER_POOL_MAX, VOLUME_BYTES_MAX,
};

/// The most a move's failure may say (a hypervisor's error message, cut).
pub const MOVE_REASON_BYTES_MAX: usize = 1_024;

/// Refuses a change to VM `name` while it moves: its domain is in the hands of the move.
fn not_moving(name: &str, vm: &VmRecord) -> Result<(), ValidationError> {
    match &vm.moving {
        Some(m) => Err(ValidationError::BadVm(format!(
            "VM {name} is moving to host {} ({}); wait until the move is over (`qvctl vm show {name}`)",
            m.to, m.mode
        ))),
        None => Ok(()),
    }
}

fn room_for(what: &str, count: usize, max: usize) -> Result<(), ValidationError> {
    if count >= max {
        return Err(ValidationError::TooMany {
            what: what.to_owned(),
            max,
        });
    }
    Ok(())
}

/// Checks a name of a pool, host or other object: 1 to 64 bytes of `[A-Za-z0-9._-]`, not
/// starting with '.' or '-' (names become file names and command-line arguments on hosts).
pub fn validate_name(what: &str, name: &str) -> Result<(), ValidationError> {
    let what = what.to_owned();
    if name.is_empty() {
        return Err(ValidationError::EmptyName { what });
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(ValidationError::NameTooLong {
            what,
            name: name.to_owned(),
        });
    }
    if !qvdc_transport::limits::is_plain_name(name) {
        return Err(ValidationError::BadName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn is_mac(mac: &str) -> bool {
    let pairs: Vec<&str> = mac.split(':').collect();
    pairs.len() == 6
        && pairs
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn validate_volume_size(size_bytes: u64) -> Result<(), ValidationError> {
    if (1..=VOLUME_BYTES_MAX).contains(&size_bytes) {
        return Ok(());
    }
    Err(ValidationError::BadVolume(format!(
        "a volume is 1 byte to 16 TiB, not {size_bytes} bytes"
    )))
}

fn validate_path(path: &str) -> Result<(), ValidationError> {
    if path.len() > PATH_BYTES_MAX {
        return Err(ValidationError::PathTooLong);
    }
    if !path.starts_with('/') {
        return Err(ValidationError::RelativePath(path.to_owned()));
    }
    Ok(())
}

/// Filesystems a `block` pool may hold: the ones hosts are expected to mount and that suit
/// VM images.
pub const BLOCK_FS_TYPES: [&str; 3] = ["ext4", "xfs", "btrfs"];

fn validate_source(source: &PoolSource) -> Result<(), ValidationError> {
    let bad = |reason: String| Err(ValidationError::BadSource(reason));
    match source {
        PoolSource::Dir { path } => validate_path(path),
        PoolSource::Nfs {
            server,
            export,
            options,
        } => {
            let server_ok = !server.is_empty()
                && server.len() <= NAME_BYTES_MAX
                && server
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !server_ok {
                return bad(format!(
                    "NFS server {server:?} must be a host name or IP address, like nfs1.example.com or 10.0.0.5"
                ));
            }
            validate_path(export)?;
            if let Some(options) = options {
                if options.len() > PATH_BYTES_MAX || options.chars().any(char::is_whitespace) {
                    return bad(format!(
                        "NFS options {options:?} must be comma-separated mount options without spaces, like vers=4.2,hard"
                    ));
                }
            }
            Ok(())
        }
        PoolSource::Block { device, fs_type } => {
            validate_path(device)?;
            if !BLOCK_FS_TYPES.contains(&fs_type.as_str()) {
                return bad(format!(
                    "filesystem {fs_type:?} is not supported for block pools; use one of {}",
                    BLOCK_FS_TYPES.join(", ")
                ));
            }
            Ok(())
        }
    }
}

impl DesiredState {
    /// Decides whether `command` may enter the log. Run on the leader before proposing and
    /// again when applying, so a command that became invalid while in flight changes nothing.
    pub fn validate(&self, command: &Command) -> Result<(), ValidationError> {
        match command {
            Command::RegisterHost { host_id, inventory } => {
                validate_name("host", host_id)?;
                inventory.check().map_err(ValidationError::BadInventory)?;
                if !self.hosts.contains_key(host_id) {
                    room_for("hosts", self.hosts.len(), HOSTS_MAX)?;
                }
                Ok(())
            }
            Command::CreatePool { spec, hosts } => self.validate_create_pool(spec, hosts),
            Command::CreateVm { spec, host, .. } => self.validate_create_vm(spec, host),
            Command::CreateHaVm { spec, host, ha, .. } => {
                self.validate_create_vm(spec, host)?;
                self.validate_ha(spec, ha)
            }
            Command::SetVmHa { name, ha } => match self.vm(name)? {
                vm if vm.releasing => Err(ValidationError::BadVm(format!(
                    "VM {name} is being released; qvdc no longer restarts it"
                ))),
                vm => self.validate_ha(&vm.spec, ha),
            },
            Command::FailOverVm { name, from, to } => self.validate_fail_over(name, from, to),
            Command::BeginMove { name, to, mode } => self.validate_move(name, to, *mode),
            Command::FinishMove { name, from, to } => {
                let vm = self.vm(name)?;
                match &vm.moving {
                    // The new host must still be able to have it (its pools, its networks).
                    Some(m) if m.to == *to && vm.host == *from => {
                        self.check_vm_fits_host(&vm.spec, to)
                    }
                    _ => Err(ValidationError::BadVm(format!(
                        "VM {name} is not moving from {from} to {to}: that move was finished or given up"
                    ))),
                }
            }
            Command::AbandonMove { name, to, reason } => {
                let vm = self.vm(name)?;
                if reason.len() > MOVE_REASON_BYTES_MAX {
                    return Err(ValidationError::BadVm(format!(
                        "a move's failure is at most {MOVE_REASON_BYTES_MAX} bytes"
                    )));
                }
                match &vm.moving {
                    Some(m) if m.to == *to => Ok(()),
                    _ => Err(ValidationError::BadVm(format!(
                        "VM {name} is not moving to {to}"
                    ))),
                }
            }
            Command::RemoveHost { host } => {
                self.known_hosts(std::slice::from_ref(host))?;
                let arriving = self
                    .vms
                    .values()
                    .filter(|vm| vm.moving.as_ref().is_some_and(|m| m.to == *host));
                let on_it: Vec<&str> = self
                    .vms_on(host)
                    .map(String::as_str)
                    .chain(arriving.map(|vm| vm.spec.name.as_str()))
                    .collect();
                if on_it.is_empty() {
                    Ok(())
                } else {
                    Err(ValidationError::InUse(format!(
                        "host {host} still has VMs {}; delete them (`qvctl vm delete`) or let HA restart them elsewhere first",
                        on_it.join(", ")
                    )))
                }
            }
            Command::AssignPool { pool, hosts } | Command::UnassignPool { pool, hosts } => {
                self.validate_assignment(command, pool, hosts)
            }
            Command::DeletePool { pool } => {
                self.pool(pool)?;
                self.refuse_if_used(pool, None, None)
            }
            Command::CreateVolume {
                pool,
                name,
                size_bytes,
                host,
                ..
            } => {
                validate_name("volume", name)?;
                validate_volume_size(*size_bytes)?;
                let record = self.pool(pool)?;
                record.check_volume_host(host.as_deref())?;
                room_for(
                    "volumes in one pool",
                    record.volumes.len(),
                    VOLUMES_PER_POOL_MAX,
                )?;
                if record.volumes.contains_key(name) {
                    return Err(ValidationError::VolumeExists {
                        pool: pool.clone(),
                        name: name.clone(),
                    });
                }
                Ok(())
            }
            Command::ResizeVolume {
                pool,
                name,
                size_bytes,
            } => {
                validate_volume_size(*size_bytes)?;
                let volume = self.volume(pool, name)?;
                if *size_bytes < volume.size_bytes {
                    return Err(ValidationError::BadVolume(format!(
                        "volume {pool}/{name} is {} bytes; it can only grow (shrinking would cut off data the guest may use)",
                        volume.size_bytes
                    )));
                }
                Ok(())
            }
            Command::DeleteVolume { pool, name } => {
                self.volume(pool, name)?;
                self.refuse_if_used(pool, None, Some(name))
            }
            Command::CreateNetwork { spec, hosts } => self.validate_create_network(spec, hosts),
            Command::SetMaintenance { host, .. } => self.known_hosts(std::slice::from_ref(host)),
            Command::RevokeCertificate(certificate) => self.validate_revocation(certificate),
            Command::AssignNetwork { network, hosts } => {
                self.network(network)?;
                self.known_hosts(hosts)
            }
            Command::UnassignNetwork { network, hosts } => {
                self.network(network)?;
                self.known_hosts(hosts)?;
                for host in hosts {
                    self.refuse_if_network_used(network, Some(host))?;
                }
                Ok(())
            }
            Command::DeleteNetwork { network } => {
                self.network(network)?;
                self.refuse_if_network_used(network, None)
            }
            Command::SetVmPower { name, .. } | Command::DeleteVm { name } => {
                match self.vms.get(name) {
                    None => Err(ValidationError::NoSuchVm(name.clone())),
                    Some(vm) if vm.releasing => Err(ValidationError::BadVm(format!(
                        "VM {name} is being given back to its host; finish with `qvctl vm release {name}`"
                    ))),
                    Some(vm) => not_moving(name, vm),
                }
            }
            Command::AdoptVm {
                spec,
                host,
                uuid,
                volumes,
                ..
            } => self.validate_adoption(spec, host, uuid, volumes),
            Command::ReleaseVm { name } => not_moving(name, self.vm(name)?),
            Command::ForgetVm { name, volumes } => match self.vm(name)? {
                vm if !vm.releasing => Err(ValidationError::BadVm(format!(
                    "VM {name} is not being released; `qvctl vm release {name}` gives it back"
                ))),
                vm if self.released_volumes(vm) != *volumes => {
                    Err(ValidationError::BadVm(format!(
                        "VM {name}'s volumes changed while it was being released; retry `qvctl vm release {name}`"
                    )))
                }
                _ => Ok(()),
            },
            Command::Once {
                request_id,
                digest,
                command,
            } => match self.requests.lookup(request_id) {
                // A retry: it replays the recorded outcome.
                Some((recorded, _)) if recorded == *digest => Ok(()),
                recorded => self.validate_new_request(request_id, command, recorded.is_some()),
            },
            Command::Audited { by, command, .. } => {
                if by.as_ref().is_some_and(|by| by.len() > REVOKED_NAME_BYTES_MAX) {
                    return Err(ValidationError::BadCertificate(format!(
                        "a certificate name is at most {REVOKED_NAME_BYTES_MAX} bytes"
                    )));
                }
                if matches!(**command, Command::Audited { .. } | Command::Batch(_)) {
                    return Err(ValidationError::NestedRequest);
                }
                self.validate(command)
            }
            Command::SetClusterLevel { .. } => Ok(()),
            Command::SetAuditRetention(entries) => {
                if *entries == 0 || *entries > super::AUDIT_RETENTION_MAX {
                    return Err(ValidationError::BadRetention(format!(
                        "the audit trail keeps 1 to {} changes, not {entries}",
                        super::AUDIT_RETENTION_MAX
                    )));
                }
                Ok(())
            }
            // Each command of a batch is validated when it is applied, against the state the
            // commands before it left.
            Command::Batch(commands) => {
                if commands.iter().any(|c| matches!(c, Command::Batch(_))) {
                    return Err(ValidationError::NestedRequest);
                }
                Ok(())
            }
        }
    }

    /// Whether `command` may be applied as a new request `request_id` (`used`: the id was
    /// recorded for another request).
    pub(super) fn validate_new_request(
        &self,
        request_id: &str,
        command: &Command,
        used: bool,
    ) -> Result<(), ValidationError> {
        if request_id.is_empty() || request_id.len() > REQUEST_ID_BYTES_MAX {
            return Err(ValidationError::BadRequestId);
        }
        if matches!(
            command,
            Command::Once { .. } | Command::Batch(_) | Command::Audited { .. }
        ) {
            return Err(ValidationError::NestedRequest);
        }
        if used {
            return Err(ValidationError::RequestIdReused(request_id.to_owned()));
        }
        self.validate(command)
    }

    fn validate_create_pool(
        &self,
        spec: &PoolSpec,
        hosts: &[String],
    ) -> Result<(), ValidationError> {
        validate_name("pool", &spec.name)?;
        validate_source(&spec.source)?;
        if self.pools.contains_key(&spec.name) {
            return Err(ValidationError::PoolExists(spec.name.clone()));
        }
        room_for("pools", self.pools.len(), POOLS_MAX)?;
        if hosts.is_empty() {
            return Err(ValidationError::NoHosts);
        }
        if hosts.len() > POOL_HOSTS_MAX {
            return Err(ValidationError::TooManyHosts);
        }
        let mut seen = BTreeSet::new();
        for host in hosts {
            if !seen.insert(host) {
                return Err(ValidationError::DuplicateHost(host.clone()));
            }
        }
        let unknown: Vec<String> = hosts
            .iter()
            .filter(|h| !self.hosts.contains_key(*h))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ValidationError::UnknownHosts(unknown));
        }
        Ok(())
    }

    fn known_hosts(&self, hosts: &[String]) -> Result<(), ValidationError> {
        if hosts.is_empty() {
            return Err(ValidationError::NoHosts);
        }
        let unknown: Vec<String> = hosts
            .iter()
            .filter(|h| !self.hosts.contains_key(*h))
            .cloned()
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(ValidationError::UnknownHosts(unknown))
        }
    }

    fn refuse_if_network_used(
        &self,
        network: &str,
        host: Option<&str>,
    ) -> Result<(), ValidationError> {
        let user = self.vms.values().find(|vm| {
            host.is_none_or(|h| h == vm.host) && vm.spec.nics.iter().any(|n| n.network == network)
        });
        match user {
            Some(vm) => Err(ValidationError::InUse(format!(
                "VM {} on {} is attached to network {network}; delete the VM first",
                vm.spec.name, vm.host
            ))),
            None => Ok(()),
        }
    }

    fn validate_revocation(&self, certificate: &RevokedCertificate) -> Result<(), ValidationError> {
        let bad = |m: String| Err(ValidationError::BadCertificate(m));
        match qvdc_transport::tls::parse_serial(&certificate.serial) {
            Ok(serial) if serial == certificate.serial => {}
            Ok(serial) => {
                return bad(format!(
                    "serial {:?} is not written as {serial:?}",
                    certificate.serial
                ))
            }
            Err(e) => return bad(e),
        }
        if certificate
            .role
            .parse::<qvdc_transport::tls::Role>()
            .is_err()
        {
            return bad(format!(
                "role {:?} is not server, host or operator",
                certificate.role
            ));
        }
        // Any name a certificate may carry: one issued by other tools need not follow
        // qvdc's naming rules and must still be revocable. The serial decides.
        if certificate.name.len() > REVOKED_NAME_BYTES_MAX
            || certificate.name.chars().any(char::is_control)
        {
            return bad(format!(
                "certificate name {:?} is longer than {REVOKED_NAME_BYTES_MAX} bytes or has control characters",
                certificate.name
            ));
        }
        if self.revoked.contains_key(&certificate.serial) {
            return Ok(()); // already revoked: applying it changes nothing
        }
        room_for("revoked certificates", self.revoked.len(), REVOKED_MAX)
    }

    fn validate_create_network(
        &self,
        spec: &NetworkSpec,
        hosts: &[String],
    ) -> Result<(), ValidationError> {
        validate_name("network", &spec.name)?;
        if self.networks.contains_key(&spec.name) {
            return Err(ValidationError::NetworkExists(spec.name.clone()));
        }
        room_for("networks", self.networks.len(), NETWORKS_MAX)?;
        let bad = |m: String| Err(ValidationError::BadNetwork(m));
        let ifname = qvdc_transport::limits::is_interface_name;
        if !ifname(&spec.bridge) {
            return bad(format!(
                "bridge name {:?} must be 1 to 15 letters, digits, '-', '_' or '.' (a Linux interface name)",
                spec.bridge
            ));
        }
        if let Some(other) = self
            .networks
            .values()
            .find(|n| n.spec.bridge == spec.bridge)
        {
            return bad(format!(
                "bridge {} already carries network {}; pick another bridge name",
                spec.bridge, other.spec.name
            ));
        }
        match (&spec.uplink, spec.vlan) {
            (None, None) => {}
            (Some(uplink), Some(vlan)) => {
                if !(1..=4094).contains(&vlan) {
                    return bad(format!("VLAN id {vlan} must be between 1 and 4094"));
                }
                if !ifname(&format!("{uplink}.{vlan}")) {
                    return bad(format!(
                        "uplink {uplink:?} with VLAN {vlan} makes an interface name longer than 15 bytes"
                    ));
                }
            }
            _ => return bad("a VLAN needs both --vlan and --uplink (or neither)".into()),
        }
        self.known_hosts(hosts)
    }

    /// Refuses when a VM (on `host`, if given) has a disk in `pool` (on volume `volume`, if
    /// given): taking the storage away would break it.
    fn refuse_if_used(
        &self,
        pool: &str,
        host: Option<&str>,
        volume: Option<&str>,
    ) -> Result<(), ValidationError> {
        for vm in self.vms.values() {
            if host.is_some_and(|h| h != vm.host) {
                continue;
            }
            let uses = vm
                .spec
                .disks
                .iter()
                .any(|d| d.pool == pool && volume.is_none_or(|v| v == d.volume));
            if uses {
                let what = volume.map_or(format!("pool {pool}"), |v| format!("volume {pool}/{v}"));
                return Err(ValidationError::InUse(format!(
                    "VM {} on {} uses {what}; delete the VM first",
                    vm.spec.name, vm.host
                )));
            }
        }
        Ok(())
    }

    fn validate_assignment(
        &self,
        command: &Command,
        pool: &str,
        hosts: &[String],
    ) -> Result<(), ValidationError> {
        let record = self.pool(pool)?;
        if hosts.is_empty() {
            return Err(ValidationError::NoHosts);
        }
        let unknown: Vec<String> = hosts
            .iter()
            .filter(|h| !self.hosts.contains_key(*h))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ValidationError::UnknownHosts(unknown));
        }
        if let Command::UnassignPool { .. } = command {
            for host in hosts {
                self.refuse_if_used(pool, Some(host), None)?;
                let held: Vec<&String> = record.volumes_on(host).collect();
                if !held.is_empty() {
                    let held: Vec<&str> = held.iter().map(|v| v.as_str()).collect();
                    return Err(ValidationError::InUse(format!(
                        "host {host}'s own storage in local pool {pool} holds volume {}; delete them first (unassigned, they could not be reached)",
                        held.join(", ")
                    )));
                }
            }
            if hosts.iter().filter(|h| record.hosts.contains(*h)).count() == record.hosts.len() {
                return Err(ValidationError::InUse(format!(
                    "pool {pool} would have no host left; delete the pool instead"
                )));
            }
        } else if record.hosts.len() + hosts.len() > POOL_HOSTS_MAX {
            return Err(ValidationError::TooManyHosts);
        }
        Ok(())
    }

    /// An adoption is a VM creation over volumes that exist once it is applied: check it as
    /// one against the state with those volumes added (a cheap copy: the maps are shared).
    fn validate_adoption(
        &self,
        spec: &VmSpec,
        host: &str,
        uuid: &str,
        volumes: &[AdoptedVolume],
    ) -> Result<(), ValidationError> {
        let bad = |message: String| Err(ValidationError::BadVm(message));
        if uuid.is_empty() || uuid.len() > NAME_BYTES_MAX {
            return bad(format!(
                "domain UUID {uuid:?} must be 1 to {NAME_BYTES_MAX} bytes"
            ));
        }
        // UUIDs are unique on one host; a domain copied to another host may keep its UUID.
        if let Some(vm) = self
            .vms_of_host(host)
            .find(|vm| vm.adopted.as_deref() == Some(uuid))
        {
            return bad(format!(
                "the domain with UUID {uuid} on {host} is already VM {}",
                vm.spec.name
            ));
        }
        if volumes.len() > VM_DISKS_MAX {
            return bad(format!("a VM may have at most {VM_DISKS_MAX} disks"));
        }
        let mut with_volumes = self.clone();
        for volume in volumes {
            validate_name("volume", &volume.name)?;
            validate_volume_size(volume.record.size_bytes)?;
            if !spec
                .disks
                .iter()
                .any(|d| d.pool == volume.pool && d.volume == volume.name)
            {
                return bad(format!(
                    "{}/{} is not a disk of {}",
                    volume.pool, volume.name, spec.name
                ));
            }
            let pool = with_volumes.pool(&volume.pool)?;
            // A local pool's file is on the adopting host's own storage.
            let on = (pool.spec.scope == PoolScope::Local).then_some(host);
            if volume.record.host.as_deref() != on {
                return bad(format!(
                    "{}/{} must be recorded on {}",
                    volume.pool,
                    volume.name,
                    on.unwrap_or("no host (the pool is shared)")
                ));
            }
            match pool.volumes.get(&volume.name) {
                Some(have) if have.format != volume.record.format => {
                    return bad(format!(
                        "{}/{} is a {} volume already; the domain opens it as {}",
                        volume.pool, volume.name, have.format, volume.record.format
                    ))
                }
                Some(_) => {}
                None => {
                    room_for(
                        "volumes in one pool",
                        pool.volumes.len(),
                        VOLUMES_PER_POOL_MAX,
                    )?;
                    with_volumes.add_volume(&volume.pool, &volume.name, volume.record.clone());
                }
            }
        }
        with_volumes.validate_create_vm(spec, host)
    }

    fn validate_create_vm(&self, spec: &VmSpec, host: &str) -> Result<(), ValidationError> {
        validate_name("VM", &spec.name)?;
        let bad = |message: String| Err(ValidationError::BadVm(message));
        if spec.id.is_empty() || spec.id.len() > REQUEST_ID_BYTES_MAX {
            return bad(format!("VM id must be 1 to {REQUEST_ID_BYTES_MAX} bytes"));
        }
        if self.vms.contains_key(&spec.name) {
            return Err(ValidationError::VmExists(spec.name.clone()));
        }
        room_for("VMs", self.vms.len(), VMS_MAX)?;
        if self.vms.values().any(|vm| vm.spec.id == spec.id) {
            return bad(format!("VM id {:?} is taken", spec.id));
        }
        if !(1..=VM_VCPUS_MAX).contains(&spec.vcpus) {
            return bad(format!(
                "a VM needs 1 to {VM_VCPUS_MAX} vCPUs, not {}",
                spec.vcpus
            ));
        }
        if spec.memory_bytes < VM_MEMORY_BYTES_MIN {
            return bad(format!(
                "a VM needs at least 16M of memory, not {} bytes",
                spec.memory_bytes
            ));
        }
        if spec.disks.len() > VM_DISKS_MAX {
            return bad(format!("a VM may have at most {VM_DISKS_MAX} disks"));
        }
        if spec.nics.len() > VM_NICS_MAX {
            return bad(format!("a VM may have at most {VM_NICS_MAX} NICs"));
        }
        for mac in spec.nics.iter().filter_map(|nic| nic.mac.as_deref()) {
            if !is_mac(mac) {
                return bad(format!(
                    "MAC address {mac:?} must be six hex pairs separated by ':', like 52:54:00:12:34:56"
                ));
            }
        }
        self.check_vm_fits_host(spec, host)
    }

    /// Whether a VM of `spec` can have policy `ha`: one restarted elsewhere needs its disks
    /// on shared pools, whose storage lock keeps a second copy from starting while the first
    /// may still run (a host whose agent died cannot fence its guests itself).
    fn validate_ha(&self, spec: &VmSpec, ha: &HaPolicy) -> Result<(), ValidationError> {
        if !ha.restart {
            return Ok(());
        }
        let name = &spec.name;
        if spec.disks.is_empty() {
            return Err(ValidationError::BadVm(format!(
                "VM {name} has no disk: HA restarts only VMs with disks on shared pools, whose lock keeps a second copy from starting while the first may still run; add a --disk on a shared pool"
            )));
        }
        for disk in &spec.disks {
            let shared = self
                .pools
                .get(&disk.pool)
                .is_some_and(|p| p.spec.scope == PoolScope::Shared);
            if !shared {
                return Err(ValidationError::BadVm(format!(
                    "VM {name}: disk {}/{} is not on a shared pool, so the VM cannot run on another host; HA needs every disk on a shared pool",
                    disk.pool, disk.volume
                )));
            }
        }
        Ok(())
    }

    /// Whether VM `name` may start moving to `to` by `mode`.
    fn validate_move(
        &self,
        name: &str,
        to: &str,
        mode: MigrationMode,
    ) -> Result<(), ValidationError> {
        let vm = self.vm(name)?;
        let bad = |message: String| Err(ValidationError::BadVm(message));
        if vm.releasing {
            return bad(format!("VM {name} is being given back to its host"));
        }
        not_moving(name, vm)?;
        if vm.host == to {
            return bad(format!("VM {name} is already on host {to}"));
        }
        if mode == MigrationMode::Live && vm.power != DesiredPower::Running {
            return bad(format!(
                "VM {name} is stopped: only a running VM migrates live"
            ));
        }
        if self.hosts.get(to).is_some_and(|h| h.maintenance) {
            return bad(format!(
                "host {to} is in maintenance: it takes no VMs (`qvctl host maintenance exit {to}`)"
            ));
        }
        for disk in &vm.spec.disks {
            let shared = self
                .pools
                .get(&disk.pool)
                .is_some_and(|p| p.spec.scope == PoolScope::Shared);
            if !shared {
                return bad(format!(
                    "VM {name}: disk {}/{} is on a local pool, on {}'s own storage: the VM cannot run on another host",
                    disk.pool, disk.volume, vm.host
                ));
            }
        }
        self.check_vm_fits_host(&vm.spec, to)
    }

    /// Whether `name` may move from its lost host `from` to `to`.
    fn validate_fail_over(&self, name: &str, from: &str, to: &str) -> Result<(), ValidationError> {
        let vm = self.vm(name)?;
        let bad = |message: String| Err(ValidationError::BadVm(message));
        if vm.host != from {
            return bad(format!(
                "VM {name} is on host {}, not {from}: it moved meanwhile",
                vm.host
            ));
        }
        if vm.releasing {
            return bad(format!("VM {name} is being released"));
        }
        if !vm.ha.restart || vm.power != DesiredPower::Running {
            return bad(format!(
                "VM {name} is no longer a running HA VM: it stays on {from}"
            ));
        }
        if let Some(m) = &vm.moving {
            // The move decides first (it may have arrived): it is finished or given up,
            // then HA restarts the VM if it is still on the lost host.
            return bad(format!(
                "VM {name} is moving to {}; its move is finished or given up first",
                m.to
            ));
        }
        if to == from {
            return bad(format!("VM {name} is already on host {to}"));
        }
        self.check_vm_fits_host(&vm.spec, to)
    }

    /// Whether `host` has every pool, volume and network `spec` needs.
    fn check_vm_fits_host(&self, spec: &VmSpec, host: &str) -> Result<(), ValidationError> {
        let bad = |message: String| Err(ValidationError::BadVm(message));
        if !self.hosts.contains_key(host) {
            return Err(ValidationError::UnknownHosts(vec![host.to_owned()]));
        }
        for disk in &spec.disks {
            validate_name("volume", &disk.volume)?;
            if let Some(leaving) = self.vms.values().find(|vm| {
                vm.releasing
                    && vm.spec.id != spec.id
                    && vm
                        .spec
                        .disks
                        .iter()
                        .any(|d| d.pool == disk.pool && d.volume == disk.volume)
            }) {
                return bad(format!(
                    "disk {}/{} leaves qvdc with VM {}, which is being released",
                    disk.pool, disk.volume, leaving.spec.name
                ));
            }
            match self.pools.get(&disk.pool) {
                None => {
                    return bad(format!(
                        "disk {}/{}: no pool named {:?}; `qvctl pool list` shows the pools",
                        disk.pool, disk.volume, disk.pool
                    ))
                }
                Some(pool) if !pool.hosts.contains(host) => {
                    return bad(format!(
                        "disk {}/{}: pool {} is not assigned to host {host}; assign it first or pick a host that has it",
                        disk.pool, disk.volume, disk.pool
                    ))
                }
                Some(pool) => match pool.volumes.get(&disk.volume) {
                    None => {
                        return bad(format!(
                            "disk {}/{}: pool {} has no volume {:?}; create it first with `qvctl volume create {} {} --size SIZE`",
                            disk.pool, disk.volume, disk.pool, disk.volume, disk.pool, disk.volume
                        ))
                    }
                    Some(volume) if volume.format != disk.format => {
                        return bad(format!(
                            "disk {}/{} is a {} volume and cannot be attached as {}",
                            disk.pool, disk.volume, volume.format, disk.format
                        ))
                    }
                    Some(volume) if volume.host.as_deref().is_some_and(|h| h != host) => {
                        return bad(format!(
                            "disk {}/{} is on {}'s own storage (pool {} is local), so the VM can only run on {}",
                            disk.pool,
                            disk.volume,
                            volume.host.as_deref().unwrap_or_default(),
                            disk.pool,
                            volume.host.as_deref().unwrap_or_default()
                        ))
                    }
                    Some(_) => {}
                },
            }
        }
        for nic in &spec.nics {
            match self.networks.get(&nic.network) {
                None => {
                    return bad(format!(
                        "network {:?} does not exist; `qvctl network list` shows the networks",
                        nic.network
                    ))
                }
                Some(network) if !network.hosts.contains(host) => {
                    return bad(format!(
                        "network {} is not assigned to host {host}; assign it first or pick a host that has it",
                        nic.network
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
