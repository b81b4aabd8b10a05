//! Adopting a domain a host runs without qvdc (ADR 17): what it becomes, or why it cannot.
//!
//! Adoption commits the VM first and only then lets its host record the VM's id in the
//! domain: a domain with an id but no VM would be removed as a stray. Until the id is
//! recorded the VM names its domain by libvirt UUID, so its supervisor finishes the adoption
//! (after a leader change too) and never mistakes another domain of that name for it.
//!
//! The API gathers the inputs (the host's report of the domain, the files of its disks'
//! pools as that host lists them) and carries out the answer.

use std::collections::BTreeMap;

use qvdc_raft::{
    model::{AdoptedVolume, RequestKey, VolumeRecord},
    Command, DesiredState, ValidationError,
};
use qvdc_transport::protocol::{
    DesiredPower, HostCommandKind, PoolScope, PowerState, VmDisk, VmReport, VmSpec, VolumeInfo,
};

/// Why a domain is not adopted now.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// It cannot be, as it is: the operator must change something first.
    Invalid(String),
    /// Not now: retry later.
    Unavailable(String),
    /// The adoption breaks a rule of the desired state.
    Rejected(ValidationError),
}

/// An adoption to carry out: rename the domain on its host first (if asked to), then commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Adoption {
    pub rename: Option<HostCommandKind>,
    pub command: Command,
}

/// The volumes `report`'s disks are, or why one of them cannot be adopted.
pub fn disks_of(host: &str, report: &VmReport) -> Result<Vec<VmDisk>, Refusal> {
    let domain = &report.name;
    let why = |reason: String| Refusal::Invalid(format!("{domain} cannot be adopted: {reason}"));
    report
        .disks
        .iter()
        .map(|disk| match (&disk.volume, &disk.file) {
            (Some(volume), _) => Ok(volume.clone()),
            (None, Some(file)) if disk.format.is_none() => Err(why(format!(
                "disk {} of {domain} ({file}) is in a format qvdc does not manage (qcow2 and raw only)",
                disk.target
            ))),
            (None, Some(file)) => Err(why(format!(
                "disk {} of {domain} ({file}) is not a file directly in a pool mounted on {host}; \
                 move it into one, or create a pool over its directory, and adopt again",
                disk.target
            ))),
            (None, None) => Err(why(format!(
                "disk {} of {domain} is not a file (a block device, a network disk or an empty \
                 drive); qvdc manages file disks only, so detach it before adopting",
                disk.target
            ))),
        })
        .collect()
}

/// The volume records adoption adds: each disk's file as its host reads it, in the format
/// the domain opens it in (a mismatch is refused: the domain's guest would see garbage, or
/// a raw disk's guest-written header would be trusted).
fn new_volumes(
    desired: &DesiredState,
    host: &str,
    domain: &str,
    disks: &[VmDisk],
    files: &BTreeMap<String, Vec<VolumeInfo>>,
) -> Result<Vec<AdoptedVolume>, String> {
    let mut volumes: Vec<AdoptedVolume> = Vec::new();
    for disk in disks {
        if desired.volume(&disk.pool, &disk.volume).is_ok()
            || volumes
                .iter()
                .any(|v| v.pool == disk.pool && v.name == disk.volume)
        {
            continue;
        }
        let file = files
            .get(&disk.pool)
            .and_then(|listed| listed.iter().find(|f| f.name == disk.volume))
            .ok_or_else(|| {
                format!(
                    "{domain}'s disk {}/{} is not there: the domain names a file the pool does not have",
                    disk.pool, disk.volume
                )
            })?;
        if file.format != Some(disk.format) {
            return Err(format!(
                "{domain} opens {}/{} as {}, but the file holds {}; fix the domain's definition first",
                disk.pool,
                disk.volume,
                disk.format,
                file.format.map_or("something else".to_owned(), |f| format!("a {f} image"))
            ));
        }
        // A local pool's file is on this host's own storage.
        let local = desired
            .pools
            .get(&disk.pool)
            .is_some_and(|p| p.spec.scope == PoolScope::Local);
        volumes.push(AdoptedVolume {
            pool: disk.pool.clone(),
            name: disk.volume.clone(),
            record: VolumeRecord {
                host: local.then(|| host.to_owned()),
                format: disk.format,
                size_bytes: file.size_bytes,
            },
        });
    }
    Ok(volumes)
}

