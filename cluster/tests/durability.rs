//! Durability under crashes, with real `qvdc server` processes on loopback: clients keep
//! creating pools while nodes are `kill -9`ed and restarted. Afterwards every acknowledged pool
//! must exist, no pool may appear that no client asked for, all nodes must converge on one
//! state, and the recorded client history must be linearizable (checked against the
//! `Registry` model of `qvdc_simulation::linearizability`).
//!
//! On failure the nodes' logs (`node-N.log`) are kept and their directory is printed.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use qvdc_cluster::{Client, ClientError};
use qvdc_simulation::linearizability::{self, Operation, Registry, RegistryOp, RegistryRet};
use qvdc_transport::{
    protocol::{ApiErrorKind, ApiRequest, ApiResponse, ClusterStatus, PoolSource, PoolSpec},
    tls::{Identity, Role},
    Endpoint,
};

mod support;

use support::{Nodes, NODES};

const OPERATOR: &str = "tester";
/// A registered host (that never heartbeats): every pool is assigned to it.
const HOST: &str = "durability-host";
/// Clients writing at the same time.
const WRITERS: u64 = 4;
/// Clients listing the pools at the same time, and their pause between two lists.
const READERS: u64 = 1;
const READ_PAUSE: Duration = Duration::from_millis(250);
/// How long a client keeps retrying one request (redirects, elections) before giving up.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a writer waits for an answer before it records the outcome as unknown and dials
/// again. Shorter than the QUIC idle timeout (4 s), which is how long a request sent on a
/// connection to a killed node would otherwise hang.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// How long a `cluster status` query to one node may take.
const STATUS_WAIT: Duration = Duration::from_millis(1_500);
/// How long the nodes get to agree on one state at the end.
const CONVERGE_WAIT: Duration = Duration::from_secs(20);
/// How long the cluster gets to commit a write after a crash.
const RECOVERY_WAIT: Duration = Duration::from_secs(15);
/// Client numbers of the operations that are not the writers': one probe per crash, and the
/// reads at the end.
const PROBE_CLIENT: u64 = 100;
const FINAL_READER: u64 = 1_000;

/// The history's logical clock: every invocation and every answer takes the next tick, so
/// ticks order the events as they happened in this process.
#[derive(Default)]
struct Clock(AtomicU64);

impl Clock {
    fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }
}

/// What a client was answered.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// `PoolCreated`.
    Created,
    /// The cluster said the pool already existed.
    AlreadyExists,
    /// The pools listed.
    Names(BTreeSet<String>),
    /// The cluster answered no (other than "already exists"): nothing was applied.
    Refused(String),
    /// No answer: the operation may or may not have taken effect.
    Unknown(String),
}

#[derive(Debug, Clone)]
struct Record {
    client: u64,
    call: u64,
    /// Meaningless for an unknown outcome.
    returned: u64,
    op: RegistryOp,
    answer: Answer,
}

/// Every client operation, shared by the tasks that make them.
#[derive(Clone, Default)]
struct History {
    clock: Arc<Clock>,
    records: Arc<Mutex<Vec<Record>>>,
}

impl History {
    /// Runs `operation` between two ticks and records what it answered.
    async fn run(
        &self,
        client: u64,
        op: RegistryOp,
        operation: impl Future<Output = Answer>,
    ) -> Answer {
        let call = self.clock.tick();
        let answer = operation.await;
        let returned = self.clock.tick();
        self.records.lock().unwrap().push(Record {
            client,
            call,
            returned,
            op,
            answer: answer.clone(),
        });
        answer
    }

    fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Creates invoked before `tick` and answered after it (or never). Call it once every
    /// operation invoked before `tick` has been recorded.
    fn creates_in_flight_at(&self, tick: u64) -> usize {
        let records = self.records.lock().unwrap();
        let across = |r: &&Record| {
            let unanswered = matches!(r.answer, Answer::Unknown(_));
            r.call < tick && (unanswered || r.returned > tick)
        };
        let creates = records.iter().filter(|r| r.op != RegistryOp::Read);
        creates.filter(across).count()
    }
}

