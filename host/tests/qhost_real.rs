//! A running `qhost` over the real transport, on real KVM and real mounts. A stand-in leader
//! (holding a server certificate) registers it and sends commands: mount a `dir` pool, create
//! a qcow2 volume in it, define and start a VM on that volume. The heartbeats must tell the
//! truth: the VM running, then shut off after `virsh destroy` behind the agent's back, and the
//! pool DEGRADED while a hung filesystem covers it — with heartbeats arriving all along.
//!
//! Needs root, libvirtd on qemu:///system and /dev/kvm (scripts/setup.sh provides them). It
//! skips without them unless QVDC_REQUIRE_REAL=1, and then it fails.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use qvdc_host::{
    hypervisor::{domain_xml, DomainDisk, DomainSpec},
    pools::PROBE_TIMEOUT_MS,
    testing::HungFuse,
};
use qvdc_transport::{
    protocol::{
        CommandOutput, Health, HostCommandKind, HostErrorKind, HostMessage, Leadership, PoolReport,
        PoolSource, PoolSpec, PowerState, VmDisk, VmReport, VmSpec, VolumeFormat, VolumeInfo,
    },
    Endpoint,
};
use support::{accept_host, certificates, identity};

const URI: &str = "qemu:///system";
const HEARTBEAT_MS: u64 = 200;

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .output()
        .expect("virsh")
}

