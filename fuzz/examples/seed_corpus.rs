//! Writes the seed corpus of every fuzz target (`fuzz/corpus/<target>/`): valid encodings
//! of real messages and records, made with the same code that writes them in qvdc, so the
//! fuzzer starts from inputs that reach deep into each decoder.
//!
//! Run it again whenever a message changes shape:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus
//! ```
//!
//! Each target's directory is emptied and filled anew; the output is deterministic.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use openraft::{
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
    storage::{RaftSnapshotBuilder, RaftStateMachine},
    BasicNode, CommittedLeaderId, EntryPayload, Membership,
};
use qvdc_raft::{
    backup,
    election::{PreVoteRequest, PreVoteResponse},
    logfile, network, store,
    types::{Entry, LogId, SnapshotMeta, StoredMembership, Vote},
    Command, DesiredState, TypeConfig,
};
use qvdc_transport::{
    codec,
    protocol::{
        ApiError, ApiErrorKind, ApiRequest, ApiResponse, Capacity, ClusterStatus, CommandId,
        DesiredPower, DiskInventory, DiskReport, Health, HostCommand, HostCommandKind, HostDetail,
        HostMessage, HostPool, HostReply, HostView, Inventory, LeaderHint, Leadership, Liveness,
        MemberStatus, NetworkHostView, NetworkReport, NetworkSpec, NetworkView, NicInventory,
        PoolHostView, PoolReport, PoolScope, PoolSource, PoolSpec, PoolView, PowerState, Request,
        Response, VmDisk, VmNic, VmReport, VmSpec, VmView, VolumeFormat, VolumeInfo, VolumeView,
    },
};
use serde::Serialize;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (target, seeds) in [
        ("request_frame", request_frames()),
        ("response_frame", response_frames()),
        ("host_command", host_commands()),
        ("raft_rpc", raft_rpcs()),
        ("log_entry", log_records()),
        ("snapshot", snapshots()),
        ("fence_file", fence_files()),
    ] {
        total += write_seeds(&root.join(target), &seeds);
        println!("{target}: {} seeds", seeds.len());
    }
    println!("{total} bytes in {}", root.display());
}

/// Replaces the directory's files with `seeds`, each named after what it holds.
fn write_seeds(dir: &PathBuf, seeds: &[(String, Vec<u8>)]) -> usize {
    if dir.exists() {
        std::fs::remove_dir_all(dir).expect("remove the old seeds");
    }
    std::fs::create_dir_all(dir).expect("create the corpus directory");
    let mut names = BTreeSet::new();
    for (name, bytes) in seeds {
        assert!(names.insert(name.clone()), "seed {name} is named twice");
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
    seeds.iter().map(|(_, bytes)| bytes.len()).sum()
}

/// A frame as a reader hands it to the decoder: its length prefix taken off.
fn frame_body<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode_frame(value).expect("encode")[4..].to_vec()
}

fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
    codec::to_bytes(value).expect("encode")
}

// ---------------------------------------------------------------------------------------
// Values that appear in many messages

fn inventory() -> Inventory {
    Inventory {
        hostname: "host-1".into(),
        cpu_model: "AMD EPYC 7302P 16-Core Processor".into(),
        cpu_sockets: 1,
        cores_per_socket: 16,
        threads_per_core: 2,
        cpu_cores: 32,
        memory_bytes: 128 << 30,
        disks: vec![
            DiskInventory {
                name: "nvme0n1".into(),
                size_bytes: 960 << 30,
                rotational: false,
            },
            DiskInventory {
                name: "sda".into(),
                size_bytes: 4 << 40,
                rotational: true,
            },
        ],
        nics: vec![
            NicInventory {
                name: "eno1".into(),
                mac: "52:54:00:12:34:56".into(),
                speed_mbps: Some(10_000),
                up: true,
            },
            NicInventory {
                name: "eno2".into(),
                mac: "52:54:00:12:34:57".into(),
                speed_mbps: None,
                up: false,
            },
        ],
        hypervisor: "QEMU 7.2.0 (libvirt 9.0.0)".into(),
    }
}

fn pool_spec(name: &str) -> PoolSpec {
    PoolSpec {
        scope: PoolScope::Shared,
        name: name.into(),
        source: PoolSource::Dir {
            path: format!("/srv/{name}"),
        },
    }
}

