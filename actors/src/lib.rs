//! qvdc-actors: the supervision tree that runs on the Raft leader only. It compares desired
//! state with what hosts report, pushes the commands that close the gap and aggregates the
//! reports into what operators see. It never touches disks or libvirt.

pub mod core;
mod link;
mod supervisor;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use qvdc_raft::DesiredState;
use qvdc_transport::protocol::{
    CommandOutput, HostCommand, HostCommandKind, Leadership, Liveness, NetworkView, PoolView,
    VmReport, VmView,
};
use ractor::{Actor, ActorRef};
use tokio::sync::watch;

use crate::{
    core::Core,
    supervisor::{ClusterArgs, ClusterMsg, ClusterSupervisor, Done, HostMsg, ObjectMsg, Objects},
};
pub use crate::{
    core::{CommandError, CommandIds, HostReports, Timings},
    link::{Call, HostLink, Link},
};

/// How long an API query waits for the supervision tree.
pub const QUERY_TIMEOUT_MS: u64 = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum SupervisionError {
    #[error("could not start the supervision tree: {0}")]
    Spawn(String),
    #[error("the supervision tree did not answer: {0}")]
    Unavailable(String),
}

/// What one host said it has in its last heartbeat to the leader, assigned or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReported {
    /// The pools it has mounted.
    pub pools: Vec<String>,
    /// Its domains that qvdc does not manage (no qvdc id).
    pub unmanaged: Vec<VmReport>,
    /// Whether its hypervisor listed its domains for that heartbeat (else `unmanaged` may
    /// be stale or incomplete).
    pub vms_known: bool,
    /// Its domains that carry a qvdc VM id.
    pub managed: Vec<VmReport>,
    /// When that heartbeat arrived.
    pub at: tokio::time::Instant,
}

impl HostReported {
    fn of(reports: &HostReports, at: tokio::time::Instant) -> Self {
        Self {
            managed: reports
                .vms
                .iter()
                .filter(|v| v.id.is_some())
                .cloned()
                .collect(),
            at,
            pools: reports
                .pools
                .iter()
                .filter(|p| p.mounted)
                .map(|p| p.pool.clone())
                .collect(),
            unmanaged: reports
                .vms
                .iter()
                .filter(|v| v.id.is_none())
                .cloned()
                .collect(),
            vms_known: reports.vms_known,
        }
    }
}

/// A running supervision tree for one leadership. Dropping it does not stop it; call
/// [`Supervision::stop`].
#[derive(Clone)]
pub struct Supervision {
    root: ActorRef<ClusterMsg>,
    /// The ids of every command this tree sends, its own and those sent on an operator's
    /// behalf (`execute`).
    ids: CommandIds,
}

fn timeout() -> Option<Duration> {
    Some(Duration::from_millis(QUERY_TIMEOUT_MS))
}

fn unavailable(e: impl std::fmt::Display) -> SupervisionError {
    SupervisionError::Unavailable(e.to_string())
}

/// What the tree measures: the commands it sends hosts, by kind, and how long heartbeats
/// take to reach the views. Cheap to clone: clones record into the same counters (a node
/// keeps one set across its leaderships).
#[derive(Debug, Clone)]
pub struct CommandMetrics {
    pub sent: qvdc_transport::metrics::Family<
        qvdc_transport::metrics::KindLabel,
        qvdc_transport::metrics::Counter,
    >,
    pub failed: qvdc_transport::metrics::Family<
        qvdc_transport::metrics::KindOutcome,
        qvdc_transport::metrics::Counter,
    >,
    pub in_flight: qvdc_transport::metrics::Gauge,
    /// From a heartbeat's arrival to its reports being in the views of the pools, VMs and
    /// networks it reports on (the mailboxes it passes through on the way).
    pub heartbeat_to_view: qvdc_transport::metrics::Histogram,
}

impl Default for CommandMetrics {
    fn default() -> Self {
        Self {
            sent: Default::default(),
            failed: Default::default(),
            in_flight: Default::default(),
            heartbeat_to_view: qvdc_transport::metrics::seconds(),
        }
    }
}

impl CommandMetrics {
    pub fn register(&self, registry: &mut qvdc_transport::metrics::Registry) {
        registry.register(
            "qvdc_host_commands_sent",
            "Commands the leader sent to hosts, by kind",
            self.sent.clone(),
        );
        registry.register(
            "qvdc_host_commands_failed",
            "Commands that failed, by kind and why: host (the host refused or failed it), undelivered, no_answer, not_connected",
            self.failed.clone(),
        );
        registry.register(
            "qvdc_host_commands_in_flight",
            "Commands sent and not answered yet",
            self.in_flight.clone(),
        );
        registry.register(
            "qvdc_heartbeat_to_view_seconds",
            "From a host's heartbeat arriving at the leader to its reports being in the views operators read",
            self.heartbeat_to_view.clone(),
        );
    }
}

impl Supervision {
    /// Starts the tree for `leadership` from the desired state.
    pub async fn start(
        leadership: Leadership,
        desired: watch::Receiver<Arc<DesiredState>>,
        timings: Timings,
    ) -> Result<Self, SupervisionError> {
        Self::measured(leadership, desired, timings, CommandMetrics::default()).await
    }

    /// [`Supervision::start`], counting commands into `metrics`.
    pub async fn measured(
        leadership: Leadership,
        desired: watch::Receiver<Arc<DesiredState>>,
        timings: Timings,
        metrics: CommandMetrics,
    ) -> Result<Self, SupervisionError> {
        let ids = CommandIds::new(leadership);
        let args = ClusterArgs {
            ids: ids.clone(),
            desired,
            timings,
            metrics,
        };
        let (root, _) = Actor::spawn(None, ClusterSupervisor, args)
            .await
            .map_err(|e| SupervisionError::Spawn(e.to_string()))?;
        Ok(Self { root, ids })
    }

