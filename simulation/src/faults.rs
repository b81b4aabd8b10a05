//! The chaos phase: faults drawn from the run's seed, each undone after a drawn duration,
//! until the phase ends and everything is healed.
//!
//! Faults act on the world (crashes, partitions, held links, lossy links) through the
//! harness, which applies them between steps; inside hosts through the live handles of their
//! simulated mounter and hypervisor; and on nodes through their disk latency. Each injection
//! is a trace event, so a replay shows what hit the system and when.

use std::{collections::BTreeSet, time::Duration};

use qvdc_host::{SimHypervisor, SimMounter};
use qvdc_raft::store::DiskLatency;
use qvdc_transport::{protocol::PowerState, sim::Impairment};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::time::Instant;
use tracing::info;

use crate::{
    harness::{Action, Faults},
    world::{Shared, SimConfig},
};

/// A kind of fault the chaos phase can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum FaultKind {
    /// A control-plane node crashes; it restarts with what it had committed.
    NodeCrash,
    /// A control-plane node is stopped on purpose (a leader hands leadership over first),
    /// then started again.
    NodeStop,
    /// A control-plane node is cut off from the other nodes, both ways.
    NodePartition,
    /// A control-plane node stops hearing the other nodes, which still hear it.
    AsymmetricPartition,
    /// A host crashes (its guests with it) and reboots.
    HostCrash,
    /// A host is cut off from every control-plane node.
    HostPartition,
    /// Datagrams between a node and the machines it talks to are held, then delivered at once.
    DelaySpike,
    /// Every link loses 5% and duplicates 2% of its datagrams.
    PacketLoss,
    /// New mounts on a host fail with "Connection refused".
    MountFailure,
    /// Calls into a host's mounted filesystems hang, as with a dead NFS server.
    MountHang,
    /// Every libvirt call on a host fails.
    LibvirtError,
    /// Every libvirt call on a host hangs, as when libvirtd is stopped.
    LibvirtHang,
    /// A control-plane node's disk turns slow: each commit of its Raft log waits 20–300 ms.
    SlowDisk,
    /// A host loses power for long enough to be lost (its guests with it): HA restarts its
    /// VMs elsewhere; it boots empty later.
    HostPowerLoss,
    /// A host is cut off from every control-plane node for long enough to be lost, while it
    /// and its guests run on: it must fence itself before its VMs start elsewhere.
    HostIsolation,
    /// A host's agent dies (`kill -9`) while its guests run on, and is restarted later.
    AgentKill,
}

impl FaultKind {
    pub const ALL: [FaultKind; 16] = [
        FaultKind::NodeCrash,
        FaultKind::NodePartition,
        FaultKind::AsymmetricPartition,
        FaultKind::HostCrash,
        FaultKind::HostPartition,
        FaultKind::DelaySpike,
        FaultKind::PacketLoss,
        FaultKind::MountFailure,
        FaultKind::MountHang,
        FaultKind::LibvirtError,
        FaultKind::SlowDisk,
        FaultKind::LibvirtHang,
        FaultKind::NodeStop,
        FaultKind::HostPowerLoss,
        FaultKind::HostIsolation,
        FaultKind::AgentKill,
    ];

