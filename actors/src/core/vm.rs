//! One VM's reconciliation. Level-triggered: on every tick the core compares the VM's record
//! (spec, host, desired power) with what its host last reported and decides the one command
//! that closes the gap — define, start or shut down — resending with backoff until the report
//! matches. A VM is only ever acted on at the host its record names: it cannot run on two.

use std::{collections::BTreeSet, time::Duration};

use qvdc_raft::{model::VmRecord, DesiredState};
use qvdc_transport::{
    bugs::{self, Bug},
    protocol::{
        CommandId, DesiredPower, HostCommand, HostCommandKind, PowerState, VmReport, VmView,
    },
};
use tokio::time::Instant;

use super::CommandError;
use super::{CommandIds, Timings};

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send { host: String, command: HostCommand },
}

#[derive(Debug, Clone)]
struct Observation {
    seen_at: Instant,
    /// The VM's domain in that heartbeat; `None` when the host has no such domain.
    report: Option<VmReport>,
}

#[derive(Debug, Clone)]
struct Pending {
    id: CommandId,
    sent_at: Instant,
    attempts: u32,
    kind: &'static str,
    /// The host answered (a shutdown is answered only once the guest stopped).
    answered: bool,
}

#[derive(Debug)]
pub struct VmCore {
    record: VmRecord,
    ids: CommandIds,
    observation: Option<Observation>,
    pending: Option<Pending>,
    /// Why the gap is not closing, shown until the VM reaches its desired state.
    failure: Option<String>,
    timings: Timings,
    /// Only with [`Bug::StartVmOnSecondHost`]: where the bug starts the VM, and whether it did.
    spare: Option<(String, u8)>,
}

impl VmCore {
    pub fn new(record: VmRecord, ids: impl Into<CommandIds>, timings: Timings) -> Self {
        Self {
            record,
            ids: ids.into(),
            observation: None,
            pending: None,
            failure: None,
            timings,
            spare: None,
        }
    }

    /// The host [`Bug::StartVmOnSecondHost`] starts the VM on when its own host goes silent.
    pub fn with_spare_host(mut self, host: String) -> Self {
        self.spare = Some((host, 0));
        self
    }

    /// The deliberate bug: the VM's host went silent, so define and start the VM on the spare
    /// host at once (before its host supervisor removes the domain as a stray), without
    /// knowing whether it still runs where it was.
    fn start_on_spare_host(&mut self) -> Vec<Effect> {
        if self.observation.is_none() || !bugs::active(Bug::StartVmOnSecondHost) {
            return Vec::new();
        }
        let running = self.record.power == DesiredPower::Running;
        let Some((host, done)) = self.spare.as_mut().filter(|s| running && s.1 == 0) else {
            return Vec::new();
        };
        *done = 1;
        let host = host.clone();
        let kinds = [
            HostCommandKind::DefineVm(self.record.spec.clone()),
            HostCommandKind::StartVm {
                name: self.record.spec.name.clone(),
            },
        ];
        kinds
            .into_iter()
            .map(|kind| {
                let id = self.ids.next();
                Effect::Send {
                    host: host.clone(),
                    command: HostCommand { id, kind },
                }
            })
            .collect()
    }

    pub fn record(&self) -> &VmRecord {
        &self.record
    }

    /// The record changed (the operator started or stopped the VM): act on it at once. A
    /// VM that moved to another host waits for that host's report: what its old host said
    /// says nothing about the new one.
    pub fn set_record(&mut self, record: VmRecord) {
        if record != self.record {
            if record.host != self.record.host {
                self.observation = None;
            }
            self.record = record;
            self.pending = None;
            self.failure = None;
        }
    }

    /// A heartbeat from `host` arrived; `report` is the VM's domain in it, if any. Only its
    /// own host's count (a heartbeat routed before a move was known is ignored).
    pub fn observe(&mut self, host: &str, seen_at: Instant, report: Option<VmReport>) {
        if host != self.record.host {
            return;
        }
        self.observation = Some(Observation { seen_at, report });
        if self.wanted().is_none() {
            self.pending = None;
            if self.conflict().is_none() {
                self.failure = None;
            }
        }
    }

