//! The VM flow in the simulation: a pool (unassigned from a host and assigned back), a volume
//! and a network; a VM placed by the cluster and started; the leader taken away (crash or
//! isolation) while it runs; the VM's host agent crashed and restarted (it gets the VM back);
//! then the VM stopped and deleted through the new leader. The VM must stay on the host it
//! was placed on — never started on a second one — which the invariants check on every run.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, ensure};
use qvdc_cluster::{Client, ClientError};
use qvdc_transport::protocol::{
    ApiErrorKind, ApiRequest, ApiResponse, DesiredPower, Liveness, NetworkSpec, PowerState, VmDisk,
    VmNic, VmSpec, VmView, VolumeFormat,
};
use tokio::time::Instant;

use crate::{
    harness::{self, ask, change, eventually, Action, Faults},
    world::{self, Certs, Shared, SimConfig},
};

const POOL: &str = "shared";
const VM: &str = "web";
const NETWORK: &str = "prod";
/// How long the VM's host stays cut off before the operator tries to delete the VM.
const CUT_OFF_S: u64 = 3;
/// How long the operator waits for a delete the cut-off host cannot confirm (simulated).
const DELETE_TIMEOUT_S: u64 = 5;

/// What a run measured, in simulated time, and its event trace.
#[derive(Debug)]
pub struct Outcome {
    pub trace: Vec<String>,
    pub trace_hash: u64,
    pub host: String,
    pub create_to_running: Duration,
}

/// Runs the scenario for `config.seed`. Fails if any step of the flow does not hold.
pub fn run(config: &SimConfig) -> anyhow::Result<Outcome> {
    let run = harness::run(config, operator_script)?;
    let (host, create_to_running) = run.value;
    Ok(Outcome {
        trace: run.trace,
        trace_hash: run.trace_hash,
        host,
        create_to_running,
    })
}

async fn vm(client: &mut Client) -> anyhow::Result<VmView> {
    match ask(client, ApiRequest::VmShow { name: VM.into() }).await? {
        ApiResponse::Vm(view) => Ok(view),
        other => bail!("vm show answered {other:?}"),
    }
}

