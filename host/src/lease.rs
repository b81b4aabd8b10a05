//! The host's lease (ADR 23). A heartbeat answered by a leader a quorum confirmed renews it
//! for [`HOST_LEASE_MS`] from when the heartbeat was *sent* (the leader heard it no
//! earlier). Once it lapses, the host stops its HA VMs by their isolation response and
//! starts no guest until it is renewed: the leader restarts them elsewhere only after
//! [`HOST_LOST_AFTER_MS`] of silence, which leaves the isolation response time to finish.
//!
//! The lease and the fence list are kept in a [`LeaseStore`] outside the agent's memory, so
//! an agent that restarts (while its host is isolated, say) knows when its lease lapses and
//! what to stop then, instead of starting with a fresh lease of its own making.
//!
//! [`HOST_LOST_AFTER_MS`]: qvdc_transport::protocol::HOST_LOST_AFTER_MS

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use qvdc_transport::protocol::{FencedVm, IsolationResponse, HOST_LEASE_MS};
use tokio::time::Instant;
use tracing::warn;

/// Where the lease survives the agent: its last renewal and the fence list.
pub trait LeaseStore: Send + Sync + 'static {
    /// The lease as last saved, if it is from this boot of the host.
    fn load(&self) -> Option<(Instant, Vec<FencedVm>)>;
    fn save(&self, renewed_at: Instant, fenced: &[FencedVm]);
    /// Drops the saved lease: none holds.
    fn forget_lease(&self);
}

/// The lease in memory, outside the agent: for the simulation (where it lives outside the
/// simulated machine, as a file would) and tests. With a clock shared by every run of the
/// agent (the simulation's elapsed time: a restarted machine's runtime starts a clock of its
/// own), the renewal is kept on it; without, as an instant of the one runtime.
#[derive(Debug, Default, Clone)]
pub struct MemoryLease {
    slot: Arc<Mutex<Option<SavedLease>>>,
    clock: Option<fn() -> Option<Duration>>,
}

/// A saved renewal and the fence list with it.
type SavedLease = (Saved, Vec<FencedVm>);

#[derive(Debug, Clone, Copy)]
enum Saved {
    At(Instant),
    OnClock(Duration),
}

impl MemoryLease {
    /// A lease kept on `clock`, which every run of the agent reads alike.
    pub fn on_clock(clock: fn() -> Option<Duration>) -> Self {
        Self {
            slot: Arc::default(),
            clock: Some(clock),
        }
    }

    /// Forgets the lease, as a host's new boot does.
    pub fn forget(&self) {
        *self.slot.lock().expect("lease store poisoned") = None;
    }
}

impl LeaseStore for MemoryLease {
    fn load(&self) -> Option<(Instant, Vec<FencedVm>)> {
        let (saved, fenced) = self.slot.lock().expect("lease store poisoned").clone()?;
        let at = match saved {
            Saved::At(at) => at,
            Saved::OnClock(renewed) => {
                let ago = (self.clock?)()?.saturating_sub(renewed);
                Instant::now().checked_sub(ago)?
            }
        };
        Some((at, fenced))
    }
    fn save(&self, renewed_at: Instant, fenced: &[FencedVm]) {
        let saved = match self.clock.and_then(|clock| clock()) {
            Some(now) => Saved::OnClock(
                now.saturating_sub(Instant::now().saturating_duration_since(renewed_at)),
            ),
            None => Saved::At(renewed_at),
        };
        *self.slot.lock().expect("lease store poisoned") = Some((saved, fenced.to_vec()));
    }
    fn forget_lease(&self) {
        self.forget();
    }
}

/// The lease in a small file (`<data-dir>/lease`), timed by the host's boot clock
/// (`CLOCK_BOOTTIME`, shared by every process of one boot) and stamped with the boot's id,
/// so a lease from before a reboot (whose guests died with it) is ignored. Written on every
/// renewal without fsync: the page cache outlives the agent, and a crash of the host ends
/// its guests anyway.
#[derive(Debug)]
pub struct FileLease {
    path: PathBuf,
}

const LEASE_HEADER: &str = "qvdc-lease 1";

/// A lease that lapsed a full lease ago: what an agent takes when it cannot tell when its
/// lease was last renewed but knows it had one.
fn lapsed_long_ago(fenced: Vec<FencedVm>) -> (Instant, Vec<FencedVm>) {
    let lease = Duration::from_millis(HOST_LEASE_MS);
    let now = Instant::now();
    (now.checked_sub(lease * 2).unwrap_or(now), fenced)
}

impl FileLease {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn boot_id() -> Option<String> {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Some(id.trim().to_owned())
    }

