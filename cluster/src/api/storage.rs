//! Pool and volume requests that reach hosts: a volume's file is deleted on the host(s) the
//! desired state says hold it, a pool's files are listed by a host that has it mounted, and
//! remnants are what hosts still report mounted without an assignment.

use qvdc_raft::{model::RequestKey, Command};
use qvdc_transport::protocol::{
    ApiResponse, CommandOutput, HostCommandKind, Liveness, PoolSpec, Response, VolumeFormat,
};

use crate::{
    calls::{on_pool_host, reported_now},
    context::Context,
    reply::unavailable,
    write::{once, propose_once},
};

pub(crate) async fn create_pool(
    ctx: &Context,
    key: RequestKey,
    spec: PoolSpec,
    hosts: Vec<String>,
) -> Response {
    let name = spec.name.clone();
    match propose_once(ctx, key, Command::CreatePool { spec, hosts }).await {
        Ok(()) => Response::Api(Ok(ApiResponse::PoolCreated { name })),
        Err(response) => response,
    }
}

pub(crate) async fn create_volume(
    ctx: &Context,
    key: RequestKey,
    pool: String,
    name: String,
    format: VolumeFormat,
    size_bytes: u64,
    host: Option<String>,
) -> Response {
    let host = ctx.desired.borrow().volume_host(&pool, host);
    let command = Command::CreateVolume {
        host,
        pool,
        name,
        format,
        size_bytes,
    };
    once(ctx, key, command).await
}

/// Forgets the volume, then deletes its file on the host(s) that hold it, or on any healthy
/// host of a shared pool.
pub(crate) async fn delete_volume(
    ctx: &Context,
    key: RequestKey,
    pool: String,
    name: String,
) -> Response {
    let hosts = ctx.desired.borrow().volume_file_hosts(&pool, &name);
    let command = Command::DeleteVolume {
        pool: pool.clone(),
        name: name.clone(),
    };
    if let Err(response) = propose_once(ctx, key, command).await {
        return response;
    }
    let delete = || HostCommandKind::DeleteVolume {
        pool: pool.clone(),
        name: name.clone(),
    };
    if hosts.is_empty() {
        if let Err(response) = on_pool_host(ctx, &pool, None, delete()).await {
            return response;
        }
    }
    for host in hosts {
        if let Err(response) = on_pool_host(ctx, &pool, Some(host), delete()).await {
            return response;
        }
    }
    Response::Api(Ok(ApiResponse::Done))
}

/// The files in `pool` as `host` (or any healthy host of it) lists them.
pub(crate) async fn files(ctx: &Context, pool: String, host: Option<String>) -> Response {
    let list = HostCommandKind::ListVolumes { pool: pool.clone() };
    match on_pool_host(ctx, &pool, host, list).await {
        Ok((host, CommandOutput::Volumes(files))) => {
            Response::Api(Ok(ApiResponse::Files { pool, host, files }))
        }
        Ok((_, other)) => unavailable(format!("unexpected answer {other:?}")),
        Err(response) => response,
    }
}

/// The hosts whose last heartbeat still shows `pool` mounted though it is not assigned to
/// them (anymore).
pub(crate) async fn remnants(ctx: &Context, pool: String) -> Response {
    let (_, reported, liveness) = match reported_now(ctx).await {
        Ok(all) => all,
        Err(response) => return response,
    };
    let desired = ctx.desired();
    let assigned = |host: &str| {
        desired
            .pools
            .get(&pool)
            .is_some_and(|record| record.hosts.contains(host))
    };
    let unheard = desired
        .hosts
        .keys()
        .filter(|host| !reported.contains_key(*host))
        .cloned()
        .collect();
    let hosts = reported
        .into_iter()
        .filter(|(host, seen)| seen.pools.contains(&pool) && !assigned(host))
        .map(|(host, _)| {
            let state = liveness
                .get(&host)
                .copied()
                .unwrap_or(Liveness::Unreachable);
            (host, state)
        })
        .collect();
    Response::Api(Ok(ApiResponse::Remnants {
        pool,
        hosts,
        unheard,
    }))
}
