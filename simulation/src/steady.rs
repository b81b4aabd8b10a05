//! The steady state: the default world with no operator writes and no fault, doing only
//! what a quiet cluster does (Raft heartbeats, host heartbeats and probes, QUIC keep-alives,
//! supervisors' tickers) for as long as the chaos phase lasts, while an operator lists the
//! hosts once a second. It measures the cost of the system itself in the simulation, the
//! floor under every scenario's speed; it also checks that a quiet cluster stays quiet: no
//! host drops out, nothing warns or changes leader, and the nodes agree at the end.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, ensure};
use qvdc_transport::protocol::{ApiRequest, ApiResponse, Liveness};

use crate::{
    harness::{self, Faults},
    trace,
    world::{self, Certs, Shared, SimConfig},
};

/// How often the quiet world's operator lists the hosts.
const LOOK_EVERY_MS: u64 = 1_000;

/// What a quiet run did.
#[derive(Debug)]
pub struct Steady {
    /// Simulated time the world ran, set-up included.
    pub simulated: Duration,
    pub trace: Vec<String>,
}

/// Runs `config`'s world (nodes, hosts, seed, chaos duration) with nothing to do. Fails if,
/// once every host is Ready, anything disturbs the quiet: a warning or error, a change of
/// leader, a host registering again or dropping out.
pub fn run(config: &SimConfig) -> anyhow::Result<Steady> {
    let run = harness::run(config, script)?;
    let quiet_from = run.value.quiet_from.as_millis() as u64;
    let disturbed: Vec<&String> = run
        .trace
        .iter()
        .filter(|line| {
            trace::at_ms(line).unwrap_or(0) >= quiet_from
                && [" WARN ", " ERROR ", "leader", "registered"]
                    .iter()
                    .any(|mark| line.contains(mark))
        })
        .collect();
    ensure!(
        disturbed.is_empty(),
        "a quiet cluster was disturbed after {quiet_from} ms: {disturbed:#?}"
    );
    Ok(Steady {
        simulated: run.value.simulated,
        trace: run.trace,
    })
}

struct Quiet {
    quiet_from: Duration,
    simulated: Duration,
}

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    _faults: Shared<Faults>,
) -> anyhow::Result<Quiet> {
    let mut admin = world::operator(&config, &certs, 0, world::node_addrs(config.nodes)).await?;
    harness::all_hosts_ready(&mut admin, config.hosts).await?;
    let quiet_from = turmoil::elapsed();
    // Like a dashboard, look at the hosts now and then; each look must find them all Ready.
    let end = tokio::time::Instant::now() + config.chaos.duration;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(LOOK_EVERY_MS)).await;
        let ApiResponse::Hosts(hosts) = harness::ask(&mut admin, ApiRequest::HostList).await?
        else {
            bail!("not a host list")
        };
        let lost: Vec<String> = hosts
            .into_iter()
            .filter(|h| h.liveness != Liveness::Ready)
            .map(|h| h.host_id)
            .collect();
        ensure!(
            lost.is_empty(),
            "hosts {lost:?} dropped out of a quiet cluster at {:?}",
            turmoil::elapsed()
        );
    }
    harness::nodes_agree(&config, &certs).await?;
    Ok(Quiet {
        quiet_from,
        simulated: turmoil::elapsed(),
    })
}
