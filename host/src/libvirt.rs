//! The `Hypervisor` on libvirt (crate `virt`). libvirt calls block, sometimes for seconds (a
//! destroy waits for QEMU to exit), so each runs on a blocking thread; the VM actors bound
//! the wait. One connection is shared by all calls (libvirt connections are thread-safe) and
//! opened again when it dies, so the agent survives a libvirtd restart.

use std::sync::{Arc, Mutex, Once};

use qvdc_transport::protocol::{HostError, HostErrorKind, PowerState, VmReport};
use virt::{
    connect::Connect,
    domain::{Domain, DomainState, MigrateParameters},
    error::ErrorNumber,
    sys,
};

use crate::hypervisor::{
    disks_from_xml, domain_xml, id_from_metadata, metadata_xml, not_found, not_running, DomainSpec,
    Hypervisor, METADATA_NAMESPACE, METADATA_PREFIX,
};

/// The URI of the local system hypervisor.
pub const SYSTEM_URI: &str = "qemu:///system";

/// libvirt at one URI: `qemu:///system` on real hosts, `test:///default` for fast tests.
#[derive(Clone)]
pub struct Libvirt {
    uri: String,
    connection: Arc<Mutex<Option<Arc<Connect>>>>,
}

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirt").field("uri", &self.uri).finish()
    }
}

fn failed(what: &str, e: &virt::error::Error) -> HostError {
    let kind = if e.code().is(ErrorNumber::NoDomain) {
        HostErrorKind::NotFound
    } else {
        HostErrorKind::Failed
    };
    HostError::new(kind, format!("{what}: {}", e.message()))
}

/// libvirt's versions are `major * 1_000_000 + minor * 1_000 + release`.
fn version(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, v / 1_000 % 1_000, v % 1_000)
}

fn power(state: DomainState) -> PowerState {
    match state {
        DomainState::Running | DomainState::Blocked => PowerState::Running,
        DomainState::Paused => PowerState::Paused,
        DomainState::Shutdown => PowerState::ShuttingDown,
        DomainState::Shutoff => PowerState::ShutOff,
        DomainState::Crashed => PowerState::Crashed,
        DomainState::PMSuspended => PowerState::Suspended,
        DomainState::NoState => PowerState::Unknown,
    }
}

fn report(domain: &Domain) -> Result<VmReport, HostError> {
    let name = domain
        .name()
        .map_err(|e| failed("reading a domain's name", &e))?;
    let what = format!("inspecting domain {name}");
    let (state, reason) = domain.state().map_err(|e| failed(&what, &e))?;
    let info = domain.info().map_err(|e| failed(&what, &e))?;
    let id = match domain.metadata(
        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(METADATA_NAMESPACE),
        0,
    ) {
        Ok(xml) => id_from_metadata(&xml),
        Err(e) if e.code().is(ErrorNumber::NoDomainMetadata) => None,
        Err(e) => return Err(failed(&what, &e)),
    };
    let uuid = domain.uuid_string().map_err(|e| failed(&what, &e))?;
    let xml = domain.xml_desc(0).map_err(|e| failed(&what, &e))?;
    Ok(VmReport {
        name,
        id,
        power: power(state.unwrap_or(DomainState::NoState)),
        reason: reason.to_string(),
        vcpus: info.nr_virt_cpu,
        memory_bytes: info.max_mem * 1024,
        uuid,
        disks: disks_from_xml(&xml),
    })
}

