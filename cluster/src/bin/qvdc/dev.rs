//! `qvdc dev`: a whole cluster on loopback for trying qvdc out — certificates, three
//! control-plane nodes and N host agents as child processes, stopped together on Ctrl-C.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context};
use qvdc_cluster::Client;
use qvdc_transport::{
    protocol::{ApiRequest, ApiResponse},
    tls::{self, Identity, Role},
    Endpoint,
};
use serde::Serialize;
use tokio::process::{Child, Command};

const NODES: u64 = 3;
const LEADER_WAIT_MS: u64 = 20_000;
const OPERATOR: &str = "admin";

#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// Directory for certificates, data and logs (created; reused if it exists).
    #[arg(long, default_value = "qvdc-dev")]
    dir: PathBuf,
    /// Number of host agents.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    hosts: u32,
    /// UDP port of node 1; nodes 2 and 3 take the next ports.
    #[arg(long, default_value_t = 7101)]
    base_port: u16,
    /// libvirt connection of every host agent: libvirt's in-memory test driver by default
    /// (no daemon, no real VMs); qemu:///system runs real VMs under KVM.
    #[arg(long, default_value = "test:///default")]
    libvirt: String,
    /// TCP port of node 1's Prometheus metrics (nodes take the next ports); hosts serve
    /// theirs from this port + 100 on (host-1 at 9201 by default).
    #[arg(long, default_value_t = 9101)]
    metrics_port: u16,
}

#[derive(Debug, Serialize)]
struct ProcessInfo {
    role: &'static str,
    id: String,
    pid: u32,
    address: Option<String>,
    /// Where it serves Prometheus metrics.
    metrics: String,
    data_dir: PathBuf,
    log: PathBuf,
}

struct Running {
    child: Child,
    info: ProcessInfo,
}

fn issue_missing(certs: &Path, role: Role, name: &str) -> anyhow::Result<()> {
    if !certs.join(format!("{name}.crt")).exists() {
        tls::issue(certs, role, name)?;
    }
    Ok(())
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating qvdc")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to qvdc; build it with `cargo build --workspace --bins`",
            path.display()
        );
    }
    Ok(path)
}

fn spawn(binary: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// How host agents are started: directly as root, or — for a user without root — each in
/// its own user and mount namespace, where it is root over its own mounts only, so that
/// its bind mounts of the sandbox's directories work (`unshare -Urm`, which executes the
/// agent in place: the pid is the agent's). Linux bridges still need real root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostIsolation {
    None,
    UserNamespace,
}

impl HostIsolation {
    fn for_this_user() -> Self {
        if nix::unistd::geteuid().is_root() {
            Self::None
        } else {
            Self::UserNamespace
        }
    }

    /// The program to start and the arguments before the agent's own.
    fn command(self, qhost: &Path) -> (PathBuf, Vec<String>) {
        match self {
            Self::None => (qhost.to_owned(), Vec::new()),
            Self::UserNamespace => {
                let unshare = [
                    "--user",
                    "--map-root-user",
                    "--mount",
                    "--propagation",
                    "private",
                ];
                let mut args: Vec<String> = unshare.iter().map(|a| (*a).to_owned()).collect();
                args.extend(["--".into(), qhost.display().to_string()]);
                (PathBuf::from("unshare"), args)
            }
        }
    }
}

