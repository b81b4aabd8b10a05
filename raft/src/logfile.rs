//! The Raft log on disk as append-only segment files (storage format 4, ADR 34).
//!
//! A batch of appended entries costs one `write` at the end of the active segment and one
//! `fdatasync`, where a redb transaction rewrote about eleven pages of its B-tree at scattered
//! offsets for the same batch. Segments are numbered files in one directory; the active one
//! (the highest number) takes appends, and a new one is started once it passes
//! [`SEGMENT_BYTES`]. A purge behind a snapshot deletes whole segments; a truncation of a
//! conflicting suffix deletes later segments and cuts the one holding the first removed entry.
//!
//! Each record is `length (u32 LE) · crc32c of the body (u32 LE) · body`, and the body a kind
//! byte and its payload: an entry (its index as u64 LE, then the entry as the store encodes it)
//! or the committed log id.
//!
//! A segment file is kept written with zeros up to [`ZEROS_AHEAD`] bytes past its last
//! record, and records overwrite the zeros: an `fdatasync` then writes data blocks only,
//! without the journal commit a growing file's size needs (0.074–0.089 ms against
//! 0.134–0.138 ms here for a 512-byte record, docs/benchmarks.md). A length of zero ends a
//! segment's records.
//!
//! On opening, a record cut short at the end of the last segment (only zeros after it) is a
//! write the crash interrupted and was never reported flushed: it is dropped. Any other bad
//! record is corruption, and the log refuses to open, naming the file and the offset.
//!
//! The simulation keeps its segments in memory ([`Backend::Memory`]); they outlive a node's
//! crash as a disk would.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// A new segment is started once the active one holds this many bytes.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// The simulation's segments are small, so that its runs start segments and delete them.
pub const SIMULATED_SEGMENT_BYTES: u64 = 64 << 10;
/// A segment file on disk is written with zeros this far past its records, in one write
/// whenever the records come closer than half of it.
pub const ZEROS_AHEAD: u64 = 256 << 10;
/// No record is this long: a length above it is corruption, not an entry.
const MAX_RECORD: u32 = 256 << 20;
const HEADER: usize = 8;
const KIND_ENTRY: u8 = 1;
const KIND_COMMITTED: u8 = 2;
const SUFFIX: &str = ".seg";

#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("{place}: {source}")]
    Io {
        place: String,
        source: std::io::Error,
    },
    #[error(
        "{place} is corrupt at byte {offset}: {what}. The node cannot trust its log; restore \
         it from a backup or rebuild it from its peers (docs/operations.md)"
    )]
    Corrupt {
        place: String,
        offset: u64,
        what: String,
    },
}

type Result<T> = std::result::Result<T, LogFileError>;

/// Where the segments live.
#[derive(Debug, Clone)]
pub enum Backend {
    Dir(PathBuf),
    /// Segment number → contents, shared by every opening of the same log.
    Memory(Arc<Mutex<BTreeMap<u64, Vec<u8>>>>),
}

impl Backend {
    pub fn memory() -> Self {
        Self::Memory(Arc::default())
    }

    fn place(&self, segment: u64) -> String {
        match self {
            Self::Dir(dir) => segment_path(dir, segment).display().to_string(),
            Self::Memory(_) => format!("in-memory log segment {segment}"),
        }
    }

    fn io<T>(&self, segment: u64, result: std::io::Result<T>) -> Result<T> {
        result.map_err(|source| LogFileError::Io {
            place: self.place(segment),
            source,
        })
    }

    fn dir_io<T>(&self, result: std::io::Result<T>) -> Result<T> {
        result.map_err(|source| LogFileError::Io {
            place: match self {
                Self::Dir(dir) => dir.display().to_string(),
                Self::Memory(_) => "the in-memory log".into(),
            },
            source,
        })
    }

