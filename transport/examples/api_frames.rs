//! Writes one operator request frame for every `ApiRequest` variant of v0.1.0 and one answer
//! frame for every `ApiResponse` variant and error kind, as the release this is built with
//! encodes them: `scripts/release-fixtures.sh` builds it in the release's own tree and keeps
//! the output in `fixtures/<release>/wire/api/`. It names only what v0.1.0 has, so it
//! builds against v0.1.0 and every later release.
//!
//! ```text
//! cargo run -p qvdc-transport --example api_frames -- OUT_DIR
//! ```

use std::path::PathBuf;

use qvdc_transport::{
    codec,
    protocol::{
        ApiError, ApiErrorKind, ApiRequest, ApiResponse, Capacity, DesiredPower, Health, HostFit,
        HostView, Inventory, Liveness, NetworkHostView, NetworkSpec, NetworkView, Placement,
        PoolHostView, PoolScope, PoolSource, PoolSpec, PoolView, PowerState, Request, Response,
        RevokedCertificate, VmDisk, VmNic, VmSpec, VmView, VolumeFormat, VolumeView,
    },
};
use serde::Serialize;

fn body<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode_frame(value).expect("encode")[4..].to_vec()
}

fn pool_spec() -> PoolSpec {
    PoolSpec {
        scope: PoolScope::Shared,
        name: "shared-nfs".into(),
        source: PoolSource::Nfs {
            server: "nas.example".into(),
            export: "/export/vms".into(),
            options: Some("vers=4.2".into()),
        },
    }
}

fn vm_spec() -> VmSpec {
    VmSpec {
        id: "web-1-0001".into(),
        name: "web-1".into(),
        vcpus: 2,
        memory_bytes: 2 << 30,
        disks: vec![VmDisk {
            pool: "shared-nfs".into(),
            volume: "web-1.qcow2".into(),
            format: VolumeFormat::Qcow2,
        }],
        nics: vec![VmNic {
            network: "lan".into(),
            mac: Some("52:54:00:ab:cd:ef".into()),
        }],
    }
}

fn network_spec() -> NetworkSpec {
    NetworkSpec {
        name: "lan".into(),
        bridge: "br-lan".into(),
        vlan: Some(42),
        uplink: Some("eno1".into()),
    }
}

fn capacity() -> Capacity {
    Capacity {
        total_bytes: 1 << 40,
        used_bytes: 300 << 30,
        available_bytes: 724 << 30,
    }
}

fn revoked() -> RevokedCertificate {
    RevokedCertificate {
        serial: "0badc0ffee".into(),
        role: "operator".into(),
        name: "former-admin".into(),
    }
}

fn volume_view() -> VolumeView {
    VolumeView {
        name: "web-1.qcow2".into(),
        format: VolumeFormat::Qcow2,
        size_bytes: 20 << 30,
        host: None,
        ready: true,
        error: None,
    }
}

