//! Adopting a domain qvdc did not create, and giving it back, in the simulation: the first
//! host's `legacy-db` (its disk a file in pool `legacy`) is listed as unmanaged, adopted
//! (its disk becomes a volume), the leader is taken away, the VM is stopped and started
//! through the new leader, then released: the guest runs on, unmanaged, its file kept, and
//! no other host's `legacy-db` was ever touched.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, ensure};
use qvdc_cluster::Client;
use qvdc_transport::protocol::{ApiRequest, ApiResponse, DesiredPower, PowerState, VmView};

use crate::{
    harness::{self, ask, eventually, Faults},
    world::{self, Certs, Shared, SimConfig, LEGACY_DISK, LEGACY_POOL, UNMANAGED_DOMAIN},
};

/// What a run saw, in simulated time, and its event trace.
#[derive(Debug)]
pub struct Outcome {
    pub trace: Vec<String>,
    pub trace_hash: u64,
    /// From the adopt request to the host having recorded the VM's id.
    pub adopted_in: Duration,
}

/// Runs the scenario for `config.seed`. Fails if any step of the flow does not hold.
pub fn run(config: &SimConfig) -> anyhow::Result<Outcome> {
    let run = harness::run(config, script)?;
    Ok(Outcome {
        trace: run.trace,
        trace_hash: run.trace_hash,
        adopted_in: run.value,
    })
}

async fn vms(client: &mut Client) -> anyhow::Result<Vec<VmView>> {
    match ask(client, ApiRequest::VmList).await? {
        ApiResponse::Vms(vms) => Ok(vms),
        other => bail!("vm list answered {other:?}"),
    }
}

/// The `legacy-db` of `host` as `vm list` shows it.
async fn legacy_on(client: &mut Client, host: &str) -> anyhow::Result<Option<VmView>> {
    Ok(vms(client)
        .await?
        .into_iter()
        .find(|vm| vm.host == host && vm.spec.name == UNMANAGED_DOMAIN))
}

async fn volumes(client: &mut Client) -> anyhow::Result<Vec<String>> {
    let list = ApiRequest::VolumeList {
        pool: LEGACY_POOL.into(),
    };
    match ask(client, list).await? {
        ApiResponse::Volumes(volumes) => Ok(volumes.into_iter().map(|v| v.name).collect()),
        other => bail!("volume list answered {other:?}"),
    }
}

fn planted(config: &SimConfig, i: usize) -> PowerState {
    if world::unmanaged_runs(config.seed, i) {
        PowerState::Running
    } else {
        PowerState::ShutOff
    }
}

/// The second host's `legacy-db`, whose name the first one's VM now has: refused under its
/// own name, adopted as `legacy-db-2` (renamed first, which needs it shut off), released.
async fn adopt_renamed(
    config: &SimConfig,
    client: &mut Client,
    faults: &Shared<Faults>,
) -> anyhow::Result<()> {
    let host = SimConfig::host_name(2);
    let adopt = |client: &mut Client, name: Option<&str>| ApiRequest::VmAdopt {
        request_id: client.new_request_id(),
        host: host.clone(),
        domain: UNMANAGED_DOMAIN.into(),
        name: name.map(str::to_owned),
    };
    let taken = adopt(client, None);
    match client.request(taken).await {
        Err(e) if e.to_string().contains("already exists") => {}
        other => bail!("adopting a domain under a VM's name answered {other:?}"),
    }
    let renamed = adopt(client, Some(RENAMED));
    if planted(config, 2) == PowerState::Running {
        match client.request(renamed).await {
            Err(e) if e.to_string().contains("renames only shut-off domains") => return Ok(()),
            other => bail!("adopting a running domain under another name answered {other:?}"),
        }
    }
    ask(client, renamed).await?;
    eventually("legacy-db-2 adopted", Duration::from_secs(60), async || {
        let vm = vms(client)
            .await?
            .into_iter()
            .find(|vm| vm.spec.name == RENAMED);
        Ok(vm
            .filter(|vm| vm.host == host && vm.managed && !vm.reason.starts_with("being adopted"))
            .map(drop))
    })
    .await?;
    let domains = faults.lock().expect("faults lock poisoned").hosts[&host]
        .hypervisor
        .domains();
    ensure!(
        domains.contains_key(RENAMED) && !domains.contains_key(UNMANAGED_DOMAIN),
        "{host} has {domains:?} after the rename"
    );
    let release = ApiRequest::VmRelease {
        request_id: client.new_request_id(),
        name: RENAMED.into(),
    };
    ask(client, release).await?;
    eventually(
        "legacy-db-2 released",
        Duration::from_secs(60),
        async || {
            let vm = vms(client)
                .await?
                .into_iter()
                .find(|vm| vm.spec.name == RENAMED);
            Ok(vm.filter(|vm| vm.host == host && !vm.managed).map(drop))
        },
    )
    .await
}