    fn memory_segments(
        segments: &Mutex<BTreeMap<u64, Vec<u8>>>,
    ) -> std::sync::MutexGuard<'_, BTreeMap<u64, Vec<u8>>> {
        segments.lock().expect("log segments lock poisoned")
    }

    /// The segments there are, in order.
    pub fn list(&self) -> Result<Vec<u64>> {
        match self {
            Self::Memory(segments) => Ok(Self::memory_segments(segments).keys().copied().collect()),
            Self::Dir(dir) => {
                let listing = match std::fs::read_dir(dir) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    other => self.dir_io(other)?,
                };
                let mut found = Vec::new();
                for item in listing {
                    let name = self.dir_io(item)?.file_name();
                    let name = name.to_string_lossy();
                    if let Some(number) = name.strip_suffix(SUFFIX).and_then(|n| n.parse().ok()) {
                        found.push(number);
                    }
                }
                found.sort_unstable();
                Ok(found)
            }
        }
    }

    /// Deletes every segment, unread: for writing the log from scratch (a migration run
    /// again after a crash cut it short).
    pub fn clear(&self) -> Result<()> {
        for segment in self.list()?.into_iter().rev() {
            self.remove(segment)?;
        }
        self.sync_dir()
    }

    fn read(&self, segment: u64) -> Result<Vec<u8>> {
        match self {
            Self::Memory(segments) => Ok(Self::memory_segments(segments)
                .get(&segment)
                .cloned()
                .unwrap_or_default()),
            Self::Dir(dir) => self.io(segment, std::fs::read(segment_path(dir, segment))),
        }
    }

    /// Creates an empty segment and makes its name durable.
    fn create(&self, segment: u64) -> Result<Option<File>> {
        match self {
            Self::Memory(segments) => {
                Self::memory_segments(segments).insert(segment, Vec::new());
                Ok(None)
            }
            Self::Dir(dir) => {
                self.dir_io(std::fs::create_dir_all(dir))?;
                // Emptied in case a crash left a file of this number behind.
                let file = self.io(
                    segment,
                    OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(true)
                        .open(segment_path(dir, segment)),
                )?;
                self.sync_dir()?;
                Ok(Some(file))
            }
        }
    }

    fn open_for_writing(&self, segment: u64) -> Result<Option<File>> {
        match self {
            Self::Memory(_) => Ok(None),
            Self::Dir(dir) => self
                .io(
                    segment,
                    OpenOptions::new()
                        .write(true)
                        .open(segment_path(dir, segment)),
                )
                .map(Some),
        }
    }

    fn remove(&self, segment: u64) -> Result<()> {
        match self {
            Self::Memory(segments) => {
                Self::memory_segments(segments).remove(&segment);
                Ok(())
            }
            Self::Dir(dir) => self.io(segment, std::fs::remove_file(segment_path(dir, segment))),
        }
    }

    fn sync_dir(&self) -> Result<()> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Dir(dir) => match File::open(dir) {
                // No directory yet: nothing in it to make durable.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                opened => self.dir_io(opened.and_then(|d| d.sync_all())),
            },
        }
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016}{SUFFIX}"))
}

/// What a log's segments hold, read back in the order it was written.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every entry record still in a segment: index and the entry as the store encoded it.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// The last committed log id recorded, as the store encoded it.
    pub committed: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Segment {
    number: u64,
    /// Where its records end.
    len: u64,
    /// Its file's size: records, then zeros.
    size: u64,
}

/// The open log: its segments, where each entry starts, and the active segment's file.
#[derive(Debug)]
pub struct LogFiles {
    backend: Backend,
    segment_bytes: u64,
    segments: Vec<Segment>,
    /// Entry index → (segment number, offset of its record).
    positions: BTreeMap<u64, (u64, u64)>,
    /// The active segment's file (none in memory, or before the first append).
    file: Option<File>,
    /// Records not yet handed to the active segment.
    pending: Vec<u8>,
    /// The last committed record's payload: each new segment starts with it.
    committed: Option<Vec<u8>>,
}

