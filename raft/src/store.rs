//! Durable Raft storage: the log's entries in append-only segment files ([`crate::logfile`]),
//! the vote, the purge point and snapshots in one redb database file beside them.
//!
//! Readers see an in-memory copy of the log; every change to disk goes through one queue to
//! one writer, which writes everything queued so far (appends in one `write` to the active
//! segment and one `fdatasync`; a vote or purge point in a redb transaction of its own).
//! Appends, truncations, purges and votes wait until they are on disk; the committed index
//! rides along with the next write. Being one ordered queue, the committed index never
//! reaches the disk before the entries it points at, and a vote reaches it before any entry
//! written after it.
//!
//! The state machine lives in memory. It is persisted only as snapshots; after a restart
//! openraft re-applies the committed log behind the latest snapshot, which rebuilds exactly
//! the state that was acknowledged (see docs/adr/0010-write-path.md).

use std::{
    collections::BTreeMap,
    io::Cursor,
    ops::{Bound, RangeBounds},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use openraft::{
    storage::{LogFlushed, RaftLogStorage, RaftStateMachine},
    AnyError, EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    StorageIOError,
};
use qvdc_transport::{
    bugs::{self, Bug},
    codec,
    facts::{self, Fact},
};
pub use redb::Database;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    logfile::{self, LogFiles},
    model::{Command, DesiredState, Outcome},
    types::{
        Entry, LogId, NodeId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
        Vote,
    },
};

/// The log's entries up to storage format 3; from format 4 on they are in segment files and
/// this table is empty.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const MACHINE: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");
const KEY_VOTE: &str = "vote";
/// The committed log id: in the log's segments from format 4 on, here before (and where a
/// restored node starts, [`write_starting_point`]).
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "snapshot";
/// The storage format the file is in, as a 4-byte big-endian number (not bincode, so that it
/// stays readable whatever the encoding of the records becomes).
const KEY_FORMAT: &str = "format";

/// What the log's table holds from format 4 on, at the last index: a record no release
/// before format 4 can decode as an entry. qvdc 0.1.0 does not read the `format` key; it
/// refuses to start on a stored record it cannot decode, where it would otherwise find an
/// empty log and lose the entries now in `raft-log/`.
const LOG_MOVED_KEY: u64 = u64::MAX;
const LOG_MOVED: &[u8] = b"\xffstorage format 4: this node's Raft log is in raft-log/ (ADR 34)";

/// The storage format this build writes. docs/compatibility.md lists every format, what
/// changed in it and which releases read it.
///
/// * 1 — qvdc 0.1.0: the tables and records below, without a `format` key.
/// * 2 — the same records, with the `format` key.
/// * 3 — a VM record holds its HA policy; snapshot data starts with a tag, and data without
///   it is read as formats 1–2's (see [`MachineData::decode`]). Log entries may hold the
///   commands appended in this format (HA, fail-over, host removal).
/// * 4 — the log's entries and committed index move from the `raft_log` table and the
///   `committed` key to segment files in `raft-log/` beside the database (ADR 34).
pub const STORAGE_FORMAT: u32 = 4;
/// The oldest storage format this build migrates forward.
pub const STORAGE_FORMAT_OLDEST: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Db(#[from] redb::Error),
    #[error("stored record is corrupt: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("the log writer has stopped: {0}")]
    Writer(String),
    #[error(
        "{place} is in storage format {found}, written by a newer qvdc; this qvdc {release} \
         reads storage formats {STORAGE_FORMAT_OLDEST} to {STORAGE_FORMAT}. Run the newer \
         qvdc on it, or restore this node from a backup this version can read \
         (docs/operations.md)"
    )]
    NewerFormat {
        place: String,
        found: u32,
        release: &'static str,
    },
    #[error(
        "{place} is in storage format {found}, older than the oldest this qvdc {release} \
         migrates ({STORAGE_FORMAT_OLDEST}). Upgrade through an intermediate release first \
         (docs/compatibility.md)"
    )]
    OlderFormat {
        place: String,
        found: u32,
        release: &'static str,
    },
    #[error("{place} is in use by a running qvdc: stop it first")]
    InUse { place: String },
    #[error(
        "{place} was not closed cleanly (its node stopped abruptly); qvdc repairs it when the \
         node starts, and reads its format then"
    )]
    NeedsRepair { place: String },
    #[error("{place} has an unreadable storage format record of {bytes} bytes")]
    CorruptFormat { place: String, bytes: usize },
    #[error(transparent)]
    Log(#[from] logfile::LogFileError),
    #[error(
        "{log} holds a Raft log but its database {place} is new (deleted or moved?): the log \
         without its vote and snapshot cannot be trusted. Put the database back, or move the \
         log directory aside to start this node empty"
    )]
    OrphanedLog { place: String, log: String },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Runs a block of redb calls; `?` inside it turns each of redb's error types into one.
fn db<T>(f: impl FnOnce() -> std::result::Result<T, redb::Error>) -> Result<T> {
    Ok(f()?)
}

/// A node's storage: its database file and its log's segments. Cheap to clone: clones are
/// the same storage.
#[derive(Debug, Clone)]
pub struct Data {
    database: Arc<Database>,
    log: logfile::Backend,
    segment_bytes: u64,
}

impl Data {
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Whether the database or the log holds anything (see [`holds_data`]).
    pub fn holds_data(&self) -> Result<bool> {
        Ok(holds_data(self.database.as_ref())? || !self.log.list()?.is_empty())
    }
}

/// Where the log's segments of the database file at `path` live: `raft-log/` beside
/// `raft.redb` (and `raft-log.kept/` beside `raft.redb.kept`, so that a pair moved aside
/// under one suffix still opens together).
pub fn log_dir(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let name = match name.split_once(".redb") {
        Some((stem, rest)) => format!("{stem}-log{rest}"),
        None => format!("{name}-log"),
    };
    path.with_file_name(name)
}

/// Opens (or creates) the node's database file and its log, migrating them to
/// [`STORAGE_FORMAT`] if an older release wrote them and refusing them if a newer one did.
pub fn open(path: &Path) -> Result<Data> {
    let database = Database::create(path).map_err(redb::Error::from)?;
    init_tables(&database)?;
    let data = Data {
        database: Arc::new(database),
        log: logfile::Backend::Dir(log_dir(path)),
        segment_bytes: logfile::SEGMENT_BYTES,
    };
    upgrade_format(&data, &path.display().to_string())?;
    Ok(data)
}

