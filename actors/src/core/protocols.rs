//! Operator changes that take more than one write: a VM's delete (ADR 11) and its release
//! (ADR 17). Each is a function from the desired state as it is now (and whether the host has
//! confirmed its part) to the next step; the API carries the steps out one by one and asks
//! again after each. Asking again, rather than following a fixed list, is what makes a retry
//! — after a leader change, or racing another retry — pick up where the first attempt left
//! off.

use qvdc_raft::{
    model::{RequestKey, VmRecord},
    Command, DesiredState,
};
use qvdc_transport::{
    bugs::{self, Bug},
    protocol::{DesiredPower, HostCommandKind},
};

/// The next thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Commit this command through Raft, then ask again.
    Commit(Command),
    /// Have `host` carry out `command` and confirm it, then ask again with the host's
    /// confirmation. If it cannot, the change stops and the operator is told `unconfirmed`
    /// with the host's reason.
    OnHost {
        host: String,
        command: HostCommandKind,
        unconfirmed: String,
    },
    /// Commit this command and answer the operator with its outcome: the change is done.
    Finish(Command),
}

/// The next step of deleting VM `name`. Forgetting the record first would free the VM's name
/// and disks while its guest may still run on a host that has not heard of the delete (one
/// cut off from the cluster, say): a new VM of that name or on those disks could then run
/// beside it. So the VM is first stopped in the desired state (so nothing starts it again),
/// then its host destroys and undefines the domain, and only then is the record deleted.
pub fn vm_delete(
    desired: &DesiredState,
    request: &RequestKey,
    name: &str,
    host_confirmed: bool,
) -> Step {
    let finish = || {
        let delete = Command::DeleteVm {
            name: name.to_owned(),
        };
        Step::Finish(request.clone().once(delete))
    };
    // Unknown, or a retry of a delete that went through (even if a new VM took the name
    // since): the request id decides.
    let Some(vm) = desired
        .vms
        .get(name)
        .filter(|_| !request.applied_before(desired))
    else {
        return finish();
    };
    if vm.power != DesiredPower::Stopped {
        return Step::Commit(Command::SetVmPower {
            name: name.to_owned(),
            power: DesiredPower::Stopped,
        });
    }
    if !host_confirmed && !bugs::active(Bug::DeleteWithoutHost) {
        return Step::OnHost {
            host: vm.host.clone(),
            command: HostCommandKind::UndefineVm {
                name: name.to_owned(),
            },
            unconfirmed: format!(
                "VM {name} is stopped, but its host {} did not confirm that the guest is gone, \
                 so the VM is not deleted: its name and disks stay reserved. Retry once the \
                 host is back (`qvctl host list`)",
                vm.host
            ),
        };
    }
    finish()
}

/// The next step of releasing VM `name`: qvdc lets go of it and its disks while the guest
/// runs on. The VM is first marked as being released, so nothing acts on its domain any
/// more; then the host removes the id (and qvdc's marks on its disks); only then is the
/// record removed. A domain that still carried the id once its VM was gone would be removed
/// as a stray.
pub fn vm_release(
    desired: &DesiredState,
    request: &RequestKey,
    name: &str,
    host_confirmed: bool,
) -> Step {
    let release = || Command::ReleaseVm {
        name: name.to_owned(),
    };
    let once = || request.clone().once(release());
    let applied = request.applied_before(desired);
    // Unknown, or a retry of a release that went through (or was finished by a racing
    // retry, or whose name a new VM took since): the request id decides.
    let Some(vm) = desired.vms.get(name).filter(|vm| vm.releasing || !applied) else {
        return Step::Finish(once());
    };
    // Recorded first, also for a VM another request is already releasing, so that a retry
    // of this one is answered from the record once the VM is gone.
    if !applied {
        return Step::Commit(once());
    }
    if !host_confirmed && !bugs::active(Bug::ReleaseWithoutHost) {
        return Step::OnHost {
            host: vm.host.clone(),
            command: HostCommandKind::ReleaseVm {
                name: name.to_owned(),
                id: vm.spec.id.clone(),
                volumes: desired.released_volumes(vm),
            },
            unconfirmed: format!(
                "VM {name} is being released and qvdc no longer acts on it, but its host {} did \
                 not confirm that it forgot the VM; retry `qvctl vm release {name}` once the \
                 host is back (`qvctl host list`)",
                vm.host
            ),
        };
    }
    Step::Finish(forget(desired, vm))
}

/// Removes a released VM's record, with the volumes that go with it (those no other VM uses).
fn forget(desired: &DesiredState, vm: &VmRecord) -> Command {
    Command::ForgetVm {
        name: vm.spec.name.clone(),
        volumes: desired.released_volumes(vm),
    }
}

#[cfg(test)]
mod tests {
    use qvdc_raft::model::RequestDigest;
    use qvdc_transport::protocol::{VmDisk, VmSpec, VolumeFormat};

    use super::*;

    fn key(id: &str) -> RequestKey {
        RequestKey {
            id: id.into(),
            digest: RequestDigest([7; 16]),
        }
    }

