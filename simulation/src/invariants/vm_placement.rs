//! A VM never runs on two hosts at once, as the hosts state their domain operations: a start
//! (or reboot) on one host while it still runs on another is a split brain.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::ensure;
use qvdc_transport::facts::{Fact, Guest};

use super::FactInvariant;

#[derive(Default)]
pub struct VmRunsOnOneHostAtATime {
    /// Per VM name, the hosts where its guest runs.
    running: BTreeMap<String, BTreeSet<String>>,
}

impl FactInvariant for VmRunsOnOneHostAtATime {
    fn observe(&mut self, at_ms: u64, fact: &Fact) -> anyhow::Result<()> {
        let (host, vm, op, guest) = match fact {
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
            } => (host, vm, op, guest),
            _ => return Ok(()),
        };
        let hosts = self.running.entry(vm.clone()).or_default();
        match guest {
            Guest::Runs => drop(hosts.insert(host.clone())),
            Guest::Gone => drop(hosts.remove(host)),
            Guest::Unchanged => {}
        }
        ensure!(
            hosts.len() <= 1,
            "at {at_ms} ms VM {vm} runs on {hosts:?} at once (after {op} on {host})"
        );
        Ok(())
    }
}
