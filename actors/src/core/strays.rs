//! What a host still has that is no longer meant to be there: mounts of pools unassigned
//! from it, domains of deleted VMs (or of VMs placed elsewhere), networks removed from it.
//! Each heartbeat is compared with the desired state; each removal is resent until the host
//! stops reporting the object, at most once per retry interval, and at most
//! [`STRAY_REMOVALS_PER_HEARTBEAT_MAX`] per heartbeat. Domains without a qvdc id are not
//! qvdc's and are never among them.

use std::collections::{BTreeMap, BTreeSet};

use qvdc_raft::DesiredState;
use qvdc_transport::protocol::{HostCommand, HostCommandKind};
use tokio::time::Instant;

use super::{network, pool, vm, CommandIds, HostReports, Timings};

/// Removals one heartbeat may trigger on its host: a host that reports many objects it
/// should not have (or makes them up) costs the leader a few commands per heartbeat, not
/// one per name.
pub const STRAY_REMOVALS_PER_HEARTBEAT_MAX: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stray {
    Pool,
    Vm,
    Network,
}

/// The removals under way, across all hosts, for one leadership.
#[derive(Debug)]
pub struct Strays {
    timings: Timings,
    /// By (host, kind, name): when the removal was last sent.
    removing: BTreeMap<(String, Stray, String), Instant>,
}

impl Strays {
    pub fn new(timings: Timings) -> Self {
        Self {
            timings,
            removing: BTreeMap::new(),
        }
    }

