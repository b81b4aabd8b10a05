//! Adopting a domain a host runs without qvdc, and giving a VM back (ADR 17).
//!
//! Adoption commits the VM first and only then lets its host record the VM's id in the
//! domain: a domain with an id but no VM would be removed as a stray. Until the id is
//! recorded the VM names its domain by libvirt UUID, so its supervisor finishes the adoption
//! (after a leader change too) and never mistakes another domain of that name for it.
//!
//! Release runs the other way: the VM is first marked as being released, so nothing acts
//! on its domain any more; then the host removes the id (and qvdc's marks on its disks);
//! only then is the record removed. A domain that still carried the id once its VM was gone
//! would be removed as a stray.

use std::collections::BTreeMap;

use qvdc_raft::{
    model::{AdoptedVolume, VolumeRecord},
    Command,
};
use qvdc_transport::bugs::{self, Bug};
use qvdc_transport::protocol::{
    ApiError, ApiErrorKind, ApiResponse, CommandOutput, DesiredPower, HostCommandKind, Liveness,
    PoolScope, PowerState, Response, VmDisk, VmReport, VmSpec, VolumeInfo,
};

use crate::{
    api::{self, propose, unavailable, RequestKey},
    node::NodeInner,
};

fn refused(message: String) -> Response {
    Response::Api(Err(ApiError::new(ApiErrorKind::Invalid, message)))
}

/// The volumes `report`'s disks are, or why one of them cannot be adopted.
fn disks_of(host: &str, report: &VmReport) -> Result<Vec<VmDisk>, String> {
    let domain = &report.name;
    report
        .disks
        .iter()
        .map(|disk| match (&disk.volume, &disk.file) {
            (Some(volume), _) => Ok(volume.clone()),
            (None, Some(file)) if disk.format.is_none() => Err(format!(
                "disk {} of {domain} ({file}) is in a format qvdc does not manage (qcow2 and raw only)",
                disk.target
            )),
            (None, Some(file)) => Err(format!(
                "disk {} of {domain} ({file}) is not a file directly in a pool mounted on {host}; \
                 move it into one, or create a pool over its directory, and adopt again",
                disk.target
            )),
            (None, None) => Err(format!(
                "disk {} of {domain} is not a file (a block device, a network disk or an empty \
                 drive); qvdc manages file disks only, so detach it before adopting",
                disk.target
            )),
        })
        .collect()
}

/// The files of each pool as `host` sees them now.
async fn files_on(
    node: &NodeInner,
    host: &str,
    disks: &[VmDisk],
) -> Result<BTreeMap<String, Vec<VolumeInfo>>, Response> {
    let mut files = BTreeMap::new();
    for disk in disks {
        if files.contains_key(&disk.pool) {
            continue;
        }
        let list = HostCommandKind::ListVolumes {
            pool: disk.pool.clone(),
        };
        match api::on_pool_host(node, &disk.pool, Some(host.to_owned()), list).await? {
            (_, CommandOutput::Volumes(listed)) => {
                files.insert(disk.pool.clone(), listed);
            }
            (_, other) => return Err(unavailable(format!("unexpected answer {other:?}"))),
        }
    }
    Ok(files)
}