    /// What the fault occupies: two faults on one thing are never in effect at once, so
    /// undoing one cannot undo the other.
    fn slot(self) -> Slot {
        match self {
            FaultKind::NodeCrash | FaultKind::NodeStop => Slot::Nodes,
            FaultKind::NodePartition
            | FaultKind::AsymmetricPartition
            | FaultKind::HostPartition
            | FaultKind::HostIsolation
            | FaultKind::DelaySpike => Slot::Links,
            FaultKind::PacketLoss => Slot::Loss,
            FaultKind::SlowDisk => Slot::Disk,
            FaultKind::HostCrash
            | FaultKind::HostPowerLoss
            | FaultKind::AgentKill
            | FaultKind::MountFailure
            | FaultKind::MountHang
            | FaultKind::LibvirtError
            | FaultKind::LibvirtHang => Slot::Host,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    /// At most one node is down, so a quorum remains and the workload makes progress.
    Nodes,
    /// One network fault at a time (turmoil keeps one state per link).
    Links,
    Loss,
    /// One slow disk at a time.
    Disk,
    /// One fault per host; the host is part of the slot.
    Host,
}

/// The chaos phase of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chaos {
    /// The faults drawn from; empty: none.
    pub kinds: BTreeSet<FaultKind>,
    /// How long faults are injected before everything heals.
    pub duration: Duration,
}

/// Simulated length of the chaos phase by default.
pub const CHAOS_MS_DEFAULT: u64 = 20_000;
/// A new fault is drawn every so often (uniform between these bounds).
const FAULT_GAP_MS: (u64, u64) = (100, 1_000);
/// How long a fault stays (uniform between these bounds).
const FAULT_MS: (u64, u64) = (200, 6_000);
/// How long a host stays lost: past HA's bound (12 s), by up to 14 s.
const HOST_LOST_MS: (u64, u64) = (14_000, 26_000);
/// How long a killed agent stays dead: sometimes past HA's bound, mostly not.
const AGENT_DEAD_MS: (u64, u64) = (1_000, 16_000);
/// How long a delay spike holds datagrams (uniform between these bounds).
const SPIKE_MS: (u64, u64) = (50, 1_500);
/// How long a slow disk makes each log commit wait (uniform between these bounds).
const SLOW_DISK_MS: (u64, u64) = (20, 300);
/// Hosts down or faulted at the same time, at most.
const HOSTS_FAULTED_MAX: usize = 3;
const LOSS: Impairment = Impairment {
    loss_per_mille: 50,
    duplicate_per_mille: 20,
};

impl Default for Chaos {
    fn default() -> Self {
        Self {
            kinds: FaultKind::ALL.into_iter().collect(),
            duration: Duration::from_millis(CHAOS_MS_DEFAULT),
        }
    }
}

/// How a fault in effect is undone.
enum Undo {
    Actions(Vec<Action>),
    Mounts(SimMounter),
    Unhang(SimMounter),
    Hypervisor(SimHypervisor),
    HypervisorHang(SimHypervisor),
    Disk(DiskLatency),
}

struct Active {
    until: Instant,
    /// A host lost for longer than HA waits: kept past the chaos phase's end.
    lost: bool,
    slot: Slot,
    /// The host a host fault is on.
    host: Option<String>,
    undo: Undo,
}

/// What the chaos phase did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FaultLog {
    pub injected: usize,
}

/// Injects faults drawn from the seed until `config.chaos.duration` has passed, then undoes
/// every fault still in effect and heals every link.
pub(crate) async fn drive(config: &SimConfig, faults: &Shared<Faults>) -> FaultLog {
    let kinds: Vec<FaultKind> = config.chaos.kinds.iter().copied().collect();
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0xc4a0_5c4a_05c4_a05c);
    let end = Instant::now() + config.chaos.duration;
    let mut active: Vec<Active> = Vec::new();
    let mut log = FaultLog::default();
    while !kinds.is_empty() {
        let gap = rng.gen_range(FAULT_GAP_MS.0..=FAULT_GAP_MS.1);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let now = Instant::now();
        let (expired, kept) = active.into_iter().partition(|a| a.until <= now);
        active = kept;
        undo(faults, expired);
        if now >= end {
            break;
        }
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let busy_hosts: BTreeSet<String> = active.iter().filter_map(|a| a.host.clone()).collect();
        let free = match kind.slot() {
            Slot::Host => busy_hosts.len() < HOSTS_FAULTED_MAX,
            slot => active.iter().all(|a| a.slot != slot),
        };
        if !free {
            continue;
        }
        let lasting = Duration::from_millis(rng.gen_range(FAULT_MS.0..=FAULT_MS.1));
        if let Some(fault) = inject(config, faults, &mut rng, kind, &busy_hosts) {
            log.injected += 1;
            active.push(Active {
                until: now + fault.1.unwrap_or(lasting),
                lost: matches!(kind, FaultKind::HostPowerLoss | FaultKind::HostIsolation),
                slot: kind.slot(),
                host: fault.2,
                undo: fault.0,
            });
        }
    }
    // A host lost for good stays lost for its whole draw, so that HA acts on it (under a
    // leader that has lasted long enough to count the host's silence); the rest heals now.
    let (lost, rest): (Vec<Active>, Vec<Active>) = active.into_iter().partition(|a| a.lost);
    undo(faults, rest);
    if let Some(until) = lost.iter().map(|a| a.until).max() {
        tokio::time::sleep_until(until).await;
    }
    undo(faults, lost);
    faults
        .lock()
        .expect("faults lock poisoned")
        .actions
        .push(Action::HealNetwork);
    info!("chaos over: every fault undone");
    log
}