async fn operator_script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<(String, Duration)> {
    let mut client = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    let hosts: Vec<String> = (1..=config.hosts).map(SimConfig::host_name).collect();
    harness::all_hosts_ready(&mut client, config.hosts).await?;
    let spec = world::dir_pool(POOL);
    let create = ApiRequest::PoolCreate {
        request_id: client.new_request_id(),
        spec,
        hosts,
    };
    ask(&mut client, create).await?;
    // The last host leaves the pool and comes back: it unmounts, then mounts again.
    let last = vec![SimConfig::host_name(config.hosts)];
    let unassign = ApiRequest::PoolUnassign {
        request_id: client.new_request_id(),
        pool: POOL.into(),
        hosts: last.clone(),
    };
    ask(&mut client, unassign).await?;
    eventually(
        "pool without its last host",
        Duration::from_secs(60),
        async || match ask(&mut client, ApiRequest::PoolShow { name: POOL.into() }).await? {
            ApiResponse::Pool(view) => Ok((view.hosts.len() == config.hosts - 1).then_some(())),
            other => bail!("pool show answered {other:?}"),
        },
    )
    .await?;
    let assign = ApiRequest::PoolAssign {
        request_id: client.new_request_id(),
        pool: POOL.into(),
        hosts: last,
    };
    ask(&mut client, assign).await?;
    let network = ApiRequest::NetworkCreate {
        request_id: client.new_request_id(),
        spec: NetworkSpec {
            name: NETWORK.into(),
            bridge: "br-prod".into(),
            vlan: None,
            uplink: None,
        },
        hosts: (1..=config.hosts).map(SimConfig::host_name).collect(),
    };
    ask(&mut client, network).await?;
    eventually(
        "network up everywhere",
        Duration::from_secs(60),
        async || match ask(
            &mut client,
            ApiRequest::NetworkShow {
                network: NETWORK.into(),
            },
        )
        .await?
        {
            ApiResponse::Network(view) => Ok(view.hosts.iter().all(|h| h.up).then_some(())),
            other => bail!("network show answered {other:?}"),
        },
    )
    .await?;
    let volume = ApiRequest::VolumeCreate {
        host: None,
        request_id: client.new_request_id(),
        pool: POOL.into(),
        name: "web.qcow2".into(),
        format: VolumeFormat::Qcow2,
        size_bytes: 64 << 20,
    };
    ask(&mut client, volume).await?;
    eventually("volume ready", Duration::from_secs(60), async || match ask(
        &mut client,
        ApiRequest::VolumeList { pool: POOL.into() },
    )
    .await?
    {
        ApiResponse::Volumes(v) => Ok(v.first().filter(|v| v.ready).map(drop)),
        other => bail!("volume list answered {other:?}"),
    })
    .await?;

    let created = Instant::now();
    let spec = VmSpec {
        id: String::new(),
        name: VM.into(),
        vcpus: 2,
        memory_bytes: 1 << 30,
        disks: vec![VmDisk {
            pool: POOL.into(),
            volume: "web.qcow2".into(),
            format: VolumeFormat::Qcow2,
        }],
        nics: vec![VmNic {
            network: NETWORK.into(),
            mac: None,
        }],
    };
    let request = ApiRequest::VmCreate {
        request_id: client.new_request_id(),
        spec,
        host: None,
        start: true,
    };
    let ApiResponse::VmCreated { host, .. } = ask(&mut client, request).await? else {
        bail!("vm create answered something else");
    };
    let failing: Vec<String> = config
        .failing_hosts
        .iter()
        .map(|i| SimConfig::host_name(*i))
        .collect();
    ensure!(
        !failing.contains(&host),
        "placed on {host}, where the pool cannot mount"
    );
    eventually("VM running", Duration::from_secs(60), async || {
        Ok((vm(&mut client).await?.power == PowerState::Running).then_some(()))
    })
    .await?;
    let create_to_running = created.elapsed();

    // The VM's host's hypervisor hangs (libvirtd stopped, say). Heartbeats do not wait on it:
    // the host stays Ready with its pool reported healthy, and the VM's power becomes
    // Unknown, never a stale "running" passed off as fresh. Once it answers, the VM is
    // seen running again, where it was.
    let hypervisor = faults.lock().expect("faults lock poisoned").hosts[&host]
        .hypervisor
        .clone();
    hypervisor.set_hung(true);
    eventually(
        "VM power unknown while its hypervisor hangs",
        Duration::from_secs(60),
        async || Ok((vm(&mut client).await?.power == PowerState::Unknown).then_some(())),
    )
    .await?;
    let ApiResponse::Hosts(hosts) = ask(&mut client, ApiRequest::HostList).await? else {
        bail!("host list answered something else");
    };
    let liveness = hosts.iter().find(|h| h.host_id == host).map(|h| h.liveness);
    ensure!(
        liveness == Some(Liveness::Ready),
        "{host} is {liveness:?} while only its hypervisor hangs"
    );
    let ApiResponse::Pool(pool) =
        ask(&mut client, ApiRequest::PoolShow { name: POOL.into() }).await?
    else {
        bail!("pool show answered something else");
    };
    ensure!(
        pool.healthy_hosts.contains(&host),
        "pool {POOL} is not reported healthy on {host} while only its hypervisor hangs: {:?}",
        pool.hosts
    );
    hypervisor.set_hung(false);
    eventually("VM running again", Duration::from_secs(60), async || {
        Ok((vm(&mut client).await?.power == PowerState::Running).then_some(()))
    })
    .await?;

    // Take the leader away while the VM runs.
    let disrupted = harness::take_leader_away(&config, &certs, &mut client, &faults).await?;
    let mut majority = disrupted.majority;
    let after = eventually(
        "VM running, seen by the new leader",
        Duration::from_secs(60),
        async || {
            let view = vm(&mut majority).await?;
            Ok((view.power == PowerState::Running).then_some(view))
        },
    )
    .await?;
    ensure!(
        after.host == host,
        "the VM moved from {host} to {}",
        after.host
    );

    // The VM's host is cut off: deleting the VM now must fail and keep the VM (stopped in
    // the desired state, its guest still running where the cluster cannot see it), so that
    // its name and disks are not reused under a live guest. Once the host is back, the VM
    // stops; started again, it goes on.
    let links: Vec<(String, String)> = (1..=config.nodes)
        .map(|i| (host.clone(), SimConfig::node_name(i)))
        .collect();
    change(&faults, Action::Partition(links.clone()));
    harness::host_becomes(&mut majority, &host, Liveness::Unreachable).await?;
    // Meanwhile the VM stays where it is: nothing starts it on another host while its guest
    // may still run here (the VM invariant watches every start).
    tokio::time::sleep(Duration::from_secs(CUT_OFF_S)).await;
    let delete = ApiRequest::VmDelete {
        request_id: majority.new_request_id(),
        name: VM.into(),
    };
    let mut impatient = world::operator(&config, &certs, 3, world::node_addrs(config.nodes))
        .await?
        .with_timeout(Duration::from_secs(DELETE_TIMEOUT_S));
    match impatient.request(delete).await {
        Err(e)
            if e.to_string()
                .contains("did not confirm that the guest is gone") => {}
        other => bail!(
            "deleting a VM whose host is cut off answered {other:?}: a delete must wait for \
             the host to confirm the guest gone, or the record goes while the guest may run"
        ),
    }
    let kept = vm(&mut majority).await?;
    ensure!(
        kept.desired == DesiredPower::Stopped,
        "a VM whose delete failed is {:?}, not stopped",
        kept.desired
    );
    let guest = faults.lock().expect("faults lock poisoned").hosts[&host]
        .hypervisor
        .domains();
    ensure!(
        guest.get(VM) == Some(&PowerState::Running),
        "the cut-off host's guest should still run (nothing could reach it): {guest:?}"
    );
    change(&faults, Action::Repair(links));
    eventually(
        "VM stopped once its host is back",
        Duration::from_secs(60),
        async || Ok((vm(&mut majority).await?.power == PowerState::ShutOff).then_some(())),
    )
    .await?;
    let start = ApiRequest::VmSetPower {
        request_id: majority.new_request_id(),
        name: VM.into(),
        power: DesiredPower::Running,
    };
    ask(&mut majority, start).await?;
    eventually("VM running again", Duration::from_secs(60), async || {
        Ok((vm(&mut majority).await?.power == PowerState::Running).then_some(()))
    })
    .await?;

    // The VM's host agent crashes (and its hypervisor with it): the host turns Unreachable
    // and the VM's power unknown; once back, it gets the pool and the VM again.
    faults.lock().expect("faults lock poisoned").crash = Some(host.clone());
    eventually(
        "host unreachable, VM unknown",
        Duration::from_secs(60),
        async || {
            let view = vm(&mut majority).await?;
            let unreachable =
                harness::liveness_of(&mut majority, &host).await? == Some(Liveness::Unreachable);
            Ok((unreachable && view.power == PowerState::Unknown).then_some(()))
        },
    )
    .await?;
    faults.lock().expect("faults lock poisoned").restart = Some(host.clone());
    let back = eventually(
        "VM running again on its host",
        Duration::from_secs(60),
        async || {
            let view = vm(&mut majority).await?;
            Ok((view.power == PowerState::Running).then_some(view))
        },
    )
    .await?;
    ensure!(
        back.host == host,
        "the VM moved from {host} to {}",
        back.host
    );

    // Stop and delete it through the new leader.
    let stop = ApiRequest::VmSetPower {
        request_id: majority.new_request_id(),
        name: VM.into(),
        power: DesiredPower::Stopped,
    };
    ask(&mut majority, stop).await?;
    eventually("VM shut off", Duration::from_secs(60), async || {
        Ok((vm(&mut majority).await?.power == PowerState::ShutOff).then_some(()))
    })
    .await?;
    let delete = ApiRequest::VmDelete {
        request_id: majority.new_request_id(),
        name: VM.into(),
    };
    ask(&mut majority, delete).await?;
    match majority
        .request(ApiRequest::VmShow { name: VM.into() })
        .await
    {
        Err(ClientError::Rejected(e)) if e.kind == ApiErrorKind::NotFound => {}
        other => bail!("a deleted VM answered {other:?}"),
    }

    harness::bring_back(&config, &faults, disrupted.machine);
    harness::nodes_agree(&config, &certs).await?;
    Ok((host, create_to_running))
}
