//! Moving VMs on the leader (ADR 24): `vm migrate`, and the evacuation of hosts in
//! maintenance. A move is recorded through Raft before anything is done (`BeginMove`) and
//! after it is over (`FinishMove` or `AbandonMove`); in between, a task of the leadership
//! drives it from what the two hosts report, so a new leader picks it up where the reports
//! say it is: a guest that already runs on its new host finishes the move, one still on its
//! old host is sent again (libvirt refuses a second migration of the same guest, and a
//! domain that left is not found), one that runs nowhere is given back to its old host.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use qvdc_actors::{
    core::{ha, moves, placement},
    CommandError, HostReported, Supervision, Timings,
};
use qvdc_raft::{
    model::{RequestKey, VmRecord, MOVE_REASON_BYTES_MAX},
    Command, DesiredState,
};
use qvdc_transport::{
    backoff::Backoff,
    bugs::{self, Bug},
    protocol::{
        ApiErrorKind, ApiResponse, DesiredPower, EvacuationView, HostCommandKind, HostErrorKind,
        Leadership, Liveness, MigrationMode, MoveView, MovesView, PoolSource, PowerState, Response,
        VmReport,
    },
};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{
    api::placement_facts,
    context::Context,
    reply::{invalid, no_host, no_vm, unavailable},
    write::{once, propose, propose_once},
};

/// How often the leader looks for moves to begin and moves without a driver.
const MOVES_CHECK_MS: u64 = 250;
/// How long a driver waits for a host's next report before it decides without it.
const REPORT_WAIT_MS: u64 = 5_000;
/// A report at most this old is taken as the host's latest word (hosts heartbeat every
/// second).
const REPORT_FRESH_MS: u64 = 1_500;

/// What the leader's moves keep between rounds. Soft state: a new leader rebuilds it from
/// the records and the hosts' reports.
#[derive(Debug, Default)]
pub(crate) struct MovesState {
    /// By host: the libvirt URI it takes live migrations at, as it said when it connected.
    live: HashMap<String, String>,
    /// By VM: the task driving its move (its number) and what it is doing.
    driving: HashMap<String, (u64, String)>,
    /// The number of the next driving task.
    tasks: u64,
    /// By host in maintenance: what happens to each VM it still runs.
    evacuation: BTreeMap<String, Vec<(String, String)>>,
}

impl MovesState {
    fn live_hosts(&self) -> BTreeSet<String> {
        self.live.keys().cloned().collect()
    }
}

/// Host `host` said where (if anywhere) it takes live migrations.
pub(crate) fn capabilities(node: &Context, host: &str, migration_uri: Option<String>) {
    let mut state = node.moves.lock().expect("moves lock poisoned");
    match migration_uri {
        Some(uri) => state.live.insert(host.to_owned(), uri),
        None => state.live.remove(host),
    };
}

/// Begins evacuations and drives every move while this node leads for `leadership`.
pub(crate) async fn watch(node: Arc<Context>, leadership: Leadership, timings: Timings) {
    {
        let mut state = node.moves.lock().expect("moves lock poisoned");
        state.driving.clear();
        state.evacuation.clear();
    }
    let period = Duration::from_millis(MOVES_CHECK_MS);
    let each = |supervision: Supervision| {
        let node = node.clone();
        async move { round(&node, &supervision, timings).await }
    };
    node.each_leader_round(leadership, period, "moves", || true, each)
        .await;
}

async fn round(
    node: &Arc<Context>,
    supervision: &Supervision,
    timings: Timings,
) -> Result<(), String> {
    let desired = node.desired();
    if desired.hosts.values().any(|h| h.maintenance) {
        let facts = placement_facts(supervision, node)
            .await
            .map_err(|_| "placement facts unavailable".to_owned())?;
        let live = node.moves.lock().expect("moves lock poisoned").live_hosts();
        let plan = moves::evacuate(&desired, facts, &live);
        node.moves.lock().expect("moves lock poisoned").evacuation = plan.remaining;
        for moves::Begin { vm, to, mode } in plan.begin {
            info!(%vm, %to, %mode, "maintenance: moving VM off its host");
            let command = Command::BeginMove {
                name: vm.clone(),
                to,
                mode,
            };
            if let Err(response) = propose(node, command).await {
                warn!(%vm, ?response, "move not begun; retrying next round");
            }
        }
    } else {
        node.moves
            .lock()
            .expect("moves lock poisoned")
            .evacuation
            .clear();
    }
    let desired = node.desired();
    for (name, vm) in desired.vms.iter() {
        let Some(moving) = &vm.moving else {
            continue;
        };
        let task = {
            let mut state = node.moves.lock().expect("moves lock poisoned");
            if state.driving.contains_key(name) {
                continue;
            }
            state.tasks += 1;
            let task = state.tasks;
            state
                .driving
                .insert(name.clone(), (task, "starting".to_owned()));
            task
        };
        let mv = Drive {
            node: node.clone(),
            supervision: supervision.clone(),
            name: name.clone(),
            id: vm.spec.id.clone(),
            from: vm.host.clone(),
            to: moving.to.clone(),
            mode: moving.mode,
            shutdown_timeout_ms: timings.vm_shutdown_timeout_ms,
            task,
        };
        tokio::spawn(async move {
            let (name, node) = (mv.name.clone(), mv.node.clone());
            mv.run().await;
            let mut state = node.moves.lock().expect("moves lock poisoned");
            // Only its own entry: a later leadership may drive the move again meanwhile.
            if state.driving.get(&name).is_some_and(|(t, _)| *t == task) {
                state.driving.remove(&name);
            }
        });
    }
    Ok(())
}

