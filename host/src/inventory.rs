//! What the host has: read from /proc on the real machine, handed in by the simulation.

use qvdc_transport::protocol::Inventory;

/// Reads CPU cores, memory and hostname of this machine. Missing facts read as zero or
/// "unknown" rather than failing the agent's start.
pub fn scan() -> Inventory {
    let cpu_cores = std::thread::available_parallelism().map_or(0, |n| n.get() as u32);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_mem_total_bytes(&text))
        .unwrap_or(0);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    Inventory {
        hostname,
        cpu_cores,
        memory_bytes,
    }
}

fn parse_mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        assert_eq!(
            parse_mem_total_bytes("MemFree: 1 kB\nMemTotal:  2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        assert_eq!(parse_mem_total_bytes("nothing"), None);
    }

    #[test]
    fn scan_finds_this_machine() {
        let inventory = scan();
        assert!(
            inventory.cpu_cores > 0 && inventory.memory_bytes > 0,
            "{inventory:?}"
        );
    }
}
