//! The host's pools. Each pool is owned by its own actor (a task with a mailbox), which
//! executes that pool's commands one at a time and probes its filesystem on a timer. The
//! heartbeat reads each actor's latest report without waiting, so a hung filesystem delays
//! nothing but its own pool. The host is the source of truth for this state.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use qvdc_transport::{
    limits::{self, NAME_BYTES_MAX, VOLUME_BYTES_MAX},
    protocol::{
        CommandOutput, Health, HostError, HostErrorKind, PoolReport, PoolSpec, VolumeFormat,
    },
};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{info, warn};

use crate::{
    mounter::{MountError, Mounter},
    source_policy::SourcePolicy,
};

/// How long a probe of a mounted pool (mount table, statvfs) may take before the pool is
/// reported DEGRADED as possibly hung.
pub const PROBE_TIMEOUT_MS: u64 = 3_000;
/// How long mounting, unmounting or a volume operation may take before it fails as timed out.
pub const OPERATION_TIMEOUT_MS: u64 = 10_000;

/// A command addressed to one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolOp {
    Init(PoolSpec),
    Remove,
    CreateVolume {
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
    },
    ResizeVolume {
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
    },
    DeleteVolume {
        name: String,
    },
    ListVolumes,
    /// Takes an existing file as a volume (an adopted domain's disk).
    ClaimVolume {
        name: String,
        format: VolumeFormat,
    },
    /// Lets go of a volume (its VM was released); the file stays.
    DisownVolume {
        name: String,
    },
}

type Reply = oneshot::Sender<Result<CommandOutput, HostError>>;

struct PoolHandle {
    mailbox: mpsc::Sender<(PoolOp, Reply)>,
    report: Arc<Mutex<PoolReport>>,
}

/// Pools assigned to this host, keyed by name.
pub struct Pools<M> {
    mounter: Arc<M>,
    /// Which sources this host accepts; checked before every mount.
    policy: Arc<SourcePolicy>,
    root: PathBuf,
    probe_interval: Duration,
    /// Signalled when a pool's report changed because of a command.
    changed: Arc<Notify>,
    pools: Mutex<BTreeMap<String, PoolHandle>>,
    /// Pools found mounted under the root when the agent started (left by its previous run)
    /// that no command has taken up yet: reported, so the leader either initialises them
    /// (still assigned) or has them removed (unassigned meanwhile).
    found: Mutex<std::collections::BTreeSet<String>>,
    metrics: crate::metrics::HostMetrics,
}

