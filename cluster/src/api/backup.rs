//! `qvctl cluster snapshot save`: a backup through the leader. The leader first confirms a
//! read index with a quorum (so the backup holds every write acknowledged before the
//! request), then hands out the state machine's snapshot at or past that index, asking for a
//! new one if the latest is older.

use std::time::Duration;

use qvdc_raft::backup;
use qvdc_transport::protocol::{ApiResponse, Response};
use tracing::info;

use crate::{context::Context, reply::unavailable};

/// How long the leader waits for a snapshot at or past the read index.
const SNAPSHOT_WAIT_MS: u64 = 10_000;
const SNAPSHOT_POLL_MS: u64 = 20;
const SNAPSHOT_ASK_AGAIN_MS: u64 = 500;

pub(crate) async fn save(ctx: &Context) -> Response {
    if !ctx.is_leader() {
        return ctx.not_leader();
    }
    let read = match ctx.raft.ensure_linearizable().await {
        Ok(read) => read,
        Err(e) => {
            return match e.forward_to_leader() {
                Some(_) => ctx.not_leader(),
                None => unavailable(format!("confirming leadership for a backup: {e}; retry")),
            }
        }
    };
    let wanted = read.map_or(0, |id| id.index);
    // openraft ignores a request while it is building a snapshot (which may stand before
    // `wanted`): ask again now and then until one stands far enough.
    let mut asked: Option<tokio::time::Instant> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(SNAPSHOT_WAIT_MS);
    loop {
        let snapshot = match ctx.raft.get_snapshot().await {
            Ok(snapshot) => snapshot,
            Err(e) => return unavailable(format!("reading the latest snapshot: {e}; retry")),
        };
        if let Some(snapshot) = snapshot {
            let at = snapshot.meta.last_log_id;
            if at.is_some_and(|id| id.index >= wanted) {
                let at = at.expect("checked above");
                let data = snapshot.snapshot.into_inner();
                return match backup::encode(&snapshot.meta, data, ctx.id) {
                    Ok(file) => {
                        info!(index = at.index, bytes = file.len(), "backup taken");
                        Response::Api(Ok(ApiResponse::Backup {
                            index: at.index,
                            term: at.leader_id.term,
                            file,
                        }))
                    }
                    Err(e) => unavailable(format!("encoding the backup: {e}")),
                };
            }
        }
        let now = tokio::time::Instant::now();
        if asked.is_none_or(|at| now >= at + Duration::from_millis(SNAPSHOT_ASK_AGAIN_MS)) {
            if let Err(e) = ctx.raft.trigger().snapshot().await {
                return unavailable(format!("asking for a snapshot: {e}; retry"));
            }
            asked = Some(now);
        }
        if tokio::time::Instant::now() >= deadline {
            return unavailable(format!(
                "no snapshot at or past index {wanted} within {SNAPSHOT_WAIT_MS} ms; retry"
            ));
        }
        tokio::time::sleep(Duration::from_millis(SNAPSHOT_POLL_MS)).await;
    }
}
