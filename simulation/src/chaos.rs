//! The default scenario: several operators work concurrently while faults drawn from the
//! seed hit the control plane, the network and the hosts; then everything heals, and the
//! system must converge within a bound to exactly what the operators were told.
//!
//! Workload, during the chaos phase:
//! * registry clients create, delete and list pools from a small set of names (so they
//!   collide); their history must be linearizable against [`Registry`];
//! * a VM client creates VMs (started), stops and starts them, and deletes some.
//!
//! After healing, within [`HEAL_BOUND_S`] of simulated time: every host is Ready; every pool
//! is mounted on every host it is assigned to and nowhere else, as each host's mount table
//! really is; every VM is in its desired power state on its host and defined nowhere else,
//! as each host's hypervisor really is; the cluster's views say the same; all nodes hold the
//! same state at the same index. The trace invariants of every run apply as well.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, ensure, Context};
use qvdc_cluster::{Client, ClientError};
use qvdc_transport::protocol::{
    ApiErrorKind, ApiRequest, ApiResponse, DesiredPower, HaPolicy, Health, IsolationResponse,
    PoolScope, PoolSpec, PowerState, VmDisk, VmSpec, VolumeFormat,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::time::Instant;
use tracing::info;

use crate::{
    faults::{self, FaultLog},
    harness::{self, ask, eventually, Faults, LogLifecycle},
    linearizability::{self, Operation, Registry, RegistryOp, RegistryRet},
    world::{self, Certs, Shared, SimConfig},
};

/// After the chaos phase, how long (simulated) the system has to converge. The slowest
/// path: a command that failed often waits out the longest retry backoff (32 s) before it
/// is sent again.
pub const HEAL_BOUND_S: u64 = 90;
/// Clients that race on the pool registry.
const REGISTRY_CLIENTS: u64 = 3;
/// Pool names the registry clients share.
const POOL_NAMES: u64 = 5;
/// How long one operator request may take before its outcome counts as unknown.
const REQUEST_TIMEOUT_MS: u64 = 4_000;
/// Pause between one client's requests (uniform between these bounds).
const THINK_MS: (u64, u64) = (20, 300);

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    pub trace: Vec<String>,
    pub trace_hash: u64,
    pub faults: FaultLog,
    /// Registry operations checked for linearizability, and how many had unknown outcomes.
    pub operations: usize,
    pub unknown: usize,
    /// VMs that existed after healing.
    pub vms: usize,
    /// Simulated time from the end of the chaos phase until everything converged.
    pub heal: Duration,
    /// Snapshots built and installed and logs purged, by all nodes.
    pub log: LogLifecycle,
    /// Membership changes answered during the chaos phase (the joining node added, removed).
    pub membership_changes: usize,
}

struct Summary {
    membership_changes: usize,
    faults: FaultLog,
    operations: usize,
    unknown: usize,
    vms: usize,
    heal: Duration,
}

