//! Linearizable reads: the leader answers after confirming its lease, from its supervisors'
//! views completed by the desired state it has applied.

use qvdc_actors::{core::placement, Supervision, SupervisionError};
use qvdc_raft::model::OrdMap;
use qvdc_transport::protocol::{ApiResponse, HostDetail, HostPool, Response, VmView};

use crate::{
    api::stale,
    context::Context,
    reply::{invalid, no_host, no_pool, no_vm, not_found, unavailable},
};

fn answer(result: Result<ApiResponse, SupervisionError>) -> Response {
    result.map_or_else(|e| unavailable(e.to_string()), |r| Response::Api(Ok(r)))
}

/// Makes a list of supervisors' views agree with the applied desired state. A supervisor
/// starts (or stops) a moment after the write that created (or deleted) its object was
/// acknowledged; a read must still show every acknowledged write, so an object without a
/// supervisor yet appears with its reports unknown, and one already deleted does not appear.
fn complete<V, R>(
    views: Vec<V>,
    desired: &OrdMap<String, R>,
    name: fn(&V) -> &String,
    desired_only: fn(&R) -> V,
) -> Vec<V> {
    let mut by_name: std::collections::BTreeMap<String, V> = views
        .into_iter()
        .filter(|v| desired.contains_key(name(v)))
        .map(|v| (name(&v).clone(), v))
        .collect();
    for (object, record) in desired {
        by_name
            .entry(object.clone())
            .or_insert_with(|| desired_only(record));
    }
    by_name.into_values().collect()
}

pub(crate) async fn hosts(ctx: &Context, supervision: &Supervision) -> Response {
    answer(
        supervision
            .liveness()
            .await
            .map(|live| ApiResponse::Hosts(ctx.host_views(&live))),
    )
}

pub(crate) async fn pools(ctx: &Context, supervision: &Supervision) -> Response {
    answer(supervision.pool_views().await.map(|views| {
        let desired = ctx.desired();
        ApiResponse::Pools(complete(
            views,
            &desired.pools,
            |v| &v.spec.name,
            |record| stale::pool_view(record),
        ))
    }))
}

pub(crate) async fn pool(ctx: &Context, supervision: &Supervision, name: &str) -> Response {
    match supervision.pool_view(name).await {
        Ok(Some(view)) => Response::Api(Ok(ApiResponse::Pool(view))),
        Ok(None) => no_pool(&ctx.desired.borrow(), name),
        Err(e) => unavailable(e.to_string()),
    }
}

pub(crate) async fn volumes(ctx: &Context, supervision: &Supervision, pool: &str) -> Response {
    match supervision.pool_view(pool).await {
        Ok(Some(view)) => Response::Api(Ok(ApiResponse::Volumes(view.volumes))),
        Ok(None) => no_pool(&ctx.desired.borrow(), pool),
        Err(e) => unavailable(e.to_string()),
    }
}

pub(crate) async fn networks(ctx: &Context, supervision: &Supervision) -> Response {
    answer(supervision.network_views().await.map(|views| {
        let desired = ctx.desired();
        ApiResponse::Networks(complete(
            views,
            &desired.networks,
            |v| &v.spec.name,
            stale::network_view,
        ))
    }))
}

pub(crate) async fn network(supervision: &Supervision, network: &str) -> Response {
    match supervision.network_view(network).await {
        Ok(Some(view)) => Response::Api(Ok(ApiResponse::Network(view))),
        Ok(None) => not_found(format!(
            "no network named {network:?}; `qvctl network list` shows the networks"
        )),
        Err(e) => unavailable(e.to_string()),
    }
}

