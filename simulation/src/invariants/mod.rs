//! Properties every run must have, one module each. Those about what the system did check
//! the typed facts production code states, one by one while the run goes on
//! ([`FactChecks`], fed after every step of the world),
//! so a run stops at its first violation, at the simulated moment it happened; the rest are
//! checked on the final state. Each error is worded for the person replaying the seed.

use std::{cell::RefCell, rc::Rc};

use qvdc_transport::facts::Fact;

mod fencing;
mod ha;
mod leadership;
mod state;
mod vm_placement;

pub use fencing::HostsObeyLeadershipsInOrder;
pub use ha::LeasesFenceBeforeTheLock;
pub use leadership::OneLeaderPerLeadership;
pub use state::same_index_same_state;
pub use vm_placement::VmRunsOnOneHostAtATime;

/// A safety property of what the run did, checked one typed fact at a time, in order (see
/// `qvdc_transport::facts`: production code states them; no checker reads log text).
pub trait FactInvariant {
    /// Takes in the next fact, stated at `at_ms` simulated milliseconds; an error is a
    /// violation, saying what shows it.
    fn observe(&mut self, at_ms: u64, fact: &Fact) -> anyhow::Result<()>;
}

/// Facts stated so far in a run, with their simulated time.
pub type Facts = Rc<RefCell<Vec<(u64, Fact)>>>;

/// Every fact invariant, fed the facts as they are stated.
pub struct FactChecks {
    checks: Vec<Box<dyn FactInvariant>>,
    seen: usize,
}

impl Default for FactChecks {
    fn default() -> Self {
        Self {
            checks: vec![
                Box::new(OneLeaderPerLeadership),
                Box::<HostsObeyLeadershipsInOrder>::default(),
                Box::<VmRunsOnOneHostAtATime>::default(),
                Box::<LeasesFenceBeforeTheLock>::default(),
            ],
            seen: 0,
        }
    }
}