    fn boot_clock() -> Option<Duration> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
        Some(Duration::from(now))
    }

    fn parse(text: &str) -> Option<(String, Duration, Vec<FencedVm>)> {
        let mut lines = text.lines();
        if lines.next()? != LEASE_HEADER {
            return None;
        }
        let boot = lines.next()?.strip_prefix("boot ")?.to_owned();
        let ms: u64 = lines.next()?.strip_prefix("renewed-ms ")?.parse().ok()?;
        let mut fenced = Vec::new();
        for line in lines {
            let (id, response) = line.strip_prefix("fence ")?.split_once(' ')?;
            let response = match response {
                "power-off" => IsolationResponse::PowerOff,
                "shut-down" => IsolationResponse::ShutDown,
                "keep" => IsolationResponse::Keep,
                _ => return None,
            };
            fenced.push(FencedVm {
                id: id.to_owned(),
                response,
            });
        }
        Some((boot, Duration::from_millis(ms), fenced))
    }
}

impl LeaseStore for FileLease {
    fn load(&self) -> Option<(Instant, Vec<FencedVm>)> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "unreadable lease file; taking the lease as lapsed");
                return Some(lapsed_long_ago(Vec::new()));
            }
        };
        let Some((boot, renewed, fenced)) = Self::parse(&text) else {
            warn!(path = %self.path.display(), "unreadable lease file; taking the lease as lapsed");
            return Some(lapsed_long_ago(Vec::new()));
        };
        if Self::boot_id().is_some_and(|now| now != boot) {
            return None; // from before a reboot: its guests are gone
        }
        // A clock that cannot place the renewal (unreadable, or the host slept since):
        // the lease is taken as lapsed, never as fresh.
        let at = Self::boot_clock()
            .map(|now| now.saturating_sub(renewed))
            .and_then(|ago| Instant::now().checked_sub(ago));
        Some(match at {
            Some(at) => (at, fenced),
            None => lapsed_long_ago(fenced),
        })
    }

    fn save(&self, renewed_at: Instant, fenced: &[FencedVm]) {
        let (Some(boot), Some(now)) = (Self::boot_id(), Self::boot_clock()) else {
            return;
        };
        let renewed = now.saturating_sub(Instant::now().saturating_duration_since(renewed_at));
        let mut text = format!(
            "{LEASE_HEADER}\nboot {boot}\nrenewed-ms {}\n",
            renewed.as_millis()
        );
        for f in fenced {
            text.push_str(&format!("fence {} {}\n", f.id, f.response));
        }
        let temporary = self.path.with_extension("new");
        let written =
            std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(e) = written {
            warn!(path = %self.path.display(), error = %e, "cannot save the lease");
        }
    }

    fn forget_lease(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %self.path.display(), error = %e, "cannot remove the lease"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// When the last heartbeat a lease answered was sent (by this agent or, as its store
    /// says, an earlier one on this boot); `None` if none ever was (then nothing is fenced:
    /// nothing was ever restarted elsewhere while this host ran it either).
    renewed_at: Option<Instant>,
    /// The HA VMs to stop when the lease lapses, as the leader last said.
    fenced: Vec<FencedVm>,
    /// The isolation response already ran for the current lapse.
    responded: bool,
}

pub struct HostLease {
    state: Mutex<State>,
    store: Box<dyn LeaseStore>,
}

impl std::fmt::Debug for HostLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLease")
            .field("state", &self.state)
            .finish()
    }
}

impl Default for HostLease {
    fn default() -> Self {
        Self::new(Box::new(MemoryLease::default()))
    }
}