    /// A command's answer came back.
    pub fn command_done(&mut self, id: CommandId, outcome: Result<(), CommandError>) {
        let Some(pending) = self.pending.as_mut().filter(|p| p.id == id) else {
            return;
        };
        pending.answered = true;
        if let Err(reason) = outcome {
            self.failure = Some(format!("{} failed: {reason}", pending.kind));
        }
    }

    fn fresh(&self, now: Instant) -> Option<&Observation> {
        self.observation
            .as_ref()
            .filter(|o| now.saturating_duration_since(o.seen_at) <= self.timings.stale_after())
    }

    /// Whether `report` is the domain this VM was adopted from, not yet carrying its id.
    fn is_adoptee(&self, report: &VmReport) -> bool {
        report.id.is_none() && self.record.adopted.as_deref() == Some(report.uuid.as_str())
    }

    /// A domain of that name on the host that is not this VM.
    fn conflict(&self) -> Option<String> {
        let report = self.observation.as_ref()?.report.as_ref()?;
        if self.is_adoptee(report) {
            return None;
        }
        (report.id.as_deref() != Some(&self.record.spec.id)).then(|| {
            format!(
                "host {} has another domain named {} ({}); rename or remove it",
                self.record.host,
                report.name,
                report
                    .id
                    .as_ref()
                    .map_or("not managed by qvdc".to_owned(), |id| format!("VM {id}"))
            )
        })
    }

    /// The command that closes the gap to the last observation, if there is a gap.
    fn wanted(&self) -> Option<HostCommandKind> {
        if self.record.releasing || self.record.moving.is_some() {
            // Being given back or moved: the release or the move talks to the host about
            // the domain; nothing else may.
            return None;
        }
        let observation = self.observation.as_ref()?;
        let spec = &self.record.spec;
        let Some(report) = &observation.report else {
            return Some(HostCommandKind::DefineVm(spec.clone()));
        };
        if self.conflict().is_some() {
            return None;
        }
        if self.is_adoptee(report) {
            return Some(HostCommandKind::AdoptVm {
                name: spec.name.clone(),
                id: spec.id.clone(),
                uuid: report.uuid.clone(),
                volumes: spec.disks.clone(),
            });
        }
        let outdated = report.vcpus != spec.vcpus || report.memory_bytes != spec.memory_bytes;
        let name = spec.name.clone();
        match (self.record.power, report.power) {
            (_, PowerState::ShutOff) if outdated => Some(HostCommandKind::DefineVm(spec.clone())),
            (DesiredPower::Running, PowerState::ShutOff | PowerState::Crashed) => {
                Some(HostCommandKind::StartVm { name })
            }
            (DesiredPower::Stopped, PowerState::Running | PowerState::Paused) => {
                Some(HostCommandKind::ShutdownVm {
                    name,
                    timeout_ms: self.timings.vm_shutdown_timeout_ms,
                })
            }
            _ => None,
        }
    }

