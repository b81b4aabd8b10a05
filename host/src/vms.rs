//! The host's VMs. Each domain qvdc acts on is owned by its own actor (a task with a mailbox)
//! that runs that domain's operations one at a time, so a guest that takes a minute to shut
//! down holds up nothing but itself. Domains qvdc did not create are reported and never
//! touched until adopted.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use qvdc_transport::{
    facts::{self, Fact, Guest},
    protocol::{CommandOutput, HostError, HostErrorKind, PowerState, VmReport},
};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::hypervisor::{DomainSpec, Hypervisor};

/// How long one hypervisor call may take before it fails as timed out.
pub const HYPERVISOR_CALL_TIMEOUT_MS: u64 = 30_000;
/// How often a shutting-down domain is looked at.
pub const SHUTDOWN_POLL_MS: u64 = 250;

/// An operation on one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOp {
    Define(DomainSpec),
    Start,
    /// Graceful shutdown; destroyed if still running after `timeout_ms`.
    Shutdown {
        timeout_ms: u64,
    },
    Reboot,
    ForceOff,
    Undefine,
    /// Records `id` in the domain, which must be the one with libvirt UUID `uuid` and
    /// must not be another VM's.
    Adopt {
        id: String,
        uuid: String,
        /// Only check that it may be adopted; change nothing.
        dry: bool,
    },
    /// Removes VM `id`'s metadata from the domain; a domain without it, or gone, is fine.
    Release {
        id: String,
        /// Only check that it may be released; change nothing.
        dry: bool,
    },
    /// Renames the unmanaged, shut-off domain with libvirt UUID `uuid` to `to`, for adopting
    /// it under another name; done already if it has that name.
    Rename {
        to: String,
        uuid: String,
    },
    /// Live-migrates the running domain of VM `id` to the hypervisor at `to`.
    Migrate {
        id: String,
        to: String,
        storage_unsafe: bool,
    },
}

impl VmOp {
    /// What the operation does to the guest when it succeeds.
    fn guest(&self) -> Guest {
        match self {
            VmOp::Start | VmOp::Reboot => Guest::Runs,
            // A released guest runs on, but no longer as this VM: the name is free again.
            VmOp::Shutdown { .. } | VmOp::ForceOff | VmOp::Undefine => Guest::Gone,
            VmOp::Release { dry: false, .. } => Guest::Gone,
            // The hypervisor states where the guest went, at the moment it moves.
            VmOp::Define(_)
            | VmOp::Migrate { .. }
            | VmOp::Adopt { .. }
            | VmOp::Release { dry: true, .. }
            | VmOp::Rename { .. } => Guest::Unchanged,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            VmOp::Define(_) => "define",
            VmOp::Start => "start",
            VmOp::Shutdown { .. } => "shutdown",
            VmOp::Reboot => "reboot",
            VmOp::ForceOff => "force-off",
            VmOp::Undefine => "undefine",
            VmOp::Adopt { dry: true, .. } => "check-adopt",
            VmOp::Adopt { .. } => "adopt",
            VmOp::Release { dry: true, .. } => "check-release",
            VmOp::Release { .. } => "release",
            VmOp::Rename { .. } => "rename",
            VmOp::Migrate { .. } => "migrate",
        }
    }
}

type Reply = oneshot::Sender<Result<CommandOutput, HostError>>;

/// The domains on this host and the actors of those qvdc has acted on.
pub struct Vms<H> {
    /// The host these domains are on, for the facts VM operations state.
    host: String,
    hypervisor: Arc<H>,
    actors: Mutex<BTreeMap<String, mpsc::Sender<(VmOp, Reply)>>>,
}

async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, HostError>>,
) -> Result<T, HostError> {
    tokio::time::timeout(Duration::from_millis(HYPERVISOR_CALL_TIMEOUT_MS), call)
        .await
        .unwrap_or_else(|_| {
            Err(HostError::new(
                HostErrorKind::Timeout,
                format!("{what} did not return within {HYPERVISOR_CALL_TIMEOUT_MS} ms; is libvirtd hung?"),
            ))
        })
}

impl<H: Hypervisor> Vms<H> {
    pub fn new(hypervisor: H) -> Self {
        Self {
            host: String::new(),
            hypervisor: Arc::new(hypervisor),
            actors: Mutex::new(BTreeMap::new()),
        }
    }

