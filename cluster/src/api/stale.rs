//! Stale reads (`qvctl --stale ...`): the node that answers first serves the read from its
//! own copy of the desired state, without asking the leader. It answers even when no leader
//! exists (during an election, or on a node cut off from the others), at the price of
//! possibly missing the latest writes. Reported state — health, power, liveness — lives only
//! in the leader's memory, so a stale view shows what should exist with the hosts' side as
//! unknown. Every other read is linearizable: the leader answers after confirming with a
//! quorum that it still leads.

use qvdc_actors::{
    core::{network::NetworkCore, pool::PoolCore, vm::VmCore, volumes::VolumesCore},
    Timings,
};
use qvdc_raft::{
    model::{NetworkRecord, PoolRecord, VmRecord},
    DesiredState,
};
use qvdc_transport::protocol::{
    ApiError, ApiErrorKind, ApiRequest, ApiResponse, Leadership, NetworkView, PoolView, Response,
    VmView,
};
use tokio::time::Instant;

use crate::context::Context;

/// Views built from records alone: no host has reported, so every report is unknown.
const NOBODY: Leadership = Leadership { term: 0, node: 0 };

pub(crate) fn pool_view(record: &PoolRecord) -> PoolView {
    let core = PoolCore::new(
        record.spec.clone(),
        record.hosts.clone(),
        NOBODY,
        Timings::default(),
    );
    let mut volumes = VolumesCore::new(record.spec.name.clone(), NOBODY, Timings::default());
    volumes.set_desired(record.volumes.clone());
    PoolView {
        volumes: volumes.views(),
        ..core.view(Instant::now())
    }
}

pub(crate) fn vm_view(record: &VmRecord) -> VmView {
    VmCore::new(record.clone(), NOBODY, Timings::default()).view(Instant::now())
}

pub(crate) fn network_view(record: &NetworkRecord) -> NetworkView {
    NetworkCore::new(record.clone(), NOBODY, Timings::default()).view(Instant::now())
}

fn not_found(what: &str, name: &str, list: &str) -> Response {
    Response::Api(Err(ApiError::new(
        ApiErrorKind::NotFound,
        format!("no {what} named {name:?} on this node (a stale read may miss recent writes); `qvctl {list}` shows them"),
    )))
}

/// Answers `request` from this node's own state.
pub(crate) fn answer(ctx: &Context, request: ApiRequest) -> Response {
    let desired: std::sync::Arc<DesiredState> = ctx.desired();
    let ok = |response| Response::Api(Ok(response));
    match request {
        ApiRequest::ClusterStatus => ok(ApiResponse::ClusterStatus(ctx.cluster_status())),
        ApiRequest::HostList => ok(ApiResponse::Hosts(ctx.host_views(&Default::default()))),
        ApiRequest::PoolList => ok(ApiResponse::Pools(
            desired.pools.values().map(|p| pool_view(p)).collect(),
        )),
        ApiRequest::PoolShow { name } => match desired.pools.get(&name) {
            Some(record) => ok(ApiResponse::Pool(pool_view(record))),
            None => not_found("pool", &name, "pool list"),
        },
        ApiRequest::VolumeList { pool } => match desired.pools.get(&pool) {
            Some(record) => ok(ApiResponse::Volumes(pool_view(record).volumes)),
            None => not_found("pool", &pool, "pool list"),
        },
        ApiRequest::VmList => ok(ApiResponse::Vms(
            desired.vms.values().map(vm_view).collect(),
        )),
        ApiRequest::VmShow { name } => match desired.vms.get(&name) {
            Some(record) => ok(ApiResponse::Vm(vm_view(record))),
            None => not_found("VM", &name, "vm list"),
        },
        ApiRequest::NetworkList => ok(ApiResponse::Networks(
            desired.networks.values().map(network_view).collect(),
        )),
        ApiRequest::NetworkShow { network } => match desired.networks.get(&network) {
            Some(record) => ok(ApiResponse::Network(network_view(record))),
            None => not_found("network", &network, "network list"),
        },
        ApiRequest::CertRevoked => ok(ApiResponse::Revoked(
            desired.revoked.values().cloned().collect(),
        )),
        _ => Response::Api(Err(ApiError::new(
            ApiErrorKind::Invalid,
            "--stale applies to cluster status and the list and show commands of hosts, \
             pools, volumes, VMs and networks; this command needs the leader, so leave \
             --stale out",
        ))),
    }
}
