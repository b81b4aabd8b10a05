//! How `qvctl` shows answers: tables for people, JSON for scripts.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use qvdc_transport::protocol::{
    ApiResponse, Capacity, ClusterStatus, HostView, Liveness, PoolSource, PoolView,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Renders an API response in the chosen format.
pub fn render(response: &ApiResponse, format: Format) -> String {
    match format {
        Format::Json => json(response),
        Format::Table => match response {
            ApiResponse::ClusterStatus(s) => cluster_table(s),
            ApiResponse::Hosts(hosts) => hosts_table(hosts),
            ApiResponse::PoolCreated { name } => {
                format!("pool {name} created; `qvctl pool show {name}` follows it onto the hosts")
            }
            ApiResponse::Pool(pool) => pool_detail(pool),
            ApiResponse::Pools(pools) => pools_table(pools),
        },
    }
}

fn json(response: &ApiResponse) -> String {
    let value = match response {
        ApiResponse::ClusterStatus(s) => serde_json::to_value(s),
        ApiResponse::Hosts(h) => serde_json::to_value(h),
        ApiResponse::PoolCreated { name } => Ok(serde_json::json!({ "created": name })),
        ApiResponse::Pool(p) => serde_json::to_value(p),
        ApiResponse::Pools(p) => serde_json::to_value(p),
    };
    serde_json::to_string_pretty(&value.expect("API types serialize")).expect("JSON values print")
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

/// Bytes in binary units with one decimal: 1.5 GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn capacity(c: &Capacity) -> String {
    format!(
        "{} / {} ({} free)",
        bytes(c.used_bytes),
        bytes(c.total_bytes),
        bytes(c.available_bytes)
    )
}

fn cluster_table(s: &ClusterStatus) -> String {
    let mut t = table(&["NODE", "ADDRESS", "VOTER", "ROLE"]);
    for m in &s.members {
        let role = if s.leader == Some(m.node_id) {
            "leader"
        } else {
            "follower"
        };
        t.add_row(vec![
            m.node_id.to_string(),
            m.addr.clone(),
            m.voter.to_string(),
            role.into(),
        ]);
    }
    let leader = s.leader.map_or("none".into(), |l| l.to_string());
    let applied = s.last_applied.map_or("-".into(), |a| a.to_string());
    format!(
        "leader: {leader}   term: {}   applied index: {applied} (answered by node {})\n{t}",
        s.term, s.node_id
    )
}

fn hosts_table(hosts: &[HostView]) -> String {
    let mut t = table(&["HOST", "STATE", "HOSTNAME", "CPUS", "MEMORY"]);
    for h in hosts {
        let state = match h.liveness {
            Liveness::Ready => "Ready",
            Liveness::Unreachable => "Unreachable",
        };
        t.add_row(vec![
            h.host_id.clone(),
            state.into(),
            h.inventory.hostname.clone(),
            h.inventory.cpu_cores.to_string(),
            bytes(h.inventory.memory_bytes),
        ]);
    }
    t.to_string()
}

fn source(pool: &PoolView) -> String {
    match &pool.spec.source {
        PoolSource::Dir { path } => format!("dir {path}"),
    }
}

fn pools_table(pools: &[PoolView]) -> String {
    let mut t = table(&["POOL", "SOURCE", "HEALTH", "HOSTS OK", "CAPACITY"]);
    for p in pools {
        let ok = format!("{}/{}", p.healthy_hosts.len(), p.hosts.len());
        t.add_row(vec![
            p.spec.name.clone(),
            source(p),
            p.health.to_string(),
            ok,
            capacity(&p.capacity),
        ]);
    }
    t.to_string()
}

fn pool_detail(p: &PoolView) -> String {
    let mut t = table(&["HOST", "HEALTH", "MOUNTED", "CAPACITY", "VOLUMES", "ERROR"]);
    for h in &p.hosts {
        t.add_row(vec![
            h.host_id.clone(),
            h.health.to_string(),
            h.mounted.to_string(),
            if h.mounted {
                capacity(&h.capacity)
            } else {
                "-".into()
            },
            h.volume_count.to_string(),
            h.error.clone().unwrap_or_default(),
        ]);
    }
    let list = |hosts: &[String]| {
        if hosts.is_empty() {
            "-".to_owned()
        } else {
            hosts.join(", ")
        }
    };
    format!(
        "pool:     {}\nsource:   {}\nhealth:   {}\ncapacity: {}\nhealthy:  {}\nfailed:   {}\n{t}",
        p.spec.name,
        source(p),
        p.health,
        capacity(&p.capacity),
        list(&p.healthy_hosts),
        list(&p.failed_hosts)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