/// Runs the scenario for `config.seed`.
pub fn run(config: &SimConfig) -> anyhow::Result<Outcome> {
    let run = harness::run(config, script)?;
    let s = run.value;
    Ok(Outcome {
        trace: run.trace,
        trace_hash: run.trace_hash,
        faults: s.faults,
        operations: s.operations,
        unknown: s.unknown,
        vms: s.vms,
        heal: s.heal,
        log: run.log,
        membership_changes: s.membership_changes,
    })
}

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<Summary> {
    let nodes = world::node_addrs(config.nodes);
    let mut admin = world::operator(&config, &certs, 0, nodes.clone()).await?;
    harness::all_hosts_ready(&mut admin, config.hosts).await?;
    harness::audit_begun(&mut admin).await?;
    // Each host's own storage, for VMs that must stay where their disk is.
    let local = ApiRequest::PoolCreate {
        request_id: admin.new_request_id(),
        spec: PoolSpec {
            scope: PoolScope::Local,
            ..world::dir_pool(LOCAL_POOL)
        },
        hosts: (1..=config.hosts).map(SimConfig::host_name).collect(),
    };
    ask(&mut admin, local).await?;
    // The pool the first host's unmanaged domain has its disk in: adopting it claims the file.
    let legacy = ApiRequest::PoolCreate {
        request_id: admin.new_request_id(),
        spec: world::dir_pool(world::LEGACY_POOL),
        hosts: vec![SimConfig::host_name(1)],
    };
    ask(&mut admin, legacy).await?;
    // The shared pool HA VMs' disks are in: its lock is what stops a second copy of a guest
    // whose host's agent died.
    let ha = ApiRequest::PoolCreate {
        request_id: admin.new_request_id(),
        spec: world::dir_pool(HA_POOL),
        hosts: (1..=config.hosts).map(SimConfig::host_name).collect(),
    };
    ask(&mut admin, ha).await?;

    let start = Instant::now();
    let end = start + config.chaos.duration;
    let mut registry_clients = Vec::new();
    for i in 0..REGISTRY_CLIENTS {
        let offset = 20 + u16::try_from(i).expect("few clients");
        registry_clients.push(client(&config, &certs, offset).await?);
    }
    let vm_client = client(&config, &certs, 30).await?;
    // Only with a joining node: another client's endpoint would change every draw of the run.
    let mut member_client = match config.joining_node {
        true => Some(client(&config, &certs, 31).await?),
        false => None,
    };
    let workload = async {
        let registry = registry_clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| registry_client(&config, i as u64, c, start, end));
        let (histories, (), changes) = tokio::join!(
            join_all(registry.collect()),
            vms_client(&config, vm_client, end),
            membership_client(&config, member_client.as_mut(), start, end)
        );
        (histories.into_iter().flatten().collect::<Vec<_>>(), changes)
    };
    let (fault_log, (mut history, membership_changes)) =
        tokio::join!(faults::drive(&config, &faults), workload);
    let healed_at = Instant::now();
    info!(faults = fault_log.injected, "healing");

    harness::all_hosts_ready(&mut admin, config.hosts)
        .await
        .context("after healing")?;
    finish_releases(&mut admin).await?;
    end_maintenance(&config, &mut admin).await?;
    // The joining node leaves for good, if the chaos phase did not see it out.
    if let Some(member_client) = member_client.as_mut() {
        leave_for_good(&config, member_client).await?;
    }
    let vms = eventually(
        "the cluster converged on what the hosts really have",
        Duration::from_secs(HEAL_BOUND_S),
        async || converged(&config, &mut admin, &faults).await,
    )
    .await?;
    let heal = healed_at.elapsed();
    harness::nodes_agree(&config, &certs).await?;

    // A last read, after everything settled, pins the final set of pools.
    let read_at = start.elapsed().as_millis() as u64;
    let names = pool_names(&mut admin).await?;
    let answered_at = start.elapsed().as_millis() as u64;
    history.push(Operation::answered(
        REGISTRY_CLIENTS,
        read_at,
        answered_at,
        RegistryOp::Read,
        RegistryRet::Names(names),
    ));
    let unknown = history.iter().filter(|o| o.returned.is_none()).count();
    linearizability::check(&Registry::for_history(&history), &history).map_err(|v| {
        anyhow::anyhow!(
            "the pool registry history ({} operations): {v}",
            history.len()
        )
    })?;
    // After the history's own check: an acknowledgement the history cannot explain shows
    // in the trail too, and is better named as what it is.
    let trail = harness::audit_trail(&mut admin).await?;
    check_audit(&trail, &history).context("the audit trail")?;
    Ok(Summary {
        membership_changes,
        faults: fault_log,
        operations: history.len(),
        unknown,
        vms,
        heal,
    })
}

async fn client(config: &SimConfig, certs: &Certs, offset: u16) -> anyhow::Result<Client> {
    let nodes = world::node_addrs(config.nodes);
    let client = world::operator(config, certs, offset, nodes).await?;
    Ok(client.with_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS)))
}

