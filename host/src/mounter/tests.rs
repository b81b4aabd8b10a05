//! Tests of the mounters: the conformance suite every `Mounter` must pass, run against the
//! simulated one always and the real one as root, and what only one of them does.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use qvdc_transport::protocol::{HostErrorKind, PoolSource, VolumeFormat, VolumeInfo};

use super::real::{mounted_in_mountinfo, QCOW2_MAGIC};
use super::*;

fn dir_source(path: &Path) -> PoolSource {
    PoolSource::Dir { path: shown(path) }
}

/// The behaviour every `Mounter` must show. Runs against the simulated mounter always and
/// against real mounts when this process may mount (root).
/// `plant` puts a file qvdc did not create into a pool directory.
async fn conformance(mounter: &impl Mounter, scratch: &Path, plant: &dyn Fn(&Path, &str)) {
    let source = scratch.join("source");
    std::fs::create_dir_all(&source).unwrap();
    let target = scratch.join("root/pools/p1");

    assert!(!mounter.is_mounted(target.clone()).await.unwrap());
    mounter
        .mount(dir_source(&source), target.clone())
        .await
        .unwrap();
    assert!(mounter.is_mounted(target.clone()).await.unwrap());
    mounter
        .mount(dir_source(&source), target.clone())
        .await
        .expect("mounting twice is idempotent");
    let usage = mounter.usage(target.clone()).await.unwrap();
    assert!(usage.capacity.total_bytes > 0);
    assert!(usage.capacity.available_bytes <= usage.capacity.total_bytes);
    assert!(!usage.read_only);
    assert_eq!(usage.volume_count, 0);

    let create =
        |name: &str, format, size| mounter.create_volume(target.clone(), name.into(), format, size);
    create("disk.qcow2", VolumeFormat::Qcow2, 64 << 20)
        .await
        .unwrap();
    create("disk.qcow2", VolumeFormat::Qcow2, 64 << 20)
        .await
        .expect("creating the same volume twice is idempotent");
    create("data.img", VolumeFormat::Raw, 1 << 20)
        .await
        .unwrap();
    create("data.img", VolumeFormat::Raw, 2 << 20)
        .await
        .expect("creating it larger grows it");
    create("data.img", VolumeFormat::Raw, 1 << 20)
        .await
        .expect_err("a larger volume of that name exists");
    let err = create("data.img", VolumeFormat::Qcow2, 2 << 20)
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
    let listed = mounter.list_volumes(target.clone()).await.unwrap();
    let expected = vec![
        VolumeInfo {
            name: "data.img".into(),
            format: Some(VolumeFormat::Raw),
            size_bytes: 2 << 20,
        },
        VolumeInfo {
            name: "disk.qcow2".into(),
            format: Some(VolumeFormat::Qcow2),
            size_bytes: 64 << 20,
        },
    ];
    assert_eq!(listed, expected);
    assert_eq!(mounter.usage(target.clone()).await.unwrap().volume_count, 2);

    let formats = [
        ("disk.qcow2", VolumeFormat::Qcow2, 128 << 20),
        ("data.img", VolumeFormat::Raw, 4 << 20),
    ];
    for (name, format, size) in formats {
        mounter
            .resize_volume(target.clone(), name.into(), format, size)
            .await
            .unwrap();
    }
    // A volume is resized only as the format it was created with.
    let err = mounter
        .resize_volume(
            target.clone(),
            "data.img".into(),
            VolumeFormat::Qcow2,
            8 << 20,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
    let sizes: Vec<u64> = mounter
        .list_volumes(target.clone())
        .await
        .unwrap()
        .iter()
        .map(|v| v.size_bytes)
        .collect();
    assert_eq!(sizes, [4 << 20, 128 << 20]);
    let err = mounter
        .resize_volume(target.clone(), "data.img".into(), VolumeFormat::Raw, 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Invalid, "{err}");
    let err = mounter
        .resize_volume(target.clone(), "nope".into(), VolumeFormat::Raw, 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::NotFound, "{err}");

    for _ in 0..2 {
        mounter
            .delete_volume(target.clone(), "data.img".into())
            .await
            .expect("deleting is idempotent");
    }
    assert_eq!(mounter.list_volumes(target.clone()).await.unwrap().len(), 1);
    mounter
        .delete_volume(target.clone(), "disk.qcow2".into())
        .await
        .unwrap();

    // A file qvdc did not create is neither taken over, resized nor deleted.
    plant(&target, "theirs.img");
    let refusals = [
        create("theirs.img", VolumeFormat::Raw, 1).await,
        mounter
            .resize_volume(target.clone(), "theirs.img".into(), VolumeFormat::Raw, 8)
            .await,
        mounter
            .delete_volume(target.clone(), "theirs.img".into())
            .await,
    ];
    for refused in refusals {
        let err = refused.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
        assert!(err.message.contains("was not created by qvdc"), "{err}");
    }
    let listed = mounter.list_volumes(target.clone()).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].name.as_str(), listed[0].size_bytes),
        ("theirs.img", 1)
    );

    // Claimed (its domain was adopted), it is qvdc's; given back, it is not again.
    let claim = |name: &str, format| mounter.claim_volume(target.clone(), name.into(), format);
    let err = claim("absent.img", VolumeFormat::Raw).await.unwrap_err();
    assert_eq!(err.kind, HostErrorKind::NotFound, "{err}");
    let err = claim("theirs.img", VolumeFormat::Qcow2).await.unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
    for _ in 0..2 {
        claim("theirs.img", VolumeFormat::Raw).await.unwrap();
    }
    mounter
        .resize_volume(target.clone(), "theirs.img".into(), VolumeFormat::Raw, 8)
        .await
        .expect("a claimed file is a volume");
    for _ in 0..2 {
        mounter
            .disown_volume(target.clone(), "theirs.img".into())
            .await
            .unwrap();
    }
    let err = mounter
        .delete_volume(target.clone(), "theirs.img".into())
        .await
        .unwrap_err();
    assert!(err.message.contains("was not created by qvdc"), "{err}");
    let listed = mounter.list_volumes(target.clone()).await.unwrap();
    assert_eq!(
        (listed[0].name.as_str(), listed[0].size_bytes),
        ("theirs.img", 8)
    );

    mounter.unmount(target.clone()).await.unwrap();
    assert!(!mounter.is_mounted(target.clone()).await.unwrap());
    mounter
        .unmount(target.clone())
        .await
        .expect("unmounting twice is idempotent");
}