impl LogFiles {
    /// Opens the log in `backend`, dropping a record a crash cut short at the end.
    pub fn open(backend: Backend, segment_bytes: u64) -> Result<(Self, Loaded)> {
        let numbers = backend.list()?;
        let mut loaded = Loaded::default();
        let mut segments = Vec::new();
        let mut positions = BTreeMap::new();
        for (at, &number) in numbers.iter().enumerate() {
            let bytes = backend.read(number)?;
            let is_last = at + 1 == numbers.len();
            let mut offset = 0usize;
            let mut torn = false;
            while offset < bytes.len() {
                let rest = &bytes[offset..];
                let record = match parse(rest) {
                    Ok(record) => record,
                    // The zeros written ahead of the records.
                    Err(_) if zeros(rest) => break,
                    Err(bad) if is_last && zeros(&rest[bad.zeros_from.min(rest.len())..]) => {
                        tracing::warn!(
                            segment = %backend.place(number),
                            offset,
                            "the log's last record was cut short by a crash; dropping it"
                        );
                        torn = true;
                        break;
                    }
                    Err(bad) => {
                        return Err(LogFileError::Corrupt {
                            place: backend.place(number),
                            offset: offset as u64,
                            what: bad.what,
                        })
                    }
                };
                match record.kind {
                    KIND_ENTRY if record.payload.len() >= 8 => {
                        let (index, entry) = record.payload.split_at(8);
                        let index = u64::from_le_bytes(index.try_into().expect("8 bytes"));
                        positions.insert(index, (number, offset as u64));
                        loaded.entries.push((index, entry.to_vec()));
                    }
                    KIND_COMMITTED => loaded.committed = Some(record.payload.to_vec()),
                    KIND_ENTRY => {
                        return Err(LogFileError::Corrupt {
                            place: backend.place(number),
                            offset: offset as u64,
                            what: format!("an entry record of {} bytes", record.payload.len()),
                        })
                    }
                    kind => {
                        return Err(LogFileError::Corrupt {
                            place: backend.place(number),
                            offset: offset as u64,
                            what: format!("a record of unknown kind {kind}"),
                        })
                    }
                }
                offset += record.len;
            }
            let mut size = bytes.len() as u64;
            if torn {
                backend.io(number, set_len(&backend, number, offset as u64))?;
                size = offset as u64;
            }
            segments.push(Segment {
                number,
                len: offset as u64,
                size,
            });
        }
        let file = match segments.last() {
            Some(active) => backend.open_for_writing(active.number)?,
            None => None,
        };
        let committed = loaded.committed.clone();
        Ok((
            Self {
                backend,
                segment_bytes,
                segments,
                positions,
                file,
                pending: Vec::new(),
                committed,
            },
            loaded,
        ))
    }

    /// Queues entry `index` (encoded by the store) behind everything queued before.
    /// An entry at or before the last one replaces it and everything after it.
    pub fn append_entry(&mut self, index: u64, entry: &[u8]) -> Result<()> {
        if self.positions.range(index..).next().is_some() {
            self.truncate(index)?;
        }
        self.start_segment_if_due()?;
        let active = self.segments.last_mut().expect("an active segment");
        let offset = active.len + self.pending.len() as u64;
        let mut payload = Vec::with_capacity(8 + entry.len());
        payload.extend_from_slice(&index.to_le_bytes());
        payload.extend_from_slice(entry);
        encode(&mut self.pending, KIND_ENTRY, &payload);
        self.positions.insert(index, (active.number, offset));
        Ok(())
    }

    /// Queues the committed log id (encoded by the store).
    pub fn append_committed(&mut self, committed: &[u8]) -> Result<()> {
        self.start_segment_if_due()?;
        encode(&mut self.pending, KIND_COMMITTED, committed);
        self.committed = Some(committed.to_vec());
        Ok(())
    }

