//! The fence: the highest leadership (Raft term, then leader node) this host has obeyed.
//! Every command carries the leadership that issued it; one from a lower leadership comes
//! from a deposed leader and is refused. A new high is stored before it is trusted, so a
//! restarted agent cannot be fooled either.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use qvdc_transport::{
    bugs::{self, Bug},
    protocol::Leadership,
};

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("command from leadership {got} refused: this host has seen leadership {seen}, so its sender is a deposed leader")]
    Stale { got: Leadership, seen: Leadership },
    #[error("fencing file {path}: {reason}")]
    Storage { path: String, reason: String },
}

/// Where the fence survives a restart.
pub trait FenceStore: Send + Sync + 'static {
    fn load(&self) -> Result<Leadership, FenceError>;
    fn save(&self, leadership: Leadership) -> Result<(), FenceError>;
}

/// The fence file format this build writes and reads: 1 is `TERM NODE` (qvdc 0.1.0 on).
/// A later format starts with a `qvdc-fence FORMAT` line, which this build recognises and
/// refuses by name instead of misreading (docs/compatibility.md).
pub const FENCE_FORMAT: u32 = 1;
const FENCE_HEADER: &str = "qvdc-fence";

/// A small file (`TERM NODE`), replaced atomically: write, fsync, rename, fsync the directory.
#[derive(Debug)]
pub struct FileFence {
    path: PathBuf,
}

impl FileFence {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn error(&self, reason: impl std::fmt::Display) -> FenceError {
        FenceError::Storage {
            path: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Reads the leadership out of a fence file's text as [`FenceStore::load`] does: public
    /// for fuzzing and tests.
    pub fn parse(&self, text: &str) -> Result<Leadership, FenceError> {
        let mut words = text.split_whitespace();
        if words.next() == Some(FENCE_HEADER) {
            return Err(match words.next().and_then(|w| w.parse::<u32>().ok()) {
                Some(format) if format > FENCE_FORMAT => self.error(format!(
                    "fence format {format}, written by a newer qhost; this qhost {} reads fence \
                     format {FENCE_FORMAT}: run the newer qhost again",
                    env!("CARGO_PKG_VERSION")
                )),
                _ => self.error(format!("unknown fence format header in {text:?}")),
            });
        }
        let mut numbers = text.split_whitespace().map(str::parse::<u64>);
        match (numbers.next(), numbers.next(), numbers.next()) {
            (Some(Ok(term)), Some(Ok(node)), None) => Ok(Leadership { term, node }),
            _ => Err(self.error(format!("expected `TERM NODE`, found {text:?}"))),
        }
    }
}

impl FenceStore for FileFence {
    fn load(&self) -> Result<Leadership, FenceError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => self.parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Leadership::default()),
            Err(e) => Err(self.error(e)),
        }
    }

    fn save(&self, leadership: Leadership) -> Result<(), FenceError> {
        let temporary = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            writeln!(file, "{} {}", leadership.term, leadership.node)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| self.error(e))
    }
}

/// In memory, for the simulation: the harness keeps it outside the simulated machine, so it
/// survives a crash the way a file would.
#[derive(Debug, Default, Clone)]
pub struct MemoryFence(Arc<Mutex<Leadership>>);

impl FenceStore for MemoryFence {
    fn load(&self) -> Result<Leadership, FenceError> {
        Ok(*self.0.lock().expect("fence lock poisoned"))
    }
    fn save(&self, leadership: Leadership) -> Result<(), FenceError> {
        *self.0.lock().expect("fence lock poisoned") = leadership;
        Ok(())
    }
}

/// The fence itself: admits leaderships at least as high as any seen, storing each new high
/// before admitting it.
pub struct Fence {
    store: Box<dyn FenceStore>,
    seen: Mutex<Leadership>,
}

impl Fence {
    pub fn open(store: Box<dyn FenceStore>) -> Result<Self, FenceError> {
        let seen = store.load()?;
        Ok(Self {
            store,
            seen: Mutex::new(seen),
        })
    }

    pub fn seen(&self) -> Leadership {
        *self.seen.lock().expect("fence lock poisoned")
    }

