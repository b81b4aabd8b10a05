//! Backups and rebuilt data directories.
//!
//! A backup is one snapshot of the whole desired state, taken through the leader, in a file
//! that leaves the cluster: it therefore carries its own format version, the log position it
//! stands at, and a checksum, and a reader refuses anything else by name.
//!
//! File layout (all integers big-endian):
//!
//! ```text
//! [8]  magic "qvdc-bk\n"
//! [2]  backup format (BACKUP_FORMAT)
//! [8]  body length N
//! [N]  body: bincode of `Body` (release, storage format, log position, members, state)
//! [32] SHA-256 of everything before it
//! ```
//!
//! From a backup or from a surviving node, [`write_data_dir`] writes the data directory of a
//! node of a *new* cluster: the state as a snapshot at the same log position, the new
//! membership, and a vote term no lower than the old cluster reached (ADR 21).

use std::{collections::BTreeMap, path::Path};

use openraft::{BasicNode, CommittedLeaderId, Membership};
use qvdc_transport::codec;
use serde::{Deserialize, Serialize};

use crate::{
    model::DesiredState,
    store::{self, MachineData, StoreError, STORAGE_FORMAT},
    types::{LogId, NodeId, SnapshotMeta, StoredMembership, Vote},
};

const MAGIC: &[u8; 8] = b"qvdc-bk\n";
/// The backup file format this build writes and reads.
pub const BACKUP_FORMAT: u16 = 1;
const HEADER_BYTES: usize = MAGIC.len() + 2 + 8;
const CHECKSUM_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a qvdc backup: the file does not start with qvdc's backup header")]
    NotABackup,
    #[error(
        "backup format {found}, written by a newer qvdc; this qvdc {release} reads backup \
         format {BACKUP_FORMAT}: restore with the release that made the backup or a newer one"
    )]
    NewerFormat { found: u16, release: &'static str },
    #[error(
        "the backup is truncated: its header announces {expected} bytes, the file has \
         {found}; copy it again from where it was saved"
    )]
    Truncated { expected: u64, found: u64 },
    #[error(
        "the backup is corrupt: its SHA-256 checksum does not match its contents; copy it \
         again from where it was saved, or use an older backup"
    )]
    Checksum,
    #[error("the backup's contents cannot be read: {0}")]
    Contents(String),
    #[error(
        "the backup holds storage format {found}, newer than this qvdc {release} reads \
         ({STORAGE_FORMAT}): restore with the release that made the backup or a newer one"
    )]
    NewerStorage { found: u32, release: &'static str },
    #[error("{0} already holds a node's data: restore only into an empty data directory")]
    NotEmpty(String),
    #[error("node {node} is not among the new members {members:?}")]
    NotAMember { node: NodeId, members: Vec<NodeId> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a backup file holds besides the checksum.
#[derive(Debug, Serialize, Deserialize)]
struct Body {
    /// The qvdc release that took it, for the operator.
    release: String,
    /// The storage format `state` is encoded in.
    storage_format: u32,
    /// The node that led when it was taken.
    leader: NodeId,
    /// The snapshot's position in the log and the membership at that point.
    meta: SnapshotMeta,
    /// The snapshot's data as the state machine wrote it.
    state: Vec<u8>,
}

/// A backup, read and checked.
#[derive(Debug)]
pub struct Backup {
    pub release: String,
    pub leader: NodeId,
    /// Where in the old cluster's log the state stands.
    pub log_id: LogId,
    /// The old cluster's members, by id.
    pub members: BTreeMap<NodeId, String>,
    machine: MachineData,
}

impl Backup {
    pub fn state(&self) -> &DesiredState {
        &self.machine.state
    }
}

/// Makes a backup file from a snapshot the state machine built (`meta` and its `data`),
/// taken while `leader` led.
pub fn encode(meta: &SnapshotMeta, data: Vec<u8>, leader: NodeId) -> Result<Vec<u8>, BackupError> {
    let body = Body {
        release: env!("CARGO_PKG_VERSION").to_owned(),
        storage_format: STORAGE_FORMAT,
        leader,
        meta: meta.clone(),
        state: data,
    };
    let body = codec::to_stored_bytes(&body).map_err(|e| BackupError::Contents(e.to_string()))?;
    let mut file = Vec::with_capacity(HEADER_BYTES + body.len() + CHECKSUM_BYTES);
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&BACKUP_FORMAT.to_be_bytes());
    file.extend_from_slice(&(body.len() as u64).to_be_bytes());
    file.extend_from_slice(&body);
    let checksum = ring::digest::digest(&ring::digest::SHA256, &file);
    file.extend_from_slice(checksum.as_ref());
    Ok(file)
}

/// Reads a backup file, refusing anything that is not exactly what [`encode`] wrote.
pub fn decode(file: &[u8]) -> Result<Backup, BackupError> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let found = file.len() as u64;
    let Some(header) = file.get(..HEADER_BYTES) else {
        return Err(BackupError::Truncated {
            expected: (HEADER_BYTES + CHECKSUM_BYTES) as u64,
            found,
        });
    };
    let format = u16::from_be_bytes([header[8], header[9]]);
    if format > BACKUP_FORMAT {
        return Err(BackupError::NewerFormat {
            found: format,
            release: env!("CARGO_PKG_VERSION"),
        });
    }
    let body_len = u64::from_be_bytes(header[10..18].try_into().expect("8 bytes"));
    let expected = ((HEADER_BYTES + CHECKSUM_BYTES) as u64).saturating_add(body_len);
    if found != expected {
        return Err(BackupError::Truncated { expected, found });
    }
    let (contents, checksum) = file.split_at(file.len() - CHECKSUM_BYTES);
    if ring::digest::digest(&ring::digest::SHA256, contents).as_ref() != checksum {
        return Err(BackupError::Checksum);
    }
    let body: Body = codec::from_stored_bytes(&contents[HEADER_BYTES..])
        .map_err(|e| BackupError::Contents(e.to_string()))?;
    if body.storage_format > STORAGE_FORMAT {
        return Err(BackupError::NewerStorage {
            found: body.storage_format,
            release: env!("CARGO_PKG_VERSION"),
        });
    }
    let machine =
        MachineData::decode(&body.state).map_err(|e| BackupError::Contents(e.to_string()))?;
    let log_id = body
        .meta
        .last_log_id
        .ok_or_else(|| BackupError::Contents("the snapshot stands at no log position".into()))?;
    if machine.last_applied != Some(log_id) {
        return Err(BackupError::Contents(format!(
            "the state stands at {:?}, its header at {log_id}",
            machine.last_applied
        )));
    }
    let members = body
        .meta
        .last_membership
        .membership()
        .nodes()
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect();
    Ok(Backup {
        release: body.release,
        leader: body.leader,
        log_id,
        members,
        machine,
    })
}

