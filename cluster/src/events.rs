//! The watch API (ADR 25): `ApiRequest::Events` is a blocking query over two streams.
//!
//! * **Changes to desired state** come from the audit trail, which is replicated: every
//!   node holds the same records under the same sequence numbers, so a subscriber resumes
//!   from its last number on whichever node leads next and misses nothing the trail keeps.
//! * **Reported state** is the leader's soft state: a task of each leadership reads its
//!   supervisors' views every [`REPORTED_ROUND_MS`] (200 ms) and records what changed (host liveness,
//!   pool health per host, VM power and host, network state per host) in a bounded buffer
//!   numbered per leadership. A subscriber of another leadership, or one that fell behind
//!   the buffer, gets the state of everything instead (a resync) and the reason.
//!
//! A subscriber costs the leader nothing between its queries: nothing is queued for it, so a
//! slow reader can only fall behind, never slow the leader down.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use qvdc_actors::Supervision;
use qvdc_transport::protocol::{
    ApiResponse, EventsPage, Leadership, Liveness, PowerState, ReportedCursor, ReportedEvent,
    Response,
};
use tokio::sync::Notify;
use tracing::debug;

use crate::context::Context;

/// How often the leader looks for changes in reported state.
pub(crate) const REPORTED_ROUND_MS: u64 = 200;
/// Reported changes the leader keeps for subscribers; one that falls further behind resyncs.
pub(crate) const REPORTED_BUFFER: usize = 4_096;
/// The longest a query waits for something new: well within the time a follower gives the
/// leader to answer a request it passed on.
pub(crate) const EVENTS_WAIT_MS_MAX: u32 = 3_000;
/// The most changes of each stream one answer carries.
pub(crate) const EVENTS_PAGE_MAX: u32 = 1_000;

/// The leader's reported-state changes.
#[derive(Default)]
pub(crate) struct EventsHub {
    reported: std::sync::Mutex<Reported>,
    /// Woken when reported state changed or a change was applied.
    pub(crate) news: Notify,
    /// When a subscriber last asked; rounds run only while one asked within
    /// [`SUBSCRIBER_IDLE_MS`], so a leader nobody watches spends nothing on them.
    asked: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// When the last round finished.
    last_round: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// How long after the last query the leader keeps recording reported changes. A follower
/// polls at least every few seconds, so it never sees the recording stop.
pub(crate) const SUBSCRIBER_IDLE_MS: u64 = 30_000;

impl EventsHub {
    fn wanted(&self) -> bool {
        let asked = *self.asked.lock().expect("events lock poisoned");
        asked.is_some_and(|at| at.elapsed() < Duration::from_millis(SUBSCRIBER_IDLE_MS))
    }

    /// Whether the recorded state is fresh: a round finished within two periods.
    fn fresh(&self) -> bool {
        let last = *self.last_round.lock().expect("events lock poisoned");
        last.is_some_and(|at| at.elapsed() < Duration::from_millis(2 * REPORTED_ROUND_MS))
    }
}

#[derive(Default)]
struct Reported {
    /// The leadership (Raft term) the numbering belongs to; 0 until a leadership's first
    /// round.
    term: u64,
    next: u64,
    ring: VecDeque<ReportedEvent>,
    /// Each object's state as of the last round.
    current: BTreeMap<String, String>,
}

impl Reported {
    fn cursor(&self) -> ReportedCursor {
        ReportedCursor {
            term: self.term,
            next: self.next,
        }
    }

