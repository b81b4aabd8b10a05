//! Where a new VM runs. Pure: [`facts`] assembles each host's facts (liveness, inventory,
//! the pools healthy there, the memory its VMs already claim) from the desired state and the
//! leader's reports, and [`place`] gives back a host, or for every host the reason it does
//! not fit.

use std::collections::{BTreeMap, BTreeSet};

use qvdc_raft::DesiredState;
use qvdc_transport::protocol::{Health, Liveness, NetworkView, PoolView, VmSpec, VmView};

/// What placement needs to know about one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub host: String,
    /// Heartbeating to this leader.
    pub ready: bool,
    /// In maintenance: takes no new VMs.
    pub maintenance: bool,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    /// Memory of the VMs already placed there (running or not: they may be started).
    pub committed_memory_bytes: u64,
    /// The pools assigned to the host, with their health there.
    pub pools: BTreeMap<String, Health>,
    /// Networks assigned to the host that it reports up.
    pub up_networks: BTreeSet<String>,
    /// The domains the host reported, by name, with the VM id of those that are qvdc's: a
    /// VM cannot go where another domain has its name. `None` while the host's hypervisor
    /// has not listed them (libvirt failing, or the host just booted).
    pub domains: Option<BTreeMap<String, Option<String>>>,
}

/// Why no host fits, host by host, in host order.
pub type Unplaceable = Vec<(String, String)>;

/// A disk that ties a VM to one host: a volume on that host's own storage (a local pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub pool: String,
    pub volume: String,
    pub host: String,
}

/// The disks of `spec` that live on one host's own storage.
pub fn pins(desired: &DesiredState, spec: &VmSpec) -> Vec<Pin> {
    spec.disks
        .iter()
        .filter_map(|disk| {
            let volume = desired.volume(&disk.pool, &disk.volume).ok()?;
            Some(Pin {
                pool: disk.pool.clone(),
                volume: disk.volume.clone(),
                host: volume.host.clone()?,
            })
        })
        .collect()
}

/// What placement needs to know about every registered host, from the desired state and
/// the leader's latest reports.
pub fn facts(
    desired: &DesiredState,
    liveness: &BTreeMap<String, Liveness>,
    pools: &[PoolView],
    networks: &[NetworkView],
) -> Vec<HostFacts> {
    desired
        .hosts
        .values()
        .map(|h| HostFacts {
            host: h.host_id.clone(),
            ready: liveness.get(&h.host_id) == Some(&Liveness::Ready),
            maintenance: h.maintenance,
            cpu_cores: h.inventory.cpu_cores,
            memory_bytes: h.inventory.memory_bytes,
            committed_memory_bytes: desired
                .vms_of_host(&h.host_id)
                .map(|vm| vm.spec.memory_bytes)
                .sum(),
            domains: Some(BTreeMap::new()),
            up_networks: networks
                .iter()
                .filter(|n| n.hosts.iter().any(|nh| nh.host_id == h.host_id && nh.up))
                .map(|n| n.spec.name.clone())
                .collect(),
            pools: pools
                .iter()
                .filter_map(|p| {
                    let here = p.hosts.iter().find(|ph| ph.host_id == h.host_id)?;
                    Some((p.spec.name.clone(), here.health))
                })
                .collect(),
        })
        .collect()
}

