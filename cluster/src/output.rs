//! How `qvctl` shows answers: tables for people, JSON for scripts.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use qvdc_transport::protocol::{
    ApiResponse, Capacity, ClusterStatus, HostDetail, HostView, Liveness, NetworkView, Placement,
    PoolScope, PoolView, RevokedCertificate, VmView, VolumeInfo, VolumeView,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Compares names as people read them: runs of digits by their value, so `host-2` comes
/// before `host-10`; otherwise byte by byte. Equal values with different zero padding
/// (`v01`, `v1`) fall back to plain order, so the order is total.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) if p.is_ascii_digit() && q.is_ascii_digit() => {
                let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (m, n) = (digits(x), digits(y));
                let trim = |s: &'_ [u8]| -> usize { s.iter().take_while(|c| **c == b'0').count() };
                let (u, v) = (&x[trim(&x[..m])..m], &y[trim(&y[..n])..n]);
                let by_value = u.len().cmp(&v.len()).then_with(|| u.cmp(v));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                (x, y) = (&x[m..], &y[n..]);
            }
            (Some(p), Some(q)) if p != q => return p.cmp(q),
            _ => (x, y) = (&x[1..], &y[1..]),
        }
    }
}

fn sort_naturally<T>(items: &mut [T], name: impl Fn(&T) -> &str) {
    items.sort_by(|a, b| natural_cmp(name(a), name(b)));
}

/// `response` with every list in natural name order (see [`natural_cmp`]).
fn in_natural_order(response: &ApiResponse) -> ApiResponse {
    let mut response = response.clone();
    let pool = |p: &mut PoolView| {
        sort_naturally(&mut p.hosts, |h| &h.host_id);
        sort_naturally(&mut p.volumes, |v| &v.name);
        sort_naturally(&mut p.healthy_hosts, |h| h);
        sort_naturally(&mut p.failed_hosts, |h| h);
    };
    let network = |n: &mut NetworkView| sort_naturally(&mut n.hosts, |h| &h.host_id);
    match &mut response {
        ApiResponse::Hosts(hosts) => sort_naturally(hosts, |h| &h.host_id),
        ApiResponse::Pool(p) => pool(p),
        ApiResponse::Pools(pools) => {
            sort_naturally(pools, |p| &p.spec.name);
            pools.iter_mut().for_each(pool);
        }
        ApiResponse::Vms(vms) => sort_naturally(vms, |v| &v.spec.name),
        ApiResponse::VmHa(views) => sort_naturally(views, |v| &v.vm),
        ApiResponse::Moves(m) => {
            sort_naturally(&mut m.moves, |v| &v.vm);
            sort_naturally(&mut m.evacuations, |e| &e.host);
        }
        ApiResponse::Files { files, .. } => sort_naturally(files, |f| &f.name),
        ApiResponse::Volumes(volumes) => sort_naturally(volumes, |v| &v.name),
        ApiResponse::Host(detail) => {
            sort_naturally(&mut detail.pools, |p| &p.pool);
            sort_naturally(&mut detail.vms, |v| &v.spec.name);
        }
        ApiResponse::Network(n) => network(n),
        ApiResponse::Networks(networks) => {
            sort_naturally(networks, |n| &n.spec.name);
            networks.iter_mut().for_each(network);
        }
        ApiResponse::Revoked(revoked) => sort_naturally(revoked, |r| &r.name),
        ApiResponse::Remnants { hosts, unheard, .. } => {
            sort_naturally(hosts, |(host, _)| host);
            sort_naturally(unheard, |host| host);
        }
        ApiResponse::Placement(p) => sort_naturally(&mut p.hosts, |h| &h.host),
        _ => {}
    }
    response
}

