//! The one supervisor of every pool, VM and network: an actor around a [`Core`] that hands
//! it its inputs, sends the commands it asks for through the tree's root and rings it when
//! its next deadline falls.

use std::marker::PhantomData;

use qvdc_transport::protocol::{CommandId, HostCommand};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;
use tracing::warn;

use super::{host::Done, ClusterMsg};
use crate::core::{CommandError, Core};

pub(crate) enum ObjectMsg<C: Core> {
    Record(C::Record),
    Observe {
        host: String,
        at: Instant,
        report: Option<C::Report>,
        /// From a heartbeat as it came, not one replayed to a supervisor started later.
        live: bool,
    },
    CommandDone {
        tag: C::Tag,
        id: CommandId,
        outcome: Result<(), CommandError>,
    },
    Tick,
    View(RpcReplyPort<C::View>),
}

pub(crate) struct ObjectSupervisor<C>(PhantomData<fn() -> C>);

impl<C> Default for ObjectSupervisor<C> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

pub(crate) struct ObjectArgs<C> {
    pub(crate) core: C,
    pub(crate) root: ActorRef<ClusterMsg>,
    pub(crate) heartbeat_to_view: qvdc_transport::metrics::Histogram,
}

pub(crate) struct ObjectState<C: Core> {
    core: C,
    root: ActorRef<ClusterMsg>,
    alarm: Alarm<ObjectMsg<C>>,
    heartbeat_to_view: qvdc_transport::metrics::Histogram,
}

impl<C: Core> Actor for ObjectSupervisor<C> {
    type Msg = ObjectMsg<C>;
    type State = ObjectState<C>;
    type Arguments = ObjectArgs<C>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: ObjectArgs<C>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ObjectState {
            core: args.core,
            root: args.root,
            alarm: Alarm::new(|| ObjectMsg::Tick),
            heartbeat_to_view: args.heartbeat_to_view,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        reconcile(&myself, state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ObjectMsg::Record(record) => state.core.set_record(record),
            ObjectMsg::Observe {
                host,
                at,
                report,
                live,
            } => {
                if live {
                    let waited = Instant::now().saturating_duration_since(at);
                    state.heartbeat_to_view.observe(waited.as_secs_f64());
                }
                state.core.observe(&host, at, report);
            }
            ObjectMsg::CommandDone { tag, id, outcome } => {
                if let Err(reason) = &outcome {
                    let (kind, name) = (C::KIND, state.core.name());
                    warn!(%kind, %name, %id, %reason, "command failed");
                }
                state.core.command_done(tag, id, outcome);
            }
            ObjectMsg::Tick => state.alarm.rang(Instant::now()),
            ObjectMsg::View(reply) => {
                let _ = reply.send(state.core.view(Instant::now()));
                return Ok(());
            }
        }
        reconcile(&myself, state)
    }
}

/// Sends what the core finds due and sets the alarm for when it may next act.
fn reconcile<C: Core>(
    myself: &ActorRef<ObjectMsg<C>>,
    state: &mut ObjectState<C>,
) -> Result<(), ActorProcessingErr> {
    let now = Instant::now();
    for order in state.core.tick(now) {
        send(&state.root, myself, order.host, order.command, order.tag)?;
    }
    state.alarm.set(myself, state.core.next_due(now));
    Ok(())
}

/// Sends `command` to `host` through the root; its outcome comes back to `me` with `tag`.
fn send<C: Core>(
    root: &ActorRef<ClusterMsg>,
    me: &ActorRef<ObjectMsg<C>>,
    host: String,
    command: HostCommand,
    tag: C::Tag,
) -> Result<(), ActorProcessingErr> {
    let (me, id) = (me.clone(), command.id);
    let done: Done = Box::new(move |outcome| {
        let outcome = outcome.map(drop);
        let _ = me.cast(ObjectMsg::CommandDone { tag, id, outcome });
    });
    root.cast(ClusterMsg::Execute {
        host,
        command,
        done,
    })?;
    Ok(())
}

/// When a supervisor next reconciles without an input: one timer, set to the earliest instant
/// its core reports due and moved only when something falls due sooner. A supervisor also
/// reconciles after every message, so an object with nothing pending costs nothing between
/// events (a fixed 250 ms tick per object had the leader wake ~100,000 times a second at
/// 25,000 pools).
struct Alarm<M: ractor::Message> {
    ring: fn() -> M,
    set_for: Option<Instant>,
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl<M: ractor::Message> Alarm<M> {
    fn new(ring: fn() -> M) -> Self {
        Self {
            ring,
            set_for: None,
            timer: None,
        }
    }

    /// Rings `actor` at `due`, unless the alarm already rings no later.
    fn set(&mut self, actor: &ActorRef<M>, due: Option<Instant>) {
        let Some(due) = due else { return };
        if self.set_for.is_some_and(|at| at <= due) {
            return;
        }
        self.cancel();
        let (actor, ring) = (actor.clone(), self.ring);
        self.timer = Some(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let _ = actor.cast(ring());
        }));
        self.set_for = Some(due);
    }

    /// A ring arrived at `now`. It may come from a timer cancelled too late, when the alarm is
    /// already set for later: that one stays set.
    fn rang(&mut self, now: Instant) {
        if self.set_for.is_some_and(|at| at <= now) {
            self.set_for = None;
            self.timer = None;
        }
    }

    fn cancel(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        self.set_for = None;
    }
}

impl<M: ractor::Message> Drop for Alarm<M> {
    fn drop(&mut self) {
        self.cancel();
    }
}
