//! The audit trail: every change applied to desired state, with who asked (the operator's
//! certificate name, or qvdc itself), through which node, with which request id, when, and
//! the outcome. Kept in the replicated state, so it survives any node's loss; bounded by a
//! retention the operators set (`qvctl cluster audit-retention N`). Persisted in snapshots
//! (storage format 3): field order is the encoding.

use qvdc_transport::protocol::{AuditOutcome, AuditRecord};
use serde::{Deserialize, Serialize};

use super::{Command, Outcome};

/// The release level of this build: what it can decode. Level 1 adds audited commands. A
/// leader proposes a command of level N only once the cluster runs at N (every member said it
/// runs a release of at least N; [`Command::SetClusterLevel`]).
pub const CLUSTER_LEVEL: u32 = 1;
/// The level from which changes carry who asked and are recorded in the trail.
pub const AUDIT_LEVEL: u32 = 1;
/// Changes the trail keeps unless an operator sets otherwise.
pub const AUDIT_RETENTION_DEFAULT: u32 = 10_000;
/// The most a trail may keep: each change costs a few hundred bytes (at most about 1.2 KiB)
/// in every node's memory and in every snapshot, which must stay far below the stored-bytes
/// bound.
pub const AUDIT_RETENTION_MAX: u32 = 100_000;
/// The longest a change's description or refusal is kept (longer ones are cut).
pub const AUDIT_TEXT_BYTES_MAX: usize = 512;

/// The trail and the cluster's release level, part of the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// The release level every member runs (0: the first release, which knew none).
    pub level: u32,
    pub retention: u32,
    /// The sequence number of the next change recorded.
    pub next_seq: u64,
    /// Shared, so that copying a chunk of the persistent vector (the first change after
    /// each publish of the state) copies pointers, not records.
    #[serde(deserialize_with = "grown_vector")]
    pub records: imbl::Vector<std::sync::Arc<AuditRecord>>,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            level: 0,
            retention: AUDIT_RETENTION_DEFAULT,
            next_seq: 1,
            records: imbl::Vector::new(),
        }
    }
}

/// Who asked for a change, as the leader that proposes it knows: the operator certificate's
/// name and the node that passed the request on, or nobody (qvdc's own decision).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub name: Option<String>,
    pub via: Option<u64>,
}

impl Audit {
    /// Records one change and forgets the oldest beyond the retention.
    pub(super) fn record(
        &mut self,
        at_ms: u64,
        caller: Caller,
        request_id: Option<String>,
        command: &Command,
        outcome: &Outcome,
    ) {
        let outcome = match outcome {
            Outcome::Applied | Outcome::Batch(_) => AuditOutcome::Applied,
            Outcome::Unchanged => AuditOutcome::Unchanged,
            Outcome::Rejected(e) => AuditOutcome::Refused(cut(e.to_string())),
        };
        self.records.push_back(std::sync::Arc::new(AuditRecord {
            seq: self.next_seq,
            at_ms,
            by: caller.name,
            via: caller.via,
            request_id,
            change: cut(describe(command)),
            outcome,
        }));
        self.next_seq += 1;
        self.trim();
    }

    pub(super) fn trim(&mut self) {
        while self.records.len() > self.retention as usize {
            self.records.pop_front();
        }
    }

    /// The changes from sequence number `since` on, at most `max`; and the first one kept
    /// when changes from `since` on are no longer all kept.
    pub fn since(&self, since: u64, max: usize) -> (Vec<AuditRecord>, Option<u64>) {
        let since = since.max(1);
        let first = self.records.front().map_or(self.next_seq, |r| r.seq);
        let skip = since.saturating_sub(first);
        let gap = (since < first && since < self.next_seq).then_some(first);
        let records = self
            .records
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(max)
            .map(|r| AuditRecord::clone(r))
            .collect();
        (records, gap)
    }
}