    /// Writes what is queued to the active segment and, if `sync`, waits until it is on disk.
    pub fn flush(&mut self, sync: bool) -> Result<()> {
        let Some(active) = self.segments.last_mut() else {
            return Ok(());
        };
        if !self.pending.is_empty() {
            let end = active.len + self.pending.len() as u64;
            if let Backend::Memory(segments) = &self.backend {
                Backend::memory_segments(segments)
                    .entry(active.number)
                    .or_default()
                    .extend_from_slice(&self.pending);
                active.size = end;
            } else {
                if self.file.is_none() {
                    self.file = self.backend.open_for_writing(active.number)?;
                }
                let file = self.file.as_ref().expect("a file on disk");
                if end + ZEROS_AHEAD / 2 > active.size {
                    let zeros = vec![0; (end + ZEROS_AHEAD - active.size) as usize];
                    let written = file.write_all_at(&zeros, active.size);
                    self.backend.io(active.number, written)?;
                    active.size = end + ZEROS_AHEAD;
                }
                let written = file.write_all_at(&self.pending, active.len);
                self.backend.io(active.number, written)?;
            }
            active.len = end;
            self.pending.clear();
        }
        if sync {
            if let Some(file) = &self.file {
                self.backend.io(active.number, file.sync_data())?;
            }
        }
        Ok(())
    }

    /// Removes entry `from` and every entry after it, durably. Later segments go first, the
    /// last one first, so a crash part-way leaves a log without gaps.
    pub fn truncate(&mut self, from: u64) -> Result<()> {
        self.flush(false)?;
        let Some(&(segment, offset)) = self.positions.range(from..).next().map(|(_, p)| p) else {
            return Ok(());
        };
        while self.segments.last().is_some_and(|s| s.number > segment) {
            let gone = self.segments.pop().expect("a segment");
            self.file = None;
            self.backend.remove(gone.number)?;
        }
        self.backend.sync_dir()?;
        self.positions.split_off(&from);
        let active = self
            .segments
            .last_mut()
            .expect("the segment holding the entry");
        self.backend
            .io(segment, set_len(&self.backend, segment, offset))?;
        active.len = offset;
        active.size = offset;
        if self.file.is_none() {
            self.file = self.backend.open_for_writing(segment)?;
        }
        if let Some(file) = &self.file {
            self.backend.io(segment, file.sync_data())?;
        }
        Ok(())
    }

    /// Deletes the segments that hold nothing after entry `upto` (never the active one):
    /// those before the segment of the first entry kept.
    pub fn purge(&mut self, upto: u64) -> Result<()> {
        self.positions = self.positions.split_off(&(upto + 1));
        let first_kept = self.positions.values().next().map(|&(segment, _)| segment);
        while self.segments.len() > 1
            && first_kept.is_none_or(|kept| self.segments[0].number < kept)
        {
            let gone = self.segments.remove(0);
            self.backend.remove(gone.number)?;
        }
        Ok(())
    }

    /// Starts a new segment when there is none or the active one is full. The full one is
    /// flushed and synced first: only the active segment is synced after a batch.
    fn start_segment_if_due(&mut self) -> Result<()> {
        let next = match self.segments.last() {
            None => 1,
            Some(active) if active.len + self.pending.len() as u64 >= self.segment_bytes => {
                let next = active.number + 1;
                self.flush(true)?;
                next
            }
            Some(_) => return Ok(()),
        };
        self.file = self.backend.create(next)?;
        self.segments.push(Segment {
            number: next,
            len: 0,
            size: 0,
        });
        if let Some(committed) = self.committed.clone() {
            encode(&mut self.pending, KIND_COMMITTED, &committed);
        }
        Ok(())
    }

    /// The numbers of the segments there are: for tests.
    pub fn segment_numbers(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.number).collect()
    }
}

