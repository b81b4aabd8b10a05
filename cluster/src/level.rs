//! The cluster's release level (ADR 25): a command that a previous release cannot decode is
//! proposed only once every member runs a release that can. The leader asks each member
//! which level it runs and, once all answer with this release's level, commits
//! `SetClusterLevel`; from then on changes carry who asked (the audit trail). A node of an
//! older release cannot be added to a cluster of a higher level (see `membership`).

use std::{sync::Arc, time::Duration};

use qvdc_raft::{model::CLUSTER_LEVEL, network, Command};
use qvdc_transport::protocol::Leadership;
use tracing::{debug, info};

use crate::{context::Context, write::propose};

/// How often a leader of a cluster below its own level asks the members again.
const LEVEL_CHECK_MS: u64 = 1_000;
/// How long a member gets to answer.
const LEVEL_ASK_MS: u64 = 500;

/// Raises the cluster's level to this release's while this node leads for `leadership`.
pub(crate) async fn raise(node: Arc<Context>, leadership: Leadership) {
    let period = Duration::from_millis(LEVEL_CHECK_MS);
    let each = |_| {
        let node = node.clone();
        async move {
            let lowest = lowest_member_level(&node).await;
            if lowest < CLUSTER_LEVEL {
                debug!(
                    lowest,
                    "a member runs an older release; the cluster level stays"
                );
                return Ok(());
            }
            let level = Command::SetClusterLevel {
                level: CLUSTER_LEVEL,
                at_ms: node.clock.wall_ms(),
            };
            propose(&node, level).await.map_err(|e| format!("{e:?}"))?;
            info!(
                level = CLUSTER_LEVEL,
                "every member runs this release: cluster level raised"
            );
            Ok(())
        }
    };
    let below = || node.desired().audit.level < CLUSTER_LEVEL;
    node.each_leader_round(leadership, period, "cluster level", below, each)
        .await;
}

/// The lowest release level among the members (voters and learners); a member that does
/// not answer counts as level 0.
async fn lowest_member_level(node: &Context) -> u32 {
    let members: Vec<(u64, String)> = {
        let metrics = node.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != node.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    };
    let mut lowest = CLUSTER_LEVEL;
    for (id, addr) in members {
        lowest = lowest.min(member_level(node, id, &addr).await);
    }
    lowest
}

/// The release level of member `id` at `addr`; 0 if it does not answer with one.
pub(crate) async fn member_level(node: &Context, id: u64, addr: &str) -> u32 {
    let Ok(addr) = addr.parse() else {
        return 0;
    };
    let ttl = Duration::from_millis(LEVEL_ASK_MS);
    match network::level(&node.peers, addr, ttl).await {
        Ok(level) => level,
        Err(e) => {
            debug!(node = id, error = %e, "no release level from a member");
            0
        }
    }
}