    /// Admits `leadership` unless a higher one has been seen, recording it durably if new.
    pub fn admit(&self, leadership: Leadership) -> Result<(), FenceError> {
        let mut seen = self.seen.lock().expect("fence lock poisoned");
        if leadership < *seen && !bugs::active(Bug::SkipFenceCheck) {
            return Err(FenceError::Stale {
                got: leadership,
                seen: *seen,
            });
        }
        if leadership > *seen {
            self.store.save(leadership)?;
            *seen = leadership;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(term: u64, node: u64) -> Leadership {
        Leadership { term, node }
    }

    #[test]
    fn lower_leaderships_are_refused_and_the_highest_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fence");
        let fence = Fence::open(Box::new(FileFence::new(path.clone()))).unwrap();
        assert_eq!(fence.seen(), Leadership::default());
        fence.admit(l(3, 1)).unwrap();
        fence
            .admit(l(3, 1))
            .expect("the same leadership is admitted again");
        fence
            .admit(l(3, 2))
            .expect("a higher node took over within term 3");
        assert!(
            matches!(fence.admit(l(3, 1)), Err(FenceError::Stale { .. })),
            "the deposed one is refused"
        );
        assert!(matches!(
            fence.admit(l(2, 9)),
            Err(FenceError::Stale { .. })
        ));
        drop(fence);
        let reopened = Fence::open(Box::new(FileFence::new(path))).unwrap();
        assert_eq!(reopened.seen(), l(3, 2));
        assert!(reopened.admit(l(1, 5)).is_err());
    }

    /// A fence file that exists but cannot be read (here: a directory in its place, as a
    /// botched restore might leave) is an error: only a missing file is a fresh start.
    #[test]
    fn an_unreadable_fence_file_is_an_error_and_a_missing_one_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fence");
        let fresh = Fence::open(Box::new(FileFence::new(path.clone()))).unwrap();
        assert_eq!(fresh.seen(), Leadership::default());
        std::fs::create_dir(&path).unwrap();
        let err = Fence::open(Box::new(FileFence::new(path)))
            .err()
            .expect("refused");
        assert!(matches!(err, FenceError::Storage { .. }), "{err}");
    }

    /// The simulation's fence outlives the machine the way a file does.
    #[test]
    fn the_memory_fence_survives_reopening() {
        let store = MemoryFence::default();
        let fence = Fence::open(Box::new(store.clone())).unwrap();
        fence.admit(l(4, 2)).unwrap();
        drop(fence);
        let reopened = Fence::open(Box::new(store)).unwrap();
        assert_eq!(reopened.seen(), l(4, 2));
        assert!(reopened.admit(l(4, 1)).is_err());
    }

    /// Counts what reaches the disk.
    struct CountingFence(Arc<Mutex<Vec<Leadership>>>);

    impl FenceStore for CountingFence {
        fn load(&self) -> Result<Leadership, FenceError> {
            Ok(Leadership::default())
        }
        fn save(&self, leadership: Leadership) -> Result<(), FenceError> {
            self.0.lock().unwrap().push(leadership);
            Ok(())
        }
    }

    /// Every command carries its leadership: only a new high may cost a write and an fsync,
    /// not each command of the leadership already stored.
    #[test]
    fn only_a_new_leadership_is_written() {
        let saved = Arc::new(Mutex::new(Vec::new()));
        let fence = Fence::open(Box::new(CountingFence(saved.clone()))).unwrap();
        for leadership in [l(1, 1), l(1, 1), l(1, 1), l(2, 3), l(2, 3)] {
            fence.admit(leadership).unwrap();
        }
        assert_eq!(*saved.lock().unwrap(), [l(1, 1), l(2, 3)]);
    }

    #[test]
    fn a_corrupt_fence_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fence");
        for garbage in ["garbage", "7", "7 1 3"] {
            std::fs::write(&path, garbage).unwrap();
            let err = Fence::open(Box::new(FileFence::new(path.clone())))
                .err()
                .expect("refused");
            assert!(matches!(err, FenceError::Storage { .. }), "{garbage:?}");
        }
    }

    /// A fence file from a newer qhost is refused by its format, with both formats named,
    /// instead of being read as a leadership or as garbage.
    #[test]
    fn a_newer_fence_format_is_refused_by_name() {
        let fence = FileFence::new(PathBuf::from("/var/lib/qhost/fence"));
        let err = fence
            .parse("qvdc-fence 2\n9 3\n")
            .expect_err("a newer format is refused")
            .to_string();
        assert!(err.contains("fence format 2"), "{err}");
        assert!(
            err.contains(&format!("reads fence format {FENCE_FORMAT}")),
            "{err}"
        );
        assert!(err.contains("run the newer qhost"), "{err}");
        let err = fence
            .parse("qvdc-fence x\n")
            .expect_err("a header without a format is refused")
            .to_string();
        assert!(err.contains("unknown fence format header"), "{err}");
        assert_eq!(fence.parse("9 3\n").unwrap(), l(9, 3), "format 1 is read");
    }

    /// Fence files as qvdc 0.1.0 wrote them (fixtures/, docs/compatibility.md) are read.
    #[test]
    fn v0_1_0_fence_files_are_read() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/v0.1.0/wire/fence_file");
        let fence = FileFence::new(dir.join("fence"));
        let read = |name: &str| fence.parse(&std::fs::read_to_string(dir.join(name)).unwrap());
        assert_eq!(read("written").unwrap(), l(7, 2));
        assert_eq!(read("zero").unwrap(), l(0, 0));
        assert_eq!(read("largest").unwrap(), l(u64::MAX, u64::MAX));
        assert_eq!(read("spaced").unwrap(), l(12, 4));
        assert_eq!(read("no-newline").unwrap(), l(3, 1));
    }
}
