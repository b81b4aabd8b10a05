//! A follower cut off from its peers lags behind; an operator who reaches only that follower
//! must get the leader's answer, never one judged on the follower's stale state. Here a pool
//! is created while the follower is isolated, then a volume in that pool is requested through
//! the follower alone: it must be redirected and succeed, not be refused with "no pool".

use std::{sync::Arc, time::Duration};

use anyhow::ensure;
use qvdc_transport::protocol::{ApiRequest, ApiResponse, VolumeFormat};

use crate::{
    harness::{self, ask, Faults},
    world::{self, Certs, Disruption, Shared, SimConfig},
};

pub struct Lagging {
    pub follower: u64,
    pub trace: Vec<String>,
}

pub fn run(seed: u64) -> anyhow::Result<Lagging> {
    let config = SimConfig {
        seed,
        nodes: 3,
        hosts: 1,
        failing_hosts: vec![],
        disruption: Disruption::Isolate,
        retention: Some(Default::default()),
        impairment: Default::default(),
        ..Default::default()
    };
    let run = harness::run(&config, script)?;
    Ok(Lagging {
        trace: run.trace,
        ..run.value
    })
}

async fn script(
    config: SimConfig,
    certs: Arc<Certs>,
    faults: Shared<Faults>,
) -> anyhow::Result<Lagging> {
    let (mut client, _, follower) = harness::ready(&config, &certs).await?;
    faults.lock().expect("faults lock poisoned").isolate = Some(SimConfig::node_name(follower));
    // Let the isolation take effect before the write the follower must miss.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spec = world::dir_pool("p");
    let create = ApiRequest::PoolCreate {
        request_id: client.new_request_id(),
        spec,
        hosts: vec![SimConfig::host_name(1)],
    };
    ask(&mut client, create).await?;

    let mut through_follower =
        world::operator(&config, &certs, 1, vec![world::node_addr(follower)]).await?;
    let volume = ApiRequest::VolumeCreate {
        host: None,
        request_id: through_follower.new_request_id(),
        pool: "p".into(),
        name: "v.qcow2".into(),
        format: VolumeFormat::Qcow2,
        size_bytes: 1 << 20,
    };
    let answer = through_follower.request(volume).await;
    ensure!(
        matches!(answer, Ok(ApiResponse::Done)),
        "a volume asked of the lagging follower cp{follower} answered {answer:?}"
    );
    faults.lock().expect("faults lock poisoned").heal = Some(SimConfig::node_name(follower));
    harness::nodes_agree(&config, &certs).await?;
    Ok(Lagging {
        follower,
        trace: Vec::new(),
    })
}