pub(crate) async fn vms(ctx: &Context, supervision: &Supervision) -> Response {
    let gathered = async {
        let views = supervision.vm_views().await?;
        Ok::<_, SupervisionError>((views, unmanaged_views(ctx, supervision).await?))
    };
    match gathered.await {
        Ok((views, unmanaged)) => {
            let desired = ctx.desired();
            let mut all = complete(views, &desired.vms, |v| &v.spec.name, stale::vm_view);
            for view in &mut all {
                placement::explain_pinned(&desired, view);
            }
            all.extend(unmanaged);
            Response::Api(Ok(ApiResponse::Vms(all)))
        }
        Err(e) => unavailable(e.to_string()),
    }
}

pub(crate) async fn vm(ctx: &Context, supervision: &Supervision, name: &str) -> Response {
    match supervision.vm_view(name).await {
        Ok(Some(mut view)) => {
            placement::explain_pinned(&ctx.desired.borrow(), &mut view);
            Response::Api(Ok(ApiResponse::Vm(view)))
        }
        Ok(None) => unmanaged_vm(ctx, supervision, name).await,
        Err(e) => unavailable(e.to_string()),
    }
}

pub(crate) async fn host(ctx: &Context, supervision: &Supervision, host: &str) -> Response {
    let gathered = async {
        let liveness = supervision.liveness().await?;
        let pools = supervision.pool_views().await?;
        let mut vms = supervision.vm_views().await?;
        vms.extend(unmanaged_views(ctx, supervision).await?);
        Ok::<_, SupervisionError>((liveness, pools, vms))
    };
    let (liveness, pools, vms) = match gathered.await {
        Ok(all) => all,
        Err(e) => return unavailable(e.to_string()),
    };
    let Some(view) = ctx
        .host_views(&liveness)
        .into_iter()
        .find(|h| h.host_id == host)
    else {
        return no_host(host);
    };
    let pools = pools
        .iter()
        .filter_map(|p| {
            let mine = p.hosts.iter().find(|h| h.host_id == host)?;
            Some(HostPool {
                pool: p.spec.name.clone(),
                health: mine.health,
                error: mine.error.clone(),
            })
        })
        .collect();
    let vms = vms.into_iter().filter(|v| v.host == host).collect();
    Response::Api(Ok(ApiResponse::Host(HostDetail {
        host: view,
        pools,
        vms,
    })))
}

/// The domains hosts reported in their last heartbeats that qvdc does not manage (an
/// adopted one whose host has not recorded its VM's id yet is that VM already).
async fn unmanaged_views(
    ctx: &Context,
    supervision: &Supervision,
) -> Result<Vec<VmView>, SupervisionError> {
    let reported = supervision.reported().await?;
    let desired = ctx.desired.borrow();
    Ok(reported
        .iter()
        .flat_map(|(host, seen)| {
            seen.unmanaged
                .iter()
                .filter(|report| !desired.is_adopted_domain(host, report))
                .map(|report| VmView::unmanaged(host, report))
        })
        .collect())
}

/// `vm show` of a name no managed VM has: an unmanaged domain of that name, given as
/// `NAME` (if only one host has one) or `HOST/NAME`.
async fn unmanaged_vm(ctx: &Context, supervision: &Supervision, name: &str) -> Response {
    let unmanaged = match unmanaged_views(ctx, supervision).await {
        Ok(unmanaged) => unmanaged,
        Err(e) => return unavailable(e.to_string()),
    };
    let (host, domain) = match name.split_once('/') {
        Some((host, domain)) => (Some(host), domain),
        None => (None, name),
    };
    let mut found: Vec<_> = unmanaged
        .into_iter()
        .filter(|v| v.spec.name == domain && host.is_none_or(|h| v.host == h))
        .collect();
    match found.len() {
        0 => no_vm(&ctx.desired.borrow(), name),
        1 => Response::Api(Ok(ApiResponse::Vm(found.pop().expect("one")))),
        _ => {
            let on: Vec<String> = found
                .iter()
                .map(|v| format!("{}/{domain}", v.host))
                .collect();
            invalid(format!(
                "{} hosts have an unmanaged domain named {domain:?}: name one of {}",
                found.len(),
                on.join(", ")
            ))
        }
    }
}
