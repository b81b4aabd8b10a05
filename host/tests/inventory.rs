//! A host whose hardware changes tells the control plane, once, without re-registering.

mod support;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use qvdc_host::agent::InventoryRescan;
use qvdc_transport::{
    protocol::{HostMessage, Inventory, Leadership},
    Endpoint,
};
use support::{accept_host, certificates, identity, small_inventory, start_sim_agent};

/// Scans so far; from the third on, the host has twice the memory (a DIMM was added).
static SCANS: AtomicU64 = AtomicU64::new(0);

fn scan() -> Inventory {
    let n = SCANS.fetch_add(1, Ordering::SeqCst);
    let mut inventory = small_inventory();
    if n >= 2 {
        inventory.memory_bytes *= 2;
    }
    inventory
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_inventory_is_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let leader = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity(dir.path(), "node-1"),
        true,
    )
    .unwrap();
    let rescan = InventoryRescan {
        scan,
        every_ms: 100,
    };
    let _agent = start_sim_agent(dir.path(), leader.local_addr().unwrap(), Some(rescan));
    let leadership = Leadership { term: 1, node: 1 };
    let mut host = tokio::time::timeout(Duration::from_secs(10), accept_host(&leader, leadership))
        .await
        .unwrap();
    let mut changes = Vec::new();
    // Two unchanged scans, then the change, then more scans that find nothing new.
    tokio::time::timeout(Duration::from_secs(10), async {
        while SCANS.load(Ordering::SeqCst) < 8 {
            if let Some(HostMessage::InventoryChanged { inventory, .. }) =
                host.messages.recv().await
            {
                changes.push(inventory.memory_bytes);
            }
        }
    })
    .await
    .expect("the agent rescans on its interval");
    while let Ok(message) = host.messages.try_recv() {
        if let HostMessage::InventoryChanged { inventory, .. } = message {
            changes.push(inventory.memory_bytes);
        }
    }
    assert_eq!(changes, [2 << 30], "sent when it changed, and only then");
}
