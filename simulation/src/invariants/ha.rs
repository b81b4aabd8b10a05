//! HA's fencing comes before the storage lock: a host that lost its lease stops its HA
//! guests itself, so shared storage's lock only ever has to refuse a second start of a VM
//! whose first guest runs where nothing could stop it — on a host whose agent is dead, or
//! one told to keep the guest when isolated. A refusal for a guest on a host whose agent
//! was alive means a VM was restarted before its host's lease lapsed: only the lock stood
//! between it and a second copy.

use std::collections::BTreeSet;

use anyhow::ensure;
use qvdc_transport::facts::{Fact, Guest};

use super::FactInvariant;

#[derive(Default)]
pub struct LeasesFenceBeforeTheLock {
    /// Hosts whose agent the simulation killed and that have not started one since.
    dead_agents: BTreeSet<String>,
    /// (host, VM) guests a host kept running when its lease lapsed.
    kept: BTreeSet<(String, String)>,
}

impl FactInvariant for LeasesFenceBeforeTheLock {
    fn observe(&mut self, at_ms: u64, fact: &Fact) -> anyhow::Result<()> {
        match fact {
            Fact::AgentKilled { machine } => drop(self.dead_agents.insert(machine.clone())),
            Fact::AgentStarted { host } => drop(self.dead_agents.remove(host)),
            Fact::MachineCrashed { machine } => {
                self.dead_agents.remove(machine);
                self.kept.retain(|(host, _)| host != machine);
            }
            Fact::KeptOnIsolation { host, vm } => {
                self.kept.insert((host.clone(), vm.clone()));
            }
            Fact::VmOperation {
                host,
                vm,
                guest: Guest::Gone,
                ..
            } => drop(self.kept.remove(&(host.clone(), vm.clone()))),
            Fact::StorageLockRefused { host, vm, holder } => ensure!(
                self.dead_agents.contains(holder)
                    || self.kept.contains(&(holder.clone(), vm.clone())),
                "at {at_ms} ms the storage lock refused to start {vm} on {host} while its guest \
                 still ran on {holder}, whose agent was alive: it was restarted before {holder}'s \
                 lease lapsed and it fenced the guest"
            ),
            _ => {}
        }
        Ok(())
    }
}
