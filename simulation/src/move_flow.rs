//! Moving VMs in the simulation (ADR 24). Four hosts share a pool; host-4 takes no live
//! migrations. Then:
//!
//! 1. `web` migrates live from host-1 to host-2: the same guest runs on (it is not booted
//!    again) and host-1 keeps no domain of it;
//! 2. `web` moves to host-4, which takes no live migrations: it is shut down on host-2 and
//!    started on host-4;
//! 3. `db` migrates live from host-1 to host-3 and the leader crashes as the copy begins:
//!    the next leader finishes the move from what the hosts report;
//! 4. `cache` migrates live from host-3 towards host-2 and host-3 loses power during the
//!    copy: the move is given up (host-2 keeps no half-migrated copy) and, once host-3 is
//!    back, `cache` runs there again;
//! 5. host-2 enters maintenance with running VMs: they leave it (live to hosts that take
//!    live migrations, else cold), and the host runs nothing when the evacuation is over.
//!
//! The invariants watch every step: what the agents did and what the simulated hypervisors
//! say whenever a guest starts to run (a VM never runs on two hosts at once).

use std::{sync::Arc, time::Duration};

use anyhow::{bail, ensure, Context as _};
use qvdc_cluster::Client;
use qvdc_transport::protocol::{
    ApiRequest, ApiResponse, DesiredPower, MigrationMode, MovesView, PowerState, VmSpec,
};

use crate::{
    harness::{self, ask, change, eventually, host_domains, shared_disk, vm_view, Action, Faults},
    world::{self, Certs, Shared, SimConfig},
};

const POOL: &str = "shared";

/// What a run measured, in simulated time.
#[derive(Debug)]
pub struct Outcome {
    pub trace: Vec<String>,
    pub trace_hash: u64,
    /// From `vm migrate` to the VM running on its new host, for step 1's live migration.
    pub live_move: Duration,
    /// Where maintenance moved `db` off host-2 (live).
    pub evacuated_to: String,
}

pub fn run(config: &SimConfig) -> anyhow::Result<Outcome> {
    let config = SimConfig {
        hosts: 4,
        ..config.clone()
    };
    let run = harness::run(&config, script)?;
    let (live_move, evacuated_to) = run.value;
    Ok(Outcome {
        trace: run.trace,
        trace_hash: run.trace_hash,
        live_move,
        evacuated_to,
    })
}

async fn moves(client: &mut Client) -> anyhow::Result<MovesView> {
    match ask(client, ApiRequest::Moves).await? {
        ApiResponse::Moves(view) => Ok(view),
        other => bail!("moves answered {other:?}"),
    }
}

/// How often `host`'s guest of `vm` was booted.
fn boots(faults: &Shared<Faults>, host: &str, vm: &str) -> u32 {
    faults.lock().expect("faults lock poisoned").hosts[host]
        .hypervisor
        .boots(vm)
}

async fn create_vm(client: &mut Client, name: &str, host: &str) -> anyhow::Result<()> {
    let disk = shared_disk(client, POOL, &format!("{name}.qcow2")).await?;
    let create = ApiRequest::VmCreate {
        request_id: client.new_request_id(),
        spec: VmSpec {
            id: String::new(),
            name: name.into(),
            vcpus: 1,
            memory_bytes: 1 << 30,
            disks: vec![disk],
            nics: Vec::new(),
        },
        host: Some(host.into()),
        start: true,
    };
    ask(client, create).await?;
    runs_on(client, name, host).await
}

/// Waits until `name` runs on `host` as the cluster sees it.
async fn runs_on(client: &mut Client, name: &str, host: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{name} running on {host}"),
        Duration::from_secs(90),
        async || {
            let view = vm_view(client, name).await?;
            Ok((view.host == host && view.power == PowerState::Running).then_some(()))
        },
    )
    .await
}

/// Waits, as an operator would before a move, until the leader has `to` reporting the
/// shared pool healthy: right after a leader change the new leader may not have heard from
/// it yet, and refuses a move there.
async fn target_ready(client: &mut Client, to: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{to} reporting pool {POOL} to the leader"),
        Duration::from_secs(30),
        async || {
            let show = ApiRequest::PoolShow { name: POOL.into() };
            Ok(match ask(client, show).await? {
                ApiResponse::Pool(view) => view.healthy_hosts.iter().any(|h| h == to).then_some(()),
                _ => None,
            })
        },
    )
    .await
}

