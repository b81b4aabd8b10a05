//! qvdc-actors: the supervision tree that runs on the Raft leader only. It compares desired
//! state with what hosts report, pushes the commands that close the gap and aggregates the
//! reports into what operators see. It never touches disks or libvirt.

pub mod core;
mod supervisor;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use qvdc_raft::DesiredState;
use qvdc_transport::{
    protocol::{
        CommandOutput, HostCommand, HostCommandKind, Leadership, Liveness, NetworkReport,
        NetworkView, PoolReport, PoolView, VmReport, VmView,
    },
    quinn,
};
use ractor::{Actor, ActorRef};
use tokio::sync::watch;

pub use crate::core::Timings;
use crate::supervisor::{
    ClusterArgs, ClusterMsg, ClusterSupervisor, Done, HostMsg, NetMsg, PoolMsg, VmMsg,
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostReported {
    /// The pools it has mounted.
    pub pools: Vec<String>,
    /// Its domains that qvdc does not manage (no qvdc id).
    pub unmanaged: Vec<qvdc_transport::protocol::VmReport>,
}

/// A running supervision tree for one leadership. Dropping it does not stop it; call
/// [`Supervision::stop`].
#[derive(Clone)]
pub struct Supervision {
    root: ActorRef<ClusterMsg>,
    leadership: Leadership,
    /// Sequence numbers of commands sent on an operator's behalf (`execute`), counted down
    /// from the top so they never meet the supervisors' own.
    next_seq: Arc<std::sync::atomic::AtomicU64>,
}

fn timeout() -> Option<Duration> {
    Some(Duration::from_millis(QUERY_TIMEOUT_MS))
}

fn unavailable(e: impl std::fmt::Display) -> SupervisionError {
    SupervisionError::Unavailable(e.to_string())
}

impl Supervision {
    /// Starts the tree for `leadership` from the desired state.
    pub async fn start(
        leadership: Leadership,
        desired: watch::Receiver<Arc<DesiredState>>,
        timings: Timings,
    ) -> Result<Self, SupervisionError> {
        let args = ClusterArgs {
            leadership,
            desired,
            timings,
        };
        let (root, _) = Actor::spawn(None, ClusterSupervisor, args)
            .await
            .map_err(|e| SupervisionError::Spawn(e.to_string()))?;
        Ok(Self {
            root,
            leadership,
            next_seq: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
        })
    }

    /// The leadership this tree acts for; its commands carry it as their fencing token.
    pub fn leadership(&self) -> Leadership {
        self.leadership
    }

    /// A host registered on `connection`; commands for it go there from now on.
    pub fn host_connected(&self, host_id: String, connection: quinn::Connection) {
        let _ = self.root.cast(ClusterMsg::HostConnected {
            host_id,
            connection,
        });
    }

    /// A heartbeat arrived on `connection`, which is where the host's commands go from now on.
    pub fn heartbeat(
        &self,
        host_id: String,
        connection: quinn::Connection,
        pools: Vec<PoolReport>,
        vms: Vec<VmReport>,
        networks: Vec<NetworkReport>,
    ) {
        let _ = self.root.cast(ClusterMsg::Heartbeat {
            host_id,
            connection,
            pools,
            vms,
            networks,
        });
    }

    async fn network(actor: &ActorRef<NetMsg>) -> Result<NetworkView, SupervisionError> {
        let answer = actor
            .call(NetMsg::View, timeout())
            .await
            .map_err(unavailable)?;
        answer.success_or(()).map_err(|_| unavailable("timed out"))
    }

    pub async fn network_view(&self, name: &str) -> Result<Option<NetworkView>, SupervisionError> {
        match self.children(ClusterMsg::Networks).await?.get(name) {
            Some(actor) => Ok(Some(Self::network(actor).await?)),
            None => Ok(None),
        }
    }

    pub async fn network_views(&self) -> Result<Vec<NetworkView>, SupervisionError> {
        let networks = self.children(ClusterMsg::Networks).await?;
        let mut views = Vec::with_capacity(networks.len());
        for actor in networks.values() {
            views.push(Self::network(actor).await?);
        }
        Ok(views)
    }

    /// Sends `kind` to `host` now, on an operator's behalf (a reboot), and waits for the
    /// answer. The error is worded for the operator.
    pub async fn execute(
        &self,
        host: &str,
        kind: HostCommandKind,
    ) -> Result<CommandOutput, String> {
        let seq = self
            .next_seq
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let id = qvdc_transport::protocol::CommandId {
            leadership: self.leadership,
            seq,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |outcome| {
            let _ = tx.send(outcome);
        });
        let command = HostCommand { id, kind };
        self.root
            .cast(ClusterMsg::Execute {
                host: host.to_owned(),
                command,
                done,
            })
            .map_err(|e| format!("the supervision tree is gone: {e}"))?;
        rx.await
            .map_err(|_| "the supervision tree stopped before the host answered".to_owned())?
    }

    async fn vm(actor: &ActorRef<VmMsg>) -> Result<VmView, SupervisionError> {
        let answer = actor
            .call(VmMsg::View, timeout())
            .await
            .map_err(unavailable)?;
        answer.success_or(()).map_err(|_| unavailable("timed out"))
    }

    pub async fn vm_view(&self, name: &str) -> Result<Option<VmView>, SupervisionError> {
        match self.children(ClusterMsg::Vms).await?.get(name) {
            Some(actor) => Ok(Some(Self::vm(actor).await?)),
            None => Ok(None),
        }
    }

    pub async fn vm_views(&self) -> Result<Vec<VmView>, SupervisionError> {
        let vms = self.children(ClusterMsg::Vms).await?;
        let mut views = Vec::with_capacity(vms.len());
        for actor in vms.values() {
            views.push(Self::vm(actor).await?);
        }
        Ok(views)
    }

    async fn children<T>(
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

    async fn view(pool: &ActorRef<PoolMsg>) -> Result<PoolView, SupervisionError> {
        let answer = pool
            .call(PoolMsg::View, timeout())
            .await
            .map_err(unavailable)?;
        answer.success_or(()).map_err(|_| unavailable("timed out"))
    }

    pub async fn pool_view(&self, name: &str) -> Result<Option<PoolView>, SupervisionError> {
        match self.children(ClusterMsg::Pools).await?.get(name) {
            Some(pool) => Ok(Some(Self::view(pool).await?)),
            None => Ok(None),
        }
    }

    pub async fn pool_views(&self) -> Result<Vec<PoolView>, SupervisionError> {
        let pools = self.children(ClusterMsg::Pools).await?;
        let mut views = Vec::with_capacity(pools.len());
        for pool in pools.values() {
            views.push(Self::view(pool).await?);
        }
        Ok(views)
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

    /// Stops the tree and waits until every actor has stopped.
    pub async fn stop(self) {
        let _ = self
            .root
            .stop_and_wait(Some("leadership lost".into()), timeout())
            .await;
    }
}
