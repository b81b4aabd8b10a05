//! Properties every run must have, checked over its event trace and its final state. Each
//! returns the first violation it finds, worded for the person replaying the seed.

use std::collections::BTreeMap;

use anyhow::{bail, ensure};
use qvdc_transport::protocol::ClusterStatus;

/// The machine and the `key=value` fields of a trace line.
fn parse(line: &str) -> Option<(&str, BTreeMap<&str, &str>)> {
    let mut words = line.split_whitespace();
    let _at_ms = words.next()?;
    let machine = words.next()?;
    let fields = words.filter_map(|w| w.split_once('=')).collect();
    Some((machine, fields))
}

/// Election safety, in the form openraft's leader ids give it (ADR 7): a leader is named by
/// its leadership `(term, node)`, and several nodes may lead one after another within a
/// term (a higher node id outranks a lower one). So the unit of "one leader" is the
/// leadership: each leadership a node takes up must name that node, which also catches a
/// node starting supervision under a leadership it did not win (stale or foreign metrics).
pub fn one_leader_per_leadership(trace: &[String]) -> anyhow::Result<()> {
    for line in trace.iter().filter(|l| l.contains("became leader")) {
        let Some((_, fields)) = parse(line) else {
            continue;
        };
        let leadership = fields.get("leadership").and_then(|l| leadership_of_pair(l));
        let node: Option<u64> = fields.get("node").and_then(|n| n.parse().ok());
        let (Some((term, leader)), Some(node)) = (leadership, node) else {
            bail!("a leader without its node or leadership: {line}");
        };
        ensure!(
            leader == node,
            "node {node} took up leadership {term}/{leader}, which names another node:\n  {line}"
        );
    }
    Ok(())
}

/// Fencing, as the hosts report it: a host never executes a command of a lower leadership
/// (term, then leader node) after one of a higher leadership.
pub fn hosts_obey_leaderships_in_order(trace: &[String]) -> anyhow::Result<()> {
    let mut highest: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let executed = trace.iter().filter(|l| l.contains("executing command"));
    for line in executed {
        let Some((machine, fields)) = parse(line) else {
            continue;
        };
        let Some(leadership) = fields.get("id").and_then(|id| leadership_of(id)) else {
            bail!("a command without a leadership: {line}");
        };
        let seen = highest.entry(machine).or_insert(leadership);
        ensure!(
            leadership >= *seen,
            "{machine} executed a command of leadership {leadership:?} after one of {seen:?}:\n  {line}"
        );
        *seen = leadership;
    }
    Ok(())
}

/// A VM never runs on two hosts at once, as the hosts report their domain operations: a
/// start (or reboot) on one host while it still runs on another is a split brain.
pub fn vm_runs_on_one_host_at_a_time(trace: &[String]) -> anyhow::Result<()> {
    let mut running: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    let relevant = |l: &&String| l.contains("vm operation done") || l.contains("machine crashed");
    for line in trace.iter().filter(relevant) {
        if line.contains("machine crashed") {
            // A crashed host's guests stopped with it.
            let Some((_, fields)) = parse(line) else {
                continue;
            };
            let machine = fields.get("machine").copied().unwrap_or_default();
            running.values_mut().for_each(|hosts| {
                hosts.remove(machine);
            });
            continue;
        }
        let Some((machine, fields)) = parse(line) else {
            continue;
        };
        let (Some(vm), Some(op)) = (fields.get("vm"), fields.get("op")) else {
            bail!("a VM operation without its VM or op: {line}");
        };
        let hosts = running.entry(vm).or_default();
        match *op {
            "start" | "reboot" => {
                hosts.insert(machine);
            }
            "shutdown" | "force-off" | "undefine" => {
                hosts.remove(machine);
            }
            "define" | "adopt" => {}
            other => bail!("unknown VM operation {other:?}: {line}"),
        }
        ensure!(
            hosts.len() <= 1,
            "VM {vm} runs on {hosts:?} at once:\n  {line}"
        );
    }
    Ok(())
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

/// State machine safety: nodes that applied the same prefix of the log hold the same state.
pub fn same_index_same_state(statuses: &[ClusterStatus]) -> anyhow::Result<()> {
    for a in statuses {
        for b in statuses
            .iter()
            .filter(|b| b.node_id > a.node_id && b.last_applied == a.last_applied)
        {
            ensure!(
                a.state_digest == b.state_digest,
                "nodes {} and {} applied up to {:?} but hold different states ({:016x} vs {:016x})",
                a.node_id,
                b.node_id,
                a.last_applied,
                a.state_digest,
                b.state_digest
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
