//! One pool's reconciliation and aggregation. Level-triggered: on every tick the core looks at
//! what each assigned host last reported and decides which hosts still need InitStoragePool.
//! The same inputs always give the same effects, in host-name order.
//!
//! A tick follows every heartbeat, so it looks only at the hosts whose answer may have
//! changed since the last one: those heard from (or reassigned) since, and those with a
//! command out, whose resend may be due. Every other host was looked at when it last
//! changed and found not to need a command, and only news from it changes that. (Looking at
//! all of a 1,000-host pool's hosts on each of its 1,000 heartbeats a second took half a
//! core.)

use std::collections::{BTreeMap, BTreeSet};

use qvdc_transport::protocol::{
    Capacity, CommandId, Health, HostCommand, HostCommandKind, PoolHostView, PoolReport, PoolScope,
    PoolSpec, PoolView,
};
use tokio::time::Instant;

use super::CommandError;
use super::{CommandIds, Timings};

/// What the pool supervisor asks its actor to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send { host: String, command: HostCommand },
}

#[derive(Debug, Clone)]
struct Observation {
    seen_at: Instant,
    /// The pool's entry in that heartbeat; `None` when the host does not have the pool.
    report: Option<PoolReport>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    id: CommandId,
    sent_at: Instant,
    /// Commands sent for this pool since the host last reported it healthy, this one included.
    attempts: u32,
}

#[derive(Debug)]
pub struct PoolCore {
    spec: PoolSpec,
    hosts: BTreeSet<String>,
    ids: CommandIds,
    observations: BTreeMap<String, Observation>,
    pending: BTreeMap<String, Pending>,
    /// The last command failure per host, shown until a report supersedes it.
    failures: BTreeMap<String, String>,
    /// Hosts heard from, or assigned, since the last tick.
    changed: BTreeSet<String>,
    timings: Timings,
}

impl PoolCore {
    /// Every command carries `leadership` as its fencing token.
    pub fn new(
        spec: PoolSpec,
        hosts: BTreeSet<String>,
        ids: impl Into<CommandIds>,
        timings: Timings,
    ) -> Self {
        Self {
            changed: hosts.clone(),
            spec,
            hosts,
            ids: ids.into(),
            observations: BTreeMap::new(),
            pending: BTreeMap::new(),
            failures: BTreeMap::new(),
            timings,
        }
    }

    /// The hosts the pool is assigned to.
    pub fn hosts(&self) -> &BTreeSet<String> {
        &self.hosts
    }

    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    /// The pool's definition or hosts changed. Hosts no longer assigned are forgotten (their
    /// hosts unmount the pool when they next report it: see [`strays`]).
    pub fn set_record(&mut self, spec: PoolSpec, hosts: BTreeSet<String>) {
        if spec != self.spec {
            // Every host must mount the new source: forget what they confirmed.
            self.pending.clear();
            self.failures.clear();
            self.observations.clear();
        }
        self.observations.retain(|h, _| hosts.contains(h));
        self.pending.retain(|h, _| hosts.contains(h));
        self.failures.retain(|h, _| hosts.contains(h));
        self.changed = hosts.clone();
        self.spec = spec;
        self.hosts = hosts;
    }