/// The name the second host's `legacy-db` is adopted under.
const RENAMED: &str = "legacy-db-2";

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<Duration> {
    let mut client = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    harness::all_hosts_ready(&mut client, config.hosts).await?;
    let host = SimConfig::host_name(1);
    let create = ApiRequest::PoolCreate {
        request_id: client.new_request_id(),
        spec: world::dir_pool(LEGACY_POOL),
        hosts: (1..=config.hosts).map(SimConfig::host_name).collect(),
    };
    ask(&mut client, create).await?;
    // Once the pool is mounted, the domain's disk is seen to lie in it.
    let unmanaged = eventually(
        "legacy-db listed as unmanaged, its disk in pool legacy",
        Duration::from_secs(60),
        async || {
            let vm = legacy_on(&mut client, &host).await?;
            Ok(vm.filter(|vm| !vm.managed && !vm.spec.disks.is_empty()))
        },
    )
    .await?;
    ensure!(
        unmanaged.spec.disks[0].volume == LEGACY_DISK && unmanaged.power == planted(&config, 1),
        "legacy-db is listed as {unmanaged:?}"
    );

    let adopting = tokio::time::Instant::now();
    let adopt = ApiRequest::VmAdopt {
        request_id: client.new_request_id(),
        host: host.clone(),
        domain: UNMANAGED_DOMAIN.into(),
        name: None,
    };
    let ApiResponse::VmCreated { name, .. } = ask(&mut client, adopt).await? else {
        bail!("vm adopt answered something else");
    };
    ensure!(name == UNMANAGED_DOMAIN, "adopted as {name}");
    let is_adopted = |vm: &VmView| vm.managed && !vm.reason.starts_with("being adopted");
    eventually("legacy-db adopted", Duration::from_secs(60), async || {
        let vm = legacy_on(&mut client, &host).await?;
        Ok(vm.filter(is_adopted).map(drop))
    })
    .await?;
    let adopted_in = adopting.elapsed();
    ensure!(
        volumes(&mut client).await? == [LEGACY_DISK],
        "the adopted disk is not a volume"
    );
    adopt_renamed(&config, &mut client, &faults).await?;

    // A leader change in between loses nothing: the new leader knows the VM, and drives it.
    let disrupted = harness::take_leader_away(&config, &certs, &mut client, &faults).await?;
    let mut majority = disrupted.majority;
    for (power, shown) in [
        (DesiredPower::Stopped, PowerState::ShutOff),
        (DesiredPower::Running, PowerState::Running),
    ] {
        let set = ApiRequest::VmSetPower {
            request_id: majority.new_request_id(),
            name: UNMANAGED_DOMAIN.into(),
            power,
        };
        ask(&mut majority, set).await?;
        eventually(
            "adopted VM follows its desired power",
            Duration::from_secs(60),
            async || {
                let vm = legacy_on(&mut majority, &host).await?;
                Ok(vm.filter(|vm| vm.managed && vm.power == shown).map(drop))
            },
        )
        .await?;
    }

    let release = ApiRequest::VmRelease {
        request_id: majority.new_request_id(),
        name: UNMANAGED_DOMAIN.into(),
    };
    ask(&mut majority, release).await?;
    let guest = |faults: &Shared<Faults>| {
        faults.lock().expect("faults lock poisoned").hosts[&host]
            .hypervisor
            .domains()
            .get(UNMANAGED_DOMAIN)
            .copied()
    };
    let back = eventually(
        "legacy-db listed as unmanaged again",
        Duration::from_secs(60),
        async || {
            let vm = legacy_on(&mut majority, &host).await?;
            Ok(vm.filter(|vm| !vm.managed))
        },
    )
    .await;
    // Some heartbeats later the released guest still runs, untouched.
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(
        guest(&faults) == Some(PowerState::Running),
        "the released guest legacy-db on {host} is {:?}, not running: qvdc touched it after letting go",
        guest(&faults)
    );
    let back = back?;
    ensure!(back.power == PowerState::Running, "released: {back:?}");
    ensure!(
        volumes(&mut majority).await?.is_empty(),
        "the released VM's volume is still qvdc's"
    );

    harness::bring_back(&config, &faults, disrupted.machine);
    harness::nodes_agree(&config, &certs).await?;
    // Every other host's legacy-db is as it was planted, and none was ever touched.
    let parts = faults.lock().expect("faults lock poisoned").hosts.clone();
    for i in 1..=config.hosts {
        let name = SimConfig::host_name(i);
        let touched = parts[&name].hypervisor.touched_unmanaged();
        ensure!(
            touched.is_empty(),
            "qvdc touched unmanaged domains on {name}: {touched:?}"
        );
        if i > 1 {
            let domains = parts[&name].hypervisor.domains();
            let power = domains
                .get(UNMANAGED_DOMAIN)
                .or_else(|| domains.get(RENAMED))
                .copied();
            ensure!(
                power == Some(planted(&config, i)),
                "{name}'s legacy-db is {power:?}"
            );
        }
    }
    Ok(adopted_in)
}
