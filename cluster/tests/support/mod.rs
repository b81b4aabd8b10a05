//! Test and benchmark support: a cluster CA with certificates, and three `qvdc server`
//! processes on loopback that can be killed and restarted. Shared by the real-process tests
//! and the control-plane benchmark (which includes this file by path).
#![allow(dead_code)] // each includer uses a different part

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use qvdc_transport::{
    protocol::{ApiRequest, ApiResponse, PoolScope, PoolSource, PoolSpec, PowerState, VmSpec},
    tls::{self, Identity, Role},
};

pub(crate) const QVDC: &str = env!("CARGO_BIN_EXE_qvdc");
pub(crate) const NODES: usize = 3;

/// Three control-plane processes and the directory holding their certificates, data and
/// logs. Dropping it kills the processes, then removes the directory.
pub(crate) struct Nodes {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) addrs: Vec<String>,
    processes: Vec<Option<Child>>,
    /// Write each node's output to `<dir>/node-N.log` (tests) or drop it (benchmarks).
    logs: bool,
    /// Flags every node gets on top of the usual ones.
    extra_args: Vec<String>,
    /// The `qvdc` binary each node runs: this build's, or an earlier release's.
    binaries: Vec<PathBuf>,
    /// Each node's metrics port, when they serve metrics (`Nodes::start_measured`).
    pub(crate) metrics_ports: Vec<u16>,
}

impl Nodes {
    /// Creates the CA, server certificates for node-1..3 and the `others`, picks free ports
    /// and starts the three nodes.
    pub(crate) fn start(others: &[(Role, &str)], logs: bool) -> Self {
        Self::start_with_args(others, logs, &[])
    }

    /// Like [`Nodes::start`], with `extra_args` for every node (e.g. log retention).
    pub(crate) fn start_with_args(
        others: &[(Role, &str)],
        logs: bool,
        extra_args: &[&str],
    ) -> Self {
        Self::start_release(Path::new(QVDC), others, logs, extra_args)
    }

    /// Like [`Nodes::start`], with every node serving Prometheus metrics on a port of its
    /// own (`metrics_ports`).
    pub(crate) fn start_measured(others: &[(Role, &str)], logs: bool) -> Self {
        let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        Self::start_inner(Path::new(QVDC), others, logs, &[], ports)
    }

    /// Like [`Nodes::start_with_args`], with every node running the `qvdc` at `binary`.
    pub(crate) fn start_release(
        binary: &Path,
        others: &[(Role, &str)],
        logs: bool,
        extra_args: &[&str],
    ) -> Self {
        Self::start_inner(binary, others, logs, extra_args, Vec::new())
    }

    fn start_inner(
        binary: &Path,
        others: &[(Role, &str)],
        logs: bool,
        extra_args: &[&str],
        metrics_ports: Vec<u16>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        tls::init_ca(&certs).unwrap();
        for i in 1..=NODES {
            tls::issue(&certs, Role::Server, &format!("node-{i}")).unwrap();
        }
        for (role, name) in others {
            tls::issue(&certs, *role, name).unwrap();
        }
        let addrs = (0..NODES)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut nodes = Self {
            dir,
            addrs,
            processes: Vec::new(),
            logs,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            binaries: vec![binary.to_path_buf(); NODES],
            metrics_ports,
        };
        for id in 1..=NODES {
            let child = nodes.spawn(id);
            nodes.processes.push(Some(child));
        }
        nodes
    }

    /// A client of operator `name` (whose certificate was issued at start) that knows only
    /// nodes `ids` (1-based).
    pub(crate) fn client(
        &self,
        name: &str,
        ids: &[usize],
        timeout: std::time::Duration,
    ) -> qvdc_cluster::Client {
        self.client_on(self.endpoint(name), ids, timeout)
    }

    /// A loopback endpoint with the certificate of operator `name`; clients made with
    /// [`Nodes::client_on`] may share it (each still has its own connection).
    pub(crate) fn endpoint(&self, name: &str) -> qvdc_transport::Endpoint {
        qvdc_transport::Endpoint::bind(
            "127.0.0.1:0".parse().expect("a literal address"),
            &self.identity(name),
            false,
        )
        .expect("a loopback endpoint binds")
    }