/// Awaits every future, concurrently, in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::with_capacity(futures.len());
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in set.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// Every acknowledged create and delete of the registry is recorded once in the audit trail,
/// applied and as the operator's; numbers run without a gap from 1; no request twice.
fn check_audit(
    trail: &[qvdc_transport::protocol::AuditRecord],
    history: &[Operation<Registry>],
) -> anyhow::Result<()> {
    use qvdc_transport::protocol::AuditOutcome;
    for (i, record) in trail.iter().enumerate() {
        anyhow::ensure!(
            record.seq == i as u64 + 1,
            "record {} of the trail is numbered {}",
            i + 1,
            record.seq
        );
    }
    let mut recorded: BTreeMap<&str, Vec<&qvdc_transport::protocol::AuditRecord>> = BTreeMap::new();
    for record in trail {
        if let Some(id) = &record.request_id {
            recorded.entry(id.as_str()).or_default().push(record);
        }
    }
    if let Some((id, records)) = recorded.iter().find(|(_, r)| r.len() > 1) {
        anyhow::bail!(
            "request {id} is recorded {} times: {:?}",
            records.len(),
            records.iter().map(|r| r.seq).collect::<Vec<_>>()
        );
    }
    for operation in history {
        let id = match (&operation.op, &operation.returned) {
            (RegistryOp::Create { request_id, .. }, Some((_, RegistryRet::Created)))
            | (RegistryOp::Delete { request_id, .. }, Some((_, RegistryRet::Deleted))) => {
                request_id
            }
            _ => continue,
        };
        let Some([record]) = recorded.get(id.as_str()).map(Vec::as_slice) else {
            anyhow::bail!(
                "acknowledged request {id} ({:?}) is not in the trail",
                operation.op
            );
        };
        anyhow::ensure!(
            record.outcome == AuditOutcome::Applied
                && record.by.as_deref() == Some(world::OPERATOR),
            "acknowledged request {id} is recorded as {record:?}"
        );
    }
    Ok(())
}

/// Sends `request` and classifies the answer: `Ok(Some)` answered, `Ok(None)` unknown (timed
/// out, cluster unavailable), `Err` an answer a correct cluster never gives.
async fn send(
    client: &mut Client,
    request: ApiRequest,
) -> Option<Result<ApiResponse, ApiErrorKind>> {
    let deadline = Duration::from_millis(REQUEST_TIMEOUT_MS * 2);
    match tokio::time::timeout(deadline, client.request(request)).await {
        Ok(Ok(response)) => Some(Ok(response)),
        Ok(Err(ClientError::Rejected(e))) if e.kind != ApiErrorKind::Unavailable => {
            Some(Err(e.kind))
        }
        _ => None,
    }
}

async fn registry_client(
    config: &SimConfig,
    who: u64,
    mut client: Client,
    start: Instant,
    end: Instant,
) -> Vec<Operation<Registry>> {
    let mut rng = StdRng::seed_from_u64(config.seed ^ (0x5eed_0000 + who));
    let mut history = Vec::new();
    let at = || start.elapsed().as_millis() as u64;
    while Instant::now() < end {
        let name = format!("p{}", rng.gen_range(0..POOL_NAMES));
        let draw = rng.gen_range(0..100);
        let call = at();
        let (op, answer) = if draw < 45 {
            let hosts = some_hosts(config, &mut rng);
            let request_id = client.new_request_id();
            let request = ApiRequest::PoolCreate {
                request_id: request_id.clone(),
                spec: world::dir_pool(&name),
                hosts,
            };
            let answer = match send(&mut client, request).await {
                Some(Ok(ApiResponse::PoolCreated { .. })) => Some(RegistryRet::Created),
                Some(Err(ApiErrorKind::AlreadyExists)) => Some(RegistryRet::AlreadyExists),
                other => unexpected(other),
            };
            (RegistryOp::Create { name, request_id }, answer)
        } else if draw < 75 {
            let request_id = client.new_request_id();
            let request = ApiRequest::PoolDelete {
                request_id: request_id.clone(),
                pool: name.clone(),
            };
            let answer = match send(&mut client, request).await {
                Some(Ok(ApiResponse::Done)) => Some(RegistryRet::Deleted),
                Some(Err(ApiErrorKind::NotFound)) => Some(RegistryRet::NotFound),
                other => unexpected(other),
            };
            (RegistryOp::Delete { name, request_id }, answer)
        } else {
            let answer = match send(&mut client, ApiRequest::PoolList).await {
                Some(Ok(ApiResponse::Pools(pools))) => Some(RegistryRet::Names(registry_names(
                    pools.into_iter().map(|p| p.spec.name),
                ))),
                other => unexpected(other),
            };
            (RegistryOp::Read, answer)
        };
        history.push(match answer {
            Some(ret) => Operation::answered(who, call, at(), op, ret),
            None => Operation::unknown(who, call, op),
        });
        think(&mut rng).await;
    }
    history
}