fn set_len(backend: &Backend, segment: u64, len: u64) -> std::io::Result<()> {
    match backend {
        Backend::Memory(segments) => {
            if let Some(bytes) = Backend::memory_segments(segments).get_mut(&segment) {
                bytes.truncate(len as usize);
            }
            Ok(())
        }
        Backend::Dir(dir) => OpenOptions::new()
            .write(true)
            .open(segment_path(dir, segment))?
            .set_len(len),
    }
}

fn encode(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len() + 1).expect("a record under 4 GiB");
    let mut crc = Crc32c::new();
    crc.update(&[kind]);
    crc.update(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finish().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

struct Record<'a> {
    kind: u8,
    payload: &'a [u8],
    /// Header and body.
    len: usize,
}

struct Bad {
    /// From where on the bytes must be zeros (or absent) for the bad record to be the last
    /// one written, cut short by a crash, rather than damage before other records.
    zeros_from: usize,
    what: String,
}

fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

fn parse(bytes: &[u8]) -> std::result::Result<Record<'_>, Bad> {
    if bytes.len() < HEADER {
        return Err(Bad {
            zeros_from: bytes.len(),
            what: "a record header cut short".into(),
        });
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD {
        return Err(Bad {
            zeros_from: HEADER,
            what: format!("a record length of {len}"),
        });
    }
    let end = HEADER + len as usize;
    if bytes.len() < end {
        return Err(Bad {
            zeros_from: bytes.len(),
            what: "a record cut short".into(),
        });
    }
    let body = &bytes[HEADER..end];
    let mut check = Crc32c::new();
    check.update(body);
    if check.finish() != crc {
        return Err(Bad {
            zeros_from: end,
            what: "a record whose checksum does not match".into(),
        });
    }
    Ok(Record {
        kind: body[0],
        payload: &body[1..],
        len: end,
    })
}

/// CRC-32C (Castagnoli), as iSCSI, ext4 and etcd's WAL use it.
struct Crc32c(u32);

