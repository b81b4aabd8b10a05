//! A VM never runs on two hosts at once, as the hosts state their domain operations: a start
//! (or reboot) on one host while it still runs on another is a split brain.
//!
//! A VM is its qvdc id, not its name: a name is free again once its VM is deleted, while a
//! guest of the deleted VM may run on in a host that has not heard of the delete (an
//! isolated host whose isolation response keeps its guests). A new VM under that name, on
//! its own disks, running elsewhere is not the old one running twice. A domain whose id is
//! not known is taken to be every VM of its name.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::ensure;
use qvdc_transport::facts::{Fact, Guest};

use super::FactInvariant;

#[derive(Default)]
pub struct VmRunsOnOneHostAtATime {
    /// Per VM name, the hosts where a guest of that name runs, with the id it runs as.
    running: BTreeMap<String, BTreeMap<String, Option<String>>>,
}

impl FactInvariant for VmRunsOnOneHostAtATime {
    fn observe(&mut self, at_ms: u64, fact: &Fact) -> anyhow::Result<()> {
        let fact = match fact {
            // What the hypervisors themselves say, beside what the agents said they did.
            Fact::GuestRuns {
                host,
                vm,
                elsewhere,
            } => {
                ensure!(
                    elsewhere.is_empty(),
                    "at {at_ms} ms a guest of VM {vm} began to run on {host} while one ran on {elsewhere:?}"
                );
                return Ok(());
            }
            // A crashed host's guests stopped with it.
            Fact::MachineCrashed { machine } => {
                self.running.values_mut().for_each(|hosts| {
                    hosts.remove(machine);
                });
                return Ok(());
            }
            Fact::VmOperation {
                host,
                vm,
                op,
                guest,
                id,
            } => (host, vm, op, guest, id),
            _ => return Ok(()),
        };
        let (host, vm, op, guest, id) = fact;
        let hosts = self.running.entry(vm.clone()).or_default();
        match guest {
            Guest::Runs => drop(hosts.insert(host.clone(), id.clone())),
            Guest::Gone => drop(hosts.remove(host)),
            Guest::Unchanged => {}
        }
        let Some(mine) = hosts.get(host) else {
            return Ok(());
        };
        let same: BTreeSet<&String> = hosts
            .iter()
            .filter(|(_, theirs)| mine.is_none() || theirs.is_none() || *theirs == mine)
            .map(|(host, _)| host)
            .collect();
        ensure!(
            same.len() <= 1,
            "at {at_ms} ms VM {vm} runs on {same:?} at once (id {}, after {op} on {host})",
            mine.as_deref().unwrap_or("unknown")
        );
        Ok(())
    }
}
