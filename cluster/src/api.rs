//! The operator API on a node. Mutations are validated against the desired state, then
//! proposed to Raft; queries about reported state are answered by the leader's supervision
//! tree. A follower redirects the client to the leader.

use std::collections::BTreeMap;

use qvdc_actors::{
    core::placement::{self, HostFacts},
    Supervision,
};
use qvdc_raft::{
    model::{OrdMap, RequestDigest},
    Command, DesiredState, Outcome, ValidationError,
};
use qvdc_transport::protocol::{
    ApiError, ApiErrorKind, ApiRequest, ApiResponse, ClusterStatus, CommandOutput, DesiredPower,
    HostCommandKind, HostDetail, HostFit, HostPool, HostView, Liveness, MemberStatus, NetworkView,
    Placement, PoolScope, PoolSpec, PoolView, Response, VmSpec,
};

use crate::{adoption, membership, node::NodeInner, propose::ProposeError, stale};

pub(crate) fn rejected(e: ValidationError) -> Response {
    let kind = match e {
        ValidationError::PoolExists(_) | ValidationError::VmExists(_) => {
            ApiErrorKind::AlreadyExists
        }
        ValidationError::NoSuchVm(_)
        | ValidationError::NoSuchPool(_)
        | ValidationError::NoSuchVolume { .. } => ApiErrorKind::NotFound,
        ValidationError::VolumeExists { .. } | ValidationError::NetworkExists(_) => {
            ApiErrorKind::AlreadyExists
        }
        ValidationError::NoSuchNetwork(_) => ApiErrorKind::NotFound,
        _ => ApiErrorKind::Invalid,
    };
    Response::Api(Err(ApiError::new(kind, e.to_string())))
}

fn invalid(message: impl Into<String>) -> Response {
    Response::Api(Err(ApiError::new(ApiErrorKind::Invalid, message)))
}

pub(crate) fn unavailable(message: impl Into<String>) -> Response {
    Response::Api(Err(ApiError::new(ApiErrorKind::Unavailable, message)))
}

/// Validates `command` against the current desired state and commits it through Raft.
/// The error is the response to send back as it is.
pub(crate) async fn propose(node: &NodeInner, command: Command) -> Result<(), Response> {
    // Only the leader's state is current enough to judge a command: a follower that has not
    // applied the pool created a moment ago would reject a volume in it. Send it on instead.
    if node.raft.metrics().borrow().current_leader != Some(node.id) {
        return Err(node.not_leader());
    }
    let bytes = qvdc_transport::codec::encoded_len(&command);
    if bytes > qvdc_raft::model::COMMAND_BYTES_MAX {
        return Err(invalid(format!(
            "the request is {bytes} bytes encoded, more than the {} one change may take; split it (assign fewer hosts at a time)",
            qvdc_raft::model::COMMAND_BYTES_MAX
        )));
    }
    let verdict = node.desired.borrow().validate(&command);
    if verdict.is_err() {
        // The applied state can lag the log: a new leader applies what earlier terms
        // committed only after its election, and a deposed leader does not know it is one.
        // A rejection is an answer too, so judge again once a quorum has confirmed this
        // leadership and everything committed before it is applied.
        node.leading().await?;
        node.desired.borrow().validate(&command).map_err(rejected)?;
    }
    if qvdc_transport::bugs::active(qvdc_transport::bugs::Bug::AckBeforeCommit) {
        let proposer = node.proposer.clone();
        tokio::spawn(async move { proposer.propose(command).await });
        return Ok(());
    }
    match node.proposer.propose(command).await {
        Ok(Outcome::Applied | Outcome::Unchanged) => Ok(()),
        Ok(Outcome::Rejected(e)) => Err(rejected(e)),
        Ok(Outcome::Batch(_)) => unreachable!("one command, one outcome"),
        Err(ProposeError::NotLeader) => Err(node.not_leader()),
        Err(e) => Err(unavailable(format!("{e}; retry"))),
    }
}

