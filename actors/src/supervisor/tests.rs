//! The whole supervision tree in plain tests: hosts are in-memory links that record what
//! they are sent and answer as told, time is tokio's paused clock. No network, no QUIC.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use qvdc_raft::{Command, DesiredState, Outcome};
use qvdc_transport::protocol::{
    Capacity, CommandOutput, CommandResult, DesiredPower, Health, HostCommand, HostCommandKind,
    HostError, HostErrorKind, Inventory, Leadership, NetworkSpec, PoolReport, PoolScope,
    PoolSource, PoolSpec, PowerState, VmReport, VmSpec,
};
use tokio::sync::watch;

use super::ClusterMsg;
use crate::{
    core::restarts::RESTART_BACKOFF_MS_MIN, Call, CommandError, HostLink, HostReports, Link,
    Supervision, Timings,
};

const LEADERSHIP: Leadership = Leadership { term: 3, node: 1 };

/// How a fake host answers.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Done,
    NotFound,
    Never,
}

/// A host that records every command and answers as told.
struct FakeHost {
    sent: Mutex<Vec<HostCommand>>,
    answer: Mutex<Answer>,
}

impl FakeHost {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            sent: Mutex::new(Vec::new()),
            answer: Mutex::new(Answer::Done),
        })
    }

    fn kinds(&self) -> Vec<HostCommandKind> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.kind.clone())
            .collect()
    }

    fn link(self: &Arc<Self>) -> Link {
        self.clone()
    }
}

impl HostLink for FakeHost {
    fn call(&self, command: HostCommand) -> Call {
        self.sent.lock().unwrap().push(command.clone());
        let answer = *self.answer.lock().unwrap();
        Box::pin(async move {
            let outcome = match answer {
                Answer::Done => Ok(CommandOutput::Done),
                Answer::NotFound => Err(HostError::new(HostErrorKind::NotFound, "no such VM")),
                Answer::Never => return std::future::pending().await,
            };
            Ok(CommandResult {
                id: command.id,
                outcome,
            })
        })
    }
}

fn apply(state: &mut DesiredState, command: Command) {
    let outcome = state.apply(&command);
    assert!(
        matches!(outcome, Outcome::Applied),
        "{command:?}: {outcome:?}"
    );
}

/// host-1 registered; pool `p` on it, VM `web` (running) and network `lan` assigned to it.
fn desired() -> DesiredState {
    let mut state = DesiredState::default();
    let inventory = Inventory {
        hostname: "host-1".into(),
        cpu_cores: 4,
        memory_bytes: 8 << 30,
        ..Inventory::default()
    };
    apply(
        &mut state,
        Command::RegisterHost {
            host_id: "host-1".into(),
            inventory,
        },
    );
    let pool = PoolSpec {
        name: "p".into(),
        source: PoolSource::Dir {
            path: "/srv/p".into(),
        },
        scope: PoolScope::Shared,
    };
    let hosts = vec!["host-1".to_owned()];
    apply(
        &mut state,
        Command::CreatePool {
            spec: pool,
            hosts: hosts.clone(),
        },
    );
    let network = NetworkSpec {
        name: "lan".into(),
        bridge: "br-lan".into(),
        vlan: None,
        uplink: None,
    };
    apply(
        &mut state,
        Command::CreateNetwork {
            spec: network,
            hosts,
        },
    );
    let spec = VmSpec {
        id: "vm-1".into(),
        name: "web".into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
        disks: Vec::new(),
        nics: Vec::new(),
    };
    apply(
        &mut state,
        Command::CreateVm {
            spec,
            host: "host-1".into(),
            power: DesiredPower::Running,
        },
    );
    state
}

async fn tree(
    state: DesiredState,
) -> (Supervision, watch::Sender<Arc<DesiredState>>, Arc<FakeHost>) {
    let (tx, rx) = watch::channel(Arc::new(state));
    let supervision = Supervision::start(LEADERSHIP, rx, Timings::default())
        .await
        .unwrap();
    let host = FakeHost::new();
    supervision.host_connected("host-1".into(), host.link());
    settle().await;
    (supervision, tx, host)
}

