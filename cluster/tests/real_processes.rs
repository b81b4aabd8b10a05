//! The walking skeleton with real processes: three `qvdc server`s and three `qhost`s on
//! loopback, real QUIC with mutual TLS, real bind mounts, driven through the `qvctl` binary.
//! Needs root (mount(2)); with QVDC_REQUIRE_REAL=1 a missing privilege fails the test.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use qvdc_transport::tls::{self, Role};
use serde_json::Value;

mod support;

use support::QVDC;
const QVCTL: &str = env!("CARGO_BIN_EXE_qvctl");

fn qhost() -> PathBuf {
    let path = Path::new(QVDC).with_file_name("qhost");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

fn may_mount() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root && std::env::var("QVDC_REQUIRE_REAL").is_ok_and(|v| v == "1") {
        panic!("QVDC_REQUIRE_REAL=1 but this test needs root to mount");
    }
    root
}

/// Three nodes and three hosts; hosts are killed and their mounts removed when dropped.
struct Cluster {
    nodes: support::Nodes,
    hosts: Vec<Child>,
    /// The libvirt connection of each host.
    libvirt: [&'static str; 3],
    /// Each host's network namespace, where it makes its bridges.
    netns: [String; 3],
}

impl Cluster {
    fn certs(&self) -> PathBuf {
        self.nodes.certs()
    }

    fn start() -> Self {
        Self::start_with(["test:///default"; 3])
    }