/// A pool whose mount point cannot exist (its parent is a file) was never mounted, so
/// removing it succeeds: before, the host kept reporting it forever.
#[tokio::test]
async fn nothing_is_mounted_under_a_file() {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("pools"), b"not a directory").unwrap();
    let target = scratch.path().join("pools/p1");
    let mounter = RealMounter::new();
    assert!(!mounter.is_mounted(target.clone()).await.unwrap());
    mounter.unmount(target).await.unwrap();
}

#[tokio::test]
async fn sim_mounter_conforms() {
    let scratch = tempfile::tempdir().unwrap();
    let mounter = SimMounter::new(1 << 30);
    let plant = |dir: &Path, name: &str| mounter.plant_foreign(dir, name);
    conformance(&mounter, scratch.path(), &plant).await;
}

#[tokio::test]
async fn sim_mounter_reports_configured_failure() {
    let mounter = SimMounter::new(1 << 30).failing_mounts("Permission denied");
    let err = mounter
        .mount(dir_source(Path::new("/a")), "/b".into())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Permission denied"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn sim_mounter_hangs_when_told() {
    let mounter = SimMounter::new(1 << 30);
    mounter
        .mount(dir_source(Path::new("/a")), "/b".into())
        .await
        .unwrap();
    mounter.set_hung(true);
    let stalled = tokio::time::timeout(Duration::from_secs(60), mounter.usage("/b".into()));
    assert!(stalled.await.is_err(), "a hung statvfs never returns");
    mounter.set_hung(false);
    assert!(mounter.usage("/b".into()).await.is_ok());
}

/// Whether this process may mount. Without root the real tests skip — unless
/// QVDC_REQUIRE_REAL=1 says the environment was set up for them, and then they fail.
fn may_mount() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let required = std::env::var("QVDC_REQUIRE_REAL").is_ok_and(|v| v == "1");
    assert!(
        root || !required,
        "QVDC_REQUIRE_REAL=1 but this test needs root to mount"
    );
    root
}

