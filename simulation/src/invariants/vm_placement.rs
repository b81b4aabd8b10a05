//! A VM never runs on two hosts at once, as the hosts report their domain operations: a start
//! (or reboot) on one host while it still runs on another is a split brain.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure};

use super::{parse, TraceInvariant};

#[derive(Default)]
pub struct VmRunsOnOneHostAtATime {
    /// Per VM name, the hosts where its guest runs.
    running: BTreeMap<String, BTreeSet<String>>,
}

impl TraceInvariant for VmRunsOnOneHostAtATime {
    fn observe(&mut self, line: &str) -> anyhow::Result<()> {
        if line.contains("machine crashed") {
            // A crashed host's guests stopped with it.
            let Some((_, fields)) = parse(line) else {
                return Ok(());
            };
            let machine = fields.get("machine").copied().unwrap_or_default();
            self.running.values_mut().for_each(|hosts| {
                hosts.remove(machine);
            });
            return Ok(());
        }
        if !line.contains("vm operation done") {
            return Ok(());
        }
        let Some((machine, fields)) = parse(line) else {
            return Ok(());
        };
        let (Some(vm), Some(op)) = (fields.get("vm"), fields.get("op")) else {
            bail!("a VM operation without its VM or op: {line}");
        };
        let hosts = self.running.entry((*vm).to_owned()).or_default();
        match *op {
            "start" | "reboot" => {
                hosts.insert(machine.to_owned());
            }
            // A released guest runs on, but no longer as this VM: the name is free again.
            "shutdown" | "force-off" | "undefine" | "release" => {
                hosts.remove(machine);
            }
            "define" | "adopt" | "rename" | "check-adopt" | "check-release" => {}
            other => bail!("unknown VM operation {other:?}: {line}"),
        }
        ensure!(
            hosts.len() <= 1,
            "VM {vm} runs on {hosts:?} at once:\n  {line}"
        );
        Ok(())
    }
}