    fn everything(&self, at_ms: u64) -> Vec<ReportedEvent> {
        self.current
            .iter()
            .map(|(object, state)| ReportedEvent {
                seq: 0,
                at_ms,
                object: object.clone(),
                state: Some(state.clone()),
            })
            .collect()
    }
}

/// Each object's reported state as the leader's supervisors see it now.
async fn reported_now(supervision: &Supervision) -> Result<BTreeMap<String, String>, String> {
    let e = |e: qvdc_actors::SupervisionError| e.to_string();
    let mut now = BTreeMap::new();
    for (host, liveness) in supervision.liveness().await.map_err(e)? {
        let state = match liveness {
            Liveness::Ready => "Ready",
            Liveness::Unreachable => "Unreachable",
        };
        now.insert(format!("host/{host}"), state.to_owned());
    }
    for pool in supervision.pool_views().await.map_err(e)? {
        for host in pool.hosts {
            let state = match host.error {
                Some(error) => format!("{}: {error}", host.health),
                None => host.health.to_string(),
            };
            now.insert(format!("pool/{}@{}", pool.spec.name, host.host_id), state);
        }
    }
    for vm in supervision.vm_views().await.map_err(e)? {
        let state = match vm.power {
            PowerState::Unknown => format!("UNKNOWN on {}", vm.host),
            power => format!("{power} on {}", vm.host),
        };
        now.insert(format!("vm/{}", vm.spec.name), state);
    }
    for network in supervision.network_views().await.map_err(e)? {
        for host in network.hosts {
            let state = match (host.up, host.error) {
                (true, _) => "up".to_owned(),
                (false, Some(error)) => format!("down: {error}"),
                (false, None) => "down".to_owned(),
            };
            now.insert(
                format!("network/{}@{}", network.spec.name, host.host_id),
                state,
            );
        }
    }
    Ok(now)
}

/// Records reported-state changes while this node leads for `leadership`.
pub(crate) async fn watch(node: Arc<Context>, leadership: Leadership) {
    {
        let mut reported = node.events.reported.lock().expect("events lock poisoned");
        *reported = Reported {
            term: leadership.term,
            next: 1,
            ..Default::default()
        };
    }
    let period = Duration::from_millis(REPORTED_ROUND_MS);
    let each = |supervision: Supervision| {
        let node = node.clone();
        async move {
            let now = reported_now(&supervision).await?;
            let at_ms = node.clock.wall_ms();
            let changed = {
                let mut reported = node.events.reported.lock().expect("events lock poisoned");
                record(&mut reported, now, at_ms)
            };
            let was_fresh = node.events.fresh();
            *node.events.last_round.lock().expect("events lock poisoned") =
                Some(tokio::time::Instant::now());
            // The first round after a quiet spell also wakes whoever waits for it.
            if changed || !was_fresh {
                node.events.news.notify_waiters();
            }
            Ok(())
        }
    };
    let wanted = || node.events.wanted();
    node.each_leader_round(leadership, period, "reported-state events", wanted, each)
        .await;
}

/// Takes in the state of everything now; returns whether anything changed.
fn record(reported: &mut Reported, now: BTreeMap<String, String>, at_ms: u64) -> bool {
    let mut events = Vec::new();
    for (object, state) in &now {
        if reported.current.get(object) != Some(state) {
            events.push((object.clone(), Some(state.clone())));
        }
    }
    for object in reported.current.keys() {
        if !now.contains_key(object) {
            events.push((object.clone(), None));
        }
    }
    reported.current = now;
    for (object, state) in events.iter().cloned() {
        let seq = reported.next;
        reported.next += 1;
        reported.ring.push_back(ReportedEvent {
            seq,
            at_ms,
            object,
            state,
        });
        if reported.ring.len() > REPORTED_BUFFER {
            reported.ring.pop_front();
        }
    }
    !events.is_empty()
}

/// The reported-state part of an answer: the changes after `cursor`, or everything with the
/// reason when the cursor cannot be continued.
fn reported_after(
    reported: &Reported,
    cursor: Option<ReportedCursor>,
    max: usize,
    at_ms: u64,
) -> (Vec<ReportedEvent>, ReportedCursor, Option<String>) {
    let resync = |reason: String| (reported.everything(at_ms), reported.cursor(), Some(reason));
    let Some(cursor) = cursor else {
        return resync("the state of everything now".into());
    };
    if cursor.term != reported.term {
        return resync(format!(
            "the leader changed (term {} to {}): the state of everything now",
            cursor.term, reported.term
        ));
    }
    let oldest = reported.ring.front().map_or(reported.next, |e| e.seq);
    if cursor.next < oldest {
        return resync(format!(
            "this subscriber fell {} changes behind the leader, more than the {REPORTED_BUFFER} it keeps: the state of everything now",
            reported.next.saturating_sub(cursor.next)
        ));
    }
    let skip = usize::try_from(cursor.next - oldest).unwrap_or(usize::MAX);
    let events: Vec<ReportedEvent> = reported.ring.iter().skip(skip).take(max).cloned().collect();
    let next = events.last().map_or(cursor.next.max(oldest), |e| e.seq + 1);
    let cursor = ReportedCursor {
        term: reported.term,
        next,
    };
    (events, cursor, None)
}

/// Answers `ApiRequest::Events` on the leader.
pub(crate) async fn answer(
    ctx: &Context,
    since: u64,
    cursor: Option<ReportedCursor>,
    wait_ms: u32,
    max: u32,
) -> Response {
    if let Err(response) = ctx.leading().await {
        return response;
    }
    let max = max.clamp(1, EVENTS_PAGE_MAX) as usize;
    // Rounds run while someone asks; after a quiet spell, wait for one so that what is
    // answered is the state now (changes while nobody asked come as changes after it).
    *ctx.events.asked.lock().expect("events lock poisoned") = Some(tokio::time::Instant::now());
    if !ctx.events.fresh() {
        let round = Duration::from_millis(3 * REPORTED_ROUND_MS);
        let _ = tokio::time::timeout(round, ctx.events.news.notified()).await;
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(EVENTS_WAIT_MS_MAX).into());
    let mut desired = ctx.desired.clone();
    loop {
        // Registered before looking, so news arriving while this looks is not missed.
        let news = ctx.events.news.notified();
        tokio::pin!(news);
        news.as_mut().enable();
        let state = ctx.desired();
        let (changes, gap) = state.audit.since(since, max);
        let at_ms = ctx.clock.wall_ms();
        let (reported, reported_cursor, resync) = {
            let hub = ctx.events.reported.lock().expect("events lock poisoned");
            reported_after(&hub, cursor, max, at_ms)
        };
        let next = changes
            .last()
            .map_or(since.max(1).max(gap.unwrap_or(0)), |c| c.seq + 1);
        let news_now = !changes.is_empty() || !reported.is_empty() || resync.is_some();
        if news_now || tokio::time::Instant::now() >= deadline {
            let gap = gap.map(|first| {
                format!(
                    "changes {since} to {} are no longer kept (the trail keeps the last {}); continuing from {first}",
                    first - 1,
                    state.audit.retention
                )
            });
            return Response::Api(Ok(ApiResponse::Events(EventsPage {
                leader: ctx.id,
                changes,
                next,
                latest: state.audit.next_seq,
                gap,
                reported,
                reported_cursor,
                resync,
            })));
        }
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    return ctx.not_leader(); // the node is shutting down
                }
            }
            () = &mut news => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
        if !ctx.is_leader() {
            debug!(node = ctx.id, "leadership lost while a subscriber waited");
            return ctx.not_leader();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(o, s)| ((*o).to_owned(), (*s).to_owned()))
            .collect()
    }

    #[test]
    fn a_subscriber_gets_changes_in_order_then_resyncs_when_it_falls_behind() {
        let mut hub = Reported {
            term: 7,
            next: 1,
            ..Default::default()
        };
        assert!(record(&mut hub, state(&[("host/h1", "Ready")]), 1));
        assert!(!record(&mut hub, state(&[("host/h1", "Ready")]), 2));
        assert!(record(&mut hub, state(&[("host/h1", "Unreachable")]), 3));
        let start = ReportedCursor { term: 7, next: 1 };
        let (events, cursor, resync) = reported_after(&hub, Some(start), 10, 4);
        assert_eq!(resync, None);
        let states: Vec<_> = events.iter().map(|e| e.state.as_deref()).collect();
        assert_eq!(states, [Some("Ready"), Some("Unreachable")]);
        assert_eq!(cursor, ReportedCursor { term: 7, next: 3 });
        // A page at a time: the cursor carries on where the page ended.
        let (page, cursor, _) = reported_after(&hub, Some(start), 1, 4);
        assert_eq!(page.len(), 1);
        assert_eq!(cursor.next, 2);
        // An object that is gone says so.
        assert!(record(&mut hub, state(&[]), 5));
        let (events, _, _) = reported_after(&hub, Some(cursor), 10, 6);
        assert_eq!(events.last().unwrap().state, None);
        // Another leadership's cursor, and one behind the buffer, get everything now.
        let (_, _, resync) = reported_after(&hub, Some(ReportedCursor { term: 6, next: 3 }), 10, 6);
        assert!(resync.unwrap().contains("leader changed"));
        for i in 0..REPORTED_BUFFER {
            record(&mut hub, state(&[("host/h1", &i.to_string())]), 7);
        }
        let (everything, cursor, resync) = reported_after(&hub, Some(start), 10, 8);
        assert!(
            resync.unwrap().contains("fell"),
            "a slow reader is told why"
        );
        assert_eq!(everything.len(), 1);
        assert_eq!(cursor.next, hub.next);
    }
}
