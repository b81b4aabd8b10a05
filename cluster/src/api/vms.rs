//! VM requests: create (placed by the placement core), delete and release (the protocols of
//! `core::protocols`), adopt (`core::adoption`), power, and where a VM would go.

use std::collections::{BTreeMap, BTreeSet};

use qvdc_actors::{
    core::{
        adoption::{self, Refusal},
        placement::{self, HostFacts},
        protocols,
    },
    Supervision,
};
use qvdc_raft::{
    model::{RequestKey, VmRecord},
    Command,
};
use qvdc_transport::protocol::{
    ApiErrorKind, ApiResponse, CommandOutput, DesiredPower, HaPolicy, HostCommandKind, HostFit,
    Liveness, Placement, Response, VmDisk, VmSpec, VolumeInfo,
};

use crate::{
    calls::{on_pool_host, reported_now},
    context::Context,
    reply::{invalid, no_host, not_found, rejected, unavailable},
    write::{carry_out, once, propose, propose_once},
};

fn created(vm: &VmRecord) -> Response {
    Response::Api(Ok(ApiResponse::VmCreated {
        name: vm.spec.name.clone(),
        id: vm.spec.id.clone(),
        host: vm.host.clone(),
    }))
}

pub(crate) async fn create(
    ctx: &Context,
    key: RequestKey,
    spec: VmSpec,
    host: Option<String>,
    start: bool,
    ha: HaPolicy,
) -> Response {
    let spec = ctx.desired.borrow().vm_to_make(&key, spec);
    if let Some(vm) = key.vm_made_before(&ctx.desired.borrow()) {
        return created(vm);
    }
    let host = match host {
        Some(host) => host,
        None => {
            let supervision = match ctx.leading().await {
                Ok(supervision) => supervision,
                Err(response) => return response,
            };
            match place(&supervision, ctx, &spec).await {
                Ok(host) => host,
                Err(response) => return response,
            }
        }
    };
    let power = if start {
        DesiredPower::Running
    } else {
        DesiredPower::Stopped
    };
    let name = spec.name.clone();
    // Without a policy, the command every release knows.
    let command = if ha == HaPolicy::default() {
        Command::CreateVm { spec, host, power }
    } else {
        Command::CreateHaVm {
            spec,
            host,
            power,
            ha,
        }
    };
    if let Err(response) = propose_once(ctx, key, command).await {
        return response;
    }
    match ctx.desired.borrow().vms.get(&name) {
        Some(vm) => created(vm),
        None => unavailable(format!("VM {name} was created and deleted meanwhile")),
    }
}

/// `vm delete`: see [`protocols::vm_delete`]. An HA VM whose host is lost (silent past its
/// lease, so the host powered the guest off itself) is deleted without the host, which
/// removes the domain as a stray if it ever comes back. Any other VM's guest may still run
/// on a host that is only cut off, so its delete waits for the host as always.
pub(crate) async fn delete(ctx: &Context, key: RequestKey, name: String) -> Response {
    let lost = match lost_hosts(ctx).await {
        Ok(lost) => lost,
        Err(response) => return response,
    };
    carry_out(ctx, |desired, confirmed| {
        let fenced_by_its_host = desired.vms.get(&name).is_some_and(|vm| {
            lost.contains(&vm.host)
                && vm.ha.restart
                && vm.ha.isolation != qvdc_transport::protocol::IsolationResponse::Keep
        });
        protocols::vm_delete(desired, &key, &name, confirmed || fenced_by_its_host)
    })
    .await
}

/// The hosts silent for longer than HA's lost bound, as this leader counts.
pub(crate) async fn lost_hosts(ctx: &Context) -> Result<BTreeSet<String>, Response> {
    let supervision = ctx.leading().await?;
    let silences = supervision
        .silences()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let lost_after = qvdc_actors::core::ha::lost_after();
    Ok(silences
        .into_iter()
        .filter(|(_, silent)| *silent >= lost_after)
        .map(|(host, _)| host)
        .collect())
}