/// Storage that lives in memory: for the simulation, which has no disk. Its log segments are
/// small, so that runs start and delete them.
pub fn open_in_memory() -> Result<Data> {
    let database = redb::Builder::new()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .map_err(redb::Error::from)?;
    init_tables(&database)?;
    let data = Data {
        database: Arc::new(database),
        log: logfile::Backend::memory(),
        segment_bytes: logfile::SIMULATED_SEGMENT_BYTES,
    };
    upgrade_format(&data, "the in-memory database")?;
    Ok(data)
}

/// The storage format of `database`: its `format` record, or 1 for a file that holds data
/// but no record (written by qvdc 0.1.0), or `None` for a new, empty file.
pub fn storage_format(database: &impl ReadableDatabase, place: &str) -> Result<Option<u32>> {
    let record = db(|| {
        let txn = database.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(KEY_FORMAT)?.map(|guard| guard.value().to_vec()))
    })?;
    match record {
        Some(bytes) => {
            let format =
                <[u8; 4]>::try_from(bytes.as_slice()).map_err(|_| StoreError::CorruptFormat {
                    place: place.to_owned(),
                    bytes: bytes.len(),
                })?;
            Ok(Some(u32::from_be_bytes(format)))
        }
        None if holds_data(database)? => Ok(Some(1)),
        None => Ok(None),
    }
}

/// Whether `database` holds anything besides its format record: a log entry, a vote or
/// other metadata, or a snapshot.
pub fn holds_data(database: &impl ReadableDatabase) -> Result<bool> {
    db(|| {
        let txn = database.begin_read()?;
        let meta = txn.open_table(META)?;
        let format_only = meta.len()? == 1 && meta.get(KEY_FORMAT)?.is_some();
        let entries = txn
            .open_table(LOGS)?
            .range(..LOG_MOVED_KEY)?
            .next()
            .is_some();
        Ok(
            entries
                || !(meta.is_empty()? || format_only)
                || !txn.open_table(MACHINE)?.is_empty()?,
        )
    })
}

/// Writes where a node of a new cluster starts (`crate::backup`): `machine` as the current
/// snapshot, the log empty behind it, and `vote`, in one transaction.
pub(crate) fn write_starting_point(data: &Data, machine: &MachineData, vote: &Vote) -> Result<()> {
    let last = machine
        .last_applied
        .expect("a starting point stands at a log position");
    let stored = StoredSnapshot {
        meta: SnapshotMeta {
            last_log_id: Some(last),
            last_membership: machine.membership.clone(),
            snapshot_id: format!(
                "start-{}-{}-{}",
                last.leader_id.term, last.leader_id.node_id, last.index
            ),
        },
        data: machine.encode()?,
    };
    let stored = codec::to_stored_bytes(&stored)?;
    let purged = codec::to_stored_bytes(&last)?;
    let committed = codec::to_stored_bytes(&Some(last))?;
    let vote = codec::to_stored_bytes(vote)?;
    db(|| {
        let txn = data.database.begin_write()?;
        txn.open_table(MACHINE)?
            .insert(KEY_SNAPSHOT, stored.as_slice())?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(KEY_PURGED, purged.as_slice())?;
            meta.insert(KEY_COMMITTED, committed.as_slice())?;
            meta.insert(KEY_VOTE, vote.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    })
}

/// Fails with [`StoreError::InUse`] while a running node holds the file at `path` (redb
/// holds an exclusive lock on it while open).
pub fn ensure_not_in_use(path: &Path) -> Result<()> {
    let place = path.display().to_string();
    let file = std::fs::File::open(path)
        .map_err(|e| StoreError::Db(redb::StorageError::from(e).into()))?;
    match file.try_lock_shared() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse { place }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Db(redb::StorageError::from(e).into()))
        }
    }
}

/// The storage format of the file at `path`, read without changing the file (for
/// `qvdc server --check-config`): `None` for an empty file; a newer format than this build
/// reads is an error, as it is for [`open`]. A file its node did not close (it crashed)
/// needs a repair first, which only opening it for writing does: [`StoreError::NeedsRepair`].
pub fn inspect_format(path: &Path) -> Result<Option<u32>> {
    ensure_not_in_use(path)?;
    let place = path.display().to_string();
    let database = match redb::ReadOnlyDatabase::open(path) {
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse { place }),
        Err(redb::DatabaseError::RepairAborted) => return Err(StoreError::NeedsRepair { place }),
        other => other.map_err(redb::Error::from)?,
    };
    let found = storage_format(&database, &place)?;
    match found {
        Some(found) if found > STORAGE_FORMAT => Err(StoreError::NewerFormat {
            place,
            found,
            release: env!("CARGO_PKG_VERSION"),
        }),
        _ => Ok(found),
    }
}

/// Brings `data` to [`STORAGE_FORMAT`]: stamps a new file, migrates an older format in a
/// single transaction (a crash leaves the old format whole: the log's segments are written
/// first, and written again from scratch if the crash came before the transaction), and
/// refuses a format this build does not know.
fn upgrade_format(data: &Data, place: &str) -> Result<()> {
    let database = data.database.as_ref();
    let release = env!("CARGO_PKG_VERSION");
    let found = storage_format(database, place)?;
    match found {
        Some(found) if found > STORAGE_FORMAT => {
            return Err(StoreError::NewerFormat {
                place: place.to_owned(),
                found,
                release,
            })
        }
        Some(found) if found < STORAGE_FORMAT_OLDEST => {
            return Err(StoreError::OlderFormat {
                place: place.to_owned(),
                found,
                release,
            })
        }
        Some(STORAGE_FORMAT) => return Ok(()),
        Some(_) => move_log_to_segments(data)?,
        None if !data.log.list()?.is_empty() => {
            return Err(StoreError::OrphanedLog {
                place: place.to_owned(),
                log: match &data.log {
                    logfile::Backend::Dir(dir) => dir.display().to_string(),
                    logfile::Backend::Memory(_) => "the in-memory log".into(),
                },
            })
        }
        None => {}
    }
    db(|| {
        let txn = database.begin_write()?;
        // Format 1 → 2 changes no record: it only adds the `format` key written below.
        // 2 → 3 rewrites nothing either: untagged snapshot data is read as format 2's, and
        // the next snapshot is written in format 3. 3 → 4 empties the log's table and the
        // committed key, whose contents `move_log_to_segments` wrote to the segments.
        {
            let mut logs = txn.open_table(LOGS)?;
            logs.retain(|_, _| false)?;
            logs.insert(LOG_MOVED_KEY, LOG_MOVED)?;
        }
        txn.open_table(META)?.remove(KEY_COMMITTED)?;
        txn.open_table(META)?
            .insert(KEY_FORMAT, STORAGE_FORMAT.to_be_bytes().as_slice())?;
        txn.commit()?;
        Ok(())
    })?;
    if let Some(found) = found {
        tracing::info!("{place}: migrated from storage format {found} to {STORAGE_FORMAT}");
    }
    Ok(())
}