/// Where a rebuilt data directory starts: a state at a log position, and the highest term
/// the old cluster is known to have reached.
#[derive(Debug)]
pub struct StartingPoint<'a> {
    pub state: &'a DesiredState,
    pub log_id: LogId,
    /// Elections in the new cluster start above this term, so the new leaders' commands
    /// outrank every leadership the hosts have obeyed (their fences) and every log entry
    /// already written (log positions are ordered by term first).
    pub term_at_least: u64,
}

/// Writes the data directory (`path` is its database file, which must not hold data) of
/// node `node` of a new cluster of `members`, starting at `start`. Every member's directory
/// is written from the same starting point and members, so the nodes agree from the start.
pub fn write_data_dir(
    path: &Path,
    node: NodeId,
    members: &BTreeMap<NodeId, String>,
    start: &StartingPoint<'_>,
) -> Result<(), BackupError> {
    if !members.contains_key(&node) {
        return Err(BackupError::NotAMember {
            node,
            members: members.keys().copied().collect(),
        });
    }
    if path.exists() {
        let database = store::open(path)?;
        if database.holds_data()? {
            return Err(BackupError::NotEmpty(path.display().to_string()));
        }
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    let membership = StoredMembership::new(
        Some(start.log_id),
        Membership::new(vec![members.keys().copied().collect()], nodes),
    );
    let machine = MachineData {
        last_applied: Some(start.log_id),
        membership,
        state: start.state.clone(),
    };
    let term = start.term_at_least.max(start.log_id.leader_id.term);
    // Uncommitted and for no one of the new cluster: it only sets where terms continue.
    let vote = Vote::new(term, node);
    let database = store::open(path)?;
    store::write_starting_point(&database, &machine, &vote)?;
    Ok(())
}

/// The log position a rebuilt state stands at when it comes from a node's own log.
pub fn log_id(term: u64, node: NodeId, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

/// What a node's data directory holds, replayed: for rebuilding a cluster around a survivor.
#[derive(Debug)]
pub struct Replayed {
    pub state: DesiredState,
    /// The last entry of the node's log, applied into `state` whether or not it was known
    /// to be committed (ADR 21 says why that is the survivor's best knowledge).
    pub last: LogId,
    /// The highest term the node has voted in.
    pub vote_term: u64,
}

/// Replays node `node`'s data directory (`path` is its database file): its snapshot and
/// every entry of its log after it, as this release's state machine applies them.
pub async fn replay(path: &Path, node: NodeId) -> Result<Replayed, BackupError> {
    use openraft::{
        storage::{RaftLogStorage, RaftStateMachine},
        RaftLogReader,
    };

    use crate::store::{DiskLatency, LogStore, StateMachine};

    let contents = |e: openraft::StorageError<NodeId>| BackupError::Contents(e.to_string());
    let database = store::open(path)?;
    let mut log = LogStore::new(database.clone(), DiskLatency::default(), node)?;
    let (mut machine, state) = StateMachine::open(database, node)?;
    let (applied, _) = machine.applied_state().await.map_err(contents)?;
    let log_state = log.get_log_state().await.map_err(contents)?;
    let vote_term = log
        .read_vote()
        .await
        .map_err(contents)?
        .map_or(0, |vote| vote.leader_id().term);
    // A snapshot installed from a leader can stand past the log when the node stopped before
    // the purge behind it was written: the later of the two is where the node is.
    let Some(last) = log_state.last_log_id.max(applied) else {
        return Err(BackupError::Contents(format!(
            "{} holds no log and no snapshot: there is nothing to recover",
            path.display()
        )));
    };
    let from = applied.map_or(0, |id| id.index + 1);
    let entries = log
        .try_get_log_entries(from..(last.index + 1).max(from))
        .await
        .map_err(contents)?;
    if entries.len() as u64 != (last.index + 1).saturating_sub(from) {
        return Err(BackupError::Contents(format!(
            "the log of {} has a gap between {from} and {}",
            path.display(),
            last.index
        )));
    }
    machine.apply(entries).await.map_err(contents)?;
    let state = state.borrow().as_ref().clone();
    Ok(Replayed {
        state,
        last,
        vote_term,
    })
}
