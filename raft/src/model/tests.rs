//! Tests of the desired-state model: validation, apply, the per-host index, the request
//! log and the encoding.

use std::{collections::BTreeMap, sync::Arc};

use qvdc_transport::codec;
use qvdc_transport::protocol::{
    DesiredPower, Inventory, NetworkSpec, PoolScope, PoolSource, PoolSpec, RevokedCertificate,
    VmSpec, VolumeFormat,
};

use super::requests::REQUEST_GENERATION;
use super::*;

fn inventory() -> Inventory {
    Inventory {
        hostname: "h".into(),
        cpu_cores: 2,
        memory_bytes: 1 << 30,
        ..Inventory::default()
    }
}

/// A log entry is decoded from whatever a peer holding a server certificate sends; a
/// once-only command wrapping itself a million times must be refused, not recursed into
/// until the stack overflows.
#[test]
fn deeply_nested_commands_are_refused_when_decoded() {
    let inner = codec::to_bytes(&Command::DeletePool { pool: "p".into() }).unwrap();
    for depth in [5, 100_000] {
        let mut bytes = Vec::new();
        for _ in 0..depth {
            bytes.extend_from_slice(&[1, 1, b'r']); // Once { request_id: "r",
            bytes.extend_from_slice(&[0; 16]); //        digest,
                                               //        command: ...
        }
        bytes.extend_from_slice(&inner);
        let err = codec::from_bytes::<Command>(&bytes).unwrap_err();
        assert!(err.to_string().contains("nested more than"), "{err}");
    }
    let legitimate = Command::Batch(Arc::from(vec![once(
        "r",
        Command::DeletePool { pool: "p".into() },
    )]));
    let bytes = codec::to_bytes(&legitimate).unwrap();
    assert_eq!(codec::from_bytes::<Command>(&bytes).unwrap(), legitimate);
}

#[test]
fn an_inventory_over_its_bounds_is_refused_naming_the_bound() {
    let state = DesiredState::default();
    let mut inventory = inventory();
    inventory.nics = (0..600)
        .map(|i| qvdc_transport::protocol::NicInventory {
            name: format!("eth{i}"),
            mac: "52:54:00:00:00:01".into(),
            speed_mbps: None,
            up: true,
        })
        .collect();
    let register = Command::RegisterHost {
        host_id: "h".into(),
        inventory: inventory.clone(),
    };
    let err = state.validate(&register).unwrap_err();
    assert!(
        err.to_string().contains("600 NICs, more than the 512"),
        "{err}"
    );
    inventory.nics.clear();
    inventory.cpu_model = "x".repeat(5_000);
    let register = Command::RegisterHost {
        host_id: "h".into(),
        inventory,
    };
    let err = state.validate(&register).unwrap_err();
    assert!(err.to_string().contains("CPU model is 5000 bytes"), "{err}");
}

#[test]
fn each_kind_of_object_stops_at_its_limit() {
    let mut state = with_hosts(&["h"]);
    let network = |i: usize| Command::CreateNetwork {
        spec: NetworkSpec {
            name: format!("n{i}"),
            bridge: format!("br{i}"),
            vlan: None,
            uplink: None,
        },
        hosts: vec!["h".into()],
    };
    for i in 0..NETWORKS_MAX {
        assert_eq!(state.apply(&network(i)), Outcome::Applied, "network {i}");
    }
    let refused = state.apply(&network(NETWORKS_MAX));
    let Outcome::Rejected(err) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(
        err.to_string(),
        format!("the cluster already holds {NETWORKS_MAX} networks, its limit; delete some first")
    );
    assert_eq!(state.networks.len(), NETWORKS_MAX);
}

/// Found by the `snapshot` fuzz target: a count of 2^32 hosts in nine bytes made imbl
/// reserve 858 GB before reading a single host.
#[test]
fn a_huge_claimed_count_is_not_reserved_up_front() {
    let claims_u32_max_hosts = [0xfc, 0xff, 0xff, 0xff, 0xff];
    let err = codec::from_stored_bytes::<DesiredState>(&claims_u32_max_hosts).unwrap_err();
    assert!(matches!(err, codec::CodecError::Malformed(_)), "{err}");
    let state = with_hosts(&["h1", "h2"]);
    let bytes = codec::to_stored_bytes(&state).unwrap();
    assert_eq!(
        codec::from_stored_bytes::<DesiredState>(&bytes).unwrap(),
        state
    );
}

/// The state outgrew the 16 MiB frame once and `digest()` panicked; it is now hashed as
/// it is encoded, and stored without the frame's bound.
#[test]
fn a_state_larger_than_a_frame_has_a_digest_and_is_stored() {
    let hosts: Vec<String> = (0..POOL_HOSTS_MAX)
        .map(|i| format!("host-with-a-long-name-{i:05}"))
        .collect();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut state = with_hosts(&refs);
    let mut pool = 0;
    while codec::encoded_len(&state) <= codec::FRAME_BYTES_MAX {
        let command = Command::CreatePool {
            spec: PoolSpec {
                scope: Default::default(),
                name: format!("p{pool}"),
                source: PoolSource::Dir {
                    path: "/srv".into(),
                },
            },
            hosts: hosts.clone(),
        };
        assert_eq!(state.apply(&command), Outcome::Applied);
        pool += 1;
    }
    let digest = state.digest();
    let stored = codec::to_stored_bytes(&state).unwrap();
    assert!(stored.len() > codec::FRAME_BYTES_MAX);
    assert!(
        codec::to_bytes(&state).is_err(),
        "the frame codec still bounds frames"
    );
    let back: DesiredState = codec::from_stored_bytes(&stored).unwrap();
    assert_eq!(back.digest(), digest);
}

fn with_hosts(ids: &[&str]) -> DesiredState {
    let mut state = DesiredState::default();
    for id in ids {
        let cmd = Command::RegisterHost {
            host_id: (*id).into(),
            inventory: inventory(),
        };
        assert_eq!(state.apply(&cmd), Outcome::Applied);
    }
    state
}

fn create(name: &str, path: &str, hosts: &[&str]) -> Command {
    Command::CreatePool {
        spec: PoolSpec {
            scope: Default::default(),
            name: name.into(),
            source: PoolSource::Dir { path: path.into() },
        },
        hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
    }
}

fn vm(name: &str, id: &str, disks: &[(&str, &str)]) -> VmSpec {
    VmSpec {
        id: id.into(),
        name: name.into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
        disks: disks
            .iter()
            .map(|(pool, volume)| qvdc_transport::protocol::VmDisk {
                pool: (*pool).into(),
                volume: (*volume).into(),
                format: qvdc_transport::protocol::VolumeFormat::Qcow2,
            })
            .collect(),
        nics: Vec::new(),
    }
}

/// A qcow2 volume `name` in `pool`, which a VM's disk must be.
fn qcow2(pool: &str, name: &str) -> Command {
    Command::CreateVolume {
        host: None,
        pool: pool.into(),
        name: name.into(),
        format: VolumeFormat::Qcow2,
        size_bytes: 64 << 20,
    }
}

fn create_vm(spec: VmSpec, host: &str) -> Command {
    Command::CreateVm {
        spec,
        host: host.into(),
        power: DesiredPower::Running,
    }
}

fn adopt(spec: VmSpec, uuid: &str, volumes: &[(&str, &str)]) -> Command {
    Command::AdoptVm {
        spec,
        host: "host-1".into(),
        power: DesiredPower::Running,
        uuid: uuid.into(),
        volumes: volumes
            .iter()
            .map(|(pool, name)| AdoptedVolume {
                pool: (*pool).into(),
                name: (*name).into(),
                record: VolumeRecord {
                    host: None,
                    format: VolumeFormat::Qcow2,
                    size_bytes: 1 << 30,
                },
            })
            .collect(),
    }
}

