//! Election safety, in the form openraft's leader ids give it (ADR 7): a leader is named by
//! its leadership `(term, node)`, and several nodes may lead one after another within a term
//! (a higher node id outranks a lower one). So the unit of "one leader" is the leadership:
//! each leadership a node takes up must name that node, which also catches a node starting
//! supervision under a leadership it did not win (stale or foreign metrics).

use anyhow::ensure;
use qvdc_transport::facts::Fact;

use super::FactInvariant;

pub struct OneLeaderPerLeadership;

impl FactInvariant for OneLeaderPerLeadership {
    fn observe(&mut self, at_ms: u64, fact: &Fact) -> anyhow::Result<()> {
        let Fact::LeadershipTaken { node, leadership } = fact else {
            return Ok(());
        };
        ensure!(
            leadership.node == *node,
            "at {at_ms} ms node {node} took up leadership {leadership}, which names another node"
        );
        Ok(())
    }
}
