//! The volumes of one pool. A shared pool is one storage seen by all its hosts, so each
//! volume is created once, through the first healthy host; a local pool's volume lives on
//! one host and is created through that host only. The host's CreateVolume is idempotent and
//! grows a smaller file, so after a failover the new leader simply asks again.

use std::collections::BTreeMap;

use qvdc_raft::model::VolumeRecord;
use qvdc_transport::protocol::{CommandId, HostCommand, HostCommandKind, VolumeView};
use tokio::time::Instant;

use super::CommandError;
use super::{CommandIds, Timings};

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send {
        host: String,
        volume: String,
        command: HostCommand,
    },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    id: CommandId,
    sent_at: Instant,
    attempts: u32,
}

#[derive(Debug)]
pub struct VolumesCore {
    pool: String,
    ids: CommandIds,
    desired: BTreeMap<String, VolumeRecord>,
    /// Sizes a host confirmed during this leadership.
    confirmed: BTreeMap<String, u64>,
    pending: BTreeMap<String, Pending>,
    failures: BTreeMap<String, String>,
    timings: Timings,
}

impl VolumesCore {
    pub fn new(pool: String, ids: impl Into<CommandIds>, timings: Timings) -> Self {
        Self {
            pool,
            ids: ids.into(),
            desired: BTreeMap::new(),
            confirmed: BTreeMap::new(),
            pending: BTreeMap::new(),
            failures: BTreeMap::new(),
            timings,
        }
    }

    pub fn set_desired(&mut self, desired: BTreeMap<String, VolumeRecord>) {
        self.pending.retain(|name, _| desired.contains_key(name));
        self.failures.retain(|name, _| desired.contains_key(name));
        self.desired = desired;
    }

    fn missing(&self, name: &str, record: &VolumeRecord) -> bool {
        self.confirmed.get(name) != Some(&record.size_bytes)
    }

    /// Whether a tick at `now` would look for a host to send something through: a volume
    /// is missing and not waiting on a command out. (Finding the healthy hosts is the costly
    /// part of a pool's tick, and ticks follow every heartbeat.)
    pub fn wants_hosts(&self, now: Instant) -> bool {
        self.desired.iter().any(|(name, record)| {
            self.missing(name, record)
                && self
                    .pending
                    .get(name)
                    .is_none_or(|p| self.resend_due(p, now))
        })
    }

    fn resend_due(&self, p: &Pending, now: Instant) -> bool {
        now.saturating_duration_since(p.sent_at) >= self.timings.retry_after(p.attempts)
    }