fn tls_args(certs: &Path, name: &str) -> Vec<String> {
    let path = |file: String| certs.join(file).display().to_string();
    vec![
        "--ca-cert".into(),
        path("ca.crt".into()),
        "--cert".into(),
        path(format!("{name}.crt")),
        "--key".into(),
        path(format!("{name}.key")),
    ]
}

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let certs = dir.join("certs");
    if !certs.join("ca.crt").exists() {
        tls::init_ca(&certs)?;
    }
    for i in 1..=NODES {
        issue_missing(&certs, Role::Server, &format!("node-{i}"))?;
    }
    for i in 1..=args.hosts {
        issue_missing(&certs, Role::Host, &format!("host-{i}"))?;
    }
    issue_missing(&certs, Role::Operator, OPERATOR)?;

    let addrs: Vec<String> = (0..NODES)
        .map(|i| format!("127.0.0.1:{}", u64::from(args.base_port) + i))
        .collect();
    let initial: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let isolation = HostIsolation::for_this_user();
    let mut running = start_nodes(&dir, &certs, &addrs, &initial.join(","), args.metrics_port)?;
    running.extend(start_hosts(
        &dir,
        &certs,
        &addrs,
        args.hosts,
        &args.libvirt,
        isolation,
        args.metrics_port + 100,
    )?);
    write_env(&dir, &certs, &addrs)?;
    let infos: Vec<&ProcessInfo> = running.iter().map(|r| &r.info).collect();
    std::fs::write(
        dir.join("nodes.json"),
        serde_json::to_string_pretty(&infos)?,
    )?;

    let ready = wait_for_leader(&certs, &addrs).await;
    check_alive(&mut running)?;
    let leader = ready?;
    print_guide(&dir, args.hosts, leader, &args.libvirt, isolation);
    println!("\nPrometheus metrics:");
    for r in &running {
        println!(
            "  {} {:<8} http://{}/metrics",
            r.info.role, r.info.id, r.info.metrics
        );
    }
    super::wait_for_signal().await;
    println!("\nstopping {} processes...", running.len());
    stop_all(&mut running).await;
    unmount_under(&dir);
    println!(
        "stopped. Data, logs and certificates stay in {}",
        dir.display()
    );
    Ok(())
}

fn start_nodes(
    dir: &Path,
    certs: &Path,
    addrs: &[String],
    initial: &str,
    metrics_port: u16,
) -> anyhow::Result<Vec<Running>> {
    let qvdc = std::env::current_exe()?;
    let mut running = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = (i + 1).to_string();
        let data_dir = dir.join(format!("node-{id}"));
        let log = dir.join(format!("node-{id}.log"));
        let mut argv: Vec<String> = vec![
            "server".into(),
            "--node-id".into(),
            id.clone(),
            "--listen".into(),
            addr.clone(),
        ];
        argv.extend([
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--initial-cluster".into(),
            initial.into(),
        ]);
        argv.extend(tls_args(certs, &format!("node-{id}")));
        let metrics = format!("127.0.0.1:{}", usize::from(metrics_port) + i);
        argv.extend(["--metrics-listen".into(), metrics.clone()]);
        let child = spawn(&qvdc, &argv, &log)?;
        let pid = child.id().unwrap_or(0);
        running.push(Running {
            child,
            info: ProcessInfo {
                role: "server",
                id,
                pid,
                address: Some(addr.clone()),
                metrics,
                data_dir,
                log,
            },
        });
    }
    Ok(running)
}

fn start_hosts(
    dir: &Path,
    certs: &Path,
    addrs: &[String],
    hosts: u32,
    libvirt: &str,
    isolation: HostIsolation,
    metrics_port: u16,
) -> anyhow::Result<Vec<Running>> {
    let (program, before) = isolation.command(&sibling_binary("qhost")?);
    let mut running = Vec::new();
    for i in 1..=hosts {
        let id = format!("host-{i}");
        let data_dir = dir.join(&id);
        let log = dir.join(format!("{id}.log"));
        let mut argv = before.clone();
        argv.extend([
            "--host-id".into(),
            id.clone(),
            "--cluster".into(),
            addrs.join(","),
        ]);
        argv.extend(["--data-dir".into(), data_dir.display().to_string()]);
        argv.extend(["--libvirt".into(), libvirt.to_owned()]);
        argv.extend(tls_args(certs, &id));
        let metrics = format!("127.0.0.1:{}", u32::from(metrics_port) + i - 1);
        argv.extend(["--metrics-listen".into(), metrics.clone()]);
        let child = spawn(&program, &argv, &log)?;
        let pid = child.id().unwrap_or(0);
        running.push(Running {
            child,
            info: ProcessInfo {
                role: "host",
                id,
                pid,
                address: None,
                metrics,
                data_dir,
                log,
            },
        });
    }
    Ok(running)
}

