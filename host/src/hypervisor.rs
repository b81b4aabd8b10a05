//! Domains on a host: the `Hypervisor` trait, the libvirt domain XML qvdc writes, and a
//! simulated hypervisor for the deterministic simulation. The libvirt implementation lives in
//! `libvirt`.
//!
//! The trait is deliberately thin — one call per libvirt operation, each idempotent where
//! libvirt allows it — and knows nothing of who manages a domain: the VM actors (`vms`) decide
//! what may be done to which domain.

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use qvdc_transport::protocol::{
    DiskReport, HostError, HostErrorKind, PowerState, VmReport, VolumeFormat,
};

/// XML namespace of the metadata element that carries a domain's VM id.
pub const METADATA_NAMESPACE: &str = "https://qvdc.dev/xmlns/vm/1";
/// Prefix of that element (`<qvdc:vm>`).
pub const METADATA_PREFIX: &str = "qvdc";

/// A VM made concrete for this host: its disks are files and its NICs are bridges here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub disks: Vec<DomainDisk>,
    pub nics: Vec<DomainNic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    pub path: PathBuf,
    pub format: VolumeFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainNic {
    pub bridge: String,
    pub mac: Option<String>,
}

/// Defines, runs and inspects domains. Domains are addressed by name.
pub trait Hypervisor: Send + Sync + 'static {
    /// What drives the domains, e.g. "QEMU 7.2.0 (libvirt 9.0.0)".
    fn describe(&self) -> impl Future<Output = Result<String, HostError>> + Send;
    /// Defines the domain, or updates its definition if it exists (a running domain takes
    /// the new definition at its next start).
    fn define(&self, spec: DomainSpec) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Starts it; a running domain stays as it is.
    fn start(&self, name: String) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Asks the guest to shut down (ACPI). Returns at once; a domain that is not running is
    /// left alone.
    fn shutdown(&self, name: String) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Stops it at once (pulls the plug); a domain that is not running is left alone.
    fn destroy(&self, name: String) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Reboots a running domain.
    fn reboot(&self, name: String) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Removes the definition, destroying a running domain first. A missing domain is fine.
    fn undefine(&self, name: String) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Renames a shut-off domain (libvirt renames no running one).
    fn rename(
        &self,
        name: String,
        to: String,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Records `id` in the domain's qvdc metadata, or removes that metadata (`None`).
    fn set_id(
        &self,
        name: String,
        id: Option<String>,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    fn domain(
        &self,
        name: String,
    ) -> impl Future<Output = Result<Option<VmReport>, HostError>> + Send;
    /// Every domain on the host, sorted by name.
    fn domains(&self) -> impl Future<Output = Result<Vec<VmReport>, HostError>> + Send;
    /// Live-migrates the running domain `name` to the hypervisor at libvirt URI `to`, peer
    /// to peer: defined there, running there once its memory is copied (the guest pauses
    /// here for the last copy), then undefined here. On failure it runs on here.
    /// `storage_unsafe`: its disks are on storage libvirt cannot tell is shared.
    fn migrate(
        &self,
        name: String,
        to: String,
        storage_unsafe: bool,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
}

pub(crate) fn not_found(name: &str) -> HostError {
    HostError::new(
        HostErrorKind::NotFound,
        format!("no domain {name} on this host"),
    )
}

pub(crate) fn not_running(name: &str) -> HostError {
    HostError::new(
        HostErrorKind::Invalid,
        format!("domain {name} is not running; start it first"),
    )
}

/// Undoes [`escape`] (and the numeric references libvirt may write).
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the first tag of `xml` that starts with `tag`.
fn attribute(xml: &str, tag: &str, name: &str) -> Option<String> {
    let start = xml.find(tag)?;
    let end = start + xml[start..].find('>')?;
    let element = &xml[start..end];
    for quote in ['\'', '"'] {
        let key = format!(" {name}={quote}");
        if let Some(at) = element.find(&key) {
            let value = &element[at + key.len()..];
            return Some(unescape(&value[..value.find(quote)?]));
        }
    }
    None
}

/// The disks of a domain, read from its XML as libvirt writes it (`virsh dumpxml`): each
/// `<disk>` with its target, its file when it is a file, and its format when it is one qvdc
/// knows. Volumes are filled in by the agent, which knows where pools are mounted.
pub fn disks_from_xml(xml: &str) -> Vec<DiskReport> {
    let mut disks = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<disk ") {
        let after = &rest[start..];
        let end = after.find("</disk>").unwrap_or(after.len());
        let disk = &after[..end];
        rest = &after[end..];
        let kind = attribute(disk, "<disk ", "type").unwrap_or_default();
        let file = match kind.as_str() {
            "file" => attribute(disk, "<source ", "file"),
            _ => None,
        };
        let format = match attribute(disk, "<driver ", "type").as_deref() {
            Some("qcow2") => Some(VolumeFormat::Qcow2),
            Some("raw") => Some(VolumeFormat::Raw),
            _ => None,
        };
        disks.push(DiskReport {
            target: attribute(disk, "<target ", "dev").unwrap_or_default(),
            file,
            format,
            volume: None,
        });
    }
    disks
}

/// Escapes text for XML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The metadata element libvirt stores for qvdc, without its namespace prefix (libvirt adds
/// it to the root element; the domain XML writes the same shape).
pub fn metadata_xml(id: &str) -> String {
    format!("<vm><id>{}</id></vm>", escape(id))
}

/// Reads the id back out of [`metadata_xml`] as libvirt returns it (it adds the namespace).
pub fn id_from_metadata(xml: &str) -> Option<String> {
    let start = xml.find("<id>")? + "<id>".len();
    let end = start + xml[start..].find("</id>")?;
    Some(unescape(&xml[start..end]))
}

/// The libvirt domain XML for `spec`: a q35 machine with virtio disks and NICs. `kind` is
/// the domain type: `kvm` on real hosts, `qemu` without KVM, `test` for libvirt's test driver.
/// `uuid` is the existing domain's, when redefining it.
pub fn domain_xml(spec: &DomainSpec, kind: &str, uuid: Option<&str>) -> String {
    let mut xml = format!(
        "<domain type='{kind}'>\n  <name>{}</name>\n",
        escape(&spec.name)
    );
    if let Some(uuid) = uuid {
        xml.push_str(&format!("  <uuid>{}</uuid>\n", escape(uuid)));
    }
    xml.push_str(&format!(
        "  <memory unit='KiB'>{}</memory>\n  <vcpu>{}</vcpu>\n",
        spec.memory_bytes / 1024,
        spec.vcpus
    ));
    xml.push_str(&format!(
        "  <metadata>\n    <{METADATA_PREFIX}:vm xmlns:{METADATA_PREFIX}='{METADATA_NAMESPACE}'><id>{}</id></{METADATA_PREFIX}:vm>\n  </metadata>\n",
        escape(&spec.id)
    ));
    xml.push_str(concat!(
        "  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n    <boot dev='hd'/>\n  </os>\n",
        "  <features>\n    <acpi/>\n  </features>\n",
        "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n",
        "  <devices>\n",
    ));
    for (i, disk) in spec.disks.iter().enumerate() {
        let dev = format!("vd{}", char::from(b'a' + (i % 26) as u8));
        xml.push_str(&format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='{}'/>\n      <source file='{}'/>\n      <target dev='{dev}' bus='virtio'/>\n    </disk>\n",
            disk.format,
            escape(&disk.path.to_string_lossy())
        ));
    }
    for nic in &spec.nics {
        xml.push_str(&format!(
            "    <interface type='bridge'>\n      <source bridge='{}'/>\n",
            escape(&nic.bridge)
        ));
        if let Some(mac) = &nic.mac {
            xml.push_str(&format!("      <mac address='{}'/>\n", escape(mac)));
        }
        xml.push_str("      <model type='virtio'/>\n    </interface>\n");
    }
    xml.push_str("    <console type='pty'/>\n  </devices>\n</domain>\n");
    xml
}