/// The volume records adoption adds: each disk's file as its host reads it, in the format
/// the domain opens it in (a mismatch is refused: the domain's guest would see garbage, or
/// a raw disk's guest-written header would be trusted).
fn new_volumes(
    node: &NodeInner,
    host: &str,
    domain: &str,
    disks: &[VmDisk],
    files: &BTreeMap<String, Vec<VolumeInfo>>,
) -> Result<Vec<AdoptedVolume>, String> {
    let desired = node.desired.borrow();
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

/// `vm adopt HOST/DOMAIN [--name NAME]`: the domain becomes a VM of its name (renamed to
/// NAME first, if given).
pub(crate) async fn adopt_vm(
    node: &NodeInner,
    key: RequestKey,
    host: String,
    domain: String,
    name: Option<String>,
) -> Response {
    let target = name.unwrap_or_else(|| domain.clone());
    // A retry of an adoption that went through finds its VM.
    if let Some(vm) = key.vm_made_before(&node.desired.borrow()) {
        return Response::Api(Ok(ApiResponse::VmCreated {
            name: vm.spec.name.clone(),
            id: vm.spec.id.clone(),
            host: vm.host.clone(),
        }));
    }
    let supervision = match node.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    let (reported, liveness) = match api::reported_now(&supervision).await {
        Ok(both) => both,
        Err(response) => return response,
    };
    match liveness.get(&host) {
        Some(Liveness::Ready) => {}
        Some(state) => {
            return unavailable(format!(
                "host {host} is {state:?}; adopting needs its current report of {domain}, retry once it is Ready"
            ))
        }
        None => {
            return Response::Api(Err(ApiError::new(
                ApiErrorKind::NotFound,
                format!("no host named {host:?}; `qvctl host list` shows the hosts"),
            )))
        }
    }
    // A retry of an adoption whose rename went through finds the domain under its new name.
    let Some(report) = reported
        .get(&host)
        .and_then(|seen| {
            let named = |name: &str| seen.unmanaged.iter().find(|r| r.name == name);
            named(&domain).or_else(|| named(&target))
        })
        .cloned()
    else {
        let managed = node
            .desired
            .borrow()
            .vms
            .get(&domain)
            .is_some_and(|vm| vm.host == host);
        let message = if managed {
            format!("{domain} on {host} is managed by qvdc already")
        } else {
            format!(
                "host {host} reports no unmanaged domain named {domain:?}; `qvctl vm list` shows them"
            )
        };
        return Response::Api(Err(ApiError::new(ApiErrorKind::NotFound, message)));
    };
    let disks = match disks_of(&host, &report) {
        Ok(disks) => disks,
        Err(why) => return refused(format!("{domain} cannot be adopted: {why}")),
    };
    let files = match files_on(node, &host, &disks).await {
        Ok(files) => files,
        Err(response) => return response,
    };
    let volumes = match new_volumes(node, &host, &domain, &disks, &files) {
        Ok(volumes) => volumes,
        Err(why) => return refused(format!("{domain} cannot be adopted: {why}")),
    };
    // The VM is kept as it is now, so its host must know how it is now.
    let power = match report.power {
        PowerState::Running | PowerState::Paused => DesiredPower::Running,
        PowerState::Unknown => {
            return unavailable(format!(
                "host {host} cannot say whether {domain} runs right now ({}); adopting keeps it as it is, so retry once the host can",
                report.reason
            ))
        }
        PowerState::ShuttingDown
        | PowerState::ShutOff
        | PowerState::Crashed
        | PowerState::Suspended => DesiredPower::Stopped,
    };
    let rename = report.name != target;
    if rename && report.power != PowerState::ShutOff {
        return refused(format!(
            "{domain} on {host} is {}: libvirt renames only shut-off domains, so stop it first \
             or adopt it under its own name (without --name)",
            report.power
        ));
    }
    let spec = VmSpec {
        id: key.id.clone(),
        name: target.clone(),
        vcpus: report.vcpus,
        memory_bytes: report.memory_bytes,
        disks,
        nics: Vec::new(),
    };
    let command = Command::AdoptVm {
        spec,
        host: host.clone(),
        power,
        uuid: report.uuid.clone(),
        volumes,
    };
    if rename {
        // Checked before the domain is renamed: a refused adoption leaves it as it was.
        if let Err(e) = node.desired.borrow().validate(&command) {
            return api::rejected(e);
        }
        let rename = HostCommandKind::RenameVm {
            name: domain.clone(),
            to: target.clone(),
            uuid: report.uuid.clone(),
        };
        if let Err(reason) = supervision.execute(&host, rename).await {
            return unavailable(format!(
                "host {host} did not rename {domain} to {target} ({reason}); nothing was adopted"
            ));
        }
    }
    let id = key.id.clone();
    if let Err(response) = propose(node, key.once(command)).await {
        return match response {
            Response::Api(Err(mut e)) if rename => {
                e.message = format!(
                    "{} (the domain is now named {target} on {host} and is not adopted)",
                    e.message
                );
                Response::Api(Err(e))
            }
            other => other,
        };
    }
    Response::Api(Ok(ApiResponse::VmCreated {
        name: target,
        id,
        host,
    }))
}

/// `vm release NAME`: qvdc lets go of the VM and its disks; the guest runs on untouched.
pub(crate) async fn release_vm(node: &NodeInner, key: RequestKey, name: String) -> Response {
    let record = node.desired.borrow().vms.get(&name).cloned();
    let Some(record) = record else {
        // Unknown, or a retry of a release that went through: the request id decides.
        return api::once(node, key, Command::ReleaseVm { name }).await;
    };
    let supervision = match node.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    if let Err(response) = propose(node, key.once(Command::ReleaseVm { name: name.clone() })).await
    {
        return response;
    }
    let volumes = node.desired.borrow().released_volumes(&record);
    let host = &record.host;
    let release = HostCommandKind::ReleaseVm {
        name: name.clone(),
        id: record.spec.id.clone(),
        volumes,
    };
    let told = if bugs::active(Bug::ReleaseWithoutHost) {
        Ok(CommandOutput::Done)
    } else {
        supervision.execute(host, release).await
    };
    if let Err(reason) = told {
        return unavailable(format!(
            "VM {name} is being released and qvdc no longer acts on it, but its host {host} did \
             not confirm that it forgot the VM ({reason}); retry `qvctl vm release {name}` once \
             the host is back (`qvctl host list`)"
        ));
    }
    let volumes = {
        let desired = node.desired.borrow();
        let vm = desired.vms.get(&name);
        vm.map(|vm| desired.released_volumes(vm))
            .unwrap_or_default()
    };
    let forget = Command::ForgetVm {
        name: name.clone(),
        volumes,
    };
    match propose(node, forget).await {
        Ok(()) => Response::Api(Ok(ApiResponse::Done)),
        // Forgotten meanwhile by a concurrent retry of this release.
        Err(_) if !node.desired.borrow().vms.contains_key(&name) => {
            Response::Api(Ok(ApiResponse::Done))
        }
        Err(response) => response,
    }
}