    fn state_with_vm(power: DesiredPower, releasing: bool) -> DesiredState {
        let mut state = DesiredState::default();
        let spec = VmSpec {
            id: "r-1".into(),
            name: "web".into(),
            vcpus: 1,
            memory_bytes: 1 << 30,
            disks: vec![VmDisk {
                pool: "p".into(),
                volume: "root".into(),
                format: VolumeFormat::Qcow2,
            }],
            nics: Vec::new(),
        };
        let record = VmRecord {
            spec,
            host: "host-1".into(),
            power,
            adopted: None,
            releasing,
            ha: Default::default(),
            moving: None,
            move_failed: None,
        };
        state.vms.insert("web".into(), record);
        state
    }

    #[test]
    fn a_running_vm_is_stopped_then_undefined_on_its_host_then_forgotten() {
        let request = key("del-1");
        let running = state_with_vm(DesiredPower::Running, false);
        assert_eq!(
            vm_delete(&running, &request, "web", false),
            Step::Commit(Command::SetVmPower {
                name: "web".into(),
                power: DesiredPower::Stopped
            })
        );
        let stopped = state_with_vm(DesiredPower::Stopped, false);
        match vm_delete(&stopped, &request, "web", false) {
            Step::OnHost { host, command, .. } => {
                assert_eq!(host, "host-1");
                assert_eq!(command, HostCommandKind::UndefineVm { name: "web".into() });
            }
            other => panic!("the host must confirm before the record goes: {other:?}"),
        }
        assert_eq!(
            vm_delete(&stopped, &request, "web", true),
            Step::Finish(
                request
                    .clone()
                    .once(Command::DeleteVm { name: "web".into() })
            )
        );
    }

    #[test]
    fn the_record_is_never_deleted_before_the_host_confirmed() {
        let request = key("del-1");
        for power in [DesiredPower::Running, DesiredPower::Stopped] {
            let state = state_with_vm(power, false);
            let step = vm_delete(&state, &request, "web", false);
            assert!(
                !matches!(step, Step::Finish(_)),
                "{power:?}: {step:?} forgets a VM whose guest may still run"
            );
        }
    }

    #[test]
    fn deleting_an_unknown_vm_is_left_to_the_request_id() {
        let request = key("del-1");
        let empty = DesiredState::default();
        assert_eq!(
            vm_delete(&empty, &request, "web", false),
            Step::Finish(
                request
                    .clone()
                    .once(Command::DeleteVm { name: "web".into() })
            )
        );
    }

    /// `state` with `request` recorded as applied.
    fn applied(mut state: DesiredState, request: &RequestKey, command: Command) -> DesiredState {
        let outcome = state.apply(&request.clone().once(command));
        assert!(
            !matches!(outcome, qvdc_raft::Outcome::Rejected(_)),
            "{outcome:?}"
        );
        state
    }

    #[test]
    fn a_late_retry_of_a_delete_leaves_a_new_vm_of_that_name_alone() {
        let request = key("del-1");
        let delete = Command::DeleteVm { name: "web".into() };
        // The first delete went through; a new VM "web" exists since.
        let state = applied(
            state_with_vm(DesiredPower::Stopped, false),
            &request,
            delete.clone(),
        );
        assert!(!state.vms.contains_key("web"));
        let state = {
            let mut state = state;
            let fresh = state_with_vm(DesiredPower::Running, false);
            state.vms = fresh.vms;
            state
        };
        assert_eq!(
            vm_delete(&state, &request, "web", false),
            Step::Finish(request.clone().once(delete))
        );
    }

    #[test]
    fn a_second_release_records_its_request_before_it_finishes() {
        let first = key("rel-1");
        let second = key("rel-2");
        let release = Command::ReleaseVm { name: "web".into() };
        let state = applied(
            state_with_vm(DesiredPower::Running, false),
            &first,
            release.clone(),
        );
        assert!(state.vms["web"].releasing);
        assert_eq!(
            vm_release(&state, &second, "web", false),
            Step::Commit(second.clone().once(release))
        );
    }

    #[test]
    fn a_release_marks_then_tells_the_host_then_forgets() {
        let request = key("rel-1");
        let managed = state_with_vm(DesiredPower::Running, false);
        let release = request
            .clone()
            .once(Command::ReleaseVm { name: "web".into() });
        assert_eq!(
            vm_release(&managed, &request, "web", false),
            Step::Commit(release.clone())
        );
        let releasing = applied(
            state_with_vm(DesiredPower::Running, false),
            &request,
            Command::ReleaseVm { name: "web".into() },
        );
        match vm_release(&releasing, &request, "web", false) {
            Step::OnHost { host, command, .. } => {
                assert_eq!(host, "host-1");
                assert!(
                    matches!(&command, HostCommandKind::ReleaseVm { id, .. } if id == "r-1"),
                    "{command:?}"
                );
            }
            other => panic!("the host forgets the id before the record goes: {other:?}"),
        }
        assert!(matches!(
            vm_release(&releasing, &request, "web", true),
            Step::Finish(Command::ForgetVm { .. })
        ));
        // Forgotten by a racing retry: the request id answers.
        assert_eq!(
            vm_release(&DesiredState::default(), &request, "web", true),
            Step::Finish(release)
        );
    }
}
