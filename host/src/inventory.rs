//! What the host has: CPU, memory, disks and physical NICs, read from /proc and /sys under a
//! root directory so tests can hand in a fake tree. Missing facts read as zero, "unknown" or
//! empty rather than failing the agent's start.

use std::collections::BTreeSet;
use std::path::Path;

use qvdc_transport::protocol::{DiskInventory, Inventory, NicInventory};

/// Bytes per sector in `/sys/block/*/size`, whatever the device's real sector size.
const SECTOR_BYTES: u64 = 512;
/// Block devices that are not disks a VM's storage would live on.
const DISK_PREFIXES_SKIPPED: [&str; 6] = ["loop", "ram", "zram", "dm-", "sr", "nbd"];

/// The CPU topology `/proc/cpuinfo` describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuFacts {
    /// The first `model name`, or "unknown".
    pub model: String,
    /// Distinct `physical id`s; 1 when the kernel does not report them (VMs, containers).
    pub sockets: u32,
    /// `cpu cores`; all logical CPUs divided over the sockets when it is missing.
    pub cores_per_socket: u32,
    /// `siblings` / `cpu cores`; 1 when either is missing.
    pub threads_per_core: u32,
    /// Number of `processor` entries.
    pub logical: u32,
}

/// Scans this machine.
pub fn scan() -> Inventory {
    let mut inventory = scan_at(Path::new("/"));
    if inventory.cpu_cores == 0 {
        // Architectures whose cpuinfo has no `processor` lines still know how many CPUs run us.
        inventory.cpu_cores = std::thread::available_parallelism().map_or(0, |n| n.get() as u32);
    }
    inventory
}