// ---------------------------------------------------------------------------------------
// Simulated hypervisor

#[derive(Debug, Clone)]
struct SimDomain {
    id: Option<String>,
    uuid: String,
    power: PowerState,
    reason: String,
    vcpus: u32,
    memory_bytes: u64,
    disks: Vec<DiskReport>,
    /// How often its guest was booted (started or rebooted) since it was defined.
    boots: u32,
    /// While a live migration brings it here: the source hypervisor. If the guest dies
    /// there first (a power loss), this copy goes too, as QEMU's incoming migration ends
    /// when its source's connection does.
    incoming_from: Option<std::sync::Weak<Mutex<SimState>>>,
}

#[derive(Debug, Default)]
struct SimState {
    domains: BTreeMap<String, SimDomain>,
    /// Every call fails with this message, as when libvirtd is down.
    failure: Option<String>,
    /// The host lost power: nothing reaches this hypervisor any more (its next boot has a
    /// new one).
    powered_off: bool,
    /// Every call waits, as when libvirtd is stopped or deadlocked.
    hung: bool,
    /// Guests that ignore an ACPI shutdown request.
    deaf_guests: bool,
    /// Domains defined so far: each gets the next UUID.
    defined: u64,
    /// The first part of this hypervisor's UUIDs, from its host's name: UUIDs are unique
    /// across hosts, as libvirt's are.
    uuid_prefix: u32,
    /// Every call that changed a domain without qvdc's id (adopting one aside): qvdc must
    /// never touch such a domain, so the simulation checks this stays empty.
    touched_unmanaged: Vec<String>,
}

impl SimState {
    /// Drops the incoming copies whose source guest no longer runs.
    fn prune_incoming(&mut self) {
        self.domains.retain(|name, d| {
            let Some(source) = &d.incoming_from else {
                return true;
            };
            let Some(source) = source.upgrade() else {
                return false;
            };
            // Another hypervisor busy right now (never in the one-threaded simulation):
            // look again next time.
            let Ok(source) = source.try_lock() else {
                return true;
            };
            source
                .domains
                .get(name)
                .is_some_and(|s| matches!(s.power, PowerState::Running | PowerState::Paused))
        });
    }

    fn next_uuid(&mut self) -> String {
        self.defined += 1;
        format!(
            "{:08x}-0000-4000-8000-{:012x}",
            self.uuid_prefix, self.defined
        )
    }

    /// Notes a change to domain `name` by `call` if the domain is not qvdc's.
    fn note_touch(&mut self, name: &str, call: &str) {
        if self.domains.get(name).is_some_and(|d| d.id.is_none()) {
            self.touched_unmanaged.push(format!("{call} {name}"));
        }
    }
}

/// Domains in memory, for the simulation and fast tests. Guests shut down at once when asked
/// unless told to ignore it. No threads, no clocks.
/// Clones share the domains, so a simulation can fault the hypervisor a host agent owns.
#[derive(Debug, Default, Clone)]
pub struct SimHypervisor {
    state: Arc<Mutex<SimState>>,
    /// The shared storage's locks, and this host's pool root (a disk's path below it names
    /// the same file on every host).
    locks: Option<(SimStorageLocks, String, PathBuf)>,
}