impl Libvirt {
    /// Connects lazily: the agent starts (and mounts pools) even while libvirtd is down.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            connection: Arc::new(Mutex::new(None)),
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The live connection, opened (again) if there is none.
    fn connect(&self) -> Result<Arc<Connect>, HostError> {
        static QUIET: Once = Once::new();
        // libvirt prints every error to stderr by default; ours are returned and logged.
        QUIET.call_once(virt::error::clear_error_callback);
        let mut slot = self.connection.lock().expect("libvirt connection poisoned");
        if let Some(connection) = slot.as_ref() {
            if connection.is_alive().unwrap_or(false) {
                return Ok(connection.clone());
            }
        }
        let connection = Connect::open(Some(&self.uri)).map_err(|e| {
            HostError::new(
                HostErrorKind::Failed,
                format!(
                    "cannot connect to libvirt at {}: {}; is libvirtd running?",
                    self.uri,
                    e.message()
                ),
            )
        })?;
        let connection = Arc::new(connection);
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `f` with the connection on a blocking thread.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connect) -> Result<T, HostError> + Send + 'static,
    ) -> Result<T, HostError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&*this.connect()?))
            .await
            .map_err(|e| {
                HostError::new(HostErrorKind::Failed, format!("libvirt call panicked: {e}"))
            })?
    }

    /// Runs `f` on domain `name`, which must exist.
    async fn with_domain<T: Send + 'static>(
        &self,
        name: String,
        f: impl FnOnce(&Domain, &str) -> Result<T, HostError> + Send + 'static,
    ) -> Result<T, HostError> {
        self.call(move |connection| {
            let domain = connection.lookup_domain_by_name(&name).map_err(|e| {
                if e.code().is(ErrorNumber::NoDomain) {
                    not_found(&name)
                } else {
                    failed(&format!("looking up domain {name}"), &e)
                }
            })?;
            f(&domain, &name)
        })
        .await
    }
}

/// Where QEMU sends the guest's memory for a migration to libvirt at `uri`: the same
/// address, QEMU's own port (libvirt picks it). `None` lets libvirt ask the other side for
/// its host name, which may not resolve to it.
fn migration_data_uri(uri: &str) -> Option<String> {
    let authority = uri.split_once("://")?.1.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = match authority.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next()?),
        None => authority.split(':').next()?.to_owned(),
    };
    (!host.is_empty() && host != "[]").then(|| format!("tcp://{host}"))
}

fn active(domain: &Domain, name: &str) -> Result<bool, HostError> {
    domain
        .is_active()
        .map_err(|e| failed(&format!("inspecting domain {name}"), &e))
}

impl Hypervisor for Libvirt {
    async fn describe(&self) -> Result<String, HostError> {
        self.call(|connection| {
            let what = "asking libvirt for its versions";
            let driver = connection.driver_type().map_err(|e| failed(what, &e))?;
            let hypervisor = connection.hyp_version().map_err(|e| failed(what, &e))?;
            let library = connection.lib_version().map_err(|e| failed(what, &e))?;
            Ok(format!(
                "{driver} {} (libvirt {})",
                version(hypervisor),
                version(library)
            ))
        })
        .await
    }

    async fn define(&self, spec: DomainSpec) -> Result<(), HostError> {
        self.call(move |connection| {
            let kind = match connection.driver_type() {
                Ok(driver) if driver.eq_ignore_ascii_case("test") => "test",
                _ if std::path::Path::new("/dev/kvm").exists() => "kvm",
                _ => "qemu",
            };
            // Redefining keeps the domain's identity: libvirt refuses a second uuid per name.
            let uuid = match connection.lookup_domain_by_name(&spec.name) {
                Ok(existing) => Some(
                    existing
                        .uuid_string()
                        .map_err(|e| failed(&format!("inspecting domain {}", spec.name), &e))?,
                ),
                Err(e) if e.code().is(ErrorNumber::NoDomain) => None,
                Err(e) => return Err(failed(&format!("looking up domain {}", spec.name), &e)),
            };
            let xml = domain_xml(&spec, kind, uuid.as_deref());
            connection
                .define_domain_xml(&xml)
                .map(drop)
                .map_err(|e| failed(&format!("defining domain {}", spec.name), &e))
        })
        .await
    }

    async fn start(&self, name: String) -> Result<(), HostError> {
        self.with_domain(name, |domain, name| {
            if active(domain, name)? {
                return Ok(());
            }
            domain
                .create()
                .map_err(|e| failed(&format!("starting domain {name}"), &e))
        })
        .await
    }