/// A VM whose host is not heard from says why it cannot run elsewhere when its disks are on
/// that host's own storage.
pub fn explain_pinned(desired: &DesiredState, view: &mut VmView) {
    if !view.managed || !view.reason.starts_with("no fresh report") {
        return;
    }
    let pins = pins(desired, &view.spec);
    let Some(pin) = pins.first() else {
        return;
    };
    let why = format!(
        "its host {} is not heard from, and the VM cannot run elsewhere: disk {}/{} is on {}'s own storage (pool {} is local)",
        view.host, pin.pool, pin.volume, pin.host, pin.pool
    );
    view.error = Some(match view.error.take() {
        Some(error) => format!("{error}; {why}"),
        None => why,
    });
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// Why `spec` (whose disks `pins` tie it to hosts) does not fit on `host`, or `None` if it
/// does.
pub fn misfit(spec: &VmSpec, pins: &[Pin], host: &HostFacts) -> Option<String> {
    if let Some(pin) = pins.iter().find(|pin| pin.host != host.host) {
        return Some(format!(
            "disk {}/{} is on {}'s own storage (pool {} is local)",
            pin.pool, pin.volume, pin.host, pin.pool
        ));
    }
    if !host.ready {
        return Some("unreachable".into());
    }
    if host.maintenance {
        return Some("in maintenance".into());
    }
    let pools: BTreeSet<&str> = spec.disks.iter().map(|d| d.pool.as_str()).collect();
    let unassigned: Vec<&str> = pools
        .iter()
        .copied()
        .filter(|pool| !host.pools.contains_key(*pool))
        .collect();
    if !unassigned.is_empty() {
        let pools = unassigned.join(", ");
        return Some(format!("pool {pools} is not assigned to this host"));
    }
    let unhealthy: Vec<String> = pools
        .iter()
        .filter_map(|pool| match host.pools[*pool] {
            Health::Healthy => None,
            health => Some(format!("{pool} is {health}")),
        })
        .collect();
    if !unhealthy.is_empty() {
        return Some(format!("pool {} here", unhealthy.join(", pool ")));
    }
    let down: Vec<&str> = spec
        .nics
        .iter()
        .map(|n| n.network.as_str())
        .filter(|network| !host.up_networks.contains(*network))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !down.is_empty() {
        return Some(format!("network {} not up here", down.join(", ")));
    }
    let Some(domains) = &host.domains else {
        return Some("its hypervisor has not listed its domains yet".into());
    };
    if let Some(other) = domains.get(&spec.name) {
        if other.as_deref() != Some(spec.id.as_str()) {
            return Some(format!(
                "a domain named {} exists here ({})",
                spec.name,
                other
                    .as_ref()
                    .map_or("not managed by qvdc".to_owned(), |id| format!("VM {id}"))
            ));
        }
    }
    if spec.vcpus > host.cpu_cores {
        return Some(format!(
            "needs {} vCPUs, has {} cores",
            spec.vcpus, host.cpu_cores
        ));
    }
    let free = host
        .memory_bytes
        .saturating_sub(host.committed_memory_bytes);
    if spec.memory_bytes > free {
        return Some(format!(
            "needs {} MiB of memory, {} MiB free",
            mib(spec.memory_bytes),
            mib(free)
        ));
    }
    None
}

/// How a VM fits one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    pub host: String,
    /// Why it does not fit, or `None` if it does.
    pub misfit: Option<String>,
    /// Memory not claimed by the host's VMs, before this one.
    pub free_memory_bytes: u64,
}

/// How `spec` fits each host, in the hosts' order.
pub fn assess(spec: &VmSpec, pins: &[Pin], hosts: &[HostFacts]) -> Vec<Fit> {
    hosts
        .iter()
        .map(|host| Fit {
            host: host.host.clone(),
            misfit: misfit(spec, pins, host),
            free_memory_bytes: host
                .memory_bytes
                .saturating_sub(host.committed_memory_bytes),
        })
        .collect()
}

/// The fitting host with the most free memory (ties go to the first in name order).
pub fn place(spec: &VmSpec, pins: &[Pin], hosts: &[HostFacts]) -> Result<String, Unplaceable> {
    let mut best: Option<&Fit> = None;
    let mut reasons = Vec::new();
    let fits = assess(spec, pins, hosts);
    for fit in &fits {
        match &fit.misfit {
            Some(reason) => reasons.push((fit.host.clone(), reason.clone())),
            None => {
                let free = fit.free_memory_bytes;
                let better = |b: &Fit| {
                    free > b.free_memory_bytes || (free == b.free_memory_bytes && fit.host < b.host)
                };
                if best.is_none_or(better) {
                    best = Some(fit);
                }
            }
        }
    }
    match best {
        Some(fit) => Ok(fit.host.clone()),
        None if hosts.is_empty() => Err(vec![(
            "(none)".into(),
            "no host is registered; start qhost on a hypervisor".into(),
        )]),
        None => Err(reasons),
    }
}

#[cfg(test)]
mod tests {
    use qvdc_transport::protocol::{VmDisk, VolumeFormat};

    use super::*;

    fn host(name: &str, ready: bool, free_mib: u64, pools: &[&str]) -> HostFacts {
        HostFacts {
            domains: Some(BTreeMap::new()),
            host: name.into(),
            ready,
            maintenance: false,
            cpu_cores: 4,
            memory_bytes: 8 << 30,
            committed_memory_bytes: (8 << 30) - (free_mib << 20),
            pools: pools
                .iter()
                .map(|p| ((*p).to_owned(), Health::Healthy))
                .collect(),
            up_networks: ["prod".to_owned()].into(),
        }
    }

    fn vm(memory_mib: u64, vcpus: u32, pools: &[&str]) -> VmSpec {
        VmSpec {
            id: "vm-1".into(),
            name: "web".into(),
            vcpus,
            memory_bytes: memory_mib << 20,
            disks: pools
                .iter()
                .map(|p| VmDisk {
                    pool: (*p).into(),
                    volume: "v".into(),
                    format: VolumeFormat::Qcow2,
                })
                .collect(),
            nics: Vec::new(),
        }
    }

