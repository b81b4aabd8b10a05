//! Writes: a command validated against the desired state and committed through Raft, once
//! per request id; and the multi-step changes the cores describe (`core::protocols`),
//! carried out step by step.

use qvdc_actors::core::protocols::Step;
use qvdc_raft::{
    model::{Caller, RequestKey, AUDIT_LEVEL},
    Command, DesiredState, Outcome,
};
use qvdc_transport::{
    bugs::{self, Bug},
    protocol::{ApiResponse, Response},
};

use crate::{
    context::Context,
    propose::ProposeError,
    reply::{invalid, rejected, unavailable},
};

tokio::task_local! {
    /// The operator whose request this task is handling, set around each request by
    /// `api::handle`: every command proposed on its behalf is recorded as theirs. Outside
    /// (HA, moves' drivers, host registration) changes are qvdc's own.
    pub(crate) static CALLER: Caller;
}

/// `command` with who asked for it and when, once the cluster records that (every member
/// runs a release that decodes it).
fn stamped(ctx: &Context, command: Command) -> Command {
    if ctx.desired.borrow().audit.level < AUDIT_LEVEL {
        return command;
    }
    let caller = CALLER.try_with(Caller::clone).unwrap_or_default();
    Command::Audited {
        by: caller.name,
        via: caller.via,
        at_ms: ctx.clock.wall_ms(),
        command: Box::new(command),
    }
}

/// Validates `command` against the current desired state and commits it through Raft.
/// The error is the response to send back as it is.
pub(crate) async fn propose(ctx: &Context, command: Command) -> Result<(), Response> {
    // Only the leader's state is current enough to judge a command: a follower that has not
    // applied the pool created a moment ago would reject a volume in it. Send it on instead.
    if !ctx.is_leader() {
        return Err(ctx.not_leader());
    }
    let command = stamped(ctx, command);
    let bytes = qvdc_transport::codec::encoded_len(&command);
    if bytes > qvdc_raft::model::COMMAND_BYTES_MAX {
        return Err(invalid(format!(
            "the request is {bytes} bytes encoded, more than the {} one change may take; split it (assign fewer hosts at a time)",
            qvdc_raft::model::COMMAND_BYTES_MAX
        )));
    }
    let verdict = ctx.desired.borrow().validate(&command);
    let counted = |outcome| ctx.metrics.proposed(outcome);
    if verdict.is_err() {
        // The applied state can lag the log: a new leader applies what earlier terms
        // committed only after its election, and a deposed leader does not know it is one.
        // A rejection is an answer too, so judge again once a quorum has confirmed this
        // leadership and everything committed before it is applied.
        ctx.leading().await?;
        let verdict = ctx.desired.borrow().validate(&command);
        verdict.map_err(|e| {
            counted("refused");
            rejected(e)
        })?;
    }
    if bugs::active(Bug::AckBeforeCommit) {
        let proposer = ctx.proposer.clone();
        tokio::spawn(async move { proposer.propose(command).await });
        return Ok(());
    }
    let outcome = ctx.proposer.propose(command).await;
    counted(match &outcome {
        Ok(Outcome::Rejected(_)) => "refused",
        Ok(_) => "committed",
        Err(_) => "failed",
    });
    match outcome {
        Ok(Outcome::Applied | Outcome::Unchanged) => Ok(()),
        Ok(Outcome::Rejected(e)) => Err(rejected(e)),
        Ok(Outcome::Batch(_)) => unreachable!("one command, one outcome"),
        Err(ProposeError::NotLeader) => Err(ctx.not_leader()),
        Err(e) => Err(unavailable(format!("{e}; retry"))),
    }
}

/// Commits `command` once per request.
pub(crate) async fn propose_once(
    ctx: &Context,
    key: RequestKey,
    command: Command,
) -> Result<(), Response> {
    propose(ctx, key.once(command)).await
}

/// Commits `command` once per request; answers `Done`.
pub(crate) async fn once(ctx: &Context, key: RequestKey, command: Command) -> Response {
    done(propose_once(ctx, key, command).await)
}

pub(crate) fn done(result: Result<(), Response>) -> Response {
    match result {
        Ok(()) => Response::Api(Ok(ApiResponse::Done)),
        Err(response) => response,
    }
}

/// Most steps one change takes; more means the state keeps moving under it.
const STEPS_MAX: usize = 8;

/// Carries out the change `next` describes (see `core::protocols`): asks it for the next
/// step given the desired state now and whether the host has confirmed its part, does that,
/// and asks again. A host's confirmation counts only for the very step it answered (if the
/// state moved meanwhile, say another VM took a volume the host just let go of, the step
/// differs and the host is asked again) and only until this change commits something else. A step that fails ends the
/// change with its error, unless the state moved on meanwhile (a racing retry did the
/// work): then the change carries on from there.
pub(crate) async fn carry_out(
    ctx: &Context,
    next: impl Fn(&DesiredState, bool) -> Step,
) -> Response {
    // The host step the host confirmed, while that confirmation still stands.
    let mut confirmed: Option<Step> = None;
    let step_now = |confirmed: &Option<Step>| {
        let desired = ctx.desired();
        let unconfirmed = next(&desired, false);
        let still = confirmed.as_ref() == Some(&unconfirmed);
        if still {
            next(&desired, true)
        } else {
            unconfirmed
        }
    };
    // Confirmed once, before the first step that is not the last: a leader cut off from its
    // peers must send the client elsewhere, not start a change it cannot finish.
    let mut supervision = None;
    for _ in 0..STEPS_MAX {
        let step = step_now(&confirmed);
        if supervision.is_none() && !matches!(step, Step::Finish(_)) {
            match ctx.leading().await {
                Ok(leading) => supervision = Some(leading),
                Err(response) => return response,
            }
        }
        let result = match (&step, &supervision) {
            (Step::Commit(command) | Step::Finish(command), _) => {
                let committed = propose(ctx, command.clone()).await;
                if committed.is_ok() {
                    confirmed = None;
                }
                committed
            }
            (
                Step::OnHost {
                    host,
                    command,
                    unconfirmed,
                },
                Some(supervision),
            ) => match supervision.execute(host, command.clone()).await {
                Ok(_) => {
                    confirmed = Some(step.clone());
                    Ok(())
                }
                Err(reason) => Err(unavailable(format!("{unconfirmed} ({reason})"))),
            },
            (Step::OnHost { .. }, None) => unreachable!("confirmed above"),
        };
        match result {
            Ok(()) if matches!(step, Step::Finish(_)) => return done(Ok(())),
            Ok(()) => {}
            Err(response) => {
                if step_now(&confirmed) == step {
                    return response;
                }
            }
        }
    }
    unavailable("the change did not settle: the state kept changing under it; retry")
}
