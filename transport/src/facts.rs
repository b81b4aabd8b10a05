//! Facts production code states about what it did, typed, for whoever checks it: the
//! simulation's safety checkers watch them instead of reading log text, so rewording a log
//! line cannot switch a check off. Stating a fact costs one thread-local lookup when nobody
//! watches (always, outside the simulation).
//!
//! A simulation run is one thread: [`watch`] installs the run's watcher for that thread and
//! parallel runs do not see each other's facts.

use std::cell::RefCell;

use crate::protocol::{CommandId, Leadership};

/// Something that happened and that a safety property is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// Node `node` took up `leadership`: it started its supervision tree under it.
    LeadershipTaken { node: u64, leadership: Leadership },
    /// Host `host` passed command `id` through its fence and is carrying it out.
    CommandObeyed { host: String, id: CommandId },
    /// Host `host` finished operation `op` on VM `vm`, with this effect on its guest. When
    /// the op left the guest running, `id` is qvdc's id of the VM the domain belongs to (a
    /// name is reused once a VM is deleted, an id never); `None` otherwise.
    VmOperation {
        host: String,
        vm: String,
        op: &'static str,
        guest: Guest,
        id: Option<String>,
    },
    /// The simulation crashed `machine`: whatever ran there stopped.
    MachineCrashed { machine: String },
    /// The simulation killed `machine`'s host agent; its guests run on.
    AgentKilled { machine: String },
    /// Host `host`'s agent started.
    AgentStarted { host: String },
    /// Host `host`'s lease lapsed and it left VM `vm` running, as its isolation response
    /// says (keep).
    KeptOnIsolation { host: String, vm: String },
    /// Shared storage's lock refused to start VM `vm` on `host`: a guest of it still runs on
    /// `holder`.
    StorageLockRefused {
        host: String,
        vm: String,
        holder: String,
    },
    /// A guest of VM `vm` began to run on `host` (booted, or resumed at the end of a live
    /// migration); `elsewhere` are the hosts where a guest of it ran at that moment, as the
    /// simulated hypervisors say. Not empty: the VM runs twice.
    GuestRuns {
        host: String,
        vm: String,
        elsewhere: Vec<String>,
    },
    /// Node `node` built a snapshot of its state through log index `index`.
    SnapshotBuilt { node: u64, index: u64 },
    /// Node `node` replaced its state with a snapshot a leader sent, through `index`.
    SnapshotInstalled { node: u64, index: u64 },
    /// Node `node` dropped its log entries up to and including `through`.
    LogPurged { node: u64, through: u64 },
}

/// What a VM operation did to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// It runs now (started, rebooted).
    Runs,
    /// It no longer runs as this VM (stopped, undefined, given back to its host).
    Gone,
    /// Unchanged (defined, renamed, checked, adopted as it was).
    Unchanged,
}

type Watcher = Box<dyn FnMut(&Fact)>;

thread_local! {
    static WATCHER: RefCell<Option<Watcher>> = const { RefCell::new(None) };
}

/// States `fact` to this thread's watcher, if any.
pub fn state(fact: Fact) {
    WATCHER.with(|watcher| {
        if let Some(watcher) = watcher.borrow_mut().as_mut() {
            watcher(&fact);
        }
    });
}

/// Watches the facts stated on this thread until the returned guard is dropped. The watcher
/// must not state facts itself.
#[must_use = "the watcher stops when the guard is dropped"]
pub fn watch(watcher: impl FnMut(&Fact) + 'static) -> Watching {
    WATCHER.with(|slot| *slot.borrow_mut() = Some(Box::new(watcher)));
    Watching(())
}

/// Stops the watcher when dropped.
pub struct Watching(());

impl Drop for Watching {
    fn drop(&mut self) {
        WATCHER.with(|slot| slot.borrow_mut().take());
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;

    #[test]
    fn facts_reach_this_threads_watcher_only_while_it_watches() {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let crashed = |m: &str| Fact::MachineCrashed { machine: m.into() };
        state(crashed("before"));
        {
            let into = seen.clone();
            let _watching = watch(move |fact| into.borrow_mut().push(fact.clone()));
            state(crashed("during"));
            std::thread::spawn(move || state(crashed("elsewhere")))
                .join()
                .unwrap();
        }
        state(crashed("after"));
        assert_eq!(*seen.borrow(), [crashed("during")]);
    }
}
