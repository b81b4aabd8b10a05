//! A rolling upgrade from the previous release to this build, with real processes: three
//! `qvdc server`s and a `qhost` of the previous release run the operator flow; while a
//! client keeps writing, each node is stopped and started again with this build's binary
//! (followers first, then the leader), then the host. Every acknowledged write must be
//! there at the end, the host must keep its VM, and each node's downtime (the longest write
//! while it restarted) is printed.
//!
//! The previous release's binaries come from `scripts/previous-release.sh`, which builds the
//! newest `v*` tag; `scripts/test.sh` runs it and sets `QVDC_PREVIOUS_RELEASE`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use qvdc_transport::{
    protocol::{ApiRequest, ApiResponse, Liveness},
    tls::Role,
};

mod support;

use support::{dir_pool, small_vm, until, vm_runs, Nodes, Reaped, NODES, QVDC};

const OPERATOR: &str = "admin";
/// How long a host gets to register or report.
const LIMIT: Duration = Duration::from_secs(60);

/// The previous release's binaries, or `None` (and the test is skipped) when they were not
/// built and the run does not require every test.
fn previous_release() -> Option<PathBuf> {
    match std::env::var_os("QVDC_PREVIOUS_RELEASE") {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var_os("QVDC_REQUIRE_REAL").is_some() => panic!(
            "QVDC_PREVIOUS_RELEASE is not set: run `scripts/previous-release.sh` and set it to \
             the directory it prints"
        ),
        None => {
            eprintln!("skipped: set QVDC_PREVIOUS_RELEASE (scripts/previous-release.sh)");
            None
        }
    }
}

fn stop(host: &mut Reaped) {
    let _ = Command::new("kill")
        .args(["-TERM", &host.0.id().to_string()])
        .status();
    let _ = host.0.wait();
}

fn host_ready(response: &ApiResponse) -> bool {
    matches!(response, ApiResponse::Hosts(hosts)
        if hosts.iter().any(|h| h.host_id == "host-1" && h.liveness == Liveness::Ready))
}

fn pool(name: &str) -> ApiRequest {
    // A registered host that never heartbeats: the writes are about the control plane.
    // (Assigned to host-1, a thousand pools would stop it heartbeating: a host reports at
    // most `POOL_REPORTS_MAX` pools and nothing keeps more from being assigned to it.)
    dir_pool(name, &["bulk"])
}

/// One write: when it started, how long it took, and the pool it created if acknowledged.
type Write = (Instant, Duration, Option<String>);

