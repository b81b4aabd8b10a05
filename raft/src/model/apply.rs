//! What a committed command changes: `DesiredState::apply`, deterministic on every node,
//! with the per-host index kept in step.

use std::{collections::BTreeMap, sync::Arc};

use qvdc_transport::{
    bugs::{self, Bug},
    protocol::{DesiredPower, VmSpec},
};

use super::{
    records::{FailedMove, Move},
    state::Kind,
    Command, DesiredState, HostRecord, NetworkRecord, Outcome, PoolRecord, ValidationError,
    VmRecord, VolumeRecord,
};

fn changed(changed: bool) -> Outcome {
    if changed {
        Outcome::Applied
    } else {
        Outcome::Unchanged
    }
}

impl DesiredState {
    pub(super) fn add_volume(&mut self, pool: &str, name: &str, record: VolumeRecord) {
        let pool = Arc::make_mut(self.pools.get_mut(pool).expect("validated"));
        pool.volumes.insert(name.to_owned(), record);
    }

    /// Applies a committed command. Deterministic: the same state and command give the same
    /// result on every node.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        if let Command::Batch(commands) = command {
            if let Err(e) = self.validate(command) {
                return Outcome::Rejected(e);
            }
            return Outcome::Batch(commands.iter().map(|c| self.apply(c)).collect());
        }
        if let Command::Audited {
            by,
            via,
            at_ms,
            command: inner,
        } = command
        {
            if matches!(**inner, Command::Audited { .. } | Command::Batch(_)) {
                return Outcome::Rejected(ValidationError::NestedRequest);
            }
            let (request_id, outcome, replay) = match &**inner {
                Command::Once {
                    request_id,
                    digest,
                    command,
                } => {
                    let (outcome, replay) = self.apply_once(request_id, digest, command);
                    (Some(request_id.clone()), outcome, replay)
                }
                _ => (None, self.apply(inner), false),
            };
            // A retry of a request replays its first outcome and changes nothing again; qvdc's
            // own changes that changed nothing (a host registering again) are not news.
            let operator = by.is_some();
            let replay = replay && !bugs::active(Bug::AuditRecordsRetries);
            if !replay && (operator || outcome == Outcome::Applied) {
                let caller = super::Caller {
                    name: by.clone(),
                    via: *via,
                };
                self.audit
                    .record(*at_ms, caller, request_id, inner, &outcome);
            }
            return outcome;
        }
        if let Command::Once {
            request_id,
            digest,
            command: inner,
        } = command
        {
            return self.apply_once(request_id, digest, inner).0;
        }
        match self.validate(command) {
            Ok(()) => self.apply_valid(command),
            Err(e) => Outcome::Rejected(e),
        }
    }

    /// Applies an operator's request `inner` once per request id; a retry gets the first
    /// outcome. Returns the outcome and whether it was a retry's replay. The request log is
    /// looked up once (it is on every write's path).
    fn apply_once(
        &mut self,
        request_id: &str,
        digest: &super::RequestDigest,
        inner: &Command,
    ) -> (Outcome, bool) {
        let recorded = self.requests.lookup(request_id);
        if let Some((recorded, outcome)) = recorded {
            if recorded == *digest {
                return (outcome.clone(), true);
            }
        }
        let verdict = self.validate_new_request(request_id, inner, recorded.is_some());
        let outcome = match verdict {
            Ok(()) => self.apply_valid(inner),
            Err(e) => Outcome::Rejected(e),
        };
        // An id that is not valid, or is another request's, records nothing.
        if !matches!(
            outcome,
            Outcome::Rejected(ValidationError::BadRequestId | ValidationError::RequestIdReused(_))
        ) {
            self.requests.record(request_id, *digest, outcome.clone());
        }
        (outcome, false)
    }

    /// Applies a command that [`DesiredState::validate`] accepted against this very state.
    fn apply_valid(&mut self, command: &Command) -> Outcome {
        match command {
            Command::RegisterHost { host_id, inventory } => {
                let maintenance = self.hosts.get(host_id).is_some_and(|h| h.maintenance);
                let record = HostRecord {
                    host_id: host_id.clone(),
                    inventory: inventory.clone(),
                    maintenance,
                };
                if self.hosts.get(host_id) == Some(&record) {
                    return Outcome::Unchanged;
                }
                self.hosts.insert(host_id.clone(), record);
                Outcome::Applied
            }
            Command::SetMaintenance { host, on } => {
                let record = self.hosts.get_mut(host).expect("validated");
                changed(std::mem::replace(&mut record.maintenance, *on) != *on)
            }
            Command::RevokeCertificate(certificate) => {
                // A serial revoked again keeps its first record.
                let first = !self.revoked.contains_key(&certificate.serial);
                if first {
                    let serial = certificate.serial.clone();
                    self.revoked.insert(serial, certificate.clone());
                }
                changed(first)
            }
            Command::CreatePool { spec, hosts } => {
                let record = PoolRecord {
                    spec: spec.clone(),
                    hosts: hosts.iter().cloned().collect(),
                    volumes: BTreeMap::new(),
                };
                let previous = self.pools.insert(spec.name.clone(), Arc::new(record));
                assert!(previous.is_none(), "validation rejects duplicate pools");
                for host in hosts {
                    self.indexed(Kind::Pool, host, &spec.name, true);
                }
                Outcome::Applied
            }
            Command::CreateVm { spec, host, power } => {
                self.add_vm(spec, host, *power, None);
                Outcome::Applied
            }
            Command::CreateHaVm {
                spec,
                host,
                power,
                ha,
            } => {
                self.add_vm(spec, host, *power, None);
                self.vms.get_mut(&spec.name).expect("just added").ha = *ha;
                Outcome::Applied
            }
            Command::SetVmHa { name, ha } => {
                let vm = self.vms.get_mut(name).expect("validated");
                changed(std::mem::replace(&mut vm.ha, *ha) != *ha)
            }
            Command::FailOverVm { name, from, to } | Command::FinishMove { name, from, to } => {
                let vm = self.vms.get_mut(name).expect("validated");
                vm.host = to.clone();
                // A move under way when the host was lost is over: the VM restarts instead.
                vm.moving = None;
                // The domain it was adopted from stays behind: on its new host, no domain
                // without qvdc's id is this VM.
                vm.adopted = None;
                self.indexed(Kind::Vm, from, name, false);
                self.indexed(Kind::Vm, to, name, true);
                Outcome::Applied
            }
            Command::BeginMove { name, to, mode } => {
                let vm = self.vms.get_mut(name).expect("validated");
                vm.moving = Some(Move {
                    to: to.clone(),
                    mode: *mode,
                });
                vm.move_failed = None;
                Outcome::Applied
            }
            Command::AbandonMove { name, to, reason } => {
                let vm = self.vms.get_mut(name).expect("validated");
                let mode = vm.moving.take().expect("validated").mode;
                vm.move_failed = Some(FailedMove {
                    to: to.clone(),
                    mode,
                    reason: reason.clone(),
                });
                Outcome::Applied
            }
            Command::RemoveHost { host } => {
                let (pools, networks) = self.take_index(host);
                for pool in pools {
                    let record = Arc::make_mut(self.pools.get_mut(&pool).expect("indexed"));
                    record.hosts.remove(host);
                    record
                        .volumes
                        .retain(|_, volume| volume.host.as_deref() != Some(host.as_str()));
                }
                for network in networks {
                    let record = self.networks.get_mut(&network).expect("indexed");
                    record.hosts.remove(host);
                }
                self.hosts.remove(host);
                Outcome::Applied
            }
            Command::AdoptVm {
                spec,
                host,
                power,
                uuid,
                volumes,
            } => {
                for volume in volumes {
                    if self.volume(&volume.pool, &volume.name).is_err() {
                        self.add_volume(&volume.pool, &volume.name, volume.record.clone());
                    }
                }
                self.add_vm(spec, host, *power, Some(uuid.clone()));
                Outcome::Applied
            }
            Command::ReleaseVm { name } => {
                let vm = self.vms.get_mut(name).expect("validated");
                changed(!std::mem::replace(&mut vm.releasing, true))
            }
            Command::ForgetVm { name, volumes } => {
                let vm = self.vms.remove(name).expect("validated");
                self.indexed(Kind::Vm, &vm.host, name, false);
                for disk in volumes {
                    let pool = Arc::make_mut(self.pools.get_mut(&disk.pool).expect("listed"));
                    pool.volumes.remove(&disk.volume);
                }
                Outcome::Applied
            }
            Command::SetVmPower { name, power } => {
                let vm = self.vms.get_mut(name).expect("validated");
                if vm.power == *power {
                    return Outcome::Unchanged;
                }
                vm.power = *power;
                Outcome::Applied
            }
            Command::DeleteVm { name } => {
                let vm = self.vms.remove(name).expect("validated");
                self.indexed(Kind::Vm, &vm.host, name, false);
                Outcome::Applied
            }
            Command::AssignPool { pool, hosts } => self.reassign(Kind::Pool, pool, hosts, true),
            Command::UnassignPool { pool, hosts } => self.reassign(Kind::Pool, pool, hosts, false),
            Command::DeletePool { pool } => {
                let record = self.pools.remove(pool).expect("validated");
                for host in &record.hosts {
                    self.indexed(Kind::Pool, host, pool, false);
                }
                Outcome::Applied
            }
            Command::CreateVolume {
                pool,
                name,
                format,
                size_bytes,
                host,
            } => {
                let record = VolumeRecord {
                    host: host.clone(),
                    format: *format,
                    size_bytes: *size_bytes,
                };
                let pool = Arc::make_mut(self.pools.get_mut(pool).expect("validated"));
                pool.volumes.insert(name.clone(), record);
                Outcome::Applied
            }
            Command::ResizeVolume {
                pool,
                name,
                size_bytes,
            } => {
                let pool = Arc::make_mut(self.pools.get_mut(pool).expect("validated"));
                let volume = pool.volumes.get_mut(name).expect("validated");
                let before = volume.size_bytes;
                volume.size_bytes = *size_bytes;
                changed(before != *size_bytes)
            }
            Command::DeleteVolume { pool, name } => {
                let pool = Arc::make_mut(self.pools.get_mut(pool).expect("validated"));
                pool.volumes.remove(name).expect("validated");
                Outcome::Applied
            }
            Command::CreateNetwork { spec, hosts } => {
                let record = NetworkRecord {
                    spec: spec.clone(),
                    hosts: hosts.iter().cloned().collect(),
                };
                self.networks.insert(spec.name.clone(), record);
                for host in hosts {
                    self.indexed(Kind::Network, host, &spec.name, true);
                }
                Outcome::Applied
            }
            Command::AssignNetwork { network, hosts } => {
                self.reassign(Kind::Network, network, hosts, true)
            }
            Command::UnassignNetwork { network, hosts } => {
                self.reassign(Kind::Network, network, hosts, false)
            }
            Command::DeleteNetwork { network } => {
                let record = self.networks.remove(network).expect("validated");
                for host in &record.hosts {
                    self.indexed(Kind::Network, host, network, false);
                }
                Outcome::Applied
            }
            Command::SetClusterLevel { level, at_ms } => {
                let raised = *level > self.audit.level;
                if raised {
                    self.audit.level = *level;
                    let outcome = Outcome::Applied;
                    self.audit
                        .record(*at_ms, Default::default(), None, command, &outcome);
                }
                changed(raised)
            }
            Command::SetAuditRetention(entries) => {
                let before = std::mem::replace(&mut self.audit.retention, *entries);
                self.audit.trim();
                changed(before != *entries)
            }
            Command::Once { .. } | Command::Batch(_) | Command::Audited { .. } => {
                unreachable!("handled above")
            }
        }
    }

    fn add_vm(&mut self, spec: &VmSpec, host: &str, power: DesiredPower, adopted: Option<String>) {
        let record = VmRecord {
            spec: spec.clone(),
            host: host.to_owned(),
            power,
            adopted,
            releasing: false,
            ha: Default::default(),
            moving: None,
            move_failed: None,
        };
        let previous = self.vms.insert(spec.name.clone(), record);
        assert!(previous.is_none(), "validation rejects duplicate VMs");
        self.indexed(Kind::Vm, host, &spec.name, true);
    }

    /// Assigns (or unassigns) a pool or network to `hosts`, keeping the index in step.
    fn reassign(&mut self, kind: Kind, name: &str, hosts: &[String], assign: bool) -> Outcome {
        let assigned = match kind {
            Kind::Pool => &mut Arc::make_mut(self.pools.get_mut(name).expect("validated")).hosts,
            Kind::Network => &mut self.networks.get_mut(name).expect("validated").hosts,
            Kind::Vm => unreachable!("a VM has one host, set when it is created"),
        };
        let before = assigned.len();
        if assign {
            assigned.extend(hosts.iter().cloned());
        } else {
            assigned.retain(|h| !hosts.contains(h));
        }
        let outcome = changed(assigned.len() != before);
        for host in hosts {
            self.indexed(kind, host, name, assign);
        }
        outcome
    }
}