/// An answer the registry does not model: unknown, unless it is a definite answer of the
/// wrong kind, which the checker then reports as a return no order explains.
fn unexpected(answer: Option<Result<ApiResponse, ApiErrorKind>>) -> Option<RegistryRet> {
    answer.map(|other| RegistryRet::Names([format!("unexpected answer: {other:?}")].into()))
}

fn some_hosts(config: &SimConfig, rng: &mut StdRng) -> Vec<String> {
    let count = rng.gen_range(1..=config.hosts.min(3));
    let mut hosts: Vec<String> = Vec::new();
    while hosts.len() < count {
        let host = SimConfig::host_name(rng.gen_range(1..=config.hosts));
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
}

/// The local pool the VMs' disks are made in (every host has its own storage under it).
const LOCAL_POOL: &str = "local";
/// The shared pool of the HA VMs' disks.
const HA_POOL: &str = "ha";

async fn think(rng: &mut StdRng) {
    let pause = rng.gen_range(THINK_MS.0..=THINK_MS.1);
    tokio::time::sleep(Duration::from_millis(pause)).await;
}

/// Removes the joining node, retrying until the cluster says it is not a member.
async fn leave_for_good(config: &SimConfig, client: &mut Client) -> anyhow::Result<()> {
    let leave = ApiRequest::ClusterRemoveNode {
        node_id: joining(config),
    };
    eventually(
        "the joining node removed",
        Duration::from_secs(HEAL_BOUND_S),
        // "Not a member" is as good: a node that did not watch the removal (it restarted from
        // a later snapshot) does not know the id as removed.
        async || match send(client, leave.clone()).await {
            Some(Ok(_) | Err(ApiErrorKind::NotFound)) => Ok(Some(())),
            Some(Err(kind)) => bail!("refused: {kind:?}"),
            None => bail!("no answer"),
        },
    )
    .await
}

/// The node that starts empty and is added and removed during the chaos phase.
fn joining(config: &SimConfig) -> u64 {
    config.nodes + 1
}

/// Adds the joining node (as a learner that catches up, then a voter) and removes it again,
/// each at a moment of the chaos phase drawn from the seed, under whatever faults are in
/// effect then; each is retried with its outcome unknown until answered or the phase ends.
/// Returns how many were answered.
async fn membership_client(
    config: &SimConfig,
    client: Option<&mut Client>,
    start: Instant,
    end: Instant,
) -> usize {
    let Some(client) = client else {
        return 0;
    };
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x006d_656d_6265_7273);
    let span = end - start;
    let add_at = start + span.mul_f64(rng.gen_range(0.05..0.4));
    let remove_at = start + span.mul_f64(rng.gen_range(0.5..0.9));
    let node_id = joining(config);
    let add = ApiRequest::ClusterAddNode {
        node_id,
        addr: world::node_addr(node_id).to_string(),
    };
    let remove = ApiRequest::ClusterRemoveNode { node_id };
    let mut answered = 0;
    for (at, change) in [(add_at, add), (remove_at, remove)] {
        tokio::time::sleep_until(at).await;
        while Instant::now() < end {
            match send(client, change.clone()).await {
                Some(Ok(_)) => {
                    info!(?change, "membership changed");
                    answered += 1;
                    break;
                }
                // A remove whose first try went through, answered by a node that never saw
                // the id as a member (it restarted from a later snapshot).
                Some(Err(ApiErrorKind::NotFound)) => break,
                _ => tokio::time::sleep(Duration::from_millis(harness::POLL_MS)).await,
            }
        }
    }
    answered
}