    /// A client on `endpoint` that knows only nodes `ids` (1-based).
    pub(crate) fn client_on(
        &self,
        endpoint: qvdc_transport::Endpoint,
        ids: &[usize],
        timeout: std::time::Duration,
    ) -> qvdc_cluster::Client {
        let addrs = ids
            .iter()
            .map(|id| self.addrs[id - 1].parse().expect("node addresses parse"))
            .collect();
        qvdc_cluster::Client::new(endpoint, addrs, timeout)
    }

    pub(crate) fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub(crate) fn identity(&self, name: &str) -> Identity {
        let c = self.certs();
        Identity::load(
            &c.join("ca.crt"),
            &c.join(format!("{name}.crt")),
            &c.join(format!("{name}.key")),
        )
        .unwrap()
    }

    /// `--ca-cert/--cert/--key` for the certificate named `name`.
    pub(crate) fn tls_args(&self, name: &str) -> Vec<String> {
        let c = self.certs();
        let file = |f: String| c.join(f).display().to_string();
        vec![
            "--ca-cert".into(),
            file("ca.crt".into()),
            "--cert".into(),
            file(format!("{name}.crt")),
            "--key".into(),
            file(format!("{name}.key")),
        ]
    }

    /// Where a process named `name` writes its output.
    pub(crate) fn output(&self, name: &str) -> (Stdio, Stdio) {
        if !self.logs {
            return (Stdio::null(), Stdio::null());
        }
        let path = self.dir.path().join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        (log.try_clone().unwrap().into(), log.into())
    }

    /// Starts node `id` (beyond the initial three) empty, with `--join`, on a fresh port and
    /// with a fresh certificate; `qvctl cluster add-node` then brings it in.
    pub(crate) fn start_joining(&mut self, id: usize) -> String {
        assert_eq!(id, self.addrs.len() + 1, "nodes join in id order");
        tls::issue(&self.certs(), Role::Server, &format!("node-{id}")).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        self.addrs.push(addr.clone());
        self.binaries.push(PathBuf::from(QVDC));
        let child = self.spawn(id);
        self.processes.push(Some(child));
        addr
    }

    fn spawn(&self, id: usize) -> Child {
        let initial: Vec<String> = self.addrs[..NODES]
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect();
        let bootstrap = if id > NODES {
            vec!["--join".to_owned()]
        } else {
            vec!["--initial-cluster".to_owned(), initial.join(",")]
        };
        let data_dir = self
            .dir
            .path()
            .join(format!("node-{id}"))
            .display()
            .to_string();
        let (stdout, stderr) = self.output(&format!("node-{id}"));
        let metrics: Vec<String> = match self.metrics_ports.get(id - 1) {
            Some(port) => vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")],
            None => Vec::new(),
        };
        Command::new(&self.binaries[id - 1])
            .args([
                "server",
                "--node-id",
                &id.to_string(),
                "--listen",
                &self.addrs[id - 1],
            ])
            .args(["--data-dir", &data_dir])
            .args(bootstrap)
            .args(&self.extra_args)
            .args(metrics)
            .args(self.tls_args(&format!("node-{id}")))
            // Test guests have no OS and ignore shutdown requests: do not wait long for them.
            .args(["--vm-shutdown-timeout-ms", "3000"])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start qvdc server")
    }

