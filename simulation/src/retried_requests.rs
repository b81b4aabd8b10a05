//! Request ids at their edge: an operator's request carried out, its answer lost, its leader
//! crashed, and the same request retried — by the client, with the same id — through the new
//! leader. Nothing may happen twice:
//!
//! 1. a pool create committed by the old leader: the retry must get the first outcome
//!    ("created") from the replicated request log, not be judged anew ("already exists");
//! 2. a VM reboot the host carried out for the old leader: the new leader asks the host
//!    again, and the host must answer from what it did (once per request and VM), not boot
//!    the guest a second time.
//!
//! `forget-requests` (the request log finds nothing) fails the first; `reboot-every-retry`
//! (the host reboots for every copy of a request) the second.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context};
use qvdc_cluster::{Client, ClientError};
use qvdc_transport::protocol::{ApiRequest, ApiResponse, PowerState, VmSpec};
use tokio::time::Instant;

use crate::{
    harness::{self, change, eventually, status, Action, Faults},
    world::{self, Certs, Shared, SimConfig},
};

const POOL: &str = "once";
const VM: &str = "rebooted-once";
/// How long the scenario waits, after a retried reboot was answered, for a second boot a
/// duplicate would cause (simulated).
const SETTLE_S: u64 = 5;

pub struct RetriedRequests {
    /// The leaders crashed with an answer in flight: during the create, during the reboot.
    pub crashed: [u64; 2],
    /// Simulated time from each crash to the retried request's answer.
    pub retried_in: [Duration; 2],
    pub trace: Vec<String>,
    pub trace_hash: u64,
}

/// Runs the scenario with `config.seed` and `config.bugs`: three nodes, one host.
pub fn run(config: &SimConfig) -> anyhow::Result<RetriedRequests> {
    let config = config.three_nodes_one_host();
    let run = harness::run(&config, script)?;
    let (crashed, retried_in) = run.value;
    Ok(RetriedRequests {
        crashed,
        retried_in,
        trace: run.trace,
        trace_hash: run.trace_hash,
    })
}

