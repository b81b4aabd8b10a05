//! The fencing term: the highest leader term this host has seen. Every command carries its
//! leader's term; one from a lower term comes from a deposed leader and is refused. The
//! term is stored before it is trusted, so a restarted agent cannot be fooled either.

use std::{
    io::Write,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("command from term {term} refused: this host has seen term {seen}, so its sender is a deposed leader")]
    Stale { term: u64, seen: u64 },
    #[error("fencing term file {path}: {reason}")]
    Storage { path: String, reason: String },
}

/// Where the fencing term survives a restart.
pub trait FenceStore: Send + Sync + 'static {
    fn load(&self) -> Result<u64, FenceError>;
    fn save(&self, term: u64) -> Result<(), FenceError>;
}

/// A small file, replaced atomically (write, fsync, rename, fsync the directory).
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
}

impl FenceStore for FileFence {
    fn load(&self) -> Result<u64, FenceError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|e| self.error(format!("not a term: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(self.error(e)),
        }
    }

    fn save(&self, term: u64) -> Result<(), FenceError> {
        let temporary = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            writeln!(file, "{term}")?;
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
pub struct MemoryFence(Arc<AtomicU64>);

impl FenceStore for MemoryFence {
    fn load(&self) -> Result<u64, FenceError> {
        Ok(self.0.load(Ordering::SeqCst))
    }
    fn save(&self, term: u64) -> Result<(), FenceError> {
        self.0.store(term, Ordering::SeqCst);
        Ok(())
    }
}

/// The fence itself: admits terms at least as high as any seen, storing each new high first.
pub struct Fence {
    store: Box<dyn FenceStore>,
    seen: Mutex<u64>,
}

impl Fence {
    pub fn open(store: Box<dyn FenceStore>) -> Result<Self, FenceError> {
        let seen = store.load()?;
        Ok(Self {
            store,
            seen: Mutex::new(seen),
        })
    }

    pub fn seen(&self) -> u64 {
        *self.seen.lock().expect("fence lock poisoned")
    }

    /// Admits `term` if no higher term has been seen, recording it durably if it is new.
    pub fn admit(&self, term: u64) -> Result<(), FenceError> {
        let mut seen = self.seen.lock().expect("fence lock poisoned");
        if term < *seen {
            return Err(FenceError::Stale { term, seen: *seen });
        }
        if term > *seen {
            self.store.save(term)?;
            *seen = term;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_terms_are_refused_and_the_highest_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fence-term");
        let fence = Fence::open(Box::new(FileFence::new(path.clone()))).unwrap();
        assert_eq!(fence.seen(), 0);
        fence.admit(3).unwrap();
        fence.admit(3).expect("the same term is admitted again");
        assert!(matches!(
            fence.admit(2),
            Err(FenceError::Stale { term: 2, seen: 3 })
        ));
        drop(fence);
        let reopened = Fence::open(Box::new(FileFence::new(path))).unwrap();
        assert_eq!(reopened.seen(), 3);
        assert!(reopened.admit(1).is_err());
    }

    #[test]
    fn a_corrupt_fence_file_is_an_error_not_term_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fence-term");
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            Fence::open(Box::new(FileFence::new(path))),
            Err(FenceError::Storage { .. })
        ));
    }
}