/// `host remove`: only a lost host, and only once no VM is on it.
pub(crate) async fn remove_host(ctx: &Context, key: RequestKey, host: String) -> Response {
    if !ctx.desired.borrow().hosts.contains_key(&host) {
        return no_host(&host);
    }
    let lost = match lost_hosts(ctx).await {
        Ok(lost) => lost,
        Err(response) => return response,
    };
    if !lost.contains(&host) && !key.applied_before(&ctx.desired.borrow()) {
        return invalid(format!(
            "host {host} is still heard from (or was within the last {} s); stop its agent or power it off first, then retry",
            qvdc_actors::core::ha::lost_after().as_secs()
        ));
    }
    once(ctx, key, Command::RemoveHost { host }).await
}

/// `vm release`: see [`protocols::vm_release`].
pub(crate) async fn release(ctx: &Context, key: RequestKey, name: String) -> Response {
    carry_out(ctx, |desired, confirmed| {
        protocols::vm_release(desired, &key, &name, confirmed)
    })
    .await
}

/// What placement needs to know about every host, now.
pub(crate) async fn facts_now(
    supervision: &Supervision,
    ctx: &Context,
) -> Result<Vec<HostFacts>, Response> {
    let gathered = async {
        Ok::<_, qvdc_actors::SupervisionError>((
            supervision.liveness().await?,
            supervision.pool_views().await?,
            supervision.network_views().await?,
            supervision.reported().await?,
        ))
    };
    let (liveness, pools, networks, reported) =
        gathered.await.map_err(|e| unavailable(e.to_string()))?;
    let mut facts = placement::facts(&ctx.desired.borrow(), &liveness, &pools, &networks);
    for host in &mut facts {
        host.domains = reported.get(&host.host).filter(|r| r.vms_known).map(|r| {
            r.managed
                .iter()
                .chain(&r.unmanaged)
                .map(|d| (d.name.clone(), d.id.clone()))
                .collect()
        });
    }
    Ok(facts)
}

async fn place(
    supervision: &Supervision,
    ctx: &Context,
    spec: &VmSpec,
) -> Result<String, Response> {
    let facts = facts_now(supervision, ctx).await?;
    let pins = placement::pins(&ctx.desired.borrow(), spec);
    placement::place(spec, &pins, &facts).map_err(|reasons| {
        let why: Vec<String> = reasons.iter().map(|(h, r)| format!("{h}: {r}")).collect();
        invalid(format!(
            "no host can run VM {}: {}; free capacity, fix the pools, or pass --host",
            spec.name,
            why.join("; ")
        ))
    })
}

/// Where `spec` would go and why not elsewhere, creating nothing.
pub(crate) async fn placement(ctx: &Context, mut spec: VmSpec, host: Option<String>) -> Response {
    let supervision = match ctx.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    let facts = match facts_now(&supervision, ctx).await {
        Ok(facts) => facts,
        Err(response) => return response,
    };
    let desired = ctx.desired();
    desired.with_volume_formats(&mut spec);
    let pins = placement::pins(&desired, &spec);
    let fits = placement::assess(&spec, &pins, &facts);
    // As `vm create` does: a host named with --host is taken as asked (placement's checks
    // are shown, not applied); otherwise placement picks.
    let chosen = match &host {
        Some(host) => fits
            .iter()
            .any(|fit| fit.host == *host)
            .then(|| host.clone()),
        None => placement::place(&spec, &pins, &facts).ok(),
    };
    let mut refused = match (&host, &chosen) {
        (Some(host), None) if !fits.iter().any(|fit| fit.host == *host) => Some(format!(
            "no host named {host:?}; `qvctl host list` shows the hosts"
        )),
        _ => None,
    };
    if let Some(host) = &chosen {
        let mut checked = spec.clone();
        checked.id = "dry-run".into();
        let command = Command::CreateVm {
            spec: checked,
            host: host.clone(),
            power: DesiredPower::Stopped,
        };
        refused = desired.validate(&command).err().map(|e| e.to_string());
    }
    let hosts = fits
        .into_iter()
        .map(|fit| HostFit {
            host: fit.host,
            fits: fit.misfit.is_none(),
            reason: fit.misfit,
            free_memory_bytes: fit.free_memory_bytes,
        })
        .collect();
    Response::Api(Ok(ApiResponse::Placement(Placement {
        vm: spec.name,
        asked: host,
        chosen,
        hosts,
        refused,
    })))
}

