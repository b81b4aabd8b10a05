//! The operator API on a node: one function per request, reached from [`handle`]. Writes go
//! through `write` (validated, committed once per request id); reads that involve reported
//! state are answered by the leader's supervision tree once its lease is confirmed; stale
//! reads by any node from its own copy. Rules live in the cores (`qvdc_raft::model`,
//! `qvdc_actors::core`); this module gathers their inputs and carries out their answers.

mod backup;
pub(crate) mod membership;
mod reads;
pub(crate) mod stale;
mod storage;
mod vms;

use qvdc_raft::{
    model::{Caller, RequestDigest, RequestKey},
    Command,
};
use qvdc_transport::protocol::{ApiRequest, ApiResponse, DesiredPower, HostCommandKind, Response};

use crate::{
    calls::on_vm_host,
    context::Context,
    write::{once, propose_once},
};

/// What placement needs to know about every host, now (for HA's restarts).
pub(crate) async fn placement_facts(
    supervision: &qvdc_actors::Supervision,
    ctx: &Context,
) -> Result<Vec<qvdc_actors::core::placement::HostFacts>, Response> {
    vms::facts_now(supervision, ctx).await
}

/// Answers an operator's request; `caller` is who sent it (for the audit trail).
pub(crate) async fn handle(ctx: &Context, caller: Caller, request: ApiRequest) -> Response {
    crate::write::CALLER
        .scope(caller, answer(ctx, request))
        .await
}

