//! The request log (the outcome of each recent operator request, by request id, kept in
//! generations so that an applied batch copies little) and the request key a write is bound
//! to. The log is persisted in snapshots as outcomes by id and ids oldest first.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hash::BuildHasherDefault,
    sync::Arc,
};

use qvdc_transport::bugs::{self, Bug};
use serde::{Deserialize, Serialize};

use super::{Command, DesiredState, Outcome, VmRecord, REQUESTS_REMEMBERED_MAX};

/// The outcomes of the most recent operator requests, by request id. It is replicated state,
/// so a retry sent to a new leader after a failover gets the first outcome too.
///
/// Every applied batch publishes a copy of the desired state, so whatever the next batch
/// changes is copied first. Ids arrive in no order, so in one search tree each recorded id
/// copied a path of nodes, and forgetting the oldest id another: two thirds of applying a
/// write. Here ids are kept in generations of [`REQUEST_GENERATION`], in the order they
/// were recorded: only the newest generation changes, so a batch copies at most that one,
/// and the oldest is forgotten from its front without being changed at all.
#[derive(Debug, Clone, Default)]
pub struct RequestLog {
    /// Oldest first. All but the newest are full and never change again.
    generations: VecDeque<Arc<Generation>>,
    /// How many ids at the front of the oldest generation are forgotten.
    forgotten: usize,
    /// Ids remembered.
    len: usize,
}

/// Ids recorded per generation: a batch copies up to this many outcomes, and a lookup asks
/// `REQUESTS_REMEMBERED_MAX / REQUEST_GENERATION + 1` generations at most.
pub(super) const REQUEST_GENERATION: usize = 512;

#[derive(Debug, Clone, Default)]
struct Generation {
    /// Each id's place in `order`, the digest of the request it was first used for, and
    /// that request's outcome.
    outcomes: HashMap<Arc<str>, (usize, RequestDigest, Outcome), BuildHasherDefault<Fnv1a>>,
    /// Ids in the order they were recorded.
    order: Vec<Arc<str>>,
}

/// FNV-1a: deterministic (the map's order is never observed, but nothing here depends on
/// the process) and fast on short keys. Request ids come from authenticated operators.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(FNV_OFFSET)
    }
}

impl std::hash::Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(super) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

pub(super) fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What a request id is bound to: the digest of the operator's request that first used it
/// (see [`qvdc_transport::codec::digest`]). A retry repeats the request and so its digest; the
/// same id sent with another request is refused instead of answered with the first one's
/// outcome, which would skip the new request's validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestDigest(pub [u8; 16]);

impl RequestDigest {
    pub fn of<T: Serialize>(request: &T) -> Self {
        Self(qvdc_transport::codec::digest(request))
    }
}

/// An operator's request id and the digest of the request it came with. A write's request
/// id is bound to the request as the operator sent it: a retry repeats it exactly, whichever
/// node it reaches and however the leader then places it.
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub id: String,
    pub digest: RequestDigest,
}

impl RequestKey {
    /// `command`, applied at most once for this request.
    pub fn once(self, command: Command) -> Command {
        Command::Once {
            request_id: self.id,
            digest: self.digest,
            command: Box::new(command),
        }
    }

    /// Whether this very request was applied before.
    pub fn applied_before(&self, state: &DesiredState) -> bool {
        state
            .requests
            .lookup(&self.id)
            .is_some_and(|(digest, _)| digest == self.digest)
    }

    /// The VM this very request made (created or adopted) when it was applied before: a
    /// VM's id is the id of the request that made it (see [`DesiredState::vm_to_make`]).
    pub fn vm_made_before<'a>(&self, state: &'a DesiredState) -> Option<&'a VmRecord> {
        if !self.applied_before(state) {
            return None;
        }
        state.vms.values().find(|vm| vm.spec.id == self.id)
    }
}

impl RequestLog {
    /// The outcome recorded for `request_id`, if it is remembered.
    pub fn get(&self, request_id: &str) -> Option<&Outcome> {
        self.lookup(request_id).map(|(_, outcome)| outcome)
    }

    /// The digest of the request `request_id` was recorded with, and its outcome.
    pub fn lookup(&self, request_id: &str) -> Option<(RequestDigest, &Outcome)> {
        if bugs::active(Bug::ForgetRequests) {
            return None;
        }
        self.generations
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, generation)| {
                let (place, digest, outcome) = generation.outcomes.get(request_id)?;
                (i > 0 || *place >= self.forgotten).then_some((*digest, outcome))
            })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The remembered ids and their outcomes, oldest first.
    fn iter(&self) -> impl Iterator<Item = (&Arc<str>, (&RequestDigest, &Outcome))> {
        self.generations
            .iter()
            .flat_map(|generation| {
                generation.order.iter().map(|id| {
                    let (_, digest, outcome) = &generation.outcomes[id];
                    (id, (digest, outcome))
                })
            })
            .skip(self.forgotten)
    }

    pub(super) fn record(&mut self, request_id: &str, digest: RequestDigest, outcome: Outcome) {
        if self
            .generations
            .back()
            .is_none_or(|newest| newest.order.len() == REQUEST_GENERATION)
        {
            self.generations.push_back(Arc::default());
        }
        let newest = Arc::make_mut(self.generations.back_mut().expect("one was just added"));
        let request_id: Arc<str> = request_id.into();
        let place = newest.order.len();
        let previous = newest
            .outcomes
            .insert(request_id.clone(), (place, digest, outcome));
        assert!(previous.is_none(), "a request id is recorded once");
        newest.order.push(request_id);
        self.len += 1;
        if self.len > REQUESTS_REMEMBERED_MAX {
            self.len -= 1;
            self.forgotten += 1;
            if self.forgotten == self.generations[0].order.len() {
                self.generations.pop_front();
                self.forgotten = 0;
            }
        }
    }
}

impl PartialEq for RequestLog {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for RequestLog {}

/// Encoded as the outcomes by id and the ids oldest first, whatever the generations.
#[derive(Serialize)]
struct RequestLogOut<'a> {
    outcomes: BTreeMap<&'a str, (&'a RequestDigest, &'a Outcome)>,
    order: Vec<&'a str>,
}

#[derive(Deserialize)]
struct RequestLogIn {
    outcomes: BTreeMap<String, (RequestDigest, Outcome)>,
    order: Vec<String>,
}

impl Serialize for RequestLog {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        RequestLogOut {
            outcomes: self.iter().map(|(id, outcome)| (&**id, outcome)).collect(),
            order: self.iter().map(|(id, _)| &**id).collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RequestLog {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let RequestLogIn {
            mut outcomes,
            order,
        } = RequestLogIn::deserialize(deserializer)?;
        if order.len() != outcomes.len() {
            return Err(serde::de::Error::custom(format!(
                "request log: {} ids in order but {} outcomes",
                order.len(),
                outcomes.len()
            )));
        }
        let mut log = RequestLog::default();
        for id in order {
            let (digest, outcome) = outcomes.remove(&id).ok_or_else(|| {
                serde::de::Error::custom(format!("request log: no outcome for {id:?}, or twice"))
            })?;
            log.record(&id, digest, outcome);
        }
        Ok(log)
    }
}