pub(crate) async fn handle(node: &NodeInner, request: ApiRequest) -> Response {
    // A write's request id is bound to the request as the operator sent it: a retry repeats
    // it exactly, whichever node it reaches and however the leader then places it.
    let digest = RequestDigest::of(&request);
    let key = |id: String| RequestKey { id, digest };
    match request {
        ApiRequest::ClusterStatus => {
            let mut status = cluster_status(node);
            // A leader cut off from its peers still believes it leads; do not repeat that.
            if status.leader == Some(node.id) && node.leading().await.is_err() {
                status.leader = None;
            }
            Response::Api(Ok(ApiResponse::ClusterStatus(status)))
        }
        ApiRequest::Stale(request) => stale::answer(node, *request),
        ApiRequest::ClusterAddNode { node_id, addr } => {
            membership::add_node(node, node_id, addr).await
        }
        ApiRequest::ClusterRemoveNode { node_id } => membership::remove_node(node, node_id).await,
        ApiRequest::PoolCreate {
            request_id,
            spec,
            hosts,
        } => create_pool(node, key(request_id), spec, hosts).await,
        ApiRequest::VmCreate {
            request_id,
            spec,
            host,
            start,
        } => create_vm(node, key(request_id), spec, host, start).await,
        ApiRequest::VmSetPower {
            request_id,
            name,
            power,
        } => {
            let command = Command::SetVmPower { name, power };
            once(node, key(request_id), command).await
        }
        ApiRequest::VmDelete { request_id, name } => delete_vm(node, key(request_id), name).await,
        ApiRequest::VmAdopt {
            request_id,
            host,
            domain,
            name,
        } => adoption::adopt_vm(node, key(request_id), host, domain, name).await,
        ApiRequest::VmRelease { request_id, name } => {
            adoption::release_vm(node, key(request_id), name).await
        }
        ApiRequest::VmForceOff { request_id, name } => {
            let command = Command::SetVmPower {
                name: name.clone(),
                power: DesiredPower::Stopped,
            };
            if let Err(response) = propose_once(node, key(request_id), command).await {
                return response;
            }
            on_vm_host(
                node,
                &name,
                HostCommandKind::ForceOffVm { name: name.clone() },
            )
            .await
        }
        ApiRequest::VmReboot { name } => {
            on_vm_host(
                node,
                &name,
                HostCommandKind::RebootVm { name: name.clone() },
            )
            .await
        }
        ApiRequest::PoolAssign {
            request_id,
            pool,
            hosts,
        } => once(node, key(request_id), Command::AssignPool { pool, hosts }).await,
        ApiRequest::PoolUnassign {
            request_id,
            pool,
            hosts,
        } => once(node, key(request_id), Command::UnassignPool { pool, hosts }).await,
        ApiRequest::PoolDelete { request_id, pool } => {
            once(node, key(request_id), Command::DeletePool { pool }).await
        }
        ApiRequest::VolumeCreate {
            request_id,
            pool,
            name,
            format,
            size_bytes,
            host,
        } => {
            // A local pool with a single host needs no --host.
            let host = host.or_else(|| {
                let desired = node.desired.borrow();
                let record = desired.pools.get(&pool)?;
                let only = (record.spec.scope == PoolScope::Local && record.hosts.len() == 1)
                    .then(|| record.hosts.first())??;
                Some(only.clone())
            });
            let command = Command::CreateVolume {
                host,
                pool,
                name,
                format,
                size_bytes,
            };
            once(node, key(request_id), command).await
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
            once(node, key(request_id), command).await
        }
        ApiRequest::VolumeDelete {
            request_id,
            pool,
            name,
        } => {
            let command = Command::DeleteVolume {
                pool: pool.clone(),
                name: name.clone(),
            };
            // A local pool's volume lives on one host: the file goes there. A retry finds the
            // record gone, so it asks every host (each deletes only its own marked file).
            let hosts = {
                let desired = node.desired.borrow();
                let record = desired.pools.get(&pool);
                let local = record.is_some_and(|p| p.spec.scope == PoolScope::Local);
                let on = desired
                    .volume(&pool, &name)
                    .ok()
                    .and_then(|v| v.host.clone());
                let hosts: Vec<String> = match (&on, record) {
                    (Some(host), _) => vec![host.clone()],
                    (None, Some(p)) if local => p.hosts.iter().cloned().collect(),
                    _ => Vec::new(),
                };
                hosts
            };
            if let Err(response) = propose_once(node, key(request_id), command).await {
                return response;
            }
            // The record is gone; now the file, through its host(s) or any healthy host of
            // the pool.
            let delete = || HostCommandKind::DeleteVolume {
                pool: pool.clone(),
                name: name.clone(),
            };
            if hosts.is_empty() {
                return on_pool_host(node, &pool, None, delete())
                    .await
                    .map_or_else(|r| r, |_| Response::Api(Ok(ApiResponse::Done)));
            }
            for host in hosts {
                if let Err(response) = on_pool_host(node, &pool, Some(host), delete()).await {
                    return response;
                }
            }
            Response::Api(Ok(ApiResponse::Done))
        }
        ApiRequest::PoolFiles { pool, host } => {
            let list = HostCommandKind::ListVolumes { pool: pool.clone() };
            match on_pool_host(node, &pool, host, list).await {
                Ok((host, CommandOutput::Volumes(files))) => {
                    Response::Api(Ok(ApiResponse::Files { pool, host, files }))
                }
                Ok((_, other)) => unavailable(format!("unexpected answer {other:?}")),
                Err(response) => response,
            }
        }
        ApiRequest::VolumeList { pool } => {
            let supervision = match node.leading().await {
                Ok(supervision) => supervision,
                Err(response) => return response,
            };
            match supervision.pool_view(&pool).await {
                Ok(Some(view)) => Response::Api(Ok(ApiResponse::Volumes(view.volumes))),
                Ok(None) => not_found_pool(node, &pool),
                Err(e) => unavailable(e.to_string()),
            }
        }
        ApiRequest::HostShow { host } => host_show(node, host).await,
        ApiRequest::HostMaintenance {
            request_id,
            host,
            on,
        } => once(node, key(request_id), Command::SetMaintenance { host, on }).await,
        ApiRequest::CertRevoke {
            request_id,
            certificate,
        } => {
            once(
                node,
                key(request_id),
                Command::RevokeCertificate(certificate),
            )
            .await
        }
        ApiRequest::PoolRemnants { pool } => pool_remnants(node, pool).await,
        ApiRequest::VmPlacement { spec, host } => placement(node, spec, host).await,
        ApiRequest::CertRevoked => {
            let revoked = node.desired.borrow().revoked.values().cloned().collect();
            Response::Api(Ok(ApiResponse::Revoked(revoked)))
        }
        ApiRequest::NetworkCreate {
            request_id,
            spec,
            hosts,
        } => {
            once(
                node,
                key(request_id),
                Command::CreateNetwork { spec, hosts },
            )
            .await
        }
        ApiRequest::NetworkAssign {
            request_id,
            network,
            hosts,
        } => {
            once(
                node,
                key(request_id),
                Command::AssignNetwork { network, hosts },
            )
            .await
        }
        ApiRequest::NetworkUnassign {
            request_id,
            network,
            hosts,
        } => {
            once(
                node,
                key(request_id),
                Command::UnassignNetwork { network, hosts },
            )
            .await
        }
        ApiRequest::NetworkDelete {
            request_id,
            network,
        } => once(node, key(request_id), Command::DeleteNetwork { network }).await,
        ApiRequest::NetworkShow { .. } | ApiRequest::NetworkList => {
            let supervision = match node.leading().await {
                Ok(supervision) => supervision,
                Err(response) => return response,
            };
            let result = match request {
                ApiRequest::NetworkList => supervision.network_views().await.map(|views| {
                    let desired = node.desired.borrow().clone();
                    ApiResponse::Networks(complete(
                        views,
                        &desired.networks,
                        |v| &v.spec.name,
                        stale::network_view,
                    ))
                }),
                ApiRequest::NetworkShow { network } => {
                    match supervision.network_view(&network).await {
                        Ok(Some(view)) => Ok(ApiResponse::Network(view)),
                        Ok(None) => {
                            let message = format!(
                                "no network named {network:?}; `qvctl network list` shows the networks"
                            );
                            return Response::Api(Err(ApiError::new(
                                ApiErrorKind::NotFound,
                                message,
                            )));
                        }
                        Err(e) => Err(e),
                    }
                }
                _ => unreachable!("matched above"),
            };
            result.map_or_else(|e| unavailable(e.to_string()), |r| Response::Api(Ok(r)))
        }
        ApiRequest::VmList => {
            let supervision = match node.leading().await {
                Ok(supervision) => supervision,
                Err(response) => return response,
            };
            let gathered = async {
                let views = supervision.vm_views().await?;
                Ok::<_, qvdc_actors::SupervisionError>((
                    views,
                    unmanaged_views(node, &supervision).await?,
                ))
            };
            match gathered.await {
                Ok((views, unmanaged)) => {
                    let desired = node.desired.borrow().clone();
                    let mut all = complete(views, &desired.vms, |v| &v.spec.name, stale::vm_view);
                    for view in &mut all {
                        explain_pinned(&desired, view);
                    }
                    all.extend(unmanaged);
                    Response::Api(Ok(ApiResponse::Vms(all)))
                }
                Err(e) => unavailable(e.to_string()),
            }
        }
        ApiRequest::VmShow { name } => {
            let supervision = match node.leading().await {
                Ok(supervision) => supervision,
                Err(response) => return response,
            };
            match supervision.vm_view(&name).await {
                Ok(Some(mut view)) => {
                    explain_pinned(&node.desired.borrow(), &mut view);
                    Response::Api(Ok(ApiResponse::Vm(view)))
                }
                Ok(None) => unmanaged_vm(node, &supervision, &name).await,
                Err(e) => unavailable(e.to_string()),
            }
        }
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
                ApiRequest::PoolList => supervision.pool_views().await.map(|views| {
                    let desired = node.desired.borrow().clone();
                    ApiResponse::Pools(complete(
                        views,
                        &desired.pools,
                        |v| &v.spec.name,
                        |record| stale::pool_view(record),
                    ))
                }),
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

fn not_found_vm(node: &NodeInner, name: &str) -> Response {
    if node.desired.borrow().vms.contains_key(name) {
        return unavailable(format!(
            "VM {name:?} is being set up on this leader; retry in a moment"
        ));
    }
    let message = format!("no VM named {name:?}; `qvctl vm list` shows the VMs");
    Response::Api(Err(ApiError::new(ApiErrorKind::NotFound, message)))
}

/// An operator's request id and the digest of the request it came with.
#[derive(Debug, Clone)]
pub(crate) struct RequestKey {
    pub(crate) id: String,
    digest: RequestDigest,
}

impl RequestKey {
    /// `command`, applied at most once for this request.
    pub(crate) fn once(self, command: Command) -> Command {
        Command::Once {
            request_id: self.id,
            digest: self.digest,
            command: Box::new(command),
        }
    }

    /// The VM this very request made (created or adopted) when it was applied before: a
    /// VM's id is the id of the request that made it.
    pub(crate) fn vm_made_before<'a>(
        &self,
        state: &'a DesiredState,
    ) -> Option<&'a qvdc_raft::model::VmRecord> {
        if !self.applied_before(state) {
            return None;
        }
        state.vms.values().find(|vm| vm.spec.id == self.id)
    }

    /// Whether this very request was applied before.
    pub(crate) fn applied_before(&self, state: &DesiredState) -> bool {
        state
            .requests
            .lookup(&self.id)
            .is_some_and(|(digest, _)| digest == self.digest)
    }
}