    /// Registers host `host` (its certificate must exist) without ever heartbeating, so that
    /// pools can be assigned to it; tries every node until the leader takes it.
    pub(crate) async fn register_host(&self, host: &str) {
        use qvdc_transport::{
            protocol::{HostMessage, Inventory, Request, Response},
            quic, Endpoint,
        };
        let endpoint =
            Endpoint::bind("127.0.0.1:0".parse().unwrap(), &self.identity(host), false).unwrap();
        let inventory = Inventory {
            hostname: host.into(),
            cpu_cores: 1,
            memory_bytes: 1 << 30,
            ..Inventory::default()
        };
        let started = std::time::Instant::now();
        loop {
            for addr in &self.addrs {
                let Ok(connection) = endpoint.connect(addr.parse().unwrap()).await else {
                    continue;
                };
                let register = Request::Host(HostMessage::Register {
                    host_id: host.into(),
                    inventory: inventory.clone(),
                    vms: Vec::new(),
                });
                if let Ok(Response::Host(_)) =
                    quic::call::<_, Response>(&connection, &register).await
                {
                    return;
                }
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "could not register host {host}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// `kill -9` node `id` and wait for it to be gone.
    pub(crate) fn kill(&mut self, id: usize) {
        let mut child = self.processes[id - 1].take().expect("node is running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// CPU time the running nodes have used so far (user and system, from `/proc`), for
    /// the benchmark's CPU-per-write figure, which varies less with the machine's speed than
    /// the write rate does.
    #[allow(dead_code)] // only the benchmark uses it
    pub(crate) fn cpu_time(&self) -> std::time::Duration {
        // Kernel clock ticks per second (USER_HZ): 100 on Linux.
        const TICKS_PER_SECOND: u64 = 100;
        let ticks: u64 = self
            .processes
            .iter()
            .flatten()
            .map(|child| {
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
                    .unwrap_or_default();
                // Fields after the command name (which is in parentheses): utime is the
                // 12th and stime the 13th of them.
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
                let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
                field(11).unwrap_or(0) + field(12).unwrap_or(0)
            })
            .sum();
        std::time::Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
    }

    /// Whether node `id`'s process is still running (it may have died of a bad input).
    pub(crate) fn alive(&mut self, id: usize) -> bool {
        self.processes[id - 1]
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("poll the child").is_none())
    }

    /// Node `id`'s resident memory, from `/proc/PID/status`.
    pub(crate) fn rss_bytes(&self, id: usize) -> u64 {
        let child = self.processes[id - 1].as_ref().expect("node is running");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .expect("read the node's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status");
        kib * 1024
    }

    /// Freezes node `id` (SIGSTOP): it neither answers nor sends until [`Nodes::thaw`].
    pub(crate) fn freeze(&self, id: usize) {
        self.signal(id, "-STOP");
    }

    /// Lets a frozen node `id` run again (SIGCONT).
    pub(crate) fn thaw(&self, id: usize) {
        self.signal(id, "-CONT");
    }

    /// Sends `signal` ("-HUP", "-STOP", ...) to node `id`.
    pub(crate) fn signal(&self, id: usize, signal: &str) {
        let child = self.processes[id - 1].as_ref().expect("node is running");
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} node {id}");
    }

    /// Starts `qhost` (the one at `binary`) as host-1 on libvirt's test driver, with its data
    /// directory and log in this cluster's directory; killed when dropped.
    pub(crate) fn start_test_host(&self, binary: &Path) -> Reaped {
        self.start_test_host_with(binary, &[])
    }

    /// [`Nodes::start_test_host`] with more flags.
    pub(crate) fn start_test_host_with(&self, binary: &Path, extra: &[&str]) -> Reaped {
        let dir = self.dir.path().join("host-1");
        std::fs::create_dir_all(&dir).unwrap();
        let (stdout, stderr) = self.output("host-1");
        Reaped(
            Command::new(binary)
                .args(["--host-id", "host-1", "--cluster", &self.addrs.join(",")])
                .args(["--data-dir", dir.to_str().unwrap()])
                .args(["--libvirt", "test:///default"])
                .args(extra)
                .args(self.tls_args("host-1"))
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap(),
        )
    }

    /// Makes node `id` run the `qvdc` at `binary` from its next (re)start.
    pub(crate) fn set_binary(&mut self, id: usize, binary: &Path) {
        self.binaries[id - 1] = binary.to_path_buf();
    }

    /// Reaps node `id` if its process has exited on its own; returns whether it had.
    pub(crate) fn kill_if_exited(&mut self, id: usize) -> bool {
        let exited = self.processes[id - 1]
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("poll the child").is_some());
        if exited {
            self.processes[id - 1] = None;
        }
        exited
    }

    /// Starts node `id` again with its data directory.
    pub(crate) fn restart(&mut self, id: usize) {
        assert!(
            self.processes[id - 1].is_none(),
            "node {id} is still running"
        );
        let child = self.spawn(id);
        self.processes[id - 1] = Some(child);
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.processes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // QVDC_KEEP=1 keeps the certificates, data and logs of a run to look at.
        if std::env::var_os("QVDC_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("KEPT {}", dir.keep().display());
        }
    }
}

/// A child process killed when dropped, so that a failing test leaves none behind.
pub(crate) struct Reaped(pub(crate) Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `cluster status` as node `id` itself sees it (the status request is answered by the node
/// that receives it, never forwarded); `client` must know only that node's address. `None`
/// if the node does not answer within 1.5 s.
pub(crate) async fn status_of(
    mut client: qvdc_cluster::Client,
    id: usize,
) -> Option<qvdc_transport::protocol::ClusterStatus> {
    use qvdc_transport::protocol::{ApiRequest, ApiResponse};
    let answer = tokio::time::timeout(
        std::time::Duration::from_millis(1_500),
        client.request(ApiRequest::ClusterStatus),
    );
    match answer.await {
        Ok(Ok(ApiResponse::ClusterStatus(status))) => {
            assert_eq!(
                status.node_id, id as u64,
                "cluster status sent to node {id} was answered by node {}",
                status.node_id
            );
            Some(status)
        }
        _ => None,
    }
}

/// Waits until every node in `ids` reports the same applied index (not none) and the same
/// state digest, asking each through `client_for(id)`; panics after `wait`.
pub(crate) async fn converged(
    ids: &[usize],
    client_for: impl Fn(usize) -> qvdc_cluster::Client,
    wait: std::time::Duration,
) -> qvdc_transport::protocol::ClusterStatus {
    let started = std::time::Instant::now();
    loop {
        let mut statuses = Vec::new();
        for id in ids {
            statuses.push(status_of(client_for(*id), *id).await);
        }
        let seen: Vec<_> = statuses
            .iter()
            .map(|s| s.as_ref().map(|s| (s.last_applied, s.state_digest)))
            .collect();
        if seen[0].is_some_and(|(applied, _)| applied.is_some())
            && seen.iter().all(|s| *s == seen[0])
        {
            return statuses.swap_remove(0).expect("checked above");
        }
        assert!(
            started.elapsed() < wait,
            "nodes {ids:?} did not converge on one state within {wait:?}; per node \
             (last_applied, state_digest), None if it did not answer: {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A dir pool `name` assigned to `hosts`, with a request id of its own.
pub(crate) fn dir_pool(name: &str, hosts: &[&str]) -> ApiRequest {
    ApiRequest::PoolCreate {
        request_id: format!("create-{name}"),
        spec: PoolSpec {
            scope: PoolScope::Shared,
            name: name.into(),
            source: PoolSource::Dir {
                path: format!("/srv/{name}"),
            },
        },
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
    }
}

/// A small VM (one vCPU, 64 MiB, no disks or NICs) placed on `host` and started.
pub(crate) fn small_vm(name: &str, host: &str) -> ApiRequest {
    ApiRequest::VmCreate {
        request_id: format!("create-{name}"),
        spec: VmSpec {
            id: String::new(),
            name: name.into(),
            vcpus: 1,
            memory_bytes: 64 << 20,
            disks: Vec::new(),
            nics: Vec::new(),
        },
        host: Some(host.into()),
        start: true,
    }
}

/// Whether the answer shows a VM its host reports running.
pub(crate) fn vm_runs(response: &ApiResponse) -> bool {
    matches!(response, ApiResponse::Vm(view) if view.power == PowerState::Running)
}

/// Asks `request` until the answer satisfies `holds`, for up to `limit`.
pub(crate) async fn until(
    client: &mut qvdc_cluster::Client,
    what: &str,
    request: ApiRequest,
    limit: std::time::Duration,
    holds: impl Fn(&ApiResponse) -> bool,
) {
    let started = std::time::Instant::now();
    loop {
        if client
            .request(request.clone())
            .await
            .is_ok_and(|r| holds(&r))
        {
            return;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A free TCP port on loopback.
pub(crate) fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP base port with the two after it free (`qvdc dev --base-port`).
pub(crate) fn free_udp_run() -> u16 {
    for _ in 0..100 {
        let base = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base < 65000 && (1..3).all(|i| UdpSocket::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no three consecutive free UDP ports");
}

/// A TCP base port with base..base+3 and base+100..base+104 free (`qvdc dev
/// --metrics-port`): sandboxes started side by side must not share metrics ports.
pub(crate) fn free_metrics_base() -> u16 {
    for _ in 0..200 {
        let base = free_tcp_port();
        if base > 65_000 {
            continue;
        }
        let ports = (0..3).chain(100..104).map(|i| base + i);
        let held: Vec<_> = ports
            .map(|p| std::net::TcpListener::bind(("127.0.0.1", p)))
            .collect();
        if held.iter().all(Result::is_ok) {
            return base;
        }
    }
    panic!("no free block of metrics ports");
}

/// The variables `qvdc dev` wrote to `<dir>/cluster.env`.
pub(crate) fn env_of(dir: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir.join("cluster.env")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
