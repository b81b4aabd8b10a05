//! HA restarts (ADR 23): which VMs of lost hosts run again where. Pure: the leader passes
//! how long each host has been silent (counted from its own start for a host it never
//! heard, so a new leader waits a full lease) and the placement facts, and gets back the
//! moves to commit and, for every HA VM it cannot move yet, why.

use std::{collections::BTreeMap, time::Duration};

use qvdc_raft::DesiredState;
use qvdc_transport::{
    bugs::{self, Bug},
    protocol::{DesiredPower, HaPolicy, VmHaView, HOST_LOST_AFTER_MS},
};

use super::placement::{self, HostFacts};

/// When a silent host counts as lost: its lease has lapsed and its isolation response has
/// had time to finish.
pub fn lost_after() -> Duration {
    if bugs::active(Bug::RestartBeforeTheLeaseLapses) {
        // The deliberate bug: restart as soon as the host looks unreachable.
        return Duration::from_millis(3_000);
    }
    Duration::from_millis(HOST_LOST_AFTER_MS)
}

/// One VM moved off a lost host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub vm: String,
    pub from: String,
    pub to: String,
}

/// What HA does now: the moves to commit, and what every other HA VM waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub moves: Vec<Move>,
    /// By VM name: why it is not (yet) restarted, for `vm show`.
    pub waiting: BTreeMap<String, String>,
}

/// Decides the restarts: every running HA VM whose host has been silent for
/// [`lost_after`] goes to the fitting host with most free memory, higher priority first
/// (then by name), each placement counting the memory of those before it.
pub fn plan(
    desired: &DesiredState,
    silences: &BTreeMap<String, Duration>,
    mut hosts: Vec<HostFacts>,
) -> Plan {
    let lost_after = lost_after();
    let mut plan = Plan::default();
    let mut candidates: Vec<(&String, &qvdc_raft::model::VmRecord)> = desired
        .vms
        .iter()
        .filter(|(_, vm)| vm.ha.restart && !vm.releasing)
        .collect();
    candidates.sort_by(|a, b| b.1.ha.priority.cmp(&a.1.ha.priority).then(a.0.cmp(b.0)));
    for (name, vm) in candidates {
        let silent = silences.get(&vm.host).copied().unwrap_or_default();
        if silent < lost_after {
            if silent >= Duration::from_millis(3_000) {
                plan.waiting.insert(
                    name.clone(),
                    format!(
                        "host {} silent for {} s; restarted elsewhere once it has been for {} s (its lease lapsed and it fenced itself)",
                        vm.host,
                        silent.as_secs(),
                        lost_after.as_secs()
                    ),
                );
            }
            continue;
        }
        if let Some(m) = &vm.moving {
            plan.waiting.insert(
                name.clone(),
                format!(
                    "host {} lost during a move to {}; restarted elsewhere unless the move finishes",
                    vm.host, m.to
                ),
            );
            continue;
        }
        if vm.power != DesiredPower::Running {
            plan.waiting.insert(
                name.clone(),
                format!(
                    "host {} lost; the VM is stopped, so it stays there until started",
                    vm.host
                ),
            );
            continue;
        }
        let pins = placement::pins(desired, &vm.spec);
        match placement::place(&vm.spec, &pins, &hosts) {
            Ok(to) => {
                if let Some(chosen) = hosts.iter_mut().find(|h| h.host == to) {
                    chosen.committed_memory_bytes += vm.spec.memory_bytes;
                }
                plan.moves.push(Move {
                    vm: name.clone(),
                    from: vm.host.clone(),
                    to,
                });
            }
            Err(reasons) => {
                let reasons: Vec<String> = reasons
                    .iter()
                    .filter(|(host, _)| *host != vm.host)
                    .map(|(host, why)| format!("{host}: {why}"))
                    .collect();
                plan.waiting.insert(
                    name.clone(),
                    format!(
                        "host {} lost; no other host fits yet, retried as hosts change ({})",
                        vm.host,
                        if reasons.is_empty() {
                            "no other host".to_owned()
                        } else {
                            reasons.join("; ")
                        }
                    ),
                );
            }
        }
    }
    plan
}

/// The HA view of every VM (or of `only`), with the plan's reasons.
pub fn views(desired: &DesiredState, plan: &Plan, only: Option<&str>) -> Vec<VmHaView> {
    desired
        .vms
        .iter()
        .filter(|(name, _)| only.is_none_or(|only| only == name.as_str()))
        .map(|(name, vm)| VmHaView {
            vm: name.clone(),
            host: vm.host.clone(),
            policy: vm.ha,
            status: plan.waiting.get(name).cloned(),
        })
        .collect()
}

