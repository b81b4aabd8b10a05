//! Fencing, as the hosts state it: a host never obeys a command of a lower leadership
//! (term, then leader node) after one of a higher leadership.

use std::collections::BTreeMap;

use anyhow::ensure;
use qvdc_transport::{facts::Fact, protocol::Leadership};

use super::FactInvariant;

#[derive(Default)]
pub struct HostsObeyLeadershipsInOrder {
    /// Per host, the highest leadership whose command it obeyed.
    highest: BTreeMap<String, Leadership>,
}

impl FactInvariant for HostsObeyLeadershipsInOrder {
    fn observe(&mut self, at_ms: u64, fact: &Fact) -> anyhow::Result<()> {
        let Fact::CommandObeyed { host, id } = fact else {
            return Ok(());
        };
        let seen = self.highest.entry(host.clone()).or_insert(id.leadership);
        ensure!(
            id.leadership >= *seen,
            "at {at_ms} ms {host} obeyed command {id} of leadership {} after one of {seen}",
            id.leadership
        );
        *seen = id.leadership;
        Ok(())
    }
}
