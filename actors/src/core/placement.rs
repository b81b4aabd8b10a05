//! Where a new VM runs. Pure: the caller gathers each host's facts (liveness, inventory, the
//! pools healthy there, the memory its VMs already claim) and gets back a host, or for every
//! host the reason it does not fit.

use std::collections::BTreeSet;

use qvdc_transport::protocol::VmSpec;

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
    /// Pools assigned to the host that it reports HEALTHY.
    pub healthy_pools: BTreeSet<String>,
    /// Networks assigned to the host that it reports up.
    pub up_networks: BTreeSet<String>,
}

/// Why no host fits, host by host, in host order.
pub type Unplaceable = Vec<(String, String)>;

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// Why `spec` does not fit on `host`, or `None` if it does.
pub fn misfit(spec: &VmSpec, host: &HostFacts) -> Option<String> {
    if !host.ready {
        return Some("unreachable".into());
    }
    if host.maintenance {
        return Some("in maintenance".into());
    }
    let missing: Vec<&str> = spec
        .disks
        .iter()
        .map(|d| d.pool.as_str())
        .filter(|pool| !host.healthy_pools.contains(*pool))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !missing.is_empty() {
        return Some(format!("pool {} not healthy here", missing.join(", ")));
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

/// The fitting host with the most free memory (ties go to the first in name order).
pub fn place(spec: &VmSpec, hosts: &[HostFacts]) -> Result<String, Unplaceable> {
    let mut best: Option<(&HostFacts, u64)> = None;
    let mut reasons = Vec::new();
    for host in hosts {
        match misfit(spec, host) {
            Some(reason) => reasons.push((host.host.clone(), reason)),
            None => {
                let free = host.memory_bytes - host.committed_memory_bytes;
                if best.is_none_or(|(b, f)| free > f || (free == f && host.host < b.host)) {
                    best = Some((host, free));
                }
            }
        }
    }
    match best {
        Some((host, _)) => Ok(host.host.clone()),
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
            host: name.into(),
            ready,
            maintenance: false,
            cpu_cores: 4,
            memory_bytes: 8 << 30,
            committed_memory_bytes: (8 << 30) - (free_mib << 20),
            healthy_pools: pools.iter().map(|p| (*p).to_owned()).collect(),
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
        assert_eq!(place(&vm(256, 1, &["p"]), &hosts), Ok("host-2".into()));
        assert_eq!(place(&vm(256, 1, &[]), &hosts), Ok("host-3".into()));
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
        assert_eq!(place(&spec, &hosts), Ok("host-2".into()));
        assert_eq!(
            place(&spec, &hosts[..1]).unwrap_err()[0].1,
            "network prod not up here"
        );
    }

    #[test]
    fn ties_go_to_the_first_host_by_name() {
        let hosts = [
            host("host-2", true, 1024, &[]),
            host("host-1", true, 1024, &[]),
        ];
        assert_eq!(place(&vm(64, 1, &[]), &hosts), Ok("host-1".into()));
    }

    #[test]
    fn when_nothing_fits_every_host_says_why() {
        let hosts = [
            host("host-1", true, 128, &["p"]),
            host("host-2", true, 4096, &[]),
            host("host-3", false, 4096, &["p"]),
            host("host-4", true, 4096, &["p"]),
        ];
        let reasons = place(&vm(256, 8, &["p"]), &hosts).unwrap_err();
        assert_eq!(
            reasons,
            [
                ("host-1".into(), "needs 8 vCPUs, has 4 cores".into()),
                ("host-2".into(), "pool p not healthy here".into()),
                ("host-3".into(), "unreachable".into()),
                ("host-4".into(), "needs 8 vCPUs, has 4 cores".into()),
            ]
        );
        let mut resting = host("host-5", true, 4096, &["p"]);
        resting.maintenance = true;
        let reasons = place(&vm(256, 1, &["p"]), &[resting]).unwrap_err();
        assert_eq!(reasons[0].1, "in maintenance");
        let reasons = place(&vm(256, 1, &["p"]), &hosts[..1]).unwrap_err();
        assert_eq!(reasons[0].1, "needs 256 MiB of memory, 128 MiB free");
        assert!(place(&vm(1, 1, &[]), &[]).unwrap_err()[0]
            .1
            .contains("no host"));
    }
}
