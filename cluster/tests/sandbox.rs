//! `qvdc dev`, the README's first command: it must come up, describe itself in nodes.json and
//! cluster.env, serve qvctl, and leave nothing running or mounted after Ctrl-C.

use std::{
    io::{BufRead, BufReader},
    net::UdpSocket,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

const QVDC: &str = env!("CARGO_BIN_EXE_qvdc");
const QVCTL: &str = env!("CARGO_BIN_EXE_qvctl");

/// A base port with the two after it free too.
fn free_port_run() -> u16 {
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

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn env_of(dir: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir.join("cluster.env")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn qvctl_json(env: &[(String, String)], args: &[&str]) -> Option<Value> {
    let out = Command::new(QVCTL)
        .envs(env.iter().cloned())
        .args(args)
        .args(["-o", "json", "--timeout-ms", "3000"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Some(v) = probe() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within 30 s");
}

#[test]
fn dev_sandbox_starts_serves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    let base = free_port_run();
    let mut dev = Command::new(QVDC)
        .args([
            "dev",
            "--dir",
            &sandbox.display().to_string(),
            "--hosts",
            "2",
            "--base-port",
            &base.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = dev.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut printed = String::new();
    while !printed.contains("Press Ctrl-C") {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("qvdc dev did not come up within 30 s");
        printed.push_str(&line);
        printed.push('\n');
    }
    assert!(
        printed.contains("qvctl pool create shared") && printed.contains("qvctl vm create web"),
        "the guide shows the next steps:\n{printed}"
    );

    let nodes: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(sandbox.join("nodes.json")).unwrap())
            .unwrap();
    assert_eq!(nodes.iter().filter(|n| n["role"] == "server").count(), 3);
    assert_eq!(nodes.iter().filter(|n| n["role"] == "host").count(), 2);
    let pids: Vec<i32> = nodes
        .iter()
        .map(|n| n["pid"].as_i64().unwrap() as i32)
        .collect();
    assert!(
        pids.iter()
            .all(|p| Path::new(&format!("/proc/{p}")).exists()),
        "every listed process runs"
    );

    let env = env_of(&sandbox);
    assert_eq!(
        env.len(),
        4,
        "cluster.env sets the four QVDC_* variables: {env:?}"
    );
    eventually("both hosts Ready", || {
        let hosts = qvctl_json(&env, &["host", "list"])?;
        (hosts
            .as_array()?
            .iter()
            .filter(|h| h["liveness"] == "Ready")
            .count()
            == 2)
            .then_some(())
    });
    if is_root() {
        let shared = sandbox.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let path = shared.display().to_string();
        qvctl_json(
            &env,
            &[
                "pool",
                "create",
                "shared",
                "--path",
                &path,
                "--hosts",
                "host-1,host-2",
            ],
        )
        .expect("pool create");
        eventually("pool healthy", || {
            (qvctl_json(&env, &["pool", "show", "shared"])?["health"] == "HEALTHY").then_some(())
        });
        // The rest of the tour: a volume and a VM on it, on libvirt's test driver.
        qvctl_json(
            &env,
            &["volume", "create", "shared", "web.qcow2", "--size", "64M"],
        )
        .expect("volume create");
        let create = [
            "vm",
            "create",
            "web",
            "--memory",
            "64M",
            "--disk",
            "shared/web.qcow2",
        ];
        qvctl_json(&env, &[&create[..], &["--start", "--wait"]].concat()).expect("vm create");
        let vm = qvctl_json(&env, &["vm", "show", "web"]).unwrap();
        assert_eq!(vm["power"], "running", "{vm}");
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let started = Instant::now();
    while dev.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "qvdc dev did not stop within 20 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.is_empty() || status.contains("State:\tZ"),
            "process {pid} outlived the sandbox"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = sandbox.display().to_string();
    assert!(
        !mounts
            .lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(&prefix))),
        "the sandbox left mounts behind"
    );
}