/// Begins moving `name` to `to` (once `to` is ready for it) and returns the mode the
/// cluster chose.
async fn migrate(client: &mut Client, name: &str, to: &str) -> anyhow::Result<MigrationMode> {
    target_ready(client, to).await?;
    let request = ApiRequest::VmMigrate {
        request_id: client.new_request_id(),
        name: name.into(),
        to: Some(to.into()),
    };
    match ask(client, request).await? {
        ApiResponse::Moves(view) => view
            .moves
            .iter()
            .find(|m| m.vm == name && !m.failed)
            .map(|m| m.mode)
            .context("the answer to vm migrate holds no move"),
        other => bail!("vm migrate answered {other:?}"),
    }
}

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<(Duration, String)> {
    let mut client = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    harness::all_hosts_ready(&mut client, config.hosts).await?;
    let hosts: Vec<String> = (1..=config.hosts).map(SimConfig::host_name).collect();
    let pool = ApiRequest::PoolCreate {
        request_id: client.new_request_id(),
        spec: world::dir_pool(POOL),
        hosts: hosts.clone(),
    };
    ask(&mut client, pool).await?;
    create_vm(&mut client, "web", "host-1").await?;
    create_vm(&mut client, "db", "host-1").await?;
    create_vm(&mut client, "cache", "host-3").await?;

    // 1. Live, host-1 -> host-2: the guest is not booted again.
    target_ready(&mut client, "host-2").await?;
    let asked = tokio::time::Instant::now();
    let mode = migrate(&mut client, "web", "host-2").await?;
    ensure!(mode == MigrationMode::Live, "web moved {mode}, not live");
    runs_on(&mut client, "web", "host-2").await?;
    let live_move = asked.elapsed();
    ensure!(
        boots(&faults, "host-2", "web") == 1,
        "web was booted again on host-2: not a live migration"
    );
    eventually(
        "host-1 keeps no copy of web",
        Duration::from_secs(30),
        async || Ok((!host_domains(&faults, "host-1").contains_key("web")).then_some(())),
    )
    .await?;

    // 2. Cold, host-2 -> host-4 (which takes no live migrations).
    let mode = migrate(&mut client, "web", "host-4").await?;
    ensure!(mode == MigrationMode::Cold, "web moved {mode} to host-4");
    runs_on(&mut client, "web", "host-4").await?;
    eventually(
        "host-2 keeps no copy of web",
        Duration::from_secs(30),
        async || Ok((!host_domains(&faults, "host-2").contains_key("web")).then_some(())),
    )
    .await?;

    // 3. Live, host-1 -> host-3, and the leader crashes as the copy begins.
    migrate(&mut client, "db", "host-3").await?;
    eventually(
        "db arriving on host-3",
        Duration::from_secs(30),
        async || {
            Ok(host_domains(&faults, "host-3")
                .contains_key("db")
                .then_some(()))
        },
    )
    .await?;
    let disrupted = harness::take_leader_away(&config, &certs, &mut client, &faults).await?;
    let mut majority = disrupted.majority;
    runs_on(&mut majority, "db", "host-3").await?;
    eventually(
        "the move of db is over",
        Duration::from_secs(30),
        async || Ok(moves(&mut majority).await?.moves.is_empty().then_some(())),
    )
    .await?;
    harness::bring_back(&config, &faults, disrupted.machine);

    // 4. Live, host-3 -> host-2, and host-3 loses power during the copy.
    migrate(&mut majority, "cache", "host-2").await?;
    eventually(
        "cache arriving on host-2",
        Duration::from_secs(30),
        async || {
            Ok(host_domains(&faults, "host-2")
                .contains_key("cache")
                .then_some(()))
        },
    )
    .await?;
    change(&faults, Action::Crash("host-3".into()));
    let failed = eventually(
        "the move of cache given up",
        Duration::from_secs(60),
        async || {
            let view = moves(&mut majority).await?;
            Ok(view
                .moves
                .into_iter()
                .find(|m| m.vm == "cache" && m.failed)
                .map(|m| m.status))
        },
    )
    .await?;
    ensure!(
        !host_domains(&faults, "host-2").contains_key("cache"),
        "host-2 kept a half-migrated copy of cache ({failed})"
    );
    ensure!(vm_view(&mut majority, "cache").await?.host == "host-3");
    change(&faults, Action::Restart("host-3".into()));
    runs_on(&mut majority, "cache", "host-3").await?;

    // 5. host-2 enters maintenance with the VMs it runs: they all leave it.
    let db = ApiRequest::VmMigrate {
        request_id: majority.new_request_id(),
        name: "db".into(),
        to: Some("host-2".into()),
    };
    ask(&mut majority, db).await?;
    runs_on(&mut majority, "db", "host-2").await?;
    let enter = ApiRequest::HostMaintenance {
        request_id: majority.new_request_id(),
        host: "host-2".into(),
        on: true,
    };
    ask(&mut majority, enter).await?;
    eventually("host-2 evacuated", Duration::from_secs(120), async || {
        let view = moves(&mut majority).await?;
        let evacuation = view
            .evacuations
            .iter()
            .find(|e| e.host == "host-2")
            .context("host-2 is not shown in maintenance")?;
        let over = evacuation.remaining.is_empty() && view.moves.iter().all(|m| m.failed);
        Ok(over.then_some(()))
    })
    .await?;
    // Domains qvdc does not manage (the world's legacy ones) stay where they are.
    let left = host_domains(&faults, "host-2");
    let ours = ["web", "db", "cache"];
    ensure!(
        left.iter()
            .all(|(name, p)| !ours.contains(&name.as_str()) || *p != PowerState::Running),
        "host-2 still runs {left:?} after its evacuation"
    );
    let view = eventually(
        "db running off host-2",
        Duration::from_secs(30),
        async || {
            let view = vm_view(&mut majority, "db").await?;
            Ok((view.host != "host-2" && view.power == PowerState::Running).then_some(view))
        },
    )
    .await?;
    ensure!(view.desired == DesiredPower::Running);
    // Live where it could be: the guest on its new host is the one that ran on host-2.
    ensure!(
        boots(&faults, &view.host, "db") == 1,
        "db was booted again on {}: not moved live",
        view.host
    );
    harness::nodes_agree(&config, &certs).await?;
    Ok((live_move, view.host))
}