    #[test]
    fn the_fitting_host_with_most_free_memory_wins() {
        let hosts = [
            host("host-1", true, 512, &["p"]),
            host("host-2", true, 2048, &["p"]),
            host("host-3", true, 4096, &[]),
            host("host-4", false, 8192, &["p"]),
        ];
        assert_eq!(place(&vm(256, 1, &["p"]), &[], &hosts), Ok("host-2".into()));
        assert_eq!(place(&vm(256, 1, &[]), &[], &hosts), Ok("host-3".into()));
    }

    #[test]
    fn a_vm_goes_only_where_its_networks_are_up() {
        let mut no_net = host("host-1", true, 4096, &[]);
        no_net.up_networks.clear();
        let hosts = [no_net, host("host-2", true, 1024, &[])];
        let mut spec = vm(64, 1, &[]);
        spec.nics.push(qvdc_transport::protocol::VmNic {
            network: "prod".into(),
            mac: None,
        });
        assert_eq!(place(&spec, &[], &hosts), Ok("host-2".into()));
        assert_eq!(
            place(&spec, &[], &hosts[..1]).unwrap_err()[0].1,
            "network prod not up here"
        );
    }

    #[test]
    fn a_pool_is_named_as_unassigned_or_with_its_health() {
        let mut sick = host("host-1", true, 4096, &["p"]);
        sick.pools.insert("q".into(), Health::Error);
        let spec = vm(64, 1, &["q", "p", "r"]);
        assert_eq!(
            misfit(&spec, &[], &sick).unwrap(),
            "pool r is not assigned to this host"
        );
        assert_eq!(
            misfit(&vm(64, 1, &["q", "p"]), &[], &sick).unwrap(),
            format!("pool q is {} here", Health::Error)
        );
    }

    #[test]
    fn a_vm_on_a_local_volume_goes_to_that_volume_s_host_only() {
        let hosts = [
            host("host-1", true, 8192, &["local"]),
            host("host-2", false, 1024, &["local"]),
            host("host-3", true, 64, &["local"]),
        ];
        let spec = vm(256, 1, &["local"]);
        let pinned = |host: &str| {
            vec![Pin {
                pool: "local".into(),
                volume: "v".into(),
                host: host.into(),
            }]
        };
        let reasons = place(&spec, &pinned("host-2"), &hosts).unwrap_err();
        let why: Vec<&str> = reasons.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(
            why,
            [
                "disk local/v is on host-2's own storage (pool local is local)",
                "unreachable",
                "disk local/v is on host-2's own storage (pool local is local)",
            ]
        );
        let reasons = place(&spec, &pinned("host-3"), &hosts).unwrap_err();
        assert_eq!(reasons[2].1, "needs 256 MiB of memory, 64 MiB free");
        let mut roomy = hosts.clone();
        roomy[2].committed_memory_bytes = 0;
        assert_eq!(place(&spec, &pinned("host-3"), &roomy), Ok("host-3".into()));
    }

    #[test]
    fn ties_go_to_the_first_host_by_name() {
        let hosts = [
            host("host-2", true, 1024, &[]),
            host("host-1", true, 1024, &[]),
        ];
        assert_eq!(place(&vm(64, 1, &[]), &[], &hosts), Ok("host-1".into()));
    }

    #[test]
    fn when_nothing_fits_every_host_says_why() {
        let hosts = [
            host("host-1", true, 128, &["p"]),
            host("host-2", true, 4096, &[]),
            host("host-3", false, 4096, &["p"]),
            host("host-4", true, 4096, &["p"]),
        ];
        let reasons = place(&vm(256, 8, &["p"]), &[], &hosts).unwrap_err();
        assert_eq!(
            reasons,
            [
                ("host-1".into(), "needs 8 vCPUs, has 4 cores".into()),
                (
                    "host-2".into(),
                    "pool p is not assigned to this host".into()
                ),
                ("host-3".into(), "unreachable".into()),
                ("host-4".into(), "needs 8 vCPUs, has 4 cores".into()),
            ]
        );
        let mut resting = host("host-5", true, 4096, &["p"]);
        resting.maintenance = true;
        let reasons = place(&vm(256, 1, &["p"]), &[], &[resting]).unwrap_err();
        assert_eq!(reasons[0].1, "in maintenance");
        let reasons = place(&vm(256, 1, &["p"]), &[], &hosts[..1]).unwrap_err();
        assert_eq!(reasons[0].1, "needs 256 MiB of memory, 128 MiB free");
        assert!(place(&vm(1, 1, &[]), &[], &[]).unwrap_err()[0]
            .1
            .contains("no host"));
    }
}