impl FactChecks {
    /// Checks the facts not seen yet (the list only ever grows).
    pub fn check(&mut self, facts: &[(u64, Fact)]) -> anyhow::Result<()> {
        for (at_ms, fact) in &facts[self.seen..] {
            self.seen += 1;
            for check in &mut self.checks {
                check.observe(*at_ms, fact)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use qvdc_transport::{
        facts::Guest,
        protocol::{ClusterStatus, CommandId, Leadership},
    };

    use super::*;

    /// Runs one invariant over a list of facts, one millisecond apart.
    fn check_all(invariant: &mut dyn FactInvariant, facts: &[Fact]) -> anyhow::Result<()> {
        (0u64..)
            .zip(facts)
            .try_for_each(|(at, fact)| invariant.observe(at, fact))
    }

    /// VM `vm`'s operation; a guest it leaves running runs as the VM's first id, `<vm>-1`.
    fn vm(host: &str, vm: &str, op: &'static str, guest: Guest) -> Fact {
        Fact::VmOperation {
            host: host.into(),
            vm: vm.into(),
            op,
            guest,
            id: (guest == Guest::Runs).then(|| format!("{vm}-1")),
        }
    }

    fn start(host: &str, name: &str) -> Fact {
        vm(host, name, "start", Guest::Runs)
    }

    /// A start of a guest named `name` running as VM `id` (`None`: not known).
    fn start_as(host: &str, name: &str, id: Option<&str>) -> Fact {
        Fact::VmOperation {
            host: host.into(),
            vm: name.into(),
            op: "start",
            guest: Guest::Runs,
            id: id.map(str::to_owned),
        }
    }

    fn crashed(machine: &str) -> Fact {
        Fact::MachineCrashed {
            machine: machine.into(),
        }
    }

    fn took(node: u64, term: u64, of: u64) -> Fact {
        Fact::LeadershipTaken {
            node,
            leadership: Leadership { term, node: of },
        }
    }

    fn obeyed(host: &str, term: u64, node: u64, seq: u64) -> Fact {
        Fact::CommandObeyed {
            host: host.into(),
            id: CommandId {
                leadership: Leadership { term, node },
                seq,
            },
        }
    }

    #[test]
    fn a_vm_started_on_a_second_host_is_caught() {
        let ok = [
            start("host-1", "web"),
            vm("host-1", "web", "force-off", Guest::Gone),
            start("host-2", "web"),
            start("host-1", "db"),
            vm("host-1", "db", "define", Guest::Unchanged),
        ];
        check_all(&mut VmRunsOnOneHostAtATime::default(), &ok).unwrap();
        let split = [start("host-1", "web"), start("host-2", "web")];
        let err = check_all(&mut VmRunsOnOneHostAtATime::default(), &split).unwrap_err();
        assert!(err.to_string().contains("web runs on"), "{err}");
    }

    #[test]
    fn a_new_vm_under_a_deleted_ones_name_is_another_vm() {
        // The deleted web-1 runs on in host-1, which has not heard of the delete.
        let reused = [
            start("host-1", "web"),
            start_as("host-2", "web", Some("web-2")),
        ];
        check_all(&mut VmRunsOnOneHostAtATime::default(), &reused).unwrap();
        // The same id twice is the same VM twice, whatever came between.
        let twice = [
            start("host-1", "web"),
            start_as("host-2", "web", Some("web-2")),
            start_as("host-3", "web", Some("web-1")),
        ];
        let err = check_all(&mut VmRunsOnOneHostAtATime::default(), &twice).unwrap_err();
        assert!(err.to_string().contains("web-1"), "{err}");
        // A guest whose id is not known may be either.
        for unknown in [
            [start("host-1", "web"), start_as("host-2", "web", None)],
            [start_as("host-1", "web", None), start("host-2", "web")],
        ] {
            assert!(check_all(&mut VmRunsOnOneHostAtATime::default(), &unknown).is_err());
        }
    }

    #[test]
    fn a_vm_whose_host_crashed_may_start_elsewhere() {
        let crashed_first = [
            start("host-1", "web"),
            crashed("host-1"),
            start("host-2", "web"),
        ];
        check_all(&mut VmRunsOnOneHostAtATime::default(), &crashed_first).unwrap();
        let another_crashed = [
            start("host-1", "web"),
            crashed("host-3"),
            start("host-2", "web"),
        ];
        assert!(check_all(&mut VmRunsOnOneHostAtATime::default(), &another_crashed).is_err());
    }

    #[test]
    fn a_lock_refusal_for_a_guest_its_live_host_should_have_fenced_is_caught() {
        let refused = |holder: &str| Fact::StorageLockRefused {
            host: "host-2".into(),
            vm: "web".into(),
            holder: holder.into(),
        };
        let dead_agent = [
            start("host-1", "web"),
            Fact::AgentKilled {
                machine: "host-1".into(),
            },
            refused("host-1"),
        ];
        check_all(&mut LeasesFenceBeforeTheLock::default(), &dead_agent).unwrap();
        let kept = [
            Fact::KeptOnIsolation {
                host: "host-1".into(),
                vm: "web".into(),
            },
            refused("host-1"),
        ];
        check_all(&mut LeasesFenceBeforeTheLock::default(), &kept).unwrap();
        let restarted_agent = [
            Fact::AgentKilled {
                machine: "host-1".into(),
            },
            Fact::AgentStarted {
                host: "host-1".into(),
            },
            refused("host-1"),
        ];
        let err = check_all(&mut LeasesFenceBeforeTheLock::default(), &restarted_agent);
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("whose agent was alive"));
    }

    #[test]
    fn a_leader_under_another_nodes_leadership_is_caught() {
        let ok = [took(2, 1, 2), took(3, 1, 3), took(2, 4, 2)];
        check_all(&mut OneLeaderPerLeadership, &ok).unwrap();
        assert!(check_all(&mut OneLeaderPerLeadership, &[took(1, 3, 2)]).is_err());
    }

    #[test]
    fn a_host_obeying_a_deposed_leadership_is_caught() {
        let ok = [
            obeyed("host-1", 2, 1, 1),
            obeyed("host-1", 2, 3, 1),
            obeyed("host-2", 1, 1, 4),
        ];
        check_all(&mut HostsObeyLeadershipsInOrder::default(), &ok).unwrap();
        let deposed_in_term = [obeyed("host-1", 3, 2, 1), obeyed("host-1", 3, 1, 9)];
        assert!(check_all(
            &mut HostsObeyLeadershipsInOrder::default(),
            &deposed_in_term
        )
        .is_err());
        let older_term = [obeyed("host-1", 3, 1, 1), obeyed("host-1", 2, 3, 2)];
        assert!(check_all(&mut HostsObeyLeadershipsInOrder::default(), &older_term).is_err());
    }

    #[test]
    fn diverged_states_at_one_index_are_caught() {
        let status = |node_id, applied, state_digest| ClusterStatus {
            node_id,
            leader: Some(1),
            term: 1,
            last_log_index: applied,
            last_applied: applied,
            members: vec![],
            snapshot_index: None,
            purged_index: None,
            state_digest,
        };
        same_index_same_state(&[
            status(1, Some(5), 7),
            status(2, Some(5), 7),
            status(3, Some(4), 9),
        ])
        .unwrap();
        assert!(same_index_same_state(&[status(1, Some(5), 7), status(2, Some(5), 8)]).is_err());
    }

    #[test]
    fn checks_run_as_facts_arrive_and_stop_at_the_first_violation() {
        let mut checks = FactChecks::default();
        let mut facts = vec![(1, start("host-1", "web"))];
        checks.check(&facts).unwrap();
        facts.push((2, start("host-2", "db")));
        checks.check(&facts).unwrap();
        facts.push((3, start("host-2", "web")));
        let err = checks.check(&facts).unwrap_err();
        assert!(err.to_string().contains("at 3 ms VM web runs on"), "{err}");
    }
}
