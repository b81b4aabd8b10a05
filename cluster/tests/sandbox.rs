//! `qvdc dev`, the README's first command: it must come up, describe itself in nodes.json and
//! cluster.env, serve qvctl, and leave nothing running or mounted after Ctrl-C.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

mod support;

use support::{env_of, free_metrics_base, free_udp_run};

const QVDC: &str = env!("CARGO_BIN_EXE_qvdc");
const QVCTL: &str = env!("CARGO_BIN_EXE_qvctl");

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
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

/// A running `qvdc dev`, what it printed until it was up, and the pids it listed.
struct Dev {
    child: std::process::Child,
    printed: String,
    pids: Vec<i32>,
    env: Vec<(String, String)>,
}

/// Starts `qvdc dev` with `hosts` hosts in `sandbox` — as `user`, if given (the test then
/// runs as root) — and waits until it says it is up and every host is Ready.
fn start_dev(sandbox: &Path, hosts: usize, user: Option<&str>) -> Dev {
    let base = free_udp_run();
    let dev_args = [
        "dev".to_owned(),
        "--dir".to_owned(),
        sandbox.display().to_string(),
        "--hosts".to_owned(),
        hosts.to_string(),
        "--base-port".to_owned(),
        base.to_string(),
        "--metrics-port".to_owned(),
        free_metrics_base().to_string(),
    ];
    let mut command = match user {
        None => Command::new(QVDC),
        Some(user) => {
            // In place (no intermediate process): signals reach qvdc itself.
            let mut command = Command::new("setpriv");
            command
                .args([&format!("--reuid={user}"), &format!("--regid={user}")])
                .args(["--clear-groups", "--", QVDC])
                .env("HOME", sandbox.parent().unwrap());
            command
        }
    };
    let mut child = command
        .args(dev_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
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
    let nodes: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(sandbox.join("nodes.json")).unwrap())
            .unwrap();
    assert_eq!(nodes.iter().filter(|n| n["role"] == "server").count(), 3);
    assert_eq!(nodes.iter().filter(|n| n["role"] == "host").count(), hosts);
    let pids: Vec<i32> = nodes
        .iter()
        .map(|n| n["pid"].as_i64().unwrap() as i32)
        .collect();
    assert!(
        pids.iter()
            .all(|p| Path::new(&format!("/proc/{p}")).exists()),
        "every listed process runs"
    );
    let env = env_of(sandbox);
    assert_eq!(
        env.len(),
        4,
        "cluster.env sets the four QVDC_* variables: {env:?}"
    );
    eventually("every host Ready", || {
        let listed = qvctl_json(&env, &["host", "list"])?;
        let ready = listed
            .as_array()?
            .iter()
            .filter(|h| h["liveness"] == "Ready");
        (ready.count() == hosts).then_some(())
    });
    Dev {
        child,
        printed,
        pids,
        env,
    }
}

/// The README's tour: a pool on every host, a volume, a VM on it, running.
fn tour(dev: &Dev, shared: &Path, hosts: usize) {
    let env = &dev.env;
    let path = shared.display().to_string();
    let host_list: Vec<String> = (1..=hosts).map(|i| format!("host-{i}")).collect();
    let create = [
        "pool",
        "create",
        "shared",
        "--path",
        &path,
        "--hosts",
        &host_list.join(","),
    ];
    qvctl_json(env, &create).expect("pool create");
    eventually("pool HEALTHY on every host", || {
        let pool = qvctl_json(env, &["pool", "show", "shared"])?;
        let healthy = pool["hosts"]
            .as_array()?
            .iter()
            .all(|h| h["health"] == "HEALTHY");
        (pool["health"] == "HEALTHY" && healthy).then_some(())
    });
    qvctl_json(
        env,
        &["volume", "create", "shared", "web.qcow2", "--size", "64M"],
    )
    .expect("volume create");
    eventually("volume ready", || {
        let volumes = qvctl_json(env, &["volume", "list", "shared"])?;
        (volumes[0]["ready"] == true).then_some(())
    });
    let create = [
        "vm",
        "create",
        "web",
        "--memory",
        "64M",
        "--disk",
        "shared/web.qcow2",
    ];
    qvctl_json(env, &[&create[..], &["--start", "--wait"]].concat()).expect("vm create");
    let vm = qvctl_json(env, &["vm", "show", "web"]).unwrap();
    assert_eq!(vm["power"], "running", "{vm}");
}