/// The write locks QEMU takes on disk images on shared storage, across every simulated
/// hypervisor of a world: a guest cannot start while a guest of another hypervisor runs
/// (or is paused) on one of its disks, as with QEMU's image locks and libvirt's `lockd`.
#[derive(Debug, Default, Clone)]
pub struct SimStorageLocks(Arc<Mutex<Vec<LockHolder>>>);

/// A hypervisor whose guests take storage locks: its host, its pool root, its domains.
#[derive(Debug)]
struct LockHolder {
    host: String,
    root: PathBuf,
    state: std::sync::Weak<Mutex<SimState>>,
}

impl SimStorageLocks {
    /// The disk `path` of a hypervisor whose pools are below `root`, as the storage knows it.
    fn key(root: &Path, path: &str) -> Option<PathBuf> {
        Path::new(path)
            .strip_prefix(root)
            .ok()
            .map(Path::to_path_buf)
    }

    /// A disk of `disks` that a live guest of another hypervisor than `me` holds, and that
    /// hypervisor's host.
    fn held_elsewhere(
        &self,
        me: &Arc<Mutex<SimState>>,
        root: &Path,
        disks: &[DiskReport],
    ) -> Option<(String, String)> {
        let wanted: Vec<PathBuf> = disks
            .iter()
            .filter_map(|d| Self::key(root, d.file.as_deref()?))
            .collect();
        let registry = self.0.lock().expect("storage locks poisoned");
        for holder in registry.iter() {
            let other_root = &holder.root;
            let Some(other) = holder.state.upgrade().filter(|o| !Arc::ptr_eq(o, me)) else {
                continue;
            };
            let other = other.lock().expect("sim hypervisor poisoned");
            let live = other
                .domains
                .values()
                .filter(|d| matches!(d.power, PowerState::Running | PowerState::Paused));
            for disk in live.flat_map(|d| &d.disks) {
                let Some(key) = disk.file.as_deref().and_then(|f| Self::key(other_root, f)) else {
                    continue;
                };
                if wanted.contains(&key) {
                    return Some((key.display().to_string(), holder.host.clone()));
                }
            }
        }
        None
    }
}

impl SimStorageLocks {
    /// The hosts other than `me`'s whose hypervisor runs a guest of VM `id` (paused ones
    /// aside): what the simulation checks whenever a guest starts to run.
    fn running_elsewhere(&self, me: &Arc<Mutex<SimState>>, id: &str) -> Vec<String> {
        let registry = self.0.lock().expect("storage locks poisoned");
        registry
            .iter()
            .filter_map(|holder| {
                let other = holder.state.upgrade().filter(|o| !Arc::ptr_eq(o, me))?;
                let other = other.lock().expect("sim hypervisor poisoned");
                let runs = other
                    .domains
                    .values()
                    .any(|d| d.id.as_deref() == Some(id) && d.power == PowerState::Running);
                runs.then(|| holder.host.clone())
            })
            .collect()
    }

    /// Host `host`'s hypervisor (the latest, if it was made again) and its pool root.
    fn hypervisor_of(&self, host: &str) -> Option<(Arc<Mutex<SimState>>, PathBuf)> {
        let registry = self.0.lock().expect("storage locks poisoned");
        registry
            .iter()
            .rev()
            .filter(|holder| holder.host == host)
            .find_map(|holder| Some((holder.state.upgrade()?, holder.root.clone())))
    }
}

/// How long a simulated live migration copies the guest's memory.
pub const SIM_MIGRATION_MS: u64 = 300;

/// The libvirt URI of a simulated host's hypervisor, where live migrations to it go.
pub fn sim_migration_uri(host: &str) -> String {
    format!("sim://{host}")
}

impl SimHypervisor {
    /// States that domain `name` (of VM `id`) began to run here, and where else a guest of
    /// the VM runs at this moment: the ground truth the simulation checks "never twice"
    /// against.
    fn note_running(&self, name: &str, id: Option<&str>) {
        let (Some((locks, host, _)), Some(id)) = (&self.locks, id) else {
            return;
        };
        qvdc_transport::facts::state(qvdc_transport::facts::Fact::GuestRuns {
            host: host.clone(),
            vm: name.to_owned(),
            elsewhere: locks.running_elsewhere(&self.state, id),
        });
    }

    pub fn new() -> Self {
        Self::default()
    }

    /// Host `host`'s hypervisor, whose guests take `locks` on their disks below
    /// `pool_root`.
    pub fn with_storage_locks(locks: &SimStorageLocks, host: &str, pool_root: PathBuf) -> Self {
        let hypervisor = Self::default();
        hypervisor
            .state
            .lock()
            .expect("sim hypervisor poisoned")
            .uuid_prefix = host.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        locks
            .0
            .lock()
            .expect("storage locks poisoned")
            .push(LockHolder {
                host: host.to_owned(),
                root: pool_root.clone(),
                state: Arc::downgrade(&hypervisor.state),
            });
        Self {
            locks: Some((locks.clone(), host.to_owned(), pool_root)),
            ..hypervisor
        }
    }

