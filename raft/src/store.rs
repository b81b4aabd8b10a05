//! Durable Raft storage on redb: the log, the vote and the state machine share one database
//! file and every write transaction commits with redb's default immediate durability, so an
//! acknowledged entry survives `kill -9`.
//!
//! The state machine persists its whole `DesiredState` with the applied log id in one
//! transaction per applied batch: small, simple, and atomic. Snapshots are that same blob.

use std::{io::Cursor, ops::RangeBounds, path::Path, sync::Arc};

use openraft::{
    storage::{LogFlushed, RaftLogStorage, RaftStateMachine},
    AnyError, EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    StorageIOError,
};
use qvdc_transport::codec;
pub use redb::Database;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    model::{DesiredState, Outcome},
    types::{
        Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote,
    },
};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const MACHINE: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_DATA: &str = "data";
const KEY_SNAPSHOT: &str = "snapshot";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Db(#[from] redb::Error),
    #[error("stored record is corrupt: {0}")]
    Codec(#[from] codec::CodecError),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Runs a block of redb calls; `?` inside it turns each of redb's error types into one.
fn db<T>(f: impl FnOnce() -> std::result::Result<T, redb::Error>) -> Result<T> {
    Ok(f()?)
}

/// Opens (or creates) the node's database file.
pub fn open(path: &Path) -> Result<Arc<Database>> {
    let database = Database::create(path).map_err(redb::Error::from)?;
    init_tables(&database)?;
    Ok(Arc::new(database))
}

/// A database that lives in memory: for the simulation, which has no disk.
pub fn open_in_memory() -> Result<Arc<Database>> {
    let database = redb::Builder::new()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .map_err(redb::Error::from)?;
    init_tables(&database)?;
    Ok(Arc::new(database))
}

fn init_tables(database: &Database) -> Result<()> {
    db(|| {
        let txn = database.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.open_table(MACHINE)?;
        txn.commit()?;
        Ok(())
    })
}

fn get<T: serde::de::DeserializeOwned>(
    database: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>> {
    let bytes = db(|| {
        let txn = database.begin_read()?;
        let table = txn.open_table(table)?;
        Ok(table.get(key)?.map(|guard| guard.value().to_vec()))
    })?;
    Ok(bytes.map(|b| codec::from_bytes(&b)).transpose()?)
}

fn put<T: Serialize>(
    database: &Database,
    table: TableDefinition<&str, &[u8]>,
    pairs: &[(&str, &T)],
) -> Result<()> {
    let encoded: Vec<(&str, Vec<u8>)> = pairs
        .iter()
        .map(|(k, v)| Ok((*k, codec::to_bytes(v)?)))
        .collect::<Result<_>>()?;
    db(|| {
        let txn = database.begin_write()?;
        {
            let mut table = txn.open_table(table)?;
            for (key, value) in &encoded {
                table.insert(*key, value.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    })
}

fn read_err(e: StoreError) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: StoreError) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

// ---------------------------------------------------------------------------------------
// Log

/// The Raft log and vote. Cheap to clone: clones share the database.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>> {
        let raw: Vec<Vec<u8>> = db(|| {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(LOGS)?;
            let mut out = Vec::new();
            for item in table.range::<u64>(range)? {
                out.push(item?.1.value().to_vec());
            }
            Ok(out)
        })?;
        Ok(raw
            .iter()
            .map(|b| codec::from_bytes(b))
            .collect::<std::result::Result<_, _>>()?)
    }

    fn last_entry(&self) -> Result<Option<Entry>> {
        let raw = db(|| {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(LOGS)?;
            let last = table.last()?.map(|(_, v)| v.value().to_vec());
            Ok(last)
        })?;
        Ok(raw.map(|b| codec::from_bytes(&b)).transpose()?)
    }

    fn remove(&self, range: impl RangeBounds<u64>, purged: Option<&LogId>) -> Result<()> {
        let purged = purged.map(codec::to_bytes).transpose()?;
        db(|| {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(LOGS)?;
                table.retain_in::<u64, _>(range, |_, _| false)?;
            }
            if let Some(purged) = &purged {
                txn.open_table(META)?
                    .insert(KEY_PURGED, purged.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        self.entries(range).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = get(&self.db, META, KEY_PURGED).map_err(read_err)?;
        let last = self.last_entry().map_err(read_err)?.map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::result::Result<(), StorageError> {
        put(&self.db, META, &[(KEY_VOTE, vote)])
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote>, StorageError> {
        get(&self.db, META, KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> std::result::Result<(), StorageError> {
        put(&self.db, META, &[(KEY_COMMITTED, &committed)]).map_err(write_err)
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, StorageError> {
        Ok(get::<Option<LogId>>(&self.db, META, KEY_COMMITTED)
            .map_err(read_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> std::result::Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, codec::to_bytes(&e)?)))
            .collect::<Result<_>>()
            .map_err(write_err)?;
        let written = db(|| {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(LOGS)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        });
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        self.remove(log_id.index.., None).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        self.remove(..=log_id.index, Some(&log_id))
            .map_err(write_err)
    }
}

// ---------------------------------------------------------------------------------------
// State machine

/// Everything the state machine persists, atomically, after each applied batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MachineData {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: DesiredState,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The applied desired state. Every applied batch is published on a watch channel, which is
/// how the leader's supervisors learn of changes.
#[derive(Debug)]
pub struct StateMachine {
    db: Arc<Database>,
    data: MachineData,
    published: watch::Sender<Arc<DesiredState>>,
}

impl StateMachine {
    /// Loads the state machine from the database and returns it with a subscription to its
    /// desired state.
    pub fn open(db: Arc<Database>) -> Result<(Self, watch::Receiver<Arc<DesiredState>>)> {
        let data: MachineData = get(&db, MACHINE, KEY_DATA)?.unwrap_or_default();
        let (published, subscribed) = watch::channel(Arc::new(data.state.clone()));
        Ok((
            Self {
                db,
                data,
                published,
            },
            subscribed,
        ))
    }

    fn persist(&self) -> Result<()> {
        put(&self.db, MACHINE, &[(KEY_DATA, &self.data)])
    }

    fn publish(&self) {
        self.published
            .send_replace(Arc::new(self.data.state.clone()));
    }
}

fn sm_write_err(e: StoreError) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

/// Builds snapshots from a copy of the applied state taken when the builder was made.
#[derive(Debug)]
pub struct SnapshotBuilder {
    db: Arc<Database>,
    data: MachineData,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> std::result::Result<Snapshot, StorageError> {
        let bytes = codec::to_bytes(&self.data).map_err(|e| sm_write_err(e.into()))?;
        let last = self.data.last_applied;
        let snapshot_id = match last {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.data.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes.clone(),
        };
        put(&self.db, MACHINE, &[(KEY_SNAPSHOT, &stored)]).map_err(sm_write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.data.last_applied, self.data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> std::result::Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            assert!(
                Some(entry.log_id) > self.data.last_applied,
                "entries are applied in log order, once"
            );
            self.data.last_applied = Some(entry.log_id);
            outcomes.push(match entry.payload {
                EntryPayload::Blank => Outcome::Unchanged,
                EntryPayload::Normal(command) => self.data.state.apply(&command),
                EntryPayload::Membership(membership) => {
                    self.data.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Outcome::Unchanged
                }
            });
        }
        self.persist().map_err(sm_write_err)?;
        self.publish();
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            data: self.data.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> std::result::Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> std::result::Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let data: MachineData = codec::from_bytes(&bytes).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        assert_eq!(
            data.last_applied, meta.last_log_id,
            "a snapshot's data matches its metadata"
        );
        self.data = data;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        put(&self.db, MACHINE, &[(KEY_SNAPSHOT, &stored)]).map_err(sm_write_err)?;
        self.persist().map_err(sm_write_err)?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<Snapshot>, StorageError> {
        let stored: Option<StoredSnapshot> =
            get(&self.db, MACHINE, KEY_SNAPSHOT).map_err(sm_write_err)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct TempStore;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for TempStore {
        async fn build(
            &self,
        ) -> std::result::Result<(tempfile::TempDir, LogStore, StateMachine), StorageError>
        {
            let dir = tempfile::tempdir().expect("temp dir");
            let database = open(&dir.path().join("raft.redb")).expect("open database");
            let (machine, _) = StateMachine::open(database.clone()).expect("open state machine");
            Ok((dir, LogStore::new(database), machine))
        }
    }

    /// openraft's own storage conformance suite, against real files.
    #[test]
    fn redb_store_passes_the_openraft_suite() {
        Suite::test_all(TempStore).unwrap();
    }

    #[tokio::test]
    async fn applied_state_survives_reopening_the_file() {
        use crate::model::Command;
        use qvdc_transport::protocol::Inventory;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let log_id = LogId::new(openraft::CommittedLeaderId::new(1, 1), 1);
        let inventory = Inventory {
            hostname: "h".into(),
            cpu_cores: 1,
            memory_bytes: 1,
            ..Inventory::default()
        };
        let command = Command::RegisterHost {
            host_id: "host-1".into(),
            inventory,
        };
        {
            let (mut machine, watch) = StateMachine::open(open(&path).unwrap()).unwrap();
            let entry = Entry {
                log_id,
                payload: EntryPayload::Normal(command),
            };
            assert_eq!(
                machine.apply([entry]).await.unwrap(),
                vec![Outcome::Applied]
            );
            assert!(watch.borrow().hosts.contains_key("host-1"));
        }
        let (mut machine, watch) = StateMachine::open(open(&path).unwrap()).unwrap();
        assert_eq!(machine.applied_state().await.unwrap().0, Some(log_id));
        assert!(watch.borrow().hosts.contains_key("host-1"));
    }
}