fn longest_between(writes: &[Write], from: Instant, to: Instant) -> Duration {
    writes
        .iter()
        .filter(|(started, took, _)| *started + *took >= from && *started <= to)
        .map(|(_, took, _)| *took)
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_from_the_previous_release_loses_no_acknowledged_write() {
    let Some(previous) = previous_release() else {
        return;
    };
    let current_qhost = Path::new(QVDC).with_file_name("qhost");
    let mut nodes = Nodes::start_release(
        &previous.join("qvdc"),
        &[
            (Role::Operator, OPERATOR),
            (Role::Host, "host-1"),
            (Role::Host, "bulk"),
        ],
        true,
        &[],
    );
    nodes.register_host("bulk").await;
    let mut host = nodes.start_test_host(&previous.join("qhost"));
    let mut client = nodes.client(OPERATOR, &[1, 2, 3], Duration::from_secs(20));
    until(
        &mut client,
        "host-1 registers",
        ApiRequest::HostList,
        LIMIT,
        host_ready,
    )
    .await;
    client.request(small_vm("kept", "host-1")).await.unwrap();
    let version = |binary: &Path| {
        let out = Command::new(binary).arg("--version").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    eprintln!(
        "from {} to {}",
        version(&previous.join("qvdc")),
        version(Path::new(QVDC))
    );
    let show = ApiRequest::VmShow {
        name: "kept".into(),
    };
    until(&mut client, "VM kept runs", show.clone(), LIMIT, vm_runs).await;

    // A client writes without pause through the whole upgrade.
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writes: Arc<Mutex<Vec<Write>>> = Arc::default();
    let writer = {
        let (stop_writing, writes) = (stop_writing.clone(), writes.clone());
        let mut client = nodes.client(OPERATOR, &[1, 2, 3], Duration::from_secs(10));
        tokio::spawn(async move {
            let mut i = 0;
            while !stop_writing.load(Ordering::SeqCst) {
                let name = format!("during-{i}");
                let started = Instant::now();
                let acknowledged = client.request(pool(&name)).await.is_ok();
                let entry = (started, started.elapsed(), acknowledged.then_some(name));
                writes.lock().unwrap().push(entry);
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Followers first, the leader last: one election in all while the old release leads.
    let leader = match client.request(ApiRequest::ClusterStatus).await {
        Ok(ApiResponse::ClusterStatus(status)) => status.leader.expect("a leader") as usize,
        other => panic!("status: {other:?}"),
    };
    let mut order: Vec<usize> = (1..=NODES).filter(|id| *id != leader).collect();
    order.push(leader);
    eprintln!("leader: node {leader}; upgrade order {order:?}");
    let mut windows = Vec::new();
    for id in order {
        let from = Instant::now();
        nodes.signal(id, "-TERM");
        while nodes.alive(id) {
            assert!(
                from.elapsed() < Duration::from_secs(10),
                "node {id} did not stop"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        nodes.kill_if_exited(id);
        nodes.set_binary(id, Path::new(QVDC));
        nodes.restart(id);
        // The node is back once it answers with a leader it follows and its applied state
        // has caught up with what was written meanwhile.
        let mut own = nodes.client(OPERATOR, &[id], Duration::from_secs(5));
        let target = writes.lock().unwrap().len();
        loop {
            let status = own
                .request(ApiRequest::Stale(Box::new(ApiRequest::ClusterStatus)))
                .await;
            let written = writes.lock().unwrap().len();
            if let Ok(ApiResponse::ClusterStatus(status)) = status {
                if status.leader.is_some() && written > target + 5 {
                    break;
                }
            }
            assert!(
                from.elapsed() < Duration::from_secs(60),
                "node {id} did not come back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        windows.push((format!("node {id}"), from, Instant::now()));
    }

    // Then the host: its VM keeps running, and the new agent reports it.
    let from = Instant::now();
    stop(&mut host);
    host = nodes.start_test_host(&current_qhost);
    // The new agent carries out a new command, and keeps the VM it was given running.
    client.request(small_vm("after", "host-1")).await.unwrap();
    let after = ApiRequest::VmShow {
        name: "after".into(),
    };
    until(
        &mut client,
        "the upgraded host runs a new VM",
        after,
        LIMIT,
        vm_runs,
    )
    .await;
    until(
        &mut client,
        "the upgraded host reports its VM",
        show,
        LIMIT,
        vm_runs,
    )
    .await;
    windows.push(("host-1".into(), from, Instant::now()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_writing.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    let writes = writes.lock().unwrap().clone();
    let acknowledged: Vec<&String> = writes
        .iter()
        .filter_map(|(_, _, name)| name.as_ref())
        .collect();
    let unanswered = writes.len() - acknowledged.len();
    let stored: Vec<String> = match client.request(ApiRequest::PoolList).await {
        Ok(ApiResponse::Pools(pools)) => pools.into_iter().map(|p| p.spec.name).collect(),
        other => panic!("pool list: {other:?}"),
    };
    let lost: Vec<&&String> = acknowledged
        .iter()
        .filter(|n| !stored.contains(n))
        .collect();
    for (what, from, to) in &windows {
        eprintln!(
            "upgrade of {what}: {} ms until back, longest write meanwhile {} ms",
            to.duration_since(*from).as_millis(),
            longest_between(&writes, *from, *to).as_millis()
        );
    }
    eprintln!(
        "{} writes during the upgrade: {} acknowledged, {unanswered} unanswered, {} lost",
        writes.len(),
        acknowledged.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(acknowledged.len() > 100, "the cluster kept taking writes");
    match client.request(ApiRequest::ClusterStatus).await {
        Ok(ApiResponse::ClusterStatus(status)) => {
            assert_eq!(status.members.len(), NODES, "{status:?}");
        }
        other => panic!("status: {other:?}"),
    }
    stop(&mut host);
    // Every node ran this build on its old data directory, which it migrated.
    for id in 1..=NODES {
        nodes.kill(id);
        let file = nodes.dir.path().join(format!("node-{id}/raft.redb"));
        // redb's own open repairs the killed node's file without touching its format.
        let database = qvdc_raft::store::Database::open(&file).unwrap();
        assert_eq!(
            qvdc_raft::store::storage_format(&database, "").unwrap(),
            Some(qvdc_raft::store::STORAGE_FORMAT),
            "node {id}"
        );
    }
    // The previous release cannot be started on a migrated directory: it would find its
    // log table empty (storage format 4 moved the log to raft-log/, ADR 34) and lose what
    // the log held. It must refuse to start instead.
    nodes.set_binary(1, &previous.join("qvdc"));
    nodes.restart(1);
    let started = Instant::now();
    while !nodes.kill_if_exited(1) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the previous release runs on a data directory in storage format {}",
            qvdc_raft::store::STORAGE_FORMAT
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let said = std::fs::read_to_string(nodes.dir.path().join("node-1.log")).unwrap();
    assert!(
        said.contains("stored record is corrupt"),
        "the previous release stopped for another reason than the log it cannot read: {}",
        &said[said.len().saturating_sub(2000)..]
    );
}
