//! One network's reconciliation: every assigned host that reports the network missing or down
//! gets CreateNetwork (idempotent on the host: it creates what is missing and sets it up), with
//! backoff while it keeps failing.

use std::collections::{BTreeMap, BTreeSet};

use qvdc_raft::{model::NetworkRecord, DesiredState};
use qvdc_transport::protocol::{
    CommandId, HostCommand, HostCommandKind, NetworkHostView, NetworkReport, NetworkView,
};
use tokio::time::Instant;

use super::CommandError;
use super::{CommandIds, Timings};

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send { host: String, command: HostCommand },
}

#[derive(Debug, Clone)]
struct Observation {
    seen_at: Instant,
    report: Option<NetworkReport>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    id: CommandId,
    sent_at: Instant,
    attempts: u32,
}

#[derive(Debug)]
pub struct NetworkCore {
    record: NetworkRecord,
    ids: CommandIds,
    observations: BTreeMap<String, Observation>,
    pending: BTreeMap<String, Pending>,
    failures: BTreeMap<String, String>,
    timings: Timings,
}

impl NetworkCore {
    pub fn new(record: NetworkRecord, ids: impl Into<CommandIds>, timings: Timings) -> Self {
        Self {
            record,
            ids: ids.into(),
            observations: BTreeMap::new(),
            pending: BTreeMap::new(),
            failures: BTreeMap::new(),
            timings,
        }
    }

    pub fn record(&self) -> &NetworkRecord {
        &self.record
    }

    pub fn name(&self) -> &str {
        &self.record.spec.name
    }

    pub fn set_record(&mut self, record: NetworkRecord) {
        let hosts = &record.hosts;
        self.observations.retain(|h, _| hosts.contains(h));
        self.pending.retain(|h, _| hosts.contains(h));
        self.failures.retain(|h, _| hosts.contains(h));
        self.record = record;
    }

    pub fn observe(&mut self, host: &str, seen_at: Instant, report: Option<NetworkReport>) {
        if !self.record.hosts.contains(host) {
            return;
        }
        if report.as_ref().is_some_and(|r| r.up) {
            self.pending.remove(host);
            self.failures.remove(host);
        }
        self.observations
            .insert(host.to_owned(), Observation { seen_at, report });
    }

    pub fn command_done(&mut self, host: &str, id: CommandId, outcome: Result<(), CommandError>) {
        if self.pending.get(host).is_some_and(|p| p.id == id) {
            if let Err(reason) = outcome {
                self.failures.insert(host.to_owned(), reason.to_string());
            }
        }
    }

    fn fresh(&self, host: &str, now: Instant) -> Option<&Observation> {
        self.observations
            .get(host)
            .filter(|o| now.saturating_duration_since(o.seen_at) <= self.timings.stale_after())
    }

    /// When a tick may next send something no input prompted: a resend falling due.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let resends = self.pending.values();
        super::next_after(
            now,
            resends.map(|p| self.timings.resend_at(p.sent_at, p.attempts)),
        )
    }

    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let due: Vec<String> = self
            .record
            .hosts
            .iter()
            .filter(|host| {
                let Some(observation) = self.fresh(host, now) else {
                    return false;
                };
                if observation.report.as_ref().is_some_and(|r| r.up) {
                    return false;
                }
                self.pending.get(*host).is_none_or(|p| {
                    now.saturating_duration_since(p.sent_at) >= self.timings.retry_after(p.attempts)
                })
            })
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
            let kind = HostCommandKind::CreateNetwork(self.record.spec.clone());
            effects.push(Effect::Send {
                host,
                command: HostCommand { id, kind },
            });
        }
        effects
    }

    pub fn view(&self, now: Instant) -> NetworkView {
        let hosts = self
            .record
            .hosts
            .iter()
            .map(|host| {
                let (up, error) = match self.fresh(host, now) {
                    None => (false, Some("no fresh report from host".to_owned())),
                    Some(Observation {
                        report: Some(report),
                        ..
                    }) => {
                        // Why it is down, and why the last attempt to bring it up failed.
                        let error = match (&report.error, self.failures.get(host)) {
                            (Some(why), Some(failed)) if !report.up => {
                                Some(format!("{why}; last attempt: {failed}"))
                            }
                            (error, _) => error.clone(),
                        };
                        (report.up, error)
                    }
                    Some(Observation { report: None, .. }) => (
                        false,
                        Some(
                            self.failures
                                .get(host)
                                .cloned()
                                .unwrap_or_else(|| "not configured yet".into()),
                        ),
                    ),
                };
                NetworkHostView {
                    host_id: host.clone(),
                    up,
                    error,
                }
            })
            .collect();
        NetworkView {
            spec: self.record.spec.clone(),
            hosts,
        }
    }
}