    /// When a tick may next send something no input prompted: the pending command's resend
    /// (an unanswered one is first given the command timeout), and, with the deliberate bug
    /// armed, the moment the host turns silent.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let resend = self.pending.as_ref().map(|p| {
            let retry = self.timings.resend_at(p.sent_at, p.attempts);
            if p.answered {
                retry
            } else {
                retry.max(p.sent_at + Duration::from_millis(self.timings.command_timeout_ms))
            }
        });
        super::next_after(now, resend.into_iter().chain(self.spare_host_due()))
    }

    /// With the deliberate bug armed (a spare host set): the moment the VM's host turns
    /// silent, when [`Self::start_on_spare_host`] acts.
    fn spare_host_due(&self) -> Option<Instant> {
        self.observation
            .as_ref()
            .filter(|_| self.spare.is_some())
            .map(|o| o.seen_at + self.timings.stale_after() + Duration::from_millis(1))
    }

    /// Decides whether to send a command now.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        if self.fresh(now).is_none() {
            // The host is unreachable: it gets its commands when back. (Unless the
            // deliberate bug is armed.)
            return self.start_on_spare_host();
        }
        if let Some(conflict) = self.conflict() {
            self.failure = Some(conflict);
            return Vec::new();
        }
        let Some(kind) = self.wanted() else {
            return Vec::new();
        };
        // A pending command of another kind had its effect (defined, now start it): go on at
        // once. The same command again waits out the backoff.
        let attempts = match &self.pending {
            Some(p) if p.kind != kind.label() => 1,
            // Unanswered: the host may still be at it (a guest shutting down).
            Some(p)
                if !p.answered
                    && now.saturating_duration_since(p.sent_at)
                        < Duration::from_millis(self.timings.command_timeout_ms) =>
            {
                return Vec::new();
            }
            Some(p)
                if now.saturating_duration_since(p.sent_at)
                    < self.timings.retry_after(p.attempts) =>
            {
                return Vec::new();
            }
            Some(p) => p.attempts + 1,
            None => 1,
        };
        let id = self.ids.next();
        self.pending = Some(Pending {
            id,
            sent_at: now,
            attempts,
            kind: kind.label(),
            answered: false,
        });
        let command = HostCommand { id, kind };
        vec![Effect::Send {
            host: self.record.host.clone(),
            command,
        }]
    }

    pub fn view(&self, now: Instant) -> VmView {
        let (power, reason) = match self.fresh(now) {
            None => (
                PowerState::Unknown,
                "no fresh report from its host".to_owned(),
            ),
            Some(Observation { report: None, .. }) => (
                PowerState::Unknown,
                "not defined on its host yet".to_owned(),
            ),
            Some(Observation {
                report: Some(report),
                ..
            }) if self.is_adoptee(report) => (
                report.power,
                "being adopted: its host has not recorded the VM's id yet".to_owned(),
            ),
            Some(Observation {
                report: Some(report),
                ..
            }) => (report.power, report.reason.clone()),
        };
        let error = if self.record.releasing {
            Some(format!(
                "being given back to host {}; `qvctl vm release {}` finishes it",
                self.record.host, self.record.spec.name
            ))
        } else if let Some(moving) = &self.record.moving {
            Some(format!("moving to host {} ({})", moving.to, moving.mode))
        } else {
            self.failure.clone()
        };
        VmView {
            spec: self.record.spec.clone(),
            host: self.record.host.clone(),
            managed: true,
            desired: self.record.power,
            power,
            reason,
            error,
        }
    }
}