    /// When a tick may next send something no input prompted: a resend falling due.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let resends = self.pending.values();
        super::next_after(
            now,
            resends.map(|p| self.timings.resend_at(p.sent_at, p.attempts)),
        )
    }

    /// Sends CreateVolume for each volume not yet confirmed at its size: through its own
    /// host (a local pool's volume), or through the first of `healthy` (the pool's hosts
    /// that report it healthy now). A volume whose host is not healthy waits.
    pub fn tick(&mut self, now: Instant, healthy: &[String]) -> Vec<Effect> {
        let through = |record: &VolumeRecord| match &record.host {
            Some(host) => healthy.iter().find(|h| *h == host),
            None => healthy.first(),
        };
        let mut effects = Vec::new();
        let due: Vec<(String, VolumeRecord, String)> = self
            .desired
            .iter()
            .filter(|(name, record)| self.missing(name, record))
            .filter(|(name, _)| {
                self.pending
                    .get(*name)
                    .is_none_or(|p| self.resend_due(p, now))
            })
            .filter_map(|(n, r)| Some((n.clone(), r.clone(), through(r)?.clone())))
            .collect();
        for (name, record, host) in due {
            let id = self.ids.next();
            let attempts = self.pending.get(&name).map_or(1, |p| p.attempts + 1);
            self.pending.insert(
                name.clone(),
                Pending {
                    id,
                    sent_at: now,
                    attempts,
                },
            );
            let kind = HostCommandKind::CreateVolume {
                pool: self.pool.clone(),
                name: name.clone(),
                format: record.format,
                size_bytes: record.size_bytes,
            };
            effects.push(Effect::Send {
                host,
                volume: name,
                command: HostCommand { id, kind },
            });
        }
        effects
    }

    pub fn command_done(&mut self, volume: &str, id: CommandId, outcome: Result<(), CommandError>) {
        if self.pending.get(volume).is_none_or(|p| p.id != id) {
            return;
        }
        let Some(size) = self.desired.get(volume).map(|r| r.size_bytes) else {
            return;
        };
        match outcome {
            Ok(()) => {
                self.confirmed.insert(volume.to_owned(), size);
                self.failures.remove(volume);
                self.pending.remove(volume);
            }
            // Stays pending: resent once its backoff has passed.
            Err(reason) => drop(self.failures.insert(volume.to_owned(), reason.to_string())),
        }
    }

    pub fn views(&self) -> Vec<VolumeView> {
        self.desired
            .iter()
            .map(|(name, record)| VolumeView {
                name: name.clone(),
                format: record.format,
                size_bytes: record.size_bytes,
                host: record.host.clone(),
                ready: !self.missing(name, record),
                error: self.failures.get(name).cloned(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qvdc_transport::protocol::VolumeFormat;

    use qvdc_transport::protocol::Leadership;

    use super::*;

    const LEADERSHIP: Leadership = Leadership { term: 2, node: 1 };

    fn core() -> VolumesCore {
        let mut core = VolumesCore::new("p".into(), LEADERSHIP, Timings::default());
        let record = VolumeRecord {
            host: None,
            format: VolumeFormat::Qcow2,
            size_bytes: 64 << 20,
        };
        core.set_desired([("web.qcow2".to_owned(), record)].into());
        core
    }

    fn create(seq: u64, size: u64) -> Effect {
        Effect::Send {
            host: "host-1".into(),
            volume: "web.qcow2".into(),
            command: HostCommand {
                id: CommandId {
                    leadership: LEADERSHIP,
                    seq: 1 + seq,
                },
                kind: HostCommandKind::CreateVolume {
                    pool: "p".into(),
                    name: "web.qcow2".into(),
                    format: VolumeFormat::Qcow2,
                    size_bytes: size,
                },
            },
        }
    }

    #[test]
    fn a_local_volume_is_created_through_its_own_host_only() {
        let mut core = core();
        let record = VolumeRecord {
            format: VolumeFormat::Qcow2,
            size_bytes: 64 << 20,
            host: Some("host-2".into()),
        };
        core.set_desired([("web.qcow2".to_owned(), record)].into());
        let t0 = Instant::now();
        let healthy = |hosts: &[&str]| hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            core.tick(t0, &healthy(&["host-1", "host-3"])),
            [],
            "its host is not healthy: it waits"
        );
        let sent = core.tick(t0, &healthy(&["host-1", "host-2"]));
        let hosts: Vec<&str> = sent
            .iter()
            .map(|Effect::Send { host, .. }| host.as_str())
            .collect();
        assert_eq!(hosts, ["host-2"]);
    }

    #[test]
    fn a_volume_is_created_once_through_a_healthy_host_and_again_when_it_grows() {
        let mut core = core();
        let t0 = Instant::now();
        assert_eq!(core.tick(t0, &[]), [], "no healthy host: nothing to do");
        assert_eq!(core.tick(t0, &["host-1".to_owned()]), [create(0, 64 << 20)]);
        assert_eq!(core.tick(t0, &["host-1".to_owned()]), [], "in flight");
        let id = CommandId {
            leadership: LEADERSHIP,
            seq: 1,
        };
        core.command_done("web.qcow2", id, Ok(()));
        assert!(core.views()[0].ready);
        assert_eq!(
            core.tick(t0 + Duration::from_secs(60), &["host-1".to_owned()]),
            []
        );
        let mut grown = core.desired.clone();
        grown.get_mut("web.qcow2").unwrap().size_bytes = 128 << 20;
        core.set_desired(grown);
        assert!(!core.views()[0].ready);
        assert_eq!(
            core.tick(t0, &["host-1".to_owned()]),
            [create(1, 128 << 20)]
        );
    }

    #[test]
    fn ticking_after_inputs_and_at_next_due_sends_what_ticking_all_the_time_does() {
        // Nothing answers; the pool's host is healthy throughout.
        super::super::alarm_check::Drive {
            report_every_ms: 700,
            until_ms: 40_000,
            input: |_: &mut VolumesCore, _| {},
            tick: |core, now| {
                let effects = core.tick(now, &["host-1".to_owned()]);
                effects
                    .into_iter()
                    .map(|Effect::Send { command, .. }| command.id.seq - 1)
                    .collect()
            },
            next_due: VolumesCore::next_due,
        }
        .check(core);
    }

    #[test]
    fn a_failure_is_shown_and_retried_with_backoff() {
        let mut core = core();
        let t0 = Instant::now();
        core.tick(t0, &["host-1".to_owned()]);
        let id = CommandId {
            leadership: LEADERSHIP,
            seq: 1,
        };
        core.command_done(
            "web.qcow2",
            id,
            Err(crate::core::failed("No space left on device")),
        );
        let view = &core.views()[0];
        assert_eq!(
            (view.ready, view.error.as_deref()),
            (false, Some("No space left on device"))
        );
        assert_eq!(
            core.tick(t0 + Duration::from_millis(1_999), &["host-1".to_owned()]),
            []
        );
        assert_eq!(
            core.tick(t0 + Duration::from_millis(2_000), &["host-1".to_owned()]),
            [create(1, 64 << 20)]
        );
    }
}