#[test]
fn an_adopted_vm_brings_its_disks_as_volumes_and_leaves_with_them_when_released() {
    let mut state = with_hosts(&["host-1", "host-2"]);
    state.apply(&create("p", "/srv/p", &["host-1"]));
    state.apply(&create("q", "/srv/q", &["host-2"]));
    state.apply(&qcow2("p", "shared.qcow2"));
    let spec = vm("db", "req-1", &[("p", "db.qcow2"), ("p", "shared.qcow2")]);
    rejected_with(
        &mut state,
        adopt(spec.clone(), "u-1", &[]),
        "pool p has no volume \"db.qcow2\"",
    );
    let mut elsewhere = adopt(spec.clone(), "u-1", &[("p", "db.qcow2")]);
    if let Command::AdoptVm { volumes, .. } = &mut elsewhere {
        volumes[0].record.host = Some("host-1".into());
    }
    rejected_with(
        &mut state,
        elsewhere,
        "must be recorded on no host (the pool is shared)",
    );
    rejected_with(
        &mut state,
        adopt(vm("db", "req-1", &[]), "u-1", &[("p", "db.qcow2")]),
        "p/db.qcow2 is not a disk of db",
    );
    rejected_with(
        &mut state,
        adopt(spec.clone(), "u-1", &[("q", "db.qcow2")]),
        "q/db.qcow2 is not a disk of db",
    );
    assert_eq!(
        state.apply(&adopt(spec.clone(), "u-1", &[("p", "db.qcow2")])),
        Outcome::Applied
    );
    let record = &state.vms["db"];
    assert_eq!(record.adopted.as_deref(), Some("u-1"));
    assert_eq!(state.volume("p", "db.qcow2").unwrap().size_bytes, 1 << 30);
    let again = vm("db2", "req-2", &[]);
    rejected_with(
        &mut state,
        adopt(again, "u-1", &[]),
        "the domain with UUID u-1 on host-1 is already VM db",
    );

    // Another VM shares one of its disks: that volume stays when db is released.
    let other = vm("web", "req-3", &[("p", "shared.qcow2")]);
    assert_eq!(state.apply(&create_vm(other, "host-1")), Outcome::Applied);
    let forget = |volumes: Vec<qvdc_transport::protocol::VmDisk>| Command::ForgetVm {
        name: "db".into(),
        volumes,
    };
    rejected_with(&mut state, forget(vec![]), "is not being released");
    let release = Command::ReleaseVm { name: "db".into() };
    assert_eq!(state.apply(&release), Outcome::Applied);
    assert_eq!(state.apply(&release), Outcome::Unchanged);
    for command in [
        Command::SetVmPower {
            name: "db".into(),
            power: DesiredPower::Stopped,
        },
        Command::DeleteVm { name: "db".into() },
    ] {
        rejected_with(&mut state, command, "is being given back to its host");
    }
    // Its disks are leaving: no other VM may take them meanwhile.
    let taker = vm("taker", "req-4", &[("p", "db.qcow2")]);
    rejected_with(
        &mut state,
        create_vm(taker, "host-1"),
        "leaves qvdc with VM db, which is being released",
    );
    let leaving = state.released_volumes(&state.vms["db"]);
    assert_eq!(leaving.len(), 1);
    assert_eq!(leaving[0].volume, "db.qcow2");
    rejected_with(
        &mut state,
        forget(vec![]),
        "volumes changed while it was being released",
    );
    assert_eq!(state.apply(&forget(leaving)), Outcome::Applied);
    assert!(!state.vms.contains_key("db"));
    assert!(state.volume("p", "db.qcow2").is_err());
    assert!(state.volume("p", "shared.qcow2").is_ok());
    assert_eq!(state.vms_of_host("host-1").count(), 1);
}

#[test]
fn a_vm_is_placed_powered_and_deleted() {
    let mut state = with_hosts(&["host-1", "host-2"]);
    state.apply(&create("p", "/srv/p", &["host-1"]));
    let spec = vm("web", "vm-1", &[("p", "web.qcow2")]);
    rejected_with(
        &mut state,
        create_vm(spec.clone(), "host-1"),
        "pool p has no volume \"web.qcow2\"; create it first",
    );
    assert_eq!(state.apply(&qcow2("p", "web.qcow2")), Outcome::Applied);
    let mut raw = spec.clone();
    raw.disks[0].format = VolumeFormat::Raw;
    rejected_with(
        &mut state,
        create_vm(raw, "host-1"),
        "disk p/web.qcow2 is a qcow2 volume and cannot be attached as raw",
    );
    assert_eq!(state.apply(&create_vm(spec, "host-1")), Outcome::Applied);
    assert_eq!(state.vms_of_host("host-1").count(), 1);
    assert_eq!(state.vms_of_host("host-2").count(), 0);
    let stop = Command::SetVmPower {
        name: "web".into(),
        power: DesiredPower::Stopped,
    };
    assert_eq!(state.apply(&stop), Outcome::Applied);
    assert_eq!(state.apply(&stop), Outcome::Unchanged);
    assert_eq!(state.vms["web"].power, DesiredPower::Stopped);
    let delete = Command::DeleteVm { name: "web".into() };
    assert_eq!(state.apply(&delete), Outcome::Applied);
    assert!(matches!(
        state.apply(&delete),
        Outcome::Rejected(ValidationError::NoSuchVm(_))
    ));
}

fn rejected_with(state: &mut DesiredState, command: Command, message: &str) {
    let before = state.clone();
    match state.apply(&command) {
        Outcome::Rejected(e) => assert!(e.to_string().contains(message), "{e}"),
        other => panic!("{command:?} was {other:?}"),
    }
    assert_eq!(*state, before);
}

#[test]
fn a_local_pool_keeps_each_volume_on_one_of_its_hosts() {
    let mut state = with_hosts(&["host-1", "host-2", "host-3"]);
    let mut local = create("l", "/srv/l", &["host-1", "host-2"]);
    if let Command::CreatePool { spec, .. } = &mut local {
        spec.scope = PoolScope::Local;
    }
    assert_eq!(state.apply(&local), Outcome::Applied);
    let volume = |host: Option<&str>| Command::CreateVolume {
        pool: "l".into(),
        name: "db.qcow2".into(),
        format: VolumeFormat::Qcow2,
        size_bytes: 64 << 20,
        host: host.map(str::to_owned),
    };
    rejected_with(&mut state, volume(None), "pool l is local: name the host");
    rejected_with(
        &mut state,
        volume(Some("host-3")),
        "pool l is not assigned to host host-3",
    );
    assert_eq!(state.apply(&volume(Some("host-2"))), Outcome::Applied);
    rejected_with(
        &mut state,
        create_vm(vm("db", "vm-1", &[("l", "db.qcow2")]), "host-1"),
        "the VM can only run on host-2",
    );
    assert_eq!(
        state.apply(&create_vm(vm("db", "vm-1", &[("l", "db.qcow2")]), "host-2")),
        Outcome::Applied
    );
    state.apply(&Command::DeleteVm { name: "db".into() });
    let unassign = |host: &str| Command::UnassignPool {
        pool: "l".into(),
        hosts: vec![host.into()],
    };
    rejected_with(&mut state, unassign("host-2"), "holds volume db.qcow2");
    assert_eq!(state.apply(&unassign("host-1")), Outcome::Applied);
    let mut shared = volume(Some("host-1"));
    if let Command::CreateVolume { pool, .. } = &mut shared {
        state.apply(&create("s", "/srv/s", &["host-1"]));
        *pool = "s".into();
    }
    rejected_with(&mut state, shared, "pool s is shared");
}

#[test]
fn pools_are_assigned_unassigned_and_deleted_unless_a_vm_needs_them() {
    let mut state = with_hosts(&["host-1", "host-2", "host-3"]);
    state.apply(&create("p", "/srv/p", &["host-1"]));
    let hosts = |h: &[&str]| h.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    let assign = Command::AssignPool {
        pool: "p".into(),
        hosts: hosts(&["host-2", "host-3"]),
    };
    assert_eq!(state.apply(&assign), Outcome::Applied);
    assert_eq!(state.apply(&assign), Outcome::Unchanged);
    assert_eq!(state.apply(&qcow2("p", "web.qcow2")), Outcome::Applied);
    state.apply(&create_vm(
        vm("web", "vm-1", &[("p", "web.qcow2")]),
        "host-2",
    ));
    let unassign = |h: &[&str]| Command::UnassignPool {
        pool: "p".into(),
        hosts: hosts(h),
    };
    rejected_with(
        &mut state,
        unassign(&["host-2"]),
        "VM web on host-2 uses pool p",
    );
    rejected_with(&mut state, unassign(&["host-9"]), "unknown host(s): host-9");
    assert_eq!(state.apply(&unassign(&["host-3"])), Outcome::Applied);
    let delete = Command::DeletePool { pool: "p".into() };
    rejected_with(&mut state, delete.clone(), "VM web on host-2 uses pool p");
    state.apply(&Command::DeleteVm { name: "web".into() });
    rejected_with(&mut state, unassign(&["host-1", "host-2"]), "no host left");
    assert_eq!(state.apply(&delete), Outcome::Applied);
    rejected_with(&mut state, delete, "no pool named \"p\"");
}

#[test]
fn volumes_are_created_grown_and_deleted_unless_a_vm_uses_them() {
    let mut state = with_hosts(&["host-1"]);
    state.apply(&create("p", "/srv/p", &["host-1"]));
    let volume = |name: &str, size| Command::CreateVolume {
        host: None,
        pool: "p".into(),
        name: name.into(),
        format: qvdc_transport::protocol::VolumeFormat::Qcow2,
        size_bytes: size,
    };
    assert_eq!(
        state.apply(&volume("web.qcow2", 64 << 20)),
        Outcome::Applied
    );
    rejected_with(&mut state, volume("web.qcow2", 64 << 20), "already exists");
    rejected_with(&mut state, volume("../x", 1), "may only contain");
    rejected_with(&mut state, volume("big", 17 << 40), "1 byte to 16 TiB");
    let resize = |size| Command::ResizeVolume {
        pool: "p".into(),
        name: "web.qcow2".into(),
        size_bytes: size,
    };
    assert_eq!(state.apply(&resize(128 << 20)), Outcome::Applied);
    rejected_with(&mut state, resize(1 << 20), "can only grow");
    assert_eq!(state.pools["p"].volumes["web.qcow2"].size_bytes, 128 << 20);
    state.apply(&create_vm(
        vm("web", "vm-1", &[("p", "web.qcow2")]),
        "host-1",
    ));
    let delete = Command::DeleteVolume {
        pool: "p".into(),
        name: "web.qcow2".into(),
    };
    rejected_with(&mut state, delete.clone(), "uses volume p/web.qcow2");
    state.apply(&Command::DeleteVm { name: "web".into() });
    assert_eq!(state.apply(&delete), Outcome::Applied);
    rejected_with(&mut state, delete, "no volume");
}

