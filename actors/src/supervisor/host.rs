//! One host's supervisor: holds the latest link to the host, tells its liveness from when it
//! was last heard, and carries commands to it, each in its own task so a slow host never
//! blocks the tree.

use std::time::Duration;

use qvdc_transport::protocol::{CommandOutput, HostCommand, Liveness};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;
use tracing::info;

use crate::{
    core::{liveness::liveness, CommandError, Timings},
    link::Link,
};

/// Called with a command's outcome once its host answered (or could not be reached).
pub(crate) type Done = Box<dyn FnOnce(Result<CommandOutput, CommandError>) + Send>;

pub(crate) enum HostMsg {
    /// The host registered on this link.
    Connected(Link),
    /// A heartbeat came on this link.
    Seen(Link),
    Execute {
        command: HostCommand,
        done: Done,
    },
    Liveness(RpcReplyPort<Liveness>),
    /// How long the host has not been heard from, counted from when this supervisor started
    /// if it never was: a new leader gives every host a full lease (ADR 23).
    Silence(RpcReplyPort<Duration>),
}

pub(crate) struct HostSupervisor;

pub(crate) struct HostArgs {
    pub(crate) host_id: String,
    pub(crate) timings: Timings,
    pub(crate) metrics: crate::CommandMetrics,
}

pub(crate) struct HostState {
    host_id: String,
    timings: Timings,
    metrics: crate::CommandMetrics,
    link: Option<Link>,
    last_seen: Option<Instant>,
    started: Instant,
}

impl Actor for HostSupervisor {
    type Msg = HostMsg;
    type State = HostState;
    type Arguments = HostArgs;

    async fn pre_start(
        &self,
        _: ActorRef<HostMsg>,
        args: HostArgs,
    ) -> Result<HostState, ActorProcessingErr> {
        Ok(HostState {
            host_id: args.host_id,
            timings: args.timings,
            metrics: args.metrics,
            link: None,
            last_seen: None,
            started: Instant::now(),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<HostMsg>,
        message: HostMsg,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HostMsg::Connected(link) => {
                info!(host = %state.host_id, "host connected");
                state.link = Some(link);
                state.last_seen = Some(Instant::now());
            }
            HostMsg::Seen(link) => {
                state.link = Some(link);
                state.last_seen = Some(Instant::now());
            }
            HostMsg::Execute { command, done } => execute(state, command, done),
            HostMsg::Silence(reply) => {
                let since = state.last_seen.unwrap_or(state.started);
                let _ = reply.send(Instant::now().saturating_duration_since(since));
            }
            HostMsg::Liveness(reply) => {
                // A host this tree has not heard from yet is counted from the tree's start,
                // as for its silence: a new leader gives every host one liveness bound to
                // find it before showing it Unreachable, rather than showing every host
                // Unreachable from its election until they re-register.
                let since = state.last_seen.unwrap_or(state.started);
                let _ = reply.send(liveness(
                    Some(since),
                    Instant::now(),
                    state.timings.stale_after(),
                ));
            }
        }
        Ok(())
    }
}

/// Sends one command to the host in its own task and hands the outcome to `done`.
fn execute(state: &HostState, command: HostCommand, done: Done) {
    let host = state.host_id.clone();
    let id = command.id;
    let kind = command.kind.label();
    let metrics = state.metrics.clone();
    let failed = move |why: &'static str| {
        metrics
            .failed
            .get_or_create(&qvdc_transport::metrics::KindOutcome { kind, outcome: why })
            .inc();
    };
    let Some(link) = state.link.clone() else {
        failed("not_connected");
        return done(Err(CommandError::NotConnected));
    };
    let timeout_ms = state.timings.command_timeout_ms;
    info!(%host, %id, command = kind, "sending command");
    let metrics = state.metrics.clone();
    metrics
        .sent
        .get_or_create(&qvdc_transport::metrics::KindLabel { kind })
        .inc();
    metrics.in_flight.inc();
    tokio::spawn(async move {
        let answer = tokio::time::timeout(Duration::from_millis(timeout_ms), link.call(command));
        let outcome = match answer.await {
            Ok(Ok(result)) if result.id == id => result.outcome.map_err(CommandError::Host),
            Ok(Ok(result)) => Err(CommandError::Undelivered(format!(
                "the host answered command {} instead",
                result.id
            ))),
            Ok(Err(e)) => Err(CommandError::Undelivered(e)),
            Err(_) => Err(CommandError::NoAnswer(timeout_ms)),
        };
        metrics.in_flight.dec();
        match &outcome {
            Ok(_) => {}
            Err(CommandError::Host(_)) => failed("host"),
            Err(CommandError::Undelivered(_)) => failed("undelivered"),
            Err(CommandError::NoAnswer(_)) => failed("no_answer"),
            Err(_) => failed("other"),
        }
        done(outcome);
    });
}