/// Writes the log's entries and committed index as a format-3 database holds them into
/// fresh segments, on disk before the caller's transaction empties the table.
fn move_log_to_segments(data: &Data) -> Result<()> {
    let (entries, committed) = db(|| {
        let txn = data.database.begin_read()?;
        let mut entries = Vec::new();
        for item in txn.open_table(LOGS)?.iter()? {
            let (index, bytes) = item?;
            entries.push((index.value(), bytes.value().to_vec()));
        }
        let committed = txn
            .open_table(META)?
            .get(KEY_COMMITTED)?
            .map(|guard| guard.value().to_vec());
        Ok((entries, committed))
    })?;
    data.log.clear()?;
    let (mut files, _) = LogFiles::open(data.log.clone(), data.segment_bytes)?;
    for (index, bytes) in &entries {
        files.append_entry(*index, bytes)?;
    }
    if let Some(committed) = committed {
        files.append_committed(&committed)?;
    }
    files.flush(true)?;
    tracing::info!(
        entries = entries.len(),
        "moved the Raft log into its segment files"
    );
    Ok(())
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
    Ok(bytes.map(|b| codec::from_stored_bytes(&b)).transpose()?)
}

fn put<T: Serialize>(
    database: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<()> {
    let encoded = codec::to_stored_bytes(value)?;
    db(|| {
        let txn = database.begin_write()?;
        txn.open_table(table)?.insert(key, encoded.as_slice())?;
        txn.commit()?;
        Ok(())
    })
}

/// Runs blocking file I/O from async code: on a multi-threaded runtime the worker hands its
/// other tasks to another thread first; on a current-thread runtime (the simulation, whose
/// disk is memory) it simply runs, which keeps the simulation deterministic.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    if on_threads() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

fn write_err(e: StoreError) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

// ---------------------------------------------------------------------------------------
// Log

/// One change to the file, queued for the writer.
enum Op {
    Put(Vec<(u64, Vec<u8>)>),
    /// Remove entries from this index on (a conflicting suffix).
    Truncate(u64),
    /// Remove entries up to and including this log id and remember it.
    Purge(Vec<u8>, u64),
    Meta(&'static str, Vec<u8>),
}

/// A log commit this slow is logged: replies to the leader and votes wait behind it.
const SLOW_COMMIT_MS: u64 = 100;

/// Who is told when an [`Op`] is on disk.
enum Done {
    Nobody,
    Waiter(oneshot::Sender<std::result::Result<(), String>>),
    /// openraft, for appended entries.
    Flushed(LogFlushed<TypeConfig>),
}

struct Job {
    op: Op,
    done: Done,
}

/// What readers see: the log as appended, ahead of the disk by at most one batch.
#[derive(Debug, Default)]
struct LogCache {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

impl LogCache {
    fn last_log_id(&self) -> Option<LogId> {
        let last = self.entries.values().next_back().map(|e| e.log_id);
        last.or(self.last_purged)
    }
}

#[derive(Debug)]
struct LogShared {
    /// The node whose log this is, for the facts it states.
    node: NodeId,
    cache: Mutex<LogCache>,
    jobs: mpsc::UnboundedSender<Job>,
}

/// The Raft log and vote. Cheap to clone: clones share the in-memory log and the writer.
#[derive(Debug, Clone)]
pub struct LogStore {
    shared: Arc<LogShared>,
}

/// What the store measures: how long each commit of the log (the segment write and its
/// fsync, with any vote or purge point, for everything queued meanwhile) and each snapshot
/// build take. Cheap to clone: clones record into the same histograms.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub commit_seconds: qvdc_transport::metrics::Histogram,
    pub snapshot_seconds: qvdc_transport::metrics::Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            commit_seconds: qvdc_transport::metrics::seconds(),
            snapshot_seconds: qvdc_transport::metrics::seconds(),
        }
    }
}

impl StoreMetrics {
    pub fn register(&self, registry: &mut qvdc_transport::metrics::Registry) {
        registry.register(
            "qvdc_raft_log_commit_seconds",
            "Time to commit (write and fsync) one batch of Raft log appends, votes and truncations",
            self.commit_seconds.clone(),
        );
        registry.register(
            "qvdc_raft_snapshot_build_seconds",
            "Time to encode and store one snapshot of the desired state",
            self.snapshot_seconds.clone(),
        );
    }
}

/// Extra time each commit of the log takes before it starts: zero on a real disk; the
/// simulation raises it to make a node's disk slow. Clones share the setting.
#[derive(Debug, Clone, Default)]
pub struct DiskLatency(Arc<AtomicU64>);

