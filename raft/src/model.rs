//! The desired-state model: what should exist in the cluster. Commands are validated against
//! the current state before they are proposed, and applied deterministically once committed.
//!
//! Everything here is plain data and pure functions; the Raft state machine (`store`) holds one
//! `DesiredState` and feeds it committed commands.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    hash::BuildHasherDefault,
    sync::Arc,
};

pub use imbl::{ordmap::DiffItem, OrdMap, OrdSet};

use qvdc_transport::protocol::{
    DesiredPower, Inventory, NetworkSpec, PoolScope, PoolSource, PoolSpec, RevokedCertificate,
    VmSpec, VolumeFormat,
};
use serde::{Deserialize, Serialize};

pub use qvdc_transport::limits::{
    NAME_BYTES_MAX, PATH_BYTES_MAX, VM_DISKS_MAX, VM_MEMORY_BYTES_MIN, VM_NICS_MAX, VM_VCPUS_MAX,
    VOLUME_BYTES_MAX,
};

pub const POOL_HOSTS_MAX: usize = 1024;
/// Operator requests whose results are remembered for retries; older ones are forgotten.
pub const REQUESTS_REMEMBERED_MAX: usize = 10_000;
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Objects of each kind the desired state may hold. Every node holds the whole state in
/// memory and in every snapshot: these keep both bounded (a full state is a few hundred
/// MiB at most) while leaving room far beyond today's largest clusters.
pub const HOSTS_MAX: usize = 16_384;
pub const POOLS_MAX: usize = 100_000;
pub const VMS_MAX: usize = 100_000;
pub const NETWORKS_MAX: usize = 10_000;
pub const VOLUMES_PER_POOL_MAX: usize = 100_000;
/// Certificates the deny list may hold. Certificates expire (a year by default), so a
/// cluster that needs more has issued them for too long.
pub const REVOKED_MAX: usize = 100_000;
/// The longest certificate name a revocation records (an X.520 common name is at most 64
/// characters of up to 4 bytes).
pub const REVOKED_NAME_BYTES_MAX: usize = 256;
/// The largest command one operator request or host registration may propose, encoded. A
/// log entry batches commands up to [`BATCH_BYTES_MAX`], and one replication message
/// carries up to `ENTRIES_PER_APPEND_MAX` entries, which must fit the transport's frame.
pub const COMMAND_BYTES_MAX: usize = 192 * 1024;
/// The largest batch of commands in one log entry, encoded (a lone command may reach
/// [`COMMAND_BYTES_MAX`]).
pub const BATCH_BYTES_MAX: usize = 192 * 1024;
const _: () = assert!(
    crate::ENTRIES_PER_APPEND_MAX as usize * BATCH_BYTES_MAX
        <= qvdc_transport::codec::FRAME_BYTES_MAX * 3 / 4,
    "a replication message of full entries fits a frame, with room for its envelope"
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    pub inventory: Inventory,
    /// In maintenance, a host keeps what it runs but gets no new VMs.
    pub maintenance: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub spec: PoolSpec,
    pub hosts: BTreeSet<String>,
    /// Volume files qvdc created in the pool, by name. A pool is one storage seen by all its
    /// hosts, so a volume exists once, created through any healthy host.
    pub volumes: BTreeMap<String, VolumeRecord>,
}

/// A file an adopted domain uses, recorded as a volume of `pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptedVolume {
    pub pool: String,
    pub name: String,
    pub record: VolumeRecord,
}

impl PoolRecord {
    /// Whether a volume of this pool may live on `host`: a local pool's volume on one of its
    /// hosts, a shared pool's on none in particular.
    pub fn check_volume_host(&self, host: Option<&str>) -> Result<(), ValidationError> {
        let pool = &self.spec.name;
        let bad = |m: String| Err(ValidationError::BadVolume(m));
        let hosts = || self.hosts.iter().cloned().collect::<Vec<_>>().join(", ");
        match (self.spec.scope, host) {
            (PoolScope::Shared, None) => Ok(()),
            (PoolScope::Shared, Some(host)) => bad(format!(
                "pool {pool} is shared: its hosts see the same volumes, so a volume is on no host in particular (drop --host {host})"
            )),
            (PoolScope::Local, None) => bad(format!(
                "pool {pool} is local: name the host whose storage holds the volume with --host, one of {}",
                hosts()
            )),
            (PoolScope::Local, Some(host)) if !self.hosts.contains(host) => bad(format!(
                "pool {pool} is not assigned to host {host}; name one of {}",
                hosts()
            )),
            (PoolScope::Local, Some(_)) => Ok(()),
        }
    }

    /// The volumes of this pool that live on `host` (a local pool's), in name order.
    pub fn volumes_on<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.volumes
            .iter()
            .filter(move |(_, v)| v.host.as_deref() == Some(host))
            .map(|(name, _)| name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub format: VolumeFormat,
    pub size_bytes: u64,
    /// In a local pool, the host whose storage holds it; `None` in a shared pool.
    pub host: Option<String>,
}

/// A vSwitch and the hosts that carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub spec: NetworkSpec,
    pub hosts: BTreeSet<String>,
}

/// A VM and the placement decision for it: which host runs it, and whether it should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub spec: VmSpec,
    pub host: String,
    pub power: DesiredPower,
    /// For a VM adopted from its host: the libvirt UUID of the domain it was. That domain,
    /// found on the VM's host under the VM's name without qvdc's metadata, is this VM, and
    /// its host is told to record the VM's id in it.
    pub adopted: Option<String>,
    /// The VM is being given back to its host: qvdc no longer acts on its domain, and
    /// removes the record once the host has forgotten it (see [`Command::ReleaseVm`]).
    pub releasing: bool,
}

/// Everything the control plane has decided. Maps are ordered so that every iteration over
/// them is the same on every node and in every simulation run.
///
/// The maps are persistent (structurally shared) B-trees: cloning the whole state is O(1)
/// and a change copies only the path to what changed. The state machine publishes a clone
/// after every applied batch and the leader's supervisors diff consecutive versions, so a
/// write costs in proportion to what it changed, not to how much exists (ADR 10).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    #[serde(deserialize_with = "grown::ord_map")]
    pub hosts: OrdMap<String, HostRecord>,
    #[serde(deserialize_with = "grown::ord_map")]
    pub pools: OrdMap<String, Arc<PoolRecord>>,
    /// VMs by name.
    #[serde(deserialize_with = "grown::ord_map")]
    pub vms: OrdMap<String, VmRecord>,
    #[serde(deserialize_with = "grown::ord_map")]
    pub networks: OrdMap<String, NetworkRecord>,
    /// The deny list: certificates no node accepts, by serial.
    #[serde(deserialize_with = "grown::ord_map")]
    pub revoked: OrdMap<String, RevokedCertificate>,
    pub requests: RequestLog,
    /// What is assigned to each host, so per-host lookups (every heartbeat) do not scan every
    /// object. Kept in step by `apply`; see `index_matches_a_scan` in the tests.
    #[serde(deserialize_with = "grown::ord_map")]
    by_host: OrdMap<String, HostIndex>,
}

/// The names of what is assigned to one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct HostIndex {
    #[serde(deserialize_with = "grown::ord_set")]
    pools: OrdSet<String>,
    #[serde(deserialize_with = "grown::ord_set")]
    vms: OrdSet<String>,
    #[serde(deserialize_with = "grown::ord_set")]
    networks: OrdSet<String>,
}

/// Decoding of the persistent maps that grows them as entries arrive. imbl's own
/// `Deserialize` reserves room for as many entries as the input claims before reading any:
/// nine bytes of a snapshot claiming 2^32 hosts asked for an 858 GB allocation (found by
/// the `snapshot` fuzz target). Same encoding, so nothing stored changes.
mod grown {
    use std::marker::PhantomData;

    use imbl::{OrdMap, OrdSet};
    use serde::{
        de::{MapAccess, SeqAccess, Visitor},
        Deserialize, Deserializer,
    };