/// One move, driven by one task of one leadership.
struct Drive {
    node: Arc<Context>,
    supervision: Supervision,
    name: String,
    id: String,
    from: String,
    to: String,
    mode: MigrationMode,
    shutdown_timeout_ms: u64,
    /// This task's number in [`MovesState::driving`].
    task: u64,
}

/// What a host last said about one VM's domain.
enum Seen {
    /// The host's report is not fresh, or does not list domains.
    Unknown,
    Absent,
    Domain(PowerState),
}

impl Drive {
    fn status(&self, status: String) {
        let mut state = self.node.moves.lock().expect("moves lock poisoned");
        if let Some((task, now)) = state.driving.get_mut(&self.name) {
            if *task == self.task {
                *now = status;
            }
        }
    }

    /// The VM's record while this move is still under way.
    fn record(&self) -> Option<VmRecord> {
        let desired = self.node.desired();
        let vm = desired.vms.get(&self.name)?;
        let same = vm.host == self.from
            && vm.spec.id == self.id
            && vm
                .moving
                .as_ref()
                .is_some_and(|m| m.to == self.to && m.mode == self.mode);
        same.then(|| vm.clone())
    }

    /// Whether this task still speaks for the leader.
    async fn current(&self) -> bool {
        match self.node.supervision().await {
            Some(s) if s.leadership() == self.supervision.leadership() => {}
            _ => return false,
        }
        self.node.leading().await.is_ok() && self.record().is_some()
    }