/// Lets every actor handle what it was sent.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Reports whose domain list is the host's (its hypervisor answered).
fn known(reports: HostReports) -> HostReports {
    HostReports {
        vms_known: true,
        ..reports
    }
}

fn mounted(pool: &str) -> PoolReport {
    PoolReport {
        pool: pool.into(),
        mounted: true,
        mount_path: format!("/var/lib/qvdc/pools/{pool}"),
        capacity: Capacity {
            total_bytes: 10 << 30,
            used_bytes: 1 << 30,
            available_bytes: 9 << 30,
        },
        volume_count: 0,
        health: Health::Healthy,
        error: None,
    }
}

fn domain(name: &str, id: Option<&str>, power: PowerState) -> VmReport {
    VmReport {
        name: name.into(),
        id: id.map(Into::into),
        power,
        reason: "booted".into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
        uuid: format!("uuid-{name}"),
        disks: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn each_object_gets_its_commands_from_a_heartbeat_that_lacks_it() {
    let (supervision, _tx, host) = tree(desired()).await;
    supervision.heartbeat("host-1".into(), host.link(), known(HostReports::default()));
    settle().await;
    let kinds = host.kinds();
    let label = |k: &HostCommandKind| k.label();
    let labels: BTreeSet<&str> = kinds.iter().map(label).collect();
    for wanted in ["init-pool", "define-vm", "create-network"] {
        assert!(labels.contains(wanted), "{wanted} missing from {labels:?}");
    }
    // Every command of the leadership has an id of its own, and carries the leadership.
    let sent = host.sent.lock().unwrap().clone();
    let ids: BTreeSet<u64> = sent.iter().map(|c| c.id.seq).collect();
    assert_eq!(ids.len(), sent.len(), "ids repeat: {sent:?}");
    assert!(sent.iter().all(|c| c.id.leadership == LEADERSHIP));
    supervision.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pools_view_is_what_its_host_last_reported() {
    let (supervision, _tx, host) = tree(desired()).await;
    let reports = HostReports {
        pools: vec![mounted("p")],
        vms_known: true,
        ..HostReports::default()
    };
    supervision.heartbeat("host-1".into(), host.link(), reports);
    settle().await;
    let view = supervision.pool_view("p").await.unwrap().unwrap();
    assert_eq!(view.healthy_hosts, ["host-1"]);
    // Silent past the stale bound: the host's part is Unknown, never healthy.
    tokio::time::sleep(Timings::default().stale_after() + Duration::from_millis(1)).await;
    let view = supervision.pool_view("p").await.unwrap().unwrap();
    assert!(view.healthy_hosts.is_empty(), "{view:?}");
    assert_eq!(view.hosts[0].health, Health::Unknown);
    supervision.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stray_domain_is_removed_and_a_foreign_one_left_alone() {
    let (supervision, _tx, host) = tree(desired()).await;
    let reports = HostReports {
        pools: vec![mounted("p")],
        vms: vec![
            domain("web", Some("vm-1"), PowerState::Running),
            domain("old", Some("vm-0"), PowerState::Running),
            domain("theirs", None, PowerState::Running),
        ],
        vms_known: true,
        ..HostReports::default()
    };
    supervision.heartbeat("host-1".into(), host.link(), reports);
    settle().await;
    let undefined: Vec<HostCommandKind> = host
        .kinds()
        .into_iter()
        .filter(|k| matches!(k, HostCommandKind::UndefineVm { .. }))
        .collect();
    assert_eq!(
        undefined,
        [HostCommandKind::UndefineVm { name: "old".into() }]
    );
    supervision.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_deleted_vms_supervisor_stops_and_a_new_one_starts_for_a_new_vm() {
    let mut state = desired();
    let (supervision, tx, _host) = tree(state.clone()).await;
    assert!(supervision.vm_view("web").await.unwrap().is_some());
    apply(&mut state, Command::DeleteVm { name: "web".into() });
    tx.send(Arc::new(state)).unwrap();
    settle().await;
    assert!(supervision.vm_view("web").await.unwrap().is_none());
    supervision.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_child_is_restarted_after_its_backoff() {
    let (supervision, _tx, _host) = tree(desired()).await;
    let vms = supervision.children(ClusterMsg::Vms).await.unwrap();
    vms["web"].kill();
    settle().await;
    assert!(
        supervision.vm_view("web").await.unwrap().is_none(),
        "restarted before its backoff"
    );
    tokio::time::sleep(Duration::from_millis(RESTART_BACKOFF_MS_MIN)).await;
    settle().await;
    let view = supervision.vm_view("web").await.unwrap();
    assert!(view.is_some(), "not restarted");
    let again = supervision.children(ClusterMsg::Vms).await.unwrap();
    assert_ne!(again["web"].get_id(), vms["web"].get_id());
    supervision.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_operators_command_keeps_the_hosts_typed_error() {
    let (supervision, _tx, host) = tree(desired()).await;
    *host.answer.lock().unwrap() = Answer::NotFound;
    let reboot = HostCommandKind::RebootVm {
        name: "web".into(),
        request: "r-1".into(),
    };
    match supervision.execute("host-1", reboot).await {
        Err(CommandError::Host(e)) => assert_eq!(e.kind, HostErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
    let unknown = HostCommandKind::RebootVm {
        name: "web".into(),
        request: "r-1".into(),
    };
    assert_eq!(
        supervision.execute("host-9", unknown).await,
        Err(CommandError::NoSupervisor("host-9".into()))
    );
    supervision.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_host_that_never_answers_times_out() {
    let (supervision, _tx, host) = tree(desired()).await;
    *host.answer.lock().unwrap() = Answer::Never;
    let reboot = HostCommandKind::RebootVm {
        name: "web".into(),
        request: "r-1".into(),
    };
    let timeout_ms = Timings::default().command_timeout_ms;
    assert_eq!(
        supervision.execute("host-1", reboot).await,
        Err(CommandError::NoAnswer(timeout_ms))
    );
    supervision.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_host_that_cannot_list_its_domains_gets_no_vm_commands_and_no_removals() {
    let (supervision, _tx, host) = tree(desired()).await;
    let unknown = HostReports {
        pools: vec![mounted("p")],
        vms: Vec::new(),
        vms_known: false,
        ..HostReports::default()
    };
    supervision.heartbeat("host-1".into(), host.link(), unknown);
    settle().await;
    let vm_commands: Vec<HostCommandKind> = host
        .kinds()
        .into_iter()
        .filter(|k| {
            matches!(
                k,
                HostCommandKind::DefineVm(_)
                    | HostCommandKind::StartVm { .. }
                    | HostCommandKind::UndefineVm { .. }
            )
        })
        .collect();
    assert_eq!(
        vm_commands,
        [],
        "an empty list that says nothing was taken as the truth"
    );
    supervision.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_gives_a_host_it_has_not_heard_from_one_liveness_bound() {
    // A new leadership's tree: host-1 is known from the desired state and has not reached
    // this leader yet (it is finding it after the election).
    let (_tx, rx) = watch::channel(Arc::new(desired()));
    let supervision = Supervision::start(LEADERSHIP, rx, Timings::default())
        .await
        .unwrap();
    settle().await;
    let liveness = supervision.liveness().await.unwrap();
    assert_eq!(
        liveness.get("host-1"),
        Some(&qvdc_transport::protocol::Liveness::Ready),
        "a host is not shown lost before a new leader could have heard from it"
    );
    // Still nothing once the bound has passed: now it is lost.
    tokio::time::sleep(Timings::default().stale_after() + Duration::from_millis(1)).await;
    let liveness = supervision.liveness().await.unwrap();
    assert_eq!(
        liveness.get("host-1"),
        Some(&qvdc_transport::protocol::Liveness::Unreachable)
    );
    supervision.stop().await;
}
