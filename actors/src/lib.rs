//! qvdc-actors: the supervision tree that runs on the Raft leader only. It compares desired
//! state with what hosts report, pushes the commands that close the gap and aggregates the
//! reports into what operators see. It never touches disks or libvirt.

pub mod core;
mod supervisor;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use qvdc_raft::DesiredState;
use qvdc_transport::{
    protocol::{Leadership, Liveness, PoolReport, PoolView},
    quinn,
};
use ractor::{Actor, ActorRef};
use tokio::sync::watch;

pub use crate::core::Timings;
use crate::supervisor::{ClusterArgs, ClusterMsg, ClusterSupervisor, PoolMsg};

/// How long an API query waits for the supervision tree.
pub const QUERY_TIMEOUT_MS: u64 = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum SupervisionError {
    #[error("could not start the supervision tree: {0}")]
    Spawn(String),
    #[error("the supervision tree did not answer: {0}")]
    Unavailable(String),
}

/// A running supervision tree for one leadership. Dropping it does not stop it; call
/// [`Supervision::stop`].
#[derive(Clone)]
pub struct Supervision {
    root: ActorRef<ClusterMsg>,
    leadership: Leadership,
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
        Ok(Self { root, leadership })
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
    ) {
        let _ = self.root.cast(ClusterMsg::Heartbeat {
            host_id,
            connection,
            pools,
        });
    }

    pub async fn pool_view(&self, name: &str) -> Result<Option<PoolView>, SupervisionError> {
        let name = name.to_owned();
        let answer = self
            .root
            .call(|reply| ClusterMsg::PoolView { name, reply }, timeout())
            .await
            .map_err(unavailable)?;
        answer.success_or(()).map_err(|_| unavailable("timed out"))
    }

    pub async fn pool_views(&self) -> Result<Vec<PoolView>, SupervisionError> {
        let pools: Vec<ActorRef<PoolMsg>> = self
            .root
            .call(ClusterMsg::Pools, timeout())
            .await
            .map_err(unavailable)?
            .success_or(())
            .map_err(|_| unavailable("timed out"))?;
        let mut views = Vec::with_capacity(pools.len());
        for pool in pools {
            let view = pool
                .call(PoolMsg::View, timeout())
                .await
                .map_err(unavailable)?;
            views.push(view.success_or(()).map_err(|_| unavailable("timed out"))?);
        }
        Ok(views)
    }

    pub async fn liveness(&self) -> Result<BTreeMap<String, Liveness>, SupervisionError> {
        let answer = self
            .root
            .call(ClusterMsg::Liveness, timeout())
            .await
            .map_err(unavailable)?;
        answer.success_or(()).map_err(|_| unavailable("timed out"))
    }

    /// Stops the tree and waits until every actor has stopped.
    pub async fn stop(self) {
        let _ = self
            .root
            .stop_and_wait(Some("leadership lost".into()), timeout())
            .await;
    }
}