/// Commits `command` once per request.
async fn propose_once(node: &NodeInner, key: RequestKey, command: Command) -> Result<(), Response> {
    propose(node, key.once(command)).await
}

/// Commits `command` once per request; answers `Done`.
pub(crate) async fn once(node: &NodeInner, key: RequestKey, command: Command) -> Response {
    match propose_once(node, key, command).await {
        Ok(()) => Response::Api(Ok(ApiResponse::Done)),
        Err(response) => response,
    }
}

/// Sends `kind` to the host of VM `name` now and answers with the host's result.
async fn on_vm_host(node: &NodeInner, name: &str, kind: HostCommandKind) -> Response {
    let supervision = match node.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    let host = match node.desired.borrow().vms.get(name) {
        Some(vm) => vm.host.clone(),
        None => return not_found_vm(node, name),
    };
    match supervision.execute(&host, kind).await {
        Ok(_) => Response::Api(Ok(ApiResponse::Done)),
        Err(reason) => Response::Api(Err(ApiError::new(
            ApiErrorKind::Unavailable,
            format!("host {host} did not carry it out: {reason}"),
        ))),
    }
}

/// Sends `kind` to `host`, or to the first healthy host of `pool`, and returns which host
/// answered and what.
pub(crate) async fn on_pool_host(
    node: &NodeInner,
    pool: &str,
    host: Option<String>,
    kind: HostCommandKind,
) -> Result<(String, CommandOutput), Response> {
    let supervision = node.leading().await?;
    let view = match supervision.pool_view(pool).await {
        Ok(Some(view)) => view,
        Ok(None) => return Err(not_found_pool(node, pool)),
        Err(e) => return Err(unavailable(e.to_string())),
    };
    let host = match host {
        Some(host) if view.hosts.iter().any(|h| h.host_id == host) => host,
        Some(host) => {
            let message = format!("pool {pool} is not assigned to host {host}");
            return Err(Response::Api(Err(ApiError::new(
                ApiErrorKind::Invalid,
                message,
            ))));
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
        Err(reason) => Err(Response::Api(Err(ApiError::new(
            ApiErrorKind::Unavailable,
            format!("host {host} did not carry it out: {reason}"),
        )))),
    }
}

/// The domains hosts reported in their last heartbeats that qvdc does not manage (an
/// adopted one whose host has not recorded its VM's id yet is that VM already).
async fn unmanaged_views(
    node: &NodeInner,
    supervision: &Supervision,
) -> Result<Vec<qvdc_transport::protocol::VmView>, qvdc_actors::SupervisionError> {
    let reported = supervision.reported().await?;
    let desired = node.desired.borrow();
    let adopted = |host: &str, report: &qvdc_transport::protocol::VmReport| {
        desired.vms.get(&report.name).is_some_and(|vm| {
            vm.host == host && vm.adopted.as_deref() == Some(report.uuid.as_str())
        })
    };
    Ok(reported
        .iter()
        .flat_map(|(host, seen)| {
            seen.unmanaged
                .iter()
                .filter(|report| !adopted(host, report))
                .map(|report| qvdc_transport::protocol::VmView::unmanaged(host, report))
        })
        .collect())
}

/// `vm show` of a name no managed VM has: an unmanaged domain of that name, given as
/// `NAME` (if only one host has one) or `HOST/NAME`.
async fn unmanaged_vm(node: &NodeInner, supervision: &Supervision, name: &str) -> Response {
    let unmanaged = match unmanaged_views(node, supervision).await {
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
        0 => not_found_vm(node, name),
        1 => Response::Api(Ok(ApiResponse::Vm(found.pop().expect("one")))),
        _ => {
            let on: Vec<String> = found
                .iter()
                .map(|v| format!("{}/{domain}", v.host))
                .collect();
            let message = format!(
                "{} hosts have an unmanaged domain named {domain:?}: name one of {}",
                found.len(),
                on.join(", ")
            );
            Response::Api(Err(ApiError::new(ApiErrorKind::Invalid, message)))
        }
    }
}

/// What each host last reported, and each host's liveness, as this leader knows them now.
pub(crate) async fn reported_now(
    supervision: &Supervision,
) -> Result<
    (
        BTreeMap<String, qvdc_actors::HostReported>,
        BTreeMap<String, Liveness>,
    ),
    Response,
> {
    let gathered = async {
        Ok::<_, qvdc_actors::SupervisionError>((
            supervision.reported().await?,
            supervision.liveness().await?,
        ))
    };
    gathered.await.map_err(|e| unavailable(e.to_string()))
}

/// The hosts whose last heartbeat still shows `pool` mounted though it is not assigned to
/// them (anymore).
async fn pool_remnants(node: &NodeInner, pool: String) -> Response {
    let supervision = match node.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    let (reported, liveness) = match reported_now(&supervision).await {
        Ok(both) => both,
        Err(response) => return response,
    };
    let desired = node.desired.borrow().clone();
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

async fn host_show(node: &NodeInner, host: String) -> Response {
    let supervision = match node.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    let gathered = async {
        let liveness = supervision.liveness().await?;
        let pools = supervision.pool_views().await?;
        let mut vms = supervision.vm_views().await?;
        vms.extend(unmanaged_views(node, &supervision).await?);
        Ok::<_, qvdc_actors::SupervisionError>((liveness, pools, vms))
    };
    let (liveness, pools, vms) = match gathered.await {
        Ok(all) => all,
        Err(e) => return unavailable(e.to_string()),
    };
    let Some(view) = host_views(node, &liveness)
        .into_iter()
        .find(|h| h.host_id == host)
    else {
        let message = format!("no host named {host:?}; `qvctl host list` shows the hosts");
        return Response::Api(Err(ApiError::new(ApiErrorKind::NotFound, message)));
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

/// What placement needs to know about every registered host, from the desired state and
/// the leader's latest reports.
fn host_facts(
    desired: &DesiredState,
    liveness: &BTreeMap<String, Liveness>,
    pools: &[PoolView],
    networks: &[NetworkView],
) -> Vec<HostFacts> {
    desired
        .hosts
        .values()
        .map(|h| HostFacts {
            host: h.host_id.clone(),
            ready: liveness.get(&h.host_id) == Some(&Liveness::Ready),
            maintenance: h.maintenance,
            cpu_cores: h.inventory.cpu_cores,
            memory_bytes: h.inventory.memory_bytes,
            committed_memory_bytes: desired
                .vms_of_host(&h.host_id)
                .map(|vm| vm.spec.memory_bytes)
                .sum(),
            up_networks: networks
                .iter()
                .filter(|n| n.hosts.iter().any(|nh| nh.host_id == h.host_id && nh.up))
                .map(|n| n.spec.name.clone())
                .collect(),
            pools: pools
                .iter()
                .filter_map(|p| {
                    let here = p.hosts.iter().find(|ph| ph.host_id == h.host_id)?;
                    Some((p.spec.name.clone(), here.health))
                })
                .collect(),
        })
        .collect()
}

/// What placement needs to know about every host, now.
async fn facts_now(
    supervision: &Supervision,
    node: &NodeInner,
) -> Result<Vec<HostFacts>, Response> {
    let gathered = async {
        Ok::<_, qvdc_actors::SupervisionError>((
            supervision.liveness().await?,
            supervision.pool_views().await?,
            supervision.network_views().await?,
        ))
    };
    let (liveness, pools, networks) = gathered.await.map_err(|e| unavailable(e.to_string()))?;
    Ok(host_facts(
        &node.desired.borrow(),
        &liveness,
        &pools,
        &networks,
    ))
}

/// A VM's disks take their volumes' formats, never the ones a request names: a raw disk
/// opened as qcow2 would let its guest-written header name host files.
fn with_volume_formats(desired: &DesiredState, spec: &mut VmSpec) {
    for disk in &mut spec.disks {
        if let Ok(volume) = desired.volume(&disk.pool, &disk.volume) {
            disk.format = volume.format;
        }
    }
}

/// Where `spec` would go and why not elsewhere, creating nothing.
async fn placement(node: &NodeInner, mut spec: VmSpec, host: Option<String>) -> Response {
    let supervision = match node.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    let facts = match facts_now(&supervision, node).await {
        Ok(facts) => facts,
        Err(response) => return response,
    };
    let desired = node.desired.borrow().clone();
    with_volume_formats(&desired, &mut spec);
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

async fn place(
    supervision: &Supervision,
    node: &NodeInner,
    spec: &VmSpec,
) -> Result<String, Response> {
    let facts = facts_now(supervision, node).await?;
    let pins = placement::pins(&node.desired.borrow(), spec);
    placement::place(spec, &pins, &facts).map_err(|reasons| {
        let why: Vec<String> = reasons.iter().map(|(h, r)| format!("{h}: {r}")).collect();
        let message = format!(
            "no host can run VM {}: {}; free capacity, fix the pools, or pass --host",
            spec.name,
            why.join("; ")
        );
        Response::Api(Err(ApiError::new(ApiErrorKind::Invalid, message)))
    })
}

/// Deletes a VM once its host has confirmed that the guest is gone. Forgetting the record
/// first would free the VM's name and disks while its guest may still run on a host that has
/// not heard of the delete (one cut off from the cluster, say): a new VM of that name or on
/// those disks could then run beside it. So the VM is first stopped in the desired state (so
/// nothing starts it again), then its host destroys and undefines the domain, and only then
/// is the record deleted. While the host is unreachable the delete fails and says so.
async fn delete_vm(node: &NodeInner, key: RequestKey, name: String) -> Response {
    let record = node.desired.borrow().vms.get(&name).cloned();
    let Some(record) = record else {
        // Unknown, or a retry of a delete that went through: the request id decides.
        return once(node, key, Command::DeleteVm { name }).await;
    };
    let supervision = match node.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    if record.power != DesiredPower::Stopped {
        let stop = Command::SetVmPower {
            name: name.clone(),
            power: DesiredPower::Stopped,
        };
        if let Err(response) = propose(node, stop).await {
            return response;
        }
    }
    let host = &record.host;
    let undefine = HostCommandKind::UndefineVm { name: name.clone() };
    if let Err(reason) = supervision.execute(host, undefine).await {
        return unavailable(format!(
            "VM {name} is stopped, but its host {host} did not confirm that the guest is gone \
             ({reason}), so the VM is not deleted: its name and disks stay reserved. Retry once \
             the host is back (`qvctl host list`)"
        ));
    }
    once(node, key, Command::DeleteVm { name }).await
}

async fn create_vm(
    node: &NodeInner,
    key: RequestKey,
    mut spec: VmSpec,
    host: Option<String>,
    start: bool,
) -> Response {
    let created = |vm: &qvdc_raft::model::VmRecord| {
        Response::Api(Ok(ApiResponse::VmCreated {
            name: vm.spec.name.clone(),
            id: vm.spec.id.clone(),
            host: vm.host.clone(),
        }))
    };
    // A VM's id is the id of the request that created it: unique, and a retry finds it.
    spec.id = key.id.clone();
    with_volume_formats(&node.desired.borrow(), &mut spec);
    if let Some(vm) = key.vm_made_before(&node.desired.borrow()) {
        return created(vm);
    }
    let host = match host {
        Some(host) => host,
        None => {
            let supervision = match node.leading().await {
                Ok(supervision) => supervision,
                Err(response) => return response,
            };
            match place(&supervision, node, &spec).await {
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
    let command = Command::CreateVm { spec, host, power };
    if let Err(response) = propose_once(node, key, command).await {
        return response;
    }
    match node.desired.borrow().vms.get(&name) {
        Some(vm) => created(vm),
        None => unavailable(format!("VM {name} was created and deleted meanwhile")),
    }
}

/// A VM whose host is not heard from says why it cannot run elsewhere when its disks are on
/// that host's own storage.
fn explain_pinned(desired: &DesiredState, view: &mut qvdc_transport::protocol::VmView) {
    if !view.managed || !view.reason.starts_with("no fresh report") {
        return;
    }
    let pins = placement::pins(desired, &view.spec);
    let Some(pin) = pins.first() else {
        return;
    };
    let why = format!(
        "its host {} is not heard from, and the VM cannot run elsewhere: disk {}/{} is on {}'s own storage (pool {} is local)",
        view.host, pin.pool, pin.volume, pin.host, pin.pool
    );
    view.error = Some(match view.error.take() {
        Some(error) => format!("{error}; {why}"),
        None => why,
    });
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
    key: RequestKey,
    spec: PoolSpec,
    hosts: Vec<String>,
) -> Response {
    let name = spec.name.clone();
    match propose_once(node, key, Command::CreatePool { spec, hosts }).await {
        Ok(()) => Response::Api(Ok(ApiResponse::PoolCreated { name })),
        Err(response) => response,
    }
}

pub(crate) fn host_views(
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
            maintenance: h.maintenance,
        })
        .collect()
}

pub(crate) fn cluster_status(node: &NodeInner) -> ClusterStatus {
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
