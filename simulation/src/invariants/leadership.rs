//! Election safety, in the form openraft's leader ids give it (ADR 7): a leader is named by
//! its leadership `(term, node)`, and several nodes may lead one after another within a term
//! (a higher node id outranks a lower one). So the unit of "one leader" is the leadership:
//! each leadership a node takes up must name that node, which also catches a node starting
//! supervision under a leadership it did not win (stale or foreign metrics).

use anyhow::{bail, ensure};

use super::{leadership_of_pair, parse, TraceInvariant};

pub struct OneLeaderPerLeadership;

impl TraceInvariant for OneLeaderPerLeadership {
    fn observe(&mut self, line: &str) -> anyhow::Result<()> {
        if !line.contains("became leader") {
            return Ok(());
        }
        let Some((_, fields)) = parse(line) else {
            return Ok(());
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
        Ok(())
    }
}