/// Domains on `host` that carry a qvdc VM id but belong to no VM placed there (their VM was
/// deleted): the host must remove them. Domains without an id are not qvdc's and never count.
pub fn strays(desired: &DesiredState, host: &str, reports: &[VmReport]) -> BTreeSet<String> {
    let mut placed: BTreeSet<(&str, &str)> = desired
        .vms_of_host(host)
        .map(|vm| (vm.spec.name.as_str(), vm.spec.id.as_str()))
        .collect();
    // A VM moving here arrives before the move is recorded as finished.
    placed.extend(
        reports
            .iter()
            .filter_map(|r| desired.vms.get(&r.name))
            .filter(|vm| vm.moving.as_ref().is_some_and(|m| m.to == host))
            .map(|vm| (vm.spec.name.as_str(), vm.spec.id.as_str())),
    );
    reports
        .iter()
        .filter(|r| {
            r.id.as_deref()
                .is_some_and(|id| !placed.contains(&(r.name.as_str(), id)))
        })
        .map(|r| r.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use qvdc_transport::protocol::VmSpec;

    use qvdc_transport::protocol::Leadership;

    use super::*;

    fn record(power: DesiredPower) -> VmRecord {
        VmRecord {
            spec: VmSpec {
                id: "vm-1".into(),
                name: "web".into(),
                vcpus: 2,
                memory_bytes: 64 << 20,
                disks: Vec::new(),
                nics: Vec::new(),
            },
            host: "host-1".into(),
            power,
            adopted: None,
            releasing: false,
            ha: Default::default(),
            moving: None,
            move_failed: None,
        }
    }

    fn report(power: PowerState) -> VmReport {
        VmReport {
            name: "web".into(),
            id: Some("vm-1".into()),
            power,
            reason: "r".into(),
            vcpus: 2,
            memory_bytes: 64 << 20,
            uuid: "uuid-web".into(),
            disks: Vec::new(),
        }
    }

    fn leadership() -> Leadership {
        Leadership { term: 3, node: 1 }
    }

    fn send(seq: u64, kind: HostCommandKind) -> Effect {
        Effect::Send {
            host: "host-1".into(),
            command: HostCommand {
                id: CommandId {
                    leadership: leadership(),
                    seq,
                },
                kind,
            },
        }
    }

    fn start() -> HostCommandKind {
        HostCommandKind::StartVm { name: "web".into() }
    }

    #[test]
    fn a_new_vm_is_defined_then_started_then_left_alone() {
        let mut core = VmCore::new(
            record(DesiredPower::Running),
            leadership(),
            Timings::default(),
        );
        let t0 = Instant::now();
        assert_eq!(core.tick(t0), [], "nothing before its host reports");
        core.observe("host-1", t0, None);
        let define = HostCommandKind::DefineVm(record(DesiredPower::Running).spec);
        assert_eq!(core.tick(t0), [send(1, define)]);
        assert_eq!(core.tick(t0), [], "one command at a time");
        core.observe("host-1", t0, Some(report(PowerState::ShutOff)));
        assert_eq!(core.tick(t0), [send(2, start())]);
        core.observe("host-1", t0, Some(report(PowerState::Running)));
        assert_eq!(core.tick(t0), []);
        let view = core.view(t0);
        assert_eq!(
            (view.power, view.desired, view.error),
            (PowerState::Running, DesiredPower::Running, None)
        );
    }

    fn sent(effects: Vec<Effect>) -> Vec<CommandId> {
        effects
            .into_iter()
            .map(|Effect::Send { command, .. }| command.id)
            .collect()
    }

    #[test]
    fn ticking_after_inputs_and_at_next_due_sends_what_ticking_all_the_time_does() {
        let running = || {
            VmCore::new(
                record(DesiredPower::Running),
                leadership(),
                Timings::default(),
            )
        };
        let shut_off =
            |core: &mut VmCore, at| core.observe("host-1", at, Some(report(PowerState::ShutOff)));
        // Every start fails at once: resent after the backoff.
        super::super::alarm_check::Drive {
            report_every_ms: 700,
            until_ms: 40_000,
            input: shut_off,
            tick: |core, now| {
                let ids = sent(core.tick(now));
                for id in &ids {
                    core.command_done(*id, Err(crate::core::failed("Cannot access storage file")));
                }
                ids.into_iter().map(|id| id.seq).collect()
            },
            next_due: VmCore::next_due,
        }
        .check(running);
        // No start is ever answered: resent after the command timeout.
        super::super::alarm_check::Drive {
            report_every_ms: 700,
            until_ms: 130_000,
            input: shut_off,
            tick: |core, now| sent(core.tick(now)).into_iter().map(|id| id.seq).collect(),
            next_due: VmCore::next_due,
        }
        .check(running);
    }

    #[test]
    fn a_failing_start_is_retried_with_backoff_and_its_reason_shown() {
        let mut core = VmCore::new(
            record(DesiredPower::Running),
            leadership(),
            Timings::default(),
        );
        let t0 = Instant::now();
        core.observe("host-1", t0, Some(report(PowerState::ShutOff)));
        assert_eq!(core.tick(t0), [send(1, start())]);
        let id = CommandId {
            leadership: leadership(),
            seq: 1,
        };
        core.command_done(id, Err(crate::core::failed("Cannot access storage file")));
        let later = |ms| t0 + Duration::from_millis(ms);
        core.observe("host-1", later(1_900), Some(report(PowerState::ShutOff)));
        assert_eq!(core.tick(later(1_900)), []);
        assert_eq!(core.tick(later(2_000)), [send(2, start())]);
        assert_eq!(
            core.tick(later(5_900)),
            [],
            "unanswered: the host may be at it"
        );
        let id = CommandId {
            leadership: leadership(),
            seq: 2,
        };
        core.command_done(id, Err(crate::core::failed("Cannot access storage file")));
        core.observe("host-1", later(5_900), Some(report(PowerState::ShutOff)));
        assert_eq!(
            core.tick(later(5_900)),
            [],
            "the second wait is twice as long"
        );
        assert_eq!(core.tick(later(6_000)), [send(3, start())]);
        let error = core.view(later(6_000)).error.unwrap();
        assert!(
            error.contains("start-vm failed: Cannot access storage file"),
            "{error}"
        );
    }

    #[test]
    fn stopping_shuts_the_guest_down_and_a_silent_host_gets_nothing() {
        let mut core = VmCore::new(
            record(DesiredPower::Running),
            leadership(),
            Timings::default(),
        );
        let t0 = Instant::now();
        core.observe("host-1", t0, Some(report(PowerState::Running)));
        core.set_record(record(DesiredPower::Stopped));
        let shutdown = HostCommandKind::ShutdownVm {
            name: "web".into(),
            timeout_ms: Timings::default().vm_shutdown_timeout_ms,
        };
        assert_eq!(core.tick(t0), [send(1, shutdown)]);
        let stale = t0 + Duration::from_millis(3_001);
        core.set_record(record(DesiredPower::Running));
        assert_eq!(core.tick(stale), [], "host unreachable");
        assert_eq!(core.view(stale).power, PowerState::Unknown);
    }

    #[test]
    fn a_domain_of_the_same_name_that_is_not_this_vm_is_never_touched() {
        let mut core = VmCore::new(
            record(DesiredPower::Running),
            leadership(),
            Timings::default(),
        );
        let t0 = Instant::now();
        let mut foreign = report(PowerState::ShutOff);
        foreign.id = None;
        core.observe("host-1", t0, Some(foreign));
        assert_eq!(core.tick(t0), []);
        let error = core.view(t0).error.unwrap();
        assert!(error.contains("not managed by qvdc"), "{error}");
    }

    #[test]
    fn only_domains_of_vms_no_longer_placed_here_are_strays() {
        let mut desired = DesiredState::default();
        let mut other_host = record(DesiredPower::Running);
        other_host.spec.name = "db".into();
        other_host.spec.id = "vm-2".into();
        other_host.host = "host-2".into();
        for host in ["host-1", "host-2"] {
            desired.apply(&qvdc_raft::Command::RegisterHost {
                host_id: host.into(),
                inventory: Default::default(),
            });
        }
        for vm in [record(DesiredPower::Running), other_host] {
            let create = qvdc_raft::Command::CreateVm {
                spec: vm.spec,
                host: vm.host,
                power: vm.power,
            };
            assert_eq!(desired.apply(&create), qvdc_raft::Outcome::Applied);
        }
        let domain = |name: &str, id: Option<&str>| VmReport {
            name: name.into(),
            id: id.map(str::to_owned),
            ..report(PowerState::Running)
        };
        let reports = [
            domain("web", Some("vm-1")),
            domain("old", Some("vm-0")),
            domain("db", Some("vm-2")),
            domain("legacy", None),
            domain("web2", Some("vm-1")),
        ];
        let strays: Vec<String> = strays(&desired, "host-1", &reports).into_iter().collect();
        assert_eq!(strays, ["db", "old", "web2"]);
    }

    #[test]
    fn the_adopted_domain_gets_the_vm_id_and_no_other_domain_of_its_name_does() {
        let mut adopted = record(DesiredPower::Running);
        adopted.adopted = Some("uuid-web".into());
        let mut core = VmCore::new(adopted.clone(), leadership(), Timings::default());
        let t0 = Instant::now();
        let mut unmanaged = report(PowerState::Running);
        unmanaged.id = None;
        core.observe("host-1", t0, Some(unmanaged.clone()));
        let adopt = HostCommandKind::AdoptVm {
            name: "web".into(),
            id: "vm-1".into(),
            uuid: "uuid-web".into(),
            volumes: Vec::new(),
        };
        assert_eq!(core.tick(t0), [send(1, adopt)]);
        let view = core.view(t0);
        assert_eq!(view.error, None);
        assert_eq!(view.power, PowerState::Running);
        assert_eq!(
            view.reason,
            "being adopted: its host has not recorded the VM's id yet"
        );
        // Once the host has written the id, the host's own reason shows.
        let mut recorded = report(PowerState::Running);
        recorded.reason = "booted".into();
        core.observe("host-1", t0, Some(recorded));
        assert_eq!(core.view(t0).reason, "booted");

        // Another domain under the VM's name (redefined behind qvdc's back) is left alone.
        let mut core = VmCore::new(adopted, leadership(), Timings::default());
        let mut impostor = unmanaged;
        impostor.uuid = "uuid-other".into();
        core.observe("host-1", t0, Some(impostor));
        assert_eq!(core.tick(t0), []);
        let error = core.view(t0).error.unwrap();
        assert!(error.contains("not managed by qvdc"), "{error}");
    }

    #[test]
    fn a_vm_being_released_is_never_acted_on() {
        let mut releasing = record(DesiredPower::Running);
        releasing.releasing = true;
        let mut core = VmCore::new(releasing, leadership(), Timings::default());
        let t0 = Instant::now();
        for seen in [
            Some(report(PowerState::ShutOff)),
            None,
            Some(VmReport {
                id: None,
                ..report(PowerState::Crashed)
            }),
        ] {
            core.observe("host-1", t0, seen);
            assert_eq!(core.tick(t0), []);
        }
        assert!(core.view(t0).error.unwrap().contains("vm release web"));
    }

    #[test]
    fn a_changed_spec_redefines_a_stopped_domain() {
        let mut core = VmCore::new(
            record(DesiredPower::Stopped),
            leadership(),
            Timings::default(),
        );
        let t0 = Instant::now();
        let mut old = report(PowerState::ShutOff);
        old.vcpus = 1;
        core.observe("host-1", t0, Some(old));
        let define = HostCommandKind::DefineVm(record(DesiredPower::Stopped).spec);
        assert_eq!(core.tick(t0), [send(1, define)]);
    }

    #[test]
    fn a_moving_vm_is_left_to_its_move_and_then_waits_for_its_new_host() {
        use qvdc_raft::model::Move;
        use qvdc_transport::protocol::MigrationMode;
        let mut moving = record(DesiredPower::Running);
        moving.moving = Some(Move {
            to: "host-2".into(),
            mode: MigrationMode::Live,
        });
        let mut core = VmCore::new(moving.clone(), leadership(), Timings::default());
        let t0 = Instant::now();
        // The domain left host-1 (migrated) or is shut off there (a cold move): nothing is
        // defined or started on host-1 meanwhile.
        for seen in [None, Some(report(PowerState::ShutOff))] {
            core.observe("host-1", t0, seen);
            assert_eq!(core.tick(t0), []);
        }
        assert!(core
            .view(t0)
            .error
            .unwrap()
            .contains("moving to host host-2"));
        // The move finished: host-1's last report (no such domain) says nothing about
        // host-2, nor does a late heartbeat of host-1.
        let mut moved = moving;
        moved.moving = None;
        moved.host = "host-2".into();
        core.set_record(moved);
        assert_eq!(core.tick(t0), []);
        core.observe("host-1", t0, None);
        assert_eq!(core.tick(t0), []);
        core.observe("host-2", t0, Some(report(PowerState::Running)));
        assert_eq!(core.tick(t0), []);
        assert_eq!(core.view(t0).power, PowerState::Running);
    }

    #[test]
    fn a_vm_arriving_by_a_move_is_no_stray_where_it_arrives() {
        use qvdc_raft::model::Move;
        use qvdc_transport::protocol::MigrationMode;
        let mut desired = DesiredState::default();
        let mut web = record(DesiredPower::Running);
        web.moving = Some(Move {
            to: "host-2".into(),
            mode: MigrationMode::Live,
        });
        desired.vms.insert("web".into(), web);
        let arriving = [report(PowerState::Paused)];
        assert!(strays(&desired, "host-2", &arriving).is_empty());
        assert_eq!(
            strays(&desired, "host-3", &arriving),
            BTreeSet::from(["web".to_owned()])
        );
    }
}