fn cut(mut text: String) -> String {
    if text.len() > AUDIT_TEXT_BYTES_MAX {
        let mut end = AUDIT_TEXT_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn list(hosts: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut shown = hosts
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if hosts.len() > SHOWN {
        shown.push_str(&format!(" and {} more", hosts.len() - SHOWN));
    }
    shown
}

/// A change in words, as the trail shows it.
pub fn describe(command: &Command) -> String {
    match command {
        Command::RegisterHost { host_id, .. } => format!("host register {host_id}"),
        Command::Once { command, .. } | Command::Audited { command, .. } => describe(command),
        Command::CreatePool { spec, hosts } => format!(
            "pool create {} ({}) on {}",
            spec.name,
            spec.source,
            list(hosts)
        ),
        Command::CreateVm { spec, host, power }
        | Command::CreateHaVm {
            spec, host, power, ..
        } => {
            format!("vm create {} on {host} ({power:?})", spec.name)
        }
        Command::SetVmPower { name, power } => format!("vm power {name} {power:?}"),
        Command::DeleteVm { name } => format!("vm delete {name}"),
        Command::AssignPool { pool, hosts } => format!("pool assign {pool} to {}", list(hosts)),
        Command::UnassignPool { pool, hosts } => {
            format!("pool unassign {pool} from {}", list(hosts))
        }
        Command::DeletePool { pool } => format!("pool delete {pool}"),
        Command::CreateVolume {
            pool,
            name,
            size_bytes,
            ..
        } => format!("volume create {pool}/{name} ({size_bytes} bytes)"),
        Command::ResizeVolume {
            pool,
            name,
            size_bytes,
        } => format!("volume resize {pool}/{name} to {size_bytes} bytes"),
        Command::DeleteVolume { pool, name } => format!("volume delete {pool}/{name}"),
        Command::CreateNetwork { spec, hosts } => {
            format!("network create {} on {}", spec.name, list(hosts))
        }
        Command::SetMaintenance { host, on } => format!(
            "host maintenance {} {host}",
            if *on { "enter" } else { "exit" }
        ),
        Command::AssignNetwork { network, hosts } => {
            format!("network assign {network} to {}", list(hosts))
        }
        Command::UnassignNetwork { network, hosts } => {
            format!("network unassign {network} from {}", list(hosts))
        }
        Command::DeleteNetwork { network } => format!("network delete {network}"),
        Command::RevokeCertificate(c) => {
            format!("cert revoke {} ({} {})", c.serial, c.role, c.name)
        }
        Command::Batch(commands) => format!("{} changes", commands.len()),
        Command::AdoptVm { spec, host, .. } => format!("vm adopt {} on {host}", spec.name),
        Command::ReleaseVm { name } => format!("vm release {name}"),
        Command::ForgetVm { name, .. } => format!("vm forget {name} (released)"),
        Command::SetVmHa { name, ha } => format!("vm ha {name} {ha:?}"),
        Command::FailOverVm { name, from, to } => {
            format!("vm restart {name} on {to} (host {from} lost)")
        }
        Command::RemoveHost { host } => format!("host remove {host}"),
        Command::BeginMove { name, to, mode } => format!("vm move {name} to {to} ({mode}) begins"),
        Command::FinishMove { name, from, to } => {
            format!("vm move {name} from {from} to {to} done")
        }
        Command::AbandonMove { name, to, reason } => {
            format!("vm move {name} to {to} given up: {reason}")
        }
        Command::SetClusterLevel { level, .. } => format!(
            "cluster level {level}: every member runs a release that records who changed what"
        ),
        Command::SetAuditRetention(entries) => format!("cluster audit-retention {entries}"),
    }
}

/// Decodes the trail growing it as records arrive, whatever length the input claims.
fn grown_vector<'de, D>(
    deserializer: D,
) -> Result<imbl::Vector<std::sync::Arc<AuditRecord>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Records;
    impl<'de> serde::de::Visitor<'de> for Records {
        type Value = imbl::Vector<std::sync::Arc<AuditRecord>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence of audit records")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut access: A,
        ) -> Result<Self::Value, A::Error> {
            let mut records = imbl::Vector::new();
            while let Some(record) = access.next_element()? {
                records.push_back(record);
            }
            Ok(records)
        }
    }
    deserializer.deserialize_seq(Records)
}