    /// The assigned hosts (by name) with a fresh healthy report: where volume work goes.
    pub fn healthy_hosts(&self, now: Instant) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| {
                self.fresh(h, now)
                    .and_then(|o| o.report.as_ref())
                    .is_some_and(|r| r.health == Health::Healthy)
            })
            .cloned()
            .collect()
    }

    /// A heartbeat from `host` arrived; `report` is this pool's entry in it, if any.
    pub fn observe(&mut self, host: &str, seen_at: Instant, report: Option<PoolReport>) {
        if !self.hosts.contains(host) {
            return;
        }
        if report.as_ref().is_some_and(|r| r.health == Health::Healthy) {
            self.pending.remove(host);
            self.failures.remove(host);
        }
        self.observations
            .insert(host.to_owned(), Observation { seen_at, report });
        if !self.changed.contains(host) {
            self.changed.insert(host.to_owned());
        }
    }

    /// A command's answer came back from `host`.
    pub fn command_done(&mut self, host: &str, id: CommandId, outcome: Result<(), CommandError>) {
        if self.pending.get(host).is_some_and(|p| p.id == id) {
            if let Err(reason) = outcome {
                self.failures.insert(host.to_owned(), reason.to_string());
            }
        }
    }

    fn fresh<'a>(&'a self, host: &str, now: Instant) -> Option<&'a Observation> {
        let observation = self.observations.get(host)?;
        (now.saturating_duration_since(observation.seen_at) <= self.timings.stale_after())
            .then_some(observation)
    }

    fn needs_init(&self, host: &str, now: Instant) -> bool {
        let Some(observation) = self.fresh(host, now) else {
            return false; // unreachable hosts get their commands when they come back
        };
        if observation
            .report
            .as_ref()
            .is_some_and(|r| r.health == Health::Healthy)
        {
            return false;
        }
        match self.pending.get(host) {
            Some(p) => {
                now.saturating_duration_since(p.sent_at) >= self.timings.retry_after(p.attempts)
            }
            None => true,
        }
    }

    /// When a tick may next send something no input prompted: a resend falling due. Ticks
    /// after every input and at this instant do all a tick at any other time would.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let resends = self.pending.values();
        super::next_after(
            now,
            resends.map(|p| self.timings.resend_at(p.sent_at, p.attempts)),
        )
    }

    /// Decides which hosts need InitStoragePool now.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let changed = std::mem::take(&mut self.changed);
        let mut candidates: BTreeSet<&String> = changed.iter().collect();
        candidates.extend(self.pending.keys());
        let due: Vec<String> = candidates
            .into_iter()
            .filter(|h| self.hosts.contains(*h) && self.needs_init(h, now))
            .cloned()
            .collect();
        let mut effects = Vec::with_capacity(due.len());
        for host in due {
            let id = self.ids.next();
            let attempts = self.pending.get(&host).map_or(1, |p| p.attempts + 1);
            self.pending.insert(
                host.clone(),
                Pending {
                    id,
                    sent_at: now,
                    attempts,
                },
            );
            let command = HostCommand {
                id,
                kind: HostCommandKind::InitStoragePool(self.spec.clone()),
            };
            effects.push(Effect::Send { host, command });
        }
        effects
    }

    fn host_view(&self, host: &str, now: Instant) -> PoolHostView {
        let mut view = PoolHostView {
            host_id: host.to_owned(),
            health: Health::Unknown,
            mounted: false,
            capacity: Capacity::default(),
            volume_count: 0,
            error: None,
        };
        match self.fresh(host, now) {
            None => {
                view.error = Some(match self.observations.get(host) {
                    Some(_) => "host stopped reporting".to_owned(),
                    None => "no report from host yet".to_owned(),
                });
            }
            Some(Observation {
                report: Some(report),
                ..
            }) => {
                view.health = report.health;
                view.mounted = report.mounted;
                view.capacity = report.capacity;
                view.volume_count = report.volume_count;
                view.error = report.error.clone();
            }
            Some(Observation { report: None, .. }) => {
                view.error = Some(
                    self.failures
                        .get(host)
                        .cloned()
                        .unwrap_or_else(|| "pool not initialised yet".into()),
                );
                if self.failures.contains_key(host) {
                    view.health = Health::Error;
                }
            }
        }
        view
    }

    /// The pool as the operator sees it at `now`.
    pub fn view(&self, now: Instant) -> PoolView {
        let hosts: Vec<PoolHostView> = self.hosts.iter().map(|h| self.host_view(h, now)).collect();
        let healthy: Vec<String> = hosts
            .iter()
            .filter(|h| h.health == Health::Healthy)
            .map(|h| h.host_id.clone())
            .collect();
        let failed: Vec<String> = hosts
            .iter()
            .filter(|h| matches!(h.health, Health::Error | Health::Degraded))
            .map(|h| h.host_id.clone())
            .collect();
        let healthy_capacities = hosts
            .iter()
            .filter(|h| h.health == Health::Healthy)
            .map(|h| h.capacity);
        let capacity = match self.spec.scope {
            // One pool is one storage seen from several hosts: adding their views would count
            // a shared filesystem once per host. It offers what its tightest healthy host sees.
            PoolScope::Shared => healthy_capacities
                .min_by_key(|c| (c.available_bytes, c.total_bytes))
                .unwrap_or_default(),
            // Each host brings its own storage: the pool has all of it (each host's own is
            // in its row, and a volume must fit on one host).
            PoolScope::Local => healthy_capacities.fold(Capacity::default(), |sum, c| Capacity {
                total_bytes: sum.total_bytes.saturating_add(c.total_bytes),
                used_bytes: sum.used_bytes.saturating_add(c.used_bytes),
                available_bytes: sum.available_bytes.saturating_add(c.available_bytes),
            }),
        };
        let health = overall_health(hosts.len(), healthy.len(), failed.len());
        PoolView {
            spec: self.spec.clone(),
            health,
            capacity,
            healthy_hosts: healthy,
            failed_hosts: failed,
            hosts,
            volumes: Vec::new(),
        }
    }
}

