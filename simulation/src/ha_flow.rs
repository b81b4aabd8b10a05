//! HA in the simulation (ADR 23): VMs restarted elsewhere when their host is lost, and
//! never running twice. Four hosts share a pool; then:
//!
//! 1. host-2 is isolated from the control plane with an HA VM: it fences itself (the guest
//!    is stopped there) before the VM starts elsewhere, so the storage lock never has to
//!    refuse the second start; once the isolation heals it holds no domain of the VM;
//! 2. host-1 loses power with three HA VMs on it, and the leader crashes two seconds later:
//!    the new leader waits a full lease, then the VMs run on other hosts, each within 20 s
//!    of the power loss and none before the lease could have lapsed;
//! 3. host-3's agent is killed while its HA VM runs on: the leader moves the VM, but the
//!    shared pool's lock refuses the second start while the first guest lives; once the
//!    agent is back it removes its copy without starting it, and the VM runs at its new
//!    host.
//!
//! The fact invariants (a VM never runs on two hosts at once; the storage lock refuses a
//! start only for a guest nothing could stop) watch every step; with the deliberate bug
//! `restart-before-the-lease-lapses`, step 1 restarts the VM while host-2 still runs it.

use std::{sync::Arc, time::Duration};

use anyhow::ensure;
use qvdc_cluster::Client;
use qvdc_transport::protocol::{
    ApiRequest, HaPolicy, IsolationResponse, PowerState, VmSpec, HOST_LEASE_MS,
};
use tokio::time::Instant;

use crate::{
    harness::{self, ask, change, eventually, host_domains, shared_disk, vm_view, Action, Faults},
    world::{self, Certs, Shared, SimConfig},
};

const POOL: &str = "shared";
/// The VMs of the power loss.
const POWER_LOSS_VMS: [&str; 3] = ["db", "web", "cache"];
/// The VM of the isolation.
const ISOLATED_VM: &str = "edge";
/// The VM whose host's agent dies.
const ORPHAN_VM: &str = "batch";
/// The target: every HA VM runs again within this long of its host's loss.
const RESTART_BOUND: Duration = Duration::from_secs(20);

/// What a run measured, in simulated time.
#[derive(Debug)]
pub struct Outcome {
    pub trace: Vec<String>,
    pub trace_hash: u64,
    /// From host-1's power loss to each of its VMs running elsewhere.
    pub restarts: Vec<Duration>,
    /// From host-2's isolation to its VM running elsewhere.
    pub isolation_restart: Duration,
}

pub fn run(config: &SimConfig) -> anyhow::Result<Outcome> {
    let config = SimConfig {
        hosts: 4,
        ..config.clone()
    };
    let run = harness::run(&config, script)?;
    let (restarts, isolation_restart) = run.value;
    Ok(Outcome {
        trace: run.trace,
        trace_hash: run.trace_hash,
        restarts,
        isolation_restart,
    })
}

async fn create_vm(
    client: &mut Client,
    name: &str,
    host: &str,
    disk: Option<&str>,
    isolation: IsolationResponse,
) -> anyhow::Result<()> {
    let disks = match disk {
        Some(volume) => vec![shared_disk(client, POOL, volume).await?],
        None => Vec::new(),
    };
    let create = ApiRequest::VmCreateHa {
        request_id: client.new_request_id(),
        spec: VmSpec {
            id: String::new(),
            name: name.into(),
            vcpus: 1,
            memory_bytes: 1 << 30,
            disks,
            nics: Vec::new(),
        },
        host: Some(host.into()),
        start: true,
        ha: HaPolicy {
            restart: true,
            priority: 0,
            isolation,
        },
    };
    ask(client, create).await?;
    eventually("VM running", Duration::from_secs(60), async || {
        Ok((vm_view(client, name).await?.power == PowerState::Running).then_some(()))
    })
    .await
}