/// Networks `host` reports but is not assigned (unassigned, or deleted): it must remove them.
pub fn strays(desired: &DesiredState, host: &str, reports: &[NetworkReport]) -> BTreeSet<String> {
    reports
        .iter()
        .filter(|r| {
            desired
                .networks
                .get(&r.network)
                .is_none_or(|n| !n.hosts.contains(host))
        })
        .map(|r| r.network.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qvdc_transport::protocol::NetworkSpec;

    use qvdc_transport::protocol::Leadership;

    use super::*;

    const LEADERSHIP: Leadership = Leadership { term: 4, node: 3 };

    fn record() -> NetworkRecord {
        NetworkRecord {
            spec: NetworkSpec {
                name: "prod".into(),
                bridge: "br-prod".into(),
                vlan: None,
                uplink: None,
            },
            hosts: ["host-1".to_owned(), "host-2".to_owned()].into(),
        }
    }

    fn report(up: bool) -> NetworkReport {
        NetworkReport {
            network: "prod".into(),
            bridge: "br-prod".into(),
            up,
            error: (!up).then(|| "bridge br-prod does not exist".to_owned()),
        }
    }

    fn create(host: &str, seq: u64) -> Effect {
        Effect::Send {
            host: host.into(),
            command: HostCommand {
                id: CommandId {
                    leadership: LEADERSHIP,
                    seq,
                },
                kind: HostCommandKind::CreateNetwork(record().spec),
            },
        }
    }

    #[test]
    fn ticking_after_inputs_and_at_next_due_sends_what_ticking_all_the_time_does() {
        // host-1 reports the bridge down every 700 ms; its resends fall due between reports.
        super::super::alarm_check::Drive {
            report_every_ms: 700,
            until_ms: 40_000,
            input: |core: &mut NetworkCore, at| core.observe("host-1", at, Some(report(false))),
            tick: |core, now| {
                let effects = core.tick(now);
                effects
                    .into_iter()
                    .map(|Effect::Send { command, .. }| command.id.seq)
                    .collect()
            },
            next_due: NetworkCore::next_due,
        }
        .check(|| NetworkCore::new(record(), LEADERSHIP, Timings::default()));
    }

    #[test]
    fn hosts_that_lack_the_network_or_have_it_down_get_it_once_until_it_is_up() {
        let mut core = NetworkCore::new(record(), LEADERSHIP, Timings::default());
        let t0 = Instant::now();
        core.observe("host-1", t0, None);
        core.observe("host-2", t0, Some(report(true)));
        assert_eq!(core.tick(t0), [create("host-1", 1)]);
        assert_eq!(core.tick(t0 + Duration::from_millis(1_999)), []);
        core.observe("host-1", t0, Some(report(false)));
        assert_eq!(
            core.tick(t0 + Duration::from_millis(2_000)),
            [create("host-1", 2)]
        );
        core.observe(
            "host-1",
            t0 + Duration::from_millis(2_100),
            Some(report(true)),
        );
        assert_eq!(
            core.tick(t0 + Duration::from_secs(60)),
            [],
            "up: nothing to do"
        );
        let view = core.view(t0 + Duration::from_millis(2_100));
        assert!(view.hosts.iter().all(|h| h.up), "{view:?}");
    }

    #[test]
    fn unassigned_or_deleted_networks_are_strays_on_their_hosts() {
        let mut desired = DesiredState::default();
        desired.networks.insert("prod".into(), record());
        let reports = [
            report(true),
            NetworkReport {
                network: "old".into(),
                ..report(true)
            },
        ];
        let on = |host: &str| {
            strays(&desired, host, &reports)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(on("host-1"), ["old"]);
        assert_eq!(on("host-3"), ["old", "prod"]);
    }
}