fn requests() -> Vec<(&'static str, ApiRequest)> {
    let id = || "req-0001".to_string();
    let hosts = || vec!["host-1".to_string(), "host-2".to_string()];
    vec![
        ("cluster-status", ApiRequest::ClusterStatus),
        ("stale", ApiRequest::Stale(Box::new(ApiRequest::PoolList))),
        (
            "cluster-add-node",
            ApiRequest::ClusterAddNode {
                node_id: 4,
                addr: "10.0.0.4:7100".into(),
            },
        ),
        (
            "cluster-remove-node",
            ApiRequest::ClusterRemoveNode { node_id: 2 },
        ),
        ("host-list", ApiRequest::HostList),
        (
            "pool-create",
            ApiRequest::PoolCreate {
                request_id: id(),
                spec: pool_spec(),
                hosts: hosts(),
            },
        ),
        (
            "pool-show",
            ApiRequest::PoolShow {
                name: "shared-nfs".into(),
            },
        ),
        ("pool-list", ApiRequest::PoolList),
        (
            "vm-create",
            ApiRequest::VmCreate {
                request_id: id(),
                spec: vm_spec(),
                host: Some("host-1".into()),
                start: true,
            },
        ),
        (
            "vm-set-power",
            ApiRequest::VmSetPower {
                request_id: id(),
                name: "web-1".into(),
                power: DesiredPower::Stopped,
            },
        ),
        (
            "vm-reboot",
            ApiRequest::VmReboot {
                request_id: id(),
                name: "web-1".into(),
            },
        ),
        (
            "vm-force-off",
            ApiRequest::VmForceOff {
                request_id: id(),
                name: "web-1".into(),
            },
        ),
        (
            "vm-delete",
            ApiRequest::VmDelete {
                request_id: id(),
                name: "web-1".into(),
            },
        ),
        (
            "vm-show",
            ApiRequest::VmShow {
                name: "web-1".into(),
            },
        ),
        ("vm-list", ApiRequest::VmList),
        (
            "pool-assign",
            ApiRequest::PoolAssign {
                request_id: id(),
                pool: "shared-nfs".into(),
                hosts: hosts(),
            },
        ),
        (
            "pool-unassign",
            ApiRequest::PoolUnassign {
                request_id: id(),
                pool: "shared-nfs".into(),
                hosts: hosts(),
            },
        ),
        (
            "pool-delete",
            ApiRequest::PoolDelete {
                request_id: id(),
                pool: "shared-nfs".into(),
            },
        ),
        (
            "pool-files",
            ApiRequest::PoolFiles {
                pool: "shared-nfs".into(),
                host: Some("host-1".into()),
            },
        ),
        (
            "volume-create",
            ApiRequest::VolumeCreate {
                request_id: id(),
                pool: "shared-nfs".into(),
                name: "web-1.qcow2".into(),
                format: VolumeFormat::Qcow2,
                size_bytes: 20 << 30,
                host: None,
            },
        ),
        (
            "volume-resize",
            ApiRequest::VolumeResize {
                request_id: id(),
                pool: "shared-nfs".into(),
                name: "web-1.qcow2".into(),
                size_bytes: 40 << 30,
            },
        ),
        (
            "volume-delete",
            ApiRequest::VolumeDelete {
                request_id: id(),
                pool: "shared-nfs".into(),
                name: "web-1.qcow2".into(),
            },
        ),
        (
            "volume-list",
            ApiRequest::VolumeList {
                pool: "shared-nfs".into(),
            },
        ),
        (
            "host-show",
            ApiRequest::HostShow {
                host: "host-1".into(),
            },
        ),
        (
            "network-create",
            ApiRequest::NetworkCreate {
                request_id: id(),
                spec: network_spec(),
                hosts: hosts(),
            },
        ),
        (
            "network-assign",
            ApiRequest::NetworkAssign {
                request_id: id(),
                network: "lan".into(),
                hosts: hosts(),
            },
        ),
        (
            "network-unassign",
            ApiRequest::NetworkUnassign {
                request_id: id(),
                network: "lan".into(),
                hosts: hosts(),
            },
        ),
        (
            "network-delete",
            ApiRequest::NetworkDelete {
                request_id: id(),
                network: "lan".into(),
            },
        ),
        (
            "network-show",
            ApiRequest::NetworkShow {
                network: "lan".into(),
            },
        ),
        ("network-list", ApiRequest::NetworkList),
        (
            "host-maintenance",
            ApiRequest::HostMaintenance {
                request_id: id(),
                host: "host-3".into(),
                on: true,
            },
        ),
        (
            "cert-revoke",
            ApiRequest::CertRevoke {
                request_id: id(),
                certificate: revoked(),
            },
        ),
        ("cert-revoked", ApiRequest::CertRevoked),
        (
            "vm-placement",
            ApiRequest::VmPlacement {
                spec: vm_spec(),
                host: None,
            },
        ),
        (
            "pool-remnants",
            ApiRequest::PoolRemnants {
                pool: "shared-nfs".into(),
            },
        ),
        (
            "vm-adopt",
            ApiRequest::VmAdopt {
                request_id: id(),
                host: "host-1".into(),
                domain: "legacy".into(),
                name: Some("legacy-1".into()),
            },
        ),
        (
            "vm-release",
            ApiRequest::VmRelease {
                request_id: id(),
                name: "legacy-1".into(),
            },
        ),
    ]
}