/// Whether `program` is installed; a missing one fails the test under QVDC_REQUIRE_REAL=1.
fn have(program: &str) -> bool {
    let found = Command::new(program).arg("--version").output().is_ok();
    let required = std::env::var("QVDC_REQUIRE_REAL").is_ok_and(|v| v == "1");
    assert!(
        found || !required,
        "QVDC_REQUIRE_REAL=1 but {program} is not installed; run scripts/setup.sh"
    );
    found
}

/// A marks directory replaced by a symlink (by anyone who can write to the pool's
/// storage) neither makes foreign files qvdc's nor lets qvdc unlink outside the pool.
#[tokio::test]
async fn a_symlinked_marks_directory_is_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let (pool, elsewhere) = (
        scratch.path().join("pool"),
        scratch.path().join("elsewhere"),
    );
    std::fs::create_dir_all(&pool).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(pool.join("theirs.img"), b"x").unwrap();
    std::fs::write(elsewhere.join("web.qcow2"), b"precious").unwrap();
    let mounter = RealMounter::new();
    for target in [Path::new("."), elsewhere.as_path()] {
        let _ = std::fs::remove_file(pool.join(OWNERSHIP_DIR));
        std::os::unix::fs::symlink(target, pool.join(OWNERSHIP_DIR)).unwrap();
        for name in ["theirs.img", "web.qcow2"] {
            let err = mounter
                .delete_volume(pool.clone(), name.into())
                .await
                .unwrap_err();
            assert!(err.message.contains("ownership marks"), "{err}");
        }
        let err = mounter
            .create_volume(pool.clone(), "new.img".into(), VolumeFormat::Raw, 1 << 20)
            .await
            .unwrap_err();
        assert!(err.message.contains("ownership marks"), "{err}");
        for result in [
            mounter
                .claim_volume(pool.clone(), "theirs.img".into(), VolumeFormat::Raw)
                .await,
            mounter
                .disown_volume(pool.clone(), "theirs.img".into())
                .await,
        ] {
            let err = result.unwrap_err();
            assert!(err.message.contains("ownership marks"), "{err}");
        }
    }
    assert!(pool.join("theirs.img").exists());
    assert_eq!(
        std::fs::read(elsewhere.join("web.qcow2")).unwrap(),
        b"precious"
    );
    assert!(!pool.join("new.img").exists());
}

#[tokio::test]
async fn real_mounter_conforms_needs_root() {
    if !may_mount() || !have("qemu-img") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let plant = |dir: &Path, name: &str| std::fs::write(dir.join(name), b"x").unwrap();
    conformance(&RealMounter::new(), scratch.path(), &plant).await;
}

/// A guest owns its raw disk's bytes and can write a qcow2 header into them, naming a
/// backing file on the host. The volume is still raw: it grows as a raw file, and no
/// qemu-img ever opens it as qcow2.
#[tokio::test]
async fn a_raw_volume_with_a_guest_written_qcow2_header_stays_raw_needs_root() {
    if !may_mount() || !have("qemu-img") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().to_path_buf();
    let mounter = RealMounter::new();
    let name = "guest.img".to_string();
    mounter
        .create_volume(dir.clone(), name.clone(), VolumeFormat::Raw, 1 << 20)
        .await
        .unwrap();
    let path = dir.join(&name);
    let mut header = vec![0u8; 512];
    header[..4].copy_from_slice(QCOW2_MAGIC);
    header[4..8].copy_from_slice(&3u32.to_be_bytes()); // version
    header[24..32].copy_from_slice(&(1u64 << 40).to_be_bytes()); // "virtual size"
    {
        use std::io::{Seek, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(std::io::SeekFrom::Start(0)).unwrap();
        file.write_all(&header).unwrap();
    }
    mounter
        .resize_volume(dir.clone(), name.clone(), VolumeFormat::Raw, 2 << 20)
        .await
        .unwrap();
    mounter
        .create_volume(dir.clone(), name.clone(), VolumeFormat::Raw, 3 << 20)
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 << 20);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        &bytes[..512],
        &header[..],
        "the guest's bytes are untouched"
    );
    let err = mounter
        .resize_volume(dir.clone(), name, VolumeFormat::Raw, 1 << 20)
        .await
        .unwrap_err();
    assert!(
        err.message.contains(&format!("is {} bytes", 3 << 20)),
        "{err}"
    );
}