    struct MapVisitor<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = OrdMap<K, V>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = OrdMap::new();
            while let Some((key, value)) = access.next_entry()? {
                map.insert(key, value);
            }
            Ok(map)
        }
    }

    pub(super) fn ord_map<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }

    struct SetVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de> + Ord + Clone> Visitor<'de> for SetVisitor<T> {
        type Value = OrdSet<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a set")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut set = OrdSet::new();
            while let Some(item) = access.next_element()? {
                set.insert(item);
            }
            Ok(set)
        }
    }

    pub(super) fn ord_set<'de, D, T>(deserializer: D) -> Result<OrdSet<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Ord + Clone,
    {
        deserializer.deserialize_seq(SetVisitor(PhantomData))
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Pool,
    Vm,
    Network,
}

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
const REQUEST_GENERATION: usize = 512;

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

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
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

    fn record(&mut self, request_id: &str, digest: RequestDigest, outcome: Outcome) {
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

/// A change to desired state; the application data of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A host registered or re-registered with (possibly new) inventory.
    RegisterHost {
        host_id: String,
        inventory: Inventory,
    },
    /// An operator's request: applied at most once per request id; a retry gets the
    /// outcome of the first application.
    Once {
        request_id: String,
        /// The digest of the operator's request, which the id is bound to.
        digest: RequestDigest,
        #[serde(deserialize_with = "qvdc_transport::codec::nested")]
        command: Box<Command>,
    },
    CreatePool {
        spec: PoolSpec,
        hosts: Vec<String>,
    },
    /// A VM placed on `host`.
    CreateVm {
        spec: VmSpec,
        host: String,
        power: DesiredPower,
    },
    SetVmPower {
        name: String,
        power: DesiredPower,
    },
    DeleteVm {
        name: String,
    },
    AssignPool {
        pool: String,
        hosts: Vec<String>,
    },
    /// The hosts unmount the pool; its data stays.
    UnassignPool {
        pool: String,
        hosts: Vec<String>,
    },
    /// Every host unmounts the pool; its data and volume files stay on the storage.
    DeletePool {
        pool: String,
    },
    /// In a local pool `host` is the host whose storage holds it; in a shared pool `None`.
    CreateVolume {
        pool: String,
        name: String,
        format: VolumeFormat,
        size_bytes: u64,
        host: Option<String>,
    },
    /// Grows a volume.
    ResizeVolume {
        pool: String,
        name: String,
        size_bytes: u64,
    },
    DeleteVolume {
        pool: String,
        name: String,
    },
    CreateNetwork {
        spec: NetworkSpec,
        hosts: Vec<String>,
    },
    /// Puts a host in or out of maintenance.
    SetMaintenance {
        host: String,
        on: bool,
    },
    AssignNetwork {
        network: String,
        hosts: Vec<String>,
    },
    UnassignNetwork {
        network: String,
        hosts: Vec<String>,
    },
    DeleteNetwork {
        network: String,
    },
    /// Puts a certificate on the deny list.
    RevokeCertificate(RevokedCertificate),
    /// Commands proposed at about the same time, carried by one log entry and applied in
    /// order, each on its own: concurrent writes share one append, one fsync and one
    /// replication round instead of paying for each. Shared, because openraft clones an
    /// entry for every follower it replicates to and for applying it.
    Batch(#[serde(deserialize_with = "qvdc_transport::codec::nested")] Arc<[Command]>),
    /// A domain its host reported without qvdc's metadata becomes VM `spec` on `host`, and
    /// the files its disks are become `volumes` (those not yet volumes). The domain is
    /// named by its libvirt UUID, so no other domain of that name is ever taken for it.
    AdoptVm {
        spec: VmSpec,
        host: String,
        power: DesiredPower,
        uuid: String,
        volumes: Vec<AdoptedVolume>,
    },
    /// First step of giving a VM back to its host: from now on qvdc leaves its domain alone.
    /// The host then forgets the VM, and [`Command::ForgetVm`] removes the record.
    ReleaseVm {
        name: String,
    },
    /// Removes a VM being released, and the records of its volumes no other VM uses: its
    /// host has forgotten them, and the guest runs on, unmanaged.
    ForgetVm {
        name: String,
        /// The volumes its host let go of: exactly those the VM leaves with now, or the
        /// command is refused (another VM took or dropped one meanwhile) and the release is
        /// redone.
        volumes: Vec<qvdc_transport::protocol::VmDisk>,
    },
}

/// What applying a command did; the application response of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Applied,
    /// The command changed nothing (it was already in effect).
    Unchanged,
    Rejected(ValidationError),
    /// The outcome of each command of a [`Command::Batch`], in order.
    Batch(Vec<Outcome>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ValidationError {
    #[error("{what} name must not be empty")]
    EmptyName { what: String },
    #[error("{what} name {name:?} is longer than {NAME_BYTES_MAX} bytes")]
    NameTooLong { what: String, name: String },
    #[error("{what} name {name:?} may only contain letters, digits, '.', '_' and '-', and must not start with '.' or '-'")]
    BadName { what: String, name: String },
    #[error("pool {0:?} already exists; pick another name or delete the existing pool first")]
    PoolExists(String),
    #[error("a pool needs at least one host; pass --hosts h1,h2,...")]
    NoHosts,
    #[error("host {0:?} is listed twice")]
    DuplicateHost(String),
    #[error("a pool may be assigned to at most {POOL_HOSTS_MAX} hosts")]
    TooManyHosts,
    #[error("unknown host(s): {}; `qvctl host list` shows the registered hosts", .0.join(", "))]
    UnknownHosts(Vec<String>),
    #[error("pool path {0:?} must be an absolute path")]
    RelativePath(String),
    #[error("pool path is longer than {PATH_BYTES_MAX} bytes")]
    PathTooLong,
    #[error("{0}")]
    BadSource(String),
    #[error("VM {0:?} already exists; pick another name or delete the existing VM first")]
    VmExists(String),
    #[error("no VM named {0:?}; `qvctl vm list` shows the VMs")]
    NoSuchVm(String),
    #[error("{0}")]
    BadVm(String),
    #[error("no pool named {0:?}; `qvctl pool list` shows the pools")]
    NoSuchPool(String),
    #[error("{0}")]
    InUse(String),
    #[error("volume {pool}/{name} already exists; pick another name or delete it first")]
    VolumeExists { pool: String, name: String },
    #[error("no volume {name:?} in pool {pool}; `qvctl volume list {pool}` shows its volumes")]
    NoSuchVolume { pool: String, name: String },
    #[error("{0}")]
    BadVolume(String),
    #[error("network {0:?} already exists; pick another name or delete it first")]
    NetworkExists(String),
    #[error("no network named {0:?}; `qvctl network list` shows the networks")]
    NoSuchNetwork(String),
    #[error("{0}")]
    BadNetwork(String),
    #[error("request id must be 1 to {REQUEST_ID_BYTES_MAX} bytes")]
    BadRequestId,
    #[error("{0}")]
    BadCertificate(String),
    #[error("request id {0:?} was already used for a different request; a retry must repeat its request exactly: use a new request id (or leave out --request-id) for a new request")]
    RequestIdReused(String),
    #[error("a request or batch cannot contain another request or batch")]
    NestedRequest,
    #[error("inventory refused: {0}")]
    BadInventory(String),
    #[error("the cluster already holds {max} {what}, its limit; delete some first")]
    TooMany { what: String, max: usize },
}

fn room_for(what: &str, count: usize, max: usize) -> Result<(), ValidationError> {
    if count >= max {
        return Err(ValidationError::TooMany {
            what: what.to_owned(),
            max,
        });
    }
    Ok(())
}

/// Checks a name of a pool, host or other object: 1 to 64 bytes of `[A-Za-z0-9._-]`, not
/// starting with '.' or '-' (names become file names and command-line arguments on hosts).
pub fn validate_name(what: &str, name: &str) -> Result<(), ValidationError> {
    let what = what.to_owned();
    if name.is_empty() {
        return Err(ValidationError::EmptyName { what });
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(ValidationError::NameTooLong {
            what,
            name: name.to_owned(),
        });
    }
    if !qvdc_transport::limits::is_plain_name(name) {
        return Err(ValidationError::BadName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn is_mac(mac: &str) -> bool {
    let pairs: Vec<&str> = mac.split(':').collect();
    pairs.len() == 6
        && pairs
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn changed(changed: bool) -> Outcome {
    if changed {
        Outcome::Applied
    } else {
        Outcome::Unchanged
    }
}

fn validate_volume_size(size_bytes: u64) -> Result<(), ValidationError> {
    if (1..=VOLUME_BYTES_MAX).contains(&size_bytes) {
        return Ok(());
    }
    Err(ValidationError::BadVolume(format!(
        "a volume is 1 byte to 16 TiB, not {size_bytes} bytes"
    )))
}

fn validate_path(path: &str) -> Result<(), ValidationError> {
    if path.len() > PATH_BYTES_MAX {
        return Err(ValidationError::PathTooLong);
    }
    if !path.starts_with('/') {
        return Err(ValidationError::RelativePath(path.to_owned()));
    }
    Ok(())
}

/// Filesystems a `block` pool may hold: the ones hosts are expected to mount and that suit
/// VM images.
pub const BLOCK_FS_TYPES: [&str; 3] = ["ext4", "xfs", "btrfs"];

fn validate_source(source: &PoolSource) -> Result<(), ValidationError> {
    let bad = |reason: String| Err(ValidationError::BadSource(reason));
    match source {
        PoolSource::Dir { path } => validate_path(path),
        PoolSource::Nfs {
            server,
            export,
            options,
        } => {
            let server_ok = !server.is_empty()
                && server.len() <= NAME_BYTES_MAX
                && server
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !server_ok {
                return bad(format!(
                    "NFS server {server:?} must be a host name or IP address, like nfs1.example.com or 10.0.0.5"
                ));
            }
            validate_path(export)?;
            if let Some(options) = options {
                if options.len() > PATH_BYTES_MAX || options.chars().any(char::is_whitespace) {
                    return bad(format!(
                        "NFS options {options:?} must be comma-separated mount options without spaces, like vers=4.2,hard"
                    ));
                }
            }
            Ok(())
        }
        PoolSource::Block { device, fs_type } => {
            validate_path(device)?;
            if !BLOCK_FS_TYPES.contains(&fs_type.as_str()) {
                return bad(format!(
                    "filesystem {fs_type:?} is not supported for block pools; use one of {}",
                    BLOCK_FS_TYPES.join(", ")
                ));
            }
            Ok(())
        }
    }
}

impl DesiredState {
    /// Decides whether `command` may enter the log. Run on the leader before proposing and
    /// again when applying, so a command that became invalid while in flight changes nothing.
    pub fn validate(&self, command: &Command) -> Result<(), ValidationError> {
        match command {
            Command::RegisterHost { host_id, inventory } => {
                validate_name("host", host_id)?;
                inventory.check().map_err(ValidationError::BadInventory)?;
                if !self.hosts.contains_key(host_id) {
                    room_for("hosts", self.hosts.len(), HOSTS_MAX)?;
                }
                Ok(())
            }
            Command::CreatePool { spec, hosts } => self.validate_create_pool(spec, hosts),
            Command::CreateVm { spec, host, .. } => self.validate_create_vm(spec, host),
            Command::AssignPool { pool, hosts } | Command::UnassignPool { pool, hosts } => {
                self.validate_assignment(command, pool, hosts)
            }
            Command::DeletePool { pool } => {
                self.pool(pool)?;
                self.refuse_if_used(pool, None, None)
            }
            Command::CreateVolume {
                pool,
                name,
                size_bytes,
                host,
                ..
            } => {
                validate_name("volume", name)?;
                validate_volume_size(*size_bytes)?;
                let record = self.pool(pool)?;
                record.check_volume_host(host.as_deref())?;
                room_for(
                    "volumes in one pool",
                    record.volumes.len(),
                    VOLUMES_PER_POOL_MAX,
                )?;
                if record.volumes.contains_key(name) {
                    return Err(ValidationError::VolumeExists {
                        pool: pool.clone(),
                        name: name.clone(),
                    });
                }
                Ok(())
            }
            Command::ResizeVolume {
                pool,
                name,
                size_bytes,
            } => {
                validate_volume_size(*size_bytes)?;
                let volume = self.volume(pool, name)?;
                if *size_bytes < volume.size_bytes {
                    return Err(ValidationError::BadVolume(format!(
                        "volume {pool}/{name} is {} bytes; it can only grow (shrinking would cut off data the guest may use)",
                        volume.size_bytes
                    )));
                }
                Ok(())
            }
            Command::DeleteVolume { pool, name } => {
                self.volume(pool, name)?;
                self.refuse_if_used(pool, None, Some(name))
            }
            Command::CreateNetwork { spec, hosts } => self.validate_create_network(spec, hosts),
            Command::SetMaintenance { host, .. } => self.known_hosts(std::slice::from_ref(host)),
            Command::RevokeCertificate(certificate) => self.validate_revocation(certificate),
            Command::AssignNetwork { network, hosts } => {
                self.network(network)?;
                self.known_hosts(hosts)
            }
            Command::UnassignNetwork { network, hosts } => {
                self.network(network)?;
                self.known_hosts(hosts)?;
                for host in hosts {
                    self.refuse_if_network_used(network, Some(host))?;
                }
                Ok(())
            }
            Command::DeleteNetwork { network } => {
                self.network(network)?;
                self.refuse_if_network_used(network, None)
            }
            Command::SetVmPower { name, .. } | Command::DeleteVm { name } => {
                match self.vms.get(name) {
                    None => Err(ValidationError::NoSuchVm(name.clone())),
                    Some(vm) if vm.releasing => Err(ValidationError::BadVm(format!(
                        "VM {name} is being given back to its host; finish with `qvctl vm release {name}`"
                    ))),
                    Some(_) => Ok(()),
                }
            }
            Command::AdoptVm {
                spec,
                host,
                uuid,
                volumes,
                ..
            } => self.validate_adoption(spec, host, uuid, volumes),
            Command::ReleaseVm { name } => self.vm(name).map(|_| ()),
            Command::ForgetVm { name, volumes } => match self.vm(name)? {
                vm if !vm.releasing => Err(ValidationError::BadVm(format!(
                    "VM {name} is not being released; `qvctl vm release {name}` gives it back"
                ))),
                vm if self.released_volumes(vm) != *volumes => {
                    Err(ValidationError::BadVm(format!(
                        "VM {name}'s volumes changed while it was being released; retry `qvctl vm release {name}`"
                    )))
                }
                _ => Ok(()),
            },
            Command::Once {
                request_id,
                digest,
                command,
            } => {
                if request_id.is_empty() || request_id.len() > REQUEST_ID_BYTES_MAX {
                    return Err(ValidationError::BadRequestId);
                }
                if matches!(**command, Command::Once { .. } | Command::Batch(_)) {
                    return Err(ValidationError::NestedRequest);
                }
                match self.requests.lookup(request_id) {
                    // A retry: it replays the recorded outcome.
                    Some((recorded, _)) if recorded == *digest => Ok(()),
                    Some(_) => Err(ValidationError::RequestIdReused(request_id.clone())),
                    None => self.validate(command),
                }
            }
            // Each command of a batch is validated when it is applied, against the state the
            // commands before it left.
            Command::Batch(commands) => {
                if commands.iter().any(|c| matches!(c, Command::Batch(_))) {
                    return Err(ValidationError::NestedRequest);
                }
                Ok(())
            }
        }
    }

    fn validate_create_pool(
        &self,
        spec: &PoolSpec,
        hosts: &[String],
    ) -> Result<(), ValidationError> {
        validate_name("pool", &spec.name)?;
        validate_source(&spec.source)?;
        if self.pools.contains_key(&spec.name) {
            return Err(ValidationError::PoolExists(spec.name.clone()));
        }
        room_for("pools", self.pools.len(), POOLS_MAX)?;
        if hosts.is_empty() {
            return Err(ValidationError::NoHosts);
        }
        if hosts.len() > POOL_HOSTS_MAX {
            return Err(ValidationError::TooManyHosts);
        }
        let mut seen = BTreeSet::new();
        for host in hosts {
            if !seen.insert(host) {
                return Err(ValidationError::DuplicateHost(host.clone()));
            }
        }
        let unknown: Vec<String> = hosts
            .iter()
            .filter(|h| !self.hosts.contains_key(*h))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ValidationError::UnknownHosts(unknown));
        }
        Ok(())
    }

    fn network(&self, network: &str) -> Result<&NetworkRecord, ValidationError> {
        self.networks
            .get(network)
            .ok_or_else(|| ValidationError::NoSuchNetwork(network.to_owned()))
    }

    fn known_hosts(&self, hosts: &[String]) -> Result<(), ValidationError> {
        if hosts.is_empty() {
            return Err(ValidationError::NoHosts);
        }
        let unknown: Vec<String> = hosts
            .iter()
            .filter(|h| !self.hosts.contains_key(*h))
            .cloned()
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(ValidationError::UnknownHosts(unknown))
        }
    }

    fn refuse_if_network_used(
        &self,
        network: &str,
        host: Option<&str>,
    ) -> Result<(), ValidationError> {
        let user = self.vms.values().find(|vm| {
            host.is_none_or(|h| h == vm.host) && vm.spec.nics.iter().any(|n| n.network == network)
        });
        match user {
            Some(vm) => Err(ValidationError::InUse(format!(
                "VM {} on {} is attached to network {network}; delete the VM first",
                vm.spec.name, vm.host
            ))),
            None => Ok(()),
        }
    }

    fn validate_revocation(&self, certificate: &RevokedCertificate) -> Result<(), ValidationError> {
        let bad = |m: String| Err(ValidationError::BadCertificate(m));
        match qvdc_transport::tls::parse_serial(&certificate.serial) {
            Ok(serial) if serial == certificate.serial => {}
            Ok(serial) => {
                return bad(format!(
                    "serial {:?} is not written as {serial:?}",
                    certificate.serial
                ))
            }
            Err(e) => return bad(e),
        }
        if certificate
            .role
            .parse::<qvdc_transport::tls::Role>()
            .is_err()
        {
            return bad(format!(
                "role {:?} is not server, host or operator",
                certificate.role
            ));
        }
        // Any name a certificate may carry: one issued by other tools need not follow
        // qvdc's naming rules and must still be revocable. The serial decides.
        if certificate.name.len() > REVOKED_NAME_BYTES_MAX
            || certificate.name.chars().any(char::is_control)
        {
            return bad(format!(
                "certificate name {:?} is longer than {REVOKED_NAME_BYTES_MAX} bytes or has control characters",
                certificate.name
            ));
        }
        if self.revoked.contains_key(&certificate.serial) {
            return Ok(()); // already revoked: applying it changes nothing
        }
        room_for("revoked certificates", self.revoked.len(), REVOKED_MAX)
    }

    fn validate_create_network(
        &self,
        spec: &NetworkSpec,
        hosts: &[String],
    ) -> Result<(), ValidationError> {
        validate_name("network", &spec.name)?;
        if self.networks.contains_key(&spec.name) {
            return Err(ValidationError::NetworkExists(spec.name.clone()));
        }
        room_for("networks", self.networks.len(), NETWORKS_MAX)?;
        let bad = |m: String| Err(ValidationError::BadNetwork(m));
        let ifname = qvdc_transport::limits::is_interface_name;
        if !ifname(&spec.bridge) {
            return bad(format!(
                "bridge name {:?} must be 1 to 15 letters, digits, '-', '_' or '.' (a Linux interface name)",
                spec.bridge
            ));
        }
        if let Some(other) = self
            .networks
            .values()
            .find(|n| n.spec.bridge == spec.bridge)
        {
            return bad(format!(
                "bridge {} already carries network {}; pick another bridge name",
                spec.bridge, other.spec.name
            ));
        }
        match (&spec.uplink, spec.vlan) {
            (None, None) => {}
            (Some(uplink), Some(vlan)) => {
                if !(1..=4094).contains(&vlan) {
                    return bad(format!("VLAN id {vlan} must be between 1 and 4094"));
                }
                if !ifname(&format!("{uplink}.{vlan}")) {
                    return bad(format!(
                        "uplink {uplink:?} with VLAN {vlan} makes an interface name longer than 15 bytes"
                    ));
                }
            }
            _ => return bad("a VLAN needs both --vlan and --uplink (or neither)".into()),
        }
        self.known_hosts(hosts)
    }

    fn pool(&self, pool: &str) -> Result<&PoolRecord, ValidationError> {
        self.pools
            .get(pool)
            .map(|record| &**record)
            .ok_or_else(|| ValidationError::NoSuchPool(pool.to_owned()))
    }

    /// The VM spec a request to create `spec` makes: its id is the request's id (unique, and
    /// a retry finds the VM by it), and its disks take their volumes' formats, never the ones
    /// the request names (a raw disk opened as qcow2 would let its guest-written header name
    /// host files).
    pub fn vm_to_make(&self, request: &RequestKey, mut spec: VmSpec) -> VmSpec {
        spec.id = request.id.clone();
        self.with_volume_formats(&mut spec);
        spec
    }

    /// `spec` with each disk in its volume's format.
    pub fn with_volume_formats(&self, spec: &mut VmSpec) {
        for disk in &mut spec.disks {
            if let Ok(volume) = self.volume(&disk.pool, &disk.volume) {
                disk.format = volume.format;
            }
        }
    }

    /// The host a new volume of `pool` goes on: the one asked for, or, for a local pool
    /// with a single host, that host (so the operator need not name it).
    pub fn volume_host(&self, pool: &str, asked: Option<String>) -> Option<String> {
        asked.or_else(|| {
            let record = self.pools.get(pool)?;
            let only = record.spec.scope == PoolScope::Local && record.hosts.len() == 1;
            only.then(|| record.hosts.first().cloned())?
        })
    }

    /// The hosts that may hold the file of volume `pool`/`name`: its own host if the record
    /// names one; every host of a local pool if the record is gone (a retried delete: each
    /// host deletes only a file marked as this volume's); none for a shared pool, whose
    /// files any healthy host reaches.
    pub fn volume_file_hosts(&self, pool: &str, name: &str) -> Vec<String> {
        let record = self.pools.get(pool);
        let local = record.is_some_and(|p| p.spec.scope == PoolScope::Local);
        match (
            self.volume(pool, name).ok().and_then(|v| v.host.clone()),
            record,
        ) {
            (Some(host), _) => vec![host],
            (None, Some(p)) if local => p.hosts.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Whether `report`, a domain without qvdc's id on `host`, is a VM adopted from it whose
    /// host has not recorded the VM's id yet: then it is that VM, not an unmanaged domain.
    pub fn is_adopted_domain(
        &self,
        host: &str,
        report: &qvdc_transport::protocol::VmReport,
    ) -> bool {
        self.vms.get(&report.name).is_some_and(|vm| {
            vm.host == host && vm.adopted.as_deref() == Some(report.uuid.as_str())
        })
    }

    pub fn volume(&self, pool: &str, name: &str) -> Result<&VolumeRecord, ValidationError> {
        self.pool(pool)?
            .volumes
            .get(name)
            .ok_or_else(|| ValidationError::NoSuchVolume {
                pool: pool.to_owned(),
                name: name.to_owned(),
            })
    }

    /// Refuses when a VM (on `host`, if given) has a disk in `pool` (on volume `volume`, if
    /// given): taking the storage away would break it.
    fn refuse_if_used(
        &self,
        pool: &str,
        host: Option<&str>,
        volume: Option<&str>,
    ) -> Result<(), ValidationError> {
        for vm in self.vms.values() {
            if host.is_some_and(|h| h != vm.host) {
                continue;
            }
            let uses = vm
                .spec
                .disks
                .iter()
                .any(|d| d.pool == pool && volume.is_none_or(|v| v == d.volume));
            if uses {
                let what = volume.map_or(format!("pool {pool}"), |v| format!("volume {pool}/{v}"));
                return Err(ValidationError::InUse(format!(
                    "VM {} on {} uses {what}; delete the VM first",
                    vm.spec.name, vm.host
                )));
            }
        }
        Ok(())
    }

    fn validate_assignment(
        &self,
        command: &Command,
        pool: &str,
        hosts: &[String],
    ) -> Result<(), ValidationError> {
        let record = self.pool(pool)?;
        if hosts.is_empty() {
            return Err(ValidationError::NoHosts);
        }
        let unknown: Vec<String> = hosts
            .iter()
            .filter(|h| !self.hosts.contains_key(*h))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ValidationError::UnknownHosts(unknown));
        }
        if let Command::UnassignPool { .. } = command {
            for host in hosts {
                self.refuse_if_used(pool, Some(host), None)?;
                let held: Vec<&String> = record.volumes_on(host).collect();
                if !held.is_empty() {
                    let held: Vec<&str> = held.iter().map(|v| v.as_str()).collect();
                    return Err(ValidationError::InUse(format!(
                        "host {host}'s own storage in local pool {pool} holds volume {}; delete them first (unassigned, they could not be reached)",
                        held.join(", ")
                    )));
                }
            }
            if hosts.iter().filter(|h| record.hosts.contains(*h)).count() == record.hosts.len() {
                return Err(ValidationError::InUse(format!(
                    "pool {pool} would have no host left; delete the pool instead"
                )));
            }
        } else if record.hosts.len() + hosts.len() > POOL_HOSTS_MAX {
            return Err(ValidationError::TooManyHosts);
        }
        Ok(())
    }

    fn vm(&self, name: &str) -> Result<&VmRecord, ValidationError> {
        self.vms
            .get(name)
            .ok_or_else(|| ValidationError::NoSuchVm(name.to_owned()))
    }

    /// An adoption is a VM creation over volumes that exist once it is applied: check it as
    /// one against the state with those volumes added (a cheap copy: the maps are shared).
    fn validate_adoption(
        &self,
        spec: &VmSpec,
        host: &str,
        uuid: &str,
        volumes: &[AdoptedVolume],
    ) -> Result<(), ValidationError> {
        let bad = |message: String| Err(ValidationError::BadVm(message));
        if uuid.is_empty() || uuid.len() > NAME_BYTES_MAX {
            return bad(format!(
                "domain UUID {uuid:?} must be 1 to {NAME_BYTES_MAX} bytes"
            ));
        }
        // UUIDs are unique on one host; a domain copied to another host may keep its UUID.
        if let Some(vm) = self
            .vms_of_host(host)
            .find(|vm| vm.adopted.as_deref() == Some(uuid))
        {
            return bad(format!(
                "the domain with UUID {uuid} on {host} is already VM {}",
                vm.spec.name
            ));
        }
        if volumes.len() > VM_DISKS_MAX {
            return bad(format!("a VM may have at most {VM_DISKS_MAX} disks"));
        }
        let mut with_volumes = self.clone();
        for volume in volumes {
            validate_name("volume", &volume.name)?;
            validate_volume_size(volume.record.size_bytes)?;
            if !spec
                .disks
                .iter()
                .any(|d| d.pool == volume.pool && d.volume == volume.name)
            {
                return bad(format!(
                    "{}/{} is not a disk of {}",
                    volume.pool, volume.name, spec.name
                ));
            }
            let pool = with_volumes.pool(&volume.pool)?;
            // A local pool's file is on the adopting host's own storage.
            let on = (pool.spec.scope == PoolScope::Local).then_some(host);
            if volume.record.host.as_deref() != on {
                return bad(format!(
                    "{}/{} must be recorded on {}",
                    volume.pool,
                    volume.name,
                    on.unwrap_or("no host (the pool is shared)")
                ));
            }
            match pool.volumes.get(&volume.name) {
                Some(have) if have.format != volume.record.format => {
                    return bad(format!(
                        "{}/{} is a {} volume already; the domain opens it as {}",
                        volume.pool, volume.name, have.format, volume.record.format
                    ))
                }
                Some(_) => {}
                None => {
                    room_for(
                        "volumes in one pool",
                        pool.volumes.len(),
                        VOLUMES_PER_POOL_MAX,
                    )?;
                    with_volumes.add_volume(&volume.pool, &volume.name, volume.record.clone());
                }
            }
        }
        with_volumes.validate_create_vm(spec, host)
    }

    fn add_volume(&mut self, pool: &str, name: &str, record: VolumeRecord) {
        let pool = Arc::make_mut(self.pools.get_mut(pool).expect("validated"));
        pool.volumes.insert(name.to_owned(), record);
    }

    fn validate_create_vm(&self, spec: &VmSpec, host: &str) -> Result<(), ValidationError> {
        validate_name("VM", &spec.name)?;
        let bad = |message: String| Err(ValidationError::BadVm(message));
        if spec.id.is_empty() || spec.id.len() > REQUEST_ID_BYTES_MAX {
            return bad(format!("VM id must be 1 to {REQUEST_ID_BYTES_MAX} bytes"));
        }
        if self.vms.contains_key(&spec.name) {
            return Err(ValidationError::VmExists(spec.name.clone()));
        }
        room_for("VMs", self.vms.len(), VMS_MAX)?;
        if self.vms.values().any(|vm| vm.spec.id == spec.id) {
            return bad(format!("VM id {:?} is taken", spec.id));
        }
        if !(1..=VM_VCPUS_MAX).contains(&spec.vcpus) {
            return bad(format!(
                "a VM needs 1 to {VM_VCPUS_MAX} vCPUs, not {}",
                spec.vcpus
            ));
        }
        if spec.memory_bytes < VM_MEMORY_BYTES_MIN {
            return bad(format!(
                "a VM needs at least 16M of memory, not {} bytes",
                spec.memory_bytes
            ));
        }
        if spec.disks.len() > VM_DISKS_MAX {
            return bad(format!("a VM may have at most {VM_DISKS_MAX} disks"));
        }
        if spec.nics.len() > VM_NICS_MAX {
            return bad(format!("a VM may have at most {VM_NICS_MAX} NICs"));
        }
        for mac in spec.nics.iter().filter_map(|nic| nic.mac.as_deref()) {
            if !is_mac(mac) {
                return bad(format!(
                    "MAC address {mac:?} must be six hex pairs separated by ':', like 52:54:00:12:34:56"
                ));
            }
        }
        if !self.hosts.contains_key(host) {
            return Err(ValidationError::UnknownHosts(vec![host.to_owned()]));
        }
        for disk in &spec.disks {
            validate_name("volume", &disk.volume)?;
            if let Some(leaving) = self.vms.values().find(|vm| {
                vm.releasing
                    && vm
                        .spec
                        .disks
                        .iter()
                        .any(|d| d.pool == disk.pool && d.volume == disk.volume)
            }) {
                return bad(format!(
                    "disk {}/{} leaves qvdc with VM {}, which is being released",
                    disk.pool, disk.volume, leaving.spec.name
                ));
            }
            match self.pools.get(&disk.pool) {
                None => {
                    return bad(format!(
                        "disk {}/{}: no pool named {:?}; `qvctl pool list` shows the pools",
                        disk.pool, disk.volume, disk.pool
                    ))
                }
                Some(pool) if !pool.hosts.contains(host) => {
                    return bad(format!(
                        "disk {}/{}: pool {} is not assigned to host {host}; assign it first or pick a host that has it",
                        disk.pool, disk.volume, disk.pool
                    ))
                }
                Some(pool) => match pool.volumes.get(&disk.volume) {
                    None => {
                        return bad(format!(
                            "disk {}/{}: pool {} has no volume {:?}; create it first with `qvctl volume create {} {} --size SIZE`",
                            disk.pool, disk.volume, disk.pool, disk.volume, disk.pool, disk.volume
                        ))
                    }
                    Some(volume) if volume.format != disk.format => {
                        return bad(format!(
                            "disk {}/{} is a {} volume and cannot be attached as {}",
                            disk.pool, disk.volume, volume.format, disk.format
                        ))
                    }
                    Some(volume) if volume.host.as_deref().is_some_and(|h| h != host) => {
                        return bad(format!(
                            "disk {}/{} is on {}'s own storage (pool {} is local), so the VM can only run on {}",
                            disk.pool,
                            disk.volume,
                            volume.host.as_deref().unwrap_or_default(),
                            disk.pool,
                            volume.host.as_deref().unwrap_or_default()
                        ))
                    }
                    Some(_) => {}
                },
            }
        }
        for nic in &spec.nics {
            match self.networks.get(&nic.network) {
                None => {
                    return bad(format!(
                        "network {:?} does not exist; `qvctl network list` shows the networks",
                        nic.network
                    ))
                }
                Some(network) if !network.hosts.contains(host) => {
                    return bad(format!(
                        "network {} is not assigned to host {host}; assign it first or pick a host that has it",
                        nic.network
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Applies a committed command. Deterministic: the same state and command give the same
    /// result on every node.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        if let Command::Batch(commands) = command {
            if let Err(e) = self.validate(command) {
                return Outcome::Rejected(e);
            }
            return Outcome::Batch(commands.iter().map(|c| self.apply(c)).collect());
        }
        if let Command::Once {
            request_id,
            digest,
            command: inner,
        } = command
        {
            if let Some((recorded, outcome)) = self.requests.lookup(request_id) {
                if recorded == *digest {
                    return outcome.clone();
                }
            }
            // Validating the request validates the command it carries.
            let outcome = match self.validate(command) {
                Ok(()) => self.apply_valid(inner),
                Err(e) => Outcome::Rejected(e),
            };
            // An id that is not valid, or is another request's, records nothing.
            if !matches!(
                outcome,
                Outcome::Rejected(
                    ValidationError::BadRequestId | ValidationError::RequestIdReused(_)
                )
            ) {
                self.requests.record(request_id, *digest, outcome.clone());
            }
            return outcome;
        }
        match self.validate(command) {
            Ok(()) => self.apply_valid(command),
            Err(e) => Outcome::Rejected(e),
        }
    }

    /// Applies a command that [`DesiredState::validate`] accepted against this very state.
    fn apply_valid(&mut self, command: &Command) -> Outcome {
        match command {
            Command::RegisterHost { host_id, inventory } => {
                let maintenance = self.hosts.get(host_id).is_some_and(|h| h.maintenance);
                let record = HostRecord {
                    host_id: host_id.clone(),
                    inventory: inventory.clone(),
                    maintenance,
                };
                if self.hosts.get(host_id) == Some(&record) {
                    return Outcome::Unchanged;
                }
                self.hosts.insert(host_id.clone(), record);
                Outcome::Applied
            }
            Command::SetMaintenance { host, on } => {
                let record = self.hosts.get_mut(host).expect("validated");
                changed(std::mem::replace(&mut record.maintenance, *on) != *on)
            }
            Command::RevokeCertificate(certificate) => {
                // A serial revoked again keeps its first record.
                let first = !self.revoked.contains_key(&certificate.serial);
                if first {
                    let serial = certificate.serial.clone();
                    self.revoked.insert(serial, certificate.clone());
                }
                changed(first)
            }
            Command::CreatePool { spec, hosts } => {
                let record = PoolRecord {
                    spec: spec.clone(),
                    hosts: hosts.iter().cloned().collect(),
                    volumes: BTreeMap::new(),
                };
                let previous = self.pools.insert(spec.name.clone(), Arc::new(record));
                assert!(previous.is_none(), "validation rejects duplicate pools");
                for host in hosts {
                    self.indexed(Kind::Pool, host, &spec.name, true);
                }
                Outcome::Applied
            }
            Command::CreateVm { spec, host, power } => {
                self.add_vm(spec, host, *power, None);
                Outcome::Applied
            }
            Command::AdoptVm {
                spec,
                host,
                power,
                uuid,
                volumes,
            } => {
                for volume in volumes {
                    if self.volume(&volume.pool, &volume.name).is_err() {
                        self.add_volume(&volume.pool, &volume.name, volume.record.clone());
                    }
                }
                self.add_vm(spec, host, *power, Some(uuid.clone()));
                Outcome::Applied
            }
            Command::ReleaseVm { name } => {
                let vm = self.vms.get_mut(name).expect("validated");
                changed(!std::mem::replace(&mut vm.releasing, true))
            }
            Command::ForgetVm { name, volumes } => {
                let vm = self.vms.remove(name).expect("validated");
                self.indexed(Kind::Vm, &vm.host, name, false);
                for disk in volumes {
                    let pool = Arc::make_mut(self.pools.get_mut(&disk.pool).expect("listed"));
                    pool.volumes.remove(&disk.volume);
                }
                Outcome::Applied
            }
            Command::SetVmPower { name, power } => {
                let vm = self.vms.get_mut(name).expect("validated");
                if vm.power == *power {
                    return Outcome::Unchanged;
                }
                vm.power = *power;
                Outcome::Applied
            }
            Command::DeleteVm { name } => {
                let vm = self.vms.remove(name).expect("validated");
                self.indexed(Kind::Vm, &vm.host, name, false);
                Outcome::Applied
            }
            Command::AssignPool { pool, hosts } => self.reassign(Kind::Pool, pool, hosts, true),
            Command::UnassignPool { pool, hosts } => self.reassign(Kind::Pool, pool, hosts, false),
            Command::DeletePool { pool } => {
                let record = self.pools.remove(pool).expect("validated");
                for host in &record.hosts {
                    self.indexed(Kind::Pool, host, pool, false);
                }
                Outcome::Applied
            }
            Command::CreateVolume {
                pool,
                name,
                format,
                size_bytes,
                host,
            } => {
                let record = VolumeRecord {
                    host: host.clone(),
                    format: *format,
                    size_bytes: *size_bytes,
                };
                let pool = Arc::make_mut(self.pools.get_mut(pool).expect("validated"));
                pool.volumes.insert(name.clone(), record);
                Outcome::Applied
            }
            Command::ResizeVolume {
                pool,
                name,
                size_bytes,
            } => {
                let pool = Arc::make_mut(self.pools.get_mut(pool).expect("validated"));
                let volume = pool.volumes.get_mut(name).expect("validated");
                let before = volume.size_bytes;
                volume.size_bytes = *size_bytes;
                changed(before != *size_bytes)
            }
            Command::DeleteVolume { pool, name } => {
                let pool = Arc::make_mut(self.pools.get_mut(pool).expect("validated"));
                pool.volumes.remove(name).expect("validated");
                Outcome::Applied
            }
            Command::CreateNetwork { spec, hosts } => {
                let record = NetworkRecord {
                    spec: spec.clone(),
                    hosts: hosts.iter().cloned().collect(),
                };
                self.networks.insert(spec.name.clone(), record);
                for host in hosts {
                    self.indexed(Kind::Network, host, &spec.name, true);
                }
                Outcome::Applied
            }
            Command::AssignNetwork { network, hosts } => {
                self.reassign(Kind::Network, network, hosts, true)
            }
            Command::UnassignNetwork { network, hosts } => {
                self.reassign(Kind::Network, network, hosts, false)
            }
            Command::DeleteNetwork { network } => {
                let record = self.networks.remove(network).expect("validated");
                for host in &record.hosts {
                    self.indexed(Kind::Network, host, network, false);
                }
                Outcome::Applied
            }
            Command::Once { .. } | Command::Batch(_) => unreachable!("handled above"),
        }
    }

    /// A fingerprint of the whole desired state (FNV-1a over its encoding). Nodes that
    /// applied the same log agree on it; `cluster status` shows it so that can be checked.
    pub fn digest(&self) -> u64 {
        struct Fnv(u64);
        impl std::io::Write for Fnv {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0 = fnv1a(self.0, bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut hash = Fnv(FNV_OFFSET);
        qvdc_transport::codec::encode_into(self, &mut hash)
            .expect("encoding into memory cannot fail");
        hash.0
    }

    fn add_vm(&mut self, spec: &VmSpec, host: &str, power: DesiredPower, adopted: Option<String>) {
        let record = VmRecord {
            spec: spec.clone(),
            host: host.to_owned(),
            power,
            adopted,
            releasing: false,
        };
        let previous = self.vms.insert(spec.name.clone(), record);
        assert!(previous.is_none(), "validation rejects duplicate VMs");
        self.indexed(Kind::Vm, host, &spec.name, true);
    }

    /// The volumes that leave qvdc with `vm` when it is released: its disks that are
    /// volumes and that no other VM uses.
    pub fn released_volumes(&self, vm: &VmRecord) -> Vec<qvdc_transport::protocol::VmDisk> {
        let mut volumes: Vec<_> = vm
            .spec
            .disks
            .iter()
            .filter(|disk| self.volume(&disk.pool, &disk.volume).is_ok())
            .filter(|disk| {
                !self.vms.values().any(|other| {
                    other.spec.name != vm.spec.name
                        && other
                            .spec
                            .disks
                            .iter()
                            .any(|d| d.pool == disk.pool && d.volume == disk.volume)
                })
            })
            .cloned()
            .collect();
        volumes.sort_by(|a, b| (&a.pool, &a.volume).cmp(&(&b.pool, &b.volume)));
        volumes.dedup_by(|a, b| a.pool == b.pool && a.volume == b.volume);
        volumes
    }

    fn indexed(&mut self, kind: Kind, host: &str, name: &str, present: bool) {
        let index = self.by_host.entry(host.to_owned()).or_default();
        let set = match kind {
            Kind::Pool => &mut index.pools,
            Kind::Vm => &mut index.vms,
            Kind::Network => &mut index.networks,
        };
        if present {
            set.insert(name.to_owned());
        } else {
            set.remove(name);
        }
    }

    /// Assigns (or unassigns) a pool or network to `hosts`, keeping the index in step.
    fn reassign(&mut self, kind: Kind, name: &str, hosts: &[String], assign: bool) -> Outcome {
        let assigned = match kind {
            Kind::Pool => &mut Arc::make_mut(self.pools.get_mut(name).expect("validated")).hosts,
            Kind::Network => &mut self.networks.get_mut(name).expect("validated").hosts,
            Kind::Vm => unreachable!("a VM has one host, set when it is created"),
        };
        let before = assigned.len();
        if assign {
            assigned.extend(hosts.iter().cloned());
        } else {
            assigned.retain(|h| !hosts.contains(h));
        }
        let outcome = changed(assigned.len() != before);
        for host in hosts {
            self.indexed(kind, host, name, assign);
        }
        outcome
    }

    fn index_of(&self, host: &str) -> Option<&HostIndex> {
        self.by_host.get(host)
    }

    /// The VMs placed on `host_id`, in name order.
    pub fn vms_of_host<'a>(&'a self, host_id: &'a str) -> impl Iterator<Item = &'a VmRecord> + 'a {
        self.index_of(host_id)
            .into_iter()
            .flat_map(|i| &i.vms)
            .filter_map(|name| self.vms.get(name))
    }

    /// The networks assigned to `host_id`, in name order.
    pub fn networks_of_host<'a>(
        &'a self,
        host_id: &'a str,
    ) -> impl Iterator<Item = &'a NetworkRecord> + 'a {
        self.index_of(host_id)
            .into_iter()
            .flat_map(|i| &i.networks)
            .filter_map(|name| self.networks.get(name))
    }

    /// The pools assigned to `host_id`, in name order.
    pub fn pools_of_host<'a>(
        &'a self,
        host_id: &'a str,
    ) -> impl Iterator<Item = &'a PoolRecord> + 'a {
        self.index_of(host_id)
            .into_iter()
            .flat_map(|i| &i.pools)
            .filter_map(|name| self.pools.get(name).map(|record| &**record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qvdc_transport::codec;

    fn inventory() -> Inventory {
        Inventory {
            hostname: "h".into(),
            cpu_cores: 2,
            memory_bytes: 1 << 30,
            ..Inventory::default()
        }
    }

    /// A log entry is decoded from whatever a peer holding a server certificate sends; a
    /// once-only command wrapping itself a million times must be refused, not recursed into
    /// until the stack overflows.
    #[test]
    fn deeply_nested_commands_are_refused_when_decoded() {
        let inner = codec::to_bytes(&Command::DeletePool { pool: "p".into() }).unwrap();
        for depth in [5, 100_000] {
            let mut bytes = Vec::new();
            for _ in 0..depth {
                bytes.extend_from_slice(&[1, 1, b'r']); // Once { request_id: "r",
                bytes.extend_from_slice(&[0; 16]); //        digest,
                                                   //        command: ...
            }
            bytes.extend_from_slice(&inner);
            let err = codec::from_bytes::<Command>(&bytes).unwrap_err();
            assert!(err.to_string().contains("nested more than"), "{err}");
        }
        let legitimate = Command::Batch(Arc::from(vec![once(
            "r",
            Command::DeletePool { pool: "p".into() },
        )]));
        let bytes = codec::to_bytes(&legitimate).unwrap();
        assert_eq!(codec::from_bytes::<Command>(&bytes).unwrap(), legitimate);
    }

    #[test]
    fn an_inventory_over_its_bounds_is_refused_naming_the_bound() {
        let state = DesiredState::default();
        let mut inventory = inventory();
        inventory.nics = (0..600)
            .map(|i| qvdc_transport::protocol::NicInventory {
                name: format!("eth{i}"),
                mac: "52:54:00:00:00:01".into(),
                speed_mbps: None,
                up: true,
            })
            .collect();
        let register = Command::RegisterHost {
            host_id: "h".into(),
            inventory: inventory.clone(),
        };
        let err = state.validate(&register).unwrap_err();
        assert!(
            err.to_string().contains("600 NICs, more than the 512"),
            "{err}"
        );
        inventory.nics.clear();
        inventory.cpu_model = "x".repeat(5_000);
        let register = Command::RegisterHost {
            host_id: "h".into(),
            inventory,
        };
        let err = state.validate(&register).unwrap_err();
        assert!(err.to_string().contains("CPU model is 5000 bytes"), "{err}");
    }

    #[test]
    fn each_kind_of_object_stops_at_its_limit() {
        let mut state = with_hosts(&["h"]);
        let network = |i: usize| Command::CreateNetwork {
            spec: NetworkSpec {
                name: format!("n{i}"),
                bridge: format!("br{i}"),
                vlan: None,
                uplink: None,
            },
            hosts: vec!["h".into()],
        };
        for i in 0..NETWORKS_MAX {
            assert_eq!(state.apply(&network(i)), Outcome::Applied, "network {i}");
        }
        let refused = state.apply(&network(NETWORKS_MAX));
        let Outcome::Rejected(err) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(
            err.to_string(),
            format!(
                "the cluster already holds {NETWORKS_MAX} networks, its limit; delete some first"
            )
        );
        assert_eq!(state.networks.len(), NETWORKS_MAX);
    }

    /// Found by the `snapshot` fuzz target: a count of 2^32 hosts in nine bytes made imbl
    /// reserve 858 GB before reading a single host.
    #[test]
    fn a_huge_claimed_count_is_not_reserved_up_front() {
        let claims_u32_max_hosts = [0xfc, 0xff, 0xff, 0xff, 0xff];
        let err = codec::from_stored_bytes::<DesiredState>(&claims_u32_max_hosts).unwrap_err();
        assert!(matches!(err, codec::CodecError::Malformed(_)), "{err}");
        let state = with_hosts(&["h1", "h2"]);
        let bytes = codec::to_stored_bytes(&state).unwrap();
        assert_eq!(
            codec::from_stored_bytes::<DesiredState>(&bytes).unwrap(),
            state
        );
    }

    /// The state outgrew the 16 MiB frame once and `digest()` panicked; it is now hashed as
    /// it is encoded, and stored without the frame's bound.
    #[test]
    fn a_state_larger_than_a_frame_has_a_digest_and_is_stored() {
        let hosts: Vec<String> = (0..POOL_HOSTS_MAX)
            .map(|i| format!("host-with-a-long-name-{i:05}"))
            .collect();
        let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let mut state = with_hosts(&refs);
        let mut pool = 0;
        while codec::encoded_len(&state) <= codec::FRAME_BYTES_MAX {
            let command = Command::CreatePool {
                spec: PoolSpec {
                    scope: Default::default(),
                    name: format!("p{pool}"),
                    source: PoolSource::Dir {
                        path: "/srv".into(),
                    },
                },
                hosts: hosts.clone(),
            };
            assert_eq!(state.apply(&command), Outcome::Applied);
            pool += 1;
        }
        let digest = state.digest();
        let stored = codec::to_stored_bytes(&state).unwrap();
        assert!(stored.len() > codec::FRAME_BYTES_MAX);
        assert!(
            codec::to_bytes(&state).is_err(),
            "the frame codec still bounds frames"
        );
        let back: DesiredState = codec::from_stored_bytes(&stored).unwrap();
        assert_eq!(back.digest(), digest);
    }

    fn with_hosts(ids: &[&str]) -> DesiredState {
        let mut state = DesiredState::default();
        for id in ids {
            let cmd = Command::RegisterHost {
                host_id: (*id).into(),
                inventory: inventory(),
            };
            assert_eq!(state.apply(&cmd), Outcome::Applied);
        }
        state
    }

    fn create(name: &str, path: &str, hosts: &[&str]) -> Command {
        Command::CreatePool {
            spec: PoolSpec {
                scope: Default::default(),
                name: name.into(),
                source: PoolSource::Dir { path: path.into() },
            },
            hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
        }
    }

    fn vm(name: &str, id: &str, disks: &[(&str, &str)]) -> VmSpec {
        VmSpec {
            id: id.into(),
            name: name.into(),
            vcpus: 1,
            memory_bytes: 64 << 20,
            disks: disks
                .iter()
                .map(|(pool, volume)| qvdc_transport::protocol::VmDisk {
                    pool: (*pool).into(),
                    volume: (*volume).into(),
                    format: qvdc_transport::protocol::VolumeFormat::Qcow2,
                })
                .collect(),
            nics: Vec::new(),
        }
    }

    /// A qcow2 volume `name` in `pool`, which a VM's disk must be.
    fn qcow2(pool: &str, name: &str) -> Command {
        Command::CreateVolume {
            host: None,
            pool: pool.into(),
            name: name.into(),
            format: VolumeFormat::Qcow2,
            size_bytes: 64 << 20,
        }
    }

    fn create_vm(spec: VmSpec, host: &str) -> Command {
        Command::CreateVm {
            spec,
            host: host.into(),
            power: DesiredPower::Running,
        }
    }

    fn adopt(spec: VmSpec, uuid: &str, volumes: &[(&str, &str)]) -> Command {
        Command::AdoptVm {
            spec,
            host: "host-1".into(),
            power: DesiredPower::Running,
            uuid: uuid.into(),
            volumes: volumes
                .iter()
                .map(|(pool, name)| AdoptedVolume {
                    pool: (*pool).into(),
                    name: (*name).into(),
                    record: VolumeRecord {
                        host: None,
                        format: VolumeFormat::Qcow2,
                        size_bytes: 1 << 30,
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn an_adopted_vm_brings_its_disks_as_volumes_and_leaves_with_them_when_released() {
        let mut state = with_hosts(&["host-1", "host-2"]);
        state.apply(&create("p", "/srv/p", &["host-1"]));
        state.apply(&create("q", "/srv/q", &["host-2"]));
        state.apply(&qcow2("p", "shared.qcow2"));
        let spec = vm("db", "req-1", &[("p", "db.qcow2"), ("p", "shared.qcow2")]);
        rejected_with(
            &mut state,
            adopt(spec.clone(), "u-1", &[]),
            "pool p has no volume \"db.qcow2\"",
        );
        let mut elsewhere = adopt(spec.clone(), "u-1", &[("p", "db.qcow2")]);
        if let Command::AdoptVm { volumes, .. } = &mut elsewhere {
            volumes[0].record.host = Some("host-1".into());
        }
        rejected_with(
            &mut state,
            elsewhere,
            "must be recorded on no host (the pool is shared)",
        );
        rejected_with(
            &mut state,
            adopt(vm("db", "req-1", &[]), "u-1", &[("p", "db.qcow2")]),
            "p/db.qcow2 is not a disk of db",
        );
        rejected_with(
            &mut state,
            adopt(spec.clone(), "u-1", &[("q", "db.qcow2")]),
            "q/db.qcow2 is not a disk of db",
        );
        assert_eq!(
            state.apply(&adopt(spec.clone(), "u-1", &[("p", "db.qcow2")])),
            Outcome::Applied
        );
        let record = &state.vms["db"];
        assert_eq!(record.adopted.as_deref(), Some("u-1"));
        assert_eq!(state.volume("p", "db.qcow2").unwrap().size_bytes, 1 << 30);
        let again = vm("db2", "req-2", &[]);
        rejected_with(
            &mut state,
            adopt(again, "u-1", &[]),
            "the domain with UUID u-1 on host-1 is already VM db",
        );

        // Another VM shares one of its disks: that volume stays when db is released.
        let other = vm("web", "req-3", &[("p", "shared.qcow2")]);
        assert_eq!(state.apply(&create_vm(other, "host-1")), Outcome::Applied);
        let forget = |volumes: Vec<qvdc_transport::protocol::VmDisk>| Command::ForgetVm {
            name: "db".into(),
            volumes,
        };
        rejected_with(&mut state, forget(vec![]), "is not being released");
        let release = Command::ReleaseVm { name: "db".into() };
        assert_eq!(state.apply(&release), Outcome::Applied);
        assert_eq!(state.apply(&release), Outcome::Unchanged);
        for command in [
            Command::SetVmPower {
                name: "db".into(),
                power: DesiredPower::Stopped,
            },
            Command::DeleteVm { name: "db".into() },
        ] {
            rejected_with(&mut state, command, "is being given back to its host");
        }
        // Its disks are leaving: no other VM may take them meanwhile.
        let taker = vm("taker", "req-4", &[("p", "db.qcow2")]);
        rejected_with(
            &mut state,
            create_vm(taker, "host-1"),
            "leaves qvdc with VM db, which is being released",
        );
        let leaving = state.released_volumes(&state.vms["db"]);
        assert_eq!(leaving.len(), 1);
        assert_eq!(leaving[0].volume, "db.qcow2");
        rejected_with(
            &mut state,
            forget(vec![]),
            "volumes changed while it was being released",
        );
        assert_eq!(state.apply(&forget(leaving)), Outcome::Applied);
        assert!(!state.vms.contains_key("db"));
        assert!(state.volume("p", "db.qcow2").is_err());
        assert!(state.volume("p", "shared.qcow2").is_ok());
        assert_eq!(state.vms_of_host("host-1").count(), 1);
    }

    #[test]
    fn a_vm_is_placed_powered_and_deleted() {
        let mut state = with_hosts(&["host-1", "host-2"]);
        state.apply(&create("p", "/srv/p", &["host-1"]));
        let spec = vm("web", "vm-1", &[("p", "web.qcow2")]);
        rejected_with(
            &mut state,
            create_vm(spec.clone(), "host-1"),
            "pool p has no volume \"web.qcow2\"; create it first",
        );
        assert_eq!(state.apply(&qcow2("p", "web.qcow2")), Outcome::Applied);
        let mut raw = spec.clone();
        raw.disks[0].format = VolumeFormat::Raw;
        rejected_with(
            &mut state,
            create_vm(raw, "host-1"),
            "disk p/web.qcow2 is a qcow2 volume and cannot be attached as raw",
        );
        assert_eq!(state.apply(&create_vm(spec, "host-1")), Outcome::Applied);
        assert_eq!(state.vms_of_host("host-1").count(), 1);
        assert_eq!(state.vms_of_host("host-2").count(), 0);
        let stop = Command::SetVmPower {
            name: "web".into(),
            power: DesiredPower::Stopped,
        };
        assert_eq!(state.apply(&stop), Outcome::Applied);
        assert_eq!(state.apply(&stop), Outcome::Unchanged);
        assert_eq!(state.vms["web"].power, DesiredPower::Stopped);
        let delete = Command::DeleteVm { name: "web".into() };
        assert_eq!(state.apply(&delete), Outcome::Applied);
        assert!(matches!(
            state.apply(&delete),
            Outcome::Rejected(ValidationError::NoSuchVm(_))
        ));
    }

    fn rejected_with(state: &mut DesiredState, command: Command, message: &str) {
        let before = state.clone();
        match state.apply(&command) {
            Outcome::Rejected(e) => assert!(e.to_string().contains(message), "{e}"),
            other => panic!("{command:?} was {other:?}"),
        }
        assert_eq!(*state, before);
    }

    #[test]
    fn a_local_pool_keeps_each_volume_on_one_of_its_hosts() {
        let mut state = with_hosts(&["host-1", "host-2", "host-3"]);
        let mut local = create("l", "/srv/l", &["host-1", "host-2"]);
        if let Command::CreatePool { spec, .. } = &mut local {
            spec.scope = PoolScope::Local;
        }
        assert_eq!(state.apply(&local), Outcome::Applied);
        let volume = |host: Option<&str>| Command::CreateVolume {
            pool: "l".into(),
            name: "db.qcow2".into(),
            format: VolumeFormat::Qcow2,
            size_bytes: 64 << 20,
            host: host.map(str::to_owned),
        };
        rejected_with(&mut state, volume(None), "pool l is local: name the host");
        rejected_with(
            &mut state,
            volume(Some("host-3")),
            "pool l is not assigned to host host-3",
        );
        assert_eq!(state.apply(&volume(Some("host-2"))), Outcome::Applied);
        rejected_with(
            &mut state,
            create_vm(vm("db", "vm-1", &[("l", "db.qcow2")]), "host-1"),
            "the VM can only run on host-2",
        );
        assert_eq!(
            state.apply(&create_vm(vm("db", "vm-1", &[("l", "db.qcow2")]), "host-2")),
            Outcome::Applied
        );
        state.apply(&Command::DeleteVm { name: "db".into() });
        let unassign = |host: &str| Command::UnassignPool {
            pool: "l".into(),
            hosts: vec![host.into()],
        };
        rejected_with(&mut state, unassign("host-2"), "holds volume db.qcow2");
        assert_eq!(state.apply(&unassign("host-1")), Outcome::Applied);
        let mut shared = volume(Some("host-1"));
        if let Command::CreateVolume { pool, .. } = &mut shared {
            state.apply(&create("s", "/srv/s", &["host-1"]));
            *pool = "s".into();
        }
        rejected_with(&mut state, shared, "pool s is shared");
    }

    #[test]
    fn pools_are_assigned_unassigned_and_deleted_unless_a_vm_needs_them() {
        let mut state = with_hosts(&["host-1", "host-2", "host-3"]);
        state.apply(&create("p", "/srv/p", &["host-1"]));
        let hosts = |h: &[&str]| h.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
        let assign = Command::AssignPool {
            pool: "p".into(),
            hosts: hosts(&["host-2", "host-3"]),
        };
        assert_eq!(state.apply(&assign), Outcome::Applied);
        assert_eq!(state.apply(&assign), Outcome::Unchanged);
        assert_eq!(state.apply(&qcow2("p", "web.qcow2")), Outcome::Applied);
        state.apply(&create_vm(
            vm("web", "vm-1", &[("p", "web.qcow2")]),
            "host-2",
        ));
        let unassign = |h: &[&str]| Command::UnassignPool {
            pool: "p".into(),
            hosts: hosts(h),
        };
        rejected_with(
            &mut state,
            unassign(&["host-2"]),
            "VM web on host-2 uses pool p",
        );
        rejected_with(&mut state, unassign(&["host-9"]), "unknown host(s): host-9");
        assert_eq!(state.apply(&unassign(&["host-3"])), Outcome::Applied);
        let delete = Command::DeletePool { pool: "p".into() };
        rejected_with(&mut state, delete.clone(), "VM web on host-2 uses pool p");
        state.apply(&Command::DeleteVm { name: "web".into() });
        rejected_with(&mut state, unassign(&["host-1", "host-2"]), "no host left");
        assert_eq!(state.apply(&delete), Outcome::Applied);
        rejected_with(&mut state, delete, "no pool named \"p\"");
    }

    #[test]
    fn volumes_are_created_grown_and_deleted_unless_a_vm_uses_them() {
        let mut state = with_hosts(&["host-1"]);
        state.apply(&create("p", "/srv/p", &["host-1"]));
        let volume = |name: &str, size| Command::CreateVolume {
            host: None,
            pool: "p".into(),
            name: name.into(),
            format: qvdc_transport::protocol::VolumeFormat::Qcow2,
            size_bytes: size,
        };
        assert_eq!(
            state.apply(&volume("web.qcow2", 64 << 20)),
            Outcome::Applied
        );
        rejected_with(&mut state, volume("web.qcow2", 64 << 20), "already exists");
        rejected_with(&mut state, volume("../x", 1), "may only contain");
        rejected_with(&mut state, volume("big", 17 << 40), "1 byte to 16 TiB");
        let resize = |size| Command::ResizeVolume {
            pool: "p".into(),
            name: "web.qcow2".into(),
            size_bytes: size,
        };
        assert_eq!(state.apply(&resize(128 << 20)), Outcome::Applied);
        rejected_with(&mut state, resize(1 << 20), "can only grow");
        assert_eq!(state.pools["p"].volumes["web.qcow2"].size_bytes, 128 << 20);
        state.apply(&create_vm(
            vm("web", "vm-1", &[("p", "web.qcow2")]),
            "host-1",
        ));
        let delete = Command::DeleteVolume {
            pool: "p".into(),
            name: "web.qcow2".into(),
        };
        rejected_with(&mut state, delete.clone(), "uses volume p/web.qcow2");
        state.apply(&Command::DeleteVm { name: "web".into() });
        assert_eq!(state.apply(&delete), Outcome::Applied);
        rejected_with(&mut state, delete, "no volume");
    }

    #[test]
    fn networks_carry_vms_only_on_their_hosts_and_stay_while_used() {
        let mut state = with_hosts(&["host-1", "host-2"]);
        let net = |name: &str, bridge: &str, vlan: Option<(&str, u16)>| Command::CreateNetwork {
            spec: qvdc_transport::protocol::NetworkSpec {
                name: name.into(),
                bridge: bridge.into(),
                vlan: vlan.map(|v| v.1),
                uplink: vlan.map(|v| v.0.to_owned()),
            },
            hosts: vec!["host-1".into()],
        };
        assert_eq!(state.apply(&net("prod", "br-prod", None)), Outcome::Applied);
        rejected_with(&mut state, net("prod", "br-x", None), "already exists");
        rejected_with(
            &mut state,
            net("dmz", "br-prod", None),
            "already carries network prod",
        );
        rejected_with(
            &mut state,
            net("dmz", "br-dmz", Some(("eth0", 5000))),
            "between 1 and 4094",
        );
        rejected_with(
            &mut state,
            net("dmz", "a-very-long-bridge", None),
            "1 to 15",
        );
        let mut web = vm("web", "vm-1", &[]);
        web.nics.push(qvdc_transport::protocol::VmNic {
            network: "prod".into(),
            mac: None,
        });
        rejected_with(
            &mut state,
            create_vm(web.clone(), "host-2"),
            "network prod is not assigned to host host-2",
        );
        assert_eq!(state.apply(&create_vm(web, "host-1")), Outcome::Applied);
        let delete = Command::DeleteNetwork {
            network: "prod".into(),
        };
        rejected_with(&mut state, delete.clone(), "VM web on host-1 is attached");
        state.apply(&Command::DeleteVm { name: "web".into() });
        assert_eq!(state.apply(&delete), Outcome::Applied);
    }

    /// The per-host index says what a scan of every object would.
    fn assert_index_matches_a_scan(state: &DesiredState) {
        for host in state.hosts.keys() {
            let names = |it: Vec<String>| it;
            let pools: Vec<String> = state
                .pools_of_host(host)
                .map(|p| p.spec.name.clone())
                .collect();
            let scanned: Vec<String> = state
                .pools
                .values()
                .filter(|p| p.hosts.contains(host))
                .map(|p| p.spec.name.clone())
                .collect();
            assert_eq!(names(pools), scanned, "pools of {host}");
            let vms: Vec<&str> = state
                .vms_of_host(host)
                .map(|v| v.spec.name.as_str())
                .collect();
            let scanned: Vec<&str> = state
                .vms
                .values()
                .filter(|v| v.host == *host)
                .map(|v| v.spec.name.as_str())
                .collect();
            assert_eq!(vms, scanned, "VMs of {host}");
            let networks: Vec<&str> = state
                .networks_of_host(host)
                .map(|n| n.spec.name.as_str())
                .collect();
            let scanned: Vec<&str> = state
                .networks
                .values()
                .filter(|n| n.hosts.contains(host))
                .map(|n| n.spec.name.as_str())
                .collect();
            assert_eq!(networks, scanned, "networks of {host}");
        }
    }

    #[test]
    fn index_matches_a_scan_through_every_kind_of_change() {
        let mut state = with_hosts(&["host-1", "host-2", "host-3"]);
        let hosts = |h: &[&str]| h.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
        let net = |name: &str, hosts: Vec<String>| Command::CreateNetwork {
            spec: qvdc_transport::protocol::NetworkSpec {
                name: name.into(),
                bridge: format!("br-{name}"),
                vlan: None,
                uplink: None,
            },
            hosts,
        };
        let steps = [
            create("a", "/srv/a", &["host-1", "host-2"]),
            create("b", "/srv/b", &["host-3"]),
            Command::AssignPool {
                pool: "b".into(),
                hosts: hosts(&["host-1"]),
            },
            Command::UnassignPool {
                pool: "a".into(),
                hosts: hosts(&["host-2"]),
            },
            net("n1", hosts(&["host-1", "host-3"])),
            Command::AssignNetwork {
                network: "n1".into(),
                hosts: hosts(&["host-2"]),
            },
            Command::UnassignNetwork {
                network: "n1".into(),
                hosts: hosts(&["host-3"]),
            },
            qcow2("a", "v"),
            create_vm(vm("w1", "vm-1", &[("a", "v")]), "host-1"),
            create_vm(vm("w2", "vm-2", &[]), "host-2"),
            Command::DeleteVm { name: "w1".into() },
            Command::DeletePool { pool: "a".into() },
            Command::DeleteNetwork {
                network: "n1".into(),
            },
        ];
        for step in steps {
            let outcome = state.apply(&step);
            assert!(
                !matches!(outcome, Outcome::Rejected(_)),
                "{step:?}: {outcome:?}"
            );
            assert_index_matches_a_scan(&state);
        }
        let pools: Vec<_> = state
            .pools_of_host("host-1")
            .map(|p| p.spec.name.clone())
            .collect();
        assert_eq!(pools, ["b"]);
    }

    #[test]
    fn invalid_vms_are_rejected_without_changing_state() {
        let mut state = with_hosts(&["host-1", "host-2"]);
        state.apply(&create("p", "/srv/p", &["host-1"]));
        state.apply(&create_vm(vm("taken", "vm-1", &[]), "host-1"));
        let before = state.clone();
        let mut big = vm("big", "vm-2", &[]);
        big.vcpus = 0;
        let mut nic = vm("nic", "vm-3", &[]);
        nic.nics.push(qvdc_transport::protocol::VmNic {
            network: "prod".into(),
            mac: None,
        });
        let cases = [
            (
                create_vm(vm("taken", "vm-9", &[]), "host-1"),
                "already exists",
            ),
            (create_vm(vm("other", "vm-1", &[]), "host-1"), "is taken"),
            (
                create_vm(vm("x", "vm-4", &[]), "host-9"),
                "unknown host(s): host-9",
            ),
            (create_vm(big, "host-1"), "1 to 512 vCPUs"),
            (
                create_vm(vm("d", "vm-5", &[("nope", "v")]), "host-1"),
                "no pool named",
            ),
            (
                create_vm(vm("d", "vm-5", &[("p", "v")]), "host-2"),
                "not assigned to host host-2",
            ),
            (create_vm(nic, "host-1"), "network \"prod\" does not exist"),
        ];
        for (command, message) in cases {
            match state.apply(&command) {
                Outcome::Rejected(e) => assert!(e.to_string().contains(message), "{e}"),
                other => panic!("{command:?} was {other:?}"),
            }
        }
        assert_eq!(state, before);
    }

    #[test]
    fn registering_the_same_host_twice_changes_nothing() {
        let mut state = with_hosts(&["host-1"]);
        let again = Command::RegisterHost {
            host_id: "host-1".into(),
            inventory: inventory(),
        };
        assert_eq!(state.apply(&again), Outcome::Unchanged);
        assert_eq!(state.hosts.len(), 1);
    }

    #[test]
    fn pool_is_created_on_known_hosts() {
        let mut state = with_hosts(&["host-1", "host-2"]);
        assert_eq!(
            state.apply(&create("p", "/srv/p", &["host-1", "host-2"])),
            Outcome::Applied
        );
        let names: Vec<_> = state
            .pools_of_host("host-2")
            .map(|p| p.spec.name.clone())
            .collect();
        assert_eq!(names, ["p"]);
    }

    #[test]
    fn invalid_pools_are_rejected_without_changing_state() {
        let mut state = with_hosts(&["host-1"]);
        state.apply(&create("taken", "/srv", &["host-1"]));
        let before = state.clone();
        let cases = [
            (create("", "/srv", &["host-1"]), "must not be empty"),
            (create("a/b", "/srv", &["host-1"]), "may only contain"),
            (
                create(&"x".repeat(65), "/srv", &["host-1"]),
                "longer than 64",
            ),
            (create("taken", "/srv", &["host-1"]), "already exists"),
            (create("p", "/srv", &[]), "at least one host"),
            (create("p", "/srv", &["host-1", "host-1"]), "listed twice"),
            (create("p", "/srv", &["host-9"]), "unknown host(s): host-9"),
            (create("p", "srv", &["host-1"]), "absolute path"),
        ];
        for (command, message) in cases {
            match state.apply(&command) {
                Outcome::Rejected(e) => {
                    assert!(e.to_string().contains(message), "{e} !~ {message}")
                }
                other => panic!("{command:?} gave {other:?}"),
            }
        }
        assert_eq!(state, before);
    }

    /// `command` as an operator's request with id `id`; the request is the command itself.
    fn once(id: &str, command: Command) -> Command {
        Command::Once {
            request_id: id.into(),
            digest: RequestDigest::of(&command),
            command: Box::new(command),
        }
    }

    #[test]
    fn revocations_are_checked_kept_and_applied_once() {
        let mut state = DesiredState::default();
        let revoke = |serial: &str, role: &str, name: &str| {
            Command::RevokeCertificate(RevokedCertificate {
                serial: serial.into(),
                role: role.into(),
                name: name.into(),
            })
        };
        assert_eq!(
            state.apply(&revoke("7a3b", "host", "host-1")),
            Outcome::Applied
        );
        assert_eq!(
            state.apply(&revoke("7a3b", "host", "host-1")),
            Outcome::Unchanged
        );
        assert!(state.revoked.contains_key("7a3b"));
        for (command, message) in [
            (revoke("7A3B", "host", "h"), "is not written as \"7a3b\""),
            (
                revoke("xyz", "host", "h"),
                "not a certificate serial number",
            ),
            (revoke("01", "admin", "h"), "not server, host or operator"),
            (
                revoke("01", "host", &"h".repeat(300)),
                "longer than 256 bytes",
            ),
        ] {
            match state.apply(&command) {
                Outcome::Rejected(e) => assert!(e.to_string().contains(message), "{e}"),
                other => panic!("{command:?} gave {other:?}"),
            }
        }
        assert_eq!(state.revoked.len(), 1);
    }

    /// A request id is bound to the request it was first used for: reused for another, it
    /// is refused, whatever that first request's outcome was, and the first outcome stays.
    #[test]
    fn a_request_id_reused_for_another_request_is_refused() {
        let mut state = with_hosts(&["host-1"]);
        let first = once("r1", create("p", "/srv/p", &["host-1"]));
        assert_eq!(state.apply(&first), Outcome::Applied);
        let volume = |name: &str| Command::CreateVolume {
            host: None,
            pool: "p".into(),
            name: name.into(),
            format: VolumeFormat::Raw,
            size_bytes: 1 << 20,
        };
        assert_eq!(state.apply(&once("r2", volume("v"))), Outcome::Applied);
        let before = state.clone();
        let reused = once(
            "r1",
            Command::DeleteVolume {
                pool: "p".into(),
                name: "v".into(),
            },
        );
        let refused = state.apply(&reused);
        assert_eq!(
            refused,
            Outcome::Rejected(ValidationError::RequestIdReused("r1".into()))
        );
        let Outcome::Rejected(e) = refused else {
            unreachable!()
        };
        assert!(e.to_string().contains("use a new request id"), "{e}");
        assert_eq!(state, before, "nothing applied, nothing recorded");
        assert_eq!(
            state.apply(&first),
            Outcome::Applied,
            "the retry still replays"
        );
        // The same id, same command, but another digest (another request that asked for the
        // same change) is another request too.
        let Command::Once { command, .. } = first else {
            unreachable!()
        };
        let other = Command::Once {
            request_id: "r1".into(),
            digest: RequestDigest([7; 16]),
            command,
        };
        assert!(matches!(
            state.apply(&other),
            Outcome::Rejected(ValidationError::RequestIdReused(_))
        ));
    }

    #[test]
    fn a_retried_request_returns_its_first_outcome_and_applies_nothing() {
        let mut state = with_hosts(&["host-1"]);
        let request = once("r1", create("p", "/srv/p", &["host-1"]));
        assert_eq!(state.apply(&request), Outcome::Applied);
        let after_first = state.clone();
        assert_eq!(
            state.apply(&request),
            Outcome::Applied,
            "a retry is not 'already exists'"
        );
        assert_eq!(state, after_first, "the retry changed nothing");
        match state.apply(&once("r2", create("p", "/srv/p", &["host-1"]))) {
            Outcome::Rejected(ValidationError::PoolExists(_)) => {}
            other => panic!("a new request for the same pool is a duplicate: {other:?}"),
        }
    }

    /// A batch applies its commands in order, each against the state the ones before it
    /// left, with its own outcome; a batch inside a batch is refused whole.
    #[test]
    fn a_batch_applies_each_command_on_its_own() {
        let mut state = with_hosts(&["host-1"]);
        let batch = Command::Batch(Arc::from(vec![
            once("r1", create("p", "/srv/p", &["host-1"])),
            once("r2", create("p", "/srv/p", &["host-1"])),
            once("r1", create("p", "/srv/p", &["host-1"])),
            create("q", "/srv/q", &["host-1"]),
        ]));
        match state.apply(&batch) {
            Outcome::Batch(outcomes) => {
                assert_eq!(outcomes[0], Outcome::Applied);
                assert!(
                    matches!(
                        &outcomes[1],
                        Outcome::Rejected(ValidationError::PoolExists(_))
                    ),
                    "the second create sees the first: {:?}",
                    outcomes[1]
                );
                assert_eq!(outcomes[2], Outcome::Applied, "a retry in the same batch");
                assert_eq!(outcomes[3], Outcome::Applied);
            }
            other => panic!("a batch has one outcome per command: {other:?}"),
        }
        assert!(state.pools.contains_key("p") && state.pools.contains_key("q"));
        let before = state.clone();
        let inner = Command::Batch(Arc::from(vec![create("r", "/srv/r", &["host-1"])]));
        let nested = Command::Batch(Arc::from(vec![inner]));
        assert_eq!(
            state.apply(&nested),
            Outcome::Rejected(ValidationError::NestedRequest)
        );
        assert_eq!(state, before);
    }

    #[test]
    fn a_rejected_request_stays_rejected_when_retried() {
        let mut state = with_hosts(&["host-1"]);
        let request = once("r1", create("p", "/srv/p", &["host-9"]));
        let first = state.apply(&request);
        assert!(matches!(
            first,
            Outcome::Rejected(ValidationError::UnknownHosts(_))
        ));
        state.apply(&Command::RegisterHost {
            host_id: "host-9".into(),
            inventory: inventory(),
        });
        assert_eq!(
            state.apply(&request),
            first,
            "the retry gets the original answer"
        );
        assert!(state.pools.is_empty());
    }

    #[test]
    fn request_ids_are_checked_and_forgotten_beyond_the_bound() {
        let mut state = with_hosts(&["host-1"]);
        let bad = once("", create("p", "/srv/p", &["host-1"]));
        assert_eq!(
            state.apply(&bad),
            Outcome::Rejected(ValidationError::BadRequestId)
        );
        let nested = once("a", once("b", create("p", "/srv/p", &["host-1"])));
        assert_eq!(
            state.apply(&nested),
            Outcome::Rejected(ValidationError::NestedRequest)
        );
        for i in 0..REQUESTS_REMEMBERED_MAX + 5 {
            let register = Command::RegisterHost {
                host_id: "host-1".into(),
                inventory: inventory(),
            };
            state.apply(&once(&format!("id-{i}"), register));
        }
        assert_eq!(state.requests.len(), REQUESTS_REMEMBERED_MAX);
        assert!(
            state.requests.get("id-0").is_none(),
            "the oldest are forgotten first"
        );
        assert!(state
            .requests
            .get(&format!("id-{}", REQUESTS_REMEMBERED_MAX + 4))
            .is_some());
    }

    fn outcome_of(i: usize) -> Outcome {
        if i.is_multiple_of(3) {
            Outcome::Rejected(ValidationError::NoSuchPool(format!("p{i}")))
        } else {
            Outcome::Applied
        }
    }

    #[test]
    fn the_request_log_forgets_exactly_the_oldest_and_its_copies_stay_as_they_were() {
        let mut log = RequestLog::default();
        let total = REQUESTS_REMEMBERED_MAX + 2 * REQUEST_GENERATION + 7;
        let mut copies = Vec::new();
        for i in 0..total {
            log.record(
                &format!("id-{i}"),
                RequestDigest([i as u8; 16]),
                outcome_of(i),
            );
            if i.is_multiple_of(997) {
                copies.push((i, log.clone()));
            }
        }
        assert_eq!(log.len(), REQUESTS_REMEMBERED_MAX);
        let first_kept = total - REQUESTS_REMEMBERED_MAX;
        assert_eq!(log.get(&format!("id-{}", first_kept - 1)), None);
        for i in first_kept..total {
            assert_eq!(log.get(&format!("id-{i}")), Some(&outcome_of(i)), "id-{i}");
        }
        // Recording into the log never changed a copy taken earlier.
        for (at, copy) in copies {
            let kept_from = (at + 1).saturating_sub(REQUESTS_REMEMBERED_MAX);
            assert_eq!(copy.len(), at + 1 - kept_from, "copy at id-{at}");
            assert_eq!(copy.get(&format!("id-{at}")), Some(&outcome_of(at)));
            assert_eq!(copy.get(&format!("id-{}", at + 1)), None);
            assert_eq!(
                copy.get(&format!("id-{kept_from}")),
                Some(&outcome_of(kept_from))
            );
            if kept_from > 0 {
                assert_eq!(copy.get(&format!("id-{}", kept_from - 1)), None);
            }
        }
    }

    #[test]
    fn the_request_log_encodes_as_outcomes_by_id_and_ids_oldest_first() {
        let mut log = RequestLog::default();
        let total = REQUESTS_REMEMBERED_MAX + REQUEST_GENERATION / 2 + 3;
        for i in 0..total {
            log.record(
                &format!("id-{i}"),
                RequestDigest([i as u8; 16]),
                outcome_of(i),
            );
        }
        // The encoding (snapshots, the state digest) does not depend on the generations.
        let kept: Vec<String> = (total - REQUESTS_REMEMBERED_MAX..total)
            .map(|i| format!("id-{i}"))
            .collect();
        let by_id: BTreeMap<&str, (RequestDigest, Outcome)> = kept
            .iter()
            .map(|id| {
                let i: usize = id[3..].parse().unwrap();
                (id.as_str(), (RequestDigest([i as u8; 16]), outcome_of(i)))
            })
            .collect();
        let bytes = codec::to_bytes(&log).unwrap();
        assert_eq!(bytes, codec::to_bytes(&(by_id, &kept)).unwrap());
        let decoded: RequestLog = codec::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, log);
        assert_eq!(decoded.get(&kept[0]), log.get(&kept[0]));
        assert_eq!(
            decoded.get(&format!("id-{}", total - REQUESTS_REMEMBERED_MAX - 1)),
            None
        );

        let mismatched =
            codec::to_bytes(&(BTreeMap::<&str, (RequestDigest, Outcome)>::new(), vec!["x"]))
                .unwrap();
        let refused = codec::from_bytes::<RequestLog>(&mismatched).unwrap_err();
        assert!(refused.to_string().contains("request log"), "{refused}");
    }
}
