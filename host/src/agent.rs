//! The host agent's connection to the control plane: dial any node, follow redirects to the
//! leader, register, then heartbeat while serving the leader's commands on the same
//! connection. On any failure it re-dials with bounded backoff.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use qvdc_transport::{
    protocol::{
        CommandResult, HostCommand, HostCommandKind, HostMessage, HostReply, Inventory, Request,
        Response,
    },
    quic, Endpoint, TransportError,
};
use tokio::sync::{Mutex, Notify};
use tracing::{debug, info, warn};

use crate::{
    fence::{Fence, FenceError},
    mounter::Mounter,
    pools::Pools,
};

pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// A heartbeat or registration not answered within this long counts as a lost leader.
pub const REQUEST_TIMEOUT_MS: u64 = 2_000;
pub const REDIAL_BACKOFF_MS_MIN: u64 = 100;
pub const REDIAL_BACKOFF_MS_MAX: u64 = 2_000;
/// Commands the agent executes at once; more wait for a slot (QUIC flow control pushes back).
pub const COMMANDS_IN_FLIGHT_MAX: usize = 64;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host_id: String,
    /// Control-plane addresses; any one will do.
    pub cluster: Vec<SocketAddr>,
    /// `<data-dir>/pools`: where pools are mounted.
    pub pool_root: PathBuf,
    pub inventory: Inventory,
    pub heartbeat_interval_ms: u64,
}

/// The running agent. Cheap to share: the state lives behind `Arc`s.
pub struct Agent<M> {
    config: AgentConfig,
    endpoint: Endpoint,
    pools: Arc<Mutex<Pools<M>>>,
    /// The highest leader term seen; commands from lower terms are refused.
    fence: Arc<Fence>,
    /// Signalled after a command ran, so its effect is reported now rather than a heartbeat later.
    report_now: Arc<Notify>,
}

enum SessionEnd {
    Redirect(SocketAddr),
    Failed(String),
}

impl From<TransportError> for SessionEnd {
    fn from(e: TransportError) -> Self {
        SessionEnd::Failed(e.to_string())
    }
}

impl<M: Mounter> Agent<M> {
    /// `fence` holds the highest leader term seen, loaded from its store.
    pub fn new(config: AgentConfig, endpoint: Endpoint, mounter: M, fence: Fence) -> Self {
        assert!(
            !config.cluster.is_empty(),
            "an agent needs at least one control-plane address"
        );
        let pools = Pools::new(mounter, config.pool_root.clone());
        Self {
            config,
            endpoint,
            pools: Arc::new(Mutex::new(pools)),
            fence: Arc::new(fence),
            report_now: Arc::new(Notify::new()),
        }
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let mut next = 0usize;
        let mut hint = None;
        let mut failed: Option<SocketAddr> = None;
        let mut backoff_ms = REDIAL_BACKOFF_MS_MIN;
        loop {
            let addr = hint
                .take()
                .unwrap_or_else(|| self.next_address(&mut next, failed));
            match self.session(addr, &mut backoff_ms).await {
                SessionEnd::Redirect(leader) => {
                    debug!(%addr, %leader, "redirected to the leader");
                    hint = Some(leader);
                    tokio::time::sleep(Duration::from_millis(REDIAL_BACKOFF_MS_MIN / 2)).await;
                }
                SessionEnd::Failed(reason) => {
                    failed = Some(addr);
                    warn!(%addr, %reason, "control plane session ended; re-dialing in {backoff_ms} ms");
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(REDIAL_BACKOFF_MS_MAX);
                }
            }
        }
    }

    /// The next control-plane address in rotation, skipping the one that just failed: after a
    /// leader dies, its address is the one least likely to answer.
    fn next_address(&self, next: &mut usize, failed: Option<SocketAddr>) -> SocketAddr {
        let cluster = &self.config.cluster;
        let mut addr = cluster[*next % cluster.len()];
        *next += 1;
        if Some(addr) == failed && cluster.len() > 1 {
            addr = cluster[*next % cluster.len()];
            *next += 1;
        }
        addr
    }

