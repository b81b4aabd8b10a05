//! Test and benchmark support: a cluster CA with certificates, and three `qvdc server`
//! processes on loopback that can be killed and restarted. Shared by the real-process tests
//! and the control-plane benchmark (which includes this file by path).
#![allow(dead_code)] // each includer uses a different part

use std::{
    net::UdpSocket,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use qvdc_transport::tls::{self, Identity, Role};

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
}

impl Nodes {
    /// Creates the CA, server certificates for node-1..3 and the `others`, picks free ports
    /// and starts the three nodes.
    pub(crate) fn start(others: &[(Role, &str)], logs: bool) -> Self {
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
        };
        for id in 1..=NODES {
            let child = nodes.spawn(id);
            nodes.processes.push(Some(child));
        }
        nodes
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

    fn spawn(&self, id: usize) -> Child {
        let initial: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect();
        let data_dir = self
            .dir
            .path()
            .join(format!("node-{id}"))
            .display()
            .to_string();
        let (stdout, stderr) = self.output(&format!("node-{id}"));
        Command::new(QVDC)
            .args([
                "server",
                "--node-id",
                &id.to_string(),
                "--listen",
                &self.addrs[id - 1],
            ])
            .args([
                "--data-dir",
                &data_dir,
                "--initial-cluster",
                &initial.join(","),
            ])
            .args(self.tls_args(&format!("node-{id}")))
            // Test guests have no OS and ignore shutdown requests: do not wait long for them.
            .args(["--vm-shutdown-timeout-ms", "3000"])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start qvdc server")
    }

    /// `kill -9` node `id` and wait for it to be gone.
    pub(crate) fn kill(&mut self, id: usize) {
        let mut child = self.processes[id - 1].take().expect("node is running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
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
    }
}

pub(crate) fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