/// The HA policy `--ha restart` gives when nothing else is said.
pub fn restart_policy(priority: u8) -> HaPolicy {
    HaPolicy {
        restart: true,
        priority,
        isolation: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use qvdc_raft::Command;
    use qvdc_transport::protocol::{Inventory, PoolSource, PoolSpec, VmDisk, VmSpec, VolumeFormat};

    use super::*;

    fn facts(host: &str, ready: bool, free_mib: u64) -> HostFacts {
        HostFacts {
            domains: Some(BTreeMap::new()),
            host: host.into(),
            ready,
            maintenance: false,
            cpu_cores: 8,
            memory_bytes: free_mib << 20,
            committed_memory_bytes: 0,
            pools: [(
                "shared".to_owned(),
                qvdc_transport::protocol::Health::Healthy,
            )]
            .into(),
            up_networks: Default::default(),
        }
    }

    fn state(vms: &[(&str, &str, Option<u8>)]) -> DesiredState {
        let mut state = DesiredState::default();
        for host in ["host-1", "host-2", "host-3"] {
            let inventory = Inventory {
                cpu_cores: 8,
                memory_bytes: 8 << 30,
                ..Default::default()
            };
            let outcome = state.apply(&Command::RegisterHost {
                host_id: host.into(),
                inventory,
            });
            assert!(
                !matches!(outcome, qvdc_raft::Outcome::Rejected(_)),
                "{outcome:?}"
            );
        }
        let pool = Command::CreatePool {
            spec: PoolSpec {
                scope: Default::default(),
                name: "shared".into(),
                source: PoolSource::Dir {
                    path: "/srv/shared".into(),
                },
            },
            hosts: vec!["host-1".into(), "host-2".into(), "host-3".into()],
        };
        assert_eq!(state.apply(&pool), qvdc_raft::Outcome::Applied);
        for (name, host, priority) in vms {
            let volume = Command::CreateVolume {
                pool: "shared".into(),
                name: format!("{name}.qcow2"),
                format: VolumeFormat::Qcow2,
                size_bytes: 1 << 30,
                host: None,
            };
            assert_eq!(state.apply(&volume), qvdc_raft::Outcome::Applied);
            let spec = VmSpec {
                id: format!("id-{name}"),
                name: (*name).into(),
                vcpus: 1,
                memory_bytes: 512 << 20,
                disks: vec![VmDisk {
                    pool: "shared".into(),
                    volume: format!("{name}.qcow2"),
                    format: VolumeFormat::Qcow2,
                }],
                nics: Vec::new(),
            };
            let ha = priority.map(restart_policy).unwrap_or_default();
            let outcome = state.apply(&Command::CreateHaVm {
                spec,
                host: (*host).into(),
                power: DesiredPower::Running,
                ha,
            });
            assert_eq!(outcome, qvdc_raft::Outcome::Applied);
        }
        state
    }

    fn silent(host: &str, secs: u64) -> BTreeMap<String, Duration> {
        [(host.to_owned(), Duration::from_secs(secs))].into()
    }

    #[test]
    fn nothing_moves_before_the_host_is_lost() {
        let state = state(&[("web", "host-1", Some(0))]);
        let hosts = vec![facts("host-1", false, 4096), facts("host-2", true, 4096)];
        let early = plan(&state, &silent("host-1", 11), hosts.clone());
        assert!(early.moves.is_empty());
        assert!(
            early.waiting["web"].contains("silent for 11 s"),
            "{early:?}"
        );
        let lost = plan(&state, &silent("host-1", 13), hosts);
        assert_eq!(
            lost.moves,
            vec![Move {
                vm: "web".into(),
                from: "host-1".into(),
                to: "host-2".into()
            }]
        );
    }

    #[test]
    fn only_ha_vms_move_and_higher_priority_gets_the_room_first() {
        let state = state(&[
            ("a-low", "host-1", Some(1)),
            ("b-high", "host-1", Some(9)),
            ("c-off", "host-1", None),
        ]);
        // Room for one 512 MiB VM on host-2, none on host-3.
        let hosts = vec![
            facts("host-1", false, 4096),
            facts("host-2", true, 600),
            facts("host-3", true, 100),
        ];
        let plan = plan(&state, &silent("host-1", 60), hosts);
        assert_eq!(plan.moves.len(), 1, "{plan:?}");
        assert_eq!(plan.moves[0].vm, "b-high");
        assert!(plan.waiting["a-low"].contains("no other host fits"));
        assert!(plan.waiting["a-low"].contains("host-2: needs 512 MiB"));
        assert!(!plan.waiting.contains_key("c-off"));
    }

    #[test]
    fn a_stopped_vm_stays_and_says_why() {
        let mut state = state(&[("web", "host-1", Some(0))]);
        state.apply(&Command::SetVmPower {
            name: "web".into(),
            power: DesiredPower::Stopped,
        });
        let hosts = vec![facts("host-1", false, 4096), facts("host-2", true, 4096)];
        let plan = plan(&state, &silent("host-1", 60), hosts);
        assert!(plan.moves.is_empty());
        assert!(plan.waiting["web"].contains("stopped"));
    }

    #[test]
    fn a_host_the_leader_does_not_know_is_not_lost() {
        let state = state(&[("web", "host-1", Some(0))]);
        let hosts = vec![facts("host-2", true, 4096)];
        assert!(plan(&state, &BTreeMap::new(), hosts).moves.is_empty());
    }
}