#[test]
fn networks_carry_vms_only_on_their_hosts_and_stay_while_used() {
    let mut state = with_hosts(&["host-1", "host-2"]);
    let net = |name: &str, bridge: &str, vlan: Option<(&str, u16)>| Command::CreateNetwork {
        spec: qvdc_transport::protocol::NetworkSpec {
            name: name.into(),
            bridge: bridge.into(),
            vlan: vlan.map(|v| v.1),
            uplink: vlan.map(|v| v.0.to_owned()),
        },
        hosts: vec!["host-1".into()],
    };
    assert_eq!(state.apply(&net("prod", "br-prod", None)), Outcome::Applied);
    rejected_with(&mut state, net("prod", "br-x", None), "already exists");
    rejected_with(
        &mut state,
        net("dmz", "br-prod", None),
        "already carries network prod",
    );
    rejected_with(
        &mut state,
        net("dmz", "br-dmz", Some(("eth0", 5000))),
        "between 1 and 4094",
    );
    rejected_with(
        &mut state,
        net("dmz", "a-very-long-bridge", None),
        "1 to 15",
    );
    let mut web = vm("web", "vm-1", &[]);
    web.nics.push(qvdc_transport::protocol::VmNic {
        network: "prod".into(),
        mac: None,
    });
    rejected_with(
        &mut state,
        create_vm(web.clone(), "host-2"),
        "network prod is not assigned to host host-2",
    );
    assert_eq!(state.apply(&create_vm(web, "host-1")), Outcome::Applied);
    let delete = Command::DeleteNetwork {
        network: "prod".into(),
    };
    rejected_with(&mut state, delete.clone(), "VM web on host-1 is attached");
    state.apply(&Command::DeleteVm { name: "web".into() });
    assert_eq!(state.apply(&delete), Outcome::Applied);
}

/// The per-host index says what a scan of every object would.
fn assert_index_matches_a_scan(state: &DesiredState) {
    for host in state.hosts.keys() {
        let names = |it: Vec<String>| it;
        let pools: Vec<String> = state
            .pools_of_host(host)
            .map(|p| p.spec.name.clone())
            .collect();
        let scanned: Vec<String> = state
            .pools
            .values()
            .filter(|p| p.hosts.contains(host))
            .map(|p| p.spec.name.clone())
            .collect();
        assert_eq!(names(pools), scanned, "pools of {host}");
        let vms: Vec<&str> = state
            .vms_of_host(host)
            .map(|v| v.spec.name.as_str())
            .collect();
        let scanned: Vec<&str> = state
            .vms
            .values()
            .filter(|v| v.host == *host)
            .map(|v| v.spec.name.as_str())
            .collect();
        assert_eq!(vms, scanned, "VMs of {host}");
        let networks: Vec<&str> = state
            .networks_of_host(host)
            .map(|n| n.spec.name.as_str())
            .collect();
        let scanned: Vec<&str> = state
            .networks
            .values()
            .filter(|n| n.hosts.contains(host))
            .map(|n| n.spec.name.as_str())
            .collect();
        assert_eq!(networks, scanned, "networks of {host}");
    }
}

#[test]
fn index_matches_a_scan_through_every_kind_of_change() {
    let mut state = with_hosts(&["host-1", "host-2", "host-3"]);
    let hosts = |h: &[&str]| h.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    let net = |name: &str, hosts: Vec<String>| Command::CreateNetwork {
        spec: qvdc_transport::protocol::NetworkSpec {
            name: name.into(),
            bridge: format!("br-{name}"),
            vlan: None,
            uplink: None,
        },
        hosts,
    };
    let steps = [
        create("a", "/srv/a", &["host-1", "host-2"]),
        create("b", "/srv/b", &["host-3"]),
        Command::AssignPool {
            pool: "b".into(),
            hosts: hosts(&["host-1"]),
        },
        Command::UnassignPool {
            pool: "a".into(),
            hosts: hosts(&["host-2"]),
        },
        net("n1", hosts(&["host-1", "host-3"])),
        Command::AssignNetwork {
            network: "n1".into(),
            hosts: hosts(&["host-2"]),
        },
        Command::UnassignNetwork {
            network: "n1".into(),
            hosts: hosts(&["host-3"]),
        },
        qcow2("a", "v"),
        create_vm(vm("w1", "vm-1", &[("a", "v")]), "host-1"),
        create_vm(vm("w2", "vm-2", &[]), "host-2"),
        qcow2("b", "d"),
        Command::CreateHaVm {
            spec: vm("w3", "vm-3", &[("b", "d")]),
            host: "host-3".into(),
            power: DesiredPower::Running,
            ha: qvdc_transport::protocol::HaPolicy {
                restart: true,
                ..Default::default()
            },
        },
        Command::FailOverVm {
            name: "w3".into(),
            from: "host-3".into(),
            to: "host-1".into(),
        },
        Command::DeleteVm { name: "w1".into() },
        Command::DeletePool { pool: "a".into() },
        Command::DeleteNetwork {
            network: "n1".into(),
        },
    ];
    for step in steps {
        let outcome = state.apply(&step);
        assert!(
            !matches!(outcome, Outcome::Rejected(_)),
            "{step:?}: {outcome:?}"
        );
        assert_index_matches_a_scan(&state);
    }
    let pools: Vec<_> = state
        .pools_of_host("host-1")
        .map(|p| p.spec.name.clone())
        .collect();
    assert_eq!(pools, ["b"]);
}

#[test]
fn invalid_vms_are_rejected_without_changing_state() {
    let mut state = with_hosts(&["host-1", "host-2"]);
    state.apply(&create("p", "/srv/p", &["host-1"]));
    state.apply(&create_vm(vm("taken", "vm-1", &[]), "host-1"));
    let before = state.clone();
    let mut big = vm("big", "vm-2", &[]);
    big.vcpus = 0;
    let mut nic = vm("nic", "vm-3", &[]);
    nic.nics.push(qvdc_transport::protocol::VmNic {
        network: "prod".into(),
        mac: None,
    });
    let cases = [
        (
            create_vm(vm("taken", "vm-9", &[]), "host-1"),
            "already exists",
        ),
        (create_vm(vm("other", "vm-1", &[]), "host-1"), "is taken"),
        (
            create_vm(vm("x", "vm-4", &[]), "host-9"),
            "unknown host(s): host-9",
        ),
        (create_vm(big, "host-1"), "1 to 512 vCPUs"),
        (
            create_vm(vm("d", "vm-5", &[("nope", "v")]), "host-1"),
            "no pool named",
        ),
        (
            create_vm(vm("d", "vm-5", &[("p", "v")]), "host-2"),
            "not assigned to host host-2",
        ),
        (create_vm(nic, "host-1"), "network \"prod\" does not exist"),
    ];
    for (command, message) in cases {
        match state.apply(&command) {
            Outcome::Rejected(e) => assert!(e.to_string().contains(message), "{e}"),
            other => panic!("{command:?} was {other:?}"),
        }
    }
    assert_eq!(state, before);
}

#[test]
fn registering_the_same_host_twice_changes_nothing() {
    let mut state = with_hosts(&["host-1"]);
    let again = Command::RegisterHost {
        host_id: "host-1".into(),
        inventory: inventory(),
    };
    assert_eq!(state.apply(&again), Outcome::Unchanged);
    assert_eq!(state.hosts.len(), 1);
}

#[test]
fn pool_is_created_on_known_hosts() {
    let mut state = with_hosts(&["host-1", "host-2"]);
    assert_eq!(
        state.apply(&create("p", "/srv/p", &["host-1", "host-2"])),
        Outcome::Applied
    );
    let names: Vec<_> = state
        .pools_of_host("host-2")
        .map(|p| p.spec.name.clone())
        .collect();
    assert_eq!(names, ["p"]);
}

#[test]
fn invalid_pools_are_rejected_without_changing_state() {
    let mut state = with_hosts(&["host-1"]);
    state.apply(&create("taken", "/srv", &["host-1"]));
    let before = state.clone();
    let cases = [
        (create("", "/srv", &["host-1"]), "must not be empty"),
        (create("a/b", "/srv", &["host-1"]), "may only contain"),
        (
            create(&"x".repeat(65), "/srv", &["host-1"]),
            "longer than 64",
        ),
        (create("taken", "/srv", &["host-1"]), "already exists"),
        (create("p", "/srv", &[]), "at least one host"),
        (create("p", "/srv", &["host-1", "host-1"]), "listed twice"),
        (create("p", "/srv", &["host-9"]), "unknown host(s): host-9"),
        (create("p", "srv", &["host-1"]), "absolute path"),
    ];
    for (command, message) in cases {
        match state.apply(&command) {
            Outcome::Rejected(e) => {
                assert!(e.to_string().contains(message), "{e} !~ {message}")
            }
            other => panic!("{command:?} gave {other:?}"),
        }
    }
    assert_eq!(state, before);
}

/// `command` as an operator's request with id `id`; the request is the command itself.
fn once(id: &str, command: Command) -> Command {
    Command::Once {
        request_id: id.into(),
        digest: RequestDigest::of(&command),
        command: Box::new(command),
    }
}

#[test]
fn revocations_are_checked_kept_and_applied_once() {
    let mut state = DesiredState::default();
    let revoke = |serial: &str, role: &str, name: &str| {
        Command::RevokeCertificate(RevokedCertificate {
            serial: serial.into(),
            role: role.into(),
            name: name.into(),
        })
    };
    assert_eq!(
        state.apply(&revoke("7a3b", "host", "host-1")),
        Outcome::Applied
    );
    assert_eq!(
        state.apply(&revoke("7a3b", "host", "host-1")),
        Outcome::Unchanged
    );
    assert!(state.revoked.contains_key("7a3b"));
    for (command, message) in [
        (revoke("7A3B", "host", "h"), "is not written as \"7a3b\""),
        (
            revoke("xyz", "host", "h"),
            "not a certificate serial number",
        ),
        (revoke("01", "admin", "h"), "not server, host or operator"),
        (
            revoke("01", "host", &"h".repeat(300)),
            "longer than 256 bytes",
        ),
    ] {
        match state.apply(&command) {
            Outcome::Rejected(e) => assert!(e.to_string().contains(message), "{e}"),
            other => panic!("{command:?} gave {other:?}"),
        }
    }
    assert_eq!(state.revoked.len(), 1);
}