/// Pools `host` reports but is not assigned (unassigned, or deleted): it must unmount them.
pub fn strays(
    desired: &qvdc_raft::DesiredState,
    host: &str,
    reports: &[PoolReport],
) -> BTreeSet<String> {
    reports
        .iter()
        .filter(|r| {
            desired
                .pools
                .get(&r.pool)
                .is_none_or(|p| !p.hosts.contains(host))
        })
        .map(|r| r.pool.clone())
        .collect()
}

/// HEALTHY when every assigned host is healthy, DEGRADED when some are, ERROR when none is
/// and at least one is known to fail, UNKNOWN when nothing is known.
fn overall_health(assigned: usize, healthy: usize, failed: usize) -> Health {
    assert!(healthy + failed <= assigned);
    if assigned > 0 && healthy == assigned {
        Health::Healthy
    } else if healthy > 0 {
        Health::Degraded
    } else if failed > 0 {
        Health::Error
    } else {
        Health::Unknown
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qvdc_transport::protocol::PoolSource;

    use qvdc_transport::protocol::Leadership;

    use super::*;

    const LEADERSHIP: Leadership = Leadership { term: 7, node: 2 };

    fn spec() -> PoolSpec {
        PoolSpec {
            scope: Default::default(),
            name: "shared".into(),
            source: PoolSource::Dir {
                path: "/srv/shared".into(),
            },
        }
    }

    fn core() -> PoolCore {
        let hosts = ["host-1", "host-2", "host-3"].map(String::from).into();
        PoolCore::new(spec(), hosts, LEADERSHIP, Timings::default())
    }

    fn healthy(total: u64) -> PoolReport {
        PoolReport {
            pool: "shared".into(),
            mounted: true,
            mount_path: "/data/pools/shared".into(),
            capacity: Capacity {
                total_bytes: total,
                used_bytes: 1,
                available_bytes: total - 1,
            },
            volume_count: 2,
            health: Health::Healthy,
            error: None,
        }
    }

    fn failed(message: &str) -> PoolReport {
        PoolReport {
            mounted: false,
            capacity: Capacity::default(),
            volume_count: 0,
            health: Health::Error,
            error: Some(message.into()),
            ..healthy(1)
        }
    }

    fn init(host: &str, seq: u64) -> Effect {
        let command = HostCommand {
            id: CommandId {
                leadership: LEADERSHIP,
                seq,
            },
            kind: HostCommandKind::InitStoragePool(spec()),
        };
        Effect::Send {
            host: host.into(),
            command,
        }
    }

    /// A tick looks only at the hosts that changed or have a command out; it must send
    /// exactly what looking at every host would, after any sequence of heartbeats, answers,
    /// reassignments and time passing.
    #[test]
    fn a_tick_sends_what_a_look_at_every_host_would() {
        let names: Vec<String> = (1..=8).map(|i| format!("host-{i}")).collect();
        let all: BTreeSet<String> = names.iter().cloned().collect();
        let mut core = PoolCore::new(spec(), all.clone(), LEADERSHIP, Timings::default());
        let mut now = Instant::now();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut draw = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut sent = 0;
        for _ in 0..20_000 {
            let host = &names[draw(8) as usize];
            match draw(10) {
                0..=4 => {
                    let report = match draw(3) {
                        0 => None,
                        1 => Some(failed("mount: Connection refused")),
                        _ => Some(healthy(100)),
                    };
                    core.observe(host, now, report);
                }
                5 => {
                    if let Some(p) = core.pending.get(host).copied() {
                        let outcome = match draw(2) {
                            0 => Ok(()),
                            _ => Err(CommandError::NoAnswer(1)),
                        };
                        core.command_done(host, p.id, outcome);
                    }
                }
                6 => {
                    let hosts = match draw(2) {
                        0 => all.iter().filter(|_| draw(3) > 0).cloned().collect(),
                        _ => all.clone(),
                    };
                    core.set_record(spec(), hosts);
                }
                _ => now += Duration::from_millis(draw(1_500)),
            }
            let expected: Vec<String> = core
                .hosts
                .iter()
                .filter(|h| core.needs_init(h, now))
                .cloned()
                .collect();
            let got: Vec<String> = core
                .tick(now)
                .into_iter()
                .map(|Effect::Send { host, .. }| host)
                .collect();
            assert_eq!(got, expected);
            sent += got.len();
        }
        assert!(
            sent > 1_000,
            "the sequence exercised sending ({sent} commands)"
        );
    }

    #[test]
    fn commands_go_only_to_hosts_that_report_and_lack_the_pool() {
        let mut core = core();
        let t0 = Instant::now();
        assert_eq!(core.tick(t0), vec![], "no host has reported: nothing to do");
        core.observe("host-1", t0, None);
        core.observe("host-2", t0, Some(healthy(100)));
        core.observe("host-3", t0, None);
        assert_eq!(core.tick(t0), vec![init("host-1", 1), init("host-3", 2)]);
        assert_eq!(
            core.tick(t0 + Duration::from_millis(500)),
            vec![],
            "in flight: not sent twice"
        );
    }

    #[test]
    fn unconfirmed_commands_are_retried_with_a_new_id() {
        let mut core = core();
        let t0 = Instant::now();
        core.observe("host-1", t0, None);
        assert_eq!(core.tick(t0), vec![init("host-1", 1)]);
        let later = t0 + Duration::from_millis(2_000);
        core.observe("host-1", later, Some(failed("mkdir: Not a directory")));
        assert_eq!(core.tick(later), vec![init("host-1", 2)]);
        core.observe("host-1", later, Some(healthy(10)));
        assert_eq!(
            core.tick(later + Duration::from_secs(10)),
            vec![],
            "stale host gets nothing"
        );
    }

    #[test]
    fn view_takes_capacity_from_the_tightest_healthy_host_and_names_failures() {
        let mut core = core();
        let t0 = Instant::now();
        core.observe("host-1", t0, Some(healthy(100)));
        core.observe("host-2", t0, Some(healthy(50)));
        core.observe(
            "host-3",
            t0,
            Some(failed("cannot create mount point: Not a directory")),
        );
        let view = core.view(t0);
        assert_eq!(view.health, Health::Degraded);
        assert_eq!(
            view.capacity.total_bytes, 50,
            "the tightest healthy host's view, not a sum"
        );
        assert_eq!(view.healthy_hosts, ["host-1", "host-2"]);
        assert_eq!(view.failed_hosts, ["host-3"]);
        assert_eq!(
            view.hosts[2].error.as_deref(),
            Some("cannot create mount point: Not a directory")
        );
    }

    #[test]
    fn stale_reports_are_unknown_never_healthy() {
        let mut core = core();
        let t0 = Instant::now();
        for host in ["host-1", "host-2", "host-3"] {
            core.observe(host, t0, Some(healthy(100)));
        }
        assert_eq!(core.view(t0).health, Health::Healthy);
        let view = core.view(t0 + Duration::from_millis(3_001));
        assert_eq!(view.health, Health::Unknown);
        assert!(view.hosts.iter().all(|h| h.health == Health::Unknown));
        assert_eq!(view.capacity, Capacity::default());
    }

    #[test]
    fn a_failed_command_shows_as_error_until_a_report_arrives() {
        let mut core = core();
        let t0 = Instant::now();
        core.observe("host-3", t0, None);
        let [Effect::Send { command, .. }] = core.tick(t0).try_into().unwrap();
        core.command_done(
            "host-3",
            command.id,
            Err(crate::core::failed("Permission denied")),
        );
        let view = core.view(t0);
        assert_eq!(view.hosts[2].health, Health::Error);
        assert_eq!(view.hosts[2].error.as_deref(), Some("Permission denied"));
        assert_eq!(view.health, Health::Error);
    }

    #[test]
    fn overall_health_rules() {
        assert_eq!(overall_health(3, 3, 0), Health::Healthy);
        assert_eq!(overall_health(3, 1, 2), Health::Degraded);
        assert_eq!(overall_health(3, 0, 1), Health::Error);
        assert_eq!(overall_health(3, 0, 0), Health::Unknown);
        assert_eq!(
            overall_health(0, 0, 0),
            Health::Unknown,
            "a pool with no host is not healthy"
        );
    }

    fn hosts(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|h| (*h).to_owned()).collect()
    }

    /// Volume work goes only to hosts whose last report is fresh and healthy.
    #[test]
    fn only_fresh_healthy_hosts_take_volume_work() {
        let mut core = core();
        let t0 = Instant::now();
        core.observe("host-1", t0, Some(healthy(100)));
        core.observe("host-2", t0 + Duration::from_secs(2), Some(healthy(100)));
        core.observe("host-3", t0 + Duration::from_secs(2), Some(failed("EIO")));
        assert_eq!(
            core.healthy_hosts(t0 + Duration::from_secs(2)),
            ["host-1", "host-2"]
        );
        assert_eq!(
            core.healthy_hosts(t0 + Duration::from_secs(4)),
            ["host-2"],
            "host-1's report is stale by now"
        );
    }

    /// Reassigned, the pool forgets the hosts it left; what the hosts it keeps confirmed
    /// stays, unless the pool's source changed: then every host must confirm again.
    #[test]
    fn a_new_record_forgets_unassigned_hosts_and_a_new_source_forgets_every_confirmation() {
        let mut core = core();
        let t0 = Instant::now();
        for host in ["host-1", "host-2", "host-3"] {
            core.observe(host, t0, Some(healthy(100)));
        }
        core.set_record(spec(), hosts(&["host-1", "host-2"]));
        assert_eq!(core.hosts(), &hosts(&["host-1", "host-2"]));
        let view = core.view(t0);
        assert_eq!(view.health, Health::Healthy, "{view:?}");
        assert_eq!(view.healthy_hosts, ["host-1", "host-2"]);
        assert_eq!(core.healthy_hosts(t0), ["host-1", "host-2"]);
        // Assigned again, host-3 counts as unknown until it reports again.
        core.set_record(spec(), hosts(&["host-1", "host-2", "host-3"]));
        assert_eq!(core.view(t0).hosts[2].health, Health::Unknown);
        assert_eq!(core.healthy_hosts(t0), ["host-1", "host-2"]);
        core.set_record(spec(), hosts(&["host-1", "host-2"]));

        let moved = PoolSpec {
            source: PoolSource::Dir {
                path: "/srv/elsewhere".into(),
            },
            ..spec()
        };
        core.set_record(moved.clone(), hosts(&["host-1", "host-2"]));
        assert_eq!(core.spec(), &moved);
        let view = core.view(t0);
        assert_eq!(view.health, Health::Unknown, "{view:?}");
        assert!(core.healthy_hosts(t0).is_empty());
    }

    /// A host must unmount the pools it reports but no longer holds: unassigned from it,
    /// or deleted.
    #[test]
    fn unassigned_or_deleted_pools_are_strays_on_their_hosts() {
        let mut desired = qvdc_raft::DesiredState::default();
        desired.pools.insert(
            "shared".into(),
            qvdc_raft::model::PoolRecord {
                spec: spec(),
                hosts: hosts(&["host-1", "host-2"]),
                volumes: Default::default(),
            }
            .into(),
        );
        let reports = [
            healthy(1),
            PoolReport {
                pool: "old".into(),
                ..healthy(1)
            },
        ];
        let on = |host: &str| {
            strays(&desired, host, &reports)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(on("host-1"), ["old"]);
        assert_eq!(on("host-3"), ["old", "shared"]);
    }

    #[test]
    fn ticking_after_inputs_and_at_next_due_sends_what_ticking_all_the_time_does() {
        // host-3 fails every 700 ms; its resends fall due between its reports.
        super::super::alarm_check::Drive {
            report_every_ms: 700,
            until_ms: 40_000,
            input: |core: &mut PoolCore, at| {
                core.observe("host-3", at, Some(failed("Permission denied")));
            },
            tick: |core, now| seqs(core.tick(now)),
            next_due: PoolCore::next_due,
        }
        .check(core);
    }

    fn seqs(effects: Vec<Effect>) -> Vec<u64> {
        effects
            .into_iter()
            .map(|Effect::Send { command, .. }| command.id.seq)
            .collect()
    }

    #[test]
    fn a_host_that_keeps_failing_is_asked_less_and_less_often() {
        let mut core = core();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut sent = Vec::new();
        for ms in (0..=70_000).step_by(250) {
            core.observe("host-3", at(ms), Some(failed("Permission denied")));
            for Effect::Send { command, .. } in core.tick(at(ms)) {
                sent.push((ms, command.id.seq));
            }
        }
        assert_eq!(
            sent,
            [
                (0, 1),
                (2_000, 2),
                (6_000, 3),
                (14_000, 4),
                (30_000, 5),
                (62_000, 6)
            ],
            "2 s, then 4, 8, 16 and at most 32 s between attempts"
        );
        core.observe("host-3", at(70_250), Some(healthy(10)));
        core.observe("host-3", at(70_500), Some(failed("Permission denied")));
        let [Effect::Send { command, .. }] = core.tick(at(70_500)).try_into().unwrap();
        assert_eq!(
            command.id.seq, 7,
            "after a healthy report, a new failure is retried at once"
        );
    }
}