    async fn shutdown(&self, name: String) -> Result<(), HostError> {
        self.with_domain(name, |domain, name| {
            if !active(domain, name)? {
                return Ok(());
            }
            domain
                .shutdown()
                .map_err(|e| failed(&format!("shutting down domain {name}"), &e))
        })
        .await
    }

    async fn destroy(&self, name: String) -> Result<(), HostError> {
        self.with_domain(name, |domain, name| {
            if !active(domain, name)? {
                return Ok(());
            }
            domain
                .destroy()
                .map_err(|e| failed(&format!("destroying domain {name}"), &e))
        })
        .await
    }

    async fn reboot(&self, name: String) -> Result<(), HostError> {
        self.with_domain(name, |domain, name| {
            if !active(domain, name)? {
                return Err(not_running(name));
            }
            domain
                .reboot(0)
                .map_err(|e| failed(&format!("rebooting domain {name}"), &e))
        })
        .await
    }

    async fn undefine(&self, name: String) -> Result<(), HostError> {
        let result = self
            .with_domain(name, |domain, name| {
                if active(domain, name)? {
                    domain
                        .destroy()
                        .map_err(|e| failed(&format!("destroying domain {name}"), &e))?;
                }
                domain
                    .undefine()
                    .map_err(|e| failed(&format!("undefining domain {name}"), &e))
            })
            .await;
        match result {
            Err(e) if e.kind == HostErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn rename(&self, name: String, to: String) -> Result<(), HostError> {
        self.with_domain(name, move |domain, name| {
            domain
                .rename(&to, 0)
                .map_err(|e| failed(&format!("renaming domain {name} to {to}"), &e))
        })
        .await
    }

    async fn set_id(&self, name: String, id: Option<String>) -> Result<(), HostError> {
        self.with_domain(name, move |domain, name| {
            let mut flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
            if active(domain, name)? {
                flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
            }
            domain
                .set_metadata(
                    sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                    id.as_deref().map(metadata_xml).as_deref(),
                    id.as_ref().map(|_| METADATA_PREFIX),
                    Some(METADATA_NAMESPACE),
                    flags,
                )
                .map_err(|e| failed(&format!("changing the qvdc metadata of domain {name}"), &e))
        })
        .await
    }

    async fn domain(&self, name: String) -> Result<Option<VmReport>, HostError> {
        match self.with_domain(name, |domain, _| report(domain)).await {
            Ok(report) => Ok(Some(report)),
            Err(e) if e.kind == HostErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn migrate(
        &self,
        name: String,
        to: String,
        storage_unsafe: bool,
    ) -> Result<(), HostError> {
        self.with_domain(name, move |domain, name| {
            if !active(domain, name)? {
                return Err(not_running(name));
            }
            let mut flags = sys::VIR_MIGRATE_LIVE
                | sys::VIR_MIGRATE_PEER2PEER
                | sys::VIR_MIGRATE_PERSIST_DEST
                | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
            if storage_unsafe {
                flags |= sys::VIR_MIGRATE_UNSAFE;
            }
            let parameters = MigrateParameters {
                uri: migration_data_uri(&to),
                ..Default::default()
            };
            domain
                .migrate_to_uri3(Some(&to), parameters, flags)
                .map_err(|e| failed(&format!("migrating domain {name} to {to}"), &e))
        })
        .await
    }

    async fn domains(&self) -> Result<Vec<VmReport>, HostError> {
        self.call(|connection| {
            let domains = connection
                .list_all_domains(0)
                .map_err(|e| failed("listing domains", &e))?;
            let mut reports = Vec::with_capacity(domains.len());
            for domain in &domains {
                match report(domain) {
                    Ok(report) => reports.push(report),
                    // Undefined between the listing and the look: it is gone, not an error.
                    Err(e) if e.kind == HostErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            reports.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(reports)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::hypervisor::conformance::{lifecycle, spec, wait_power};

    #[test]
    fn guest_memory_goes_to_the_address_of_the_libvirt_uri() {
        let data = |uri| migration_data_uri(uri);
        assert_eq!(
            data("qemu+tcp://10.77.0.12/system").as_deref(),
            Some("tcp://10.77.0.12")
        );
        assert_eq!(
            data("qemu+tls://root@host-2.lab:16514/system").as_deref(),
            Some("tcp://host-2.lab")
        );
        assert_eq!(
            data("qemu+ssh://[fd00::2]:22/system").as_deref(),
            Some("tcp://[fd00::2]")
        );
        assert_eq!(data("qemu:///system"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn libvirt_test_driver_conforms() {
        let libvirt = Libvirt::new("test:///default");
        lifecycle(&libvirt, "qvdc-conformance").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_domain_destroyed_behind_our_back_is_seen_as_destroyed() {
        let libvirt = Libvirt::new("test:///default");
        libvirt.define(spec("behind", "vm-1")).await.unwrap();
        libvirt.start("behind".into()).await.unwrap();
        // Someone else (virsh, on a real host) pulls the plug through their own handle.
        libvirt
            .with_domain("behind".into(), |domain, _| {
                domain.destroy().map_err(|e| failed("destroy", &e))
            })
            .await
            .unwrap();
        let seen = libvirt.domain("behind".into()).await.unwrap().unwrap();
        assert_eq!(
            (seen.power, seen.reason.as_str()),
            (PowerState::ShutOff, "destroyed")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_libvirt_is_a_typed_error_naming_the_uri() {
        let libvirt = Libvirt::new("qemu+unix:///system?socket=/nonexistent/libvirt-sock");
        let err = libvirt.domains().await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Failed);
        assert!(err.message.contains("is libvirtd running?"), "{err}");
    }

    /// Whether real libvirt with KVM is here. Without it the test skips — unless
    /// QVDC_REQUIRE_REAL=1 says the environment was set up for it, and then it fails.
    async fn system_libvirt() -> Option<Libvirt> {
        let required = std::env::var("QVDC_REQUIRE_REAL").is_ok_and(|v| v == "1");
        let libvirt = Libvirt::new(SYSTEM_URI);
        let kvm = std::path::Path::new("/dev/kvm").exists();
        match libvirt.describe().await {
            Ok(_) if kvm => Some(libvirt),
            outcome => {
                assert!(
                    !required,
                    "QVDC_REQUIRE_REAL=1 but libvirt with KVM is not usable (/dev/kvm: {kvm}, libvirt: {outcome:?}); run scripts/setup.sh"
                );
                None
            }
        }
    }

    /// Removes a domain from the real libvirt when dropped, so a failed test leaves none.
    struct Forget(String);

    impl Drop for Forget {
        fn drop(&mut self) {
            for verb in ["destroy", "undefine"] {
                let _ = std::process::Command::new("virsh")
                    .args(["-c", SYSTEM_URI, verb, &self.0])
                    .output();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_kvm_conforms_needs_libvirtd() {
        let Some(libvirt) = system_libvirt().await else {
            return;
        };
        let name = format!("qvdc-conformance-{}", std::process::id());
        let _cleanup = Forget(name.clone());
        lifecycle(&libvirt, &name).await;

        // A running guest without an OS ignores ACPI; time what a start and a destroy cost.
        libvirt.define(spec(&name, "vm-kvm")).await.unwrap();
        let started = Instant::now();
        libvirt.start(name.clone()).await.unwrap();
        let start_ms = started.elapsed().as_millis();
        wait_power(&libvirt, &name, PowerState::Running, 5_000).await;
        let stopped = Instant::now();
        libvirt.destroy(name.clone()).await.unwrap();
        let destroy_ms = stopped.elapsed().as_millis();
        libvirt.undefine(name.clone()).await.unwrap();
        eprintln!("KVM: start {start_ms} ms, destroy {destroy_ms} ms");
    }
}