/// What a task needs to reach the cluster; cheap to clone.
#[derive(Clone)]
struct Dialer {
    identity: Arc<Identity>,
    addrs: Vec<SocketAddr>,
}

impl Dialer {
    fn endpoint(&self) -> Endpoint {
        Endpoint::bind("127.0.0.1:0".parse().unwrap(), &self.identity, false).unwrap()
    }

    /// A client of the whole cluster, on its own endpoint.
    fn client(&self) -> Client {
        Client::new(self.endpoint(), self.addrs.clone(), CLIENT_TIMEOUT)
    }

    /// A client that knows only node `id`.
    fn node_client(&self, id: usize) -> Client {
        Client::new(self.endpoint(), vec![self.addrs[id - 1]], STATUS_WAIT)
    }
}

/// Three nodes with a registered host. Keeps the nodes' logs when a test fails.
struct Cluster {
    nodes: Nodes,
    dialer: Dialer,
    history: History,
}

impl Cluster {
    async fn start() -> Self {
        let nodes = Nodes::start(&[(Role::Operator, OPERATOR), (Role::Host, HOST)], true);
        let dialer = Dialer {
            identity: Arc::new(nodes.identity(OPERATOR)),
            addrs: nodes.addrs.iter().map(|a| a.parse().unwrap()).collect(),
        };
        let cluster = Self {
            dialer,
            nodes,
            history: History::default(),
        };
        cluster.register_host().await;
        cluster
    }

    /// Registers [`HOST`] so that pools can be assigned to it.
    async fn register_host(&self) {
        self.nodes.register_host(HOST).await;
    }

    /// Starts `WRITERS` clients that create pools, `write_pause` apart, and `READERS` that
    /// list them, until `stop` is set.
    fn start_clients(
        &self,
        stop: &Arc<AtomicBool>,
        write_pause: Duration,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for who in 1..=WRITERS + READERS {
            let (stop, dialer, history) = (stop.clone(), self.dialer.clone(), self.history.clone());
            tasks.push(match who <= WRITERS {
                true => tokio::spawn(write_until(stop, dialer, history, who, write_pause)),
                false => tokio::spawn(read_until(stop, dialer, history, who)),
            });
        }
        tasks
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let replacement = tempfile::tempdir().expect("temp dir");
            let dir = std::mem::replace(&mut self.nodes.dir, replacement).keep();
            eprintln!("the nodes' logs are kept in {}", dir.display());
        }
    }
}

/// Asks to create pool `name` once (the client retries with the same request id while it
/// is within its timeout) and records the outcome.
async fn create_pool(client: &mut Client, history: &History, who: u64, name: String) -> Answer {
    let request_id = client.new_request_id();
    let request = ApiRequest::PoolCreate {
        request_id: request_id.clone(),
        spec: PoolSpec {
            scope: Default::default(),
            name: name.clone(),
            source: PoolSource::Dir {
                path: "/srv/durability".into(),
            },
        },
        hosts: vec![HOST.into()],
    };
    let op = RegistryOp::Create { name, request_id };
    let asked = async {
        match tokio::time::timeout(ANSWER_WAIT, client.request(request)).await {
            Ok(Ok(ApiResponse::PoolCreated { .. })) => Answer::Created,
            Ok(Ok(other)) => Answer::Unknown(format!("unexpected answer {other:?}")),
            Ok(Err(ClientError::Rejected(e))) if e.kind == ApiErrorKind::AlreadyExists => {
                Answer::AlreadyExists
            }
            Ok(Err(ClientError::Rejected(e))) => Answer::Refused(format!("{:?}: {e}", e.kind)),
            Ok(Err(ClientError::Forbidden(reason))) => {
                Answer::Refused(format!("forbidden: {reason}"))
            }
            Ok(Err(e)) => Answer::Unknown(e.to_string()),
            Err(_) => Answer::Unknown(format!("no answer within {ANSWER_WAIT:?}")),
        }
    };
    history.run(who, op, asked).await
}

