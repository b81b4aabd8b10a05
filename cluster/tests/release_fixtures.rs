//! Writes the data a release leaves behind, for later releases to prove they can read it:
//! three real `qvdc server` processes run the seed's operator flow (hosts, dir/NFS/block pools
//! assigned to hosts, a network, VMs, maintenance, a revoked certificate) with snapshots
//! taken often, so that each data directory holds a snapshot *and* log entries behind it;
//! then the nodes are killed and their data directories copied out.
//!
//! Not a check: `scripts/release-fixtures.sh` runs it (ignored otherwise) on the release's
//! own tag and commits the output under `fixtures/<release>/`, where the format tests of every
//! later release read it.

use std::{path::Path, time::Duration};

use qvdc_transport::{
    protocol::{
        ApiRequest, ApiResponse, DesiredPower, NetworkSpec, PoolScope, PoolSource, PoolSpec,
        RevokedCertificate, VmSpec,
    },
    tls::Role,
};

mod support;

use support::{Nodes, NODES};

const OPERATOR: &str = "admin";
const HOSTS: [&str; 3] = ["host-1", "host-2", "host-3"];

fn pool(name: &str, scope: PoolScope, source: PoolSource) -> PoolSpec {
    PoolSpec {
        scope,
        name: name.into(),
        source,
    }
}

fn vm(name: &str) -> VmSpec {
    VmSpec {
        id: String::new(),
        name: name.into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
        disks: Vec::new(),
        nics: Vec::new(),
    }
}

/// The operator flow, in order. Request ids are fixed so the request log is part of the
/// fixture too.
fn flow() -> Vec<ApiRequest> {
    let hosts = |names: &[&str]| names.iter().map(|h| h.to_string()).collect::<Vec<_>>();
    let mut requests = vec![
        ApiRequest::PoolCreate {
            request_id: "fixture-pool-nfs".into(),
            spec: pool(
                "shared-nfs",
                PoolScope::Shared,
                PoolSource::Nfs {
                    server: "nas.example".into(),
                    export: "/export/vms".into(),
                    options: Some("vers=4.2".into()),
                },
            ),
            hosts: hosts(&["host-1", "host-2"]),
        },
        ApiRequest::PoolAssign {
            request_id: "fixture-assign-nfs".into(),
            pool: "shared-nfs".into(),
            hosts: hosts(&["host-3"]),
        },
        ApiRequest::PoolCreate {
            request_id: "fixture-pool-dir".into(),
            spec: pool(
                "images",
                PoolScope::Shared,
                PoolSource::Dir {
                    path: "/srv/images".into(),
                },
            ),
            hosts: hosts(&HOSTS),
        },
        ApiRequest::PoolCreate {
            request_id: "fixture-pool-block".into(),
            spec: pool(
                "fast",
                PoolScope::Local,
                PoolSource::Block {
                    device: "/dev/vdb".into(),
                    fs_type: "xfs".into(),
                },
            ),
            hosts: hosts(&["host-2"]),
        },
        ApiRequest::NetworkCreate {
            request_id: "fixture-network".into(),
            spec: NetworkSpec {
                name: "lan".into(),
                bridge: "br-lan".into(),
                vlan: Some(42),
                uplink: Some("eth0".into()),
            },
            hosts: hosts(&["host-1", "host-2"]),
        },
        ApiRequest::VmCreate {
            request_id: "fixture-vm-web".into(),
            spec: vm("web-1"),
            host: Some("host-1".into()),
            start: false,
        },
        ApiRequest::VmCreate {
            request_id: "fixture-vm-db".into(),
            spec: vm("db-1"),
            host: Some("host-2".into()),
            start: false,
        },
        ApiRequest::VmSetPower {
            request_id: "fixture-vm-db-start".into(),
            name: "db-1".into(),
            power: DesiredPower::Running,
        },
        ApiRequest::HostMaintenance {
            request_id: "fixture-maintenance".into(),
            host: "host-3".into(),
            on: true,
        },
        ApiRequest::CertRevoke {
            request_id: "fixture-revoke".into(),
            certificate: RevokedCertificate {
                serial: "0badc0ffee".into(),
                role: "operator".into(),
                name: "former-admin".into(),
            },
        },
    ];
    // Enough writes for two snapshots (every 16 entries) and a log tail behind the last one.
    for i in 0..40 {
        requests.push(ApiRequest::PoolCreate {
            request_id: format!("fixture-pool-bulk-{i:02}"),
            spec: pool(
                &format!("bulk-{i:02}"),
                PoolScope::Shared,
                PoolSource::Dir {
                    path: format!("/srv/bulk-{i:02}"),
                },
            ),
            hosts: hosts(&["host-1"]),
        });
    }
    requests.push(ApiRequest::PoolDelete {
        request_id: "fixture-pool-delete".into(),
        pool: "bulk-39".into(),
    });
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a release's fixtures; run by scripts/release-fixtures.sh"]
async fn write_release_fixtures() {
    let out = std::env::var_os("QVDC_FIXTURES_OUT").expect("QVDC_FIXTURES_OUT names the output");
    let out = Path::new(&out);
    let mut others = vec![(Role::Operator, OPERATOR)];
    others.extend(HOSTS.iter().map(|h| (Role::Host, *h)));
    let mut nodes = Nodes::start_with_args(
        &others,
        true,
        &[
            "--snapshot-after-logs",
            "16",
            "--logs-kept-after-snapshot",
            "4",
        ],
    );
    for host in HOSTS {
        nodes.register_host(host).await;
    }
    let mut client = nodes.client(OPERATOR, &[1, 2, 3], Duration::from_secs(20));
    for request in flow() {
        let answer = client.request(request.clone()).await;
        assert!(answer.is_ok(), "{request:?} failed: {answer:?}");
    }

    // Wait until every node has applied everything, then record what they agree on.
    let mut statuses = Vec::new();
    let mut agreed = false;
    for _ in 0..200 {
        statuses.clear();
        for id in 1..=NODES {
            let mut one = nodes.client(OPERATOR, &[id], Duration::from_secs(5));
            if let Ok(ApiResponse::ClusterStatus(status)) = one
                .request(ApiRequest::Stale(Box::new(ApiRequest::ClusterStatus)))
                .await
            {
                statuses.push(status);
            }
        }
        agreed = statuses.len() == NODES
            && statuses.iter().all(|s| {
                s.last_applied == statuses[0].last_applied
                    && s.state_digest == statuses[0].state_digest
                    && s.snapshot_index.is_some()
            });
        if agreed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(agreed, "the nodes did not converge: {statuses:?}");
    for id in 1..=NODES {
        nodes.kill(id);
    }

    std::fs::create_dir_all(out.join("data")).unwrap();
    let mut summary = String::new();
    for (id, status) in (1..=NODES).zip(&statuses) {
        let from = nodes.dir.path().join(format!("node-{id}"));
        let to = out.join("data").join(format!("node-{id}"));
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        summary.push_str(&format!(
            "node-{id}: last_applied={:?} snapshot_index={:?} purged_index={:?} \
             state_digest={:016x}\n",
            status.last_applied, status.snapshot_index, status.purged_index, status.state_digest
        ));
    }
    std::fs::write(out.join("data").join("SUMMARY"), summary).unwrap();
}