/// A request id is bound to the request it was first used for: reused for another, it
/// is refused, whatever that first request's outcome was, and the first outcome stays.
#[test]
fn a_request_id_reused_for_another_request_is_refused() {
    let mut state = with_hosts(&["host-1"]);
    let first = once("r1", create("p", "/srv/p", &["host-1"]));
    assert_eq!(state.apply(&first), Outcome::Applied);
    let volume = |name: &str| Command::CreateVolume {
        host: None,
        pool: "p".into(),
        name: name.into(),
        format: VolumeFormat::Raw,
        size_bytes: 1 << 20,
    };
    assert_eq!(state.apply(&once("r2", volume("v"))), Outcome::Applied);
    let before = state.clone();
    let reused = once(
        "r1",
        Command::DeleteVolume {
            pool: "p".into(),
            name: "v".into(),
        },
    );
    let refused = state.apply(&reused);
    assert_eq!(
        refused,
        Outcome::Rejected(ValidationError::RequestIdReused("r1".into()))
    );
    let Outcome::Rejected(e) = refused else {
        unreachable!()
    };
    assert!(e.to_string().contains("use a new request id"), "{e}");
    assert_eq!(state, before, "nothing applied, nothing recorded");
    assert_eq!(
        state.apply(&first),
        Outcome::Applied,
        "the retry still replays"
    );
    // The same id, same command, but another digest (another request that asked for the
    // same change) is another request too.
    let Command::Once { command, .. } = first else {
        unreachable!()
    };
    let other = Command::Once {
        request_id: "r1".into(),
        digest: RequestDigest([7; 16]),
        command,
    };
    assert!(matches!(
        state.apply(&other),
        Outcome::Rejected(ValidationError::RequestIdReused(_))
    ));
}

#[test]
fn a_retried_request_returns_its_first_outcome_and_applies_nothing() {
    let mut state = with_hosts(&["host-1"]);
    let request = once("r1", create("p", "/srv/p", &["host-1"]));
    assert_eq!(state.apply(&request), Outcome::Applied);
    let after_first = state.clone();
    assert_eq!(
        state.apply(&request),
        Outcome::Applied,
        "a retry is not 'already exists'"
    );
    assert_eq!(state, after_first, "the retry changed nothing");
    match state.apply(&once("r2", create("p", "/srv/p", &["host-1"]))) {
        Outcome::Rejected(ValidationError::PoolExists(_)) => {}
        other => panic!("a new request for the same pool is a duplicate: {other:?}"),
    }
}

/// A batch applies its commands in order, each against the state the ones before it
/// left, with its own outcome; a batch inside a batch is refused whole.
#[test]
fn a_batch_applies_each_command_on_its_own() {
    let mut state = with_hosts(&["host-1"]);
    let batch = Command::Batch(Arc::from(vec![
        once("r1", create("p", "/srv/p", &["host-1"])),
        once("r2", create("p", "/srv/p", &["host-1"])),
        once("r1", create("p", "/srv/p", &["host-1"])),
        create("q", "/srv/q", &["host-1"]),
    ]));
    match state.apply(&batch) {
        Outcome::Batch(outcomes) => {
            assert_eq!(outcomes[0], Outcome::Applied);
            assert!(
                matches!(
                    &outcomes[1],
                    Outcome::Rejected(ValidationError::PoolExists(_))
                ),
                "the second create sees the first: {:?}",
                outcomes[1]
            );
            assert_eq!(outcomes[2], Outcome::Applied, "a retry in the same batch");
            assert_eq!(outcomes[3], Outcome::Applied);
        }
        other => panic!("a batch has one outcome per command: {other:?}"),
    }
    assert!(state.pools.contains_key("p") && state.pools.contains_key("q"));
    let before = state.clone();
    let inner = Command::Batch(Arc::from(vec![create("r", "/srv/r", &["host-1"])]));
    let nested = Command::Batch(Arc::from(vec![inner]));
    assert_eq!(
        state.apply(&nested),
        Outcome::Rejected(ValidationError::NestedRequest)
    );
    assert_eq!(state, before);
}

#[test]
fn a_rejected_request_stays_rejected_when_retried() {
    let mut state = with_hosts(&["host-1"]);
    let request = once("r1", create("p", "/srv/p", &["host-9"]));
    let first = state.apply(&request);
    assert!(matches!(
        first,
        Outcome::Rejected(ValidationError::UnknownHosts(_))
    ));
    state.apply(&Command::RegisterHost {
        host_id: "host-9".into(),
        inventory: inventory(),
    });
    assert_eq!(
        state.apply(&request),
        first,
        "the retry gets the original answer"
    );
    assert!(state.pools.is_empty());
}

#[test]
fn request_ids_are_checked_and_forgotten_beyond_the_bound() {
    let mut state = with_hosts(&["host-1"]);
    let bad = once("", create("p", "/srv/p", &["host-1"]));
    assert_eq!(
        state.apply(&bad),
        Outcome::Rejected(ValidationError::BadRequestId)
    );
    let nested = once("a", once("b", create("p", "/srv/p", &["host-1"])));
    assert_eq!(
        state.apply(&nested),
        Outcome::Rejected(ValidationError::NestedRequest)
    );
    for i in 0..REQUESTS_REMEMBERED_MAX + 5 {
        let register = Command::RegisterHost {
            host_id: "host-1".into(),
            inventory: inventory(),
        };
        state.apply(&once(&format!("id-{i}"), register));
    }
    assert_eq!(state.requests.len(), REQUESTS_REMEMBERED_MAX);
    assert!(
        state.requests.get("id-0").is_none(),
        "the oldest are forgotten first"
    );
    assert!(state
        .requests
        .get(&format!("id-{}", REQUESTS_REMEMBERED_MAX + 4))
        .is_some());
}

fn outcome_of(i: usize) -> Outcome {
    if i.is_multiple_of(3) {
        Outcome::Rejected(ValidationError::NoSuchPool(format!("p{i}")))
    } else {
        Outcome::Applied
    }
}

#[test]
fn the_request_log_forgets_exactly_the_oldest_and_its_copies_stay_as_they_were() {
    let mut log = RequestLog::default();
    let total = REQUESTS_REMEMBERED_MAX + 2 * REQUEST_GENERATION + 7;
    let mut copies = Vec::new();
    for i in 0..total {
        log.record(
            &format!("id-{i}"),
            RequestDigest([i as u8; 16]),
            outcome_of(i),
        );
        if i.is_multiple_of(997) {
            copies.push((i, log.clone()));
        }
    }
    assert_eq!(log.len(), REQUESTS_REMEMBERED_MAX);
    let first_kept = total - REQUESTS_REMEMBERED_MAX;
    assert_eq!(log.get(&format!("id-{}", first_kept - 1)), None);
    for i in first_kept..total {
        assert_eq!(log.get(&format!("id-{i}")), Some(&outcome_of(i)), "id-{i}");
    }
    // Recording into the log never changed a copy taken earlier.
    for (at, copy) in copies {
        let kept_from = (at + 1).saturating_sub(REQUESTS_REMEMBERED_MAX);
        assert_eq!(copy.len(), at + 1 - kept_from, "copy at id-{at}");
        assert_eq!(copy.get(&format!("id-{at}")), Some(&outcome_of(at)));
        assert_eq!(copy.get(&format!("id-{}", at + 1)), None);
        assert_eq!(
            copy.get(&format!("id-{kept_from}")),
            Some(&outcome_of(kept_from))
        );
        if kept_from > 0 {
            assert_eq!(copy.get(&format!("id-{}", kept_from - 1)), None);
        }
    }
}

#[test]
fn the_request_log_encodes_as_outcomes_by_id_and_ids_oldest_first() {
    let mut log = RequestLog::default();
    let total = REQUESTS_REMEMBERED_MAX + REQUEST_GENERATION / 2 + 3;
    for i in 0..total {
        log.record(
            &format!("id-{i}"),
            RequestDigest([i as u8; 16]),
            outcome_of(i),
        );
    }
    // The encoding (snapshots, the state digest) does not depend on the generations.
    let kept: Vec<String> = (total - REQUESTS_REMEMBERED_MAX..total)
        .map(|i| format!("id-{i}"))
        .collect();
    let by_id: BTreeMap<&str, (RequestDigest, Outcome)> = kept
        .iter()
        .map(|id| {
            let i: usize = id[3..].parse().unwrap();
            (id.as_str(), (RequestDigest([i as u8; 16]), outcome_of(i)))
        })
        .collect();
    let bytes = codec::to_bytes(&log).unwrap();
    assert_eq!(bytes, codec::to_bytes(&(by_id, &kept)).unwrap());
    let decoded: RequestLog = codec::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, log);
    assert_eq!(decoded.get(&kept[0]), log.get(&kept[0]));
    assert_eq!(
        decoded.get(&format!("id-{}", total - REQUESTS_REMEMBERED_MAX - 1)),
        None
    );

    let mismatched =
        codec::to_bytes(&(BTreeMap::<&str, (RequestDigest, Outcome)>::new(), vec!["x"])).unwrap();
    let refused = codec::from_bytes::<RequestLog>(&mismatched).unwrap_err();
    assert!(refused.to_string().contains("request log"), "{refused}");
}

