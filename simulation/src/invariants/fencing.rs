//! Fencing, as the hosts report it: a host never executes a command of a lower leadership
//! (term, then leader node) after one of a higher leadership.

use std::collections::BTreeMap;

use anyhow::{bail, ensure};

use super::{leadership_of, parse, TraceInvariant};

#[derive(Default)]
pub struct HostsObeyLeadershipsInOrder {
    /// Per host, the highest leadership whose command it executed.
    highest: BTreeMap<String, (u64, u64)>,
}

impl TraceInvariant for HostsObeyLeadershipsInOrder {
    fn observe(&mut self, line: &str) -> anyhow::Result<()> {
        if !line.contains("executing command") {
            return Ok(());
        }
        let Some((machine, fields)) = parse(line) else {
            return Ok(());
        };
        let Some(leadership) = fields.get("id").and_then(|id| leadership_of(id)) else {
            bail!("a command without a leadership: {line}");
        };
        let seen = self.highest.entry(machine.to_owned()).or_insert(leadership);
        ensure!(
            leadership >= *seen,
            "{machine} executed a command of leadership {leadership:?} after one of {seen:?}:\n  {line}"
        );
        *seen = leadership;
        Ok(())
    }
}