/// Injects one fault of `kind`: its undo, how long it lasts if not the default, and the host
/// it is on.
fn inject(
    config: &SimConfig,
    faults: &Shared<Faults>,
    rng: &mut StdRng,
    kind: FaultKind,
    busy_hosts: &BTreeSet<String>,
) -> Option<(Undo, Option<Duration>, Option<String>)> {
    let node = SimConfig::node_name(rng.gen_range(1..=config.nodes));
    let others: Vec<String> = (1..=config.nodes)
        .map(SimConfig::node_name)
        .filter(|n| *n != node)
        .collect();
    let free_hosts: Vec<String> = (1..=config.hosts)
        .map(SimConfig::host_name)
        .filter(|h| !busy_hosts.contains(h))
        .collect();
    let mut requested = faults.lock().expect("faults lock poisoned");
    // A host is lost where it matters: one that runs VMs (none yet: another fault instead).
    let hosts_running_vms: Vec<String> = match kind {
        FaultKind::HostPowerLoss | FaultKind::HostIsolation | FaultKind::AgentKill => free_hosts
            .iter()
            .filter(|h| {
                requested.hosts.get(*h).is_some_and(|parts| {
                    parts.hypervisor.domains().iter().any(|(name, power)| {
                        name != crate::world::UNMANAGED_DOMAIN && *power == PowerState::Running
                    })
                })
            })
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let losing = matches!(
        kind,
        FaultKind::HostPowerLoss | FaultKind::HostIsolation | FaultKind::AgentKill
    );
    if losing && hosts_running_vms.is_empty() {
        return None;
    }
    let pick_from = if losing {
        &hosts_running_vms
    } else {
        &free_hosts
    };
    let host =
        (!pick_from.is_empty()).then(|| pick_from[rng.gen_range(0..pick_from.len())].clone());
    let pairs = |a: &str, to: &[String]| -> Vec<(String, String)> {
        to.iter().map(|b| (a.to_owned(), b.clone())).collect()
    };
    let all_nodes: Vec<String> = (1..=config.nodes).map(SimConfig::node_name).collect();
    let (undo, lasting, on_host) = match kind {
        FaultKind::NodeCrash => {
            requested.actions.push(Action::Crash(node.clone()));
            info!(fault = "node-crash", machine = %node, "fault injected");
            (Undo::Actions(vec![Action::Restart(node)]), None, None)
        }
        FaultKind::NodeStop => {
            if let Some(stop) = requested.stops.get(&node) {
                stop.notify_one();
            }
            info!(fault = "node-stop", machine = %node, "fault injected");
            (Undo::Actions(vec![Action::Restart(node)]), None, None)
        }
        FaultKind::NodePartition => {
            let links = pairs(&node, &others);
            requested.actions.push(Action::Partition(links.clone()));
            info!(fault = "node-partition", machine = %node, "fault injected");
            (Undo::Actions(vec![Action::Repair(links)]), None, None)
        }
        FaultKind::AsymmetricPartition => {
            // The others' messages to `node` are lost; its own still arrive.
            let links: Vec<(String, String)> =
                others.iter().map(|o| (o.clone(), node.clone())).collect();
            requested
                .actions
                .push(Action::PartitionOneway(links.clone()));
            info!(fault = "asymmetric-partition", machine = %node, "fault injected");
            (Undo::Actions(vec![Action::RepairOneway(links)]), None, None)
        }
        FaultKind::HostCrash => {
            let host = host?;
            requested.actions.push(Action::Crash(host.clone()));
            info!(fault = "host-crash", machine = %host, "fault injected");
            (
                Undo::Actions(vec![Action::Restart(host.clone())]),
                None,
                Some(host),
            )
        }
        FaultKind::HostPowerLoss => {
            let host = host?;
            requested.actions.push(Action::Crash(host.clone()));
            let lasting = rng.gen_range(HOST_LOST_MS.0..=HOST_LOST_MS.1);
            info!(fault = "host-power-loss", machine = %host, lasting_ms = lasting, "fault injected");
            (
                Undo::Actions(vec![Action::Restart(host.clone())]),
                Some(Duration::from_millis(lasting)),
                Some(host),
            )
        }
        FaultKind::HostIsolation => {
            let host = host?;
            let links = pairs(&host, &all_nodes);
            requested.actions.push(Action::Partition(links.clone()));
            let lasting = rng.gen_range(HOST_LOST_MS.0..=HOST_LOST_MS.1);
            info!(fault = "host-isolation", machine = %host, lasting_ms = lasting, "fault injected");
            (
                Undo::Actions(vec![Action::Repair(links)]),
                Some(Duration::from_millis(lasting)),
                Some(host),
            )
        }
        FaultKind::AgentKill => {
            let host = host?;
            requested.actions.push(Action::KillAgent(host.clone()));
            let lasting = rng.gen_range(AGENT_DEAD_MS.0..=AGENT_DEAD_MS.1);
            info!(fault = "agent-kill", machine = %host, lasting_ms = lasting, "fault injected");
            (
                Undo::Actions(vec![Action::Restart(host.clone())]),
                Some(Duration::from_millis(lasting)),
                Some(host),
            )
        }
        FaultKind::HostPartition => {
            let host = host?;
            let links = pairs(&host, &all_nodes);
            requested.actions.push(Action::Partition(links.clone()));
            info!(fault = "host-partition", machine = %host, "fault injected");
            (Undo::Actions(vec![Action::Repair(links)]), None, None)
        }
        FaultKind::DelaySpike => {
            let mut to = others.clone();
            to.extend((1..=config.hosts).map(SimConfig::host_name));
            to.push(crate::world::OPERATOR_MACHINE.to_owned());
            let links = pairs(&node, &to);
            requested.actions.push(Action::Hold(links.clone()));
            let held = rng.gen_range(SPIKE_MS.0..=SPIKE_MS.1);
            info!(fault = "delay-spike", machine = %node, held_ms = held, "fault injected");
            (
                Undo::Actions(vec![Action::Release(links)]),
                Some(Duration::from_millis(held)),
                None,
            )
        }
        FaultKind::PacketLoss => {
            requested.actions.push(Action::Impair(LOSS));
            info!(fault = "packet-loss", "fault injected");
            let off = Impairment::default();
            (Undo::Actions(vec![Action::Impair(off)]), None, None)
        }
        FaultKind::SlowDisk => {
            let disk = requested.disks.get(&node)?.clone();
            let slow = rng.gen_range(SLOW_DISK_MS.0..=SLOW_DISK_MS.1);
            disk.set(Duration::from_millis(slow));
            info!(fault = "slow-disk", machine = %node, commit_ms = slow, "fault injected");
            (Undo::Disk(disk), None, None)
        }
        FaultKind::MountFailure
        | FaultKind::MountHang
        | FaultKind::LibvirtError
        | FaultKind::LibvirtHang => {
            let host = host?;
            let parts = requested.hosts.get(&host)?.clone();
            let undo = match kind {
                FaultKind::MountFailure => {
                    parts
                        .mounter
                        .set_mount_failure(Some("Connection refused (os error 111)".into()));
                    Undo::Mounts(parts.mounter)
                }
                FaultKind::MountHang => {
                    parts.mounter.set_hung(true);
                    Undo::Unhang(parts.mounter)
                }
                FaultKind::LibvirtHang => {
                    parts.hypervisor.set_hung(true);
                    Undo::HypervisorHang(parts.hypervisor)
                }
                _ => {
                    parts.hypervisor.set_failure(Some(
                        "internal error: libvirt connection lost (simulated)".into(),
                    ));
                    Undo::Hypervisor(parts.hypervisor)
                }
            };
            let name = match kind {
                FaultKind::MountFailure => "mount-failure",
                FaultKind::MountHang => "mount-hang",
                FaultKind::LibvirtHang => "libvirt-hang",
                _ => "libvirt-error",
            };
            info!(fault = name, machine = %host, "fault injected");
            (undo, None, Some(host))
        }
    };
    Some((undo, lasting, on_host))
}

fn undo(faults: &Shared<Faults>, done: Vec<Active>) {
    let mut requested = faults.lock().expect("faults lock poisoned");
    for active in done {
        match active.undo {
            Undo::Actions(actions) => requested.actions.extend(actions),
            Undo::Mounts(mounter) => mounter.set_mount_failure(None),
            Undo::Unhang(mounter) => mounter.set_hung(false),
            Undo::Hypervisor(hypervisor) => hypervisor.set_failure(None),
            Undo::HypervisorHang(hypervisor) => hypervisor.set_hung(false),
            Undo::Disk(disk) => disk.set(Duration::ZERO),
        }
    }
}