    fn start_with(libvirt: [&'static str; 3]) -> Self {
        let hosts = [
            (Role::Host, "host-1"),
            (Role::Host, "host-2"),
            (Role::Host, "host-3"),
        ];
        let nodes = support::Nodes::start(
            &[hosts[0], hosts[1], hosts[2], (Role::Operator, "admin")],
            true,
        );
        // Named after the cluster's unique temporary directory.
        let unique = nodes
            .dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace('.', "");
        let netns = [1, 2, 3].map(|i| format!("qvdc-{unique}-{i}"));
        for ns in &netns {
            let made = Command::new("ip")
                .args(["netns", "add", ns])
                .status()
                .unwrap();
            assert!(made.success(), "ip netns add {ns}");
            let uplink = [
                "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
            ];
            assert!(Command::new("ip").args(uplink).status().unwrap().success());
        }
        let mut cluster = Self {
            nodes,
            hosts: Vec::new(),
            libvirt,
            netns,
        };
        // host-3 cannot mount anything: its pool root is a plain file.
        std::fs::create_dir_all(cluster.dir().join("host-3")).unwrap();
        std::fs::write(cluster.dir().join("host-3/pools"), b"not a directory").unwrap();
        for i in 1..=3 {
            let child = cluster.spawn_host(i);
            cluster.hosts.push(child);
        }
        cluster
    }

    fn dir(&self) -> &Path {
        self.nodes.dir.path()
    }

    fn addrs(&self) -> &[String] {
        &self.nodes.addrs
    }

    fn spawn_host(&self, i: usize) -> Child {
        let name = format!("host-{i}");
        let (stdout, stderr) = self.nodes.output(&name);
        Command::new(qhost())
            .args(["--host-id", &name, "--cluster", &self.addrs().join(",")])
            .args(["--data-dir", &self.dir().join(&name).display().to_string()])
            .args(["--libvirt", self.libvirt[i - 1]])
            .args(["--netns", &self.netns[i - 1]])
            .args(self.nodes.tls_args(&name))
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    /// Runs qvctl as `cert` against `addrs`.
    fn qvctl_as(&self, cert: &str, ca_dir: &Path, addrs: &[String], args: &[&str]) -> Output {
        Command::new(QVCTL)
            .env("QVDC_CLUSTER", addrs.join(","))
            .env("QVDC_CA_CERT", ca_dir.join("ca.crt"))
            .env("QVDC_CERT", ca_dir.join(format!("{cert}.crt")))
            .env("QVDC_KEY", ca_dir.join(format!("{cert}.key")))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        self.qvctl_json_at(self.addrs(), args)
    }

    /// `json` against the nodes at `addrs` only.
    fn qvctl_json_at(&self, addrs: &[String], args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["--output", "json", "--timeout-ms", "3000"]);
        let out = self.qvctl_as("admin", &self.certs(), addrs, &all);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    fn dump_logs(&self) {
        for entry in std::fs::read_dir(self.dir()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!(
                    "--- {}\n{}",
                    entry.path().display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.hosts {
            let _ = child.kill();
            let _ = child.wait();
        }
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir().display().to_string();
        for point in table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
        {
            let _ = Command::new("umount").args(["-l", point]).status();
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn eventually<T>(
    cluster: &Cluster,
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(value) = probe() {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.dump_logs();
    panic!("{what} did not happen within {limit:?}");
}

/// The pool view once every host has a fresh report and the two mountable hosts are healthy.
fn settled(view: Value) -> Option<Value> {
    let hosts = view["hosts"].as_array()?;
    let known = hosts.iter().all(|h| h["health"] != "UNKNOWN");
    (known && view["healthy_hosts"].as_array()?.len() == 2).then_some(view)
}

fn assert_aggregate(view: &Value) {
    assert_eq!(view["health"], "DEGRADED", "{view:#}");
    assert_eq!(
        view["healthy_hosts"],
        serde_json::json!(["host-1", "host-2"])
    );
    assert_eq!(view["failed_hosts"], serde_json::json!(["host-3"]));
    for host in &view["hosts"].as_array().unwrap()[..2] {
        assert_eq!(host["health"], "HEALTHY");
        assert_eq!(host["mounted"], true);
        assert!(host["capacity"]["total_bytes"].as_u64().unwrap() > 0);
        assert_eq!(host["volume_count"], 1, "the source holds one volume file");
    }
    let error = view["hosts"][2]["error"].as_str().unwrap();
    assert!(
        error.contains("Not a directory"),
        "host-3 error should carry the kernel's reason: {error}"
    );
}

#[test]
fn pool_flow_across_real_processes_survives_leader_kill_needs_root() {
    if !may_mount() {
        eprintln!("skipped: needs root to mount (set QVDC_REQUIRE_REAL=1 to make this a failure)");
        return;
    }
    let mut cluster = Cluster::start();
    let source = cluster.dir().join("shared");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("disk-a.qcow2"), b"x").unwrap();

    cluster.wait_hosts_ready();

    let created = Instant::now();
    let source_arg = source.display().to_string();
    let create = |request_id: &str| {
        let args = [
            "pool",
            "create",
            "shared",
            "--type",
            "dir",
            "--path",
            &source_arg,
        ];
        let mut args = args.to_vec();
        args.extend([
            "--hosts",
            "host-1,host-2,host-3",
            "--request-id",
            request_id,
        ]);
        cluster.qvctl_as("admin", &cluster.certs(), cluster.addrs(), &args)
    };
    let out = create("create-shared-1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let retried = create("create-shared-1");
    assert!(
        retried.status.success(),
        "a retry with the same request id gets the first answer"
    );
    let duplicate = create("create-shared-2");
    assert_eq!(
        duplicate.status.code(),
        Some(3),
        "a new request for the same pool is rejected"
    );
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));
    let view = eventually(&cluster, "pool aggregate", Duration::from_secs(30), || {
        cluster.json(&["pool", "show", "shared"]).and_then(settled)
    });
    eprintln!("pool create -> aggregate visible: {:?}", created.elapsed());
    assert_aggregate(&view);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let host1_mount = cluster
        .dir()
        .join("host-1/pools/shared")
        .display()
        .to_string();
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(host1_mount.as_str())),
        "host-1 really mounted the pool"
    );

    let status = cluster.json(&["cluster", "status"]).unwrap();
    let leader = status["leader"].as_u64().unwrap() as usize;
    let applied = status["last_applied"].as_u64().unwrap();
    cluster.nodes.kill(leader);
    let killed_at = Instant::now();
    // When a survivor first names a new leader (each asked in turn, without pause; one
    // qvctl run takes tens of milliseconds): the hosts' move to it is timed from there.
    let elected = loop {
        let named = (1..=3).filter(|&node| node != leader).any(|node| {
            let addr = vec![cluster.addrs()[node - 1].clone()];
            cluster
                .qvctl_json_at(&addr, &["cluster", "status", "--stale"])
                .and_then(|status| status["leader"].as_u64())
                .is_some_and(|named| named != leader as u64)
        });
        if named {
            break Instant::now();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "no new leader within 15 s"
        );
    };
    // Every host is alive throughout: the new leader must never show one Unreachable.
    let mut shown_lost = Vec::new();
    let after = eventually(
        &cluster,
        "aggregate from a new leader",
        Duration::from_secs(15),
        || {
            if let Some(hosts) = cluster.json(&["host", "list"]) {
                let lost = hosts.as_array().into_iter().flatten();
                shown_lost.extend(
                    lost.filter(|h| h["liveness"] == "Unreachable")
                        .map(|h| (h["host_id"].clone(), killed_at.elapsed())),
                );
            }
            let view = cluster
                .json(&["pool", "show", "shared"])
                .and_then(settled)?;
            let status = cluster.json(&["cluster", "status"])?;
            (status["leader"].as_u64() != Some(leader as u64)).then_some(view)
        },
    );
    assert!(
        shown_lost.is_empty(),
        "live hosts shown Unreachable after the leader kill: {shown_lost:?}"
    );
    eprintln!(
        "leader kill -9 -> new leader seen after {:?}; same aggregate from node {} after {:?} \
         ({:?} after the new leader was seen)",
        elected - killed_at,
        cluster.json(&["cluster", "status"]).unwrap()["leader"],
        killed_at.elapsed(),
        elected.elapsed()
    );
    assert_aggregate(&after);

    cluster.nodes.restart(leader);
    let only_it = vec![cluster.addrs()[leader - 1].clone()];
    eventually(
        &cluster,
        "restarted node rejoins",
        Duration::from_secs(20),
        || {
            let out = cluster.qvctl_as(
                "admin",
                &cluster.certs(),
                &only_it,
                &["cluster", "status", "-o", "json", "--timeout-ms", "2000"],
            );
            let status: Value = serde_json::from_slice(&out.stdout).ok()?;
            let caught_up = status["last_applied"].as_u64()? >= applied;
            (status["leader"].as_u64().is_some() && status["node_id"] == leader as u64 && caught_up)
                .then_some(())
        },
    );

    check_certificates_are_enforced(&cluster);
}

impl Cluster {
    /// Starts `qvctl args` as the operator without waiting for it.
    fn qvctl_spawn(&self, args: &[&str]) -> Child {
        Command::new(QVCTL)
            .env("QVDC_CLUSTER", self.addrs().join(","))
            .env("QVDC_CA_CERT", self.certs().join("ca.crt"))
            .env("QVDC_CERT", self.certs().join("admin.crt"))
            .env("QVDC_KEY", self.certs().join("admin.key"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn qvctl(&self, args: &[&str]) -> Output {
        self.qvctl_as("admin", &self.certs(), self.addrs(), args)
    }

    /// Runs qvctl as the operator and asserts that it succeeded.
    fn ok(&self, args: &[&str]) -> Output {
        let out = self.qvctl(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        out
    }

    /// A cluster whose three hosts are Ready and have pool `shared` (see
    /// [`Cluster::wait_ready_with_pool`]), or `None` when this process may not mount.
    fn with_pool_needs_root() -> Option<(Self, PathBuf)> {
        if !may_mount() {
            eprintln!(
                "skipped: needs root to mount (set QVDC_REQUIRE_REAL=1 to make this a failure)"
            );
            return None;
        }
        let cluster = Self::start();
        let source = cluster.wait_ready_with_pool();
        Some((cluster, source))
    }

    fn wait_hosts_ready(&self) {
        eventually(self, "three hosts Ready", Duration::from_secs(30), || {
            let hosts = self.json(&["host", "list"])?;
            let hosts = hosts.as_array()?;
            (hosts.len() == 3 && hosts.iter().all(|h| h["liveness"] == "Ready")).then_some(())
        });
    }

    fn wait_ready_with_pool(&self) -> PathBuf {
        let source = self.dir().join("shared");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("disk-a.qcow2"), b"x").unwrap();
        self.wait_hosts_ready();
        let path = source.display().to_string();
        let out = self.qvctl(&[
            "pool",
            "create",
            "shared",
            "--path",
            &path,
            "--hosts",
            "host-1,host-2,host-3",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eventually(self, "pool aggregate", Duration::from_secs(30), || {
            self.json(&["pool", "show", "shared"]).and_then(settled)
        });
        source
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn vm_flow_across_real_processes_needs_root() {
    if !may_mount() {
        eprintln!("skipped: needs root to mount (set QVDC_REQUIRE_REAL=1 to make this a failure)");
        return;
    }
    let mut cluster = Cluster::start();
    cluster.wait_ready_with_pool();
    // A VM's disk must be a volume of its pool.
    let out = cluster.qvctl(&[
        "vm",
        "create",
        "web",
        "--memory",
        "64M",
        "--disk",
        "shared/disk-a.qcow2",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("pool shared has no volume \"disk-a.qcow2\""),
        "{}",
        text(&out)
    );
    let out = cluster.qvctl(&[
        "volume",
        "create",
        "shared",
        "web-root.qcow2",
        "--size",
        "64M",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Placed where the pool is healthy: host-3 cannot mount it.
    let started = Instant::now();
    let out = cluster.qvctl(&[
        "vm",
        "create",
        "web",
        "--vcpus",
        "1",
        "--memory",
        "64M",
        "--disk",
        "shared/web-root.qcow2",
        "--start",
        "--wait",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!(
        "vm create --start --wait -> running: {:?}",
        started.elapsed()
    );
    assert!(
        text(&out).contains("web: running on host-1"),
        "{}",
        text(&out)
    );
    let web = cluster.json(&["vm", "show", "web"]).unwrap();
    assert_eq!(
        (&web["host"], &web["power"], &web["desired"]),
        (
            &Value::from("host-1"),
            &Value::from("running"),
            &Value::from("running")
        ),
        "{web:#}"
    );

    // Nothing fits: every host says why.
    let out = cluster.qvctl(&[
        "vm", "create", "huge", "--memory", "1T", "--disk", "shared/x",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let why = text(&out);
    assert!(
        why.contains("host-3: pool shared is ERROR here") && why.contains("MiB free"),
        "{why}"
    );

    let out = cluster.qvctl(&["vm", "stop", "web", "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("web: shut off on host-1"),
        "{}",
        text(&out)
    );

    // The leader dies while a create is being followed: it still completes, once.
    let status = cluster.json(&["cluster", "status"]).unwrap();
    let leader = status["leader"].as_u64().unwrap() as usize;
    let follow = cluster.qvctl_spawn(&[
        "vm",
        "create",
        "db",
        "--memory",
        "64M",
        "--start",
        "--wait",
        "--request-id",
        "create-db",
        "--timeout-ms",
        "20000",
    ]);
    std::thread::sleep(Duration::from_millis(150));
    cluster.nodes.kill(leader);
    let out = follow.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let retried = cluster.qvctl(&[
        "vm",
        "create",
        "db",
        "--memory",
        "64M",
        "--start",
        "--request-id",
        "create-db",
    ]);
    assert!(
        retried.status.success(),
        "a retry gets the first answer: {}",
        text(&retried)
    );
    let vms = cluster.json(&["vm", "list"]).unwrap();
    let names: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["managed"] == true) // the test driver's own `test` domains are not
        .map(|v| v["spec"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "web"]);
    let db = cluster.json(&["vm", "show", "db"]).unwrap();
    assert_eq!(db["power"], "running", "{db:#}");

    // And while a pool create is being followed.
    let status = cluster.json(&["cluster", "status"]).unwrap();
    let leader_now = status["leader"].as_u64().unwrap() as usize;
    cluster.nodes.restart(leader);
    let other = cluster.dir().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let other_path = other.display().to_string();
    let follow = cluster.qvctl_spawn(&[
        "pool",
        "create",
        "other",
        "--path",
        &other_path,
        "--hosts",
        "host-1,host-2",
        "--wait",
        "--request-id",
        "create-other",
        "--timeout-ms",
        "20000",
    ]);
    std::thread::sleep(Duration::from_millis(150));
    cluster.nodes.kill(leader_now);
    let out = follow.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("other on host-2: HEALTHY"),
        "{}",
        text(&out)
    );
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = cluster
        .dir()
        .join("host-1/pools/other")
        .display()
        .to_string();
    let mounts = table
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(mount.as_str()))
        .count();
    assert_eq!(mounts, 1, "mounted once, not once per attempt");
    let leader = leader_now;

    let out = cluster.qvctl(&["vm", "delete", "web", "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cluster.qvctl(&["vm", "show", "web"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("no VM named"), "{}", text(&out));
    cluster.nodes.restart(leader);
}

/// `vm create --dry-run` names the host it would use and, for every other host, why not:
/// here host-2 has too little free memory (a large VM is already placed there) and host-3
/// cannot mount the pool. Nothing is created.
#[test]
fn vm_create_dry_run_names_why_each_host_cannot_run_it_needs_root() {
    let Some((cluster, _)) = Cluster::with_pool_needs_root() else {
        return;
    };
    let ok = |args: &[&str]| cluster.ok(args);
    ok(&[
        "volume",
        "create",
        "shared",
        "web-root.qcow2",
        "--size",
        "64M",
    ]);
    let host2 = cluster.json(&["host", "show", "host-2"]).unwrap();
    let total_mib = host2["host"]["inventory"]["memory_bytes"].as_u64().unwrap() >> 20;
    let big = format!("{}M", total_mib - 1024);
    ok(&["vm", "create", "big", "--memory", &big, "--host", "host-2"]);

    let dry_run = [
        "vm",
        "create",
        "web",
        "--memory",
        "2G",
        "--disk",
        "shared/web-root.qcow2",
        "--dry-run",
    ];
    let out = ok(&dry_run);
    let shown = text(&out);
    eprintln!("{shown}");
    assert!(shown.contains("would be placed on host-1"), "{shown}");
    let row = |host: &str| {
        shown
            .lines()
            .find(|line| line.contains(host) && line.contains("no"))
            .unwrap_or_else(|| panic!("no refusal for {host}: {shown}"))
            .to_owned()
    };
    assert!(
        row("host-2").contains("needs 2048 MiB of memory"),
        "{shown}"
    );
    assert!(
        row("host-3").contains("pool shared is ERROR here"),
        "{shown}"
    );

    let mut as_json = dry_run.to_vec();
    as_json.extend(["--output", "json"]);
    let placement: serde_json::Value = serde_json::from_slice(&ok(&as_json).stdout).unwrap();
    assert_eq!(placement["chosen"], "host-1", "{placement:#}");
    assert_eq!(placement["hosts"][1]["fits"], false, "{placement:#}");

    // Asking for a host that cannot take it, and for a VM the cluster would refuse.
    let mut on_host2 = dry_run.to_vec();
    on_host2.extend(["--host", "host-2"]);
    let shown = text(&ok(&on_host2));
    assert!(
        shown.contains(
            "placed on host-2 as asked, although placement would not pick it (needs 2048 MiB"
        ),
        "{shown}"
    );
    let mut taken = dry_run.to_vec();
    taken[2] = "big";
    let shown = text(&ok(&taken));
    assert!(
        shown.contains("would be refused") && shown.contains("already exists"),
        "{shown}"
    );

    let vms = cluster.json(&["vm", "list"]).unwrap();
    let managed: Vec<&Value> = vms
        .as_array()
        .unwrap()
        .iter()
        .filter(|vm| vm["managed"] == true)
        .collect();
    assert_eq!(managed.len(), 1, "only big exists: {vms:#}");
}

/// A local pool: each host has its own storage under it (here, on one machine, the hosts'
/// storages are one directory, but qvdc treats them as separate). A volume is made on one
/// host, a VM on it is placed on that host only, and while that host is gone the VM says why
/// it cannot run elsewhere.
#[test]
fn a_vm_on_a_local_volume_stays_on_the_volume_s_host_needs_root() {
    if !may_mount() {
        eprintln!("skipped: needs root (set QVDC_REQUIRE_REAL=1 to make this a failure)");
        return;
    }
    let mut cluster = Cluster::start();
    cluster.wait_hosts_ready();
    let storage = cluster.dir().join("local");
    std::fs::create_dir_all(&storage).unwrap();
    let path = storage.display().to_string();
    cluster.ok(&[
        "pool",
        "create",
        "local",
        "--scope",
        "local",
        "--path",
        &path,
        "--hosts",
        "host-1,host-2",
    ]);
    let pool = eventually(
        &cluster,
        "pool local mounted",
        Duration::from_secs(30),
        || cluster.json(&["pool", "show", "local"]).and_then(settled),
    );
    assert_eq!(pool["spec"]["scope"], "local", "{pool:#}");
    let per_host: u64 = pool["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["capacity"]["total_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(
        pool["capacity"]["total_bytes"].as_u64(),
        Some(per_host),
        "a local pool has each host's own storage: {pool:#}"
    );

    let make = [
        "volume", "create", "local", "db.raw", "--size", "16M", "--format", "raw",
    ];
    let refused = text(&cluster.qvctl(&make));
    assert!(
        refused.contains("pool local is local: name the host")
            && refused.contains("host-1, host-2"),
        "{refused}"
    );
    let mut on_host2 = make.to_vec();
    on_host2.extend(["--host", "host-2"]);
    cluster.ok(&on_host2);
    eventually(
        &cluster,
        "volume ready on host-2",
        Duration::from_secs(15),
        || {
            let volumes = cluster.json(&["volume", "list", "local"])?;
            (volumes[0]["ready"] == true && volumes[0]["host"] == "host-2").then_some(())
        },
    );

    let vm = [
        "vm",
        "create",
        "db",
        "--memory",
        "64M",
        "--disk",
        "local/db.raw:raw",
    ];
    let mut dry_run = vm.to_vec();
    dry_run.push("--dry-run");
    let shown = text(&cluster.ok(&dry_run));
    assert!(shown.contains("would be placed on host-2"), "{shown}");
    for host in ["host-1", "host-3"] {
        assert!(
            shown.lines().any(|l| l.contains(host)
                && l.contains(
                    "disk local/db.raw is on host-2's own storage (pool local is local)"
                )),
            "{host}: {shown}"
        );
    }
    let mut pinned_elsewhere = vm.to_vec();
    pinned_elsewhere.extend(["--host", "host-1"]);
    let refused = text(&cluster.qvctl(&pinned_elsewhere));
    assert!(
        refused.contains("the VM can only run on host-2"),
        "{refused}"
    );
    let mut start = vm.to_vec();
    start.extend(["--start", "--wait"]);
    cluster.ok(&start);
    let shown = cluster.json(&["vm", "show", "db"]).unwrap();
    assert_eq!(shown["host"], "host-2", "{shown:#}");

    // host-2 goes away: the VM cannot run elsewhere, and says why.
    let mut agent = cluster.hosts.remove(1);
    agent.kill().unwrap();
    agent.wait().unwrap();
    let why = eventually(&cluster, "the VM explains", Duration::from_secs(15), || {
        let vm = cluster.json(&["vm", "show", "db"])?;
        vm["error"].as_str().map(str::to_owned)
    });
    assert!(
        why.contains("cannot run elsewhere: disk local/db.raw is on host-2's own storage"),
        "{why}"
    );
    cluster.hosts.insert(1, cluster.spawn_host(2));
    eventually(&cluster, "the VM back", Duration::from_secs(30), || {
        let vm = cluster.json(&["vm", "show", "db"])?;
        (vm["power"] == "running" && vm["error"].is_null()).then_some(())
    });
}

/// Domains a host had before qvdc (here the one libvirt's test driver starts with, `test`,
/// on every host) are listed with their host, power, vCPUs and memory, marked unmanaged,
/// and left alone: they are still running heartbeats later.
#[test]
fn domains_qvdc_did_not_define_are_listed_as_unmanaged_needs_root() {
    if !may_mount() {
        eprintln!("skipped: needs root (set QVDC_REQUIRE_REAL=1 to make this a failure)");
        return;
    }
    let cluster = Cluster::start();
    let unmanaged = |cluster: &Cluster| {
        let vms = cluster.json(&["vm", "list"])?;
        let found: Vec<Value> = vms
            .as_array()?
            .iter()
            .filter(|vm| vm["managed"] == false && vm["spec"]["name"] == "test")
            .cloned()
            .collect();
        (found.len() == 3).then_some(found)
    };
    let found = eventually(
        &cluster,
        "three unmanaged domains",
        Duration::from_secs(30),
        || unmanaged(&cluster),
    );
    let hosts: Vec<&str> = found
        .iter()
        .map(|vm| vm["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["host-1", "host-2", "host-3"]);
    for vm in &found {
        assert_eq!(vm["power"], "running", "{vm:#}");
        assert!(vm["spec"]["vcpus"].as_u64().unwrap() > 0, "{vm:#}");
        assert!(vm["spec"]["memory_bytes"].as_u64().unwrap() > 0, "{vm:#}");
    }
    let table = text(&cluster.qvctl(&["vm", "list"]));
    assert!(
        table
            .lines()
            .any(|l| l.contains("test") && l.contains("unmanaged")),
        "{table}"
    );
    // Three hosts have one: `vm show` asks which; HOST/NAME names one.
    let out = cluster.qvctl(&["vm", "show", "test"]);
    assert!(
        text(&out).contains("name one of host-1/test, host-2/test, host-3/test"),
        "{}",
        text(&out)
    );
    let one = cluster.json(&["vm", "show", "host-2/test"]).unwrap();
    assert_eq!(
        (one["host"].as_str(), one["managed"].as_bool()),
        (Some("host-2"), Some(false))
    );
    let host = cluster.json(&["host", "show", "host-1"]).unwrap();
    assert!(
        host["vms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|vm| vm["managed"] == false),
        "{host:#}"
    );
    // Left alone: a few heartbeats later all three still run.
    std::thread::sleep(Duration::from_secs(3));
    let later = unmanaged(&cluster).expect("still listed");
    assert!(
        later.iter().all(|vm| vm["power"] == "running"),
        "{later:#?}"
    );
}

#[test]
fn host_agents_killed_and_restarted_are_seen_and_given_their_config_again_needs_root() {
    if !may_mount() {
        eprintln!("skipped: needs root (set QVDC_REQUIRE_REAL=1 to make this a failure)");
        return;
    }
    let mut cluster = Cluster::start();
    cluster.wait_ready_with_pool();
    let ok = |cluster: &Cluster, args: &[&str]| {
        let out = cluster.qvctl(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    };
    ok(
        &cluster,
        &[
            "volume",
            "create",
            "shared",
            "web-root.qcow2",
            "--size",
            "64M",
        ],
    );
    // Maintenance keeps new VMs off a host.
    ok(&cluster, &["host", "maintenance", "enter", "host-1"]);
    ok(
        &cluster,
        &[
            "vm",
            "create",
            "web",
            "--memory",
            "64M",
            "--disk",
            "shared/web-root.qcow2",
            "--start",
            "--wait",
        ],
    );
    assert_eq!(
        cluster.json(&["vm", "show", "web"]).unwrap()["host"],
        "host-2"
    );
    let hosts = cluster.json(&["host", "list"]).unwrap();
    assert_eq!(hosts[0]["maintenance"], true, "{hosts:#}");
    ok(&cluster, &["host", "maintenance", "exit", "host-1"]);

    // host-2 dies: Unreachable, its pool report UNKNOWN and its VM's power unknown, within
    // the failure-detection time (3 s by default).
    let mut agent = cluster.hosts.remove(1);
    agent.kill().unwrap();
    agent.wait().unwrap();
    let killed = Instant::now();
    eventually(
        &cluster,
        "host-2 Unreachable",
        Duration::from_secs(10),
        || {
            let hosts = cluster.json(&["host", "list"])?;
            let pool = cluster.json(&["pool", "show", "shared"])?;
            let vm = cluster.json(&["vm", "show", "web"])?;
            (hosts[1]["liveness"] == "Unreachable"
                && pool["hosts"][1]["health"] == "UNKNOWN"
                && vm["power"] == "unknown")
                .then_some(())
        },
    );
    let detected = killed.elapsed();
    eprintln!("host agent killed -> Unreachable/UNKNOWN: {detected:?}");
    assert!(detected < Duration::from_secs(5), "{detected:?}");

    // It comes back with nothing (its test-driver domains died with it): the leader pushes
    // the pool and the VM again.
    let restarted = Instant::now();
    let agent = cluster.spawn_host(2);
    cluster.hosts.insert(1, agent);
    eventually(
        &cluster,
        "host-2 Ready with its VM running",
        Duration::from_secs(20),
        || {
            let hosts = cluster.json(&["host", "list"])?;
            let pool = cluster.json(&["pool", "show", "shared"])?;
            let vm = cluster.json(&["vm", "show", "web"])?;
            (hosts[1]["liveness"] == "Ready"
                && pool["hosts"][1]["health"] == "HEALTHY"
                && vm["power"] == "running")
                .then_some(())
        },
    );
    eprintln!(
        "host agent restarted -> Ready, pool HEALTHY, VM running again: {:?}",
        restarted.elapsed()
    );

    // Maintenance empties host-2. `--wait` answers once the moved VM's new host reports it
    // running, not as soon as the record moved it: right after a move the view has no
    // report from the new host yet, and the VM would show as unknown.
    let evacuating = Instant::now();
    ok(
        &cluster,
        &[
            "host",
            "maintenance",
            "enter",
            "host-2",
            "--wait",
            "--wait-timeout-ms",
            "60000",
        ],
    );
    let vm = cluster.json(&["vm", "show", "web"]).unwrap();
    assert!(
        vm["host"] != "host-2" && vm["power"] == "running",
        "`maintenance enter --wait` answered with the VM {} on {}",
        vm["power"],
        vm["host"]
    );
    eprintln!(
        "host-2 evacuated, its VM running on {}: {:?}",
        vm["host"],
        evacuating.elapsed()
    );
}

fn mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.display().to_string();
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.as_str()))
}

#[test]
fn storage_flow_assign_unassign_volumes_and_files_needs_root() {
    let Some((cluster, source)) = Cluster::with_pool_needs_root() else {
        return;
    };
    let ok = |args: &[&str]| cluster.ok(args);

    // host-3 cannot mount the pool: take it away, and the pool is whole again.
    ok(&["pool", "unassign", "shared", "--hosts", "host-3"]);
    eventually(
        &cluster,
        "pool HEALTHY without host-3",
        Duration::from_secs(15),
        || {
            let view = cluster.json(&["pool", "show", "shared"])?;
            (view["health"] == "HEALTHY" && view["hosts"].as_array()?.len() == 2).then_some(())
        },
    );
    ok(&["pool", "assign", "shared", "--hosts", "host-3"]);
    eventually(
        &cluster,
        "host-3 back in the pool",
        Duration::from_secs(15),
        || {
            let view = cluster
                .json(&["pool", "show", "shared"])
                .and_then(settled)?;
            (view["failed_hosts"] == serde_json::json!(["host-3"])).then_some(())
        },
    );

    // A volume, created once through a healthy host, then grown, listed and deleted.
    let started = Instant::now();
    ok(&["volume", "create", "shared", "web.qcow2", "--size", "64M"]);
    eventually(&cluster, "volume ready", Duration::from_secs(15), || {
        let volumes = cluster.json(&["volume", "list", "shared"])?;
        (volumes[0]["ready"] == true).then_some(())
    });
    eprintln!("volume create -> ready: {:?}", started.elapsed());
    let files = cluster.json(&["pool", "files", "shared"]).unwrap();
    assert_eq!(
        files["files"],
        serde_json::json!([
            { "name": "disk-a.qcow2", "format": "raw", "size_bytes": 1 },
            { "name": "web.qcow2", "format": "qcow2", "size_bytes": 64 << 20 },
        ]),
        "{files:#}"
    );
    ok(&["volume", "resize", "shared", "web.qcow2", "--size", "128M"]);
    eventually(&cluster, "volume grown", Duration::from_secs(15), || {
        let files = cluster.json(&["pool", "files", "shared", "--host", "host-2"])?;
        (files["files"][1]["size_bytes"] == 128 << 20).then_some(())
    });
    let out = cluster.qvctl(&["volume", "resize", "shared", "web.qcow2", "--size", "1M"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("can only grow"), "{}", text(&out));
    ok(&["volume", "delete", "shared", "web.qcow2"]);
    assert!(!source.join("web.qcow2").exists(), "the file is gone");
    assert_eq!(
        cluster.json(&["volume", "list", "shared"]).unwrap(),
        serde_json::json!([])
    );

    // Deleting the pool unmounts it everywhere and leaves its data.
    let host1 = cluster.dir().join("host-1/pools/shared");
    assert!(mounted(&host1));
    let out = ok(&[
        "pool",
        "delete",
        "shared",
        "--wait",
        "--wait-timeout-ms",
        "15000",
    ]);
    // --wait returned only once both hosts had unmounted it, saying so host by host.
    assert!(!mounted(&host1) && !mounted(&cluster.dir().join("host-2/pools/shared")));
    for host in ["host-1", "host-2"] {
        let line = format!("shared on {host}: unmounted");
        assert!(text(&out).contains(&line), "{}", text(&out));
    }
    assert!(source.join("disk-a.qcow2").exists());
}

#[test]
fn network_flow_bridges_on_hosts_and_vms_on_them_needs_root() {
    let Some((cluster, _)) = Cluster::with_pool_needs_root() else {
        return;
    };
    let ok = |args: &[&str]| cluster.ok(args);
    let bridge_on = |host: usize| {
        Command::new("ip")
            .args(["-n", &cluster.netns[host - 1], "link", "show", "br-prod"])
            .output()
            .unwrap()
            .status
            .success()
    };
    let started = Instant::now();
    ok(&[
        "network",
        "create",
        "prod",
        "--bridge",
        "br-prod",
        "--hosts",
        "host-1,host-2",
    ]);
    eventually(
        &cluster,
        "network up on both hosts",
        Duration::from_secs(15),
        || {
            let view = cluster.json(&["network", "show", "prod"])?;
            view["hosts"]
                .as_array()?
                .iter()
                .all(|h| h["up"] == true)
                .then_some(())
        },
    );
    eprintln!("network create -> up on its hosts: {:?}", started.elapsed());
    assert!(bridge_on(1) && bridge_on(2) && !bridge_on(3));

    // A tagged network: this kernel may have no VLAN support; then the host says so.
    ok(&[
        "network", "create", "dmz", "--bridge", "br-dmz", "--vlan", "42", "--uplink", "eth0",
        "--hosts", "host-1",
    ]);
    let dmz = eventually(&cluster, "dmz reported", Duration::from_secs(15), || {
        let view = cluster.json(&["network", "show", "dmz"])?;
        let host = view["hosts"][0].clone();
        let error = host["error"].as_str().unwrap_or_default();
        (host["up"] == true || error.contains("Unknown device type")).then_some(host)
    });
    eprintln!("tagged network on host-1: {dmz}");

    // VMs go only where their network is up.
    ok(&[
        "vm",
        "create",
        "web",
        "--memory",
        "64M",
        "--network",
        "prod",
        "--start",
        "--wait",
    ]);
    let web = cluster.json(&["vm", "show", "web"]).unwrap();
    assert!(
        web["host"] == "host-1" || web["host"] == "host-2",
        "{web:#}"
    );
    let out = cluster.qvctl(&["network", "delete", "prod"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("is attached to network prod"),
        "{}",
        text(&out)
    );
    ok(&["vm", "delete", "web", "--wait"]);

    // Unassigned hosts remove the bridge; a deleted network leaves none behind.
    ok(&["network", "unassign", "prod", "--hosts", "host-2"]);
    eventually(
        &cluster,
        "bridge gone from host-2",
        Duration::from_secs(15),
        || (!bridge_on(2)).then_some(()),
    );
    ok(&["network", "delete", "prod"]);
    eventually(
        &cluster,
        "bridge gone from host-1",
        Duration::from_secs(15),
        || (!bridge_on(1)).then_some(()),
    );
}

/// Whether libvirtd with KVM is here; under QVDC_REQUIRE_REAL=1 it must be.
fn kvm() -> bool {
    let ok = Path::new("/dev/kvm").exists()
        && Command::new("virsh")
            .args(["-c", "qemu:///system", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
    let required = std::env::var("QVDC_REQUIRE_REAL").is_ok_and(|v| v == "1");
    assert!(
        ok || !required,
        "QVDC_REQUIRE_REAL=1 but libvirtd with KVM is not usable; run scripts/setup.sh"
    );
    ok
}

/// Removes a domain from the real libvirt when dropped, so a failed test leaves none.
struct Forget(String);

impl Drop for Forget {
    fn drop(&mut self) {
        for verb in ["destroy", "undefine"] {
            let _ = virsh(&[verb, &self.0]);
        }
    }
}

/// `virsh` on qemu:///system: its output when it succeeds.
fn virsh(args: &[&str]) -> Option<String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A domain defined with `virsh` while host-1's agent is down, its disk a file in the pool:
/// listed as unmanaged as soon as the agent is back, adopted (its disk a volume), driven
/// across a leader kill, then released with its guest still running.
#[test]
fn a_domain_defined_with_virsh_is_adopted_driven_and_released_needs_root() {
    if !may_mount() || !kvm() {
        eprintln!("skipped: needs root and libvirtd with KVM");
        return;
    }
    let mut cluster = Cluster::start_with(["qemu:///system", "test:///default", "test:///default"]);
    let source = cluster.wait_ready_with_pool();
    let name = format!("qvdc-legacy-{}", std::process::id());
    let _forget = Forget(name.clone());
    let image = source.join("legacy.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("64M")
        .status()
        .unwrap();
    assert!(made.success(), "qemu-img create");

    // Defined and started while host-1's agent is away.
    let mut agent = cluster.hosts.remove(0);
    agent.kill().unwrap();
    agent.wait().unwrap();
    let disk = cluster.dir().join("host-1/pools/shared/legacy.qcow2");
    let xml = format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
        disk.display()
    );
    let xml_file = cluster.dir().join("legacy.xml");
    std::fs::write(&xml_file, xml).unwrap();
    virsh(&["define", &xml_file.display().to_string()]).expect("virsh define");
    virsh(&["start", &name]).expect("virsh start");
    let uuid = virsh(&["domuuid", &name]).unwrap();
    cluster.hosts.insert(0, cluster.spawn_host(1));
    let restarted = Instant::now();
    eventually(
        &cluster,
        "host-1 Ready again",
        Duration::from_secs(30),
        || {
            let host = cluster.json(&["host", "show", "host-1"])?;
            (host["host"]["liveness"] == "Ready").then_some(())
        },
    );
    let ready = restarted.elapsed();
    // Its registration carries the domain: listed within one heartbeat of being Ready.
    let listed = eventually(
        &cluster,
        "listed as unmanaged",
        Duration::from_secs(1),
        || {
            let vm = cluster.json(&["vm", "show", &format!("host-1/{name}")])?;
            (vm["managed"] == false).then_some(vm)
        },
    );
    eprintln!(
        "agent restart -> Ready {ready:?} -> listed as unmanaged {:?}",
        restarted.elapsed()
    );
    assert_eq!(listed["power"], "running", "{listed:#}");
    assert_eq!(
        listed["spec"]["disks"][0]["volume"], "legacy.qcow2",
        "{listed:#}"
    );

    let adopted = Instant::now();
    cluster.ok(&["vm", "adopt", &format!("host-1/{name}")]);
    eventually(&cluster, "adopted", Duration::from_secs(15), || {
        let vm = cluster.json(&["vm", "show", &name])?;
        let done = vm["managed"] == true
            && !vm["reason"].as_str()?.starts_with("being adopted")
            && vm["error"].is_null();
        done.then_some(())
    });
    eprintln!(
        "vm adopt -> id recorded by the host: {:?}",
        adopted.elapsed()
    );
    let namespace = "https://qvdc.dev/xmlns/vm/1";
    let metadata = virsh(&["metadata", &name, namespace]).expect("qvdc metadata");
    assert!(metadata.contains("<id>"), "{metadata}");
    assert_eq!(virsh(&["domuuid", &name]).unwrap(), uuid, "the same domain");
    let volumes = cluster.json(&["volume", "list", "shared"]).unwrap();
    let volume = volumes
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "legacy.qcow2")
        .unwrap_or_else(|| panic!("the disk is a volume: {volumes:#}"));
    assert_eq!(volume["size_bytes"], 64 << 20, "{volume:#}");
    assert!(
        source.join(".qvdc-volumes/legacy.qcow2").exists(),
        "adopting marked the disk file as qvdc's"
    );
    eventually(
        &cluster,
        "adopted volume ready",
        Duration::from_secs(15),
        || {
            let volumes = cluster.json(&["volume", "list", "shared"])?;
            let ready = volumes
                .as_array()?
                .iter()
                .any(|v| v["name"] == "legacy.qcow2" && v["ready"] == true);
            ready.then_some(())
        },
    );
    assert!(
        text(&cluster.qvctl(&["vm", "adopt", &format!("host-1/{name}")]))
            .contains("managed by qvdc already"),
        "adopting twice is refused"
    );

    // A leader kill in between loses nothing: the new leader drives the VM.
    let status = cluster.json(&["cluster", "status"]).unwrap();
    let leader = status["leader"].as_u64().unwrap() as usize;
    cluster.nodes.kill(leader);
    // The guest has no OS and ignores ACPI: destroyed at the (test's 3 s) deadline.
    cluster.ok(&["vm", "stop", &name, "--wait"]);
    assert_eq!(virsh(&["domstate", &name]).as_deref(), Some("shut off"));
    cluster.ok(&["vm", "start", &name, "--wait"]);
    assert_eq!(virsh(&["domstate", &name]).as_deref(), Some("running"));

    cluster.ok(&["vm", "release", &name]);
    let back = eventually(&cluster, "unmanaged again", Duration::from_secs(15), || {
        let vm = cluster.json(&["vm", "show", &format!("host-1/{name}")])?;
        (vm["managed"] == false).then_some(vm)
    });
    assert_eq!(back["power"], "running", "{back:#}");
    assert!(
        virsh(&["metadata", &name, namespace]).is_none(),
        "the qvdc metadata is gone"
    );
    let volumes = cluster.json(&["volume", "list", "shared"]).unwrap();
    assert!(
        !volumes.to_string().contains("legacy.qcow2"),
        "the released disk is not a volume: {volumes:#}"
    );
    // Left alone: some heartbeats later the guest still runs on the same disk.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(virsh(&["domstate", &name]).as_deref(), Some("running"));
    assert_eq!(virsh(&["domuuid", &name]).unwrap(), uuid);
    assert!(image.exists(), "its disk file stays");
    let marks = source.join(".qvdc-volumes/legacy.qcow2");
    assert!(!marks.exists(), "qvdc no longer claims the file");
    cluster.nodes.restart(leader);
}

#[test]
fn a_vm_runs_under_real_kvm_through_qvctl_needs_root() {
    if !may_mount() || !kvm() {
        eprintln!("skipped: needs root and libvirtd with KVM");
        return;
    }
    let cluster = Cluster::start_with(["qemu:///system", "test:///default", "test:///default"]);
    cluster.wait_ready_with_pool();
    let name = format!("qvdc-rp-{}", std::process::id());
    let _forget = Forget(name.clone());
    let ok = |args: &[&str]| cluster.ok(args);
    ok(&["volume", "create", "shared", "kvm.qcow2", "--size", "64M"]);
    eventually(&cluster, "volume ready", Duration::from_secs(15), || {
        let volumes = cluster.json(&["volume", "list", "shared"])?;
        (volumes[0]["ready"] == true).then_some(())
    });
    let started = Instant::now();
    ok(&[
        "vm",
        "create",
        &name,
        "--memory",
        "64M",
        "--disk",
        "shared/kvm.qcow2",
        "--host",
        "host-1",
        "--start",
        "--wait",
    ]);
    eprintln!(
        "vm create --start --wait under KVM -> running: {:?}",
        started.elapsed()
    );
    let state = Command::new("virsh")
        .args(["-c", "qemu:///system", "domstate", &name])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "running");
    let host = cluster.json(&["host", "show", "host-1"]).unwrap();
    assert_eq!(host["vms"][0]["power"], "running", "{host:#}");
    assert!(
        host["host"]["inventory"]["hypervisor"]
            .as_str()
            .unwrap()
            .contains("QEMU"),
        "{host:#}"
    );

    // The guest has no OS and ignores the request: destroyed at the (test's 3 s) deadline.
    let stopping = Instant::now();
    ok(&["vm", "stop", &name, "--wait"]);
    eprintln!(
        "vm stop --wait (guest ignores ACPI; 3 s deadline): {:?}",
        stopping.elapsed()
    );
    ok(&["vm", "start", &name, "--wait"]);
    ok(&["vm", "force-off", &name, "--wait"]);
    ok(&["vm", "delete", &name, "--wait"]);
    eventually(
        &cluster,
        "domain undefined",
        Duration::from_secs(15),
        || {
            let listed = Command::new("virsh")
                .args(["-c", "qemu:///system", "list", "--all", "--name"])
                .output()
                .ok()?;
            (!String::from_utf8_lossy(&listed.stdout).contains(&name)).then_some(())
        },
    );
}

fn check_certificates_are_enforced(cluster: &Cluster) {
    let foreign = cluster.dir().join("foreign");
    tls::init_ca(&foreign).unwrap();
    tls::issue(&foreign, Role::Operator, "mallory").unwrap();
    let out = cluster.qvctl_as(
        "mallory",
        &foreign,
        cluster.addrs(),
        &["cluster", "status", "--timeout-ms", "1500"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(5),
        "a foreign CA is refused at the handshake: {stderr}"
    );
    assert!(
        stderr.contains("certificate") || stderr.contains("Certificate"),
        "{stderr}"
    );

    let spec = [
        "pool", "create", "evil", "--path", "/tmp", "--hosts", "host-1",
    ];
    let out = cluster.qvctl_as("host-1", &cluster.certs(), cluster.addrs(), &spec);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a host certificate may not mutate: {stderr}"
    );
    assert!(
        stderr.contains("role host") && stderr.contains("operator"),
        "{stderr}"
    );
    assert!(
        cluster.json(&["pool", "show", "evil"]).is_none(),
        "nothing was created"
    );
}

/// One node on loopback, probed with raw requests under each kind of certificate.
#[test]
fn a_node_refuses_what_a_certificate_does_not_allow_and_oversized_frames() {
    use qvdc_transport::{
        codec::{self, FRAME_BYTES_MAX},
        protocol::{
            ApiRequest, ApiResponse, HostMessage, Inventory, PoolSource, PoolSpec, Request,
            Response,
        },
        quic,
        tls::Identity,
        Endpoint,
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    tls::init_ca(certs).unwrap();
    tls::issue(certs, Role::Server, "node-1").unwrap();
    tls::issue(certs, Role::Operator, "admin").unwrap();
    tls::issue(certs, Role::Host, "host-1").unwrap();
    let load = |name: &str| {
        let file = |ext: &str| certs.join(format!("{name}.{ext}"));
        Identity::load(&certs.join("ca.crt"), &file("crt"), &file("key")).unwrap()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &load("node-1"), true).unwrap();
        let addr = server.local_addr().unwrap();
        std::fs::create_dir_all(dir.path().join("node-1")).unwrap();
        let config = qvdc_cluster::NodeConfig {
            node_id: 1,
            initial_cluster: [(1, addr.to_string())].into(),
            join: false,
            storage: qvdc_cluster::Storage::Dir(dir.path().join("node-1")),
            timings: Default::default(),
            retention: Default::default(),
            clock: Default::default(),
        };
        let node = qvdc_cluster::Node::start(config, server).await.unwrap();
        let connect = |name: &str| {
            let endpoint =
                Endpoint::bind("127.0.0.1:0".parse().unwrap(), &load(name), false).unwrap();
            async move { endpoint.connect(addr).await.unwrap() }
        };
        let operator = connect("admin").await;
        let host = connect("host-1").await;

        // A frame announcing more than the limit is answered with a typed error, not read.
        let (mut send, mut recv) = operator.open_bi().await.unwrap();
        let length = u32::try_from(FRAME_BYTES_MAX + 1).unwrap();
        send.write_all(&length.to_be_bytes()).await.unwrap();
        // The node may refuse on the length alone and stop the stream before this is sent.
        let _ = send.write_all(&[0u8; 1024]).await;
        let _ = send.finish();
        let reply: Response = codec::read_frame(&mut recv).await.unwrap();
        let Response::Malformed { reason } = reply else {
            panic!("{reply:?}")
        };
        assert!(reason.contains("exceeds the limit"), "{reason}");

        let forbidden = |reply: Response, needle: &str| match reply {
            Response::Forbidden { reason } => {
                assert!(reason.contains(needle), "{reason} !~ {needle}")
            }
            other => panic!("expected Forbidden, got {other:?}"),
        };
        let reply = quic::call(&operator, &Request::Raft(vec![1, 2, 3]))
            .await
            .unwrap();
        forbidden(reply, "needs role server");
        let reply = quic::call(&host, &Request::Raft(vec![1, 2, 3]))
            .await
            .unwrap();
        forbidden(reply, "needs role server");
        let spec = PoolSpec {
            scope: Default::default(),
            name: "p".into(),
            source: PoolSource::Dir {
                path: "/srv".into(),
            },
        };
        let create = Request::Api(ApiRequest::PoolCreate {
            request_id: "r-1".into(),
            spec,
            hosts: vec!["host-1".into()],
        });
        forbidden(
            quic::call(&host, &create).await.unwrap(),
            "needs role operator",
        );
        let inventory = Inventory {
            hostname: "h".into(),
            cpu_cores: 1,
            memory_bytes: 1,
            ..Inventory::default()
        };
        let impostor = Request::Host(HostMessage::Register {
            host_id: "host-2".into(),
            inventory,
            vms: Vec::new(),
        });
        forbidden(
            quic::call(&host, &impostor).await.unwrap(),
            "cannot speak for host",
        );
        forbidden(
            quic::call(&operator, &impostor).await.unwrap(),
            "needs role host",
        );

        let reply: Response = quic::call(&operator, &Request::Api(ApiRequest::ClusterStatus))
            .await
            .unwrap();
        assert!(
            matches!(reply, Response::Api(Ok(ApiResponse::ClusterStatus(_)))),
            "still serving: {reply:?}"
        );

        // A node that shuts down closes its connections: clients learn at once, not after
        // the idle timeout.
        node.shutdown().await;
        let closed = tokio::time::timeout(Duration::from_millis(500), operator.closed()).await;
        assert!(
            closed.is_ok(),
            "the connection outlived the node's shutdown"
        );
    });
}

/// Drops the datagrams between one node's port and other nodes' ports on loopback (an
/// nftables table of its own), both ways; dropping it removes the table.
struct Partition {
    table: String,
}

impl Partition {
    fn new(name: &str, cut_off: &str, from: &[String]) -> Self {
        let table: String = format!("qvdc_{name}")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let others = from.join(", ");
        let script = format!(
            "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; \
             policy accept;\n    udp sport {cut_off} udp dport {{ {others} }} drop\n    \
             udp sport {{ {others} }} udp dport {cut_off} drop\n  }}\n}}\n"
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nft (scripts/setup.sh installs nftables)");
        use std::io::Write;
        nft.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft -f: {script}");
        Self { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// A leader cut off from the other nodes keeps running and believing it leads. The hosts go
/// to its successor, which deletes a pool (the hosts unmount it); then the successor's nodes
/// are frozen, so the hosts can reach only the deposed leader, whose state still has the
/// pool. It must not change them: it cannot confirm its leadership, so it refuses them.
/// (Without the lease the hosts never leave the deposed leader, and the test fails waiting
/// for the successor to have them; the host's fence stands behind that, see
/// `host/tests/fencing.rs` and the simulation's `deposed-leader` scenario.)
#[test]
fn a_partitioned_old_leader_cannot_change_hosts_needs_root() {
    let Some((cluster, _)) = Cluster::with_pool_needs_root() else {
        return;
    };
    let mounts = ["host-1", "host-2"].map(|h| cluster.dir().join(h).join("pools/shared"));
    assert!(
        mounts.iter().all(|m| mounted(m)),
        "host-1 and host-2 mount the pool"
    );

    let old = cluster.json(&["cluster", "status"]).unwrap()["leader"]
        .as_u64()
        .unwrap() as usize;
    let others: Vec<usize> = (1..=3).filter(|i| *i != old).collect();
    let port = |i: usize| {
        cluster.addrs()[i - 1]
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned()
    };
    let unique = cluster
        .dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let cut = Partition::new(
        &unique,
        &port(old),
        &others.iter().map(|i| port(*i)).collect::<Vec<_>>(),
    );
    let majority: Vec<String> = others
        .iter()
        .map(|i| cluster.addrs()[i - 1].clone())
        .collect();
    let json_at = |args: &[&str]| -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["--output", "json", "--timeout-ms", "3000"]);
        let out = cluster.qvctl_as("admin", &cluster.certs(), &majority, &all);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    };

    let started = Instant::now();
    let new = eventually(
        &cluster,
        "a successor with the hosts",
        Duration::from_secs(30),
        || {
            let leader = json_at(&["cluster", "status"])?["leader"].as_u64()?;
            let hosts = json_at(&["host", "list"])?;
            let ready = hosts.as_array()?.iter().all(|h| h["liveness"] == "Ready");
            (leader != old as u64 && ready).then_some(leader)
        },
    );
    eprintln!(
        "node {old} cut off -> node {new} leads with every host Ready: {:?}",
        started.elapsed()
    );
    let out = cluster.qvctl_as(
        "admin",
        &cluster.certs(),
        &majority,
        &["pool", "delete", "shared"],
    );
    assert!(out.status.success(), "{}", text(&out));
    eventually(
        &cluster,
        "the pool unmounted by the successor",
        Duration::from_secs(15),
        || mounts.iter().all(|m| !mounted(m)).then_some(()),
    );

    // Only the deposed leader is left for the hosts to talk to.
    for i in &others {
        cluster.nodes.freeze(*i);
    }
    std::thread::sleep(Duration::from_secs(10));
    let remounted: Vec<_> = mounts.iter().filter(|m| mounted(m)).collect();
    for i in &others {
        cluster.nodes.thaw(*i);
    }
    assert!(
        remounted.is_empty(),
        "the deposed leader node {old} mounted the deleted pool again: {remounted:?}"
    );
    // Each host asked the deposed leader and was turned away.
    let old_addr = &cluster.addrs()[old - 1];
    for host in ["host-1", "host-2", "host-3"] {
        let log = std::fs::read_to_string(cluster.dir().join(format!("{host}.log"))).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains(old_addr.as_str()) && l.contains("no leader elected yet")),
            "{host} never tried the deposed leader {old_addr}"
        );
    }

    // Healed, the old leader rejoins and every node holds the same state.
    drop(cut);
    eventually(
        &cluster,
        "all nodes at one index",
        Duration::from_secs(30),
        || {
            let statuses: Option<Vec<Value>> = (1..=3)
                .map(|i| {
                    let only = vec![cluster.addrs()[i - 1].clone()];
                    let out = cluster.qvctl_as(
                        "admin",
                        &cluster.certs(),
                        &only,
                        &["cluster", "status", "-o", "json", "--timeout-ms", "2000"],
                    );
                    serde_json::from_slice(&out.stdout).ok()
                })
                .collect();
            let statuses = statuses?;
            let same = statuses.iter().all(|s| {
                s["last_applied"] == statuses[0]["last_applied"]
                    && s["state_digest"] == statuses[0]["state_digest"]
            });
            same.then_some(())
        },
    );
    assert!(
        cluster.json(&["pool", "show", "shared"]).is_none(),
        "the pool stays deleted"
    );
}

/// Resumes a stopped libvirtd when dropped, so a failing test never leaves it stopped.
struct Resume;

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-CONT", "-x", "libvirtd"])
            .status();
    }
}

/// libvirtd stops answering (SIGSTOP: every call on the host's connection waits). The agent's
/// heartbeats do not wait on it: host-1 stays Ready with its pool reported healthy, and its
/// domains' power turns unknown instead of a stale state passed off as fresh. Once libvirtd
/// runs again, the domain is seen as it is.
#[test]
fn a_hung_libvirtd_leaves_the_host_ready_with_its_pools_and_its_domains_unknown_needs_root() {
    if !may_mount() || !kvm() {
        eprintln!("skipped: needs root and libvirtd with KVM");
        return;
    }
    let cluster = Cluster::start_with(["qemu:///system", "test:///default", "test:///default"]);
    cluster.wait_ready_with_pool();
    let name = format!("qvdc-hang-{}", std::process::id());
    let _forget = Forget(name.clone());
    let xml = format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"
    );
    let xml_file = cluster.dir().join("hang.xml");
    std::fs::write(&xml_file, xml).unwrap();
    virsh(&["define", &xml_file.display().to_string()]).expect("virsh define");
    let shown = format!("host-1/{name}");
    eventually(&cluster, "listed shut off", Duration::from_secs(10), || {
        let vm = cluster.json(&["vm", "show", &shown])?;
        (vm["power"] == "shut_off").then_some(())
    });

    let _resume = Resume;
    let stopped = Command::new("pkill")
        .args(["-STOP", "-x", "libvirtd"])
        .status()
        .unwrap();
    assert!(stopped.success(), "no libvirtd to stop");
    let hung = Instant::now();
    eventually(&cluster, "power unknown", Duration::from_secs(15), || {
        let vm = cluster.json(&["vm", "show", &shown])?;
        (vm["power"] == "unknown").then_some(())
    });
    let unknown_after = hung.elapsed();
    // Several heartbeats into the hang, the host is Ready and its pool healthy.
    std::thread::sleep(Duration::from_secs(4));
    let host = cluster.json(&["host", "show", "host-1"]).unwrap();
    assert_eq!(host["host"]["liveness"], "Ready", "{host:#}");
    let pool = cluster.json(&["pool", "show", "shared"]).unwrap();
    let healthy = pool["healthy_hosts"].as_array().unwrap();
    assert!(healthy.iter().any(|h| h == "host-1"), "{pool:#}");
    eprintln!(
        "libvirtd stopped -> domain power unknown after {unknown_after:?}; host-1 Ready and its pool healthy {:?} in",
        hung.elapsed()
    );
    drop(_resume);
    let resumed = Instant::now();
    eventually(&cluster, "seen again", Duration::from_secs(40), || {
        let vm = cluster.json(&["vm", "show", &shown])?;
        (vm["power"] != "unknown").then_some(())
    });
    eprintln!(
        "libvirtd resumed -> domain seen again {:?}",
        resumed.elapsed()
    );
}