/// Root, KVM and a libvirtd that answers; under QVDC_REQUIRE_REAL=1 all must be there.
fn real_environment() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let kvm = Path::new("/dev/kvm").exists();
    let libvirtd = Command::new("virsh")
        .args(["-c", URI, "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let required = std::env::var("QVDC_REQUIRE_REAL").is_ok_and(|v| v == "1");
    assert!(
        (root && kvm && libvirtd) || !required,
        "QVDC_REQUIRE_REAL=1 but root: {root}, /dev/kvm: {kvm}, libvirtd: {libvirtd}; run scripts/setup.sh"
    );
    root && kvm && libvirtd
}

/// Kills the agent and removes what the test made, even when it fails half-way.
struct Cleanup {
    qhost: Child,
    domains: Vec<String>,
    mounts: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.qhost.kill();
        let _ = self.qhost.wait();
        for domain in &self.domains {
            let _ = virsh(&["destroy", domain]);
            let _ = virsh(&["undefine", domain]);
        }
        for mount in &self.mounts {
            let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn pool_of<'a>(message: &'a HostMessage, pool: &str) -> Option<&'a PoolReport> {
    let HostMessage::Heartbeat { pools, .. } = message else {
        return None;
    };
    pools.iter().find(|p| p.pool == pool)
}

fn vm_of<'a>(message: &'a HostMessage, name: &str) -> Option<&'a VmReport> {
    let HostMessage::Heartbeat { vms, .. } = message else {
        return None;
    };
    vms.iter().find(|v| v.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qhost_runs_a_kvm_vm_on_a_volume_and_reports_what_happens_to_it() {
    if !real_environment() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    certificates(dir);
    let leader = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity(dir, "node-1"),
        true,
    )
    .unwrap();
    let data = dir.join("data");
    let vm = format!("qvdc-it-{}", std::process::id());
    let by_virsh = format!("{vm}-virsh");
    let foreign = format!("{vm}-foreign");
    // A domain someone else defined on this host before the agent started.
    let foreign_xml = dir.join("foreign.xml");
    std::fs::write(
        &foreign_xml,
        format!("<domain type='kvm'><name>{foreign}</name><memory unit='MiB'>32</memory><os><type arch='x86_64'>hvm</type></os></domain>"),
    )
    .unwrap();
    assert!(virsh(&["define", &foreign_xml.display().to_string()])
        .status
        .success());
    let qhost = Command::new(env!("CARGO_BIN_EXE_qhost"))
        .args(["--host-id", "host-1", "--libvirt", URI])
        .arg("--cluster")
        .arg(leader.local_addr().unwrap().to_string())
        .arg("--data-dir")
        .arg(&data)
        .arg("--ca-cert")
        .arg(dir.join("ca.crt"))
        .arg("--cert")
        .arg(dir.join("host-1.crt"))
        .arg("--key")
        .arg(dir.join("host-1.key"))
        .arg("--heartbeat-interval-ms")
        .arg(HEARTBEAT_MS.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pool_path = data.join("pools/local");
    let _cleanup = Cleanup {
        qhost,
        domains: vec![vm.clone(), by_virsh.clone(), foreign.clone()],
        mounts: vec![pool_path.clone()],
    };

    let leadership = Leadership { term: 1, node: 1 };
    let mut host = tokio::time::timeout(Duration::from_secs(30), accept_host(&leader, leadership))
        .await
        .expect("qhost dials the leader");
    let HostMessage::Register { inventory, vms, .. } = host.messages.recv().await.unwrap() else {
        panic!("the first message registers the host");
    };
    assert!(
        inventory.cpu_cores > 0 && inventory.memory_bytes > 0,
        "{inventory:?}"
    );
    assert!(inventory.hypervisor.contains("QEMU"), "{inventory:?}");
    // Existing domains are reported at registration; one qvdc did not create is unmanaged
    // and left alone.
    let existing = vms
        .iter()
        .find(|v| v.name == foreign)
        .expect("foreign domain reported");
    assert_eq!(
        (existing.id.as_deref(), existing.power),
        (None, PowerState::ShutOff)
    );
    let start_foreign = HostCommandKind::StartVm {
        name: foreign.clone(),
    };
    let refused = host.command(start_foreign).await.unwrap_err();
    assert_eq!(refused.kind, HostErrorKind::Conflict, "{refused}");
    assert!(virsh(&["undefine", &foreign]).status.success());

    // A dir pool with a qcow2 volume.
    let source = dir.join("pool-source");
    std::fs::create_dir(&source).unwrap();
    let spec = PoolSpec {
        scope: Default::default(),
        name: "local".into(),
        source: PoolSource::Dir {
            path: source.display().to_string(),
        },
    };
    host.command(HostCommandKind::InitStoragePool(spec))
        .await
        .unwrap();
    let create = HostCommandKind::CreateVolume {
        pool: "local".into(),
        name: "disk.qcow2".into(),
        format: VolumeFormat::Qcow2,
        size_bytes: 64 << 20,
    };
    host.command(create.clone()).await.unwrap();
    host.command(create)
        .await
        .expect("creating again is idempotent");
    let listed = host
        .command(HostCommandKind::ListVolumes {
            pool: "local".into(),
        })
        .await
        .unwrap();
    let disk = VolumeInfo {
        name: "disk.qcow2".into(),
        format: Some(VolumeFormat::Qcow2),
        size_bytes: 64 << 20,
    };
    assert_eq!(listed, CommandOutput::Volumes(vec![disk]));
    host.heartbeat_where(|m| {
        pool_of(m, "local")
            .filter(|p| p.health == Health::Healthy && p.volume_count == 1)
            .cloned()
    })
    .await;

    // A VM on that volume, through the whole stack.
    let spec = VmSpec {
        id: "vm-it".into(),
        name: vm.clone(),
        vcpus: 1,
        memory_bytes: 64 << 20,
        disks: vec![VmDisk {
            pool: "local".into(),
            volume: "disk.qcow2".into(),
            format: VolumeFormat::Qcow2,
        }],
        nics: Vec::new(),
    };
    let started = Instant::now();
    host.command(HostCommandKind::DefineVm(spec)).await.unwrap();
    host.command(HostCommandKind::StartVm { name: vm.clone() })
        .await
        .unwrap();
    let through_stack = started.elapsed();
    let running = host
        .heartbeat_where(|m| {
            vm_of(m, &vm)
                .filter(|v| v.power == PowerState::Running)
                .cloned()
        })
        .await;
    let reported = started.elapsed();
    assert_eq!(running.id.as_deref(), Some("vm-it"));
    assert_eq!((running.vcpus, running.memory_bytes), (1, 64 << 20));
    let xml = virsh(&["dumpxml", &vm]);
    let xml = String::from_utf8_lossy(&xml.stdout);
    assert!(
        xml.contains("machine='pc-q35") && xml.contains("disk.qcow2"),
        "{xml}"
    );

    // Pulled out from under the agent: the next heartbeats say so.
    assert!(virsh(&["destroy", &vm]).status.success());
    let off = host
        .heartbeat_where(|m| {
            vm_of(m, &vm)
                .filter(|v| v.power == PowerState::ShutOff)
                .cloned()
        })
        .await;
    assert_eq!(off.reason, "destroyed");

    // The same domain by virsh alone, for comparison.
    let domain = DomainSpec {
        id: "vm-virsh".into(),
        name: by_virsh.clone(),
        vcpus: 1,
        memory_bytes: 64 << 20,
        disks: vec![DomainDisk {
            path: pool_path.join("disk.qcow2"),
            format: VolumeFormat::Qcow2,
        }],
        nics: Vec::new(),
    };
    let xml_file = dir.join("by-virsh.xml");
    std::fs::write(&xml_file, domain_xml(&domain, "kvm", None)).unwrap();
    let started = Instant::now();
    assert!(virsh(&["define", &xml_file.display().to_string()])
        .status
        .success());
    assert!(virsh(&["start", &by_virsh]).status.success());
    let virsh_alone = started.elapsed();
    assert!(virsh(&["destroy", &by_virsh]).status.success());
    assert!(virsh(&["undefine", &by_virsh]).status.success());
    eprintln!(
        "define+start: {} ms through qvdc (command round trips), {} ms until a heartbeat reported it running; {} ms with virsh alone",
        through_stack.as_millis(),
        reported.as_millis(),
        virsh_alone.as_millis()
    );

    // A filesystem that stops answering covers the pool: DEGRADED within the probe timeout,
    // and the heartbeats keep coming meanwhile.
    let fuse = HungFuse::mount(&pool_path).unwrap();
    let hung_at = Instant::now();
    let mut last_beat = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let degraded = host
        .heartbeat_where(|m| {
            longest_gap = longest_gap.max(last_beat.elapsed());
            last_beat = Instant::now();
            pool_of(m, "local")
                .filter(|p| p.health == Health::Degraded)
                .cloned()
        })
        .await;
    let detected = hung_at.elapsed();
    assert!(
        degraded.error.as_deref().unwrap().contains("hung"),
        "{degraded:?}"
    );
    assert!(
        detected < Duration::from_millis(PROBE_TIMEOUT_MS + 2 * HEARTBEAT_MS + 1_000),
        "DEGRADED after {detected:?}"
    );
    assert!(
        longest_gap < Duration::from_millis(4 * HEARTBEAT_MS),
        "heartbeats stalled for {longest_gap:?} while the pool hung"
    );
    eprintln!(
        "hung pool reported DEGRADED after {} ms; longest gap between heartbeats {} ms",
        detected.as_millis(),
        longest_gap.as_millis()
    );
    drop(fuse);
    host.heartbeat_where(|m| {
        pool_of(m, "local")
            .filter(|p| p.health == Health::Healthy)
            .cloned()
    })
    .await;

    // Clean up through the agent: the VM is undefined, the pool unmounted and forgotten.
    host.command(HostCommandKind::UndefineVm { name: vm.clone() })
        .await
        .unwrap();
    host.command(HostCommandKind::RemoveStoragePool {
        pool: "local".into(),
    })
    .await
    .unwrap();
    host.heartbeat_where(|m| match m {
        HostMessage::Heartbeat { pools, vms, .. } => {
            (pools.is_empty() && !vms.iter().any(|v| v.name == vm)).then_some(())
        }
        _ => None,
    })
    .await;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&pool_path.display().to_string()));
}