fn responses() -> Vec<(&'static str, ApiResponse)> {
    let pool_view = PoolView {
        spec: pool_spec(),
        health: Health::Degraded,
        capacity: capacity(),
        healthy_hosts: vec!["host-1".into(), "host-2".into()],
        failed_hosts: vec!["host-3".into()],
        hosts: vec![PoolHostView {
            host_id: "host-3".into(),
            health: Health::Error,
            mounted: false,
            capacity: Capacity::default(),
            volume_count: 0,
            error: Some("Connection refused".into()),
        }],
        volumes: vec![volume_view()],
    };
    let vm_view = VmView {
        spec: vm_spec(),
        host: "host-1".into(),
        managed: true,
        desired: DesiredPower::Running,
        power: PowerState::Running,
        reason: "booted".into(),
        error: None,
    };
    let network_view = NetworkView {
        spec: network_spec(),
        hosts: vec![NetworkHostView {
            host_id: "host-1".into(),
            up: true,
            error: None,
        }],
    };
    vec![
        (
            "hosts",
            ApiResponse::Hosts(vec![HostView {
                host_id: "host-1".into(),
                inventory: Inventory {
                    hostname: "host-1".into(),
                    cpu_cores: 16,
                    memory_bytes: 64 << 30,
                    ..Inventory::default()
                },
                liveness: Liveness::Unreachable,
                maintenance: true,
            }]),
        ),
        (
            "pool-created",
            ApiResponse::PoolCreated {
                name: "shared-nfs".into(),
            },
        ),
        ("pool", ApiResponse::Pool(pool_view.clone())),
        ("pools", ApiResponse::Pools(vec![pool_view])),
        ("vm", ApiResponse::Vm(vm_view.clone())),
        ("vms", ApiResponse::Vms(vec![vm_view])),
        ("done", ApiResponse::Done),
        ("volumes", ApiResponse::Volumes(vec![volume_view()])),
        ("network", ApiResponse::Network(network_view.clone())),
        ("networks", ApiResponse::Networks(vec![network_view])),
        ("revoked", ApiResponse::Revoked(vec![revoked()])),
        (
            "placement",
            ApiResponse::Placement(Placement {
                vm: "web-1".into(),
                asked: None,
                chosen: Some("host-2".into()),
                hosts: vec![HostFit {
                    host: "host-1".into(),
                    fits: false,
                    reason: Some("in maintenance".into()),
                    free_memory_bytes: 1 << 30,
                }],
                refused: None,
            }),
        ),
        (
            "remnants",
            ApiResponse::Remnants {
                pool: "shared-nfs".into(),
                hosts: vec![("host-3".into(), Liveness::Unreachable)],
                unheard: vec!["host-4".into()],
            },
        ),
    ]
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: api_frames OUT_DIR"));
    std::fs::create_dir_all(&out).expect("create the output directory");
    let mut written = 0;
    for (name, request) in requests() {
        let frame = body(&Request::Api(request));
        std::fs::write(out.join(format!("request-{name}")), frame).expect("write");
        written += 1;
    }
    for (name, response) in responses() {
        let frame = body(&Response::Api(Ok(response)));
        std::fs::write(out.join(format!("response-{name}")), frame).expect("write");
        written += 1;
    }
    for (name, kind) in [
        ("invalid", ApiErrorKind::Invalid),
        ("not-found", ApiErrorKind::NotFound),
        ("already-exists", ApiErrorKind::AlreadyExists),
        ("unavailable", ApiErrorKind::Unavailable),
        ("internal", ApiErrorKind::Internal),
    ] {
        let error = ApiError::new(kind, format!("{name}: what went wrong"));
        let frame = body(&Response::Api(Err(error)));
        std::fs::write(out.join(format!("error-{name}")), frame).expect("write");
        written += 1;
    }
    println!("{written} frames in {}", out.display());
}