impl DiskLatency {
    pub fn set(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.0.store(ms, Ordering::Relaxed);
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

impl LogStore {
    /// Loads node `node`'s log from `data` and starts its writer task on the current runtime;
    /// each of its commits first waits out `latency`.
    pub fn new(data: Data, latency: DiskLatency, node: NodeId) -> Result<Self> {
        Self::measured(data, latency, node, StoreMetrics::default())
    }

    /// [`LogStore::new`], timing each commit into `metrics`.
    pub fn measured(
        data: Data,
        latency: DiskLatency,
        node: NodeId,
        metrics: StoreMetrics,
    ) -> Result<Self> {
        let (files, cache) = load_log(&data)?;
        let writer = Writer {
            database: data.database,
            files,
            failed: None,
        };
        let (jobs, queue) = mpsc::unbounded_channel();
        if on_threads() {
            // A thread of its own: a commit blocks on fsync, and handing a runtime worker's
            // tasks to another thread around every commit (`block_in_place`) cost more CPU
            // than the commit itself at one write at a time (ADR 31).
            std::thread::Builder::new()
                .name(format!("raft-log-{node}"))
                .spawn(move || write_queued_on_thread(writer, queue, latency, metrics))
                .map_err(|e| StoreError::Writer(format!("cannot start the log writer: {e}")))?;
        } else {
            tokio::spawn(write_queued(writer, queue, latency, metrics));
        }
        Ok(Self {
            shared: Arc::new(LogShared {
                node,
                cache: Mutex::new(cache),
                jobs,
            }),
        })
    }

    /// The index of the last entry this node knows to be committed.
    pub fn committed_index(&self) -> Option<u64> {
        self.cache().committed.map(|id| id.index)
    }

    /// The last entry of the log (as appended, possibly not yet on disk), or the last purged
    /// one if the log is empty behind a snapshot.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.cache().last_log_id()
    }

    fn cache(&self) -> MutexGuard<'_, LogCache> {
        self.shared.cache.lock().expect("log cache lock poisoned")
    }

    fn queue(&self, op: Op, done: Done) -> Result<()> {
        self.shared
            .jobs
            .send(Job { op, done })
            .map_err(|_| StoreError::Writer("queue closed".into()))
    }

    /// Queues `op` and waits until it is on disk.
    async fn write_through(&self, op: Op) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.queue(op, Done::Waiter(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Writer(e)),
            Err(_) => Err(StoreError::Writer("stopped before writing".into())),
        }
    }
}

fn load_log(data: &Data) -> Result<(LogFiles, LogCache)> {
    let database = data.database.as_ref();
    let (files, loaded) = LogFiles::open(data.log.clone(), data.segment_bytes)?;
    let last_purged: Option<LogId> = get(database, META, KEY_PURGED)?;
    let behind = last_purged.map_or(0, |id| id.index + 1);
    let mut entries = BTreeMap::new();
    // Segments a purge had not yet deleted when the node stopped still hold entries behind
    // the purge point: they are not part of the log.
    for (index, bytes) in loaded.entries {
        if index >= behind {
            entries.insert(index, codec::from_stored_bytes(&bytes)?);
        }
    }
    let committed = match loaded.committed {
        Some(bytes) => codec::from_stored_bytes::<Option<LogId>>(&bytes)?,
        // A node restored from a backup starts with its committed index in the database.
        None => get::<Option<LogId>>(database, META, KEY_COMMITTED)?.flatten(),
    };
    let cache = LogCache {
        entries,
        last_purged,
        vote: get(database, META, KEY_VOTE)?,
        committed,
    };
    Ok((files, cache))
}

/// Whether the current runtime has worker threads (a node in production); otherwise
/// (the simulation, current-thread tests) everything stays on the runtime's one thread.
fn on_threads() -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    matches!(
        Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(RuntimeFlavor::MultiThread)
    )
}

/// Frees what the log no longer holds away from the caller. A purge behind a snapshot drops
/// thousands of entries of up to 256 commands each: freeing them took 350–530 ms on each
/// node at 256 clients (measured), during which the Raft core awaiting the purge sent no
/// heartbeats and the followers elected a new leader. On a runtime with worker threads a
/// short-lived thread frees them; on one thread (the simulation) it is done in place.
fn discard(garbage: BTreeMap<u64, Entry>) {
    if garbage.is_empty() {
        return;
    }
    if on_threads() {
        let freeing = std::thread::Builder::new()
            .name("qvdc-log-free".into())
            .spawn(move || drop(garbage));
        if let Err(e) = freeing {
            tracing::warn!(error = %e, "no thread to free purged log entries on");
        }
    } else {
        drop(garbage);
    }
}

/// The writer as a task: takes everything queued, writes it, then reports. For a runtime
/// on one thread, whose disk is memory or a test's file.
async fn write_queued(
    mut writer: Writer,
    mut queue: mpsc::UnboundedReceiver<Job>,
    latency: DiskLatency,
    metrics: StoreMetrics,
) {
    while let Some(first) = queue.recv().await {
        let slow = latency.get();
        if !slow.is_zero() {
            // What queues up meanwhile rides along, as it would behind a slow fsync.
            tokio::time::sleep(slow).await;
        }
        commit_queued(&mut writer, first, &mut queue, &metrics);
    }
}

/// The writer as a thread of its own, for a runtime with worker threads.
fn write_queued_on_thread(
    mut writer: Writer,
    mut queue: mpsc::UnboundedReceiver<Job>,
    latency: DiskLatency,
    metrics: StoreMetrics,
) {
    while let Some(first) = queue.blocking_recv() {
        let slow = latency.get();
        if !slow.is_zero() {
            std::thread::sleep(slow);
        }
        commit_queued(&mut writer, first, &mut queue, &metrics);
    }
}

/// Writes `first` and everything queued behind it (one sync), then tells each job's waiter.
fn commit_queued(
    writer: &mut Writer,
    first: Job,
    queue: &mut mpsc::UnboundedReceiver<Job>,
    metrics: &StoreMetrics,
) {
    let mut batch = vec![first];
    while let Ok(job) = queue.try_recv() {
        batch.push(job);
    }
    let started = tokio::time::Instant::now();
    let result = writer.commit(&batch);
    let took = started.elapsed();
    metrics.commit_seconds.observe(took.as_secs_f64());
    if took >= Duration::from_millis(SLOW_COMMIT_MS) {
        let count = |f: fn(&Op) -> bool| batch.iter().filter(|job| f(&job.op)).count();
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            appends = count(|op| matches!(op, Op::Put(_))),
            purges = count(|op| matches!(op, Op::Purge(..))),
            truncations = count(|op| matches!(op, Op::Truncate(_))),
            "a Raft log commit took long; everything queued behind it waited"
        );
    }
    for job in batch {
        match job.done {
            Done::Nobody => {}
            Done::Waiter(tx) => {
                let _ = tx.send(result.clone());
            }
            Done::Flushed(callback) => {
                callback.log_io_completed(result.clone().map_err(std::io::Error::other));
            }
        }
    }
}

