//! State machine safety: nodes that applied the same prefix of the log hold the same state.
//! Checked on the nodes' statuses once they have caught up (see `harness::nodes_agree`).

use anyhow::ensure;
use qvdc_transport::protocol::ClusterStatus;

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