/// Scans the /proc and /sys trees found under `root`.
pub fn scan_at(root: &Path) -> Inventory {
    let cpu = parse_cpuinfo(&read_trimmed(&root.join("proc/cpuinfo")).unwrap_or_default());
    let memory_bytes = read_trimmed(&root.join("proc/meminfo"))
        .and_then(|text| parse_mem_total_bytes(&text))
        .unwrap_or(0);
    let hostname = read_trimmed(&root.join("proc/sys/kernel/hostname"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    Inventory {
        hostname,
        cpu_model: cpu.model,
        cpu_sockets: cpu.sockets,
        cores_per_socket: cpu.cores_per_socket,
        threads_per_core: cpu.threads_per_core,
        cpu_cores: cpu.logical,
        memory_bytes,
        disks: bounded(scan_disks(root), "disks"),
        nics: bounded(scan_nics(root), "NICs"),
        hypervisor: String::new(),
    }
}

/// Keeps an inventory within what the control plane accepts: a host with more devices
/// than that still registers, with the first ones by name.
fn bounded<T>(mut devices: Vec<T>, what: &str) -> Vec<T> {
    let max = qvdc_transport::protocol::host_bounds::INVENTORY_DEVICES_MAX;
    if devices.len() > max {
        tracing::warn!(
            count = devices.len(),
            max,
            "inventory lists only the first {max} {what}"
        );
        devices.truncate(max);
    }
    devices
}

/// Reads the CPU topology from the text of `/proc/cpuinfo`.
pub fn parse_cpuinfo(cpuinfo: &str) -> CpuFacts {
    let (mut model, mut cores, mut siblings) = (None, None, None);
    let mut physical_ids = BTreeSet::new();
    let mut logical = 0u32;
    for (key, value) in cpuinfo.lines().filter_map(|l| l.split_once(':')) {
        let value = value.trim();
        match key.trim() {
            "processor" => logical += 1,
            "model name" if model.is_none() => model = Some(value.to_owned()),
            "physical id" => _ = physical_ids.insert(value.to_owned()),
            "cpu cores" if cores.is_none() => cores = value.parse::<u32>().ok(),
            "siblings" if siblings.is_none() => siblings = value.parse::<u32>().ok(),
            _ => {}
        }
    }
    let sockets = (physical_ids.len() as u32).max(1);
    let cores_per_socket = cores.filter(|&c| c > 0).unwrap_or(logical / sockets);
    let threads_per_core = match (siblings, cores) {
        (Some(s), Some(c)) if c > 0 && s >= c => s / c,
        _ => 1,
    };
    CpuFacts {
        model: model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "unknown".into()),
        sockets,
        cores_per_socket,
        threads_per_core,
        logical,
    }
}

/// Reads `MemTotal` from the text of `/proc/meminfo`, in bytes.
pub fn parse_mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn scan_disks(root: &Path) -> Vec<DiskInventory> {
    let block = root.join("sys/block");
    let mut disks: Vec<DiskInventory> = entry_names(&block)
        .into_iter()
        .filter(|name| !DISK_PREFIXES_SKIPPED.iter().any(|p| name.starts_with(p)))
        .map(|name| {
            let dir = block.join(&name);
            let sectors = read_trimmed(&dir.join("size")).and_then(|s| s.parse::<u64>().ok());
            DiskInventory {
                size_bytes: sectors.unwrap_or(0).saturating_mul(SECTOR_BYTES),
                rotational: read_trimmed(&dir.join("queue/rotational")).as_deref() == Some("1"),
                name,
            }
        })
        .collect();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

fn scan_nics(root: &Path) -> Vec<NicInventory> {
    let net = root.join("sys/class/net");
    // Only physical NICs have a `device` link; bridges, veths, taps and `lo` live under
    // devices/virtual and have none.
    let mut nics: Vec<NicInventory> = entry_names(&net)
        .into_iter()
        .filter(|name| name != "lo" && net.join(name).join("device").exists())
        .map(|name| {
            let dir = net.join(&name);
            NicInventory {
                mac: read_trimmed(&dir.join("address")).unwrap_or_default(),
                // Reading `speed` fails with EINVAL while the link is down.
                speed_mbps: read_trimmed(&dir.join("speed"))
                    .and_then(|s| s.parse::<i64>().ok())
                    .and_then(|s| u32::try_from(s).ok())
                    .filter(|&s| s > 0),
                up: read_trimmed(&dir.join("operstate")).as_deref() == Some("up"),
                name,
            }
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// The names in a directory; none when it cannot be read.
fn entry_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sockets, one core each, two threads per core (an excerpt: fields trimmed).
    const CPUINFO_TWO_SOCKETS_HT: &str = "\
processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz\nphysical id\t: 0
siblings\t: 2\ncore id\t\t: 0\ncpu cores\t: 1\n
processor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz\nphysical id\t: 1
siblings\t: 2\ncore id\t\t: 0\ncpu cores\t: 1\n
processor\t: 2\nmodel name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz\nphysical id\t: 0
siblings\t: 2\ncore id\t\t: 0\ncpu cores\t: 1\n
processor\t: 3\nmodel name\t: Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz\nphysical id\t: 1
siblings\t: 2\ncore id\t\t: 0\ncpu cores\t: 1\n";

    /// A VM whose kernel reports neither `physical id`, `siblings` nor `cpu cores`.
    const CPUINFO_VM: &str = "\
processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\nflags\t\t: fpu vme\n
processor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\nflags\t\t: fpu vme\n
processor\t: 2\nmodel name\t: QEMU Virtual CPU version 2.5+\nflags\t\t: fpu vme\n";

    #[test]
    fn cpuinfo_of_two_hyperthreaded_sockets() {
        let facts = parse_cpuinfo(CPUINFO_TWO_SOCKETS_HT);
        assert_eq!(
            facts,
            CpuFacts {
                model: "Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz".into(),
                sockets: 2,
                cores_per_socket: 1,
                threads_per_core: 2,
                logical: 4,
            }
        );
    }

    #[test]
    fn cpuinfo_without_topology_is_one_socket_of_single_threaded_cores() {
        let facts = parse_cpuinfo(CPUINFO_VM);
        assert_eq!(
            (
                facts.sockets,
                facts.cores_per_socket,
                facts.threads_per_core,
                facts.logical
            ),
            (1, 3, 1, 3)
        );
        assert_eq!(facts.model, "QEMU Virtual CPU version 2.5+");
        assert_eq!(parse_cpuinfo("").model, "unknown");
    }

    #[test]
    fn mem_total_is_read_in_bytes() {
        assert_eq!(
            parse_mem_total_bytes("MemFree: 1 kB\nMemTotal:  2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        assert_eq!(parse_mem_total_bytes("nothing"), None);
    }

    fn put(root: &Path, relative: &str, contents: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    #[test]
    fn scan_at_reads_a_fake_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(root, "proc/sys/kernel/hostname", "node-7\n");
        put(root, "proc/cpuinfo", CPUINFO_TWO_SOCKETS_HT);
        put(
            root,
            "proc/meminfo",
            "MemTotal:       16384 kB\nMemFree: 1 kB\n",
        );
        put(root, "sys/block/sda/size", "2048\n");
        put(root, "sys/block/sda/queue/rotational", "1\n");
        put(root, "sys/block/loop0/size", "8\n");
        put(root, "sys/class/net/eth0/address", "52:54:00:12:34:56\n");
        put(root, "sys/class/net/eth0/operstate", "up\n");
        put(root, "sys/class/net/eth0/speed", "10000\n");
        std::fs::create_dir_all(root.join("sys/class/net/eth0/device")).unwrap();
        put(root, "sys/block/nvme0n1/size", "4096\n");
        put(root, "sys/block/nvme0n1/queue/rotational", "0\n");
        put(root, "sys/class/net/eth1/address", "52:54:00:ab:cd:ef\n");
        put(root, "sys/class/net/eth1/operstate", "down\n");
        put(root, "sys/class/net/eth1/speed", "-1\n");
        std::fs::create_dir_all(root.join("sys/class/net/eth1/device")).unwrap();
        put(root, "sys/class/net/veth0/address", "aa:bb:cc:dd:ee:ff\n");
        put(root, "sys/class/net/veth0/operstate", "up\n");

        let expected = Inventory {
            hostname: "node-7".into(),
            cpu_model: "Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz".into(),
            cpu_sockets: 2,
            cores_per_socket: 1,
            threads_per_core: 2,
            cpu_cores: 4,
            memory_bytes: 16384 * 1024,
            disks: vec![
                DiskInventory {
                    name: "nvme0n1".into(),
                    size_bytes: 4096 * 512,
                    rotational: false,
                },
                DiskInventory {
                    name: "sda".into(),
                    size_bytes: 2048 * 512,
                    rotational: true,
                },
            ],
            nics: vec![
                NicInventory {
                    name: "eth0".into(),
                    mac: "52:54:00:12:34:56".into(),
                    speed_mbps: Some(10000),
                    up: true,
                },
                NicInventory {
                    name: "eth1".into(),
                    mac: "52:54:00:ab:cd:ef".into(),
                    speed_mbps: None,
                    up: false,
                },
            ],
            hypervisor: String::new(),
        };
        assert_eq!(scan_at(root), expected);
    }

    #[test]
    fn scan_finds_this_machine() {
        let inventory = scan();
        println!("{inventory:#?}");
        assert!(inventory.cpu_cores > 0, "{inventory:?}");
        assert!(inventory.memory_bytes > 0, "{inventory:?}");
        assert!(!inventory.cpu_model.is_empty(), "{inventory:?}");
    }
}