/// The mount options of `target` in the kernel's mount table.
fn mount_options(target: &Path) -> String {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = shown(target);
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.get(4) == Some(&target.as_str())).then(|| fields[5].to_owned())
        })
        .next_back()
        .unwrap_or_else(|| panic!("{target} is not mounted"))
}

#[tokio::test]
async fn real_pools_are_mounted_nosuid_nodev_needs_root() {
    if !may_mount() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("source");
    let target = scratch.path().join("target");
    std::fs::create_dir_all(&source).unwrap();
    let mounter = RealMounter::new();
    mounter
        .mount(dir_source(&source), target.clone())
        .await
        .unwrap();
    let options = mount_options(&target);
    mounter.unmount(target.clone()).await.unwrap();
    let options: Vec<&str> = options.split(',').collect();
    assert!(
        options.contains(&"nosuid") && options.contains(&"nodev"),
        "{options:?}"
    );
}

/// A mount left at a pool's mount point by an earlier pool of the same name (the agent
/// restarted in between and forgot it) is replaced, not taken for the new source.
#[tokio::test]
async fn a_stale_mount_of_another_source_is_replaced_needs_root() {
    if !may_mount() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (old, new) = (scratch.path().join("old"), scratch.path().join("new"));
    for (dir, marker) in [(&old, "old-marker"), (&new, "new-marker")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(marker), "").unwrap();
    }
    let target = scratch.path().join("target");
    RealMounter::new()
        .mount(dir_source(&old), target.clone())
        .await
        .unwrap();
    // A new agent: no memory of the first mount.
    let mounter = RealMounter::new();
    mounter
        .mount(dir_source(&old), target.clone())
        .await
        .unwrap();
    assert!(
        target.join("old-marker").exists(),
        "the same source is kept"
    );
    mounter
        .mount(dir_source(&new), target.clone())
        .await
        .unwrap();
    let replaced = target.join("new-marker").exists() && !target.join("old-marker").exists();
    mounter.unmount(target.clone()).await.unwrap();
    assert!(
        !mounted_in_mountinfo(&target).unwrap(),
        "one mount, not two stacked"
    );
    assert!(replaced, "the stale mount was reused");
}

/// The block device under the root filesystem, as measured once: a `block` pool on the
/// host's own root disk was accepted and mounted.
fn root_device() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let devices = mountinfo.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let (dev, at) = (fields[2], fields[4]);
        let uevent = std::fs::read_to_string(format!("/sys/dev/block/{dev}/uevent")).ok()?;
        let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
        Some((at == "/", PathBuf::from(format!("/dev/{name}"))))
    });
    // The root's device if it is a block device, else any mounted block device.
    let mut devices: Vec<(bool, PathBuf)> = devices.filter(|(_, d)| d.exists()).collect();
    devices.sort_by_key(|(root, _)| !root);
    devices
        .into_iter()
        .next()
        .expect("a mounted block device")
        .1
}

#[tokio::test]
async fn real_mounter_refuses_a_block_device_that_is_mounted_needs_root() {
    if !may_mount() {
        return;
    }
    let device = root_device();
    let scratch = tempfile::tempdir().unwrap();
    let source = PoolSource::Block {
        device: shown(&device),
        fs_type: "ext4".into(),
    };
    let err = RealMounter::new()
        .mount(source, scratch.path().join("target"))
        .await
        .unwrap_err();
    let MountError::Refused(message) = &err else {
        panic!("{device:?} was not refused: {err:?}")
    };
    assert!(
        message.contains("is in use") && message.contains("is mounted on"),
        "{message}"
    );
}

/// A link to a system directory is followed before the source is judged.
#[tokio::test]
async fn real_mounter_refuses_a_link_into_a_system_directory_needs_root() {
    if !may_mount() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let link = scratch.path().join("innocent");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let err = RealMounter::new()
        .mount(dir_source(&link), scratch.path().join("target"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MountError::Refused(m) if m.contains("/etc is in /etc")),
        "{err:?}"
    );
}