/// Creates, stops, starts and deletes VMs until `end`. Its answers are not modelled: the
/// VMs' final state is checked against what the cluster holds after healing.
async fn vms_client(config: &SimConfig, mut client: Client, end: Instant) {
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x0056_4d56_4d56_4d00);
    let mut made = 0u32;
    while Instant::now() < end {
        let draw = rng.gen_range(0..100);
        let name = format!("vm{}", rng.gen_range(0..made.max(1)));
        let request = if draw < 30 || made == 0 {
            // Half the creates reuse a name, which may belong to a VM deleted a moment ago
            // whose guest still runs on a host that has not heard of the delete.
            let create = if made > 0 && rng.gen_bool(0.5) {
                name
            } else {
                made += 1;
                format!("vm{}", made - 1)
            };
            // Half of them HA (restarted elsewhere when their host is lost), on a disk in the
            // shared pool; a third of the others on a disk of one host's own storage, placed
            // there only.
            let ha = rng.gen_bool(0.5);
            let mut disks = Vec::new();
            if ha {
                let volume = format!("{create}.qcow2");
                let make = ApiRequest::VolumeCreate {
                    request_id: client.new_request_id(),
                    pool: HA_POOL.into(),
                    name: volume.clone(),
                    format: VolumeFormat::Qcow2,
                    size_bytes: 64 << 20,
                    host: None,
                };
                let _ = send(&mut client, make).await;
                disks.push(VmDisk {
                    pool: HA_POOL.into(),
                    volume,
                    format: VolumeFormat::Qcow2,
                });
            } else if rng.gen_bool(1.0 / 3.0) {
                let volume = format!("{create}.raw");
                let on = SimConfig::host_name(rng.gen_range(1..=config.hosts));
                let make = ApiRequest::VolumeCreate {
                    request_id: client.new_request_id(),
                    pool: LOCAL_POOL.into(),
                    name: volume.clone(),
                    format: VolumeFormat::Raw,
                    size_bytes: 64 << 20,
                    host: Some(on),
                };
                let _ = send(&mut client, make).await;
                disks.push(VmDisk {
                    pool: LOCAL_POOL.into(),
                    volume,
                    format: VolumeFormat::Raw,
                });
            }
            let spec = VmSpec {
                id: String::new(),
                name: create,
                vcpus: 1,
                memory_bytes: 512 << 20,
                disks,
                nics: vec![],
            };
            if ha {
                let isolation = match rng.gen_range(0..4) {
                    0 => IsolationResponse::ShutDown,
                    1 => IsolationResponse::Keep,
                    _ => IsolationResponse::PowerOff,
                };
                ApiRequest::VmCreateHa {
                    request_id: client.new_request_id(),
                    spec,
                    host: None,
                    start: true,
                    ha: HaPolicy {
                        restart: true,
                        priority: rng.gen_range(0..3),
                        isolation,
                    },
                }
            } else {
                ApiRequest::VmCreate {
                    request_id: client.new_request_id(),
                    spec,
                    host: None,
                    start: true,
                }
            }
        } else if draw < 36 {
            // The hosts' own domains: taken over, and given back.
            let host = SimConfig::host_name(rng.gen_range(1..=config.hosts));
            ApiRequest::VmAdopt {
                request_id: client.new_request_id(),
                host,
                domain: world::UNMANAGED_DOMAIN.into(),
                name: None,
            }
        } else if draw < 40 {
            ApiRequest::VmRelease {
                request_id: client.new_request_id(),
                name: world::UNMANAGED_DOMAIN.into(),
            }
        } else if draw < 72 {
            let power = if rng.gen_bool(0.5) {
                DesiredPower::Running
            } else {
                DesiredPower::Stopped
            };
            ApiRequest::VmSetPower {
                request_id: client.new_request_id(),
                name,
                power,
            }
        } else if draw < 82 {
            // Moved wherever placement puts it: live when it runs and the host takes live
            // migrations, else shut down and started there.
            ApiRequest::VmMigrate {
                request_id: client.new_request_id(),
                name,
                to: None,
            }
        } else if draw < 88 {
            // A host in maintenance sends its running VMs away (the host of a VM, so there
            // is something to move); later it takes VMs again.
            let on = rng.gen_bool(0.6);
            let mut host = SimConfig::host_name(rng.gen_range(1..=config.hosts));
            if on {
                if let Some(Ok(ApiResponse::Vm(vm))) =
                    send(&mut client, ApiRequest::VmShow { name }).await
                {
                    host = vm.host;
                }
            }
            ApiRequest::HostMaintenance {
                request_id: client.new_request_id(),
                host,
                on,
            }
        } else {
            ApiRequest::VmDelete {
                request_id: client.new_request_id(),
                name,
            }
        };
        let _ = send(&mut client, request).await;
        think(&mut rng).await;
    }
}