type Retried = ([u64; 2], [Duration; 2]);

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<Retried> {
    let host = SimConfig::host_name(1);
    let mut admin = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    harness::all_hosts_ready(&mut admin, config.hosts).await?;
    harness::audit_begun(&mut admin).await?;

    // 1. A create whose answer is lost with its leader.
    let mut client = world::operator(&config, &certs, 1, world::node_addrs(config.nodes)).await?;
    let create_id = client.new_request_id();
    let create = ApiRequest::PoolCreate {
        request_id: create_id.clone(),
        spec: world::dir_pool(POOL),
        hosts: vec![host.clone()],
    };
    // Another client watches for the create to take effect (the leader's answers to the
    // operator's machine are lost, so it reads through a follower).
    let mut probe = world::operator(&config, &certs, 2, world::node_addrs(config.nodes))
        .await?
        .with_timeout(Duration::from_secs(2));
    let committed = async || {
        let ApiResponse::Pools(pools) = probe.request(ApiRequest::PoolList).await? else {
            bail!("not a pool list");
        };
        Ok(pools.iter().any(|p| p.spec.name == POOL))
    };
    let (first, first_in) = lost_answer(&faults, &mut client, create, committed).await?;
    match first.1 {
        Ok(ApiResponse::PoolCreated { .. }) => {}
        Ok(other) => bail!("the retried create was answered {other:?}"),
        Err(e) => bail!(
            "pool {POOL}'s create was committed before cp{} crashed with its answer in flight; \
             retried with the same request id it was answered \"{e}\": the request was judged \
             twice",
            first.0
        ),
    }
    bring_back_and_agree(&config, &certs, &faults, first.0).await?;
    // The audit trail holds the create once: the retry replayed its outcome.
    let trail = harness::audit_trail(&mut admin).await?;
    let records = trail
        .iter()
        .filter(|r| r.request_id.as_deref() == Some(create_id.as_str()))
        .count();
    if records != 1 {
        bail!("the audit trail holds request {create_id} {records} times: a retry was recorded as a change of its own");
    }

    // 2. A reboot whose answer is lost with its leader.
    let vm = ApiRequest::VmCreate {
        request_id: admin.new_request_id(),
        spec: VmSpec {
            id: String::new(),
            name: VM.into(),
            vcpus: 1,
            memory_bytes: 512 << 20,
            disks: vec![],
            nics: vec![],
        },
        host: Some(host.clone()),
        start: true,
    };
    harness::ask(&mut admin, vm).await?;
    let hypervisor = faults
        .lock()
        .expect("faults lock poisoned")
        .hosts
        .get(&host)
        .context("a host that never booted")?
        .hypervisor
        .clone();
    eventually("the VM running", Duration::from_secs(30), async || {
        Ok((hypervisor.domains().get(VM) == Some(&PowerState::Running)).then_some(()))
    })
    .await?;
    let boots = hypervisor.boots(VM);
    let reboot = ApiRequest::VmReboot {
        request_id: client.new_request_id(),
        name: VM.into(),
    };
    let rebooted = async || Ok(hypervisor.boots(VM) > boots);
    let (second, second_in) = lost_answer(&faults, &mut client, reboot, rebooted).await?;
    if let Err(e) = second.1 {
        bail!("the retried reboot was answered \"{e}\"");
    }
    tokio::time::sleep(Duration::from_secs(SETTLE_S)).await;
    let booted = hypervisor.boots(VM).saturating_sub(boots);
    if booted != 1 {
        bail!(
            "{VM} booted {booted} times for one reboot request, retried after cp{} crashed with \
             its answer in flight: the host carried out a request twice",
            second.0
        );
    }
    bring_back_and_agree(&config, &certs, &faults, second.0).await?;
    Ok(([first.0, second.0], [first_in, second_in]))
}

/// Sends `request` through `client` to the leader with its answers from the leader lost;
/// once `done` says it took effect, crashes that leader. The client retries the same request
/// (same id) until a new leader answers: returns the crashed leader with that answer, and
/// the simulated time from the crash to the answer.
async fn lost_answer(
    faults: &Shared<Faults>,
    client: &mut Client,
    request: ApiRequest,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<((u64, Result<ApiResponse, ClientError>), Duration)> {
    let leader = eventually("a known leader", Duration::from_secs(30), async || {
        Ok(status(client).await?.leader)
    })
    .await?;
    // The client talks to the leader directly, not through a follower that would pass the
    // answer back: a read passed on names the leader, and the next one goes there.
    let _ = client.request(ApiRequest::PoolList).await?;
    let _ = client.request(ApiRequest::PoolList).await?;
    let machine = SimConfig::node_name(leader);
    let lost = vec![(machine.clone(), world::OPERATOR_MACHINE.to_owned())];
    change(faults, Action::PartitionOneway(lost.clone()));
    let crashed_at = std::cell::Cell::new(None);
    let crash = async {
        eventually(
            "the request carried out",
            Duration::from_secs(30),
            async || Ok(done().await?.then_some(())),
        )
        .await?;
        change(faults, Action::Crash(machine.clone()));
        change(faults, Action::RepairOneway(lost.clone()));
        crashed_at.set(Some(Instant::now()));
        anyhow::Ok(())
    };
    let (answer, crashed) = tokio::join!(client.request(request), crash);
    crashed?;
    let at = crashed_at.get().context("crashed above")?;
    Ok(((leader, answer), at.elapsed()))
}

async fn bring_back_and_agree(
    config: &SimConfig,
    certs: &Certs,
    faults: &Shared<Faults>,
    node: u64,
) -> anyhow::Result<()> {
    change(faults, Action::Restart(SimConfig::node_name(node)));
    harness::nodes_agree(config, certs).await
}