    /// The host's agent died while it migrated guests away: libvirtd, not the agent, runs a
    /// peer-to-peer migration, so each one ends as if the agent had lived (the copy runs at
    /// the destination, the domain is undefined here).
    pub fn agent_gone(&self) {
        let Some((locks, here, _)) = &self.locks else {
            return;
        };
        let holders: Vec<(String, Arc<Mutex<SimState>>)> = {
            let registry = locks.0.lock().expect("storage locks poisoned");
            registry
                .iter()
                .filter_map(|h| Some((h.host.clone(), h.state.upgrade()?)))
                .filter(|(_, state)| !Arc::ptr_eq(state, &self.state))
                .collect()
        };
        for (there, dest) in holders {
            let mut dest = dest.lock().expect("sim hypervisor poisoned");
            let arriving: Vec<String> = dest
                .domains
                .iter()
                .filter(|(_, d)| {
                    d.power == PowerState::Paused
                        && d.incoming_from
                            .as_ref()
                            .and_then(std::sync::Weak::upgrade)
                            .is_some_and(|source| Arc::ptr_eq(&source, &self.state))
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in arriving {
                let mut state = self.state.lock().expect("sim hypervisor poisoned");
                if state.domains.get(&name).map(|d| d.power) != Some(PowerState::Running) {
                    continue;
                }
                state.domains.remove(&name);
                drop(state);
                let copy = dest.domains.get_mut(&name).expect("listed above");
                set_power(copy, PowerState::Running, "migrated");
                copy.incoming_from = None;
                let id = copy.id.clone();
                state_moved(here, &there, name, id);
            }
        }
    }

    /// The host lost power: every guest stopped, every lock it held is free.
    pub fn power_loss(&self) {
        let mut state = self.state.lock().expect("sim hypervisor poisoned");
        state.powered_off = true;
        for domain in state.domains.values_mut() {
            if domain.power != PowerState::ShutOff {
                set_power(domain, PowerState::ShutOff, "power lost");
            }
        }
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, SimState>, HostError> {
        let mut state = self.state.lock().expect("sim hypervisor poisoned");
        state.prune_incoming();
        match &state.failure {
            Some(reason) => Err(HostError::new(HostErrorKind::Failed, reason.clone())),
            None => Ok(state),
        }
    }

    /// How often domain `name`'s guest was booted (started or rebooted) since it was
    /// defined; 0 if there is no such domain.
    pub fn boots(&self, name: &str) -> u32 {
        let state = self.state.lock().expect("sim hypervisor poisoned");
        state.domains.get(name).map_or(0, |d| d.boots)
    }

    /// Every defined domain and its power state: what the host really runs.
    pub fn domains(&self) -> BTreeMap<String, PowerState> {
        let mut state = self.state.lock().expect("sim hypervisor poisoned");
        state.prune_incoming();
        state
            .domains
            .iter()
            .map(|(name, d)| (name.clone(), d.power))
            .collect()
    }

    /// Makes every call fail with `reason` (`None` heals it).
    pub fn set_failure(&self, reason: Option<String>) {
        self.state.lock().expect("sim hypervisor poisoned").failure = reason;
    }

    /// While hung, calls do not return, as when libvirtd is stopped or deadlocked; they
    /// resume once it is no longer hung.
    pub fn set_hung(&self, hung: bool) {
        self.state.lock().expect("sim hypervisor poisoned").hung = hung;
    }

    async fn unless_hung(&self) {
        while self.state.lock().expect("sim hypervisor poisoned").hung {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Guests ignore shutdown requests, so only destroying them stops them.
    pub fn set_deaf_guests(&self, deaf: bool) {
        self.state
            .lock()
            .expect("sim hypervisor poisoned")
            .deaf_guests = deaf;
    }

    /// A domain someone else defined on this host (it has no qvdc id), with raw disks on
    /// `files`.
    pub fn add_foreign(&self, name: &str, running: bool, files: &[PathBuf]) {
        let mut state = self.state.lock().expect("sim hypervisor poisoned");
        let disks = files
            .iter()
            .enumerate()
            .map(|(i, file)| DiskReport {
                target: format!("vd{}", char::from(b'a' + (i % 26) as u8)),
                file: Some(file.display().to_string()),
                format: Some(VolumeFormat::Raw),
                volume: None,
            })
            .collect();
        let domain = SimDomain {
            id: None,
            uuid: state.next_uuid(),
            power: if running {
                PowerState::Running
            } else {
                PowerState::ShutOff
            },
            reason: if running { "booted" } else { "unknown" }.into(),
            vcpus: 1,
            memory_bytes: 64 << 20,
            disks,
            boots: u32::from(running),
            incoming_from: None,
        };
        state.domains.insert(name.to_owned(), domain);
    }

    /// The calls that changed a domain qvdc does not manage (see `touched_unmanaged`).
    pub fn touched_unmanaged(&self) -> Vec<String> {
        let state = self.state.lock().expect("sim hypervisor poisoned");
        state.touched_unmanaged.clone()
    }

    fn with_domain<T>(
        &self,
        name: &str,
        call: &str,
        f: impl FnOnce(&mut SimDomain, bool) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        let mut state = self.state()?;
        state.note_touch(name, call);
        let deaf = state.deaf_guests;
        let domain = state.domains.get_mut(name).ok_or_else(|| not_found(name))?;
        f(domain, deaf)
    }
}

/// States that the guest of `vm` left `from` and runs at `to`: a live migration's
/// switch-over, in that order.
fn state_moved(from: &str, to: &str, vm: String, id: Option<String>) {
    use qvdc_transport::facts::{self, Fact, Guest};
    facts::state(Fact::VmOperation {
        host: from.to_owned(),
        vm: vm.clone(),
        op: "migrate-out",
        guest: Guest::Gone,
        id: None,
    });
    facts::state(Fact::VmOperation {
        host: to.to_owned(),
        vm,
        op: "migrate-in",
        guest: Guest::Runs,
        id,
    });
}

fn report(name: &str, d: &SimDomain) -> VmReport {
    VmReport {
        name: name.to_owned(),
        id: d.id.clone(),
        power: d.power,
        reason: d.reason.clone(),
        vcpus: d.vcpus,
        memory_bytes: d.memory_bytes,
        uuid: d.uuid.clone(),
        disks: d.disks.clone(),
    }
}

fn set_power(d: &mut SimDomain, power: PowerState, reason: &str) {
    d.power = power;
    d.reason = reason.to_owned();
}

/// The guest boots: it runs, once more.
fn boot(d: &mut SimDomain) {
    set_power(d, PowerState::Running, "booted");
    d.boots += 1;
}

impl Hypervisor for SimHypervisor {
    async fn describe(&self) -> Result<String, HostError> {
        self.unless_hung().await;
        self.state().map(|_| "simulated hypervisor".to_owned())
    }

    async fn define(&self, spec: DomainSpec) -> Result<(), HostError> {
        self.unless_hung().await;
        let mut state = self.state()?;
        state.note_touch(&spec.name, "define");
        let uuid = state.next_uuid();
        let domain = state
            .domains
            .entry(spec.name.clone())
            .or_insert_with(|| SimDomain {
                id: None,
                uuid,
                power: PowerState::ShutOff,
                reason: "unknown".into(),
                vcpus: 0,
                memory_bytes: 0,
                disks: Vec::new(),
                boots: 0,
                incoming_from: None,
            });
        domain.id = Some(spec.id);
        domain.vcpus = spec.vcpus;
        domain.memory_bytes = spec.memory_bytes;
        domain.disks = spec
            .disks
            .iter()
            .enumerate()
            .map(|(i, disk)| DiskReport {
                target: format!("vd{}", char::from(b'a' + (i % 26) as u8)),
                file: Some(disk.path.display().to_string()),
                format: Some(disk.format),
                volume: None,
            })
            .collect();
        Ok(())
    }

    async fn start(&self, name: String) -> Result<(), HostError> {
        self.unless_hung().await;
        if let Some((locks, host, root)) = &self.locks {
            let disks = {
                let state = self.state()?;
                let domain = state.domains.get(&name).ok_or_else(|| not_found(&name))?;
                domain.disks.clone()
            };
            if let Some((disk, holder)) = locks.held_elsewhere(&self.state, root, &disks) {
                qvdc_transport::facts::state(qvdc_transport::facts::Fact::StorageLockRefused {
                    host: host.clone(),
                    vm: name.clone(),
                    holder,
                });
                return Err(HostError::new(
                    HostErrorKind::Conflict,
                    format!("starting {name}: Failed to get \"write\" lock on {disk}: a guest on another host holds it"),
                ));
            }
        }
        let booted = self.with_domain(&name, "start", |d, _| {
            let boots = d.power != PowerState::Running;
            if boots {
                boot(d);
            }
            Ok(boots.then(|| d.id.clone()))
        })?;
        if let Some(id) = booted {
            self.note_running(&name, id.as_deref());
        }
        Ok(())
    }

    async fn shutdown(&self, name: String) -> Result<(), HostError> {
        self.unless_hung().await;
        self.with_domain(&name, "shutdown", |d, deaf| {
            if d.power == PowerState::Running && !deaf {
                set_power(d, PowerState::ShutOff, "shutdown");
            }
            Ok(())
        })
    }

    async fn destroy(&self, name: String) -> Result<(), HostError> {
        self.unless_hung().await;
        self.with_domain(&name, "destroy", |d, _| {
            if d.power != PowerState::ShutOff {
                set_power(d, PowerState::ShutOff, "destroyed");
            }
            Ok(())
        })
    }

    async fn reboot(&self, name: String) -> Result<(), HostError> {
        self.unless_hung().await;
        self.with_domain(&name, "reboot", |d, _| {
            if d.power != PowerState::Running {
                return Err(not_running(&name));
            }
            boot(d);
            Ok(())
        })
    }

    async fn undefine(&self, name: String) -> Result<(), HostError> {
        self.unless_hung().await;
        let mut state = self.state()?;
        state.note_touch(&name, "undefine");
        state.domains.remove(&name);
        Ok(())
    }

    async fn rename(&self, name: String, to: String) -> Result<(), HostError> {
        self.unless_hung().await;
        // Renaming for an adoption is, with the id, the one change an unmanaged domain may see.
        let mut state = self.state()?;
        let domain = state.domains.get(&name).ok_or_else(|| not_found(&name))?;
        if domain.power != PowerState::ShutOff {
            return Err(HostError::new(
                HostErrorKind::Invalid,
                format!("domain {name} is running; only a shut-off domain can be renamed"),
            ));
        }
        if state.domains.contains_key(&to) {
            return Err(HostError::new(
                HostErrorKind::Conflict,
                format!("a domain named {to} exists already"),
            ));
        }
        let domain = state.domains.remove(&name).expect("just seen");
        state.domains.insert(to, domain);
        Ok(())
    }

    async fn set_id(&self, name: String, id: Option<String>) -> Result<(), HostError> {
        self.unless_hung().await;
        // Adopting is the one change an unmanaged domain may see.
        let mut state = self.state()?;
        let domain = state
            .domains
            .get_mut(&name)
            .ok_or_else(|| not_found(&name))?;
        domain.id = id;
        Ok(())
    }

    async fn domain(&self, name: String) -> Result<Option<VmReport>, HostError> {
        self.unless_hung().await;
        Ok(self.state()?.domains.get(&name).map(|d| report(&name, d)))
    }

    async fn domains(&self) -> Result<Vec<VmReport>, HostError> {
        self.unless_hung().await;
        let state = self.state()?;
        Ok(state.domains.iter().map(|(n, d)| report(n, d)).collect())
    }

    /// As libvirt does it: a paused copy is defined at the destination, the memory is
    /// copied ([`SIM_MIGRATION_MS`]), then the guest pauses here and runs there, and the
    /// domain is undefined here. Fails, with the guest running on here, if the guest or
    /// the copy stopped meanwhile (a power loss) or the destination cannot be reached.
    async fn migrate(
        &self,
        name: String,
        to: String,
        _storage_unsafe: bool,
    ) -> Result<(), HostError> {
        use qvdc_transport::facts::Fact;
        self.unless_hung().await;
        let failed = |message: String| HostError::new(HostErrorKind::Failed, message);
        let Some((locks, here, root)) = &self.locks else {
            return Err(failed(format!(
                "migrating {name}: this hypervisor has no peers"
            )));
        };
        let there = to.strip_prefix("sim://").unwrap_or_default();
        let (dest, dest_root) = locks
            .hypervisor_of(there)
            .filter(|(dest, _)| !Arc::ptr_eq(dest, &self.state))
            .ok_or_else(|| failed(format!("migrating {name}: unable to connect to {to}")))?;
        let mut copy = {
            let state = self.state()?;
            let domain = state.domains.get(&name).ok_or_else(|| not_found(&name))?;
            if domain.power != PowerState::Running {
                return Err(not_running(&name));
            }
            domain.clone()
        };
        // The same files, as the destination names them.
        for disk in &mut copy.disks {
            let key = disk
                .file
                .as_deref()
                .and_then(|f| SimStorageLocks::key(root, f));
            disk.file = key.map(|k| dest_root.join(k).display().to_string());
        }
        set_power(&mut copy, PowerState::Paused, "migrating in");
        copy.incoming_from = Some(Arc::downgrade(&self.state));
        let copy_id = copy.id.clone();
        {
            let mut dest = dest.lock().expect("sim hypervisor poisoned");
            if dest.powered_off {
                return Err(failed(format!(
                    "migrating {name}: unable to connect to {to}: no route to host"
                )));
            }
            if let Some(reason) = &dest.failure {
                return Err(failed(format!("migrating {name}: {to}: {reason}")));
            }
            if dest.domains.contains_key(&name) {
                return Err(HostError::new(
                    HostErrorKind::Conflict,
                    format!("migrating {name}: domain {name} already exists at {to}"),
                ));
            }
            dest.domains.insert(name.clone(), copy);
        }
        tokio::time::sleep(std::time::Duration::from_millis(SIM_MIGRATION_MS)).await;
        let arrived = |dest: &mut SimState| {
            dest.domains
                .get(&name)
                .is_some_and(|d| d.power == PowerState::Paused)
        };
        let give_up = |why: &str| {
            let mut dest = dest.lock().expect("sim hypervisor poisoned");
            if arrived(&mut dest)
                || dest
                    .domains
                    .get(&name)
                    .is_some_and(|d| d.power == PowerState::ShutOff)
            {
                dest.domains.remove(&name);
            }
            failed(format!("migrating {name} to {to}: {why}"))
        };
        // The deliberate bug: the copy runs before the original pauses.
        let early =
            qvdc_transport::bugs::active(qvdc_transport::bugs::Bug::MigrationResumesBeforePause);
        if early {
            if let Some(d) = dest
                .lock()
                .expect("sim hypervisor poisoned")
                .domains
                .get_mut(&name)
            {
                set_power(d, PowerState::Running, "migrated");
            }
            let id = copy_id.as_deref().unwrap_or_default();
            qvdc_transport::facts::state(Fact::GuestRuns {
                host: there.to_owned(),
                vm: name.clone(),
                elsewhere: locks.running_elsewhere(&dest, id),
            });
            if let Some(d) = dest
                .lock()
                .expect("sim hypervisor poisoned")
                .domains
                .get_mut(&name)
            {
                set_power(d, PowerState::Paused, "migrating in");
            }
        }
        {
            let mut state = self.state.lock().expect("sim hypervisor poisoned");
            match state.domains.get_mut(&name) {
                Some(d) if d.power == PowerState::Running => {
                    set_power(d, PowerState::Paused, "migrating out")
                }
                _ => {
                    drop(state);
                    return Err(give_up("the guest stopped during the migration"));
                }
            }
        }
        let resumed = {
            let mut dest = dest.lock().expect("sim hypervisor poisoned");
            match dest.domains.get_mut(&name) {
                Some(d) if d.power == PowerState::Paused && d.incoming_from.is_some() => {
                    set_power(d, PowerState::Running, "migrated");
                    d.incoming_from = None;
                    true
                }
                _ => false,
            }
        };
        if resumed {
            let id = copy_id.as_deref().unwrap_or_default();
            qvdc_transport::facts::state(Fact::GuestRuns {
                host: there.to_owned(),
                vm: name.clone(),
                elsewhere: locks.running_elsewhere(&dest, id),
            });
        }
        let mut state = self.state.lock().expect("sim hypervisor poisoned");
        if !resumed {
            if let Some(d) = state.domains.get_mut(&name) {
                set_power(d, PowerState::Running, "migration failed");
            }
            drop(state);
            return Err(give_up("the destination lost the guest"));
        }
        state.domains.remove(&name);
        state_moved(here, there, name, copy_id);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! The behaviour every `Hypervisor` must show, run against the simulated one here and
    //! against libvirt (test driver and real KVM) in `libvirt`.

    use super::*;

    pub(crate) fn spec(name: &str, id: &str) -> DomainSpec {
        DomainSpec {
            id: id.into(),
            name: name.into(),
            vcpus: 1,
            memory_bytes: 64 << 20,
            disks: Vec::new(),
            nics: Vec::new(),
        }
    }

    async fn power(h: &impl Hypervisor, name: &str) -> PowerState {
        h.domain(name.into())
            .await
            .unwrap()
            .expect("domain exists")
            .power
    }

    /// Waits (in tokio time) until the domain is in `want`, for at most `ms`.
    pub(crate) async fn wait_power(h: &impl Hypervisor, name: &str, want: PowerState, ms: u64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
        loop {
            let now = power(h, name).await;
            if now == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} is {now}, not {want}, after {ms} ms"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// `name` must be unique to the run (real libvirt keeps domains between runs).
    pub(crate) async fn lifecycle(h: &impl Hypervisor, name: &str) {
        assert!(!h.describe().await.unwrap().is_empty());
        assert_eq!(h.domain(name.into()).await.unwrap(), None);
        h.define(spec(name, "vm-1")).await.unwrap();
        h.define(spec(name, "vm-1"))
            .await
            .expect("defining again is idempotent");
        let defined = h.domain(name.into()).await.unwrap().unwrap();
        assert_eq!(
            (
                defined.id.as_deref(),
                defined.power,
                defined.vcpus,
                defined.memory_bytes
            ),
            (Some("vm-1"), PowerState::ShutOff, 1, 64 << 20)
        );
        assert!(h.domains().await.unwrap().iter().any(|d| d.name == name));

        let err = h.reboot(name.into()).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Invalid, "{err}");
        h.start(name.into()).await.unwrap();
        h.start(name.into())
            .await
            .expect("starting twice is idempotent");
        let running = h.domain(name.into()).await.unwrap().unwrap();
        assert_eq!(running.power, PowerState::Running);
        h.destroy(name.into()).await.unwrap();
        let off = h.domain(name.into()).await.unwrap().unwrap();
        assert_eq!(
            (off.power, off.reason.as_str()),
            (PowerState::ShutOff, "destroyed")
        );
        h.destroy(name.into())
            .await
            .expect("destroying twice is idempotent");
        h.shutdown(name.into())
            .await
            .expect("shutting down a stopped domain is fine");

        let renamed = format!("{name}-renamed");
        h.rename(name.into(), renamed.clone()).await.unwrap();
        assert_eq!(h.domain(name.into()).await.unwrap(), None);
        let moved = h.domain(renamed.clone()).await.unwrap().unwrap();
        assert_eq!(moved.uuid, defined.uuid, "renamed, it is the same domain");
        h.rename(renamed, name.into()).await.unwrap();
        h.set_id(name.into(), Some("vm-2".into())).await.unwrap();
        let adopted = h.domain(name.into()).await.unwrap().unwrap();
        assert_eq!(adopted.id.as_deref(), Some("vm-2"));
        assert_eq!(adopted.uuid, defined.uuid, "a domain keeps its UUID");
        assert!(!adopted.uuid.is_empty());
        h.set_id(name.into(), None).await.unwrap();
        h.set_id(name.into(), None)
            .await
            .expect("releasing twice is idempotent");
        let released = h.domain(name.into()).await.unwrap().unwrap();
        assert_eq!(released.id, None);
        h.set_id(name.into(), Some("vm-2".into())).await.unwrap();

        h.start(name.into()).await.unwrap();
        h.undefine(name.into())
            .await
            .expect("a running domain is destroyed, then undefined");
        assert_eq!(h.domain(name.into()).await.unwrap(), None);
        h.undefine(name.into())
            .await
            .expect("undefining twice is idempotent");
        let err = h.start(name.into()).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::NotFound, "{err}");
    }

    #[tokio::test]
    async fn sim_hypervisor_conforms() {
        lifecycle(&SimHypervisor::new(), "sim-vm").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_simulated_live_migration_moves_the_running_guest_once_or_leaves_it_running() {
        let locks = SimStorageLocks::default();
        let a = SimHypervisor::with_storage_locks(&locks, "host-1", "/a/pools".into());
        let b = SimHypervisor::with_storage_locks(&locks, "host-2", "/b/pools".into());
        let mut web = spec("web", "vm-1");
        web.disks.push(DomainDisk {
            path: "/a/pools/shared/web.qcow2".into(),
            format: VolumeFormat::Qcow2,
        });
        a.define(web).await.unwrap();
        let to_b = sim_migration_uri("host-2");
        let err = a
            .migrate("web".into(), to_b.clone(), false)
            .await
            .unwrap_err();
        assert_eq!(
            err.kind,
            HostErrorKind::Invalid,
            "only a running guest migrates: {err}"
        );
        a.start("web".into()).await.unwrap();
        a.migrate("web".into(), to_b.clone(), false).await.unwrap();
        assert!(a.domains().is_empty(), "undefined at the source");
        let there = b.domain("web".into()).await.unwrap().unwrap();
        assert_eq!(there.power, PowerState::Running);
        assert_eq!(there.id.as_deref(), Some("vm-1"));
        assert_eq!(b.boots("web"), 1, "the same guest, not booted again");
        assert_eq!(
            there.disks[0].file.as_deref(),
            Some("/b/pools/shared/web.qcow2"),
            "the same file, as the destination names it"
        );

        // The destination loses power during the copy: the guest runs on at the source.
        let back = sim_migration_uri("host-1");
        let migrating = tokio::spawn({
            let b = b.clone();
            async move { b.migrate("web".into(), back, false).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(SIM_MIGRATION_MS / 2)).await;
        assert_eq!(a.domains()["web"], PowerState::Paused, "arriving, paused");
        a.power_loss();
        let err = migrating.await.unwrap().unwrap_err();
        assert!(err.message.contains("lost the guest"), "{err}");
        assert_eq!(b.domains()["web"], PowerState::Running);
        assert!(
            !a.domains().contains_key("web"),
            "no half-migrated domain left"
        );

        // Nowhere to go.
        let err = b
            .migrate("web".into(), sim_migration_uri("host-9"), false)
            .await
            .unwrap_err();
        assert!(err.message.contains("unable to connect"), "{err}");
        assert_eq!(b.domains()["web"], PowerState::Running);
    }

    #[tokio::test]
    async fn sim_guest_shuts_down_when_asked_unless_deaf() {
        let h = SimHypervisor::new();
        h.define(spec("a", "1")).await.unwrap();
        h.start("a".into()).await.unwrap();
        h.set_deaf_guests(true);
        h.shutdown("a".into()).await.unwrap();
        assert_eq!(power(&h, "a").await, PowerState::Running);
        h.set_deaf_guests(false);
        h.shutdown("a".into()).await.unwrap();
        assert_eq!(power(&h, "a").await, PowerState::ShutOff);
    }

    #[test]
    fn domain_xml_is_a_q35_machine_with_virtio_devices_and_the_vm_id() {
        let spec = DomainSpec {
            disks: vec![DomainDisk {
                path: "/data/pools/p1/web's disk.qcow2".into(),
                format: VolumeFormat::Qcow2,
            }],
            nics: vec![DomainNic {
                bridge: "br-prod".into(),
                mac: Some("52:54:00:00:00:01".into()),
            }],
            ..spec("web-1", "vm-7")
        };
        expect_test::expect![[r#"
            <domain type='kvm'>
              <name>web-1</name>
              <memory unit='KiB'>65536</memory>
              <vcpu>1</vcpu>
              <metadata>
                <qvdc:vm xmlns:qvdc='https://qvdc.dev/xmlns/vm/1'><id>vm-7</id></qvdc:vm>
              </metadata>
              <os>
                <type arch='x86_64' machine='q35'>hvm</type>
                <boot dev='hd'/>
              </os>
              <features>
                <acpi/>
              </features>
              <on_poweroff>destroy</on_poweroff>
              <on_reboot>restart</on_reboot>
              <on_crash>destroy</on_crash>
              <devices>
                <disk type='file' device='disk'>
                  <driver name='qemu' type='qcow2'/>
                  <source file='/data/pools/p1/web&apos;s disk.qcow2'/>
                  <target dev='vda' bus='virtio'/>
                </disk>
                <interface type='bridge'>
                  <source bridge='br-prod'/>
                  <mac address='52:54:00:00:00:01'/>
                  <model type='virtio'/>
                </interface>
                <console type='pty'/>
              </devices>
            </domain>
        "#]]
        .assert_eq(&domain_xml(&spec, "kvm", None));
    }

    #[test]
    fn disks_are_read_from_domain_xml_as_libvirt_writes_it() {
        let xml = r#"<domain type='kvm'>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/srv/pools/p1/db&apos;s.qcow2' index='2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type="block" device="disk">
      <driver name="qemu" type="raw"/>
      <source dev="/dev/sdb"/>
      <target dev="vdb" bus="virtio"/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='vmdk'/>
      <target dev='sda' bus='sata'/>
    </disk>
  </devices>
</domain>"#;
        let disks = disks_from_xml(xml);
        let seen: Vec<_> = disks
            .iter()
            .map(|d| (d.target.as_str(), d.file.as_deref(), d.format))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "vda",
                    Some("/srv/pools/p1/db's.qcow2"),
                    Some(VolumeFormat::Qcow2)
                ),
                ("vdb", None, Some(VolumeFormat::Raw)),
                ("sda", None, None),
            ]
        );
        assert!(disks_from_xml(&domain_xml(&spec("a", "1"), "test", None)).is_empty());
        let with_disk = DomainSpec {
            disks: vec![DomainDisk {
                path: "/p/a.raw".into(),
                format: VolumeFormat::Raw,
            }],
            ..spec("a", "1")
        };
        let ours = disks_from_xml(&domain_xml(&with_disk, "test", None));
        assert_eq!(ours[0].file.as_deref(), Some("/p/a.raw"));
        assert_eq!(ours[0].format, Some(VolumeFormat::Raw));
    }

    #[test]
    fn the_id_survives_a_round_trip_through_metadata() {
        let xml = format!(
            "<qvdc:vm xmlns:qvdc=\"{METADATA_NAMESPACE}\">{}</qvdc:vm>",
            metadata_xml("a<b&c")
        );
        assert_eq!(id_from_metadata(&xml).as_deref(), Some("a<b&c"));
        assert_eq!(id_from_metadata("<vm/>"), None);
    }
}