/// Takes every host out of maintenance, as an operator does once the work on them is done.
async fn end_maintenance(config: &SimConfig, client: &mut Client) -> anyhow::Result<()> {
    for i in 1..=config.hosts {
        let exit = ApiRequest::HostMaintenance {
            request_id: client.new_request_id(),
            host: SimConfig::host_name(i),
            on: false,
        };
        ask(client, exit).await?;
    }
    Ok(())
}

/// A release cut short by a fault leaves its VM being released, which only its operator
/// finishes: do what they would, retry it.
async fn finish_releases(client: &mut Client) -> anyhow::Result<()> {
    eventually(
        "releases cut short by faults finished",
        Duration::from_secs(HEAL_BOUND_S),
        async || {
            let ApiResponse::Vms(vms) = ask(client, ApiRequest::VmList).await? else {
                bail!("vm list answered something else");
            };
            let releasing: Vec<String> = vms
                .into_iter()
                .filter(|vm| {
                    vm.error
                        .as_ref()
                        .is_some_and(|e| e.contains("being given back"))
                })
                .map(|vm| vm.spec.name)
                .collect();
            for name in &releasing {
                let release = ApiRequest::VmRelease {
                    request_id: client.new_request_id(),
                    name: name.clone(),
                };
                ask(client, release).await?;
            }
            Ok(releasing.is_empty().then_some(()))
        },
    )
    .await
}

/// The pools of the registry model: all but those the script made.
fn registry_names(names: impl Iterator<Item = String>) -> std::collections::BTreeSet<String> {
    names
        .filter(|name| name != LOCAL_POOL && name != world::LEGACY_POOL && name != HA_POOL)
        .collect()
}

async fn pool_names(client: &mut Client) -> anyhow::Result<std::collections::BTreeSet<String>> {
    match ask(client, ApiRequest::PoolList).await? {
        ApiResponse::Pools(pools) => Ok(registry_names(pools.into_iter().map(|p| p.spec.name))),
        other => bail!("pool list answered {other:?}"),
    }
}