#[tokio::test]
async fn real_mounter_names_a_missing_source_needs_root() {
    if !may_mount() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let err = RealMounter::new()
        .mount(
            dir_source(&scratch.path().join("nope")),
            scratch.path().join("t"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, MountError::Source { .. }), "{err}");
    assert!(
        err.to_string().contains("No such file or directory"),
        "{err}"
    );
}

#[tokio::test]
async fn real_mount_gone_read_only_is_seen_needs_root() {
    if !may_mount() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("source");
    std::fs::create_dir(&source).unwrap();
    let target = scratch.path().join("pools/p");
    let mounter = RealMounter::new();
    mounter
        .mount(dir_source(&source), target.clone())
        .await
        .unwrap();
    // What an operator (or the kernel, after I/O errors) may do behind the agent's back.
    nix::mount::mount(
        None::<&str>,
        &target,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT
            | nix::mount::MsFlags::MS_BIND
            | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    let usage = mounter.usage(target.clone()).await.unwrap();
    mounter.unmount(target).await.unwrap();
    assert!(usage.read_only, "{usage:?}");
}

#[tokio::test]
async fn real_block_pool_mounts_a_loop_backed_ext4_image_needs_root() {
    if !may_mount() || !have("mkfs.ext4") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let image = scratch.path().join("pool.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .status()
        .unwrap();
    assert!(mkfs.success());
    let source = PoolSource::Block {
        device: shown(&image),
        fs_type: "ext4".into(),
    };
    let target = scratch.path().join("pools/blk");
    let mounter = RealMounter::new();
    mounter.mount(source.clone(), target.clone()).await.unwrap();
    mounter
        .mount(source, target.clone())
        .await
        .expect("mounting twice is idempotent");
    let usage = mounter.usage(target.clone()).await.unwrap();
    // ext4 keeps some of 64 MiB for itself; the rest is the pool's.
    assert!(
        (40 << 20..=64 << 20).contains(&usage.capacity.total_bytes),
        "{usage:?}"
    );
    mounter
        .create_volume(target.clone(), "v.raw".into(), VolumeFormat::Raw, 1 << 20)
        .await
        .unwrap();
    assert_eq!(mounter.usage(target.clone()).await.unwrap().volume_count, 1);
    mounter.unmount(target.clone()).await.unwrap();
    assert!(!mounter.is_mounted(target).await.unwrap());
}

#[tokio::test]
async fn real_nfs_pool_fails_with_the_kernels_message_needs_root() {
    if !may_mount() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let source = PoolSource::Nfs {
        server: "127.0.0.1".into(),
        export: "/export".into(),
        options: Some("vers=4.2".into()),
    };
    let err = RealMounter::new()
        .mount(source, scratch.path().join("nfs"))
        .await
        .unwrap_err();
    let MountError::Mount { from, reason, .. } = &err else {
        panic!("expected a mount failure, got {err}");
    };
    assert_eq!(from, "127.0.0.1:/export");
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap();
    if filesystems.contains("\tnfs\n") {
        // A kernel with an NFS client fails differently (nothing serves NFS on loopback
        // here), but still in the system's words.
        assert!(
            !reason.is_empty() && !reason.contains("cannot run"),
            "{err}"
        );
    } else {
        assert!(reason.ends_with("unknown filesystem type 'nfs'."), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_hung_filesystem_costs_one_thread_and_never_blocks_the_caller_needs_root() {
    if !may_mount() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("hung");
    let fuse = crate::testing::HungFuse::mount(&target).expect("mount a hung FUSE filesystem");
    let mounter = RealMounter::new();
    let first = tokio::time::timeout(Duration::from_millis(300), mounter.usage(target.clone()));
    assert!(
        first.await.is_err(),
        "statvfs on a hung FUSE mount returned"
    );
    let second = tokio::time::timeout(Duration::from_millis(300), mounter.usage(target.clone()))
        .await
        .expect("a second call must not wait for the hung one");
    assert!(
        matches!(second, Err(MountError::Stuck { .. })),
        "{second:?}"
    );
    drop(fuse);
    // Once the filesystem is gone, the stuck call returns and the path is usable again.
    tokio::time::timeout(Duration::from_secs(5), async {
        while mounter.in_flight.lock().unwrap().contains_key(&target) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the hung call returns after the connection is aborted");
}
