//! Asking hosts and the supervision tree on an operator's behalf: a command to one host now,
//! and what hosts last reported.

use std::collections::BTreeMap;

use qvdc_actors::{CommandError, HostReported, Supervision};
use qvdc_transport::protocol::{
    ApiErrorKind, CommandOutput, HostCommandKind, HostErrorKind, Liveness, Response,
};

use crate::{
    context::Context,
    reply::{error, invalid, no_pool, no_vm, unavailable},
};

/// A host's refusal keeps its kind where it is final: a command the host cannot carry out as
/// given is "invalid". Everything else may succeed on a retry and is "unavailable" — a
/// host's "not found" included, which can be a passing state (a pool not set up again yet
/// after the agent restarted).
pub(crate) fn not_carried_out(host: &str, reason: &CommandError) -> Response {
    let kind = match reason {
        CommandError::Host(e) => match e.kind {
            HostErrorKind::Invalid | HostErrorKind::Conflict => ApiErrorKind::Invalid,
            HostErrorKind::NotFound
            | HostErrorKind::StaleLeadership
            | HostErrorKind::Timeout
            | HostErrorKind::Failed => ApiErrorKind::Unavailable,
        },
        _ => ApiErrorKind::Unavailable,
    };
    error(kind, format!("host {host} did not carry it out: {reason}"))
}

/// Sends `kind` to the host of VM `name` now and answers with the host's result.
pub(crate) async fn on_vm_host(ctx: &Context, name: &str, kind: HostCommandKind) -> Response {
    let supervision = match ctx.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    let host = match ctx.desired.borrow().vms.get(name) {
        Some(vm) => vm.host.clone(),
        None => return no_vm(&ctx.desired.borrow(), name),
    };
    match supervision.execute(&host, kind).await {
        Ok(_) => Response::Api(Ok(qvdc_transport::protocol::ApiResponse::Done)),
        Err(reason) => not_carried_out(&host, &reason),
    }
}

/// Sends `kind` to `host`, or to the first healthy host of `pool`, and returns which host
/// answered and what.
pub(crate) async fn on_pool_host(
    ctx: &Context,
    pool: &str,
    host: Option<String>,
    kind: HostCommandKind,
) -> Result<(String, CommandOutput), Response> {
    let supervision = ctx.leading().await?;
    let view = match supervision.pool_view(pool).await {
        Ok(Some(view)) => view,
        Ok(None) => return Err(no_pool(&ctx.desired.borrow(), pool)),
        Err(e) => return Err(unavailable(e.to_string())),
    };
    let host = match host {
        Some(host) if view.hosts.iter().any(|h| h.host_id == host) => host,
        Some(host) => {
            return Err(invalid(format!(
                "pool {pool} is not assigned to host {host}"
            )))
        }
        None => match view.healthy_hosts.first() {
            Some(host) => host.clone(),
            None => {
                return Err(unavailable(format!(
                    "no host has pool {pool} healthy right now; `qvctl pool show {pool}` says why"
                )))
            }
        },
    };
    match supervision.execute(&host, kind).await {
        Ok(output) => Ok((host, output)),
        Err(reason) => Err(not_carried_out(&host, &reason)),
    }
}

/// The supervision tree once this node's lease is confirmed, with what each host last
/// reported to it and each host's liveness.
pub(crate) async fn reported_now(
    ctx: &Context,
) -> Result<
    (
        Supervision,
        BTreeMap<String, HostReported>,
        BTreeMap<String, Liveness>,
    ),
    Response,
> {
    let supervision = ctx.leading().await?;
    let gathered = async {
        Ok::<_, qvdc_actors::SupervisionError>((
            supervision.reported().await?,
            supervision.liveness().await?,
        ))
    };
    let (reported, liveness) = gathered.await.map_err(|e| unavailable(e.to_string()))?;
    Ok((supervision, reported, liveness))
}