impl Crc32c {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };

    fn new() -> Self {
        Self(!0)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = Self::TABLE[((self.0 ^ u32::from(b)) & 0xff) as usize] ^ (self.0 >> 8);
        }
    }

    fn finish(&self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc(bytes: &[u8]) -> u32 {
        let mut c = Crc32c::new();
        c.update(bytes);
        c.finish()
    }

    #[test]
    fn the_checksum_is_crc32c() {
        // The check value of CRC-32C (RFC 3720's polynomial).
        assert_eq!(crc(b"123456789"), 0xe306_9283);
        assert_eq!(crc(b""), 0);
    }

    fn reopen(backend: &Backend, segment_bytes: u64) -> (LogFiles, Loaded) {
        LogFiles::open(backend.clone(), segment_bytes).unwrap()
    }

    fn indexes(loaded: &Loaded) -> Vec<u64> {
        loaded.entries.iter().map(|(i, _)| *i).collect()
    }

    fn write(files: &mut LogFiles, range: std::ops::RangeInclusive<u64>) {
        for index in range {
            files
                .append_entry(index, format!("entry {index}").as_bytes())
                .unwrap();
        }
        files.flush(true).unwrap();
    }

    #[test]
    fn entries_and_the_committed_id_read_back_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::Dir(dir.path().join("log"));
        let (mut files, loaded) = reopen(&backend, 200);
        assert!(loaded.entries.is_empty() && files.segment_numbers().is_empty());
        write(&mut files, 1..=20);
        files.append_committed(b"c17").unwrap();
        files.flush(false).unwrap();
        assert!(
            files.segment_numbers().len() >= 3,
            "{:?}",
            files.segment_numbers()
        );
        drop(files);
        let (files, loaded) = reopen(&backend, 200);
        assert_eq!(indexes(&loaded), (1..=20).collect::<Vec<_>>());
        assert_eq!(loaded.entries[6].1, b"entry 7");
        assert_eq!(loaded.committed.as_deref(), Some(&b"c17"[..]));
        assert_eq!(files.segment_numbers().len(), backend.list().unwrap().len());
    }

    #[test]
    fn a_truncation_across_segments_leaves_the_prefix_and_appends_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        for backend in [Backend::memory(), Backend::Dir(dir.path().join("log"))] {
            let (mut files, _) = reopen(&backend, 200);
            write(&mut files, 1..=20);
            files.truncate(8).unwrap();
            write(&mut files, 8..=9);
            drop(files);
            let (mut files, loaded) = reopen(&backend, 200);
            assert_eq!(indexes(&loaded), (1..=9).collect::<Vec<_>>());
            // A truncation beyond the end removes nothing.
            files.truncate(30).unwrap();
            assert_eq!(indexes(&reopen(&backend, 200).1).len(), 9);
        }
    }

    #[test]
    fn a_purge_deletes_whole_segments_behind_it_only() {
        let backend = Backend::memory();
        let (mut files, _) = reopen(&backend, 200);
        write(&mut files, 1..=20);
        let before = files.segment_numbers();
        files.purge(12).unwrap();
        let after = files.segment_numbers();
        assert!(after.len() < before.len());
        let (_, loaded) = reopen(&backend, 200);
        let kept = indexes(&loaded);
        assert!(kept.contains(&13) && kept.ends_with(&[20]), "{kept:?}");
        assert!(kept[0] <= 13);
        // Everything after the purge point, in order, without a gap.
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1));
    }

    /// A log on disk of entries 1 to 3 in one segment, and that segment's path.
    fn three_entries_on_disk() -> (tempfile::TempDir, Backend, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::Dir(dir.path().join("log"));
        let (mut files, _) = reopen(&backend, SEGMENT_BYTES);
        write(&mut files, 1..=3);
        let path = segment_path(&dir.path().join("log"), 1);
        (dir, backend, path)
    }

    /// How many bytes of `segment` are records: the rest are the zeros written ahead.
    fn records_len(segment: &[u8]) -> usize {
        segment.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1)
    }

    #[test]
    fn a_segment_is_written_with_zeros_ahead_of_its_records() {
        let (_dir, _backend, path) = three_entries_on_disk();
        let bytes = std::fs::read(&path).unwrap();
        let records = records_len(&bytes);
        assert!(records > 0);
        assert!(
            bytes.len() as u64 >= records as u64 + ZEROS_AHEAD / 2,
            "{} bytes of records in a file of {}",
            records,
            bytes.len()
        );
    }

    #[test]
    fn a_record_cut_short_at_the_end_is_dropped_and_the_log_goes_on() {
        let (_dir, backend, path) = three_entries_on_disk();
        let full = std::fs::read(&path).unwrap();
        let records = records_len(&full);
        for cut in [records - 1, records - 9, records - 12] {
            // The file ends where the write stopped, or its zeros are still there after it.
            let mut zeroed = full.clone();
            zeroed[cut..].fill(0);
            for torn in [full[..cut].to_vec(), zeroed] {
                std::fs::write(&path, &torn).unwrap();
                let (mut files, loaded) = reopen(&backend, SEGMENT_BYTES);
                assert_eq!(indexes(&loaded), vec![1, 2], "cut at {cut}");
                write(&mut files, 3..=3);
                assert_eq!(indexes(&reopen(&backend, SEGMENT_BYTES).1), vec![1, 2, 3]);
                assert_eq!(std::fs::read(&path).unwrap()[..records], full[..records]);
            }
        }
    }

    #[test]
    fn a_damaged_record_before_others_is_refused_by_name() {
        let (_dir, backend, path) = three_entries_on_disk();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 3] ^= 0x40; // inside entry 1's payload
        std::fs::write(&path, &bytes).unwrap();
        let err = LogFiles::open(backend.clone(), SEGMENT_BYTES).unwrap_err();
        let said = err.to_string();
        assert!(
            said.contains("0000000000000001.seg") && said.contains("at byte 0"),
            "{said}"
        );
        assert!(said.contains("checksum"), "{said}");
    }
}