fn write_env(dir: &Path, certs: &Path, addrs: &[String]) -> anyhow::Result<()> {
    let env = format!(
        "export QVDC_CLUSTER={}\nexport QVDC_CA_CERT={}\nexport QVDC_CERT={}\nexport QVDC_KEY={}\n",
        addrs.join(","),
        certs.join("ca.crt").display(),
        certs.join(format!("{OPERATOR}.crt")).display(),
        certs.join(format!("{OPERATOR}.key")).display(),
    );
    std::fs::write(dir.join("cluster.env"), env)?;
    Ok(())
}

async fn wait_for_leader(certs: &Path, addrs: &[String]) -> anyhow::Result<u64> {
    let identity = Identity::load(
        &certs.join("ca.crt"),
        &certs.join(format!("{OPERATOR}.crt")),
        &certs.join(format!("{OPERATOR}.key")),
    )?;
    let endpoint = Endpoint::bind("127.0.0.1:0".parse()?, &identity, false)?;
    let nodes = addrs
        .iter()
        .map(|a| a.parse())
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = Client::new(endpoint, nodes, Duration::from_millis(LEADER_WAIT_MS));
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(LEADER_WAIT_MS) {
        if let Ok(ApiResponse::ClusterStatus(status)) =
            client.request(ApiRequest::ClusterStatus).await
        {
            if let Some(leader) = status.leader {
                return Ok(leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no leader was elected within {LEADER_WAIT_MS} ms; see the node-*.log files")
}

fn check_alive(running: &mut [Running]) -> anyhow::Result<()> {
    for r in running.iter_mut() {
        if let Ok(Some(status)) = r.child.try_wait() {
            let log = std::fs::read_to_string(&r.info.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "{} {} exited ({status}); last log lines:\n{}",
                r.info.role,
                r.info.id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    Ok(())
}

async fn stop_all(running: &mut [Running]) {
    for r in running.iter() {
        if let Ok(pid) = i32::try_from(r.info.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for r in running.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(5), r.child.wait())
            .await
            .is_err()
        {
            let _ = r.child.kill().await;
        }
    }
}

/// Unmounts whatever the sandbox's hosts mounted below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn print_guide(dir: &Path, hosts: u32, leader: u64, libvirt: &str, isolation: HostIsolation) {
    let host_list: Vec<String> = (1..=hosts).map(|i| format!("host-{i}")).collect();
    let d = dir.display();
    if isolation == HostIsolation::UserNamespace {
        println!(
            "\nYou are not root, so each host agent runs in its own user and mount namespace: \
             pools, volumes and VMs on the test driver work; networks (Linux bridges) need \
             root and report ERROR (\"Operation not permitted\"), as do real VMs."
        );
    }
    println!(
        "\nqvdc sandbox is up: 3 control-plane nodes (leader: node {leader}) and {hosts} hosts on {libvirt}.
Processes, addresses and data dirs: {d}/nodes.json; logs: {d}/*.log

A short tour, in another shell:
  source {d}/cluster.env
  qvctl cluster status                       # members, leader, term
  qvctl host list                            # inventory and liveness of every host
  mkdir -p {d}/shared
  qvctl pool create shared --type dir --path {d}/shared --hosts {} --wait
  qvctl volume create shared web.qcow2 --size 64M
  qvctl vm create web --vcpus 1 --memory 64M --disk shared/web.qcow2 --start --wait
  qvctl vm list                              # placed by the cluster, reported by its host
  qvctl host show host-1                     # what that host runs and mounts
  qvctl vm stop web --wait && qvctl vm delete web --wait
  qvctl events --follow                      # who changed what, and what hosts report
  qvctl dashboard --open                     # the same in a browser, live

Press Ctrl-C here to stop everything.",
        host_list.join(",")
    );
}
