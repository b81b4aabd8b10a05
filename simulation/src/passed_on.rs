//! A client that knows only a follower: its first request is passed on to the leader, whose
//! address comes back with the answer, and the client moves there. So when the follower then
//! crashes, the client's next request is still answered promptly, by the leader it now
//! talks to directly; a client connected only to the crashed follower gets its error when
//! its timeout ends.

use std::{sync::Arc, time::Duration};

use anyhow::ensure;
use qvdc_cluster::ClientError;
use qvdc_transport::protocol::{ApiRequest, ApiResponse};

use crate::{
    harness::{self, Faults},
    world::{self, Certs, Shared, SimConfig},
};

/// How long the follower's client waits for each answer: a few round trips, far less than
/// finding another node after a dead one would take.
const PATIENCE_MS: u64 = 1_000;

pub struct PassedOn {
    pub follower: u64,
    pub trace: Vec<String>,
}

pub fn run(seed: u64) -> anyhow::Result<PassedOn> {
    let config = SimConfig {
        seed,
        hosts: 1,
        ..Default::default()
    };
    let run = harness::run(&config, script)?;
    Ok(PassedOn {
        trace: run.trace,
        ..run.value
    })
}

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<PassedOn> {
    let (_admin, leader, follower) = harness::ready(&config, &certs).await?;
    let mut client = world::operator(&config, &certs, 1, vec![world::node_addr(follower)])
        .await?
        .with_timeout(Duration::from_millis(PATIENCE_MS));
    let create = |client: &mut qvdc_cluster::Client, name: &str| ApiRequest::PoolCreate {
        request_id: client.new_request_id(),
        spec: world::dir_pool(name),
        hosts: vec![SimConfig::host_name(1)],
    };

    let first = create(&mut client, "through-the-follower");
    let answer = client.request(first).await;
    ensure!(
        matches!(answer, Ok(ApiResponse::PoolCreated { .. })),
        "a create sent to follower cp{follower} answered {answer:?}"
    );
    let mut stranded = world::operator(&config, &certs, 2, vec![world::node_addr(follower)])
        .await?
        .with_timeout(Duration::from_millis(PATIENCE_MS));
    // A status is answered by the node asked: the connection stays with the follower.
    harness::status(&mut stranded).await?;
    let machine = SimConfig::node_name(follower);
    faults.lock().expect("faults lock poisoned").crash = Some(machine.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = create(&mut client, "from-the-leader");
    let answer = client.request(second).await;
    ensure!(
        matches!(answer, Ok(ApiResponse::PoolCreated { .. })),
        "after follower cp{follower} crashed, its client's next create answered {answer:?}; \
         the client should have moved to the leader cp{leader}"
    );
    // A client whose only node crashed under its open connection gets its error when its
    // patience ends, not when QUIC gives up on the connection.
    let asked = tokio::time::Instant::now();
    let answer = stranded.request(ApiRequest::PoolList).await;
    let waited = asked.elapsed();
    ensure!(
        matches!(answer, Err(ClientError::Unreachable { .. }))
            && waited <= Duration::from_millis(PATIENCE_MS + 100),
        "a client of crashed cp{follower} with {PATIENCE_MS} ms of patience got {answer:?} \
         after {waited:?}"
    );
    faults.lock().expect("faults lock poisoned").restart = Some(machine);
    harness::nodes_agree(&config, &certs).await?;
    Ok(PassedOn {
        follower,
        trace: Vec::new(),
    })
}