/// The files of each pool of `disks` as `host` sees them now.
async fn files_on(
    ctx: &Context,
    host: &str,
    disks: &[VmDisk],
) -> Result<BTreeMap<String, Vec<VolumeInfo>>, Response> {
    let mut files = BTreeMap::new();
    for disk in disks {
        if files.contains_key(&disk.pool) {
            continue;
        }
        let list = HostCommandKind::ListVolumes {
            pool: disk.pool.clone(),
        };
        match on_pool_host(ctx, &disk.pool, Some(host.to_owned()), list).await? {
            (_, CommandOutput::Volumes(listed)) => {
                files.insert(disk.pool.clone(), listed);
            }
            (_, other) => return Err(unavailable(format!("unexpected answer {other:?}"))),
        }
    }
    Ok(files)
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Invalid(message) => invalid(message),
        Refusal::Unavailable(message) => unavailable(message),
        Refusal::Rejected(e) => rejected(e),
    }
}

/// `vm adopt HOST/DOMAIN [--name NAME]`: the domain becomes a VM of its name (renamed to
/// NAME first, if given). See `core::adoption`.
pub(crate) async fn adopt(
    ctx: &Context,
    key: RequestKey,
    host: String,
    domain: String,
    name: Option<String>,
) -> Response {
    let target = name.unwrap_or_else(|| domain.clone());
    // A retry of an adoption that went through finds its VM.
    if let Some(vm) = key.vm_made_before(&ctx.desired.borrow()) {
        return created(vm);
    }
    let (supervision, reported, liveness) = match reported_now(ctx).await {
        Ok(all) => all,
        Err(response) => return response,
    };
    // Asked again once this leadership is confirmed and has applied what was committed
    // before it: a retry that reaches a new leader right after the adoption committed.
    if let Some(vm) = key.vm_made_before(&ctx.desired.borrow()) {
        return created(vm);
    }
    match liveness.get(&host) {
        Some(Liveness::Ready) => {}
        Some(state) => {
            return unavailable(format!(
                "host {host} is {state:?}; adopting needs its current report of {domain}, retry once it is Ready"
            ))
        }
        None => return no_host(&host),
    }
    if reported.get(&host).is_some_and(|seen| !seen.vms_known) {
        return unavailable(format!(
            "host {host}'s hypervisor has not listed its domains lately, so its report of {domain} may be stale; retry once it answers"
        ));
    }
    // A retry of an adoption whose rename went through finds the domain under its new name.
    let Some(report) = reported
        .get(&host)
        .and_then(|seen| {
            let named = |name: &str| seen.unmanaged.iter().find(|r| r.name == name);
            named(&domain).or_else(|| named(&target))
        })
        .cloned()
    else {
        let managed = ctx
            .desired
            .borrow()
            .vms
            .get(&domain)
            .is_some_and(|vm| vm.host == host);
        return not_found(if managed {
            format!("{domain} on {host} is managed by qvdc already")
        } else {
            format!(
                "host {host} reports no unmanaged domain named {domain:?}; `qvctl vm list` shows them"
            )
        });
    };
    let disks = match adoption::disks_of(&host, &report) {
        Ok(disks) => disks,
        Err(refusal) => return refused(refusal),
    };
    let files = match files_on(ctx, &host, &disks).await {
        Ok(files) => files,
        Err(response) => return response,
    };
    let adoption = adoption::adopt(&ctx.desired(), &key, &host, &target, &report, disks, &files);
    let adoption = match adoption {
        Ok(adoption) => adoption,
        Err(refusal) => return refused(refusal),
    };
    if let Some(rename) = adoption.rename.clone() {
        if let Err(reason) = supervision.execute(&host, rename).await {
            return unavailable(format!(
                "host {host} did not rename {domain} to {target} ({reason}); nothing was adopted"
            ));
        }
    }
    if let Err(response) = propose(ctx, adoption.command).await {
        return match response {
            Response::Api(Err(mut e)) if adoption.rename.is_some() => {
                e.message = if e.kind == ApiErrorKind::Unavailable {
                    format!(
                        "{} (the domain is now named {target} on {host}; whether it was adopted \
                         is not known: retry with the same request id to settle it)",
                        e.message
                    )
                } else {
                    format!(
                        "{} (the domain is now named {target} on {host} and is not adopted)",
                        e.message
                    )
                };
                Response::Api(Err(e))
            }
            other => other,
        };
    }
    Response::Api(Ok(ApiResponse::VmCreated {
        name: target,
        id: key.id,
        host,
    }))
}
