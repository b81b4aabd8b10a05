//! Properties every run must have, one module each. Those read from the event trace check it
//! line by line while the run goes on ([`TraceChecks`], fed after every step of the world),
//! so a run stops at its first violation, at the simulated moment it happened; the rest are
//! checked on the final state. Each error is worded for the person replaying the seed.

use std::collections::BTreeMap;

mod fencing;
mod leadership;
mod state;
mod vm_placement;

pub use fencing::HostsObeyLeadershipsInOrder;
pub use leadership::OneLeaderPerLeadership;
pub use state::same_index_same_state;
pub use vm_placement::VmRunsOnOneHostAtATime;

/// A property of the event trace, checked one line at a time, in order.
pub trait TraceInvariant {
    /// Takes in the next line; an error is a violation, quoting what shows it.
    fn observe(&mut self, line: &str) -> anyhow::Result<()>;
}

/// Every trace invariant, fed the trace as it grows.
pub struct TraceChecks {
    checks: Vec<Box<dyn TraceInvariant>>,
    seen: usize,
}

impl Default for TraceChecks {
    fn default() -> Self {
        Self {
            checks: vec![
                Box::new(OneLeaderPerLeadership),
                Box::<HostsObeyLeadershipsInOrder>::default(),
                Box::<VmRunsOnOneHostAtATime>::default(),
            ],
            seen: 0,
        }
    }
}

impl TraceChecks {
    /// Checks the lines of `trace` not seen yet (the trace only ever grows).
    pub fn check(&mut self, trace: &[String]) -> anyhow::Result<()> {
        for line in &trace[self.seen..] {
            self.seen += 1;
            for check in &mut self.checks {
                check.observe(line)?;
            }
        }
        Ok(())
    }
}

/// The machine and the `key=value` fields of a trace line.
fn parse(line: &str) -> Option<(&str, BTreeMap<&str, &str>)> {
    let mut words = line.split_whitespace();
    let _at_ms = words.next()?;
    let machine = words.next()?;
    let fields = words.filter_map(|w| w.split_once('=')).collect();
    Some((machine, fields))
}

/// `TERM/NODE.SEQ`, a command id as displayed, to its (term, node).
fn leadership_of(id: &str) -> Option<(u64, u64)> {
    let (leadership, _seq) = id.split_once('.')?;
    leadership_of_pair(leadership)
}

/// `TERM/NODE`, a leadership as displayed, to its (term, node).
fn leadership_of_pair(leadership: &str) -> Option<(u64, u64)> {
    let (term, node) = leadership.split_once('/')?;
    Some((term.parse().ok()?, node.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use qvdc_transport::protocol::ClusterStatus;

    use super::*;

    /// Runs one invariant over a whole trace.
    fn check_trace(invariant: &mut dyn TraceInvariant, trace: &[String]) -> anyhow::Result<()> {
        trace.iter().try_for_each(|line| invariant.observe(line))
    }

    fn vm_runs_on_one_host_at_a_time(trace: &[String]) -> anyhow::Result<()> {
        check_trace(&mut VmRunsOnOneHostAtATime::default(), trace)
    }

    fn one_leader_per_leadership(trace: &[String]) -> anyhow::Result<()> {
        check_trace(&mut OneLeaderPerLeadership, trace)
    }

    fn hosts_obey_leaderships_in_order(trace: &[String]) -> anyhow::Result<()> {
        check_trace(&mut HostsObeyLeadershipsInOrder::default(), trace)
    }

    fn line(at: u64, machine: &str, text: &str) -> String {
        format!("{at:>8} {machine:<9} INFO  qvdc: {text}")
    }

    #[test]
    fn a_vm_started_on_a_second_host_is_caught() {
        let ok = [
            line(1, "host-1", "vm operation done vm=web op=start"),
            line(2, "host-1", "vm operation done vm=web op=force-off"),
            line(3, "host-2", "vm operation done vm=web op=start"),
            line(4, "host-1", "vm operation done vm=db op=start"),
        ];
        vm_runs_on_one_host_at_a_time(&ok).unwrap();
        let split = [
            line(1, "host-1", "vm operation done vm=web op=start"),
            line(2, "host-2", "vm operation done vm=web op=start"),
        ];
        let err = vm_runs_on_one_host_at_a_time(&split).unwrap_err();
        assert!(err.to_string().contains("web runs on"), "{err}");
    }

    #[test]
    fn a_vm_whose_host_crashed_may_start_elsewhere() {
        let crashed = [
            line(1, "host-1", "vm operation done vm=web op=start"),
            line(2, "-", "machine crashed machine=host-1"),
            line(3, "host-2", "vm operation done vm=web op=start"),
        ];
        vm_runs_on_one_host_at_a_time(&crashed).unwrap();
        let partitioned = [
            line(1, "host-1", "vm operation done vm=web op=start"),
            line(2, "-", "machine crashed machine=host-3"),
            line(3, "host-2", "vm operation done vm=web op=start"),
        ];
        assert!(vm_runs_on_one_host_at_a_time(&partitioned).is_err());
    }

    #[test]
    fn a_leader_under_another_nodes_leadership_is_caught() {
        let ok = [
            line(
                1,
                "cp2",
                "became leader: supervision started node=2 leadership=1/2",
            ),
            line(
                2,
                "cp3",
                "became leader: supervision started node=3 leadership=1/3",
            ),
            line(
                3,
                "cp2",
                "became leader: supervision started node=2 leadership=4/2",
            ),
        ];
        one_leader_per_leadership(&ok).unwrap();
        let foreign = [line(
            1,
            "cp1",
            "became leader: supervision started node=1 leadership=3/2",
        )];
        assert!(one_leader_per_leadership(&foreign).is_err());
    }

    #[test]
    fn a_host_obeying_a_deposed_leadership_is_caught() {
        let ok = [
            line(1, "host-1", "executing command id=2/1.1 pool=p"),
            line(2, "host-1", "executing command id=2/3.1 pool=p"),
            line(3, "host-2", "executing command id=1/1.4 pool=p"),
        ];
        hosts_obey_leaderships_in_order(&ok).unwrap();
        let deposed_in_term = [
            line(1, "host-1", "executing command id=3/2.1 pool=p"),
            line(2, "host-1", "executing command id=3/1.9 pool=p"),
        ];
        assert!(hosts_obey_leaderships_in_order(&deposed_in_term).is_err());
        let older_term = [
            line(1, "host-1", "executing command id=3/1.1 pool=p"),
            line(2, "host-1", "executing command id=2/3.2 pool=p"),
        ];
        assert!(hosts_obey_leaderships_in_order(&older_term).is_err());
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
    fn checks_run_as_the_trace_grows_and_stop_at_the_first_violation() {
        let mut checks = TraceChecks::default();
        let mut trace = vec![line(1, "host-1", "vm operation done vm=web op=start")];
        checks.check(&trace).unwrap();
        trace.push(line(2, "host-2", "vm operation done vm=db op=start"));
        checks.check(&trace).unwrap();
        trace.push(line(3, "host-2", "vm operation done vm=web op=start"));
        let err = checks.check(&trace).unwrap_err();
        assert!(err.to_string().contains("web runs on"), "{err}");
    }
}