/// Renders an API response in the chosen format, lists in natural name order.
pub fn render(response: &ApiResponse, format: Format) -> String {
    let response = &in_natural_order(response);
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
            ApiResponse::VmCreated { name, id, host } => {
                format!("VM {name} (id {id}) placed on {host}; `qvctl vm show {name}` follows it")
            }
            ApiResponse::Vm(vm) => vm_detail(vm),
            ApiResponse::Vms(vms) => vms_table(vms),
            ApiResponse::Done => "done".into(),
            ApiResponse::Files { pool, host, files } => files_table(pool, host, files),
            ApiResponse::Volumes(volumes) => volumes_table(volumes),
            ApiResponse::Host(host) => host_detail(host),
            ApiResponse::Network(network) => networks_table(std::slice::from_ref(network)),
            ApiResponse::Networks(networks) => networks_table(networks),
            ApiResponse::Revoked(revoked) => revoked_table(revoked),
            ApiResponse::Placement(placement) => placement_table(placement),
            ApiResponse::Remnants {
                pool,
                hosts,
                unheard,
            } => {
                let mut t = table(&["HOST", "STATE"]);
                for (host, liveness) in hosts {
                    t.add_row(vec![host.clone(), format!("still mounted ({liveness})")]);
                }
                for host in unheard {
                    t.add_row(vec![
                        host.clone(),
                        "not heard from by this leader yet".into(),
                    ]);
                }
                format!("pool {pool} on hosts it is not assigned to:\n{t}")
            }
            ApiResponse::Backup { index, term, file } => {
                format!(
                    "backup at index {index} (term {term}), {} bytes",
                    file.len()
                )
            }
            ApiResponse::VmHa(views) => ha_table(views),
            ApiResponse::Moves(moves) => moves_table(moves),
            ApiResponse::Events(page) => event_lines(page).join("\n"),
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
        ApiResponse::VmCreated { name, id, host } => {
            Ok(serde_json::json!({ "created": name, "id": id, "host": host }))
        }
        ApiResponse::Vm(v) => serde_json::to_value(v),
        ApiResponse::Vms(v) => serde_json::to_value(v),
        ApiResponse::Done => Ok(serde_json::json!({ "done": true })),
        ApiResponse::Files { pool, host, files } => serde_json::to_value(files)
            .map(|f| serde_json::json!({ "pool": pool, "host": host, "files": f })),
        ApiResponse::Volumes(v) => serde_json::to_value(v),
        ApiResponse::Host(h) => serde_json::to_value(h),
        ApiResponse::Network(n) => serde_json::to_value(n),
        ApiResponse::Networks(n) => serde_json::to_value(n),
        ApiResponse::Revoked(r) => serde_json::to_value(r),
        ApiResponse::Placement(p) => serde_json::to_value(p),
        ApiResponse::Remnants {
            pool,
            hosts,
            unheard,
        } => Ok(serde_json::json!({
            "pool": pool,
            "hosts": hosts
                .iter()
                .map(|(host, liveness)| serde_json::json!({"host": host, "liveness": liveness}))
                .collect::<Vec<_>>(),
            "unheard": unheard,
        })),
        ApiResponse::Backup { index, term, file } => Ok(serde_json::json!({
            "index": index, "term": term, "bytes": file.len(),
        })),
        ApiResponse::VmHa(v) => serde_json::to_value(v),
        ApiResponse::Moves(m) => serde_json::to_value(m),
        ApiResponse::Events(e) => serde_json::to_value(e),
    };
    serde_json::to_string_pretty(&value.expect("API types serialize")).expect("JSON values print")
}

/// Milliseconds since the Unix epoch as a UTC date and time, `2026-12-07 02:15:03.120`.
pub fn utc(ms: u64) -> String {
    let (days, rest) = (ms / 86_400_000, ms % 86_400_000);
    // Days to a civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1_000 % 60,
        rest % 1_000
    )
}