/// What the writer owns: the database and the log's open segments.
struct Writer {
    database: Arc<Database>,
    files: LogFiles,
    /// The first failure: after it nothing more is written (what is on disk and what the
    /// writer believes may differ), and every later job fails with it.
    failed: Option<String>,
}

impl Writer {
    fn commit(&mut self, batch: &[Job]) -> std::result::Result<(), String> {
        if let Some(failed) = &self.failed {
            return Err(format!("an earlier write failed: {failed}"));
        }
        self.write(batch).map_err(|e| {
            let said = e.to_string();
            tracing::error!(error = %said, "the Raft log cannot be written");
            self.failed = Some(said.clone());
            said
        })
    }

    /// Writes the batch in queue order: appends and the committed index go to the active
    /// segment, synced once at the end (unless the committed index is all there is: losing
    /// it only means re-learning it from the leader after a crash); a vote or purge point
    /// is a redb transaction of its own, on disk before anything queued after it is written.
    fn write(&mut self, batch: &[Job]) -> Result<()> {
        let mut sync = false;
        for job in batch {
            match &job.op {
                Op::Put(entries) => {
                    for (index, bytes) in entries {
                        self.files.append_entry(*index, bytes)?;
                    }
                    sync = true;
                }
                Op::Meta(KEY_COMMITTED, bytes) => self.files.append_committed(bytes)?,
                Op::Truncate(from) => self.files.truncate(*from)?,
                Op::Purge(log_id, upto) => {
                    self.put_meta(KEY_PURGED, log_id)?;
                    self.files.purge(*upto)?;
                }
                Op::Meta(key, bytes) => self.put_meta(key, bytes)?,
            }
        }
        self.files.flush(sync)?;
        Ok(())
    }

    fn put_meta(&self, key: &str, bytes: &[u8]) -> Result<()> {
        db(|| {
            let txn = self.database.begin_write()?;
            txn.open_table(META)?.insert(key, bytes)?;
            txn.commit()?;
            Ok(())
        })
    }
}