    /// What `host` reported about the VM in a heartbeat that arrived after `after`, waiting
    /// up to [`REPORT_WAIT_MS`] for one.
    async fn seen_on(&self, host: &str, after: Instant) -> Seen {
        let deadline = after + Duration::from_millis(REPORT_WAIT_MS);
        loop {
            if let Ok(reported) = self.supervision.reported().await {
                if let Some(r) = reported.get(host).filter(|r| r.at > after && r.vms_known) {
                    return match find(&r.managed, &self.name, &self.id) {
                        Some(report) => Seen::Domain(report.power),
                        None => Seen::Absent,
                    };
                }
            }
            if Instant::now() >= deadline {
                return Seen::Unknown;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn commit(&self, command: Command) -> bool {
        match propose(&self.node, command).await {
            Ok(()) => true,
            Err(response) => {
                warn!(vm = %self.name, ?response, "move not recorded; retrying");
                false
            }
        }
    }

    async fn finish(&self) -> bool {
        let finish = Command::FinishMove {
            name: self.name.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
        };
        match propose(&self.node, finish).await {
            Ok(()) => true,
            // The new host cannot have the VM any more (its pool was unassigned from it, it
            // was removed): the move is given up, its copy there is a stray.
            Err(Response::Api(Err(e))) if e.kind == ApiErrorKind::Invalid => {
                self.abandon(format!("the move could not be finished: {}", e.message))
                    .await
            }
            Err(response) => {
                warn!(vm = %self.name, ?response, "move not recorded; retrying");
                false
            }
        }
    }

    async fn abandon(&self, reason: String) -> bool {
        warn!(vm = %self.name, from = %self.from, to = %self.to, %reason, "move given up");
        self.commit(Command::AbandonMove {
            name: self.name.clone(),
            to: self.to.clone(),
            reason: cut(reason),
        })
        .await
    }

    async fn run(self) {
        let started = Instant::now();
        let backoff = Backoff::from_millis(500, 5_000);
        let mut failures = 0;
        while self.current().await {
            let done = match self.mode {
                MigrationMode::Live => self.live_step().await,
                MigrationMode::Cold => self.cold_step().await,
            };
            if done {
                if self.record().is_none() {
                    info!(vm = %self.name, from = %self.from, to = %self.to, mode = %self.mode,
                        took_ms = started.elapsed().as_millis() as u64, "move over");
                    return;
                }
                // Recorded, but not in the state this node applied yet: look again shortly.
                tokio::time::sleep(Duration::from_millis(MOVES_CHECK_MS)).await;
                continue;
            }
            failures += 1;
            tokio::time::sleep(backoff.pause(failures)).await;
        }
    }

    /// Either host lost, and why the move cannot go on (HA restarts an HA VM of a lost
    /// host).
    async fn lost_host(&self) -> Option<(String, String)> {
        let silences = self.supervision.silences().await.ok()?;
        let lost_after = ha::lost_after();
        [&self.from, &self.to]
            .into_iter()
            .find(|h| silences.get(*h).is_some_and(|s| *s >= lost_after))
            .map(|h| (h.clone(), format!("host {h} was lost during the move")))
    }

    /// One attempt at a live move; `true` once it is recorded as over.
    async fn live_step(&self) -> bool {
        // Arrived already (an earlier leader's migration, or an answer lost on the way), as
        // the destination's latest report says? Then the move is over whatever became of
        // the old host.
        let now = Instant::now();
        let latest = now
            .checked_sub(Duration::from_millis(REPORT_FRESH_MS))
            .unwrap_or(now);
        let arriving = match self.seen_on(&self.to, latest).await {
            Seen::Domain(PowerState::Running) => return self.finish().await,
            Seen::Domain(PowerState::Paused) => true,
            _ => false,
        };
        if let Some((lost, why)) = self.lost_host().await {
            if lost == self.to && !bugs::active(Bug::MoveGivenUpOnALostDestination) {
                // The destination may hold the guest: a migration that finished while its
                // answer was lost. Only the source's own word decides: still there, the move
                // is given up; gone, it went over and the VM is the destination's (HA or the
                // operator deal with a lost host). Never started again at the source on a
                // guess, which would run it twice once the destination comes back.
                match self.seen_on(&self.from, latest).await {
                    Seen::Domain(_) => {}
                    Seen::Absent => return self.finish().await,
                    Seen::Unknown => {
                        self.status(format!(
                            "{why}; waiting to hear from {} whether the guest left it",
                            self.from
                        ));
                        return false;
                    }
                }
            }
            return self.abandon(why).await;
        }
        if arriving {
            // A migration is under way (sent by this leader or an earlier one): it ends with
            // the guest at one host or the other, never both running; wait for which.
            self.status(format!("migrating live from {} to {}", self.from, self.to));
            return false;
        }
        // Both hosts heard from now: a guest is never sent to a host that may have lost
        // power or the control plane (whose lease may lapse with the guest on it).
        if let Some(silent) = self.silent_host().await {
            self.status(format!("waiting to hear from {silent}"));
            return false;
        }
        let Some(uri) = self.live_uri() else {
            return self
                .abandon(format!(
                    "host {} takes no live migrations now (its qhost runs without --migration-uri)",
                    self.to
                ))
                .await;
        };
        let storage_unsafe = storage_unsafe(&self.node.desired(), &self.name);
        let kind = HostCommandKind::MigrateVm {
            name: self.name.clone(),
            id: self.id.clone(),
            to: uri,
            storage_unsafe,
        };
        self.status(format!("migrating live from {} to {}", self.from, self.to));
        let sent = Instant::now();
        match self.supervision.execute(&self.from, kind).await {
            Ok(_) => {
                info!(vm = %self.name, from = %self.from, to = %self.to,
                    took_ms = sent.elapsed().as_millis() as u64, "live migration done");
                self.finish().await
            }
            Err(CommandError::Host(e))
                if e.kind == HostErrorKind::NotFound
                    && !bugs::active(Bug::MoveGivenUpWhenTheSourceHasNoGuest) =>
            {
                // The source has no guest: a migration sent before (by an earlier leader, or
                // by this one with its answer lost) took it over, or it is gone. It runs
                // nowhere but at the destination, so the VM is the destination's, which starts
                // it if it has no guest. Not decided by the destination's report: one that
                // arrives now may carry a survey from before the guest landed, and giving up
                // on it would start the VM again at the source while it runs at the
                // destination.
                info!(vm = %self.name, from = %self.from, to = %self.to,
                    "the guest left its old host; the move is over");
                self.finish().await
            }
            Err(CommandError::Host(e)) => {
                // Refused or failed: the destination's next report tells.
                // Given up only once the destination has no copy at all: a paused one is a
                // migration still under way (libvirt refuses a second one meanwhile).
                match self.seen_on(&self.to, Instant::now()).await {
                    Seen::Domain(PowerState::Running) => self.finish().await,
                    Seen::Absent | Seen::Domain(PowerState::ShutOff | PowerState::Crashed) => {
                        self.abandon(format!("live migration to {} failed: {e}", self.to))
                            .await
                    }
                    _ => false,
                }
            }
            Err(e) => {
                self.status(format!(
                    "migrating live from {} to {}: {e}; trying again",
                    self.from, self.to
                ));
                false
            }
        }
    }

    /// One step of a cold move: the old host shuts the guest down; once it has answered
    /// that shutdown and then reports the guest shut off (or gone), the VM is the new
    /// host's, which starts it. The old host runs one operation per domain at a time, so
    /// the answer also means that whatever was sent before (a start held up by a hung
    /// libvirt) is over: its report cannot be older than a start still to come.
    async fn cold_step(&self) -> bool {
        if bugs::active(Bug::ColdMoveWithoutShutdown) {
            return self.finish().await;
        }
        if let Some((_, why)) = self.lost_host().await {
            return self.abandon(why).await;
        }
        self.status(format!(
            "shutting down on {} to start on {}",
            self.from, self.to
        ));
        let kind = HostCommandKind::ShutdownVm {
            name: self.name.clone(),
            timeout_ms: self.shutdown_timeout_ms,
        };
        match self.supervision.execute(&self.from, kind).await {
            Ok(_) => {}
            Err(CommandError::Host(e)) if e.kind == HostErrorKind::NotFound => {}
            Err(e) => {
                self.status(format!("shutting down on {}: {e}; trying again", self.from));
                return false;
            }
        }
        match self.seen_on(&self.from, Instant::now()).await {
            Seen::Absent | Seen::Domain(PowerState::ShutOff | PowerState::Crashed) => {
                self.finish().await
            }
            _ => false,
        }
    }

    /// The first of the two hosts not heard from within the liveness bound, if any.
    async fn silent_host(&self) -> Option<String> {
        let liveness = self.supervision.liveness().await.ok()?;
        [&self.from, &self.to]
            .into_iter()
            .find(|h| liveness.get(*h) != Some(&Liveness::Ready))
            .cloned()
    }

    fn live_uri(&self) -> Option<String> {
        let state = self.node.moves.lock().expect("moves lock poisoned");
        state.live.get(&self.to).cloned()
    }
}

/// The domain of VM `id` named `name` in a host's report.
fn find<'a>(reports: &'a [VmReport], name: &str, id: &str) -> Option<&'a VmReport> {
    reports
        .iter()
        .find(|r| r.name == name && r.id.as_deref() == Some(id))
}

/// Whether libvirt must be told the VM's storage is shared although it cannot see it: a
/// disk on a directory pool (libvirt trusts network and cluster filesystems only).
fn storage_unsafe(desired: &DesiredState, name: &str) -> bool {
    desired.vms.get(name).is_some_and(|vm| {
        vm.spec.disks.iter().any(|d| {
            desired
                .pools
                .get(&d.pool)
                .is_some_and(|p| matches!(p.spec.source, PoolSource::Dir { .. }))
        })
    })
}

/// `reason` cut to what a move's failure may hold.
fn cut(mut reason: String) -> String {
    if reason.len() > MOVE_REASON_BYTES_MAX {
        let mut end = MOVE_REASON_BYTES_MAX - 3;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}

/// The moves under way and failed, and each host in maintenance with what it still runs.
fn view(
    node: &Context,
    only: Option<&str>,
    unmanaged: &BTreeMap<String, HostReported>,
) -> MovesView {
    let desired = node.desired();
    let state = node.moves.lock().expect("moves lock poisoned");
    let mut view = MovesView::default();
    for (name, vm) in desired.vms.iter() {
        if only.is_some_and(|only| only != name) {
            continue;
        }
        if let Some(moving) = &vm.moving {
            view.moves.push(MoveView {
                vm: name.clone(),
                from: vm.host.clone(),
                to: moving.to.clone(),
                mode: moving.mode,
                status: state
                    .driving
                    .get(name)
                    .map(|(_, status)| status.clone())
                    .unwrap_or_else(|| "about to start".to_owned()),
                failed: false,
            });
        } else if let Some(failed) = &vm.move_failed {
            view.moves.push(MoveView {
                vm: name.clone(),
                from: vm.host.clone(),
                to: failed.to.clone(),
                mode: failed.mode,
                status: failed.reason.clone(),
                failed: true,
            });
        }
    }
    if only.is_none() {
        for (host, _) in desired.hosts.iter().filter(|(_, h)| h.maintenance) {
            // What the host still runs, from the records (current to this very write);
            // what happens to each, from the latest round.
            let planned = state.evacuation.get(host);
            let remaining = desired
                .vms_of_host(host)
                .filter(|vm| vm.power == DesiredPower::Running && !vm.releasing)
                .map(|vm| {
                    let name = vm.spec.name.clone();
                    let status = planned
                        .and_then(|p| p.iter().find(|(v, _)| *v == name))
                        .map(|(_, status)| status.clone())
                        .unwrap_or_else(|| "about to move".to_owned());
                    (name, status)
                })
                .collect();
            let unmanaged = unmanaged
                .get(host)
                .map(|r| {
                    r.unmanaged
                        .iter()
                        .filter(|d| d.power == PowerState::Running)
                        .map(|d| d.name.clone())
                        .collect()
                })
                .unwrap_or_default();
            view.evacuations.push(EvacuationView {
                host: host.clone(),
                remaining,
                unmanaged,
            });
        }
    }
    view
}

/// `vm moves`/`host maintenance --wait`: what moves and what is left to move.
pub(crate) async fn moves(node: &Context) -> Response {
    let supervision = match node.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    match supervision.reported().await {
        Ok(reported) => Response::Api(Ok(ApiResponse::Moves(view(node, None, &reported)))),
        Err(e) => unavailable(e.to_string()),
    }
}

/// `vm migrate`: begins moving VM `name` to `to` or to where placement puts it; live if it
/// runs and the new host takes live migrations.
pub(crate) async fn migrate(
    node: &Context,
    key: RequestKey,
    name: String,
    to: Option<String>,
) -> Response {
    let answer = |node: &Context| {
        let view = view(node, Some(&name), &BTreeMap::new());
        Response::Api(Ok(ApiResponse::Moves(view)))
    };
    if key.applied_before(&node.desired()) {
        return answer(node);
    }
    let supervision = match node.leading().await {
        Ok(supervision) => supervision,
        Err(response) => return response,
    };
    let desired = node.desired();
    let Some(vm) = desired.vms.get(&name).cloned() else {
        return no_vm(&desired, &name);
    };
    let facts = match placement_facts(&supervision, node).await {
        Ok(facts) => facts,
        Err(response) => return response,
    };
    let live = node.moves.lock().expect("moves lock poisoned").live_hosts();
    let (to, mut mode) = match to {
        Some(to) => {
            let Some(host) = facts.iter().find(|h| h.host == to) else {
                return no_host(&to);
            };
            if to != vm.host {
                let pins = placement::pins(&desired, &vm.spec);
                if let Some(why) = placement::misfit(&vm.spec, &pins, host) {
                    return invalid(format!("host {to} cannot run VM {name}: {why}"));
                }
            }
            let mode = moves::mode(&vm, &to, &live);
            (to, mode)
        }
        None => match moves::target(&desired, &vm, &facts, &live) {
            Ok(begin) => (begin.to, begin.mode),
            Err(why) => return invalid(format!("VM {name} cannot move: {why}")),
        },
    };
    // A guest that is not running now (it crashed, or has not started yet) moves cold.
    if mode == MigrationMode::Live {
        match supervision.vm_view(&name).await {
            Ok(Some(v)) if v.power == PowerState::Running => {}
            Ok(_) => mode = MigrationMode::Cold,
            Err(e) => return unavailable(e.to_string()),
        }
    }
    let command = Command::BeginMove {
        name: name.clone(),
        to,
        mode,
    };
    if let Err(response) = propose_once(node, key, command).await {
        return response;
    }
    answer(node)
}

/// `host maintenance enter|exit`: a host enters only if every VM it runs can run elsewhere.
pub(crate) async fn maintenance(
    node: &Context,
    key: RequestKey,
    host: String,
    on: bool,
) -> Response {
    if on && !key.applied_before(&node.desired()) {
        if let Some(why) = moves::refuse_maintenance(&node.desired(), &host) {
            return invalid(why);
        }
    }
    info!(%host, on, "maintenance");
    once(node, key, Command::SetMaintenance { host, on }).await
}
