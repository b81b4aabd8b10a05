//! The host's pools: executes InitStoragePool and produces the per-pool report that goes out
//! on every heartbeat. The host is the source of truth for this state.

use std::{collections::BTreeMap, path::PathBuf};

use qvdc_transport::protocol::{Health, PoolReport, PoolSource, PoolSpec};

use crate::mounter::{MountError, Mounter};

#[derive(Debug)]
struct PoolState {
    spec: PoolSpec,
    mount_path: PathBuf,
    last_error: Option<MountError>,
}

/// Pools assigned to this host, keyed by name, and how to reach their filesystems.
#[derive(Debug)]
pub struct Pools<M> {
    mounter: M,
    root: PathBuf,
    pools: BTreeMap<String, PoolState>,
}

impl<M: Mounter> Pools<M> {
    /// `root` is `<data-dir>/pools`; each pool mounts at `root/<pool name>`.
    pub fn new(mounter: M, root: PathBuf) -> Self {
        Self {
            mounter,
            root,
            pools: BTreeMap::new(),
        }
    }

    /// Mounts the pool. Idempotent: a pool already mounted stays as it is.
    pub async fn init(&mut self, spec: PoolSpec) -> Result<(), MountError> {
        let mount_path = self.root.join(&spec.name);
        let result = match &spec.source {
            PoolSource::Dir { path } => {
                self.mounter
                    .bind(PathBuf::from(path), mount_path.clone())
                    .await
            }
        };
        let state = PoolState {
            spec,
            mount_path,
            last_error: result.clone().err(),
        };
        self.pools.insert(state.spec.name.clone(), state);
        result
    }

    /// The current state of every pool, read fresh from the filesystem.
    pub async fn reports(&self) -> Vec<PoolReport> {
        let mut reports = Vec::with_capacity(self.pools.len());
        for state in self.pools.values() {
            reports.push(self.report(state).await);
        }
        reports
    }

    async fn report(&self, state: &PoolState) -> PoolReport {
        let mut report = PoolReport {
            pool: state.spec.name.clone(),
            mounted: false,
            mount_path: state.mount_path.display().to_string(),
            capacity: Default::default(),
            volume_count: 0,
            health: Health::Error,
            error: None,
        };
        if let Some(error) = &state.last_error {
            report.error = Some(error.to_string());
            return report;
        }
        match self.mounter.is_mounted(state.mount_path.clone()).await {
            Ok(true) => report.mounted = true,
            Ok(false) => {
                report.error = Some(format!(
                    "{} is no longer mounted",
                    state.mount_path.display()
                ));
                return report;
            }
            Err(e) => {
                report.health = Health::Degraded;
                report.error = Some(e.to_string());
                return report;
            }
        }
        match self.mounter.usage(state.mount_path.clone()).await {
            Ok(usage) => {
                report.capacity = usage.capacity;
                report.volume_count = usage.volume_count;
                report.health = Health::Healthy;
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
    use super::*;
    use crate::mounter::SimMounter;

    fn spec(name: &str) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            source: PoolSource::Dir {
                path: "/srv/pool".into(),
            },
        }
    }

    #[tokio::test]
    async fn mounted_pool_reports_healthy_with_capacity() {
        let mut pools = Pools::new(SimMounter::new(1000), "/data/pools".into());
        pools.init(spec("p")).await.unwrap();
        pools.init(spec("p")).await.expect("init is idempotent");
        let reports = pools.reports().await;
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert_eq!(
            (r.health, r.mounted, r.capacity.total_bytes),
            (Health::Healthy, true, 1000)
        );
        assert_eq!(r.mount_path, "/data/pools/p");
    }

    #[tokio::test]
    async fn failed_mount_reports_error_with_message() {
        let mounter = SimMounter::new(1000).failing_mounts("Not a directory (os error 20)");
        let mut pools = Pools::new(mounter, "/data/pools".into());
        assert!(pools.init(spec("p")).await.is_err());
        let r = &pools.reports().await[0];
        assert_eq!((r.health, r.mounted), (Health::Error, false));
        assert!(
            r.error.as_deref().unwrap().contains("Not a directory"),
            "{:?}",
            r.error
        );
    }

    #[tokio::test]
    async fn pool_unmounted_behind_our_back_is_an_error() {
        let mounter = SimMounter::new(1000);
        let mut pools = Pools::new(mounter, "/data/pools".into());
        pools.init(spec("p")).await.unwrap();
        pools.mounter.unmount("/data/pools/p".into()).await.unwrap();
        let r = &pools.reports().await[0];
        assert_eq!(r.health, Health::Error);
        assert!(r.error.as_deref().unwrap().contains("no longer mounted"));
    }
}