fn clamp(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        let cache = self.cache();
        Ok(cache
            .entries
            .range(clamp(&range))
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, StorageError> {
        let cache = self.cache();
        Ok(LogState {
            last_purged_log_id: cache.last_purged,
            last_log_id: cache.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::result::Result<(), StorageError> {
        let to_err = |e: StoreError| -> StorageError {
            StorageIOError::write_vote(AnyError::new(&e)).into()
        };
        let bytes = codec::to_stored_bytes(vote).map_err(|e| to_err(e.into()))?;
        self.write_through(Op::Meta(KEY_VOTE, bytes))
            .await
            .map_err(to_err)?;
        self.cache().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote>, StorageError> {
        Ok(self.cache().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> std::result::Result<(), StorageError> {
        let bytes = codec::to_stored_bytes(&committed).map_err(|e| write_err(e.into()))?;
        self.cache().committed = committed;
        self.queue(Op::Meta(KEY_COMMITTED, bytes), Done::Nobody)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, StorageError> {
        Ok(self.cache().committed)
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
        let mut encoded = Vec::new();
        {
            let mut cache = self.cache();
            for entry in entries {
                let bytes = codec::to_stored_bytes(&entry).map_err(|e| write_err(e.into()))?;
                encoded.push((entry.log_id.index, bytes));
                cache.entries.insert(entry.log_id.index, entry);
            }
        }
        // Readable from the cache at once, on disk when the callback fires. A leader sends
        // the entries to its followers meanwhile and counts itself as holding them only
        // from the callback (openraft as patched in vendor/openraft, ADR 31); a follower
        // waits for the callback before it answers.
        let done = if bugs::active(Bug::FlushReportedEarly) {
            callback.log_io_completed(Ok(()));
            Done::Nobody
        } else {
            Done::Flushed(callback)
        };
        self.queue(Op::Put(encoded), done).map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        let removed = self.cache().entries.split_off(&log_id.index);
        discard(removed);
        self.write_through(Op::Truncate(log_id.index))
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        let purged = {
            let mut cache = self.cache();
            let kept = cache.entries.split_off(&(log_id.index + 1));
            cache.last_purged = Some(log_id);
            std::mem::replace(&mut cache.entries, kept)
        };
        discard(purged);
        let bytes = codec::to_stored_bytes(&log_id).map_err(|e| write_err(e.into()))?;
        self.write_through(Op::Purge(bytes, log_id.index))
            .await
            .map_err(write_err)?;
        facts::state(Fact::LogPurged {
            node: self.shared.node,
            through: log_id.index,
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// State machine

/// What a snapshot holds: the applied state and where in the log it stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct MachineData {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    pub(crate) state: DesiredState,
}

/// Snapshot data from storage format 3 on starts with this tag, then the encoded
/// [`MachineData`]. Data without it is formats 1–2's (VMs without an HA policy), which a
/// bincode encoding never starts with 0xff: its first byte is an `Option`'s tag.
const MACHINE_DATA_TAG: &[u8] = b"\xffqvdc-state-3\n";

/// [`MachineData`] as storage formats 1 and 2 encoded it.
#[derive(Serialize, Deserialize)]
struct MachineData2 {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: crate::model::format_2::DesiredState2,
}

impl MachineData {
    /// The snapshot data of this state, as every snapshot, backup and transfer holds it.
    /// A state no format-3 record is needed for (no VM has an HA policy) is written as
    /// format 2 wrote it, untagged, so a node of the previous release can still install a
    /// snapshot from this one during a rolling upgrade.
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        if let Some(state) = self.state.to_format_2() {
            let old = MachineData2 {
                last_applied: self.last_applied,
                membership: self.membership.clone(),
                state,
            };
            return Ok(codec::to_stored_bytes(&old)?);
        }
        let mut bytes = MACHINE_DATA_TAG.to_vec();
        bytes.extend(codec::to_stored_bytes(self)?);
        Ok(bytes)
    }

    /// Reads snapshot data of any storage format this build reads.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        if let Some(current) = bytes.strip_prefix(MACHINE_DATA_TAG) {
            return Ok(codec::from_stored_bytes(current)?);
        }
        let old: MachineData2 = codec::from_stored_bytes(bytes)?;
        Ok(Self {
            last_applied: old.last_applied,
            membership: old.membership,
            state: old.state.into(),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Decodes a snapshot's data as `install_snapshot` does: for fuzzing and tests.
pub fn decode_snapshot(bytes: &[u8]) -> Result<()> {
    MachineData::decode(bytes)?;
    Ok(())
}

/// Decodes the stored snapshot record, data included, as [`StateMachine::open`] does: for
/// fuzzing and tests.
pub fn decode_stored_snapshot(bytes: &[u8]) -> Result<()> {
    let stored: StoredSnapshot = codec::from_stored_bytes(bytes)?;
    decode_snapshot(&stored.data)
}

/// The applied desired state. Every applied batch is published on a watch channel, which is
/// how the leader's supervisors learn of changes.
#[derive(Debug)]
pub struct StateMachine {
    /// The node whose state machine this is, for the facts it states.
    node: NodeId,
    db: Arc<Database>,
    data: MachineData,
    published: watch::Sender<Arc<DesiredState>>,
    metrics: StoreMetrics,
}

impl StateMachine {
    /// Loads node `node`'s state machine from the latest snapshot in the database and returns
    /// it with a subscription to its desired state. openraft re-applies the committed log
    /// behind it.
    pub fn open(data: Data, node: NodeId) -> Result<(Self, watch::Receiver<Arc<DesiredState>>)> {
        Self::measured(data, node, StoreMetrics::default())
    }

    /// [`StateMachine::open`], timing each snapshot build into `metrics`.
    pub fn measured(
        data: Data,
        node: NodeId,
        metrics: StoreMetrics,
    ) -> Result<(Self, watch::Receiver<Arc<DesiredState>>)> {
        let db = data.database;
        let data: MachineData = match get::<StoredSnapshot>(&db, MACHINE, KEY_SNAPSHOT)? {
            Some(stored) => MachineData::decode(&stored.data)?,
            None => MachineData::default(),
        };
        let (published, subscribed) = watch::channel(Arc::new(data.state.clone()));
        Ok((
            Self {
                node,
                db,
                data,
                published,
                metrics,
            },
            subscribed,
        ))
    }

    fn publish(&self) {
        self.published
            .send_replace(Arc::new(self.data.state.clone()));
    }
}

/// Whether `command` deletes a pool, also inside a request or a batch.
fn deletes_a_pool(command: &Command) -> bool {
    match command {
        Command::DeletePool { .. } => true,
        Command::Once { command, .. } | Command::Audited { command, .. } => deletes_a_pool(command),
        Command::Batch(commands) => commands.iter().any(deletes_a_pool),
        _ => false,
    }
}

fn sm_write_err(e: StoreError) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

/// Builds snapshots from a copy of the applied state taken when the builder was made.
#[derive(Debug)]
pub struct SnapshotBuilder {
    node: NodeId,
    db: Arc<Database>,
    data: MachineData,
    metrics: StoreMetrics,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> std::result::Result<Snapshot, StorageError> {
        let started = tokio::time::Instant::now();
        let built = self.build().await;
        self.metrics
            .snapshot_seconds
            .observe(qvdc_transport::metrics::since(started));
        built
    }
}

impl SnapshotBuilder {
    async fn build(&mut self) -> std::result::Result<Snapshot, StorageError> {
        let bytes = if bugs::active(Bug::SnapshotDropsAPool) {
            let mut state = self.data.state.clone();
            if let Some(first) = state.pools.keys().next().cloned() {
                state.pools.remove(&first);
            }
            let data = MachineData {
                last_applied: self.data.last_applied,
                membership: self.data.membership.clone(),
                state,
            };
            data.encode()
        } else {
            self.data.encode()
        };
        let bytes = bytes.map_err(sm_write_err)?;
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
        let db = self.db.clone();
        blocking(|| put(&db, MACHINE, KEY_SNAPSHOT, &stored)).map_err(sm_write_err)?;
        facts::state(Fact::SnapshotBuilt {
            node: self.node,
            index: last.map_or(0, |id| id.index),
        });
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
                EntryPayload::Normal(command) => {
                    if bugs::active(Bug::PanicOnPoolDelete) && deletes_a_pool(&command) {
                        panic!("deliberate bug: the state machine cannot apply a pool's delete");
                    }
                    self.data.state.apply(&command)
                }
                EntryPayload::Membership(membership) => {
                    self.data.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Outcome::Unchanged
                }
            });
        }
        self.publish();
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            node: self.node,
            db: self.db.clone(),
            data: self.data.clone(),
            metrics: self.metrics.clone(),
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
        let data = MachineData::decode(&bytes).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        // A peer's snapshot whose data contradicts its metadata is refused, not a panic.
        if data.last_applied != meta.last_log_id {
            let mismatch = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "snapshot data is of {:?} but its metadata says {:?}",
                    data.last_applied, meta.last_log_id
                ),
            );
            return Err(StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&mismatch),
            )));
        }
        self.data = data;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        let db = self.db.clone();
        blocking(|| put(&db, MACHINE, KEY_SNAPSHOT, &stored)).map_err(sm_write_err)?;
        self.publish();
        facts::state(Fact::SnapshotInstalled {
            node: self.node,
            index: meta.last_log_id.map_or(0, |id| id.index),
        });
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
    use crate::model::Command;
    use openraft::testing::{StoreBuilder, Suite};
    use qvdc_transport::protocol::Inventory;

    struct TempStore;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for TempStore {
        async fn build(
            &self,
        ) -> std::result::Result<(tempfile::TempDir, LogStore, StateMachine), StorageError>
        {
            let dir = tempfile::tempdir().expect("temp dir");
            let database = open(&dir.path().join("raft.redb")).expect("open database");
            let (machine, _) = StateMachine::open(database.clone(), 1).expect("open state machine");
            Ok((
                dir,
                LogStore::new(database, DiskLatency::default(), 1).expect("open log"),
                machine,
            ))
        }
    }

    /// openraft's own storage conformance suite, against real files.
    #[test]
    fn redb_store_passes_the_openraft_suite() {
        Suite::test_all(TempStore).unwrap();
    }

    fn register(host: &str, index: u64) -> Entry {
        let inventory = Inventory {
            hostname: host.into(),
            cpu_cores: 1,
            memory_bytes: 1,
            ..Inventory::default()
        };
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::RegisterHost {
                host_id: host.into(),
                inventory,
            }),
        }
    }

    /// A slow disk (the simulation's fault) makes every commit wait; a normal one does not.
    #[tokio::test(start_paused = true)]
    async fn a_slow_disk_delays_each_commit() {
        let latency = DiskLatency::default();
        let mut log = LogStore::new(open_in_memory().unwrap(), latency.clone(), 1).unwrap();
        let vote = Vote::new_committed(1, 1);
        let took = |started: tokio::time::Instant| started.elapsed();

        let started = tokio::time::Instant::now();
        log.save_vote(&vote).await.unwrap();
        assert_eq!(took(started), Duration::ZERO, "no latency on a normal disk");

        latency.set(Duration::from_millis(250));
        let started = tokio::time::Instant::now();
        log.save_vote(&vote).await.unwrap();
        assert!(
            took(started) >= Duration::from_millis(250),
            "{:?}",
            took(started)
        );
    }

    /// Entries queued behind each other reach the file in order, with the vote and the
    /// committed index, and a reopened store reads back exactly that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let vote = Vote::new_committed(1, 1);
        {
            let mut log = LogStore::new(open(&path).unwrap(), DiskLatency::default(), 1).unwrap();
            for index in 1..=5 {
                let entry = register(&format!("host-{index}"), index);
                log.cache().entries.insert(index, entry.clone());
                let bytes = codec::to_stored_bytes(&entry).unwrap();
                log.queue(Op::Put(vec![(index, bytes)]), Done::Nobody)
                    .unwrap();
            }
            log.truncate(register("x", 5).log_id).await.unwrap();
            log.save_committed(Some(register("x", 3).log_id))
                .await
                .unwrap();
            // The vote waits for its own write, and so for everything queued before it.
            log.save_vote(&vote).await.unwrap();
        }
        // The old writer lets go of the file once it sees its queue closed.
        let mut reopened = open(&path);
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            reopened = open(&path);
        }
        let mut log = LogStore::new(reopened.unwrap(), DiskLatency::default(), 1).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|id| id.index), Some(4));
        assert_eq!(
            log.last_log_id(),
            state.last_log_id,
            "what elections compare"
        );
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(
            log.read_committed().await.unwrap().map(|id| id.index),
            Some(3)
        );
        let hosts: Vec<Entry> = log.try_get_log_entries(2..4).await.unwrap();
        assert_eq!(hosts, vec![register("host-2", 2), register("host-3", 3)]);
    }

    /// The process is killed (no destructor runs, as on `kill -9`) right after the vote's
    /// write returned: everything queued before it, and the vote, are in the file. The test
    /// runs itself as that process.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_write_waited_for_survives_a_kill_right_after() {
        const CHILD: &str = "QVDC_STORE_KILLED_WRITER";
        let vote = Vote::new_committed(2, 1);
        if let Some(path) = std::env::var_os(CHILD) {
            let log = LogStore::new(open(Path::new(&path)).unwrap(), DiskLatency::default(), 1);
            let mut log = log.unwrap();
            for index in 1..=3 {
                let entry = register(&format!("host-{index}"), index);
                let bytes = codec::to_stored_bytes(&entry).unwrap();
                log.queue(Op::Put(vec![(index, bytes)]), Done::Nobody)
                    .unwrap();
            }
            log.save_vote(&vote).await.unwrap();
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::what_a_write_waited_for_survives_a_kill_right_after",
                "--nocapture",
            ])
            .env(CHILD, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut waited = Duration::ZERO;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if waited > Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("the writer hung");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        };
        let mut said = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut said).unwrap();
        // Killed by SIGABRT, not a panic's exit (which would run destructors).
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(6),
            "the writer was meant to abort: {status}; it said: {said}"
        );
        let mut log = LogStore::new(open(&path).unwrap(), DiskLatency::default(), 1).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        let entries: Vec<Entry> = log.try_get_log_entries(1..=3).await.unwrap();
        assert_eq!(
            entries,
            (1..=3)
                .map(|i| register(&format!("host-{i}"), i))
                .collect::<Vec<_>>()
        );
    }

    /// Entries of segments a purge had not deleted yet when the node stopped (it deletes
    /// them after writing the purge point) are not read back as the log: it starts after
    /// the purge point, without a gap. Small segments, so that the purge spans several.
    #[tokio::test]
    async fn entries_behind_the_purge_point_are_not_the_log_after_a_restart() {
        let data = Data {
            segment_bytes: 100,
            ..open_in_memory().unwrap()
        };
        {
            let mut writer = Writer {
                database: data.database.clone(),
                files: LogFiles::open(data.log.clone(), data.segment_bytes)
                    .unwrap()
                    .0,
                failed: None,
            };
            let puts = (1..=12)
                .map(|index| Job {
                    op: Op::Put(vec![(
                        index,
                        codec::to_stored_bytes(&register(&format!("host-{index}"), index)).unwrap(),
                    )]),
                    done: Done::Nobody,
                })
                .collect::<Vec<_>>();
            writer.commit(&puts).unwrap();
            assert!(writer.files.segment_numbers().len() > 2);
            // The purge point is written, then the node stops before deleting segments.
            let purged = register("x", 7).log_id;
            writer
                .put_meta(KEY_PURGED, &codec::to_stored_bytes(&purged).unwrap())
                .unwrap();
        }
        let mut log = LogStore::new(data, DiskLatency::default(), 1).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(7));
        assert_eq!(state.last_log_id.map(|id| id.index), Some(12));
        let entries = log.try_get_log_entries(0..20).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (8..=12).collect::<Vec<_>>());
    }

    /// Snapshot data is written as format 2 wrote it while no VM has an HA policy (so the
    /// previous release can install it), tagged as format 3 once one has; both read back.
    #[test]
    fn snapshot_data_stays_in_format_2_until_a_vm_has_an_ha_policy() {
        use qvdc_transport::protocol::{
            DesiredPower, HaPolicy, PoolSource, PoolSpec, VmDisk, VmSpec, VolumeFormat,
        };
        let mut data = MachineData::default();
        let setup = [
            Command::RegisterHost {
                host_id: "host-1".into(),
                inventory: Inventory::default(),
            },
            Command::CreatePool {
                spec: PoolSpec {
                    scope: Default::default(),
                    name: "shared".into(),
                    source: PoolSource::Dir {
                        path: "/srv/shared".into(),
                    },
                },
                hosts: vec!["host-1".into()],
            },
            Command::CreateVolume {
                pool: "shared".into(),
                name: "d".into(),
                format: VolumeFormat::Qcow2,
                size_bytes: 1 << 30,
                host: None,
            },
            Command::CreateVm {
                spec: VmSpec {
                    id: "vm-1".into(),
                    name: "web".into(),
                    vcpus: 1,
                    memory_bytes: 64 << 20,
                    disks: vec![VmDisk {
                        pool: "shared".into(),
                        volume: "d".into(),
                        format: VolumeFormat::Qcow2,
                    }],
                    nics: Vec::new(),
                },
                host: "host-1".into(),
                power: DesiredPower::Running,
            },
        ];
        for command in &setup {
            assert!(!matches!(
                data.state.apply(command),
                crate::model::Outcome::Rejected(_)
            ));
        }
        let old = data.encode().unwrap();
        assert!(!old.starts_with(MACHINE_DATA_TAG), "no HA yet: format 2");
        let _: MachineData2 = codec::from_stored_bytes(&old).unwrap();
        assert_eq!(MachineData::decode(&old).unwrap().state, data.state);
        assert_eq!(Some(data.state.digest()), data.state.digest_in_format_2());

        let ha = HaPolicy {
            restart: true,
            ..Default::default()
        };
        let set = Command::SetVmHa {
            name: "web".into(),
            ha,
        };
        assert_eq!(data.state.apply(&set), crate::model::Outcome::Applied);
        let new = data.encode().unwrap();
        assert!(
            new.starts_with(MACHINE_DATA_TAG),
            "an HA policy needs format 3"
        );
        assert_eq!(MachineData::decode(&new).unwrap().state.vms["web"].ha, ha);
        assert!(codec::from_stored_bytes::<MachineData2>(&new).is_err());
    }

    /// The decoders the fuzzers drive read what the store writes, and refuse what it did
    /// not: a cut-off record, or bytes that were never a snapshot.
    #[tokio::test]
    async fn the_snapshot_decoders_read_what_was_stored_and_refuse_the_rest() {
        let database = open_in_memory().unwrap();
        let (mut machine, _watch) = StateMachine::open(database.clone(), 1).unwrap();
        machine.apply([register("host-1", 1)]).await.unwrap();
        let mut builder = machine.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        let record = db(|| {
            let txn = database.database().begin_read()?;
            let table = txn.open_table(MACHINE)?;
            Ok(table.get(KEY_SNAPSHOT)?.map(|bytes| bytes.value().to_vec()))
        })
        .unwrap()
        .expect("a snapshot was stored");
        decode_stored_snapshot(&record).unwrap();
        let stored: StoredSnapshot = codec::from_stored_bytes(&record).unwrap();
        decode_snapshot(&stored.data).unwrap();
        assert!(decode_stored_snapshot(&record[..record.len() / 2]).is_err());
        assert!(decode_snapshot(&stored.data[..stored.data.len() - 1]).is_err());
        assert!(decode_snapshot(b"never a snapshot").is_err());
    }

    fn entry(index: u64, command: Command) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    /// A pool's delete is applied like any other command, alone, as a request, or in a
    /// batch (the deliberate bug that panics on it stays off).
    #[tokio::test]
    async fn a_pools_delete_is_applied_in_every_wrapping() {
        use crate::model::RequestDigest;
        use qvdc_transport::protocol::{PoolSource, PoolSpec};
        let (mut machine, watch) = StateMachine::open(open_in_memory().unwrap(), 1).unwrap();
        let create = |name: &str| Command::CreatePool {
            spec: PoolSpec {
                scope: Default::default(),
                name: name.into(),
                source: PoolSource::Dir {
                    path: "/srv/p".into(),
                },
            },
            hosts: vec!["host-1".into()],
        };
        let delete = |name: &str| Command::DeletePool { pool: name.into() };
        let request = Command::Once {
            request_id: "r1".into(),
            digest: RequestDigest::of(&delete("b")),
            command: Box::new(delete("b")),
        };
        let entries = [
            register("host-1", 1),
            entry(
                2,
                Command::Batch(vec![create("a"), create("b"), create("c")].into()),
            ),
            entry(3, delete("a")),
            entry(4, request),
            entry(5, Command::Batch(vec![delete("c")].into())),
        ];
        let outcomes = machine.apply(entries).await.unwrap();
        let applied = Outcome::Applied;
        assert_eq!(
            outcomes[2..],
            [
                applied.clone(),
                applied.clone(),
                Outcome::Batch(vec![applied])
            ]
        );
        assert!(watch.borrow().pools.is_empty());
    }

    /// Blocking file I/O on the multi-threaded runtime hands the worker's other tasks to
    /// another thread: with one worker, a task waiting behind a commit still runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn blocking_io_leaves_the_worker_s_other_tasks_running() {
        let blocked = tokio::spawn(async {
            let (tx, rx) = std::sync::mpsc::channel();
            tokio::spawn(async move { tx.send(()).unwrap() });
            blocking(|| rx.recv_timeout(Duration::from_secs(5)))
        });
        assert!(
            blocked.await.unwrap().is_ok(),
            "the task queued behind the blocking call never ran"
        );
    }

    /// A restarted state machine starts from the latest snapshot, not from nothing.
    #[tokio::test]
    async fn the_state_machine_reopens_at_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let entry = register("host-1", 1);
        let log_id = entry.log_id;
        {
            let (mut machine, watch) = StateMachine::open(open(&path).unwrap(), 1).unwrap();
            assert_eq!(
                machine.apply([entry]).await.unwrap(),
                vec![Outcome::Applied]
            );
            assert!(watch.borrow().hosts.contains_key("host-1"));
            machine
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            machine.apply([register("host-2", 2)]).await.unwrap();
        }
        let (mut machine, watch) = StateMachine::open(open(&path).unwrap(), 1).unwrap();
        assert_eq!(machine.applied_state().await.unwrap().0, Some(log_id));
        assert!(watch.borrow().hosts.contains_key("host-1"));
        assert!(
            !watch.borrow().hosts.contains_key("host-2"),
            "what was applied after the snapshot comes back from the log, not from here"
        );
    }
}