async fn answer(ctx: &Context, request: ApiRequest) -> Response {
    // A write's request id is bound to the request as the operator sent it: a retry repeats
    // it exactly, whichever node it reaches and however the leader then places it.
    let digest = RequestDigest::of(&request);
    let key = |id: String| RequestKey { id, digest };
    // A leader being stopped on purpose takes nothing new while it hands over; the client
    // retries and finds the next leader.
    if ctx.is_stepping_down()
        && !matches!(request, ApiRequest::ClusterStatus | ApiRequest::Stale(_))
    {
        return Response::NotLeader { leader: None };
    }
    match request {
        ApiRequest::ClusterStatus => {
            let mut status = ctx.cluster_status();
            // A leader cut off from its peers still believes it leads; do not repeat that.
            if status.leader == Some(ctx.id) && ctx.leading().await.is_err() {
                status.leader = None;
            }
            Response::Api(Ok(ApiResponse::ClusterStatus(status)))
        }
        ApiRequest::Stale(request) => stale::answer(ctx, *request),
        ApiRequest::ClusterBackup => backup::save(ctx).await,
        ApiRequest::ClusterAddNode { node_id, addr } => {
            membership::add_node(ctx, node_id, addr).await
        }
        ApiRequest::ClusterRemoveNode { node_id } => membership::remove_node(ctx, node_id).await,
        ApiRequest::PoolCreate {
            request_id,
            spec,
            hosts,
        } => storage::create_pool(ctx, key(request_id), spec, hosts).await,
        ApiRequest::VmCreate {
            request_id,
            spec,
            host,
            start,
        } => vms::create(ctx, key(request_id), spec, host, start, Default::default()).await,
        ApiRequest::VmCreateHa {
            request_id,
            spec,
            host,
            start,
            ha,
        } => vms::create(ctx, key(request_id), spec, host, start, ha).await,
        ApiRequest::VmSetHa {
            request_id,
            name,
            ha,
        } => once(ctx, key(request_id), Command::SetVmHa { name, ha }).await,
        ApiRequest::VmHa { name } => match ctx.leading().await {
            Ok(_) => crate::ha::view(ctx, name),
            Err(response) => response,
        },
        ApiRequest::HostRemove { request_id, host } => {
            vms::remove_host(ctx, key(request_id), host).await
        }
        ApiRequest::VmSetPower {
            request_id,
            name,
            power,
        } => once(ctx, key(request_id), Command::SetVmPower { name, power }).await,
        ApiRequest::VmDelete { request_id, name } => vms::delete(ctx, key(request_id), name).await,
        ApiRequest::VmAdopt {
            request_id,
            host,
            domain,
            name,
        } => vms::adopt(ctx, key(request_id), host, domain, name).await,
        ApiRequest::VmRelease { request_id, name } => {
            vms::release(ctx, key(request_id), name).await
        }
        ApiRequest::VmForceOff { request_id, name } => {
            let command = Command::SetVmPower {
                name: name.clone(),
                power: DesiredPower::Stopped,
            };
            if let Err(response) = propose_once(ctx, key(request_id), command).await {
                return response;
            }
            on_vm_host(
                ctx,
                &name,
                HostCommandKind::ForceOffVm { name: name.clone() },
            )
            .await
        }
        ApiRequest::VmReboot { request_id, name } => {
            let reboot = HostCommandKind::RebootVm {
                name: name.clone(),
                request: request_id,
            };
            on_vm_host(ctx, &name, reboot).await
        }
        ApiRequest::PoolAssign {
            request_id,
            pool,
            hosts,
        } => once(ctx, key(request_id), Command::AssignPool { pool, hosts }).await,
        ApiRequest::PoolUnassign {
            request_id,
            pool,
            hosts,
        } => once(ctx, key(request_id), Command::UnassignPool { pool, hosts }).await,
        ApiRequest::PoolDelete { request_id, pool } => {
            once(ctx, key(request_id), Command::DeletePool { pool }).await
        }
        ApiRequest::VolumeCreate {
            request_id,
            pool,
            name,
            format,
            size_bytes,
            host,
        } => {
            let key = key(request_id);
            storage::create_volume(ctx, key, pool, name, format, size_bytes, host).await
        }
        ApiRequest::VolumeResize {
            request_id,
            pool,
            name,
            size_bytes,
        } => {
            let command = Command::ResizeVolume {
                pool,
                name,
                size_bytes,
            };
            once(ctx, key(request_id), command).await
        }
        ApiRequest::VolumeDelete {
            request_id,
            pool,
            name,
        } => storage::delete_volume(ctx, key(request_id), pool, name).await,
        ApiRequest::PoolFiles { pool, host } => storage::files(ctx, pool, host).await,
        ApiRequest::PoolRemnants { pool } => storage::remnants(ctx, pool).await,
        ApiRequest::HostMaintenance {
            request_id,
            host,
            on,
        } => crate::moves::maintenance(ctx, key(request_id), host, on).await,
        ApiRequest::VmMigrate {
            request_id,
            name,
            to,
        } => crate::moves::migrate(ctx, key(request_id), name, to).await,
        ApiRequest::Moves => crate::moves::moves(ctx).await,
        ApiRequest::Events {
            since,
            reported,
            wait_ms,
            max,
        } => crate::events::answer(ctx, since, reported, wait_ms, max).await,
        ApiRequest::SetAuditRetention {
            request_id,
            entries,
        } => {
            // A member of a release without the trail could not decode the command.
            if ctx.desired().audit.level < qvdc_raft::model::AUDIT_LEVEL {
                return crate::reply::invalid(
                    "the cluster keeps no audit trail yet: a member runs a release without it; \
                     upgrade every node first (`qvctl cluster status`)"
                        .to_owned(),
                );
            }
            once(ctx, key(request_id), Command::SetAuditRetention(entries)).await
        }
        ApiRequest::CertRevoke {
            request_id,
            certificate,
        } => {
            let command = Command::RevokeCertificate(certificate);
            once(ctx, key(request_id), command).await
        }
        ApiRequest::CertRevoked => {
            let revoked = ctx.desired.borrow().revoked.values().cloned().collect();
            Response::Api(Ok(ApiResponse::Revoked(revoked)))
        }
        ApiRequest::VmPlacement { spec, host } => vms::placement(ctx, spec, host).await,
        ApiRequest::NetworkCreate {
            request_id,
            spec,
            hosts,
        } => once(ctx, key(request_id), Command::CreateNetwork { spec, hosts }).await,
        ApiRequest::NetworkAssign {
            request_id,
            network,
            hosts,
        } => {
            let command = Command::AssignNetwork { network, hosts };
            once(ctx, key(request_id), command).await
        }
        ApiRequest::NetworkUnassign {
            request_id,
            network,
            hosts,
        } => {
            let command = Command::UnassignNetwork { network, hosts };
            once(ctx, key(request_id), command).await
        }
        ApiRequest::NetworkDelete {
            request_id,
            network,
        } => once(ctx, key(request_id), Command::DeleteNetwork { network }).await,
        // Reported state lives in the leader's memory: these need a confirmed lease.
        ApiRequest::HostList
        | ApiRequest::HostShow { .. }
        | ApiRequest::PoolList
        | ApiRequest::PoolShow { .. }
        | ApiRequest::VolumeList { .. }
        | ApiRequest::VmList
        | ApiRequest::VmShow { .. }
        | ApiRequest::NetworkList
        | ApiRequest::NetworkShow { .. } => {
            let supervision = match ctx.leading().await {
                Ok(supervision) => supervision,
                Err(response) => return response,
            };
            let s = &supervision;
            match request {
                ApiRequest::HostList => reads::hosts(ctx, s).await,
                ApiRequest::HostShow { host } => reads::host(ctx, s, &host).await,
                ApiRequest::PoolList => reads::pools(ctx, s).await,
                ApiRequest::PoolShow { name } => reads::pool(ctx, s, &name).await,
                ApiRequest::VolumeList { pool } => reads::volumes(ctx, s, &pool).await,
                ApiRequest::VmList => reads::vms(ctx, s).await,
                ApiRequest::VmShow { name } => reads::vm(ctx, s, &name).await,
                ApiRequest::NetworkList => reads::networks(ctx, s).await,
                ApiRequest::NetworkShow { network } => reads::network(s, &network).await,
                _ => unreachable!("matched above"),
            }
        }
    }
}