    /// `host` reported `reports` at `now`: the removals to send it.
    pub fn heartbeat(
        &mut self,
        desired: &DesiredState,
        host: &str,
        reports: &HostReports,
        now: Instant,
        ids: &CommandIds,
    ) -> Vec<HostCommand> {
        let found: [(Stray, BTreeSet<String>); 3] = [
            (Stray::Pool, pool::strays(desired, host, &reports.pools)),
            // Nothing is a stray domain while the host does not know its domains.
            (
                Stray::Vm,
                if reports.vms_known {
                    vm::strays(desired, host, &reports.vms)
                } else {
                    BTreeSet::new()
                },
            ),
            (
                Stray::Network,
                network::strays(desired, host, &reports.networks),
            ),
        ];
        // Forget removals the host no longer needs: done, or the object is wanted again.
        self.removing.retain(|(on, kind, name), _| {
            on != host
                || found
                    .iter()
                    .any(|(k, names)| k == kind && names.contains(name))
        });
        let mut commands = Vec::new();
        for (kind, names) in found {
            for name in names {
                if commands.len() == STRAY_REMOVALS_PER_HEARTBEAT_MAX {
                    return commands; // the rest on a later heartbeat
                }
                let key = (host.to_owned(), kind, name.clone());
                let due = self.removing.get(&key).is_none_or(|sent| {
                    now.saturating_duration_since(*sent) >= self.timings.command_retry()
                });
                if !due {
                    continue;
                }
                self.removing.insert(key, now);
                let kind = match kind {
                    Stray::Pool => HostCommandKind::RemoveStoragePool { pool: name },
                    Stray::Vm => HostCommandKind::UndefineVm { name },
                    Stray::Network => HostCommandKind::RemoveNetwork { name },
                };
                commands.push(HostCommand {
                    id: ids.next(),
                    kind,
                });
            }
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qvdc_transport::protocol::{Leadership, PowerState, VmReport};

    use super::*;

    fn domain(name: &str, id: Option<&str>) -> VmReport {
        VmReport {
            name: name.into(),
            id: id.map(Into::into),
            power: PowerState::Running,
            reason: "booted".into(),
            vcpus: 1,
            memory_bytes: 1 << 20,
            uuid: format!("uuid-{name}"),
            disks: Vec::new(),
        }
    }

    fn ids() -> CommandIds {
        CommandIds::new(Leadership { term: 2, node: 1 })
    }

    #[test]
    fn a_deleted_vms_domain_is_removed_and_a_foreign_one_never() {
        let mut strays = Strays::new(Timings::default());
        let reports = HostReports {
            vms: vec![domain("gone", Some("vm-9")), domain("theirs", None)],
            vms_known: true,
            ..HostReports::default()
        };
        let now = Instant::now();
        let sent = strays.heartbeat(&DesiredState::default(), "host-1", &reports, now, &ids());
        let kinds: Vec<_> = sent.into_iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [HostCommandKind::UndefineVm {
                name: "gone".into()
            }]
        );
    }

    #[test]
    fn a_removal_is_resent_once_per_retry_interval_until_the_host_stops_reporting_it() {
        let timings = Timings::default();
        let mut strays = Strays::new(timings);
        let ids = ids();
        let desired = DesiredState::default();
        let reports = HostReports {
            vms: vec![domain("gone", Some("vm-9"))],
            vms_known: true,
            ..HostReports::default()
        };
        let t0 = Instant::now();
        let mut beat = |at: Instant, reports: &HostReports| {
            strays
                .heartbeat(&desired, "host-1", reports, at, &ids)
                .len()
        };
        assert_eq!(beat(t0, &reports), 1);
        assert_eq!(
            beat(t0 + Duration::from_secs(1), &reports),
            0,
            "not due yet"
        );
        assert_eq!(beat(t0 + timings.command_retry(), &reports), 1, "resent");
        assert_eq!(
            beat(t0 + Duration::from_secs(5), &HostReports::default()),
            0
        );
        // Reported again later (a host restored from an old disk): a removal at once.
        assert_eq!(beat(t0 + Duration::from_millis(5_100), &reports), 1);
    }

    /// A heartbeat settles its own host's removals only: another host's heartbeat does not
    /// make this host's removal due again.
    #[test]
    fn each_hosts_removals_are_its_own() {
        let timings = Timings::default();
        let mut strays = Strays::new(timings);
        let ids = ids();
        let desired = DesiredState::default();
        let gone = HostReports {
            vms: vec![domain("gone", Some("vm-9"))],
            vms_known: true,
            ..HostReports::default()
        };
        let t0 = Instant::now();
        let mut beat = |host: &str, at: Duration, reports: &HostReports| {
            strays
                .heartbeat(&desired, host, reports, t0 + at, &ids)
                .len()
        };
        assert_eq!(beat("host-1", Duration::ZERO, &gone), 1);
        let quiet = HostReports {
            vms_known: true,
            ..HostReports::default()
        };
        assert_eq!(beat("host-2", Duration::from_millis(100), &quiet), 0);
        assert_eq!(
            beat("host-1", Duration::from_secs(1), &gone),
            0,
            "host-1's removal is still in flight"
        );
    }

    /// A pool and a domain may share a name: the pool's removal does not stand for the
    /// domain's, which was done and is needed again.
    #[test]
    fn a_removal_is_kept_by_its_own_kind_and_name_only() {
        let mut strays = Strays::new(Timings::default());
        let ids = ids();
        let desired = DesiredState::default();
        let pool = qvdc_transport::protocol::PoolReport {
            pool: "gone".into(),
            mounted: true,
            mount_path: "/data/pools/gone".into(),
            capacity: Default::default(),
            volume_count: 0,
            health: qvdc_transport::protocol::Health::Healthy,
            error: None,
        };
        let report = |vm: bool, pools: bool| HostReports {
            vms: if vm {
                vec![domain("gone", Some("vm-9"))]
            } else {
                vec![]
            },
            pools: if pools { vec![pool.clone()] } else { vec![] },
            vms_known: true,
            ..HostReports::default()
        };
        let t0 = Instant::now();
        let mut kinds = |at: u64, reports: HostReports| -> Vec<HostCommandKind> {
            let at = t0 + Duration::from_millis(at);
            let sent = strays.heartbeat(&desired, "host-1", &reports, at, &ids);
            sent.into_iter().map(|c| c.kind).collect()
        };
        let undefine = HostCommandKind::UndefineVm {
            name: "gone".into(),
        };
        assert_eq!(
            kinds(0, report(true, false)),
            std::slice::from_ref(&undefine)
        );
        assert_eq!(
            kinds(1_000, report(false, true)),
            [HostCommandKind::RemoveStoragePool {
                pool: "gone".into()
            }]
        );
        assert_eq!(
            kinds(1_500, report(true, true)),
            [undefine],
            "the domain is back: removed again at once; the pool's removal is in flight"
        );
    }

    #[test]
    fn one_heartbeat_sends_a_bounded_number_of_removals_with_distinct_ids() {
        let mut strays = Strays::new(Timings::default());
        let reports = HostReports {
            vms: (0..20)
                .map(|i| domain(&format!("vm-{i:02}"), Some("x")))
                .collect(),
            vms_known: true,
            ..HostReports::default()
        };
        let now = Instant::now();
        let ids = ids();
        let first = strays.heartbeat(&DesiredState::default(), "host-1", &reports, now, &ids);
        assert_eq!(first.len(), STRAY_REMOVALS_PER_HEARTBEAT_MAX);
        let second = strays.heartbeat(&DesiredState::default(), "host-1", &reports, now, &ids);
        assert_eq!(
            second.len(),
            STRAY_REMOVALS_PER_HEARTBEAT_MAX,
            "the next ones"
        );
        let seqs: BTreeSet<u64> = first.iter().chain(&second).map(|c| c.id.seq).collect();
        assert_eq!(seqs.len(), 2 * STRAY_REMOVALS_PER_HEARTBEAT_MAX);
    }
}