/// Lists the pools (through the leader) and records the answer; also returns every name
/// listed, duplicates included.
async fn list_pools(client: &mut Client, history: &History, who: u64) -> (Answer, Vec<String>) {
    let mut listed = Vec::new();
    let asked = async {
        match tokio::time::timeout(ANSWER_WAIT, client.request(ApiRequest::PoolList)).await {
            Ok(Ok(ApiResponse::Pools(pools))) => {
                listed = pools.into_iter().map(|p| p.spec.name).collect();
                Answer::Names(listed.iter().cloned().collect())
            }
            Ok(Ok(other)) => Answer::Unknown(format!("unexpected answer {other:?}")),
            Ok(Err(e)) => Answer::Unknown(e.to_string()),
            Err(_) => Answer::Unknown(format!("no answer within {ANSWER_WAIT:?}")),
        }
    };
    let answer = history.run(who, RegistryOp::Read, asked).await;
    (answer, listed)
}

/// One writer: creates a new pool after the other, `pause` apart, until `stop` is set, never
/// retrying a request on its own. After an unknown outcome it starts over with a fresh
/// connection.
async fn write_until(
    stop: Arc<AtomicBool>,
    dialer: Dialer,
    history: History,
    who: u64,
    pause: Duration,
) {
    let mut client = dialer.client();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let answer = create_pool(&mut client, &history, who, format!("w{who}-{n}")).await;
        n += 1;
        if matches!(answer, Answer::Unknown(_)) {
            client = dialer.client();
        }
        // Unpaced writers go straight on: even a zero sleep waits for the timer's next
        // millisecond, and with all writers waiting at once the kill found no write in
        // flight (seen once in a CI run, about one in forty by that arithmetic).
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// One reader: lists the pools every [`READ_PAUSE`] until `stop` is set.
async fn read_until(stop: Arc<AtomicBool>, dialer: Dialer, history: History, who: u64) {
    let mut client = dialer.client();
    while !stop.load(Ordering::SeqCst) {
        let (answer, _) = list_pools(&mut client, &history, who).await;
        if matches!(answer, Answer::Unknown(_)) {
            client = dialer.client();
        }
        tokio::time::sleep(READ_PAUSE).await;
    }
}

/// What node `id` says about the cluster, answered by that node itself.
async fn status_of(dialer: &Dialer, id: usize) -> Option<ClusterStatus> {
    support::status_of(dialer.node_client(id), id).await
}

async fn confirmed_leader(dialer: &Dialer) -> usize {
    let started = Instant::now();
    while started.elapsed() < RECOVERY_WAIT {
        for id in 1..=NODES {
            if let Some(status) = status_of(dialer, id).await {
                if status.leader == Some(id as u64) {
                    return id;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no node confirmed it leads within {RECOVERY_WAIT:?}");
}

/// Creates probe pools on fresh connections until one is acknowledged; returns how long
/// that took. Every attempt is part of the history.
async fn first_commit(dialer: &Dialer, history: &History, who: u64, label: &str) -> Duration {
    let started = Instant::now();
    for attempt in 0.. {
        let name = format!("probe{who}-{attempt}");
        let answer = create_pool(&mut dialer.client(), history, who, name).await;
        match answer {
            Answer::Created => return started.elapsed(),
            Answer::Refused(_) | Answer::AlreadyExists => {
                panic!("a probe write {label} was answered {answer:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
        assert!(
            started.elapsed() < RECOVERY_WAIT,
            "no write was acknowledged within {RECOVERY_WAIT:?} {label} (last answer: {answer:?})"
        );
    }
    unreachable!()
}

/// Waits until every node answers with the same applied index and state digest.
async fn converged(dialer: &Dialer) -> ClusterStatus {
    let ids: Vec<usize> = (1..=NODES).collect();
    support::converged(&ids, |id| dialer.node_client(id), CONVERGE_WAIT).await
}

/// The pools listed once two lists in a row agree (the leader's pool supervisors follow the
/// committed state a moment later); both lists are part of the history.
async fn settled_pool_list(dialer: &Dialer, history: &History) -> Vec<String> {
    let started = Instant::now();
    let mut previous: Option<Vec<String>> = None;
    loop {
        let (answer, mut listed) = list_pools(&mut dialer.client(), history, FINAL_READER).await;
        listed.sort();
        if matches!(answer, Answer::Names(_)) {
            if previous.as_ref() == Some(&listed) {
                return listed;
            }
            previous = Some(listed);
        }
        assert!(
            started.elapsed() < CONVERGE_WAIT,
            "the pool list did not settle within {CONVERGE_WAIT:?} (last answer: {answer:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Converts the records into the checker's operations. A refused create changed nothing, so
/// it is left out (and checked to be absent separately).
fn operations(records: &[Record]) -> Vec<Operation<Registry>> {
    records
        .iter()
        .filter_map(|r| {
            let ret = match &r.answer {
                Answer::Created => RegistryRet::Created,
                Answer::AlreadyExists => RegistryRet::AlreadyExists,
                Answer::Names(names) => RegistryRet::Names(names.clone()),
                Answer::Refused(_) => return None,
                Answer::Unknown(_) => {
                    return Some(Operation::unknown(r.client, r.call, r.op.clone()))
                }
            };
            Some(Operation::answered(
                r.client,
                r.call,
                r.returned,
                r.op.clone(),
                ret,
            ))
        })
        .collect()
}

/// The checks after a crash test: one state on every node, every acknowledged pool listed
/// once, nothing listed that no client asked for, nothing refused applied, and a linearizable
/// history.
async fn verify(cluster: &Cluster) {
    let status = converged(&cluster.dialer).await;
    let listed = settled_pool_list(&cluster.dialer, &cluster.history).await;
    // Agreement again, now that the list was taken: nothing changed in between.
    let after = converged(&cluster.dialer).await;
    assert_eq!(
        (status.last_applied, status.state_digest),
        (after.last_applied, after.state_digest),
        "the state changed while the pools were listed, although no client was writing"
    );
    let records = cluster.history.records();

    let mut problems = Vec::new();
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for name in &listed {
        *counts.entry(name).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    if !duplicated.is_empty() {
        let duplicated = some(&duplicated);
        problems.push(format!("pools listed more than once: {duplicated}"));
    }
    let listed: BTreeSet<String> = listed.into_iter().collect();
    let mut attempted = BTreeSet::new();
    let (mut acknowledged, mut unknown, mut refused, mut already) =
        (BTreeSet::new(), BTreeSet::new(), Vec::new(), Vec::new());
    for r in &records {
        let RegistryOp::Create { name, .. } = &r.op else {
            continue;
        };
        attempted.insert(name.clone());
        match &r.answer {
            Answer::Created => drop(acknowledged.insert(name.clone())),
            Answer::Unknown(_) => drop(unknown.insert(name.clone())),
            Answer::AlreadyExists => already.push(name.clone()),
            Answer::Refused(why) => refused.push((name.clone(), why.clone())),
            Answer::Names(_) => unreachable!("a create is not answered with a list"),
        }
    }
    let missing: Vec<_> = acknowledged.difference(&listed).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "acknowledged pools are missing: {}",
            some(&missing)
        ));
    }
    let phantoms: Vec<_> = listed.difference(&attempted).collect();
    if !phantoms.is_empty() {
        problems.push(format!("pools no client asked for: {}", some(&phantoms)));
    }
    if !already.is_empty() {
        problems.push(format!(
            "creates answered \"already exists\", although each name was asked for once \
             (a retried request applied twice?): {}",
            some(&already)
        ));
    }
    if !refused.is_empty() {
        problems.push(format!("valid creates were refused: {}", some(&refused)));
    }
    let applied_refused: Vec<_> = refused.iter().filter(|(n, _)| listed.contains(n)).collect();
    if !applied_refused.is_empty() {
        let applied = some(&applied_refused);
        problems.push(format!("refused creates were applied: {applied}"));
    }

    let history = operations(&records);
    let started = Instant::now();
    let checked = linearizability::check(&Registry::for_history(&history), &history);
    let check_took = started.elapsed();
    if let Err(violation) = checked {
        problems.push(format!(
            "the client history is not linearizable: {violation}"
        ));
    }

    let reads = records.iter().filter(|r| r.op == RegistryOp::Read).count();
    println!(
        "{} operations: {} creates ({} acknowledged, {} unknown of which {} applied, {} refused), \
         {reads} reads; {} pools; all nodes at index {:?}, digest {:#x}; \
         linearizability checked in {check_took:?}",
        records.len(),
        attempted.len(),
        acknowledged.len(),
        unknown.len(),
        unknown.intersection(&listed).count(),
        refused.len(),
        listed.len(),
        status.last_applied,
        status.state_digest,
    );
    assert!(
        !acknowledged.is_empty(),
        "no write was acknowledged at all: the test checked nothing"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// How many `items` there are and the first few of them.
fn some<T: std::fmt::Debug>(items: &[T]) -> String {
    const SHOWN: usize = 20;
    let more = match items.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let shown = &items[..items.len().min(SHOWN)];
    format!("{} of them: {shown:?}{more}", items.len())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Acknowledged writes survive leader crashes: while clients keep creating pools, the
/// leader is `kill -9`ed ten times, each time after a new leader committed a write and the
/// killed node was restarted and given a moment to rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_repeated_leader_kills() {
    const KILLS: usize = 10;
    const REJOIN: Duration = Duration::from_millis(1_500);
    // The checker's time and memory grow with the square of the number of creates (each
    // state it remembers holds every name): pace the writers.
    const WRITE_PAUSE: Duration = Duration::from_millis(20);
    let started = Instant::now();
    let mut cluster = Cluster::start().await;
    let dialer = cluster.dialer.clone();
    first_commit(&dialer, &cluster.history, PROBE_CLIENT, "at start").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = cluster.start_clients(&stop, WRITE_PAUSE);
    let (mut failovers, mut kill_ticks) = (Vec::new(), Vec::new());
    for round in 0..KILLS {
        let leader = confirmed_leader(&dialer).await;
        kill_ticks.push(cluster.history.clock.tick());
        cluster.nodes.kill(leader);
        let label = format!("after kill {round} (node {leader})");
        let who = PROBE_CLIENT + 1 + round as u64;
        failovers.push(first_commit(&dialer, &cluster.history, who, &label).await);
        cluster.nodes.restart(leader);
        tokio::time::sleep(REJOIN).await;
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("writer panicked");
    }
    let writing = started.elapsed();
    let in_flight: Vec<usize> = kill_ticks
        .iter()
        .map(|&tick| cluster.history.creates_in_flight_at(tick))
        .collect();
    assert!(
        in_flight.iter().sum::<usize>() > 0,
        "no create was in flight at any of the kills"
    );
    verify(&cluster).await;
    failovers.sort();
    println!(
        "{KILLS} leader kills: kill -> next acknowledged write p50 {} max {}; \
         creates in flight at each kill {in_flight:?}; writing phase {:.1} s, whole test {:.1} s",
        ms(failovers[KILLS / 2]),
        ms(*failovers.last().unwrap()),
        writing.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Acknowledged writes survive losing every node at once: clients create pools for two
/// seconds, all three nodes are `kill -9`ed with writes in flight and restarted, and every
/// acknowledged pool must still be there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_cluster_kill_loses_no_acknowledged_write() {
    let started = Instant::now();
    let mut cluster = Cluster::start().await;
    let dialer = cluster.dialer.clone();
    first_commit(&dialer, &cluster.history, PROBE_CLIENT, "at start").await;
    let stop = Arc::new(AtomicBool::new(false));
    // Unpaced: some write is always in flight.
    let writers = cluster.start_clients(&stop, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kill_tick = cluster.history.clock.tick();
    for id in 1..=NODES {
        cluster.nodes.kill(id);
    }
    stop.store(true, Ordering::SeqCst);
    for id in 1..=NODES {
        cluster.nodes.restart(id);
    }
    let recovery = first_commit(&dialer, &cluster.history, PROBE_CLIENT + 1, "after restart").await;
    for writer in writers {
        writer.await.expect("writer panicked");
    }
    let in_flight = cluster.history.creates_in_flight_at(kill_tick);
    assert!(
        in_flight > 0,
        "no create was in flight when the nodes were killed"
    );
    verify(&cluster).await;
    println!(
        "all nodes killed and restarted with {in_flight} creates in flight: \
         restart -> first acknowledged write {}; whole test {:.1} s",
        ms(recovery),
        started.elapsed().as_secs_f64()
    );
}