    /// The leadership this tree acts for; its commands carry it as their fencing token.
    pub fn leadership(&self) -> Leadership {
        self.ids.leadership()
    }

    /// A host registered on `link`; commands for it go there from now on.
    pub fn host_connected(&self, host_id: String, link: Link) {
        let _ = self.root.cast(ClusterMsg::HostConnected { host_id, link });
    }

    /// A heartbeat arrived on `link`, which is where the host's commands go from now on.
    pub fn heartbeat(&self, host_id: String, link: Link, reports: HostReports) {
        let _ = self.root.cast(ClusterMsg::Heartbeat {
            host_id,
            link,
            reports,
            received: tokio::time::Instant::now(),
        });
    }

    /// Sends `kind` to `host` now, on an operator's behalf (a reboot), and waits for the
    /// answer.
    pub async fn execute(
        &self,
        host: &str,
        kind: HostCommandKind,
    ) -> Result<CommandOutput, CommandError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |outcome| {
            let _ = tx.send(outcome);
        });
        let command = HostCommand {
            id: self.ids.next(),
            kind,
        };
        self.root
            .cast(ClusterMsg::Execute {
                host: host.to_owned(),
                command,
                done,
            })
            .map_err(|_| CommandError::Stopped)?;
        rx.await.map_err(|_| CommandError::Stopped)?
    }

    pub(crate) async fn children<T>(
        &self,
        message: impl FnOnce(ractor::RpcReplyPort<T>) -> ClusterMsg,
    ) -> Result<T, SupervisionError>
    where
        T: Send + 'static,
    {
        let answer = self
            .root
            .call(message, timeout())
            .await
            .map_err(unavailable)?;
        answer.success_or(()).map_err(|_| unavailable("timed out"))
    }

    async fn view<C: Core>(actor: &ActorRef<ObjectMsg<C>>) -> Result<C::View, SupervisionError> {
        let answer = actor
            .call(ObjectMsg::View, timeout())
            .await
            .map_err(unavailable)?;
        answer.success_or(()).map_err(|_| unavailable("timed out"))
    }

    async fn view_of<C: Core>(
        &self,
        list: fn(ractor::RpcReplyPort<Objects<C>>) -> ClusterMsg,
        name: &str,
    ) -> Result<Option<C::View>, SupervisionError> {
        match self.children(list).await?.get(name) {
            Some(actor) => Ok(Some(Self::view(actor).await?)),
            None => Ok(None),
        }
    }

    async fn views_of<C: Core>(
        &self,
        list: fn(ractor::RpcReplyPort<Objects<C>>) -> ClusterMsg,
    ) -> Result<Vec<C::View>, SupervisionError> {
        let objects = self.children(list).await?;
        let mut views = Vec::with_capacity(objects.len());
        for actor in objects.values() {
            views.push(Self::view(actor).await?);
        }
        Ok(views)
    }

    pub async fn pool_view(&self, name: &str) -> Result<Option<PoolView>, SupervisionError> {
        self.view_of(ClusterMsg::Pools, name).await
    }

    pub async fn pool_views(&self) -> Result<Vec<PoolView>, SupervisionError> {
        self.views_of(ClusterMsg::Pools).await
    }

    pub async fn vm_view(&self, name: &str) -> Result<Option<VmView>, SupervisionError> {
        self.view_of(ClusterMsg::Vms, name).await
    }

    pub async fn vm_views(&self) -> Result<Vec<VmView>, SupervisionError> {
        self.views_of(ClusterMsg::Vms).await
    }

    pub async fn network_view(&self, name: &str) -> Result<Option<NetworkView>, SupervisionError> {
        self.view_of(ClusterMsg::Networks, name).await
    }

    pub async fn network_views(&self) -> Result<Vec<NetworkView>, SupervisionError> {
        self.views_of(ClusterMsg::Networks).await
    }

    /// What each host reported in its last heartbeat to this leader.
    pub async fn reported(&self) -> Result<BTreeMap<String, HostReported>, SupervisionError> {
        self.children(ClusterMsg::Reported).await
    }

    /// Each supervised host's liveness; a host supervisor that does not answer counts as
    /// Unreachable.
    pub async fn liveness(&self) -> Result<BTreeMap<String, Liveness>, SupervisionError> {
        let hosts = self.children(ClusterMsg::Hosts).await?;
        let mut out = BTreeMap::new();
        for (host, actor) in hosts {
            let answer = actor.call(HostMsg::Liveness, timeout()).await;
            let liveness = answer.ok().and_then(|r| r.success_or(()).ok());
            out.insert(host, liveness.unwrap_or(Liveness::Unreachable));
        }
        Ok(out)
    }

    /// How long each supervised host has been silent, counted from the tree's start for a
    /// host not heard from since; a host supervisor that does not answer counts as silent
    /// for no time (it is not taken for lost).
    pub async fn silences(&self) -> Result<BTreeMap<String, Duration>, SupervisionError> {
        let hosts = self.children(ClusterMsg::Hosts).await?;
        let mut out = BTreeMap::new();
        for (host, actor) in hosts {
            let answer = actor.call(HostMsg::Silence, timeout()).await;
            let silence = answer.ok().and_then(|r| r.success_or(()).ok());
            out.insert(host, silence.unwrap_or_default());
        }
        Ok(out)
    }

    /// Stops the tree and waits until every actor has stopped.
    pub async fn stop(self) {
        let _ = self
            .root
            .stop_and_wait(Some("leadership lost".into()), timeout())
            .await;
    }
}