/// Checks a volume's name: a plain file name in the pool's directory.
pub fn validate_volume_name(name: &str) -> Result<(), HostError> {
    if limits::is_plain_name(name) {
        return Ok(());
    }
    Err(HostError::new(
        HostErrorKind::Invalid,
        format!(
            "volume name {name:?} must be 1 to {NAME_BYTES_MAX} letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        ),
    ))
}

fn validate_size(size_bytes: u64) -> Result<(), HostError> {
    if (1..=VOLUME_BYTES_MAX).contains(&size_bytes) {
        return Ok(());
    }
    Err(HostError::new(
        HostErrorKind::Invalid,
        format!("volume size must be between 1 byte and 16 TiB, not {size_bytes} bytes"),
    ))
}

impl<M: Mounter> Pools<M> {
    /// `root` is `<data-dir>/pools`; each pool mounts at `root/<pool name>`. `changed` is
    /// signalled after a command changed a pool, so the host reports it at once.
    pub fn new(
        mounter: M,
        root: PathBuf,
        policy: SourcePolicy,
        probe_interval: Duration,
        changed: Arc<Notify>,
    ) -> Self {
        Self {
            mounter: Arc::new(mounter),
            policy: Arc::new(policy),
            root,
            probe_interval,
            changed,
            pools: Mutex::new(BTreeMap::new()),
            found: Mutex::default(),
            metrics: Default::default(),
        }
    }

    /// Times each pool's probes into `metrics` and counts their failures.
    pub fn measured(mut self, metrics: crate::metrics::HostMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Takes note of the pools an earlier run left mounted under the root.
    pub async fn discover(&self) {
        match self.mounter.mounted_below(self.root.clone()).await {
            Ok(names) => {
                if !names.is_empty() {
                    info!(pools = ?names, "found pools mounted by an earlier run");
                }
                let names = names
                    .into_iter()
                    .filter(|n| validate_volume_name(n).is_ok());
                self.found
                    .lock()
                    .expect("found pools poisoned")
                    .extend(names);
            }
            Err(e) => warn!(error = %e, "cannot list the mounts under the pool root"),
        }
    }

    /// Where `pool` is (or would be) mounted.
    pub fn mount_path(&self, pool: &str) -> PathBuf {
        self.root.join(pool)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PoolHandle>> {
        self.pools.lock().expect("pool table poisoned")
    }

    /// Runs `op` on pool `name`'s actor. `Init` starts the actor if the pool is new.
    /// The name becomes a directory under the pool root, so it is checked here again, whoever
    /// sent it: a name like `../x` would mount outside the root.
    pub async fn execute(&self, name: &str, op: PoolOp) -> Result<CommandOutput, HostError> {
        validate_volume_name(name).map_err(|_| {
            HostError::new(
                HostErrorKind::Invalid,
                format!("pool name {name:?} must be letters, digits, '.', '_' or '-', not starting with '.' or '-'"),
            )
        })?;
        if let PoolOp::CreateVolume {
            name, size_bytes, ..
        }
        | PoolOp::ResizeVolume {
            name, size_bytes, ..
        } = &op
        {
            validate_volume_name(name)?;
            validate_size(*size_bytes)?;
        }
        if let PoolOp::DeleteVolume { name } = &op {
            validate_volume_name(name)?;
        }
        let found = self
            .found
            .lock()
            .expect("found pools poisoned")
            .contains(name);
        if found && op == PoolOp::Remove && !self.table().contains_key(name) {
            let target = self.mount_path(name);
            self.mounter
                .unmount(target)
                .await
                .map_err(|e| HostError::new(HostErrorKind::Failed, e.to_string()))?;
            self.found
                .lock()
                .expect("found pools poisoned")
                .remove(name);
            self.changed.notify_one();
            return Ok(CommandOutput::Done);
        }
        let mailbox = {
            let mut table = self.table();
            match (table.get(name), &op) {
                (Some(handle), _) => handle.mailbox.clone(),
                (None, PoolOp::Init(spec)) => {
                    self.found
                        .lock()
                        .expect("found pools poisoned")
                        .remove(name);
                    let handle = self.spawn(spec.clone());
                    let mailbox = handle.mailbox.clone();
                    table.insert(name.to_owned(), handle);
                    mailbox
                }
                (None, PoolOp::Remove) => return Ok(CommandOutput::Done),
                (None, _) => {
                    return Err(HostError::new(
                        HostErrorKind::NotFound,
                        format!("pool {name} is not assigned to this host"),
                    ))
                }
            }
        };
        let removing = op == PoolOp::Remove;
        let (reply, answer) = oneshot::channel();
        let gone = || {
            HostError::new(
                HostErrorKind::Failed,
                format!("pool {name}'s actor stopped"),
            )
        };
        mailbox.send((op, reply)).await.map_err(|_| gone())?;
        let result = answer.await.map_err(|_| gone())?;
        if removing && result.is_ok() {
            self.table().remove(name);
        }
        self.changed.notify_one();
        result
    }

    fn spawn(&self, spec: PoolSpec) -> PoolHandle {
        let mount_path = self.mount_path(&spec.name);
        let report = Arc::new(Mutex::new(PoolReport {
            pool: spec.name.clone(),
            mounted: false,
            mount_path: mount_path.display().to_string(),
            capacity: Default::default(),
            volume_count: 0,
            health: Health::Unknown,
            error: Some("not probed yet".into()),
        }));
        let (mailbox, inbox) = mpsc::channel(16);
        let actor = PoolActor {
            spec,
            mount_path,
            mounter: self.mounter.clone(),
            policy: self.policy.clone(),
            mount_error: None,
            report: report.clone(),
            metrics: self.metrics.clone(),
        };
        tokio::spawn(actor.run(inbox, self.probe_interval));
        PoolHandle { mailbox, report }
    }

    /// The latest report of every pool, without waiting for any filesystem.
    pub fn reports(&self) -> Vec<PoolReport> {
        let table = self.table();
        let mut reports: Vec<PoolReport> = table
            .values()
            .map(|h| h.report.lock().expect("pool report poisoned").clone())
            .collect();
        let found = self.found.lock().expect("found pools poisoned");
        for name in found.iter().filter(|n| !table.contains_key(*n)) {
            reports.push(PoolReport {
                pool: name.clone(),
                mounted: true,
                mount_path: self.mount_path(name).display().to_string(),
                capacity: Default::default(),
                volume_count: 0,
                health: Health::Unknown,
                error: Some("found mounted when the agent started; not probed yet".into()),
            });
        }
        reports
    }
}

struct PoolActor<M> {
    spec: PoolSpec,
    mount_path: PathBuf,
    mounter: Arc<M>,
    policy: Arc<SourcePolicy>,
    /// Why the last mount failed; cleared by a successful one.
    mount_error: Option<MountError>,
    report: Arc<Mutex<PoolReport>>,
    metrics: crate::metrics::HostMetrics,
}

async fn bounded<T>(
    ms: u64,
    op: &'static str,
    path: &std::path::Path,
    call: impl std::future::Future<Output = Result<T, MountError>>,
) -> Result<T, MountError> {
    tokio::time::timeout(Duration::from_millis(ms), call)
        .await
        .unwrap_or_else(|_| {
            Err(MountError::Timeout {
                op,
                path: path.display().to_string(),
                ms,
            })
        })
}

impl<M: Mounter> PoolActor<M> {
    async fn run(mut self, mut inbox: mpsc::Receiver<(PoolOp, Reply)>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = inbox.recv() => {
                    let Some((op, reply)) = received else { return };
                    let stop = op == PoolOp::Remove;
                    let result = self.handle(op).await;
                    let removed = stop && result.is_ok();
                    if !removed {
                        self.probe().await;
                    }
                    let _ = reply.send(result);
                    if removed {
                        return;
                    }
                }
                _ = ticker.tick() => self.probe().await,
            }
        }
    }

    async fn handle(&mut self, op: PoolOp) -> Result<CommandOutput, HostError> {
        let dir = self.mount_path.clone();
        let pool = self.spec.name.clone();
        match op {
            PoolOp::Init(spec) => {
                if spec != self.spec && self.mount_error.is_none() {
                    // The pool's source changed: let go of the old one first.
                    self.unmount().await?;
                }
                self.spec = spec;
                let result = match self.policy.check(&self.spec.source) {
                    Ok(()) => {
                        let call = self.mounter.mount(self.spec.source.clone(), dir.clone());
                        bounded(OPERATION_TIMEOUT_MS, "mount", &dir, call).await
                    }
                    Err(refused) => Err(MountError::Refused(refused.message)),
                };
                match &result {
                    Ok(()) => info!(%pool, source = %self.spec.source, "pool mounted"),
                    Err(e) => warn!(%pool, error = %e, "pool mount failed"),
                }
                self.mount_error = result.clone().err();
                result.map(|()| CommandOutput::Done).map_err(Into::into)
            }
            PoolOp::Remove => {
                self.unmount().await?;
                info!(%pool, "pool unmounted and removed");
                Ok(CommandOutput::Done)
            }
            op => {
                if let Some(e) = &self.mount_error {
                    return Err(HostError::new(
                        HostErrorKind::Conflict,
                        format!("pool {pool} is not mounted on this host: {e}"),
                    ));
                }
                let timeout = |what: &str| {
                    HostError::new(
                        HostErrorKind::Timeout,
                        format!("{what} in pool {pool} did not finish within {OPERATION_TIMEOUT_MS} ms; the pool's filesystem may be hung"),
                    )
                };
                let limit = Duration::from_millis(OPERATION_TIMEOUT_MS);
                let m = &self.mounter;
                let done = |r: Result<(), HostError>| r.map(|()| CommandOutput::Done);
                match op {
                    PoolOp::CreateVolume {
                        name,
                        format,
                        size_bytes,
                    } => {
                        tokio::time::timeout(limit, m.create_volume(dir, name, format, size_bytes))
                            .await
                            .map_or_else(|_| Err(timeout("creating a volume")), done)
                    }
                    PoolOp::ResizeVolume {
                        name,
                        format,
                        size_bytes,
                    } => {
                        tokio::time::timeout(limit, m.resize_volume(dir, name, format, size_bytes))
                            .await
                            .map_or_else(|_| Err(timeout("resizing a volume")), done)
                    }
                    PoolOp::DeleteVolume { name } => {
                        tokio::time::timeout(limit, m.delete_volume(dir, name))
                            .await
                            .map_or_else(|_| Err(timeout("deleting a volume")), done)
                    }
                    PoolOp::ClaimVolume { name, format } => {
                        tokio::time::timeout(limit, m.claim_volume(dir, name, format))
                            .await
                            .map_or_else(|_| Err(timeout("claiming a volume")), done)
                    }
                    PoolOp::DisownVolume { name } => {
                        tokio::time::timeout(limit, m.disown_volume(dir, name))
                            .await
                            .map_or_else(|_| Err(timeout("letting go of a volume")), done)
                    }
                    PoolOp::ListVolumes => tokio::time::timeout(limit, m.list_volumes(dir))
                        .await
                        .map_or_else(
                            |_| Err(timeout("listing volumes")),
                            |r| r.map(CommandOutput::Volumes),
                        ),
                    PoolOp::Init(_) | PoolOp::Remove => unreachable!("handled above"),
                }
            }
        }
    }

    async fn unmount(&mut self) -> Result<(), HostError> {
        let dir = self.mount_path.clone();
        bounded(
            OPERATION_TIMEOUT_MS,
            "umount",
            &dir,
            self.mounter.unmount(dir.clone()),
        )
        .await
        .map_err(HostError::from)
    }

    /// Looks at the filesystem and publishes what it found.
    async fn probe(&mut self) {
        let started = tokio::time::Instant::now();
        let report = self.inspect().await;
        self.metrics
            .probe_seconds
            .observe(qvdc_transport::metrics::since(started));
        if report.health != Health::Healthy {
            self.metrics.mount_error("probe");
        }
        *self.report.lock().expect("pool report poisoned") = report;
    }

    async fn inspect(&self) -> PoolReport {
        let path = &self.mount_path;
        let mut report = PoolReport {
            pool: self.spec.name.clone(),
            mounted: false,
            mount_path: path.display().to_string(),
            capacity: Default::default(),
            volume_count: 0,
            health: Health::Error,
            error: None,
        };
        if let Some(error) = &self.mount_error {
            report.error = Some(error.to_string());
            return report;
        }
        let mounted = self.mounter.is_mounted(path.clone());
        match bounded(PROBE_TIMEOUT_MS, "reading the mount table", path, mounted).await {
            Ok(true) => report.mounted = true,
            Ok(false) => {
                report.error = Some(format!("{} is no longer mounted", path.display()));
                return report;
            }
            Err(e) => {
                report.health = Health::Degraded;
                report.error = Some(e.to_string());
                return report;
            }
        }
        let usage = self.mounter.usage(path.clone());
        match bounded(PROBE_TIMEOUT_MS, "statvfs", path, usage).await {
            Ok(usage) => {
                report.capacity = usage.capacity;
                report.volume_count = usage.volume_count;
                report.health = Health::Healthy;
                if usage.read_only {
                    report.health = Health::Degraded;
                    report.error = Some(format!(
                        "{} is mounted read-only; volumes cannot be created or written",
                        path.display()
                    ));
                }
            }
            Err(e) => {
                report.health = Health::Degraded;
                report.error = Some(e.to_string());
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use qvdc_transport::protocol::PoolSource;

    use super::*;

    /// The host takes exactly the volume names the control plane's model takes.
    #[test]
    fn volume_names_are_bounded_by_the_shared_limit() {
        assert!(validate_volume_name(&"v".repeat(NAME_BYTES_MAX)).is_ok());
        let long = validate_volume_name(&"v".repeat(NAME_BYTES_MAX + 1)).unwrap_err();
        assert!(long.message.contains("1 to 64"), "{long}");
        assert!(validate_volume_name("../etc").is_err());
    }
    use crate::mounter::SimMounter;

    fn spec(name: &str) -> PoolSpec {
        PoolSpec {
            scope: Default::default(),
            name: name.into(),
            source: PoolSource::Dir {
                path: "/srv/pool".into(),
            },
        }
    }

    fn pools(mounter: SimMounter) -> Pools<SimMounter> {
        let interval = Duration::from_millis(1_000);
        Pools::new(
            mounter,
            "/data/pools".into(),
            SourcePolicy::new(Vec::new(), Some("/data".into())),
            interval,
            Arc::new(Notify::new()),
        )
    }

    /// A source the host does not accept is never handed to the mounter; the pool reports
    /// ERROR with the reason, and the command fails as invalid.
    #[tokio::test(start_paused = true)]
    async fn a_refused_source_is_never_mounted_and_is_reported() {
        let mounter = SimMounter::new(1000);
        let pools = pools(mounter.clone());
        let etc = PoolSpec {
            scope: Default::default(),
            name: "p".into(),
            source: PoolSource::Dir {
                path: "/etc".into(),
            },
        };
        let err = pools.execute("p", PoolOp::Init(etc)).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Invalid);
        assert!(err.message.contains("operating system"), "{}", err.message);
        assert!(mounter.mounts().is_empty(), "nothing was mounted");
        let report = pools.reports().pop().unwrap();
        assert_eq!(report.health, Health::Error);
        assert!(report.error.unwrap().contains("/etc is in /etc"));
    }

    #[tokio::test(start_paused = true)]
    async fn pool_names_that_leave_the_pool_root_are_refused() {
        let mounter = SimMounter::new(1000);
        let pools = pools(mounter.clone());
        for name in ["../etc", "..", "a/b", ".hidden", ""] {
            let err = pools
                .execute(name, PoolOp::Init(spec(name)))
                .await
                .unwrap_err();
            assert_eq!(err.kind, HostErrorKind::Invalid, "{name}");
            assert!(err.message.contains("pool name"), "{}", err.message);
        }
        assert!(mounter.mounts().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn mounted_pool_reports_healthy_with_capacity_and_volumes() {
        let pools = pools(SimMounter::new(1000));
        pools.execute("p", PoolOp::Init(spec("p"))).await.unwrap();
        pools
            .execute("p", PoolOp::Init(spec("p")))
            .await
            .expect("init is idempotent");
        let create = PoolOp::CreateVolume {
            name: "v1".into(),
            format: VolumeFormat::Qcow2,
            size_bytes: 10,
        };
        pools.execute("p", create).await.unwrap();
        let reports = pools.reports();
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert_eq!(
            (r.health, r.mounted, r.capacity.total_bytes, r.volume_count),
            (Health::Healthy, true, 1000, 1)
        );
        assert_eq!(r.mount_path, "/data/pools/p");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_mount_reports_error_and_refuses_volumes() {
        let mounter = SimMounter::new(1000).failing_mounts("Not a directory (os error 20)");
        let pools = pools(mounter);
        let err = pools
            .execute("p", PoolOp::Init(spec("p")))
            .await
            .unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Failed);
        let r = &pools.reports()[0];
        assert_eq!((r.health, r.mounted), (Health::Error, false));
        assert!(
            r.error.as_deref().unwrap().contains("Not a directory"),
            "{r:?}"
        );
        let err = pools.execute("p", PoolOp::ListVolumes).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Conflict, "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn pool_unmounted_behind_our_back_is_an_error_at_the_next_probe() {
        let pools = pools(SimMounter::new(1000));
        pools.execute("p", PoolOp::Init(spec("p"))).await.unwrap();
        pools.mounter.unmount("/data/pools/p".into()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let r = &pools.reports()[0];
        assert_eq!(r.health, Health::Error);
        assert!(r.error.as_deref().unwrap().contains("no longer mounted"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_pool_is_degraded_within_the_probe_timeout_and_others_stay_readable() {
        let pools = pools(SimMounter::new(1000));
        pools.execute("p", PoolOp::Init(spec("p"))).await.unwrap();
        pools.mounter.set_hung(true);
        // Reports are readable at any moment: they never wait for the filesystem.
        let before = pools.reports();
        assert_eq!(before[0].health, Health::Healthy);
        tokio::time::sleep(Duration::from_millis(1_000 + PROBE_TIMEOUT_MS + 10)).await;
        let r = &pools.reports()[0];
        assert_eq!(r.health, Health::Degraded, "{r:?}");
        assert!(r.error.as_deref().unwrap().contains("may be hung"), "{r:?}");
        pools.mounter.set_hung(false);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(pools.reports()[0].health, Health::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn removing_a_pool_unmounts_it_and_is_idempotent() {
        let pools = pools(SimMounter::new(1000));
        pools.execute("p", PoolOp::Init(spec("p"))).await.unwrap();
        pools.execute("p", PoolOp::Remove).await.unwrap();
        assert!(pools.reports().is_empty());
        assert!(!pools
            .mounter
            .is_mounted("/data/pools/p".into())
            .await
            .unwrap());
        pools.execute("p", PoolOp::Remove).await.unwrap();
        let err = pools.execute("p", PoolOp::ListVolumes).await.unwrap_err();
        assert_eq!(err.kind, HostErrorKind::NotFound);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_volume_names_and_sizes_are_refused_before_reaching_the_pool() {
        let pools = pools(SimMounter::new(1000));
        pools.execute("p", PoolOp::Init(spec("p"))).await.unwrap();
        for (name, size) in [("../etc", 1), ("", 1), (".hidden", 1), ("ok", 0)] {
            let op = PoolOp::CreateVolume {
                name: name.into(),
                format: VolumeFormat::Raw,
                size_bytes: size,
            };
            let err = pools.execute("p", op).await.unwrap_err();
            assert_eq!(err.kind, HostErrorKind::Invalid, "{name:?}: {err}");
        }
    }
}