/// Ctrl-C: everything stops within 20 s and nothing stays running or mounted.
fn stop_dev(mut dev: Dev, sandbox: &Path) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let started = Instant::now();
    while dev.child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "qvdc dev did not stop within 20 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in dev.pids {
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

#[test]
fn dev_sandbox_starts_serves_and_stops_cleanly() {
    if !is_root() {
        eprintln!("skipped: not root (the tour without root is the_tour_works_without_root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    let dev = start_dev(&sandbox, 2, None);
    assert!(
        dev.printed.contains("qvctl pool create shared")
            && dev.printed.contains("qvctl vm create web"),
        "the guide shows the next steps:\n{}",
        dev.printed
    );
    let shared = sandbox.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    tour(&dev, &shared, 2);
    stop_dev(dev, &sandbox);
}

/// The sandbox as most people first try it, from their own account: its host agents run in
/// their own user and mount namespaces, and the whole tour works. Run as root (as in CI),
/// the test runs the sandbox as an unprivileged system user it creates.
#[test]
fn the_tour_works_without_root() {
    const USER: &str = "qvdc-sandbox";
    let dir = tempfile::tempdir().unwrap();
    /// Removes the user this test made when the test ends, however it ends.
    struct MadeUser(Option<&'static str>);
    impl Drop for MadeUser {
        fn drop(&mut self) {
            if let Some(user) = self.0 {
                let _ = Command::new("userdel").arg(user).status();
            }
        }
    }
    let mut made = MadeUser(None);
    let user = is_root().then(|| {
        let exists = Command::new("id")
            .arg(USER)
            .output()
            .unwrap()
            .status
            .success();
        if !exists {
            let added = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    USER,
                ])
                .status()
                .unwrap();
            assert!(added.success(), "useradd {USER}");
            made.0 = Some(USER);
        }
        let id = |flag: &str| {
            let out = Command::new("id").args([flag, USER]).output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u32>()
                .unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        USER
    });
    // Where the machine forbids unprivileged user namespaces (some container runtimes), or
    // the user cannot reach the binaries, there is nothing to try.
    let as_user = |program: &str, args: &[&str]| {
        let mut command = match user {
            Some(user) => {
                let mut command = Command::new("setpriv");
                command
                    .args([&format!("--reuid={user}"), &format!("--regid={user}")])
                    .args(["--clear-groups", "--", program]);
                command
            }
            None => Command::new(program),
        };
        command.args(args).status().is_ok_and(|s| s.success())
    };
    if !as_user("unshare", &["--user", "--map-root-user", "--mount", "true"])
        || !as_user("test", &["-x", QVDC])
    {
        assert!(
            std::env::var("QVDC_REQUIRE_REAL").as_deref() != Ok("1"),
            "QVDC_REQUIRE_REAL=1 but a user without root cannot make namespaces or run {QVDC}"
        );
        eprintln!(
            "skipped: unprivileged user namespaces are not allowed here, or {QVDC} is out of reach"
        );
        return;
    }
    let sandbox = dir.path().join("sandbox");
    let shared = dir.path().join("shared");
    let dev = start_dev(&sandbox, 2, user);
    assert!(
        dev.printed.contains("You are not root"),
        "the guide says what works without root:\n{}",
        dev.printed
    );
    // The user's own directory, as the README's `mkdir -p` makes it.
    let mkdir = match user {
        Some(user) => Command::new("setpriv")
            .args([&format!("--reuid={user}"), &format!("--regid={user}")])
            .args(["--clear-groups", "mkdir", "-p"])
            .arg(&shared)
            .status(),
        None => Command::new("mkdir").arg("-p").arg(&shared).status(),
    };
    assert!(mkdir.unwrap().success());
    tour(&dev, &shared, 2);
    stop_dev(dev, &sandbox);
}