impl HostLease {
    /// The lease as `store` kept it from an earlier run of the agent, if any.
    pub(crate) fn new(store: Box<dyn LeaseStore>) -> Self {
        let state = match store.load() {
            Some((renewed_at, fenced)) => State {
                renewed_at: Some(renewed_at),
                fenced,
                responded: false,
            },
            None => State::default(),
        };
        Self {
            state: Mutex::new(state),
            store,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("lease lock poisoned")
    }

    /// A heartbeat sent at `sent_at` was answered with a lease; `fenced` is the new fence
    /// list, if it changed.
    pub(crate) fn renew(&self, sent_at: Instant, fenced: Option<Vec<FencedVm>>) {
        let mut state = self.state();
        if state.renewed_at.is_none_or(|at| at < sent_at) {
            state.renewed_at = Some(sent_at);
        }
        if let Some(fenced) = fenced {
            state.fenced = fenced;
        }
        if !self.lapsed_at(&state, Instant::now()) {
            state.responded = false;
        }
        if let Some(at) = state.renewed_at {
            self.store.save(at, &state.fenced);
        }
    }

    /// A leader that grants no leases (an older release) answered: it restarts nothing
    /// elsewhere, so nothing is fenced until a lease is granted again.
    pub(crate) fn disarm(&self) {
        let mut state = self.state();
        if state.renewed_at.take().is_some() {
            self.store.forget_lease();
        }
    }

    fn lapsed_at(&self, state: &State, now: Instant) -> bool {
        state
            .renewed_at
            .is_some_and(|at| now >= at + Duration::from_millis(HOST_LEASE_MS))
    }

    /// Whether the lease has lapsed: the host starts no guest until it is renewed.
    pub(crate) fn lapsed(&self, now: Instant) -> bool {
        self.lapsed_at(&self.state(), now)
    }

    /// While the lease is lapsed, the fence list, and whether this is the first time this
    /// lapse it is asked for.
    pub(crate) fn respond(&self, now: Instant) -> Option<(Vec<FencedVm>, bool)> {
        let mut state = self.state();
        if !self.lapsed_at(&state, now) {
            return None;
        }
        let first = !std::mem::replace(&mut state.responded, true);
        Some((state.fenced.clone(), first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Vec<FencedVm> {
        vec![FencedVm {
            id: "vm-1".into(),
            response: IsolationResponse::PowerOff,
        }]
    }

    #[tokio::test(start_paused = true)]
    async fn a_lapsed_lease_responds_once_and_a_renewal_rearms_it() {
        let lease = HostLease::default();
        let t0 = Instant::now();
        assert!(!lease.lapsed(t0 + Duration::from_secs(60)), "never renewed");
        lease.renew(t0, Some(web()));
        let end = t0 + Duration::from_millis(HOST_LEASE_MS);
        assert!(lease.respond(end - Duration::from_millis(1)).is_none());
        assert!(lease.lapsed(end));
        assert_eq!(lease.respond(end), Some((web(), true)));
        assert_eq!(
            lease.respond(end),
            Some((web(), false)),
            "every check while lapsed"
        );
        tokio::time::advance(Duration::from_millis(HOST_LEASE_MS + 1)).await;
        lease.renew(Instant::now(), None);
        assert!(!lease.lapsed(Instant::now()));
        let later = Instant::now() + Duration::from_millis(HOST_LEASE_MS);
        assert_eq!(
            lease.respond(later),
            Some((web(), true)),
            "the list is kept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_agent_keeps_the_lease_it_had_and_its_fence_list() {
        let store = MemoryLease::default();
        let t0 = Instant::now();
        HostLease::new(Box::new(store.clone())).renew(t0, Some(web()));
        // The agent dies and starts again 5 s later, cut off: its lease still lapses 8 s
        // after the last renewal, not 8 s after it started.
        tokio::time::advance(Duration::from_secs(5)).await;
        let again = HostLease::new(Box::new(store));
        let end = t0 + Duration::from_millis(HOST_LEASE_MS);
        assert!(!again.lapsed(end - Duration::from_millis(1)));
        assert_eq!(again.respond(end), Some((web(), true)));
    }

    #[test]
    fn the_lease_file_reads_back_what_was_saved_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease");
        let fenced = vec![
            FencedVm {
                id: "vm-1".into(),
                response: IsolationResponse::ShutDown,
            },
            FencedVm {
                id: "vm-2".into(),
                response: IsolationResponse::Keep,
            },
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let file = FileLease::new(path.clone());
            let renewed = Instant::now() - Duration::from_secs(3);
            file.save(renewed, &fenced);
            let (loaded, back) = file.load().expect("saved on this boot");
            assert_eq!(back, fenced);
            let drift = loaded.max(renewed) - loaded.min(renewed);
            assert!(drift < Duration::from_millis(50), "{drift:?}");
            std::fs::write(&path, "qvdc-lease 1\nboot x\nrenewed-ms 1\n").unwrap();
            assert!(file.load().is_none(), "another boot's lease");
            std::fs::write(&path, "garbage").unwrap();
            let (at, fenced) = file
                .load()
                .expect("a lease of unknown age is taken as lapsed");
            assert!(at + Duration::from_millis(HOST_LEASE_MS) <= Instant::now());
            assert!(fenced.is_empty(), "every qvdc guest is then powered off");
            std::fs::remove_file(&path).unwrap();
            assert!(file.load().is_none(), "no file: no lease was ever held");
        });
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_to_an_older_heartbeat_does_not_shorten_the_lease() {
        let lease = HostLease::default();
        let t0 = Instant::now();
        lease.renew(t0 + Duration::from_secs(2), None);
        lease.renew(t0, None);
        let end = t0 + Duration::from_secs(2) + Duration::from_millis(HOST_LEASE_MS);
        assert!(!lease.lapsed(end - Duration::from_millis(1)));
    }
}