/// One line per change and per reported event, oldest first: what `qvctl events` prints.
pub fn event_lines(page: &qvdc_transport::protocol::EventsPage) -> Vec<String> {
    use qvdc_transport::protocol::AuditOutcome;
    let mut lines = Vec::new();
    if let Some(gap) = &page.gap {
        lines.push(format!("# {gap}"));
    }
    for change in &page.changes {
        let by = match (&change.by, change.via) {
            (Some(by), Some(via)) => format!("{by} (via node {via})"),
            (Some(by), None) => by.clone(),
            (None, _) => "qvdc".to_owned(),
        };
        let outcome = match &change.outcome {
            AuditOutcome::Applied => "applied".to_owned(),
            AuditOutcome::Unchanged => "unchanged".to_owned(),
            AuditOutcome::Refused(reason) => format!("REFUSED: {reason}"),
        };
        let request = change
            .request_id
            .as_ref()
            .map(|id| format!(" [request {id}]"))
            .unwrap_or_default();
        lines.push(format!(
            "{}  #{:<6} {by}: {} — {outcome}{request}",
            utc(change.at_ms),
            change.seq,
            change.change
        ));
    }
    if let Some(resync) = &page.resync {
        lines.push(format!(
            "# reported state from leader node {}: {resync}",
            page.leader
        ));
    }
    for event in &page.reported {
        let state = event.state.as_deref().unwrap_or("gone");
        lines.push(format!("{}  {} {state}", utc(event.at_ms), event.object));
    }
    lines
}

