//! The operator API on a node. Mutations are validated against the desired state, then
//! proposed to Raft; queries about reported state are answered by the leader's supervision
//! tree. A follower redirects the client to the leader.

use openraft::error::{ClientWriteError, RaftError};
use qvdc_raft::{Command, Outcome, ValidationError};
use qvdc_transport::protocol::{
    ApiError, ApiErrorKind, ApiRequest, ApiResponse, ClusterStatus, HostView, Liveness,
    MemberStatus, PoolSpec, Response,
};

use crate::node::NodeInner;

fn rejected(e: ValidationError) -> Response {
    let kind = match e {
        ValidationError::PoolExists(_) => ApiErrorKind::AlreadyExists,
        _ => ApiErrorKind::Invalid,
    };
    Response::Api(Err(ApiError::new(kind, e.to_string())))
}

fn unavailable(message: impl Into<String>) -> Response {
    Response::Api(Err(ApiError::new(ApiErrorKind::Unavailable, message)))
}

/// Validates `command` against the current desired state and commits it through Raft.
/// The error is the response to send back as it is.
pub(crate) async fn propose(node: &NodeInner, command: Command) -> Result<(), Response> {
    node.desired.borrow().validate(&command).map_err(rejected)?;
    match node.raft.client_write(command).await {
        Ok(written) => match written.data {
            Outcome::Applied | Outcome::Unchanged => Ok(()),
            Outcome::Rejected(e) => Err(rejected(e)),
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(node.not_leader()),
        Err(e) => Err(unavailable(format!(
            "the write was not committed: {e}; retry"
        ))),
    }
}

pub(crate) async fn handle(node: &NodeInner, request: ApiRequest) -> Response {
    match request {
        ApiRequest::ClusterStatus => {
            let mut status = cluster_status(node);
            // A leader cut off from its peers still believes it leads; do not repeat that.
            if status.leader == Some(node.id) && node.leading().await.is_err() {
                status.leader = None;
            }
            Response::Api(Ok(ApiResponse::ClusterStatus(status)))
        }
        ApiRequest::PoolCreate {
            request_id,
            spec,
            hosts,
        } => create_pool(node, request_id, spec, hosts).await,
        ApiRequest::HostList | ApiRequest::PoolShow { .. } | ApiRequest::PoolList => {
            // Reported state lives in the leader's memory.
            let supervision = match node.leading().await {
                Ok(supervision) => supervision,
                Err(response) => return response,
            };
            let result = match request {
                ApiRequest::HostList => supervision
                    .liveness()
                    .await
                    .map(|live| ApiResponse::Hosts(host_views(node, &live))),
                ApiRequest::PoolList => supervision.pool_views().await.map(ApiResponse::Pools),
                ApiRequest::PoolShow { name } => match supervision.pool_view(&name).await {
                    Ok(Some(view)) => Ok(ApiResponse::Pool(view)),
                    Ok(None) => return not_found_pool(node, &name),
                    Err(e) => Err(e),
                },
                _ => unreachable!("matched above"),
            };
            result.map_or_else(|e| unavailable(e.to_string()), |r| Response::Api(Ok(r)))
        }
    }
}

fn not_found_pool(node: &NodeInner, name: &str) -> Response {
    if node.desired.borrow().pools.contains_key(name) {
        return unavailable(format!(
            "pool {name:?} is being set up on this leader; retry in a moment"
        ));
    }
    let message = format!("no pool named {name:?}; `qvctl pool list` shows the pools");
    Response::Api(Err(ApiError::new(ApiErrorKind::NotFound, message)))
}

async fn create_pool(
    node: &NodeInner,
    request_id: String,
    spec: PoolSpec,
    hosts: Vec<String>,
) -> Response {
    let name = spec.name.clone();
    let command = Command::Once {
        request_id,
        command: Box::new(Command::CreatePool { spec, hosts }),
    };
    match propose(node, command).await {
        Ok(()) => Response::Api(Ok(ApiResponse::PoolCreated { name })),
        Err(response) => response,
    }
}

fn host_views(
    node: &NodeInner,
    live: &std::collections::BTreeMap<String, Liveness>,
) -> Vec<HostView> {
    let desired = node.desired.borrow();
    desired
        .hosts
        .values()
        .map(|h| HostView {
            host_id: h.host_id.clone(),
            inventory: h.inventory.clone(),
            liveness: live
                .get(&h.host_id)
                .copied()
                .unwrap_or(Liveness::Unreachable),
        })
        .collect()
}

fn cluster_status(node: &NodeInner) -> ClusterStatus {
    let metrics = node.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, n)| MemberStatus {
            node_id: *id,
            addr: n.addr.clone(),
            voter: voters.contains(id),
        })
        .collect();
    ClusterStatus {
        node_id: node.id,
        leader: metrics.current_leader,
        term: metrics.current_term,
        last_log_index: metrics.last_log_index,
        last_applied: metrics.last_applied.map(|l| l.index),
        members,
        snapshot_index: metrics.snapshot.map(|l| l.index),
        purged_index: metrics.purged.map(|l| l.index),
        state_digest: node.desired.borrow().digest(),
    }
}
