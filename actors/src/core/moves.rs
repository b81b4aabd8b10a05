//! Moving VMs between hosts (ADR 24): where a VM goes and how — live when it runs and its
//! new host takes live migrations, else shut down and started there — and which VMs a host
//! in maintenance sends away now. Pure: the leader passes the placement facts and the hosts
//! that take live migrations, and gets back the moves to begin and why the others wait.

use std::collections::{BTreeMap, BTreeSet};

use qvdc_raft::{model::VmRecord, DesiredState};
use qvdc_transport::protocol::{DesiredPower, MigrationMode};

use super::placement::{self, HostFacts};

/// Live migrations one host sends at a time: each copies the guest's memory over the
/// network, and two keep a link busy without starving either.
pub const MOVES_PER_HOST: usize = 2;

/// One move to begin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    pub vm: String,
    pub to: String,
    pub mode: MigrationMode,
}

/// How `vm` would move to `to`: live if it should run and `to` takes live migrations.
pub fn mode(vm: &VmRecord, to: &str, live_hosts: &BTreeSet<String>) -> MigrationMode {
    if vm.power == DesiredPower::Running && live_hosts.contains(to) {
        MigrationMode::Live
    } else {
        MigrationMode::Cold
    }
}

/// Where `vm` goes when it must leave its host: a running VM to the best host that takes
/// live migrations if one fits, else to the best that fits; the reasons per host if none
/// does.
pub fn target(
    desired: &DesiredState,
    vm: &VmRecord,
    hosts: &[HostFacts],
    live_hosts: &BTreeSet<String>,
) -> Result<Begin, String> {
    let others: Vec<HostFacts> = hosts
        .iter()
        .filter(|h| h.host != vm.host)
        .cloned()
        .collect();
    let pins = placement::pins(desired, &vm.spec);
    let begin = |to: String| Begin {
        vm: vm.spec.name.clone(),
        mode: mode(vm, &to, live_hosts),
        to,
    };
    if vm.power == DesiredPower::Running {
        let live: Vec<HostFacts> = others
            .iter()
            .filter(|h| live_hosts.contains(&h.host))
            .cloned()
            .collect();
        if let Ok(to) = placement::place(&vm.spec, &pins, &live) {
            return Ok(begin(to));
        }
    }
    match placement::place(&vm.spec, &pins, &others) {
        Ok(to) => Ok(begin(to)),
        Err(reasons) if others.is_empty() => Err(format!(
            "no other host: {}",
            reasons
                .first()
                .map_or("register another host".to_owned(), |r| r.1.clone())
        )),
        Err(reasons) => Err(format!(
            "no other host fits ({})",
            reasons
                .iter()
                .map(|(host, why)| format!("{host}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

/// What maintenance does now: the moves to begin, and per host in maintenance, each VM it
/// still runs with what happens to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evacuation {
    pub begin: Vec<Begin>,
    pub remaining: BTreeMap<String, Vec<(String, String)>>,
}

/// Sends the running VMs of every host in maintenance away, at most [`MOVES_PER_HOST`]
/// at a time per host, each placement counting the memory of the moves before it. A
/// stopped VM stays: it is defined there and may be started elsewhere later.
pub fn evacuate(
    desired: &DesiredState,
    mut hosts: Vec<HostFacts>,
    live_hosts: &BTreeSet<String>,
) -> Evacuation {
    let mut plan = Evacuation::default();
    // Memory already on its way to a host counts there.
    for vm in desired.vms.values() {
        if let Some(moving) = &vm.moving {
            if let Some(h) = hosts.iter_mut().find(|h| h.host == moving.to) {
                h.committed_memory_bytes += vm.spec.memory_bytes;
            }
        }
    }
    for (host, _) in desired.hosts.iter().filter(|(_, h)| h.maintenance) {
        let mut remaining = Vec::new();
        let on_it: Vec<&VmRecord> = desired.vms_of_host(host).collect();
        let mut moving = on_it.iter().filter(|vm| vm.moving.is_some()).count();
        for vm in on_it {
            let name = vm.spec.name.clone();
            if let Some(m) = &vm.moving {
                remaining.push((name, format!("moving to {} ({})", m.to, m.mode)));
                continue;
            }
            if vm.power != DesiredPower::Running || vm.releasing {
                continue;
            }
            if moving >= MOVES_PER_HOST {
                remaining.push((name, "waiting for a move to finish".to_owned()));
                continue;
            }
            // After a failed live migration, the next try moves it cold; after a failed
            // cold move, the operator decides (`vm migrate` tries again).
            let retry_cold = BTreeSet::new();
            let live_hosts = match &vm.move_failed {
                Some(failed) if failed.mode == MigrationMode::Cold => {
                    let why = format!("its last move failed: {}", failed.reason);
                    remaining.push((name, why));
                    continue;
                }
                Some(_) => &retry_cold,
                None => live_hosts,
            };
            match target(desired, vm, &hosts, live_hosts) {
                Ok(begin) => {
                    if let Some(h) = hosts.iter_mut().find(|h| h.host == begin.to) {
                        h.committed_memory_bytes += vm.spec.memory_bytes;
                    }
                    remaining.push((name, format!("moving to {} ({})", begin.to, begin.mode)));
                    plan.begin.push(begin);
                    moving += 1;
                }
                Err(why) => remaining.push((name, why)),
            }
        }
        plan.remaining.insert(host.clone(), remaining);
    }
    plan
}

/// Why `host` may not enter maintenance: VMs that run there and can run nowhere else (a
/// disk on its own storage). `None` if it may.
pub fn refuse_maintenance(desired: &DesiredState, host: &str) -> Option<String> {
    let pinned: Vec<String> = desired
        .vms_of_host(host)
        .filter(|vm| vm.power == DesiredPower::Running)
        .filter_map(|vm| {
            let pin = placement::pins(desired, &vm.spec)
                .into_iter()
                .find(|p| p.host == host)?;
            Some(format!(
                "{} (disk {}/{} is on this host's own storage)",
                vm.spec.name, pin.pool, pin.volume
            ))
        })
        .collect();
    (!pinned.is_empty()).then(|| {
        format!(
            "host {host} runs VMs that cannot run on another host: {}; stop them first (`qvctl vm stop NAME`: a stopped VM stays on the host through maintenance)",
            pinned.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use qvdc_raft::{model::Move, Command};
    use qvdc_transport::protocol::{
        Health, Inventory, PoolScope, PoolSource, PoolSpec, VmDisk, VmSpec, VolumeFormat,
    };

    use super::*;

    fn facts(host: &str, free_mib: u64, maintenance: bool) -> HostFacts {
        HostFacts {
            domains: Some(BTreeMap::new()),
            host: host.into(),
            ready: true,
            maintenance,
            cpu_cores: 4,
            memory_bytes: free_mib << 20,
            committed_memory_bytes: 0,
            pools: BTreeMap::from([("shared".to_owned(), Health::Healthy)]),
            up_networks: BTreeSet::new(),
        }
    }

    fn state(vms: &[(&str, DesiredPower)]) -> DesiredState {
        let mut state = DesiredState::default();
        for host in ["host-1", "host-2", "host-3"] {
            state.apply(&Command::RegisterHost {
                host_id: host.into(),
                inventory: Inventory::default(),
            });
        }
        state.apply(&Command::CreatePool {
            spec: PoolSpec {
                scope: PoolScope::Shared,
                name: "shared".into(),
                source: PoolSource::Dir {
                    path: "/srv/shared".into(),
                },
            },
            hosts: vec!["host-1".into(), "host-2".into(), "host-3".into()],
        });
        for (i, (name, power)) in vms.iter().enumerate() {
            state.apply(&Command::CreateVolume {
                pool: "shared".into(),
                name: name.to_string(),
                format: VolumeFormat::Qcow2,
                size_bytes: 1 << 20,
                host: None,
            });
            let spec = VmSpec {
                id: format!("vm-{i}"),
                name: name.to_string(),
                vcpus: 1,
                memory_bytes: 100 << 20,
                disks: vec![VmDisk {
                    pool: "shared".into(),
                    volume: name.to_string(),
                    format: VolumeFormat::Qcow2,
                }],
                nics: Vec::new(),
            };
            let create = Command::CreateVm {
                spec,
                host: "host-1".into(),
                power: *power,
            };
            assert!(matches!(
                state.apply(&create),
                qvdc_raft::model::Outcome::Applied
            ));
        }
        state.apply(&Command::SetMaintenance {
            host: "host-1".into(),
            on: true,
        });
        state
    }

    #[test]
    fn a_host_in_maintenance_sends_its_running_vms_away_two_at_a_time_live_where_it_can() {
        use DesiredPower::*;
        let desired = state(&[
            ("a", Running),
            ("b", Running),
            ("c", Running),
            ("d", Stopped),
        ]);
        let hosts = vec![
            facts("host-1", 1_000, true),
            facts("host-2", 250, false),
            facts("host-3", 1_000, false),
        ];
        let live = BTreeSet::from(["host-2".to_owned()]);
        let plan = evacuate(&desired, hosts, &live);
        // host-2 takes live migrations but has room for two VMs; host-3 only cold moves.
        assert_eq!(
            plan.begin,
            [
                Begin {
                    vm: "a".into(),
                    to: "host-2".into(),
                    mode: MigrationMode::Live
                },
                Begin {
                    vm: "b".into(),
                    to: "host-2".into(),
                    mode: MigrationMode::Live
                },
            ]
        );
        let remaining = &plan.remaining["host-1"];
        assert_eq!(remaining.len(), 3, "{remaining:?}");
        assert_eq!(
            remaining[2],
            ("c".into(), "waiting for a move to finish".into())
        );
    }

    #[test]
    fn moves_under_way_count_against_the_limit_and_the_target_memory() {
        use DesiredPower::*;
        let mut desired = state(&[("a", Running), ("b", Running), ("c", Running)]);
        let mut a = desired.vms["a"].clone();
        a.moving = Some(Move {
            to: "host-2".into(),
            mode: MigrationMode::Live,
        });
        desired.vms.insert("a".into(), a);
        let hosts = vec![
            facts("host-1", 1_000, true),
            facts("host-2", 150, false),
            facts("host-3", 150, false),
        ];
        let live = BTreeSet::from(["host-2".to_owned(), "host-3".to_owned()]);
        let plan = evacuate(&desired, hosts, &live);
        // host-2's room is taken by a, so b goes to host-3; c waits for one of them.
        assert_eq!(plan.begin.len(), 1);
        assert_eq!(plan.begin[0].to, "host-3");
        let reasons: Vec<&str> = plan.remaining["host-1"]
            .iter()
            .map(|(_, why)| why.as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "moving to host-2 (live)",
                "moving to host-3 (live)",
                "waiting for a move to finish"
            ]
        );
    }

    #[test]
    fn after_a_failed_live_move_the_next_is_cold_and_after_a_failed_cold_one_none() {
        use qvdc_raft::model::FailedMove;
        use DesiredPower::*;
        let mut desired = state(&[("a", Running), ("b", Running)]);
        let failed = |name: &str, mode| FailedMove {
            to: "host-2".into(),
            mode,
            reason: format!("{name} refused"),
        };
        for (name, mode) in [("a", MigrationMode::Live), ("b", MigrationMode::Cold)] {
            let mut vm = desired.vms[name].clone();
            vm.move_failed = Some(failed(name, mode));
            desired.vms.insert(name.into(), vm);
        }
        let hosts = vec![
            facts("host-1", 1_000, true),
            facts("host-2", 1_000, false),
            facts("host-3", 1_000, false),
        ];
        let live = BTreeSet::from(["host-2".to_owned(), "host-3".to_owned()]);
        let plan = evacuate(&desired, hosts, &live);
        assert_eq!(plan.begin.len(), 1, "{plan:?}");
        assert_eq!(plan.begin[0].vm, "a");
        assert_eq!(plan.begin[0].mode, MigrationMode::Cold);
        let b = &plan.remaining["host-1"][1];
        assert_eq!(b.0, "b");
        assert!(b.1.contains("its last move failed: b refused"), "{b:?}");
    }

    #[test]
    fn a_vm_that_fits_nowhere_says_why_for_each_host() {
        let desired = state(&[("a", DesiredPower::Running)]);
        let mut full = facts("host-2", 50, false);
        full.ready = true;
        let hosts = vec![
            facts("host-1", 1_000, true),
            full,
            facts("host-3", 10, false),
        ];
        let why = target(&desired, &desired.vms["a"], &hosts, &BTreeSet::new()).unwrap_err();
        assert!(why.contains("host-2: needs 100 MiB"), "{why}");
        assert!(why.contains("host-3: needs 100 MiB"), "{why}");
    }
}