/// Waits until `name` runs on a host other than `from` and returns that host and when.
async fn runs_elsewhere(
    client: &mut Client,
    name: &str,
    from: &str,
) -> anyhow::Result<(String, Instant)> {
    eventually(
        "VM running elsewhere",
        Duration::from_secs(60),
        async || {
            let view = vm_view(client, name).await?;
            let moved = view.host != from && view.power == PowerState::Running;
            Ok(moved.then(|| (view.host, Instant::now())))
        },
    )
    .await
}

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let mut client = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    harness::all_hosts_ready(&mut client, config.hosts).await?;
    let hosts: Vec<String> = (1..=config.hosts).map(SimConfig::host_name).collect();
    let pool = ApiRequest::PoolCreate {
        request_id: client.new_request_id(),
        spec: world::dir_pool(POOL),
        hosts: hosts.clone(),
    };
    ask(&mut client, pool).await?;
    let power_off = IsolationResponse::PowerOff;
    for name in POWER_LOSS_VMS {
        let disk = format!("{name}.qcow2");
        create_vm(&mut client, name, "host-1", Some(&disk), power_off).await?;
    }
    let isolated_disk = format!("{ISOLATED_VM}.qcow2");
    create_vm(
        &mut client,
        ISOLATED_VM,
        "host-2",
        Some(&isolated_disk),
        power_off,
    )
    .await?;
    let orphan_disk = format!("{ORPHAN_VM}.qcow2");
    let keep = IsolationResponse::Keep;
    create_vm(&mut client, ORPHAN_VM, "host-3", Some(&orphan_disk), keep).await?;

    // 1. host-2 is isolated with a VM that has no disk to lock.
    let links: Vec<(String, String)> = (1..=config.nodes)
        .map(|i| ("host-2".to_owned(), SimConfig::node_name(i)))
        .collect();
    let isolated = Instant::now();
    change(&faults, Action::Partition(links.clone()));
    let (to, at) = runs_elsewhere(&mut client, ISOLATED_VM, "host-2").await?;
    let isolation_restart = at.saturating_duration_since(isolated);
    let left = host_domains(&faults, "host-2");
    ensure!(
        left.get(ISOLATED_VM) != Some(&PowerState::Running),
        "{ISOLATED_VM} runs on {to} and still on isolated host-2: {left:?}"
    );
    change(&faults, Action::Repair(links));
    eventually(
        "the isolated host holds no stale domain",
        Duration::from_secs(60),
        async || Ok((!host_domains(&faults, "host-2").contains_key(ISOLATED_VM)).then_some(())),
    )
    .await?;

    // 2. host-1 loses power; the leader crashes 2 s later.
    let lost = Instant::now();
    change(&faults, Action::Crash("host-1".into()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let disrupted = harness::take_leader_away(&config, &certs, &mut client, &faults).await?;
    let mut majority = disrupted.majority;
    let mut restarts = Vec::new();
    for name in POWER_LOSS_VMS {
        let (to, at) = runs_elsewhere(&mut majority, name, "host-1").await?;
        let took = at.saturating_duration_since(lost);
        ensure!(
            took >= Duration::from_millis(HOST_LEASE_MS),
            "{name} ran on {to} {took:?} after its host was lost: before the host's lease could lapse"
        );
        ensure!(
            took <= RESTART_BOUND,
            "{name} ran on {to} only {took:?} after its host was lost"
        );
        restarts.push(took);
    }
    harness::bring_back(&config, &faults, disrupted.machine);
    change(&faults, Action::Restart("host-1".into()));

    // 3. host-3's agent dies; its guest runs on.
    change(&faults, Action::KillAgent("host-3".into()));
    let moved = eventually(
        "the orphaned VM moved to another host",
        Duration::from_secs(60),
        async || {
            let view = vm_view(&mut majority, ORPHAN_VM).await?;
            Ok((view.host != "host-3").then_some(view.host))
        },
    )
    .await?;
    // Give the new host time to try: the lock must refuse it while the first guest runs.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let still = host_domains(&faults, "host-3");
    ensure!(
        still.get(ORPHAN_VM) == Some(&PowerState::Running),
        "the dead agent's guest should still run: {still:?}"
    );
    let there = host_domains(&faults, &moved);
    ensure!(
        there.get(ORPHAN_VM) != Some(&PowerState::Running),
        "{ORPHAN_VM} runs on {moved} while its first guest still runs on host-3"
    );
    change(&faults, Action::Restart("host-3".into()));
    eventually(
        "the orphaned VM runs at its new host",
        Duration::from_secs(90),
        async || {
            let view = vm_view(&mut majority, ORPHAN_VM).await?;
            let gone = !host_domains(&faults, "host-3").contains_key(ORPHAN_VM);
            Ok((gone && view.power == PowerState::Running).then_some(()))
        },
    )
    .await?;

    harness::nodes_agree(&config, &certs).await?;
    Ok((restarts, isolation_restart))
}