fn nfs_pool() -> PoolSpec {
    PoolSpec {
        scope: PoolScope::Shared,
        name: "shared".into(),
        source: PoolSource::Nfs {
            server: "nas.example".into(),
            export: "/export/vms".into(),
            options: Some("vers=4.2,hard".into()),
        },
    }
}

fn block_pool() -> PoolSpec {
    PoolSpec {
        scope: PoolScope::Local,
        name: "fast".into(),
        source: PoolSource::Block {
            device: "/dev/nvme0n1p3".into(),
            fs_type: "xfs".into(),
        },
    }
}

fn vm_spec(name: &str) -> VmSpec {
    VmSpec {
        id: format!("{name}-0001"),
        name: name.into(),
        vcpus: 2,
        memory_bytes: 2 << 30,
        disks: vec![VmDisk {
            pool: "images".into(),
            volume: format!("{name}-root"),
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

fn vm_report(name: &str, power: PowerState) -> VmReport {
    VmReport {
        name: name.into(),
        id: Some(format!("{name}-0001")),
        power,
        reason: "booted".into(),
        vcpus: 2,
        memory_bytes: 2 << 30,
        uuid: "4dea22b3-1d52-d8f3-2516-782e98ab3fa0".into(),
        disks: vec![
            DiskReport {
                target: "vda".into(),
                file: Some(format!("/var/lib/qhost/pools/shared/{name}.qcow2")),
                format: Some(VolumeFormat::Qcow2),
                volume: Some(VmDisk {
                    pool: "shared".into(),
                    volume: format!("{name}.qcow2"),
                    format: VolumeFormat::Qcow2,
                }),
            },
            DiskReport {
                target: "vdb".into(),
                file: None,
                format: Some(VolumeFormat::Raw),
                volume: None,
            },
        ],
    }
}

fn capacity() -> Capacity {
    Capacity {
        total_bytes: 1 << 40,
        used_bytes: 300 << 30,
        available_bytes: 724 << 30,
    }
}

fn leadership() -> Leadership {
    Leadership { term: 7, node: 2 }
}

// ---------------------------------------------------------------------------------------
// request_frame

fn api_requests() -> Vec<(&'static str, ApiRequest)> {
    let id = || "req-0001".to_string();
    let hosts = || vec!["host-1".to_string(), "host-2".to_string()];
    vec![
        ("cluster-status", ApiRequest::ClusterStatus),
        (
            "stale-vm-list",
            ApiRequest::Stale(Box::new(ApiRequest::VmList)),
        ),
        (
            "stale-deepest",
            ApiRequest::Stale(Box::new(ApiRequest::Stale(Box::new(ApiRequest::Stale(
                Box::new(ApiRequest::Stale(Box::new(ApiRequest::ClusterStatus))),
            ))))),
        ),
        (
            "cluster-add-node",
            ApiRequest::ClusterAddNode {
                node_id: 4,
                addr: "10.0.0.4:7400".into(),
            },
        ),
        (
            "cluster-remove-node",
            ApiRequest::ClusterRemoveNode { node_id: 4 },
        ),
        (
            "vm-reboot",
            ApiRequest::VmReboot {
                request_id: "req-7".into(),
                name: "web-1".into(),
            },
        ),
        ("host-list", ApiRequest::HostList),
        (
            "pool-create-dir",
            ApiRequest::PoolCreate {
                request_id: id(),
                spec: pool_spec("images"),
                hosts: hosts(),
            },
        ),
        (
            "pool-create-nfs",
            ApiRequest::PoolCreate {
                request_id: id(),
                spec: nfs_pool(),
                hosts: hosts(),
            },
        ),
        (
            "pool-create-block",
            ApiRequest::PoolCreate {
                request_id: id(),
                spec: block_pool(),
                hosts: vec!["host-1".into()],
            },
        ),
        (
            "vm-create",
            ApiRequest::VmCreate {
                request_id: id(),
                spec: vm_spec("web-1"),
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
            "vm-delete",
            ApiRequest::VmDelete {
                request_id: id(),
                name: "web-1".into(),
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
                name: "legacy".into(),
            },
        ),
        ("cluster-backup", ApiRequest::ClusterBackup),
        (
            "volume-create",
            ApiRequest::VolumeCreate {
                host: Some("host-2".into()),
                request_id: id(),
                pool: "images".into(),
                name: "web-1-root".into(),
                format: VolumeFormat::Qcow2,
                size_bytes: 20 << 30,
            },
        ),
        (
            "volume-resize",
            ApiRequest::VolumeResize {
                request_id: id(),
                pool: "images".into(),
                name: "web-1-root".into(),
                size_bytes: 40 << 30,
            },
        ),
        (
            "pool-files",
            ApiRequest::PoolFiles {
                pool: "images".into(),
                host: None,
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
            "network-unassign",
            ApiRequest::NetworkUnassign {
                request_id: id(),
                network: "lan".into(),
                hosts: vec!["host-2".into()],
            },
        ),
        (
            "host-maintenance",
            ApiRequest::HostMaintenance {
                request_id: id(),
                host: "host-2".into(),
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
    ]
}

fn revoked() -> qvdc_transport::protocol::RevokedCertificate {
    qvdc_transport::protocol::RevokedCertificate {
        serial: "7a3b01".into(),
        role: "operator".into(),
        name: "mallory".into(),
    }
}

fn host_messages() -> Vec<(&'static str, HostMessage)> {
    vec![
        (
            "register",
            HostMessage::Register {
                host_id: "host-1".into(),
                inventory: inventory(),
                vms: vec![
                    vm_report("web-1", PowerState::Running),
                    VmReport {
                        id: None,
                        ..vm_report("legacy", PowerState::ShutOff)
                    },
                ],
            },
        ),
        (
            "heartbeat",
            HostMessage::Heartbeat {
                host_id: "host-1".into(),
                seq: 1234,
                pools: vec![PoolReport {
                    pool: "images".into(),
                    mounted: true,
                    mount_path: "/var/lib/qvdc/pools/images".into(),
                    capacity: capacity(),
                    volume_count: 3,
                    health: Health::Healthy,
                    error: None,
                }],
                vms: vec![vm_report("web-1", PowerState::Running)],
                vms_known: true,
                networks: vec![NetworkReport {
                    network: "lan".into(),
                    bridge: "br-lan".into(),
                    up: false,
                    error: Some("uplink eno1 is down".into()),
                }],
            },
        ),
        (
            "inventory-changed",
            HostMessage::InventoryChanged {
                host_id: "host-1".into(),
                inventory: inventory(),
            },
        ),
    ]
}

fn request_frames() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, payload) in raft_rpcs().into_iter().take(3) {
        seeds.push((format!("raft-{name}"), frame_body(&Request::Raft(payload))));
    }
    for (name, request) in api_requests() {
        seeds.push((format!("api-{name}"), frame_body(&Request::Api(request))));
    }
    seeds.push((
        "forwarded-pool-create".into(),
        frame_body(&Request::Forwarded(api_requests().swap_remove(6).1)),
    ));
    for (name, message) in host_messages() {
        seeds.push((format!("host-{name}"), frame_body(&Request::Host(message))));
    }
    seeds
}

// ---------------------------------------------------------------------------------------
// response_frame

fn vm_view() -> VmView {
    VmView {
        spec: vm_spec("web-1"),
        host: "host-1".into(),
        managed: true,
        desired: DesiredPower::Running,
        power: PowerState::Running,
        reason: "booted".into(),
        error: None,
    }
}

fn host_view() -> HostView {
    HostView {
        host_id: "host-1".into(),
        inventory: inventory(),
        liveness: Liveness::Ready,
        maintenance: false,
    }
}

fn pool_view() -> PoolView {
    PoolView {
        spec: pool_spec("images"),
        health: Health::Degraded,
        capacity: capacity(),
        healthy_hosts: vec!["host-1".into()],
        failed_hosts: vec!["host-2".into()],
        hosts: vec![PoolHostView {
            host_id: "host-2".into(),
            health: Health::Error,
            mounted: false,
            capacity: Capacity::default(),
            volume_count: 0,
            error: Some("mount: permission denied".into()),
        }],
        volumes: vec![VolumeView {
            host: None,
            name: "web-1-root".into(),
            format: VolumeFormat::Qcow2,
            size_bytes: 20 << 30,
            ready: true,
            error: None,
        }],
    }
}

fn network_view() -> NetworkView {
    NetworkView {
        spec: network_spec(),
        hosts: vec![NetworkHostView {
            host_id: "host-1".into(),
            up: true,
            error: None,
        }],
    }
}

fn response_frames() -> Vec<(String, Vec<u8>)> {
    let status = ClusterStatus {
        node_id: 1,
        leader: Some(2),
        term: 7,
        last_log_index: Some(1200),
        last_applied: Some(1199),
        members: vec![
            MemberStatus {
                node_id: 1,
                addr: "10.0.0.1:7400".into(),
                voter: true,
            },
            MemberStatus {
                node_id: 4,
                addr: "10.0.0.4:7400".into(),
                voter: false,
            },
        ],
        snapshot_index: Some(1000),
        purged_index: None,
        state_digest: 0x1234_5678_9abc_def0,
    };
    let answers = vec![
        ("cluster-status", ApiResponse::ClusterStatus(status)),
        ("hosts", ApiResponse::Hosts(vec![host_view()])),
        (
            "pool-created",
            ApiResponse::PoolCreated {
                name: "images".into(),
            },
        ),
        ("pools", ApiResponse::Pools(vec![pool_view()])),
        (
            "vm-created",
            ApiResponse::VmCreated {
                name: "web-1".into(),
                id: "web-1-0001".into(),
                host: "host-1".into(),
            },
        ),
        ("vms", ApiResponse::Vms(vec![vm_view()])),
        ("done", ApiResponse::Done),
        (
            "backup",
            ApiResponse::Backup {
                index: 16,
                term: 2,
                file: b"qvdc-bk\n".to_vec(),
            },
        ),
        (
            "files",
            ApiResponse::Files {
                pool: "images".into(),
                host: "host-1".into(),
                files: vec![
                    VolumeInfo {
                        name: "web-1-root.qcow2".into(),
                        format: Some(VolumeFormat::Qcow2),
                        size_bytes: 1 << 30,
                    },
                    VolumeInfo {
                        name: "notes.txt".into(),
                        format: None,
                        size_bytes: 12,
                    },
                ],
            },
        ),
        (
            "host",
            ApiResponse::Host(HostDetail {
                host: host_view(),
                pools: vec![HostPool {
                    pool: "images".into(),
                    health: Health::Unknown,
                    error: None,
                }],
                vms: vec![vm_view()],
            }),
        ),
        ("networks", ApiResponse::Networks(vec![network_view()])),
    ];
    let hint = LeaderHint {
        node_id: 2,
        addr: "10.0.0.2:7400".into(),
    };
    let mut seeds = Vec::new();
    for (name, answer) in answers {
        seeds.push((
            format!("api-{name}"),
            frame_body(&Response::Api(Ok(answer))),
        ));
    }
    let rest = vec![
        (
            "raft-reply",
            Response::Raft(raft_replies().swap_remove(0).1),
        ),
        (
            "api-error",
            Response::Api(Err(ApiError::new(
                ApiErrorKind::NotFound,
                "no VM named \"web-9\"",
            ))),
        ),
        (
            "host-registered",
            Response::Host(HostReply::Registered {
                leadership: leadership(),
            }),
        ),
        (
            "host-heartbeat-ack",
            Response::Host(HostReply::HeartbeatAck),
        ),
        (
            "host-retry",
            Response::Host(HostReply::Retry {
                reason: "no leader".into(),
            }),
        ),
        (
            "not-leader",
            Response::NotLeader {
                leader: Some(hint.clone()),
            },
        ),
        (
            "forbidden",
            Response::Forbidden {
                reason: "certificate \"host-1\" has role host".into(),
            },
        ),
        (
            "malformed",
            Response::Malformed {
                reason: "frame too large".into(),
            },
        ),
        (
            "api-passed-on",
            Response::ApiPassedOn {
                leader: hint,
                result: Ok(ApiResponse::Vm(vm_view())),
            },
        ),
    ];
    for (name, response) in rest {
        seeds.push((name.to_string(), frame_body(&response)));
    }
    seeds
}

// ---------------------------------------------------------------------------------------
// host_command

fn host_commands() -> Vec<(String, Vec<u8>)> {
    let kinds = vec![
        ("init-pool", HostCommandKind::InitStoragePool(nfs_pool())),
        (
            "remove-pool",
            HostCommandKind::RemoveStoragePool {
                pool: "images".into(),
            },
        ),
        (
            "create-volume",
            HostCommandKind::CreateVolume {
                pool: "images".into(),
                name: "web-1-root".into(),
                format: VolumeFormat::Raw,
                size_bytes: 10 << 30,
            },
        ),
        (
            "resize-volume",
            HostCommandKind::ResizeVolume {
                pool: "images".into(),
                name: "web-1-root".into(),
                size_bytes: 20 << 30,
            },
        ),
        (
            "delete-volume",
            HostCommandKind::DeleteVolume {
                pool: "images".into(),
                name: "web-1-root".into(),
            },
        ),
        (
            "list-volumes",
            HostCommandKind::ListVolumes {
                pool: "images".into(),
            },
        ),
        ("define-vm", HostCommandKind::DefineVm(vm_spec("web-1"))),
        (
            "start-vm",
            HostCommandKind::StartVm {
                name: "web-1".into(),
            },
        ),
        (
            "shutdown-vm",
            HostCommandKind::ShutdownVm {
                name: "web-1".into(),
                timeout_ms: 30_000,
            },
        ),
        (
            "reboot-vm",
            HostCommandKind::RebootVm {
                name: "web-1".into(),
                request: "req-7".into(),
            },
        ),
        (
            "force-off-vm",
            HostCommandKind::ForceOffVm {
                name: "web-1".into(),
            },
        ),
        (
            "undefine-vm",
            HostCommandKind::UndefineVm {
                name: "web-1".into(),
            },
        ),
        (
            "adopt-vm",
            HostCommandKind::AdoptVm {
                name: "legacy".into(),
                id: "legacy-0001".into(),
                uuid: "4dea22b3-1d52-d8f3-2516-782e98ab3fa0".into(),
                volumes: vec![VmDisk {
                    pool: "shared".into(),
                    volume: "legacy.qcow2".into(),
                    format: VolumeFormat::Qcow2,
                }],
            },
        ),
        (
            "rename-vm",
            HostCommandKind::RenameVm {
                name: "legacy".into(),
                to: "legacy-1".into(),
                uuid: "4dea22b3-1d52-d8f3-2516-782e98ab3fa0".into(),
            },
        ),
        (
            "release-vm",
            HostCommandKind::ReleaseVm {
                name: "legacy".into(),
                id: "legacy-0001".into(),
                volumes: Vec::new(),
            },
        ),
        (
            "create-network",
            HostCommandKind::CreateNetwork(network_spec()),
        ),
        (
            "remove-network",
            HostCommandKind::RemoveNetwork { name: "lan".into() },
        ),
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(seq, (name, kind))| {
            let command = HostCommand {
                id: CommandId {
                    leadership: leadership(),
                    seq: seq as u64 + 1,
                },
                kind,
            };
            (name.to_string(), frame_body(&command))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// raft_rpc and log_entry

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn membership() -> Membership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> = (1..=3)
        .map(|id| (id, BasicNode::new(format!("10.0.0.{id}:7400"))))
        .collect();
    Membership::new(vec![(1..=3).collect()], nodes)
}

fn joint_membership() -> Membership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> = (1..=4)
        .map(|id| (id, BasicNode::new(format!("10.0.0.{id}:7400"))))
        .collect();
    Membership::new(vec![(1..=3).collect(), (2..=4).collect()], nodes)
}

/// Commands as the leader proposes them, valid in this order from an empty state.
fn commands() -> Vec<(&'static str, Command)> {
    let once = |id: &str, command: Command| Command::Once {
        request_id: id.into(),
        digest: qvdc_raft::model::RequestDigest::of(&command),
        command: Box::new(command),
    };
    let hosts = || vec!["host-1".to_string(), "host-2".to_string()];
    vec![
        (
            "register-host",
            Command::RegisterHost {
                host_id: "host-1".into(),
                inventory: inventory(),
            },
        ),
        (
            "register-host-2",
            Command::RegisterHost {
                host_id: "host-2".into(),
                inventory: Inventory {
                    hostname: "host-2".into(),
                    ..inventory()
                },
            },
        ),
        (
            "create-pool",
            once(
                "req-1",
                Command::CreatePool {
                    spec: pool_spec("images"),
                    hosts: hosts(),
                },
            ),
        ),
        (
            "create-volume",
            once(
                "req-2",
                Command::CreateVolume {
                    host: None,
                    pool: "images".into(),
                    name: "web-1-root".into(),
                    format: VolumeFormat::Qcow2,
                    size_bytes: 20 << 30,
                },
            ),
        ),
        (
            "create-network",
            once(
                "req-3",
                Command::CreateNetwork {
                    spec: network_spec(),
                    hosts: hosts(),
                },
            ),
        ),
        (
            "create-vm",
            once(
                "req-4",
                Command::CreateVm {
                    spec: vm_spec("web-1"),
                    host: "host-1".into(),
                    power: DesiredPower::Running,
                },
            ),
        ),
        (
            "batch",
            Command::Batch(Arc::from(vec![
                once(
                    "req-5",
                    Command::SetVmPower {
                        name: "web-1".into(),
                        power: DesiredPower::Stopped,
                    },
                ),
                once(
                    "req-6",
                    Command::ResizeVolume {
                        pool: "images".into(),
                        name: "web-1-root".into(),
                        size_bytes: 40 << 30,
                    },
                ),
                once(
                    "req-7",
                    Command::SetMaintenance {
                        host: "host-2".into(),
                        on: true,
                    },
                ),
            ])),
        ),
        (
            "revoke-certificate",
            once("req-9", Command::RevokeCertificate(revoked())),
        ),
        (
            "adopt-vm",
            once(
                "req-10",
                Command::AdoptVm {
                    spec: vm_spec("legacy"),
                    host: "host-1".into(),
                    power: DesiredPower::Running,
                    uuid: "4dea22b3-1d52-d8f3-2516-782e98ab3fa0".into(),
                    volumes: vec![qvdc_raft::model::AdoptedVolume {
                        pool: "images".into(),
                        name: "legacy.qcow2".into(),
                        record: qvdc_raft::model::VolumeRecord {
                            host: None,
                            format: VolumeFormat::Qcow2,
                            size_bytes: 20 << 30,
                        },
                    }],
                },
            ),
        ),
        (
            "release-vm",
            Command::Batch(Arc::from(vec![
                once(
                    "req-11",
                    Command::ReleaseVm {
                        name: "legacy".into(),
                    },
                ),
                Command::ForgetVm {
                    name: "legacy".into(),
                    volumes: vec![VmDisk {
                        pool: "images".into(),
                        volume: "legacy.qcow2".into(),
                        format: VolumeFormat::Qcow2,
                    }],
                },
            ])),
        ),
        (
            "unassign-network",
            once(
                "req-8",
                Command::UnassignNetwork {
                    network: "lan".into(),
                    hosts: vec!["host-2".into()],
                },
            ),
        ),
        (
            "assign-pool",
            Command::AssignPool {
                pool: "images".into(),
                hosts: vec!["host-1".into()],
            },
        ),
        (
            "delete-vm",
            once(
                "req-9",
                Command::DeleteVm {
                    name: "web-1".into(),
                },
            ),
        ),
    ]
}

fn entries() -> Vec<(String, Entry)> {
    let mut entries = vec![
        (
            "blank".to_string(),
            Entry {
                log_id: log_id(1, 1, 1),
                payload: EntryPayload::Blank,
            },
        ),
        (
            "membership".to_string(),
            Entry {
                log_id: log_id(1, 1, 2),
                payload: EntryPayload::Membership(membership()),
            },
        ),
        (
            "membership-joint".to_string(),
            Entry {
                log_id: log_id(1, 1, 3),
                payload: EntryPayload::Membership(joint_membership()),
            },
        ),
    ];
    for (i, (name, command)) in commands().into_iter().enumerate() {
        entries.push((
            format!("normal-{name}"),
            Entry {
                log_id: log_id(2, 3, 4 + i as u64),
                payload: EntryPayload::Normal(command),
            },
        ));
    }
    entries
}

/// Payloads of `Request::Raft`: the RPC enum's variant number, then the RPC. Each is
/// checked against the node's own decoder.
fn raft_rpcs() -> Vec<(String, Vec<u8>)> {
    let tagged = |tag: u8, body: Vec<u8>| [vec![tag], body].concat();
    let all: Vec<Entry> = entries().into_iter().map(|(_, e)| e).collect();
    let mut seeds = vec![
        (
            "append-entries".to_string(),
            tagged(
                0,
                bytes(&AppendEntriesRequest::<TypeConfig> {
                    vote: Vote::new_committed(2, 3),
                    prev_log_id: Some(log_id(1, 1, 3)),
                    entries: all[3..].to_vec(),
                    leader_commit: Some(log_id(1, 1, 3)),
                }),
            ),
        ),
        (
            "append-entries-heartbeat".to_string(),
            tagged(
                0,
                bytes(&AppendEntriesRequest::<TypeConfig> {
                    vote: Vote::new_committed(2, 3),
                    prev_log_id: Some(log_id(2, 3, 13)),
                    entries: Vec::new(),
                    leader_commit: Some(log_id(2, 3, 12)),
                }),
            ),
        ),
        (
            "append-entries-membership".to_string(),
            tagged(
                0,
                bytes(&AppendEntriesRequest::<TypeConfig> {
                    vote: Vote::new_committed(1, 1),
                    prev_log_id: None,
                    entries: all[..3].to_vec(),
                    leader_commit: None,
                }),
            ),
        ),
        (
            "vote".to_string(),
            tagged(
                1,
                bytes(&VoteRequest {
                    vote: Vote::new(3, 2),
                    last_log_id: Some(log_id(2, 3, 13)),
                }),
            ),
        ),
        (
            "install-snapshot".to_string(),
            tagged(
                2,
                bytes(&InstallSnapshotRequest::<TypeConfig> {
                    vote: Vote::new_committed(2, 3),
                    meta: SnapshotMeta {
                        last_log_id: Some(log_id(2, 3, 13)),
                        last_membership: StoredMembership::new(Some(log_id(1, 1, 2)), membership()),
                        snapshot_id: "2-3-13".into(),
                    },
                    offset: 0,
                    data: snapshots().swap_remove(2).1,
                    done: true,
                }),
            ),
        ),
        (
            "pre-vote".to_string(),
            tagged(
                3,
                bytes(&PreVoteRequest {
                    candidate: 2,
                    last_log_id: Some(log_id(2, 3, 13)),
                }),
            ),
        ),
        ("elect-now".to_string(), vec![4]),
    ];
    for (name, payload) in &seeds {
        network::decode_rpc(payload).unwrap_or_else(|e| panic!("{name} decodes: {e}"));
    }
    seeds.extend(raft_replies());
    seeds
}

/// Answers to the RPCs, as the asking node decodes them.
fn raft_replies() -> Vec<(String, Vec<u8>)> {
    let tagged = |tag: u8, body: Vec<u8>| [vec![tag], body].concat();
    // `Ok` is variant 0 of a `Result`.
    let ok = |tag: u8, body: Vec<u8>| tagged(tag, tagged(0, body));
    let seeds = vec![
        (
            "reply-append-success".to_string(),
            ok(0, bytes(&AppendEntriesResponse::<u64>::Success)),
        ),
        (
            "reply-append-partial".to_string(),
            ok(
                0,
                bytes(&AppendEntriesResponse::PartialSuccess(Some(log_id(
                    2, 3, 9,
                )))),
            ),
        ),
        (
            "reply-append-conflict".to_string(),
            ok(0, bytes(&AppendEntriesResponse::<u64>::Conflict)),
        ),
        (
            "reply-append-higher-vote".to_string(),
            ok(
                0,
                bytes(&AppendEntriesResponse::HigherVote(Vote::new(4, 1))),
            ),
        ),
        (
            "reply-vote".to_string(),
            ok(
                1,
                bytes(&VoteResponse {
                    vote: Vote::new(3, 2),
                    vote_granted: true,
                    last_log_id: Some(log_id(2, 3, 13)),
                }),
            ),
        ),
        (
            "reply-install-snapshot".to_string(),
            ok(
                2,
                bytes(&InstallSnapshotResponse {
                    vote: Vote::new_committed(2, 3),
                }),
            ),
        ),
        (
            "reply-pre-vote".to_string(),
            tagged(3, bytes(&PreVoteResponse { granted: false })),
        ),
        ("reply-elect-now".to_string(), tagged(4, bytes(&true))),
    ];
    for (name, payload) in &seeds {
        network::decode_reply(payload).unwrap_or_else(|e| panic!("{name} decodes: {e}"));
    }
    seeds
}

/// The records the log store keeps: entries, and the vote, committed and purged log ids.
fn log_records() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = entries()
        .into_iter()
        .map(|(name, entry)| (format!("entry-{name}"), bytes(&entry)))
        .collect();
    for (name, command) in commands() {
        seeds.push((format!("command-{name}"), bytes(&command)));
    }
    seeds.push(("vote".into(), bytes(&Vote::new(3, 2))));
    seeds.push(("vote-committed".into(), bytes(&Vote::new_committed(2, 3))));
    seeds.push(("committed".into(), bytes(&Some(log_id(2, 3, 12)))));
    seeds.push(("committed-none".into(), bytes(&None::<LogId>)));
    seeds.push(("purged".into(), bytes(&log_id(2, 3, 9))));
    // A whole log segment as the store writes it: every entry, then the committed id.
    let segments = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let backend = logfile::Backend::Memory(segments.clone());
    let (mut files, _) = logfile::LogFiles::open(backend, logfile::SEGMENT_BYTES).expect("a log");
    for (_, entry) in entries() {
        files
            .append_entry(entry.log_id.index, &bytes(&entry))
            .expect("an append");
    }
    files
        .append_committed(&bytes(&Some(log_id(2, 3, 12))))
        .expect("an append");
    files.flush(true).expect("a flush");
    let segment = segments.lock().expect("segments")[&1].clone();
    seeds.push(("segment".into(), segment));
    seeds
}

// ---------------------------------------------------------------------------------------
// snapshot

/// Snapshots a state machine builds after applying the first `n` entries, for a few `n`,
/// the record it stores for each, and the desired state inside.
fn snapshots() -> Vec<(String, Vec<u8>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let all = entries();
    let mut seeds = Vec::new();
    for applied in [0, 3, all.len()] {
        let db = store::open_in_memory().expect("in-memory database");
        let (mut machine, _) = store::StateMachine::open(db.clone(), 1).expect("state machine");
        let (meta, data) = runtime.block_on(async {
            let entries = all[..applied].iter().map(|(_, e)| e.clone());
            machine.apply(entries).await.expect("apply");
            let mut builder = machine.get_snapshot_builder().await;
            let snapshot = builder.build_snapshot().await.expect("snapshot");
            (snapshot.meta, snapshot.snapshot.into_inner())
        });
        store::decode_snapshot(&data).expect("a built snapshot decodes");
        seeds.push((format!("data-after-{applied}"), data.clone()));
        let record = stored_snapshot_record(db.database());
        store::decode_stored_snapshot(&record).expect("a stored snapshot decodes");
        seeds.push((format!("record-after-{applied}"), record));
        if applied > 0 {
            let file = backup::encode(&meta, data, 1).expect("a backup encodes");
            backup::decode(&file).expect("a backup decodes");
            seeds.push((format!("backup-after-{applied}"), file));
        }
    }
    let mut state = DesiredState::default();
    for (name, command) in commands() {
        state.apply(&command);
        if matches!(name, "register-host" | "create-vm" | "delete-vm") {
            seeds.push((format!("state-after-{name}"), bytes(&state)));
        }
    }
    seeds
}

/// The snapshot record exactly as the state machine stored it in its database.
fn stored_snapshot_record(db: &redb::Database) -> Vec<u8> {
    use redb::{ReadableDatabase, TableDefinition};
    const MACHINE: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");
    let txn = db.begin_read().expect("read transaction");
    let table = txn.open_table(MACHINE).expect("state machine table");
    let value = table
        .get("snapshot")
        .expect("read")
        .expect("a snapshot was stored");
    value.value().to_vec()
}

// ---------------------------------------------------------------------------------------
// fence_file

fn fence_files() -> Vec<(String, Vec<u8>)> {
    [
        ("zero", "0 0\n"),
        ("written", "7 2\n"),
        ("largest", "18446744073709551615 18446744073709551615\n"),
        ("spaced", "  12\t4  \r\n"),
        ("no-newline", "3 1"),
        ("one-number", "7\n"),
        ("three-numbers", "7 1 3\n"),
        ("overflow", "18446744073709551616 1\n"),
        ("empty", ""),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_string(), text.as_bytes().to_vec()))
    .collect()
}