    /// The domains are on host `host`.
    pub fn on_host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    pub fn hypervisor(&self) -> &H {
        &self.hypervisor
    }

    /// Every domain on the host, managed or not, as the hypervisor says now.
    pub async fn reports(&self) -> Result<Vec<VmReport>, HostError> {
        bounded("listing domains", self.hypervisor.domains()).await
    }

    /// Pulls the plug on domain `name` now, without waiting behind what its actor is doing
    /// (a live migration may take minutes): a host whose lease lapsed must stop its guests
    /// within its isolation response time. libvirt's destroy ends a running migration job.
    pub async fn destroy_now(&self, name: &str) -> Result<(), HostError> {
        bounded(
            "destroying the domain",
            self.hypervisor.destroy(name.to_owned()),
        )
        .await?;
        facts::state(Fact::VmOperation {
            host: self.host.clone(),
            vm: name.to_owned(),
            op: "force-off",
            guest: Guest::Gone,
            id: None,
        });
        Ok(())
    }

    /// Runs `op` on domain `name`'s actor, starting the actor if needed.
    pub async fn execute(&self, name: &str, op: VmOp) -> Result<CommandOutput, HostError> {
        let mailbox = {
            let mut actors = self.actors.lock().expect("vm actors poisoned");
            let mailbox = actors.entry(name.to_owned()).or_insert_with(|| {
                let (mailbox, inbox) = mpsc::channel(16);
                let actor = VmActor {
                    host: self.host.clone(),
                    name: name.to_owned(),
                    hypervisor: self.hypervisor.clone(),
                };
                tokio::spawn(actor.run(inbox));
                mailbox
            });
            mailbox.clone()
        };
        let gone = || HostError::new(HostErrorKind::Failed, format!("VM {name}'s actor stopped"));
        let (reply, answer) = oneshot::channel();
        mailbox.send((op, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

struct VmActor<H> {
    host: String,
    name: String,
    hypervisor: Arc<H>,
}

impl<H: Hypervisor> VmActor<H> {
    async fn run(self, mut inbox: mpsc::Receiver<(VmOp, Reply)>) {
        while let Some((op, reply)) = inbox.recv().await {
            let (what, guest) = (op.label(), op.guest());
            let result = self.handle(op).await;
            match &result {
                Ok(id) => {
                    info!(vm = %self.name, op = %what, "vm operation done");
                    facts::state(Fact::VmOperation {
                        host: self.host.clone(),
                        vm: self.name.clone(),
                        op: what,
                        guest,
                        id: id.clone(),
                    });
                }
                Err(e) => warn!(vm = %self.name, op = what, error = %e, "VM operation failed"),
            }
            let result = result.map(|_| CommandOutput::Done);
            let _ = reply.send(result);
        }
    }

    async fn current(&self) -> Result<Option<VmReport>, HostError> {
        bounded(
            "looking up the domain",
            self.hypervisor.domain(self.name.clone()),
        )
        .await
    }

    /// The domain, which must exist and be managed by qvdc.
    async fn managed(&self) -> Result<VmReport, HostError> {
        let name = &self.name;
        match self.current().await? {
            None => Err(HostError::new(
                HostErrorKind::NotFound,
                format!("no VM {name} on this host"),
            )),
            Some(report) if report.id.is_none() => Err(unmanaged(name)),
            Some(report) => Ok(report),
        }
    }

    /// Carries out `op`. For an op that leaves the guest running, the answer is qvdc's id
    /// of the VM it runs as.
    async fn handle(&self, op: VmOp) -> Result<Option<String>, HostError> {
        let h = &self.hypervisor;
        let name = self.name.clone();
        match op {
            VmOp::Define(spec) => {
                match self.current().await? {
                    Some(existing) if existing.id.is_none() => return Err(unmanaged(&name)),
                    Some(existing) if existing.id.as_deref() != Some(&spec.id) => {
                        return Err(HostError::new(
                            HostErrorKind::Conflict,
                            format!(
                                "domain {name} belongs to VM {}, not {}; pick another name",
                                existing.id.unwrap_or_default(),
                                spec.id
                            ),
                        ));
                    }
                    _ => {}
                }
                bounded("defining the domain", h.define(spec)).await?;
            }
            VmOp::Start => {
                let report = self.managed().await?;
                bounded("starting the domain", h.start(name)).await?;
                return Ok(report.id);
            }
            VmOp::Shutdown { timeout_ms } => {
                self.managed().await?;
                self.shutdown(timeout_ms).await?;
            }
            VmOp::Reboot => {
                let report = self.managed().await?;
                if report.power != PowerState::Running {
                    return Err(crate::hypervisor::not_running(&name));
                }
                bounded("rebooting the domain", h.reboot(name)).await?;
                return Ok(report.id);
            }
            VmOp::Migrate {
                id,
                to,
                storage_unsafe,
            } => {
                let report = self.managed().await?;
                if report.id.as_deref() != Some(id.as_str()) {
                    return Err(HostError::new(
                        HostErrorKind::Conflict,
                        format!("domain {name} is not VM {id}; it is not migrated"),
                    ));
                }
                // Not bounded here: answering while libvirt still migrates would let the
                // leader give the move up under a guest about to run at the destination.
                // libvirt ends a migration whose peer is gone (its keepalive), and the
                // isolation response stops the guest without waiting for this actor.
                h.migrate(name, to, storage_unsafe).await?;
            }
            VmOp::ForceOff => {
                self.managed().await?;
                bounded("destroying the domain", h.destroy(name)).await?;
            }
            VmOp::Undefine => match self.current().await? {
                None => {}
                Some(report) if report.id.is_none() => return Err(unmanaged(&name)),
                Some(_) => bounded("undefining the domain", h.undefine(name)).await?,
            },
            VmOp::Adopt { id, uuid, dry } => {
                match self.current().await? {
                    None => {
                        return Err(HostError::new(
                            HostErrorKind::NotFound,
                            format!("no domain {name} on this host to adopt"),
                        ))
                    }
                    Some(report) if report.uuid != uuid => {
                        return Err(HostError::new(
                            HostErrorKind::Conflict,
                            format!(
                                "domain {name} is now another domain (UUID {}, not {uuid}); it is left alone",
                                report.uuid
                            ),
                        ))
                    }
                    Some(report) if report.id.as_deref().is_some_and(|have| have != id) => {
                        return Err(HostError::new(
                            HostErrorKind::Conflict,
                            format!(
                                "domain {name} is already VM {}",
                                report.id.unwrap_or_default()
                            ),
                        ))
                    }
                    Some(report) if report.id.is_some() || dry => {}
                    Some(_) => bounded("recording the VM id", h.set_id(name, Some(id))).await?,
                }
            }
            VmOp::Rename { to, uuid } => {
                let renamed = bounded("looking up the domain", h.domain(to.clone())).await?;
                if renamed.is_some_and(|r| r.uuid == uuid) {
                    return Ok(None);
                }
                match self.current().await? {
                    None => {
                        return Err(HostError::new(
                            HostErrorKind::NotFound,
                            format!("no domain {name} on this host to rename"),
                        ))
                    }
                    Some(report) if report.uuid != uuid || report.id.is_some() => {
                        return Err(HostError::new(
                            HostErrorKind::Conflict,
                            format!("domain {name} is not the unmanaged domain {uuid}; it is left alone"),
                        ))
                    }
                    Some(_) => bounded("renaming the domain", h.rename(name, to)).await?,
                }
            }
            VmOp::Release { id, dry } => match self.current().await? {
                None => {}
                Some(report) if report.id.is_none() => {}
                Some(report) if report.id.as_deref() != Some(&id) => {
                    return Err(HostError::new(
                        HostErrorKind::Conflict,
                        format!(
                            "domain {name} is VM {}, not {id}; it is left alone",
                            report.id.unwrap_or_default()
                        ),
                    ))
                }
                Some(_) if dry => {}
                Some(_) => bounded("removing the VM id", h.set_id(name, None)).await?,
            },
        }
        Ok(None)
    }

    /// Asks the guest to stop and waits; a guest still running at the deadline is destroyed.
    async fn shutdown(&self, timeout_ms: u64) -> Result<(), HostError> {
        let h = &self.hypervisor;
        bounded(
            "asking the guest to shut down",
            h.shutdown(self.name.clone()),
        )
        .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let report = self.current().await?;
            if report.is_none_or(|r| r.power == PowerState::ShutOff) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(vm = %self.name, timeout_ms, "guest ignored the shutdown request; destroying it");
                return bounded("destroying the domain", h.destroy(self.name.clone())).await;
            }
            tokio::time::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
        }
    }
}

fn unmanaged(name: &str) -> HostError {
    HostError::new(
        HostErrorKind::Conflict,
        format!("domain {name} is not managed by qvdc; adopt it first (it is left untouched until then)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{conformance::spec, SimHypervisor};

    #[tokio::test(start_paused = true)]
    async fn a_vm_goes_through_its_lifecycle_and_every_step_is_idempotent() {
        let vms = Vms::new(SimHypervisor::new());
        for _ in 0..2 {
            vms.execute("web", VmOp::Define(spec("web", "vm-1")))
                .await
                .unwrap();
            vms.execute("web", VmOp::Start).await.unwrap();
        }
        vms.execute("web", VmOp::Reboot).await.unwrap();
        for _ in 0..2 {
            let stop = VmOp::Shutdown { timeout_ms: 1_000 };
            vms.execute("web", stop).await.unwrap();
        }
        let web = &vms.reports().await.unwrap()[0];
        assert_eq!(
            (web.power, web.reason.as_str()),
            (PowerState::ShutOff, "shutdown")
        );
        for _ in 0..2 {
            vms.execute("web", VmOp::Undefine).await.unwrap();
        }
        assert!(vms.reports().await.unwrap().is_empty());
        let err = vms.execute("web", VmOp::Start).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::NotFound);
    }

    /// A host whose lease lapsed stops a guest at once, even while the guest's actor is
    /// busy migrating it (which may take minutes): the migration fails, the guest runs
    /// nowhere.
    #[tokio::test(start_paused = true)]
    async fn a_guest_is_stopped_now_even_while_its_actor_migrates_it() {
        use crate::hypervisor::{sim_migration_uri, SimStorageLocks, SIM_MIGRATION_MS};
        let locks = SimStorageLocks::default();
        let here = SimHypervisor::with_storage_locks(&locks, "host-1", "/a".into());
        let there = SimHypervisor::with_storage_locks(&locks, "host-2", "/b".into());
        let vms = std::sync::Arc::new(Vms::new(here.clone()).on_host("host-1"));
        vms.execute("web", VmOp::Define(spec("web", "vm-1")))
            .await
            .unwrap();
        vms.execute("web", VmOp::Start).await.unwrap();
        let migrating = tokio::spawn({
            let vms = vms.clone();
            async move {
                let op = VmOp::Migrate {
                    id: "vm-1".into(),
                    to: sim_migration_uri("host-2"),
                    storage_unsafe: false,
                };
                vms.execute("web", op).await
            }
        });
        tokio::time::sleep(Duration::from_millis(SIM_MIGRATION_MS / 3)).await;
        let asked = tokio::time::Instant::now();
        vms.destroy_now("web").await.unwrap();
        assert!(asked.elapsed() < Duration::from_millis(SIM_MIGRATION_MS / 3));
        assert_eq!(here.domains()["web"], PowerState::ShutOff);
        let err = migrating.await.unwrap().unwrap_err();
        assert!(
            err.message.contains("stopped during the migration"),
            "{err}"
        );
        assert!(
            there.domains().is_empty(),
            "no copy left at the destination"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_guest_that_ignores_shutdown_is_destroyed_at_the_deadline() {
        let vms = Vms::new(SimHypervisor::new());
        vms.execute("web", VmOp::Define(spec("web", "vm-1")))
            .await
            .unwrap();
        vms.execute("web", VmOp::Start).await.unwrap();
        vms.hypervisor().set_deaf_guests(true);
        let started = tokio::time::Instant::now();
        vms.execute("web", VmOp::Shutdown { timeout_ms: 2_000 })
            .await
            .unwrap();
        let waited = started.elapsed();
        assert!(
            (Duration::from_millis(2_000)..Duration::from_millis(2_000 + SHUTDOWN_POLL_MS + 1))
                .contains(&waited),
            "{waited:?}"
        );
        let web = &vms.reports().await.unwrap()[0];
        assert_eq!(
            (web.power, web.reason.as_str()),
            (PowerState::ShutOff, "destroyed")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn foreign_domains_are_reported_but_untouched_until_adopted() {
        let vms = Vms::new(SimHypervisor::new());
        vms.hypervisor().add_foreign("legacy", true, &[]);
        let legacy = &vms.reports().await.unwrap()[0];
        assert_eq!(
            (legacy.id.as_deref(), legacy.power),
            (None, PowerState::Running)
        );
        for op in [
            VmOp::ForceOff,
            VmOp::Undefine,
            VmOp::Define(spec("legacy", "vm-9")),
        ] {
            let err = vms.execute("legacy", op).await.unwrap_err();
            assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
            assert!(err.message.contains("adopt"), "{err}");
        }
        assert_eq!(vms.reports().await.unwrap()[0].power, PowerState::Running);

        let uuid = vms.reports().await.unwrap()[0].uuid.clone();
        let adopt = |id: &str| VmOp::Adopt {
            id: id.into(),
            uuid: uuid.clone(),
            dry: false,
        };
        let err = vms
            .execute(
                "legacy",
                VmOp::Adopt {
                    id: "vm-9".into(),
                    uuid: "another".into(),
                    dry: true,
                },
            )
            .await
            .unwrap_err();
        assert!(err.message.contains("another domain"), "{err}");
        assert!(vms.hypervisor().touched_unmanaged().is_empty());
        vms.execute("legacy", adopt("vm-9")).await.unwrap();
        vms.execute("legacy", adopt("vm-9"))
            .await
            .expect("adopting twice is idempotent");
        let err = vms.execute("legacy", adopt("vm-10")).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Conflict);
        vms.execute("legacy", VmOp::ForceOff).await.unwrap();
        assert_eq!(vms.reports().await.unwrap()[0].power, PowerState::ShutOff);

        // Released, it is left alone again.
        let release = |id: &str| VmOp::Release {
            id: id.into(),
            dry: false,
        };
        let err = vms.execute("legacy", release("vm-10")).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
        for _ in 0..2 {
            vms.execute("legacy", release("vm-9")).await.unwrap();
        }
        assert_eq!(vms.reports().await.unwrap()[0].id, None);
        let err = vms.execute("legacy", VmOp::Start).await.unwrap_err();
        assert!(err.message.contains("adopt"), "{err}");
        assert!(vms.hypervisor().touched_unmanaged().is_empty());
        vms.execute("gone", release("vm-9"))
            .await
            .expect("releasing a domain that is gone is done");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unmanaged_domain_is_renamed_for_adoption_only_while_shut_off() {
        let vms = Vms::new(SimHypervisor::new());
        vms.hypervisor().add_foreign("legacy", true, &[]);
        let uuid = vms.reports().await.unwrap()[0].uuid.clone();
        let rename = |uuid: &str| VmOp::Rename {
            to: "legacy-2".into(),
            uuid: uuid.into(),
        };
        let err = vms.execute("legacy", rename("other")).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
        let err = vms.execute("legacy", rename(&uuid)).await.unwrap_err();
        assert!(err.message.contains("shut-off"), "{err}");

        vms.hypervisor().add_foreign("legacy", false, &[]);
        let uuid = vms.reports().await.unwrap()[0].uuid.clone();
        for _ in 0..2 {
            vms.execute("legacy", rename(&uuid))
                .await
                .expect("renaming again is done already");
        }
        let names: Vec<String> = vms
            .reports()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["legacy-2"]);
        assert!(vms.hypervisor().touched_unmanaged().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_taken_by_another_vm_is_a_conflict() {
        let vms = Vms::new(SimHypervisor::new());
        vms.execute("web", VmOp::Define(spec("web", "vm-1")))
            .await
            .unwrap();
        let err = vms
            .execute("web", VmOp::Define(spec("web", "vm-2")))
            .await
            .unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Conflict);
        assert!(err.message.contains("vm-1"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn hypervisor_failures_come_back_typed() {
        let vms = Vms::new(SimHypervisor::new());
        vms.hypervisor().set_failure(Some(
            "Failed to connect socket to '/var/run/libvirt/libvirt-sock'".into(),
        ));
        let err = vms
            .execute("web", VmOp::Define(spec("web", "vm-1")))
            .await
            .unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Failed);
        assert!(err.message.contains("libvirt-sock"), "{err}");
    }
}