#[test]
fn maintenance_is_switched_on_and_off_once_and_survives_a_new_registration() {
    let mut state = with_hosts(&["host-1"]);
    let set = |on| Command::SetMaintenance {
        host: "host-1".into(),
        on,
    };
    assert_eq!(state.apply(&set(true)), Outcome::Applied);
    assert!(state.hosts["host-1"].maintenance);
    assert_eq!(state.apply(&set(true)), Outcome::Unchanged);
    // A host that registers again (after a restart, say) stays in maintenance.
    let again = Command::RegisterHost {
        host_id: "host-1".into(),
        inventory: inventory(),
    };
    assert_eq!(state.apply(&again), Outcome::Unchanged);
    assert!(state.hosts["host-1"].maintenance);
    assert_eq!(state.apply(&set(false)), Outcome::Applied);
    assert!(!state.hosts["host-1"].maintenance);
    assert_eq!(state.apply(&set(false)), Outcome::Unchanged);
    let unknown = Command::SetMaintenance {
        host: "host-9".into(),
        on: true,
    };
    assert!(state.validate(&unknown).is_err());
}

/// What the model accepts must fit what one request may propose: the largest VM and a pool
/// on the most hosts, every name at its longest, under the longest request id.
#[test]
fn the_largest_commands_the_model_accepts_fit_one_proposal() {
    let name = |c: char| c.to_string().repeat(NAME_BYTES_MAX);
    let spec = VmSpec {
        id: name('i'),
        name: name('v'),
        vcpus: VM_VCPUS_MAX,
        memory_bytes: u64::MAX,
        disks: (0..VM_DISKS_MAX)
            .map(|_| qvdc_transport::protocol::VmDisk {
                pool: name('p'),
                volume: name('d'),
                format: VolumeFormat::Qcow2,
            })
            .collect(),
        nics: (0..VM_NICS_MAX)
            .map(|_| qvdc_transport::protocol::VmNic {
                network: name('n'),
                mac: Some("52:54:00:00:00:01".into()),
            })
            .collect(),
    };
    let request_id = "r".repeat(REQUEST_ID_BYTES_MAX);
    let vm = once(&request_id, create_vm(spec, &name('h')));
    let hosts: Vec<String> = (0..POOL_HOSTS_MAX)
        .map(|i| format!("{i:0>width$}", width = NAME_BYTES_MAX))
        .collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let pool = once(
        &request_id,
        create(&name('p'), &"/".repeat(PATH_BYTES_MAX), &hosts),
    );
    for command in [vm, pool] {
        let bytes = codec::encoded_len(&command);
        assert!(
            bytes <= COMMAND_BYTES_MAX,
            "{bytes} bytes > {COMMAND_BYTES_MAX}"
        );
        // Not a bound so loose that it bounds nothing: the VM alone is several KiB.
        assert!(bytes > 4096, "{bytes} bytes");
    }
}

/// Each syntactic check at its edge: the longest name and path pass and one byte more does
/// not; MAC addresses and NFS servers of each wrong shape are refused.
#[test]
fn names_paths_macs_and_nfs_servers_are_checked_at_their_edges() {
    assert!(validate_name("pool", &"a".repeat(NAME_BYTES_MAX)).is_ok());
    assert!(matches!(
        validate_name("pool", &"a".repeat(NAME_BYTES_MAX + 1)),
        Err(ValidationError::NameTooLong { .. })
    ));
    let state = with_hosts(&["host-1"]);
    let path = |bytes: usize| format!("/{}", "p".repeat(bytes - 1));
    let longest = create("p", &path(PATH_BYTES_MAX), &["host-1"]);
    assert_eq!(state.validate(&longest), Ok(()));
    let longer = create("p", &path(PATH_BYTES_MAX + 1), &["host-1"]);
    assert_eq!(state.validate(&longer), Err(ValidationError::PathTooLong));

    let macs = [
        ("52:54:00:12:34:56", true),
        ("52:54:00:ab:CD:ef", true),
        ("52:54:00:12:34", false),
        ("52:54:00:12:34:56:78", false),
        ("52:54:00:12:34:5g", false),
        ("525:4:00:12:34:56", false),
        ("52-54-00-12-34-56", false),
    ];
    for (mac, ok) in macs {
        let mut spec = vm("nic", "vm-3", &[]);
        spec.nics.push(qvdc_transport::protocol::VmNic {
            network: "prod".into(),
            mac: Some(mac.into()),
        });
        // A well-formed MAC gets as far as the missing network.
        let e = state
            .validate(&create_vm(spec, "host-1"))
            .unwrap_err()
            .to_string();
        assert_eq!(!e.contains("MAC address"), ok, "{mac}: {e}");
    }

    let too_long = "n".repeat(NAME_BYTES_MAX + 1);
    let servers = [
        ("nfs1.example.com", true),
        ("10.0.0.5", true),
        ("[fd00::1]", true),
        ("", false),
        (too_long.as_str(), false),
        ("nfs server", false),
        ("nfs;reboot", false),
    ];
    for (server, ok) in servers {
        let command = Command::CreatePool {
            spec: PoolSpec {
                scope: Default::default(),
                name: "n".into(),
                source: PoolSource::Nfs {
                    server: server.into(),
                    export: "/export".into(),
                    options: None,
                },
            },
            hosts: vec!["host-1".into()],
        };
        assert_eq!(state.validate(&command).is_ok(), ok, "{server:?}");
    }
}

/// A snapshot holds the state as encoded here: decoding it gives back the same state, the
/// per-host index included.
#[test]
fn a_state_decodes_to_itself_with_its_per_host_index() {
    let mut state = with_hosts(&["host-1", "host-2"]);
    assert_eq!(
        state.apply(&create("p", "/srv/p", &["host-1", "host-2"])),
        Outcome::Applied
    );
    assert_eq!(
        state.apply(&create_vm(vm("v", "vm-1", &[]), "host-1")),
        Outcome::Applied
    );
    let bytes = codec::to_bytes(&state).unwrap();
    let decoded: DesiredState = codec::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, state);
    assert_index_matches_a_scan(&decoded);
}

#[test]
fn nfs_options_and_block_filesystems_are_checked() {
    let state = with_hosts(&["host-1"]);
    let pool = |source| Command::CreatePool {
        spec: PoolSpec {
            scope: Default::default(),
            name: "s".into(),
            source,
        },
        hosts: vec!["host-1".into()],
    };
    let nfs = |options: Option<String>| {
        pool(PoolSource::Nfs {
            server: "nfs1".into(),
            export: "/export".into(),
            options,
        })
    };
    let options = [
        (None, true),
        (Some("vers=4.2,hard".to_owned()), true),
        (Some("o".repeat(PATH_BYTES_MAX)), true),
        (Some("o".repeat(PATH_BYTES_MAX + 1)), false),
        (Some("vers=4.2, hard".to_owned()), false),
    ];
    for (options, ok) in options {
        let shown = format!("{options:?}");
        assert_eq!(state.validate(&nfs(options)).is_ok(), ok, "{shown}");
    }
    let block = |device: &str, fs_type: &str| {
        pool(PoolSource::Block {
            device: device.into(),
            fs_type: fs_type.into(),
        })
    };
    assert_eq!(state.validate(&block("/dev/vdb", "xfs")), Ok(()));
    assert!(state.validate(&block("/dev/vdb", "ntfs")).is_err());
    assert!(state.validate(&block("vdb", "ext4")).is_err());
}