/// What domain `report` on `host` becomes as VM `target` for `request`, given its disks
/// (from [`disks_of`]) and the files of their pools as `host` lists them.
pub fn adopt(
    desired: &DesiredState,
    request: &RequestKey,
    host: &str,
    target: &str,
    report: &VmReport,
    disks: Vec<VmDisk>,
    files: &BTreeMap<String, Vec<VolumeInfo>>,
) -> Result<Adoption, Refusal> {
    let domain = &report.name;
    let volumes = new_volumes(desired, host, domain, &disks, files)
        .map_err(|why| Refusal::Invalid(format!("{domain} cannot be adopted: {why}")))?;
    // The VM is kept as it is now, so its host must know how it is now.
    let power = match report.power {
        PowerState::Running | PowerState::Paused => DesiredPower::Running,
        PowerState::Unknown => {
            return Err(Refusal::Unavailable(format!(
                "host {host} cannot say whether {domain} runs right now ({}); adopting keeps it as it is, so retry once the host can",
                report.reason
            )))
        }
        PowerState::ShuttingDown
        | PowerState::ShutOff
        | PowerState::Crashed
        | PowerState::Suspended => DesiredPower::Stopped,
    };
    let rename = report.name != target;
    if rename && report.power != PowerState::ShutOff {
        return Err(Refusal::Invalid(format!(
            "{domain} on {host} is {}: libvirt renames only shut-off domains, so stop it first \
             or adopt it under its own name (without --name)",
            report.power
        )));
    }
    let spec = VmSpec {
        id: request.id.clone(),
        name: target.to_owned(),
        vcpus: report.vcpus,
        memory_bytes: report.memory_bytes,
        disks,
        nics: Vec::new(),
    };
    let command = Command::AdoptVm {
        spec,
        host: host.to_owned(),
        power,
        uuid: report.uuid.clone(),
        volumes,
    };
    // Checked before the domain is renamed: a refused adoption leaves it as it was.
    if rename {
        desired.validate(&command).map_err(Refusal::Rejected)?;
    }
    Ok(Adoption {
        rename: rename.then(|| HostCommandKind::RenameVm {
            name: domain.clone(),
            to: target.to_owned(),
            uuid: report.uuid.clone(),
        }),
        command: request.clone().once(command),
    })
}

#[cfg(test)]
mod tests {
    use qvdc_raft::model::RequestDigest;
    use qvdc_transport::protocol::{DiskReport, VolumeFormat};

    use super::*;

    fn report(power: PowerState, disks: Vec<DiskReport>) -> VmReport {
        VmReport {
            name: "legacy".into(),
            uuid: "u-1".into(),
            power,
            vcpus: 2,
            memory_bytes: 1 << 30,
            disks,
            id: None,
            reason: "booted".into(),
        }
    }

    fn request() -> RequestKey {
        RequestKey {
            id: "adopt-1".into(),
            digest: RequestDigest([1; 16]),
        }
    }

    #[test]
    fn a_disk_outside_every_pool_is_refused_with_what_to_do() {
        let disk = DiskReport {
            target: "vda".into(),
            file: Some("/srv/elsewhere/legacy.qcow2".into()),
            format: Some(VolumeFormat::Qcow2),
            volume: None,
        };
        let refusal = disks_of("host-1", &report(PowerState::Running, vec![disk])).unwrap_err();
        let Refusal::Invalid(message) = refusal else {
            panic!("{refusal:?}")
        };
        assert!(message.contains("not a file directly in a pool mounted on host-1"));
        assert!(message.contains("create a pool over its directory"));
    }

    #[test]
    fn a_domain_of_unknown_power_is_not_adopted_now() {
        let refusal = adopt(
            &DesiredState::default(),
            &request(),
            "host-1",
            "legacy",
            &report(PowerState::Unknown, Vec::new()),
            Vec::new(),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(matches!(refusal, Refusal::Unavailable(_)), "{refusal:?}");
    }

    #[test]
    fn a_running_domain_is_adopted_running_under_the_request_id_and_renamed_only_when_off() {
        let desired = DesiredState::default();
        let running = report(PowerState::Running, Vec::new());
        let adoption = adopt(
            &desired,
            &request(),
            "host-1",
            "legacy",
            &running,
            Vec::new(),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(adoption.rename, None);
        let Command::Once { command, .. } = &adoption.command else {
            panic!(
                "an adoption is applied once per request: {:?}",
                adoption.command
            )
        };
        let Command::AdoptVm {
            spec, power, uuid, ..
        } = command.as_ref()
        else {
            panic!("{command:?}")
        };
        assert_eq!(
            (spec.id.as_str(), *power, uuid.as_str()),
            ("adopt-1", DesiredPower::Running, "u-1")
        );
        // libvirt renames only shut-off domains.
        let refusal = adopt(
            &desired,
            &request(),
            "host-1",
            "db",
            &running,
            Vec::new(),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(matches!(refusal, Refusal::Invalid(_)), "{refusal:?}");
        let off = report(PowerState::ShutOff, Vec::new());
        let adoption = adopt(
            &desired,
            &request(),
            "host-1",
            "db",
            &off,
            Vec::new(),
            &BTreeMap::new(),
        );
        assert!(
            matches!(&adoption, Err(Refusal::Rejected(_))),
            "a rename is checked against the state before the domain is touched: {adoption:?}"
        );
    }
}