/// Whether the cluster and the hosts agree, and agree with the desired state: `Ok(None)`
/// not yet (the error of the last probe says what differs), `Ok(Some(vms))` converged.
async fn converged(
    config: &SimConfig,
    client: &mut Client,
    faults: &Shared<Faults>,
) -> anyhow::Result<Option<usize>> {
    let ApiResponse::Pools(pools) = ask(client, ApiRequest::PoolList).await? else {
        bail!("pool list answered something else");
    };
    let ApiResponse::Vms(vms) = ask(client, ApiRequest::VmList).await? else {
        bail!("vm list answered something else");
    };
    let hosts = faults.lock().expect("faults lock poisoned").hosts.clone();
    // Pools: assigned ⇔ mounted, in the cluster's view and in each host's mount table.
    let mut expected_mounts: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for pool in &pools {
        for host in &pool.hosts {
            ensure!(
                host.health == Health::Healthy && host.mounted,
                "pool {} on {}: {:?} (mounted: {}, error: {:?})",
                pool.spec.name,
                host.host_id,
                host.health,
                host.mounted,
                host.error
            );
            expected_mounts
                .entry(host.host_id.clone())
                .or_default()
                .push(world::pool_target(&host.host_id, &pool.spec.name));
        }
    }
    // VMs: each in its desired state on its host, and on no other. Every host also lists
    // its unmanaged domain, as it was when the host booted: qvdc never touches it.
    let mut expected_domains: BTreeMap<String, BTreeMap<String, PowerState>> = BTreeMap::new();
    let (unmanaged, vms): (Vec<_>, Vec<_>) = vms.into_iter().partition(|vm| !vm.managed);
    for i in 1..=config.hosts {
        let host = SimConfig::host_name(i);
        let planted = if world::unmanaged_runs(config.seed, i) {
            PowerState::Running
        } else {
            PowerState::ShutOff
        };
        let touched = hosts
            .get(&host)
            .context("a host that never booted")?
            .hypervisor
            .touched_unmanaged();
        ensure!(
            touched.is_empty(),
            "qvdc touched unmanaged domains on {host}: {touched:?}"
        );
        let adopted = vms
            .iter()
            .any(|vm| vm.host == host && vm.spec.name == world::UNMANAGED_DOMAIN);
        let listed: Vec<_> = unmanaged.iter().filter(|vm| vm.host == host).collect();
        if adopted {
            // Its VM is checked below like every other; its desired power is what it had.
            ensure!(
                listed.is_empty(),
                "{host}'s adopted domain is listed as unmanaged too"
            );
            continue;
        }
        ensure!(
            listed.len() == 1 && listed[0].spec.name == world::UNMANAGED_DOMAIN,
            "{host}'s unmanaged domains are listed as {listed:?}, not as its {}",
            world::UNMANAGED_DOMAIN
        );
        ensure!(
            listed[0].power == planted,
            "unmanaged domain {} on {host} is {:?}, but it was {planted:?} and qvdc must never touch it",
            world::UNMANAGED_DOMAIN,
            listed[0].power
        );
        expected_domains
            .entry(host)
            .or_default()
            .insert(world::UNMANAGED_DOMAIN.to_owned(), planted);
    }
    let ApiResponse::Volumes(local) = ask(
        client,
        ApiRequest::VolumeList {
            pool: LOCAL_POOL.into(),
        },
    )
    .await?
    else {
        bail!("volume list answered something else");
    };
    for vm in &vms {
        for disk in vm.spec.disks.iter().filter(|d| d.pool == LOCAL_POOL) {
            let on = local.iter().find(|v| v.name == disk.volume);
            let on = on.and_then(|v| v.host.as_deref());
            ensure!(
                on == Some(vm.host.as_str()),
                "VM {} runs on {}, but its disk {}/{} is on {on:?}'s own storage",
                vm.spec.name,
                vm.host,
                LOCAL_POOL,
                disk.volume
            );
        }
        ensure!(
            !vm.reason.starts_with("being adopted"),
            "VM {} on {} is still {}",
            vm.spec.name,
            vm.host,
            vm.reason
        );
        let want = match vm.desired {
            DesiredPower::Running => PowerState::Running,
            DesiredPower::Stopped => PowerState::ShutOff,
        };
        ensure!(
            vm.power == want,
            "VM {} on {} is {:?}, desired {:?} ({})",
            vm.spec.name,
            vm.host,
            vm.power,
            vm.desired,
            vm.reason
        );
        expected_domains
            .entry(vm.host.clone())
            .or_default()
            .insert(vm.spec.name.clone(), want);
    }
    for i in 1..=config.hosts {
        let name = SimConfig::host_name(i);
        let parts = hosts.get(&name).context("a host that never booted")?;
        let mut mounted = parts.mounter.mounts();
        mounted.sort();
        let mut expected = expected_mounts.remove(&name).unwrap_or_default();
        expected.sort();
        ensure!(
            mounted == expected,
            "{name} has mounted {mounted:?}, the cluster says {expected:?}"
        );
        let domains = parts.hypervisor.domains();
        let expected = expected_domains.remove(&name).unwrap_or_default();
        ensure!(
            domains == expected,
            "{name} runs {domains:?}, the cluster says {expected:?}"
        );
    }
    Ok(Some(vms.len()))
}