/// Each bound of a VM's definition at its edge: the largest (or smallest) allowed value gets
/// past its check, one step beyond is refused by it.
#[test]
fn a_vms_bounds_are_checked_at_their_edges() {
    let state = with_hosts(&["host-1"]);
    let refused_by = |spec: VmSpec| -> String {
        match state.validate(&create_vm(spec, "host-1")) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let mut id = vm("v", &"i".repeat(REQUEST_ID_BYTES_MAX), &[]);
    assert_eq!(refused_by(id.clone()), "");
    id.id.push('i');
    assert!(refused_by(id).contains("VM id must be"));
    let mut empty_id = vm("v", "", &[]);
    assert!(refused_by(empty_id.clone()).contains("VM id must be"));
    empty_id.id = "x".into();
    assert_eq!(refused_by(empty_id), "");

    let mut memory = vm("v", "vm-1", &[]);
    memory.memory_bytes = VM_MEMORY_BYTES_MIN;
    assert_eq!(refused_by(memory.clone()), "");
    memory.memory_bytes -= 1;
    assert!(refused_by(memory).contains("memory"));

    // At the bound, the disks and NICs get past their count and fail later, on what they
    // name; one more fails on the count.
    let mut disks = vm("v", "vm-1", &vec![("nope", "d"); VM_DISKS_MAX]);
    assert!(refused_by(disks.clone()).contains("no pool named"));
    disks.disks.push(disks.disks[0].clone());
    assert!(refused_by(disks).contains("at most"));
    let mut nics = vm("v", "vm-1", &[]);
    nics.nics = vec![
        qvdc_transport::protocol::VmNic {
            network: "prod".into(),
            mac: None,
        };
        VM_NICS_MAX
    ];
    assert!(refused_by(nics.clone()).contains("does not exist"));
    nics.nics.push(nics.nics[0].clone());
    assert!(refused_by(nics).contains("at most"));
}

/// `count` hosts named `h00000`, `h00001`, ...
fn many_hosts(count: usize) -> (DesiredState, Vec<String>) {
    let ids: Vec<String> = (0..count).map(|i| format!("h{i:05}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    (with_hosts(&refs), ids)
}

/// The cluster's host limit stops new hosts only: a host it already knows registers again
/// (after a restart, with a new inventory) however full the cluster is.
#[test]
fn a_full_cluster_refuses_a_new_host_but_not_a_known_one_registering_again() {
    let (mut state, ids) = many_hosts(HOSTS_MAX);
    let register = |id: &str| Command::RegisterHost {
        host_id: id.into(),
        inventory: Inventory {
            cpu_cores: 4,
            ..inventory()
        },
    };
    assert_eq!(state.apply(&register(&ids[7])), Outcome::Applied);
    assert_eq!(state.hosts[&ids[7]].inventory.cpu_cores, 4);
    rejected_with(
        &mut state,
        register("one-too-many"),
        &format!("already holds {HOSTS_MAX} hosts"),
    );
}

/// A pool spans at most `POOL_HOSTS_MAX` hosts, whether it is created that wide or
/// assigned to more hosts later; exactly the limit is allowed.
#[test]
fn a_pool_spans_up_to_its_host_limit_and_not_one_more() {
    let (mut state, ids) = many_hosts(POOL_HOSTS_MAX + 1);
    let pool = |name: &str, hosts: &[String]| Command::CreatePool {
        spec: PoolSpec {
            scope: Default::default(),
            name: name.into(),
            source: PoolSource::Dir {
                path: "/srv".into(),
            },
        },
        hosts: hosts.to_vec(),
    };
    assert_eq!(
        state.apply(&pool("wide", &ids)),
        Outcome::Rejected(ValidationError::TooManyHosts)
    );
    assert_eq!(
        state.apply(&pool("full", &ids[..POOL_HOSTS_MAX])),
        Outcome::Applied
    );
    // Grown by assignment: 1,000 hosts, then 24 more (the limit), then one more.
    let first = POOL_HOSTS_MAX - 24;
    assert_eq!(state.apply(&pool("p", &ids[..first])), Outcome::Applied);
    let assign = |hosts: &[String]| Command::AssignPool {
        pool: "p".into(),
        hosts: hosts.to_vec(),
    };
    assert_eq!(
        state.apply(&assign(&ids[first..POOL_HOSTS_MAX])),
        Outcome::Applied
    );
    assert_eq!(state.pools["p"].hosts.len(), POOL_HOSTS_MAX);
    assert_eq!(
        state.apply(&assign(&ids[POOL_HOSTS_MAX..])),
        Outcome::Rejected(ValidationError::TooManyHosts)
    );
}

/// Growing a volume to the size it has already changes nothing and is not an error.
#[test]
fn a_volume_resized_to_its_own_size_is_accepted() {
    let mut state = with_hosts(&["host-1"]);
    state.apply(&create("p", "/srv/p", &["host-1"]));
    state.apply(&qcow2("p", "v"));
    let same = Command::ResizeVolume {
        pool: "p".into(),
        name: "v".into(),
        size_bytes: 64 << 20,
    };
    assert_eq!(state.validate(&same), Ok(()));
    assert_eq!(state.apply(&same), Outcome::Unchanged);
    assert_eq!(state.pools["p"].volumes["v"].size_bytes, 64 << 20);
}

/// A request id of exactly `REQUEST_ID_BYTES_MAX` bytes is an id; one byte more is not.
/// The leader checks a request before proposing it: a retry of a request already in the
/// log must pass that check, so that it can replay its outcome.
#[test]
fn request_ids_are_bounded_and_a_retry_passes_the_leaders_check() {
    let mut state = with_hosts(&["host-1"]);
    let longest = "r".repeat(REQUEST_ID_BYTES_MAX);
    let request = once(&longest, create("p", "/srv/p", &["host-1"]));
    assert_eq!(state.validate(&request), Ok(()));
    assert_eq!(state.apply(&request), Outcome::Applied);
    assert_eq!(
        state.validate(&request),
        Ok(()),
        "a retry is not a reused id"
    );
    let too_long = "r".repeat(REQUEST_ID_BYTES_MAX + 1);
    assert_eq!(
        state.validate(&once(&too_long, create("q", "/srv/q", &["host-1"]))),
        Err(ValidationError::BadRequestId)
    );
}

/// A VM attached to a network on one host does not keep that network on another.
#[test]
fn a_network_leaves_a_host_whose_vms_do_not_use_it() {
    let mut state = with_hosts(&["host-1", "host-2"]);
    let network = Command::CreateNetwork {
        spec: NetworkSpec {
            name: "prod".into(),
            bridge: "br-prod".into(),
            vlan: None,
            uplink: None,
        },
        hosts: vec!["host-1".into(), "host-2".into()],
    };
    assert_eq!(state.apply(&network), Outcome::Applied);
    let mut web = vm("web", "vm-1", &[]);
    web.nics.push(qvdc_transport::protocol::VmNic {
        network: "prod".into(),
        mac: None,
    });
    assert_eq!(state.apply(&create_vm(web, "host-1")), Outcome::Applied);
    let unassign = |host: &str| Command::UnassignNetwork {
        network: "prod".into(),
        hosts: vec![host.into()],
    };
    rejected_with(
        &mut state,
        unassign("host-1"),
        "VM web on host-1 is attached to network prod",
    );
    assert_eq!(state.apply(&unassign("host-2")), Outcome::Applied);
    assert_eq!(
        state.networks["prod"].hosts.iter().collect::<Vec<_>>(),
        ["host-1"]
    );
}

/// A VLAN network needs an uplink whose VLAN interface (`uplink.vlan`) is a Linux
/// interface name: 15 bytes at most.
#[test]
fn a_vlan_network_is_accepted_while_its_interface_name_fits() {
    let mut state = with_hosts(&["host-1"]);
    let vlan = |name: &str, uplink: &str, vlan: u16| Command::CreateNetwork {
        spec: NetworkSpec {
            name: name.into(),
            bridge: format!("br-{name}"),
            vlan: Some(vlan),
            uplink: Some(uplink.into()),
        },
        hosts: vec!["host-1".into()],
    };
    // "enp0s31f6a.4094" is 15 bytes.
    assert_eq!(
        state.apply(&vlan("a", "enp0s31f6a", 4094)),
        Outcome::Applied
    );
    assert_eq!(state.apply(&vlan("b", "eth0", 1)), Outcome::Applied);
    rejected_with(
        &mut state,
        vlan("c", "enp0s31f6ab", 4094),
        "makes an interface name longer than 15 bytes",
    );
    let mut no_uplink = vlan("d", "eth0", 7);
    if let Command::CreateNetwork { spec, .. } = &mut no_uplink {
        spec.uplink = None;
    }
    rejected_with(
        &mut state,
        no_uplink,
        "a VLAN needs both --vlan and --uplink",
    );
}

/// A certificate's name may be as long as `REVOKED_NAME_BYTES_MAX` bytes.
#[test]
fn a_certificate_named_at_the_length_limit_is_revocable() {
    let mut state = DesiredState::default();
    let revoke = |name: String| {
        Command::RevokeCertificate(RevokedCertificate {
            serial: "7a3b".into(),
            role: "operator".into(),
            name,
        })
    };
    assert_eq!(
        state.apply(&revoke("n".repeat(REVOKED_NAME_BYTES_MAX))),
        Outcome::Applied
    );
    rejected_with(
        &mut state,
        revoke("n".repeat(REVOKED_NAME_BYTES_MAX + 1)),
        "longer than 256 bytes",
    );
}

/// A VM's disk keeps that one volume, not its pool's other volumes nor a volume of the
/// same name in another pool.
#[test]
fn a_volume_no_vm_uses_is_deleted_beside_one_that_is_used() {
    let mut state = with_hosts(&["host-1"]);
    state.apply(&create("p", "/srv/p", &["host-1"]));
    state.apply(&create("q", "/srv/q", &["host-1"]));
    for (pool, volume) in [("p", "a"), ("p", "b"), ("q", "a")] {
        assert_eq!(state.apply(&qcow2(pool, volume)), Outcome::Applied);
    }
    assert_eq!(
        state.apply(&create_vm(vm("web", "vm-1", &[("p", "a")]), "host-1")),
        Outcome::Applied
    );
    let delete = |pool: &str, name: &str| Command::DeleteVolume {
        pool: pool.into(),
        name: name.into(),
    };
    rejected_with(&mut state, delete("p", "a"), "uses volume p/a");
    assert_eq!(state.apply(&delete("p", "b")), Outcome::Applied);
    assert_eq!(state.apply(&delete("q", "a")), Outcome::Applied);
}

/// An adoption's domain UUID is 1 to `NAME_BYTES_MAX` bytes; it brings at most
/// `VM_DISKS_MAX` volumes, checked before anything else about them; a volume it brings
/// that exists already must have the format the domain opens it with.
#[test]
fn an_adoption_is_checked_at_its_edges() {
    use qvdc_transport::limits::{NAME_BYTES_MAX, VM_DISKS_MAX};
    let mut state = with_hosts(&["host-1"]);
    state.apply(&create("p", "/srv/p", &["host-1"]));
    state.apply(&qcow2("p", "shared.qcow2"));
    for uuid in [String::new(), "u".repeat(NAME_BYTES_MAX + 1)] {
        rejected_with(
            &mut state,
            adopt(vm("db", "req-1", &[]), &uuid, &[]),
            "must be 1 to 64 bytes",
        );
    }
    // More volumes than a VM may have disks, none of them its disks: the count is what
    // is refused.
    let names: Vec<String> = (0..=VM_DISKS_MAX).map(|i| format!("d{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| ("p", n.as_str())).collect();
    rejected_with(
        &mut state,
        adopt(vm("db", "req-1", &[]), "u-1", &many),
        "at most 26 disks",
    );
    // As many as a VM may have is fine.
    let disks = &many[..VM_DISKS_MAX];
    assert_eq!(
        state.apply(&adopt(
            vm("db", "req-1", disks),
            &"u".repeat(NAME_BYTES_MAX),
            disks
        )),
        Outcome::Applied
    );
    assert_eq!(state.pools["p"].volumes.len(), VM_DISKS_MAX + 1);
    // Bringing a volume that already exists, in the same format, adds nothing.
    let shared = vm("web", "req-2", &[("p", "shared.qcow2")]);
    let mut raw = adopt(shared.clone(), "u-2", &[("p", "shared.qcow2")]);
    if let Command::AdoptVm { volumes, .. } = &mut raw {
        volumes[0].record.format = VolumeFormat::Raw;
    }
    rejected_with(
        &mut state,
        raw,
        "p/shared.qcow2 is a qcow2 volume already; the domain opens it as raw",
    );
    assert_eq!(
        state.apply(&adopt(shared, "u-2", &[("p", "shared.qcow2")])),
        Outcome::Applied
    );
    assert_eq!(
        state.pools["p"].volumes["shared.qcow2"].size_bytes,
        64 << 20,
        "the existing volume's record stays"
    );
    // A volume is one of the VM's disks only by pool and name both.
    state.apply(&create("q", "/srv/q", &["host-1"]));
    let spec = vm("app", "req-3", &[("p", "app.qcow2")]);
    for (pool, name) in [("q", "app.qcow2"), ("p", "other.qcow2")] {
        rejected_with(
            &mut state,
            adopt(spec.clone(), "u-3", &[(pool, name)]),
            &format!("{pool}/{name} is not a disk of app"),
        );
    }
}

/// While a VM is being released, only its own disks are off limits: another VM may still
/// share a volume with a VM that stays, and take other volumes of the same pool.
#[test]
fn only_the_disks_of_a_vm_being_released_are_off_limits() {
    let mut state = with_hosts(&["host-1"]);
    state.apply(&create("p", "/srv/p", &["host-1"]));
    for name in ["db.qcow2", "shared.qcow2", "other.qcow2"] {
        state.apply(&qcow2("p", name));
    }
    let db = vm("db", "req-1", &[("p", "db.qcow2")]);
    assert_eq!(state.apply(&create_vm(db, "host-1")), Outcome::Applied);
    let web = vm("web", "req-2", &[("p", "shared.qcow2")]);
    assert_eq!(state.apply(&create_vm(web, "host-1")), Outcome::Applied);
    let release = Command::ReleaseVm { name: "db".into() };
    assert_eq!(state.apply(&release), Outcome::Applied);
    let sharer = vm("sharer", "req-3", &[("p", "shared.qcow2")]);
    assert_eq!(state.apply(&create_vm(sharer, "host-1")), Outcome::Applied);
    let neighbour = vm("neighbour", "req-4", &[("p", "other.qcow2")]);
    assert_eq!(
        state.apply(&create_vm(neighbour, "host-1")),
        Outcome::Applied
    );
    rejected_with(
        &mut state,
        create_vm(vm("taker", "req-5", &[("p", "db.qcow2")]), "host-1"),
        "leaves qvdc with VM db",
    );
}

#[test]
fn a_lost_hosts_vm_moves_once_and_only_to_a_host_that_has_its_disks() {
    let mut state = with_hosts(&["host-1", "host-2", "host-3"]);
    let setup = [
        create("shared", "/srv/shared", &["host-1", "host-2"]),
        qcow2("shared", "disk"),
        Command::CreateHaVm {
            spec: vm("web", "vm-1", &[("shared", "disk")]),
            host: "host-1".into(),
            power: DesiredPower::Running,
            ha: qvdc_transport::protocol::HaPolicy {
                restart: true,
                ..Default::default()
            },
        },
    ];
    for command in setup {
        assert_eq!(state.apply(&command), Outcome::Applied, "{command:?}");
    }
    let fail_over = |from: &str, to: &str| Command::FailOverVm {
        name: "web".into(),
        from: from.into(),
        to: to.into(),
    };
    // host-3 does not have the VM's pool.
    rejected_with(
        &mut state,
        fail_over("host-1", "host-3"),
        "not assigned to host host-3",
    );
    // A move under way decides first: HA waits until it is finished or given up.
    let begin = Command::BeginMove {
        name: "web".into(),
        to: "host-2".into(),
        mode: qvdc_transport::protocol::MigrationMode::Live,
    };
    assert_eq!(state.apply(&begin), Outcome::Applied);
    rejected_with(
        &mut state,
        fail_over("host-1", "host-2"),
        "its move is finished",
    );
    let give_up = Command::AbandonMove {
        name: "web".into(),
        to: "host-2".into(),
        reason: "host host-1 was lost during the move".into(),
    };
    assert_eq!(state.apply(&give_up), Outcome::Applied);
    assert_eq!(
        state.apply(&fail_over("host-1", "host-2")),
        Outcome::Applied
    );
    assert_eq!(state.vms["web"].host, "host-2");
    assert_eq!(state.vms_of_host("host-2").count(), 1);
    assert_eq!(state.vms_of_host("host-1").count(), 0);
    // A second decision about the same loss (a leader change in between) changes nothing.
    rejected_with(&mut state, fail_over("host-1", "host-2"), "moved meanwhile");
    // Stopped meanwhile (or made non-HA): it stays where it is.
    state.apply(&Command::SetVmPower {
        name: "web".into(),
        power: DesiredPower::Stopped,
    });
    rejected_with(
        &mut state,
        fail_over("host-2", "host-1"),
        "no longer a running HA VM",
    );
    assert_index_matches_a_scan(&state);
}

#[test]
fn a_removed_host_takes_its_assignments_and_local_volumes_but_never_a_vm() {
    let mut state = with_hosts(&["host-1", "host-2"]);
    let setup = [
        create("shared", "/srv/shared", &["host-1", "host-2"]),
        create_vm(vm("web", "vm-1", &[]), "host-1"),
    ];
    for command in setup {
        assert_eq!(state.apply(&command), Outcome::Applied, "{command:?}");
    }
    let remove = Command::RemoveHost {
        host: "host-1".into(),
    };
    rejected_with(&mut state, remove.clone(), "still has VMs web");
    assert_eq!(
        state.apply(&Command::DeleteVm { name: "web".into() }),
        Outcome::Applied
    );
    assert_eq!(state.apply(&remove), Outcome::Applied);
    assert!(!state.hosts.contains_key("host-1"));
    let hosts: Vec<&String> = state.pools["shared"].hosts.iter().collect();
    assert_eq!(hosts, ["host-2"]);
    assert_eq!(state.pools_of_host("host-1").count(), 0);
    assert_index_matches_a_scan(&state);
}

#[test]
fn an_ha_policy_is_kept_with_the_vm_and_needs_disks_on_shared_pools() {
    use qvdc_transport::protocol::HaPolicy;
    let mut state = with_hosts(&["host-1", "host-2"]);
    let local = Command::CreatePool {
        spec: PoolSpec {
            scope: PoolScope::Local,
            name: "own".into(),
            source: PoolSource::Dir {
                path: "/srv/own".into(),
            },
        },
        hosts: vec!["host-1".into()],
    };
    let setup = [
        create("shared", "/srv/shared", &["host-1", "host-2"]),
        qcow2("shared", "disk"),
        local,
        Command::CreateVolume {
            pool: "own".into(),
            name: "scratch".into(),
            format: VolumeFormat::Qcow2,
            size_bytes: 1 << 30,
            host: Some("host-1".into()),
        },
    ];
    for command in setup {
        assert_eq!(state.apply(&command), Outcome::Applied, "{command:?}");
    }
    let ha = HaPolicy {
        restart: true,
        priority: 7,
        isolation: Default::default(),
    };
    let create_ha = |spec: VmSpec| Command::CreateHaVm {
        spec,
        host: "host-1".into(),
        power: DesiredPower::Running,
        ha,
    };
    rejected_with(
        &mut state,
        create_ha(vm("bare", "vm-0", &[])),
        "has no disk",
    );
    rejected_with(
        &mut state,
        create_ha(vm(
            "pinned",
            "vm-2",
            &[("shared", "disk"), ("own", "scratch")],
        )),
        "disk own/scratch is not on a shared pool",
    );
    assert_eq!(
        state.apply(&create_ha(vm("web", "vm-1", &[("shared", "disk")]))),
        Outcome::Applied
    );
    assert_eq!(state.vms["web"].ha, ha);
    let off = Command::SetVmHa {
        name: "web".into(),
        ha: HaPolicy::default(),
    };
    assert_eq!(state.apply(&off), Outcome::Applied);
    assert_eq!(state.apply(&off), Outcome::Unchanged);
    assert!(!state.vms["web"].ha.restart);
}

#[test]
fn a_move_keeps_the_vm_on_its_host_until_it_finishes_and_locks_it_meanwhile() {
    use qvdc_transport::protocol::MigrationMode;
    let mut state = with_hosts(&["host-1", "host-2", "host-3"]);
    let local = Command::CreatePool {
        spec: PoolSpec {
            scope: PoolScope::Local,
            name: "own".into(),
            source: PoolSource::Dir {
                path: "/srv/own".into(),
            },
        },
        hosts: vec!["host-1".into()],
    };
    let setup = [
        create("shared", "/srv/shared", &["host-1", "host-2"]),
        qcow2("shared", "disk"),
        create_vm(vm("web", "vm-1", &[("shared", "disk")]), "host-1"),
        local,
        Command::CreateVolume {
            pool: "own".into(),
            name: "root".into(),
            format: VolumeFormat::Qcow2,
            size_bytes: 1 << 20,
            host: Some("host-1".into()),
        },
        create_vm(vm("db", "vm-2", &[("own", "root")]), "host-1"),
    ];
    for command in setup {
        assert_eq!(state.apply(&command), Outcome::Applied, "{command:?}");
    }
    let begin = |name: &str, to: &str, mode| Command::BeginMove {
        name: name.into(),
        to: to.into(),
        mode,
    };
    let live = MigrationMode::Live;
    rejected_with(&mut state, begin("db", "host-2", live), "on a local pool");
    rejected_with(
        &mut state,
        begin("web", "host-3", live),
        "not assigned to host host-3",
    );
    rejected_with(&mut state, begin("web", "host-1", live), "already on host");
    assert_eq!(state.apply(&begin("web", "host-2", live)), Outcome::Applied);
    // Under way: the VM is still host-1's, and nothing else may change it.
    assert_eq!(state.vms["web"].host, "host-1");
    assert_eq!(state.vms_of_host("host-1").count(), 2);
    rejected_with(&mut state, begin("web", "host-2", live), "is moving");
    // The destination stays: it cannot be removed while a VM is on its way there.
    rejected_with(
        &mut state,
        Command::RemoveHost {
            host: "host-2".into(),
        },
        "still has VMs web",
    );
    let stop = Command::SetVmPower {
        name: "web".into(),
        power: DesiredPower::Stopped,
    };
    rejected_with(&mut state, stop.clone(), "is moving to host host-2");
    rejected_with(
        &mut state,
        Command::DeleteVm { name: "web".into() },
        "is moving",
    );
    let finish = |from: &str, to: &str| Command::FinishMove {
        name: "web".into(),
        from: from.into(),
        to: to.into(),
    };
    rejected_with(&mut state, finish("host-1", "host-3"), "not moving");
    assert_eq!(state.apply(&finish("host-1", "host-2")), Outcome::Applied);
    assert_eq!(state.vms["web"].host, "host-2");
    assert_eq!(state.vms["web"].moving, None);
    // Finished once: the same decision again (a new leader's) changes nothing.
    rejected_with(&mut state, finish("host-1", "host-2"), "not moving");
    assert_index_matches_a_scan(&state);

    // Given up: the VM stays, the reason is kept until the next move starts.
    assert_eq!(state.apply(&begin("web", "host-1", live)), Outcome::Applied);
    let abandon = Command::AbandonMove {
        name: "web".into(),
        to: "host-1".into(),
        reason: "migration refused".into(),
    };
    assert_eq!(state.apply(&abandon), Outcome::Applied);
    rejected_with(&mut state, abandon, "not moving");
    assert_eq!(state.vms["web"].host, "host-2");
    let failed = state.vms["web"].move_failed.clone().expect("kept");
    assert_eq!(failed.reason, "migration refused");
    // A destination that lost the VM's pool meanwhile cannot have it: the move is not
    // finished there.
    assert_eq!(state.apply(&begin("web", "host-1", live)), Outcome::Applied);
    let unassign = Command::UnassignPool {
        pool: "shared".into(),
        hosts: vec!["host-1".into()],
    };
    assert_eq!(state.apply(&unassign), Outcome::Applied);
    rejected_with(
        &mut state,
        finish("host-2", "host-1"),
        "not assigned to host host-1",
    );
    let give_up = Command::AbandonMove {
        name: "web".into(),
        to: "host-1".into(),
        reason: "pool gone".into(),
    };
    assert_eq!(state.apply(&give_up), Outcome::Applied);
    let assign = Command::AssignPool {
        pool: "shared".into(),
        hosts: vec!["host-1".into()],
    };
    assert_eq!(state.apply(&assign), Outcome::Applied);
    assert_eq!(state.apply(&stop), Outcome::Applied);
    rejected_with(
        &mut state,
        begin("web", "host-1", live),
        "only a running VM",
    );
    assert_eq!(
        state.apply(&begin("web", "host-1", MigrationMode::Cold)),
        Outcome::Applied
    );
    assert_eq!(state.vms["web"].move_failed, None);
    // A state with a move cannot be written in format 2.
    assert!(state.to_format_2().is_none());
    assert_index_matches_a_scan(&state);
}

fn audited(by: Option<&str>, at_ms: u64, command: Command) -> Command {
    Command::Audited {
        by: by.map(str::to_owned),
        via: by.map(|_| 2),
        at_ms,
        command: Box::new(command),
    }
}

/// Every operator change is recorded once with who, when, which request and the outcome;
/// a retry is not recorded again; qvdc's own changes only when they changed something; the
/// oldest go beyond the retention; numbers never repeat.
#[test]
fn the_audit_trail_records_each_change_once_and_keeps_the_newest() {
    let mut state = with_hosts(&["host-1", "host-2"]);
    let pool = once("r-1", create("shared", "/srv/shared", &["host-1"]));
    assert_eq!(
        state.apply(&audited(Some("alice"), 1_000, pool.clone())),
        Outcome::Applied
    );
    // The retry replays the outcome and records nothing.
    assert_eq!(
        state.apply(&audited(Some("alice"), 1_500, pool)),
        Outcome::Applied
    );
    // A refusal at apply time is recorded with its reason.
    let again = once("r-2", create("shared", "/srv/other", &["host-2"]));
    assert!(matches!(
        state.apply(&audited(Some("bob"), 2_000, again)),
        Outcome::Rejected(ValidationError::PoolExists(_))
    ));
    // qvdc's own change that changed nothing (a host registering again) is not news.
    let register = Command::RegisterHost {
        host_id: "host-1".into(),
        inventory: inventory(),
    };
    state.apply(&audited(None, 3_000, register));
    let records: Vec<_> = state.audit.records.iter().cloned().collect();
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0].seq, 1);
    assert_eq!(records[0].by.as_deref(), Some("alice"));
    assert_eq!(records[0].via, Some(2));
    assert_eq!(records[0].at_ms, 1_000);
    assert_eq!(records[0].request_id.as_deref(), Some("r-1"));
    assert!(
        records[0].change.starts_with("pool create shared"),
        "{}",
        records[0].change
    );
    assert_eq!(
        records[0].outcome,
        qvdc_transport::protocol::AuditOutcome::Applied
    );
    assert_eq!(records[1].seq, 2);
    assert!(matches!(
        &records[1].outcome,
        qvdc_transport::protocol::AuditOutcome::Refused(reason) if reason.contains("already exists")
    ));
    // Retention: only the newest stay, numbered on.
    state.apply(&Command::SetAuditRetention(3));
    for i in 0..5 {
        state.apply(&audited(
            Some("alice"),
            4_000 + i,
            once(
                &format!("m-{i}"),
                Command::SetMaintenance {
                    host: "host-2".into(),
                    on: i % 2 == 0,
                },
            ),
        ));
    }
    let seqs: Vec<u64> = state.audit.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [5, 6, 7]);
    let (from_start, gap) = state.audit.since(1, 10);
    assert_eq!(gap, Some(5), "a reader from #1 is told #1 to #4 are gone");
    assert_eq!(from_start.len(), 3);
    let (tail, gap) = state.audit.since(7, 10);
    assert_eq!((tail.len(), gap), (1, None));
    assert!(state.audit.since(8, 10).0.is_empty());
    assert!(matches!(
        state.validate(&Command::SetAuditRetention(0)),
        Err(ValidationError::BadRetention(_))
    ));
}

/// The level only rises, and a state with an audit trail is not written in format 2,
/// which the previous release reads and which has no room for it.
#[test]
fn the_cluster_level_only_rises_and_leaves_format_2_behind() {
    let mut state = with_hosts(&["host-1"]);
    assert!(state.to_format_2().is_some());
    let level = |level| Command::SetClusterLevel { level, at_ms: 5 };
    assert_eq!(state.apply(&level(1)), Outcome::Applied);
    assert_eq!(state.apply(&level(0)), Outcome::Unchanged);
    assert_eq!(state.audit.level, 1);
    assert_eq!(
        state.audit.records.len(),
        1,
        "the trail begins with the level"
    );
    assert!(state.to_format_2().is_none());
    // An audited command inside another is refused, as a nested request is.
    let nested = audited(
        Some("a"),
        1,
        audited(Some("a"), 1, Command::DeletePool { pool: "p".into() }),
    );
    assert_eq!(
        state.apply(&nested),
        Outcome::Rejected(ValidationError::NestedRequest)
    );
    // And the trail survives the snapshot encoding.
    state.apply(&audited(
        Some("a"),
        9,
        once("r", create("p", "/srv/p", &["host-1"])),
    ));
    let bytes = codec::to_stored_bytes(&state).unwrap();
    let back: DesiredState = codec::from_stored_bytes(&bytes).unwrap();
    assert_eq!(back, state);
}