fn moves_table(view: &qvdc_transport::protocol::MovesView) -> String {
    let mut out = String::new();
    if view.moves.is_empty() {
        out.push_str("no VM is moving\n");
    } else {
        let mut t = table(&["VM", "FROM", "TO", "MODE", "STATUS"]);
        for m in &view.moves {
            let status = if m.failed {
                format!("FAILED: {}", m.status)
            } else {
                m.status.clone()
            };
            t.add_row(vec![
                m.vm.clone(),
                m.from.clone(),
                m.to.clone(),
                m.mode.to_string(),
                status,
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    for e in &view.evacuations {
        if e.remaining.is_empty() {
            out.push_str(&format!(
                "host {} is in maintenance and runs no VM\n",
                e.host
            ));
            continue;
        }
        out.push_str(&format!(
            "host {} is in maintenance; {} VM(s) still to move:\n",
            e.host,
            e.remaining.len()
        ));
        for (vm, what) in &e.remaining {
            out.push_str(&format!("  {vm}: {what}\n"));
        }
    }
    for e in view.evacuations.iter().filter(|e| !e.unmanaged.is_empty()) {
        out.push_str(&format!(
            "host {} also runs domains qvdc does not manage, which stay: {}\n",
            e.host,
            e.unmanaged.join(", ")
        ));
    }
    out.trim_end().to_owned()
}

fn ha_table(views: &[qvdc_transport::protocol::VmHaView]) -> String {
    let mut t = table(&["VM", "HOST", "HA", "STATUS"]);
    for v in views {
        t.add_row(vec![
            v.vm.clone(),
            v.host.clone(),
            v.policy.to_string(),
            v.status.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.to_string()
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
        } else if m.voter {
            "follower"
        } else {
            "learner"
        };
        t.add_row(vec![
            m.node_id.to_string(),
            m.addr.clone(),
            m.voter.to_string(),
            role.into(),
        ]);
    }
    let index = |i: Option<u64>| i.map_or("-".into(), |i| i.to_string());
    let leader = s.leader.map_or("none".into(), |l| l.to_string());
    format!(
        "leader: {leader}   term: {}   answered by node {}\n\
         log: applied {}, snapshot {}, purged {}   state digest: {:016x}\n{t}",
        s.term,
        s.node_id,
        index(s.last_applied),
        index(s.snapshot_index),
        index(s.purged_index),
        s.state_digest
    )
}

fn hosts_table(hosts: &[HostView]) -> String {
    let mut t = table(&["HOST", "STATE", "HOSTNAME", "CPUS", "MEMORY"]);
    for h in hosts {
        let mut state = match h.liveness {
            Liveness::Ready => "Ready",
            Liveness::Unreachable => "Unreachable",
        }
        .to_owned();
        if h.maintenance {
            state.push_str(", maintenance");
        }
        t.add_row(vec![
            h.host_id.clone(),
            state,
            h.inventory.hostname.clone(),
            h.inventory.cpu_cores.to_string(),
            bytes(h.inventory.memory_bytes),
        ]);
    }
    t.to_string()
}

fn pools_table(pools: &[PoolView]) -> String {
    let mut t = table(&["POOL", "SCOPE", "SOURCE", "HEALTH", "HOSTS OK", "CAPACITY"]);
    for p in pools {
        let ok = format!("{}/{}", p.healthy_hosts.len(), p.hosts.len());
        t.add_row(vec![
            p.spec.name.clone(),
            p.spec.scope.to_string(),
            p.spec.source.to_string(),
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
    let scope = match p.spec.scope {
        PoolScope::Shared => "shared (one storage seen by every host)",
        PoolScope::Local => "local (each host's own storage; capacity is their sum)",
    };
    format!(
        "pool:     {}\nscope:    {scope}\nsource:   {}\nhealth:   {}\ncapacity: {}\nhealthy:  {}\nfailed:   {}\n{t}",
        p.spec.name,
        p.spec.source,
        p.health,
        capacity(&p.capacity),
        list(&p.healthy_hosts),
        list(&p.failed_hosts)
    )
}

fn networks_table(networks: &[NetworkView]) -> String {
    let mut t = table(&["NETWORK", "BRIDGE", "VLAN", "HOST", "UP", "ERROR"]);
    for n in networks {
        let vlan = match (&n.spec.uplink, n.spec.vlan) {
            (Some(uplink), Some(vlan)) => format!("{vlan} on {uplink}"),
            _ => "-".into(),
        };
        for h in &n.hosts {
            t.add_row(vec![
                n.spec.name.clone(),
                n.spec.bridge.clone(),
                vlan.clone(),
                h.host_id.clone(),
                h.up.to_string(),
                h.error.clone().unwrap_or_default(),
            ]);
        }
    }
    t.to_string()
}

fn placement_table(p: &Placement) -> String {
    let misfit = |host: &str| {
        p.hosts
            .iter()
            .find(|h| h.host == host)
            .and_then(|h| h.reason.clone())
    };
    let verdict = match (&p.chosen, &p.refused) {
        (_, Some(refused)) => format!("VM {} would be refused: {refused}", p.vm),
        (Some(host), None) if p.asked.is_some() && misfit(host).is_some() => format!(
            "VM {} would be placed on {host} as asked, although placement would not pick it ({}) (dry run: nothing created)",
            p.vm,
            misfit(host).unwrap_or_default()
        ),
        (Some(host), None) => format!(
            "VM {} would be placed on {host} (dry run: nothing created)",
            p.vm
        ),
        (None, None) => format!("no host can run VM {} now (dry run: nothing created)", p.vm),
    };
    let mut t = table(&["HOST", "FITS", "FREE MEMORY", "WHY NOT"]);
    for h in &p.hosts {
        t.add_row(vec![
            h.host.clone(),
            if h.fits { "yes" } else { "no" }.into(),
            bytes(h.free_memory_bytes),
            h.reason.clone().unwrap_or_default(),
        ]);
    }
    format!("{verdict}\n{t}")
}

fn revoked_table(revoked: &[RevokedCertificate]) -> String {
    let mut t = table(&["SERIAL", "ROLE", "NAME"]);
    for r in revoked {
        t.add_row(vec![r.serial.clone(), r.role.clone(), r.name.clone()]);
    }
    t.to_string()
}

fn files_table(pool: &str, host: &str, files: &[VolumeInfo]) -> String {
    let mut t = table(&["FILE", "FORMAT", "SIZE"]);
    for f in files {
        let format = f.format.map_or("-".to_owned(), |f| f.to_string());
        t.add_row(vec![f.name.clone(), format, bytes(f.size_bytes)]);
    }
    format!("pool {pool} as host {host} sees it:\n{t}")
}

fn volumes_table(volumes: &[VolumeView]) -> String {
    let local = volumes.iter().any(|v| v.host.is_some());
    let mut header = vec!["VOLUME", "FORMAT", "SIZE", "READY", "ERROR"];
    if local {
        header.insert(1, "HOST");
    }
    let mut t = table(&header);
    for v in volumes {
        let mut row = vec![
            v.name.clone(),
            v.format.to_string(),
            bytes(v.size_bytes),
            v.ready.to_string(),
            v.error.clone().unwrap_or_default(),
        ];
        if local {
            row.insert(1, v.host.clone().unwrap_or_default());
        }
        t.add_row(row);
    }
    t.to_string()
}

fn host_detail(detail: &HostDetail) -> String {
    let h = &detail.host;
    let i = &h.inventory;
    let mut out = format!(
        "host:       {}\nliveness:   {}\nhostname:   {}\ncpu:        {} ({} sockets x {} cores x {} threads = {} CPUs)\nmemory:     {}\nhypervisor: {}\n",
        h.host_id,
        match h.liveness {
            Liveness::Ready => "Ready",
            Liveness::Unreachable => "Unreachable",
        },
        i.hostname,
        i.cpu_model,
        i.cpu_sockets,
        i.cores_per_socket,
        i.threads_per_core,
        i.cpu_cores,
        bytes(i.memory_bytes),
        if i.hypervisor.is_empty() { "-" } else { &i.hypervisor },
    );
    let mut pools = table(&["POOL", "HEALTH", "ERROR"]);
    for p in &detail.pools {
        pools.add_row(vec![
            p.pool.clone(),
            p.health.to_string(),
            p.error.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&format!("{pools}\n{}", vms_table(&detail.vms)));
    out
}

fn disks(vm: &VmView) -> String {
    let disks: Vec<String> = vm
        .spec
        .disks
        .iter()
        .map(|d| format!("{}/{} ({})", d.pool, d.volume, d.format))
        .collect();
    if disks.is_empty() {
        "-".into()
    } else {
        disks.join(", ")
    }
}

fn vms_table(vms: &[VmView]) -> String {
    let mut t = table(&["VM", "HOST", "DESIRED", "POWER", "VCPUS", "MEMORY", "ERROR"]);
    for vm in vms {
        t.add_row(vec![
            vm.spec.name.clone(),
            vm.host.clone(),
            desired_shown(vm),
            vm.power.to_string(),
            vm.spec.vcpus.to_string(),
            bytes(vm.spec.memory_bytes),
            vm.error.clone().unwrap_or_default(),
        ]);
    }
    t.to_string()
}

/// What qvdc wants of a VM: nothing, for one it does not manage.
fn desired_shown(vm: &VmView) -> String {
    if vm.managed {
        vm.desired.to_string()
    } else {
        "unmanaged".into()
    }
}

fn vm_detail(vm: &VmView) -> String {
    format!(
        "vm:      {}\nid:      {}\nhost:    {}\ndesired: {}\npower:   {} ({})\nvcpus:   {}\nmemory:  {}\ndisks:   {}\nerror:   {}",
        vm.spec.name,
        if vm.managed { vm.spec.id.as_str() } else { "- (not managed by qvdc: it never starts, stops or removes it)" },
        vm.host,
        desired_shown(vm),
        vm.power,
        vm.reason,
        vm.spec.vcpus,
        bytes(vm.spec.memory_bytes),
        disks(vm),
        vm.error.as_deref().unwrap_or("-")
    )
}

#[cfg(test)]
mod tests {
    use expect_test::expect;
    use qvdc_transport::protocol::{
        Health, Inventory, MemberStatus, PoolHostView, PoolSource, PoolSpec, PowerState,
    };

    use super::*;

    fn pool() -> PoolView {
        let healthy = |id: &str| PoolHostView {
            host_id: id.into(),
            health: Health::Healthy,
            mounted: true,
            capacity: Capacity {
                total_bytes: 100 << 30,
                used_bytes: 25 << 30,
                available_bytes: 75 << 30,
            },
            volume_count: 3,
            error: None,
        };
        let failed = PoolHostView {
            host_id: "host-3".into(),
            health: Health::Error,
            mounted: false,
            capacity: Capacity::default(),
            volume_count: 0,
            error: Some("cannot create mount point /var/lib/qhost/pools/shared: Not a directory (os error 20)".into()),
        };
        PoolView {
            spec: PoolSpec {
                scope: Default::default(),
                name: "shared".into(),
                source: PoolSource::Dir {
                    path: "/srv/shared".into(),
                },
            },
            health: Health::Degraded,
            capacity: Capacity {
                total_bytes: 100 << 30,
                used_bytes: 25 << 30,
                available_bytes: 75 << 30,
            },
            healthy_hosts: vec!["host-1".into(), "host-2".into()],
            failed_hosts: vec!["host-3".into()],
            hosts: vec![healthy("host-1"), healthy("host-2"), failed],
            volumes: Vec::new(),
        }
    }

    #[test]
    fn pool_detail_table() {
        expect![[r#"
            pool:     shared
            scope:    shared (one storage seen by every host)
            source:   dir /srv/shared
            health:   DEGRADED
            capacity: 25.0 GiB / 100.0 GiB (75.0 GiB free)
            healthy:  host-1, host-2
            failed:   host-3
            ┌────────┬─────────┬─────────┬──────────────────────────────────────┬─────────┬──────────────────────────────────────────────────────────────────────────────────────┐
            │ HOST   ┆ HEALTH  ┆ MOUNTED ┆ CAPACITY                             ┆ VOLUMES ┆ ERROR                                                                                │
            ╞════════╪═════════╪═════════╪══════════════════════════════════════╪═════════╪══════════════════════════════════════════════════════════════════════════════════════╡
            │ host-1 ┆ HEALTHY ┆ true    ┆ 25.0 GiB / 100.0 GiB (75.0 GiB free) ┆ 3       ┆                                                                                      │
            │ host-2 ┆ HEALTHY ┆ true    ┆ 25.0 GiB / 100.0 GiB (75.0 GiB free) ┆ 3       ┆                                                                                      │
            │ host-3 ┆ ERROR   ┆ false   ┆ -                                    ┆ 0       ┆ cannot create mount point /var/lib/qhost/pools/shared: Not a directory (os error 20) │
            └────────┴─────────┴─────────┴──────────────────────────────────────┴─────────┴──────────────────────────────────────────────────────────────────────────────────────┘"#]].assert_eq(&render(&ApiResponse::Pool(pool()), Format::Table));
    }

    #[test]
    fn pool_list_table() {
        expect![[r#"
            ┌────────┬────────┬─────────────────┬──────────┬──────────┬──────────────────────────────────────┐
            │ POOL   ┆ SCOPE  ┆ SOURCE          ┆ HEALTH   ┆ HOSTS OK ┆ CAPACITY                             │
            ╞════════╪════════╪═════════════════╪══════════╪══════════╪══════════════════════════════════════╡
            │ shared ┆ shared ┆ dir /srv/shared ┆ DEGRADED ┆ 2/3      ┆ 25.0 GiB / 100.0 GiB (75.0 GiB free) │
            └────────┴────────┴─────────────────┴──────────┴──────────┴──────────────────────────────────────┘"#]].assert_eq(&render(&ApiResponse::Pools(vec![pool()]), Format::Table));
    }

    #[test]
    fn host_list_table() {
        let host = |id: &str, liveness| HostView {
            host_id: id.into(),
            inventory: Inventory {
                hostname: format!("{id}.lab"),
                cpu_cores: 16,
                memory_bytes: 64 << 30,
                ..Inventory::default()
            },
            liveness,
            maintenance: id == "host-2",
        };
        let hosts = vec![
            host("host-1", Liveness::Ready),
            host("host-2", Liveness::Unreachable),
        ];
        expect![[r#"
            ┌────────┬──────────────────────────┬────────────┬──────┬──────────┐
            │ HOST   ┆ STATE                    ┆ HOSTNAME   ┆ CPUS ┆ MEMORY   │
            ╞════════╪══════════════════════════╪════════════╪══════╪══════════╡
            │ host-1 ┆ Ready                    ┆ host-1.lab ┆ 16   ┆ 64.0 GiB │
            │ host-2 ┆ Unreachable, maintenance ┆ host-2.lab ┆ 16   ┆ 64.0 GiB │
            └────────┴──────────────────────────┴────────────┴──────┴──────────┘"#]]
        .assert_eq(&render(&ApiResponse::Hosts(hosts), Format::Table));
    }

    fn vm() -> VmView {
        VmView {
            spec: qvdc_transport::protocol::VmSpec {
                id: "req-7f3a".into(),
                name: "web".into(),
                vcpus: 2,
                memory_bytes: 512 << 20,
                disks: vec![qvdc_transport::protocol::VmDisk {
                    pool: "shared".into(),
                    volume: "web.qcow2".into(),
                    format: qvdc_transport::protocol::VolumeFormat::Qcow2,
                }],
                nics: Vec::new(),
            },
            host: "host-2".into(),
            managed: true,
            desired: qvdc_transport::protocol::DesiredPower::Running,
            power: qvdc_transport::protocol::PowerState::ShutOff,
            reason: "destroyed".into(),
            error: Some("start-vm failed: Cannot access storage file".into()),
        }
    }

    #[test]
    fn vm_views() {
        expect![[r#"
            vm:      web
            id:      req-7f3a
            host:    host-2
            desired: running
            power:   shut off (destroyed)
            vcpus:   2
            memory:  512.0 MiB
            disks:   shared/web.qcow2 (qcow2)
            error:   start-vm failed: Cannot access storage file"#]]
        .assert_eq(&render(&ApiResponse::Vm(vm()), Format::Table));
        expect![[r#"
            ┌─────┬────────┬─────────┬──────────┬───────┬───────────┬─────────────────────────────────────────────┐
            │ VM  ┆ HOST   ┆ DESIRED ┆ POWER    ┆ VCPUS ┆ MEMORY    ┆ ERROR                                       │
            ╞═════╪════════╪═════════╪══════════╪═══════╪═══════════╪═════════════════════════════════════════════╡
            │ web ┆ host-2 ┆ running ┆ shut off ┆ 2     ┆ 512.0 MiB ┆ start-vm failed: Cannot access storage file │
            └─────┴────────┴─────────┴──────────┴───────┴───────────┴─────────────────────────────────────────────┘"#]].assert_eq(&render(&ApiResponse::Vms(vec![vm()]), Format::Table));
        expect![[r#"
            {
              "desired": "running",
              "error": "start-vm failed: Cannot access storage file",
              "host": "host-2",
              "managed": true,
              "power": "shut_off",
              "reason": "destroyed",
              "spec": {
                "disks": [
                  {
                    "format": "qcow2",
                    "pool": "shared",
                    "volume": "web.qcow2"
                  }
                ],
                "id": "req-7f3a",
                "memory_bytes": 536870912,
                "name": "web",
                "nics": [],
                "vcpus": 2
              }
            }"#]]
        .assert_eq(&render(&ApiResponse::Vm(vm()), Format::Json));
    }

    #[test]
    fn network_and_volume_tables() {
        let network = NetworkView {
            spec: qvdc_transport::protocol::NetworkSpec {
                name: "dmz".into(),
                bridge: "br-dmz".into(),
                vlan: Some(42),
                uplink: Some("eth0".into()),
            },
            hosts: vec![qvdc_transport::protocol::NetworkHostView {
                host_id: "host-1".into(),
                up: false,
                error: Some("VLAN port eth0.42 does not exist".into()),
            }],
        };
        expect![[r#"
            ┌─────────┬────────┬────────────┬────────┬───────┬──────────────────────────────────┐
            │ NETWORK ┆ BRIDGE ┆ VLAN       ┆ HOST   ┆ UP    ┆ ERROR                            │
            ╞═════════╪════════╪════════════╪════════╪═══════╪══════════════════════════════════╡
            │ dmz     ┆ br-dmz ┆ 42 on eth0 ┆ host-1 ┆ false ┆ VLAN port eth0.42 does not exist │
            └─────────┴────────┴────────────┴────────┴───────┴──────────────────────────────────┘"#]].assert_eq(&render(&ApiResponse::Networks(vec![network]), Format::Table));
        let volume = VolumeView {
            host: None,
            name: "web.qcow2".into(),
            format: qvdc_transport::protocol::VolumeFormat::Qcow2,
            size_bytes: 20 << 30,
            ready: true,
            error: None,
        };
        expect![[r#"
            ┌───────────┬────────┬──────────┬───────┬───────┐
            │ VOLUME    ┆ FORMAT ┆ SIZE     ┆ READY ┆ ERROR │
            ╞═══════════╪════════╪══════════╪═══════╪═══════╡
            │ web.qcow2 ┆ qcow2  ┆ 20.0 GiB ┆ true  ┆       │
            └───────────┴────────┴──────────┴───────┴───────┘"#]]
        .assert_eq(&render(&ApiResponse::Volumes(vec![volume]), Format::Table));
    }

    #[test]
    fn cluster_status_table() {
        let member = |id: u64| MemberStatus {
            node_id: id,
            addr: format!("10.0.0.{id}:7101"),
            voter: true,
        };
        let status = ClusterStatus {
            node_id: 2,
            leader: Some(1),
            term: 4,
            last_log_index: Some(17),
            last_applied: Some(17),
            members: vec![member(1), member(2), member(3)],
            snapshot_index: Some(12),
            purged_index: Some(2),
            state_digest: 0x1234_5678_9abc_def0,
        };
        expect![[r#"
            leader: 1   term: 4   answered by node 2
            log: applied 17, snapshot 12, purged 2   state digest: 123456789abcdef0
            ┌──────┬───────────────┬───────┬──────────┐
            │ NODE ┆ ADDRESS       ┆ VOTER ┆ ROLE     │
            ╞══════╪═══════════════╪═══════╪══════════╡
            │ 1    ┆ 10.0.0.1:7101 ┆ true  ┆ leader   │
            │ 2    ┆ 10.0.0.2:7101 ┆ true  ┆ follower │
            │ 3    ┆ 10.0.0.3:7101 ┆ true  ┆ follower │
            └──────┴───────────────┴───────┴──────────┘"#]]
        .assert_eq(&render(&ApiResponse::ClusterStatus(status), Format::Table));
    }

    #[test]
    fn pool_json_is_what_scripts_read() {
        let json: serde_json::Value =
            serde_json::from_str(&render(&ApiResponse::Pool(pool()), Format::Json)).unwrap();
        assert_eq!(json["health"], "DEGRADED");
        assert_eq!(json["failed_hosts"][0], "host-3");
        assert_eq!(json["hosts"][0]["capacity"]["total_bytes"], 100u64 << 30);
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn names_sort_as_people_read_them() {
        let mut names = vec![
            "host-10", "host-2", "host-1", "host-02", "db", "host-b", "host-a10", "host-a9", "10",
            "9", "",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "", "9", "10", "db", "host-1", "host-02", "host-2", "host-10", "host-a9",
                "host-a10", "host-b"
            ]
        );
        assert_eq!(natural_cmp("v01", "v1"), "v01".cmp("v1"), "a total order");
    }

    #[test]
    fn lists_are_rendered_in_natural_order() {
        let mut ten = pool();
        ten.spec.name = "p10".into();
        let mut two = pool();
        two.spec.name = "p2".into();
        let json = render(&ApiResponse::Pools(vec![ten, two]), Format::Json);
        let names: Vec<String> = serde_json::from_str::<Vec<PoolView>>(&json)
            .unwrap()
            .into_iter()
            .map(|p| p.spec.name)
            .collect();
        assert_eq!(names, ["p2", "p10"]);
    }

    #[test]
    fn an_unmanaged_domain_is_shown_as_such() {
        let report = qvdc_transport::protocol::VmReport {
            name: "legacy-db".into(),
            id: None,
            power: PowerState::Running,
            reason: "booted".into(),
            vcpus: 4,
            memory_bytes: 2 << 30,
            uuid: "u-1".into(),
            disks: Vec::new(),
        };
        let vm = VmView::unmanaged("host-3", &report);
        let table = render(&ApiResponse::Vms(vec![vm.clone()]), Format::Table);
        let row = table.lines().find(|l| l.contains("legacy-db")).unwrap();
        assert!(
            row.contains("host-3") && row.contains("unmanaged") && row.contains("2.0 GiB"),
            "{row}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&ApiResponse::Vm(vm), Format::Json)).unwrap();
        assert_eq!(json["managed"], false);
        assert_eq!(json["power"], "running");
    }
}