    async fn request(
        &self,
        connection: &qvdc_transport::quinn::Connection,
        message: HostMessage,
    ) -> Result<Response, SessionEnd> {
        let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        match tokio::time::timeout(timeout, quic::call(connection, &Request::Host(message))).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(SessionEnd::Failed(format!(
                "no answer within {REQUEST_TIMEOUT_MS} ms"
            ))),
        }
    }

    async fn session(&self, addr: SocketAddr, backoff_ms: &mut u64) -> SessionEnd {
        let connection = match self.endpoint.connect(addr).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let register = HostMessage::Register {
            host_id: self.config.host_id.clone(),
            inventory: self.config.inventory.clone(),
        };
        let leadership = match self.request(&connection, register).await {
            Ok(Response::Host(HostReply::Registered { leadership })) => leadership,
            Ok(other) => return not_registered(other),
            Err(end) => return end,
        };
        info!(%addr, %leadership, host_id = %self.config.host_id, "registered with the leader");
        if let Err(e) = self.fence.admit(leadership) {
            // A node that still believes it leads an old term: find the real leader.
            return SessionEnd::Failed(e.to_string());
        }
        *backoff_ms = REDIAL_BACKOFF_MS_MIN;
        let commands = tokio::spawn(serve_commands(
            connection.clone(),
            self.pools.clone(),
            self.fence.clone(),
            self.report_now.clone(),
        ));
        let end = self.heartbeat(&connection).await;
        commands.abort();
        connection.close(0u32.into(), b"session over");
        end
    }

    async fn heartbeat(&self, connection: &qvdc_transport::quinn::Connection) -> SessionEnd {
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.config.heartbeat_interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 1.. {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.report_now.notified() => ticker.reset(),
            }
            let pools = self.pools.lock().await.reports().await;
            let beat = HostMessage::Heartbeat {
                host_id: self.config.host_id.clone(),
                seq,
                pools,
            };
            match self.request(connection, beat).await {
                Ok(Response::Host(HostReply::HeartbeatAck)) => {}
                Ok(other) => return not_registered(other),
                Err(end) => return end,
            }
        }
        unreachable!("heartbeat sequence numbers do not run out")
    }
}

fn not_registered(reply: Response) -> SessionEnd {
    match reply {
        Response::NotLeader { leader: Some(hint) } => match hint.addr.parse() {
            Ok(addr) => SessionEnd::Redirect(addr),
            Err(_) => {
                SessionEnd::Failed(format!("leader address {:?} is not an address", hint.addr))
            }
        },
        Response::NotLeader { leader: None } => SessionEnd::Failed("no leader elected yet".into()),
        Response::Host(HostReply::Retry { reason }) => SessionEnd::Failed(reason),
        Response::Forbidden { reason } => SessionEnd::Failed(format!("refused: {reason}")),
        Response::Malformed { reason } => SessionEnd::Failed(format!(
            "the control plane could not read our request: {reason}"
        )),
        other => SessionEnd::Failed(format!("unexpected reply {other:?}")),
    }
}

/// Serves the leader's commands: one stream per command, answered with its result.
async fn serve_commands<M: Mounter>(
    connection: qvdc_transport::quinn::Connection,
    pools: Arc<Mutex<Pools<M>>>,
    fence: Arc<Fence>,
    report_now: Arc<Notify>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(COMMANDS_IN_FLIGHT_MAX));
    while let Ok((send, mut recv)) = connection.accept_bi().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (pools, fence, report_now) = (pools.clone(), fence.clone(), report_now.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let command: HostCommand = match quic::read_request(&mut recv).await {
                Ok(c) => c,
                Err(e) => return warn!(error = %e, "unreadable command"),
            };
            let result = execute(command, &pools, &fence).await;
            report_now.notify_one();
            if let Err(e) = quic::respond(send, &result).await {
                warn!(error = %e, "could not answer a command");
            }
        });
    }
}

async fn execute<M: Mounter>(
    command: HostCommand,
    pools: &Mutex<Pools<M>>,
    fence: &Fence,
) -> CommandResult {
    if let Err(e) = fence.admit(command.id.leadership) {
        if matches!(e, FenceError::Stale { .. }) {
            warn!(id = %command.id, error = %e, "command refused");
        }
        return CommandResult {
            id: command.id,
            outcome: Err(e.to_string()),
        };
    }
    let outcome = match command.kind {
        HostCommandKind::InitStoragePool(spec) => {
            let name = spec.name.clone();
            let result = pools
                .lock()
                .await
                .init(spec)
                .await
                .map_err(|e| e.to_string());
            match &result {
                Ok(()) => info!(id = %command.id, pool = %name, "pool mounted"),
                Err(e) => warn!(id = %command.id, pool = %name, error = %e, "pool mount failed"),
            }
            result
        }
    };
    CommandResult {
        id: command.id,
        outcome,
    }
}
