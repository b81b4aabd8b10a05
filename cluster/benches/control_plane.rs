//! Control-plane benchmark: three `qvdc server` processes on loopback with real QUIC, mutual
//! TLS and fsync. Measures committed writes per second and their latency at 1, 16 and 256
//! concurrent clients, then failover: the leader is `kill -9`ed and the time until the next
//! write commits is measured, repeatedly.
//!
//! Run: `cargo bench -p qvdc-cluster --bench control_plane` (QVDC_BENCH_KILLS=N to change
//! the number of failovers, QVDC_BENCH_SECONDS=N the seconds per concurrency level,
//! QVDC_BENCH_WRITE=toggle|create to run one workload only, QVDC_BENCH_ENDPOINT=own to give
//! each client its own UDP socket, QVDC_BENCH_LOGS=1 to keep the nodes' logs,
//! QVDC_BENCH_CLIENTS="1 16 256" the client counts, QVDC_BENCH_STATE=N to create N pools
//! before the failovers, QVDC_BENCH_KILLS=0 to skip them).

use std::time::{Duration, Instant};

use qvdc_cluster::Client;
use qvdc_transport::{
    protocol::{ApiRequest, ApiResponse, PoolSource, PoolSpec},
    tls::Role,
};

#[path = "../tests/support/mod.rs"]
mod support;

use support::Nodes;

const HOST: &str = "bench-host";
/// A second host, assigned and unassigned by the toggle workload (a pool keeps `HOST`).
const HOST_2: &str = "bench-host-2";
const OPERATOR: &str = "bench";

/// QVDC_BENCH_LOGS=1 keeps each node's log (and data) after the run, even a failed one, and
/// prints where; by default the nodes' output is dropped and their directory removed.
/// QVDC_BENCH_METRICS=1 has every node serve its metrics and scrapes them all every second
/// (Prometheus's default is every 15 s), to measure what metrics cost.
fn start() -> Nodes {
    let keep = std::env::var("QVDC_BENCH_LOGS").as_deref() == Ok("1");
    let others = [
        (Role::Operator, OPERATOR),
        (Role::Host, HOST),
        (Role::Host, HOST_2),
    ];
    let mut nodes = if std::env::var("QVDC_BENCH_METRICS").as_deref() == Ok("1") {
        let nodes = Nodes::start_measured(&others, keep);
        let ports = nodes.metrics_ports.clone();
        std::thread::spawn(move || loop {
            for port in &ports {
                scrape(*port);
            }
            std::thread::sleep(Duration::from_secs(1));
        });
        println!("metrics served by every node and scraped every second");
        nodes
    } else {
        Nodes::start(&others, keep)
    };
    if keep {
        nodes.dir.disable_cleanup(true);
        println!("node logs and data: {}", nodes.dir.path().display());
    }
    nodes
}

/// One `GET /metrics`; the answer is read and dropped.
fn scrape(port: u16) {
    use std::io::{Read, Write};
    if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n");
        let _ = stream.read_to_end(&mut Vec::new());
    }
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

fn new_client(nodes: &Nodes) -> Client {
    nodes.client(OPERATOR, &[1, 2, 3], CLIENT_TIMEOUT)
}

/// The throughput clients share one UDP socket, each with its own QUIC connection and TLS
/// session: the servers do the same work as for clients on 256 machines, and the load
/// generator, which runs on the same two cores, does less. QVDC_BENCH_ENDPOINT=own gives each
/// client its own socket (measured 15–40% fewer writes/s at 256 clients on this machine).
fn shared_endpoint(nodes: &Nodes) -> Option<qvdc_transport::Endpoint> {
    (std::env::var("QVDC_BENCH_ENDPOINT").as_deref() != Ok("own")).then(|| nodes.endpoint(OPERATOR))
}

async fn create_pool(client: &mut Client, name: String) -> Duration {
    let spec = PoolSpec {
        scope: Default::default(),
        name,
        source: PoolSource::Dir {
            path: "/srv/bench".into(),
        },
    };
    let request = ApiRequest::PoolCreate {
        request_id: client.new_request_id(),
        spec,
        hosts: vec![HOST.into()],
    };
    let started = Instant::now();
    match client.request(request).await {
        Ok(ApiResponse::PoolCreated { .. }) => started.elapsed(),
        other => panic!("write failed: {other:?}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// What each client writes, one committed write at a time.
#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// Create a new pool every time: the desired state grows by one object (and the leader by
    /// one pool supervisor) per write.
    Create,
    /// Unassign and re-assign the host of the client's own pool: a steady set of objects, each
    /// write changing one of them.
    Toggle,
}

async fn toggle_pool(client: &mut Client, pool: &str, assign: bool) -> Duration {
    let request_id = client.new_request_id();
    let request = ApiRequest::pool_hosts(request_id, pool.to_owned(), vec![HOST_2.into()], assign);
    let started = Instant::now();
    match client.request(request).await {
        Ok(ApiResponse::Done) => started.elapsed(),
        other => panic!("write failed: {other:?}"),
    }
}

async fn throughput(
    cluster: &Nodes,
    workload: Workload,
    clients: usize,
    seconds: u64,
    round: usize,
) {
    let mut ready = Vec::new();
    let endpoint = shared_endpoint(cluster);
    for c in 0..clients {
        let mut client = match &endpoint {
            Some(endpoint) => cluster.client_on(endpoint.clone(), &[1, 2, 3], CLIENT_TIMEOUT),
            None => new_client(cluster),
        };
        let own = format!("r{round}-c{c}");
        if workload == Workload::Toggle {
            create_pool(&mut client, own.clone()).await;
        }
        ready.push((client, own));
    }
    let mut observer = new_client(cluster);
    let before = leadership(&mut observer).await;
    let cpu_before = cluster.cpu_time();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (mut client, own) in ready {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while Instant::now() < deadline {
                latencies.push(match workload {
                    Workload::Create => create_pool(&mut client, format!("{own}-{n}")).await,
                    Workload::Toggle => toggle_pool(&mut client, &own, n % 2 == 0).await,
                });
                n += 1;
            }
            latencies
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cluster.cpu_time() - cpu_before;
    let after = leadership(&mut observer).await;
    all.sort();
    println!(
        "{clients:>4} clients: {:>8.0} writes/s   p50 {:>10}   p99 {:>10}   servers' CPU {:>4.0} µs/write   ({} writes in {elapsed:.1} s){}",
        all.len() as f64 / elapsed,
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        cpu.as_secs_f64() * 1e6 / all.len() as f64,
        all.len(),
        if after == before {
            String::new()
        } else {
            format!("   LEADER CHANGED: node {} term {} -> node {} term {}", before.0, before.1, after.0, after.1)
        }
    );
}

async fn leader(client: &mut Client) -> usize {
    leadership(client).await.0
}

/// The leader and its term, as the node the client talks to knows them.
async fn leadership(client: &mut Client) -> (usize, u64) {
    loop {
        if let Ok(ApiResponse::ClusterStatus(s)) = client.request(ApiRequest::ClusterStatus).await {
            if let Some(leader) = s.leader {
                return (leader as usize, s.term);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn failover(cluster: &mut Nodes, kills: usize) {
    let mut times = Vec::new();
    let mut rejoins = Vec::new();
    for k in 0..kills {
        let mut client = new_client(cluster);
        let victim = leader(&mut client).await;
        create_pool(&mut client, format!("before-kill-{k}")).await;
        cluster.kill(victim);
        let killed = Instant::now();
        let mut fresh = new_client(cluster);
        create_pool(&mut fresh, format!("after-kill-{k}")).await;
        times.push(killed.elapsed());
        // Each kill is a single failure: the next one waits until the restarted node holds
        // the same state as the others again (with a large state that takes a while, and
        // a kill before then would leave no healthy majority).
        let restarted = Instant::now();
        cluster.restart(victim);
        let nodes = &*cluster;
        support::converged(
            &[1, 2, 3],
            |id| nodes.client(OPERATOR, &[id], Duration::from_secs(30)),
            Duration::from_secs(120),
        )
        .await;
        rejoins.push(restarted.elapsed());
    }
    times.sort();
    rejoins.sort();
    println!(
        "failover (leader kill -9 -> next committed write), {kills} kills: p50 {}   p99 {}   max {}",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap())
    );
    println!(
        "rejoin (restart of the killed node -> all three at one index and digest): p50 {}   max {}",
        ms(percentile(&rejoins, 0.5)),
        ms(*rejoins.last().unwrap())
    );
}

/// Grows the state to about `objects` pools (256 clients creating at once) before the
/// failovers, which then measure an election and catch-up with a large state.
async fn fill(cluster: &Nodes, objects: usize) {
    const WRITERS: usize = 256;
    let started = Instant::now();
    let endpoint = shared_endpoint(cluster);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = match &endpoint {
            Some(endpoint) => cluster.client_on(endpoint.clone(), &[1, 2, 3], CLIENT_TIMEOUT),
            None => new_client(cluster),
        };
        tasks.push(tokio::spawn(async move {
            for n in (w..objects).step_by(WRITERS) {
                create_pool(&mut client, format!("state-{n}")).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "state: {objects} pools created in {:.1} s before the failovers",
        started.elapsed().as_secs_f64()
    );
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run only for bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds = env_number("QVDC_BENCH_SECONDS", 5) as u64;
    let kills = env_number("QVDC_BENCH_KILLS", 20);
    let client_counts: Vec<usize> = std::env::var("QVDC_BENCH_CLIENTS")
        .map(|list| {
            list.split([' ', ','])
                .filter(|c| !c.is_empty())
                .map(|c| {
                    c.parse()
                        .expect("QVDC_BENCH_CLIENTS: client counts, e.g. \"1 16 256\"")
                })
                .collect()
        })
        .unwrap_or_else(|_| vec![1, 16, 256]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut cluster = start();
        cluster.register_host(HOST).await;
        cluster.register_host(HOST_2).await;
        println!(
            "3 qvdc servers on loopback, QUIC + mTLS, redb with fsync; {} cores; clients {}",
            num_cpus(),
            match std::env::var("QVDC_BENCH_ENDPOINT").as_deref() {
                Ok("own") => "on a socket each",
                _ => "share one socket, a connection each",
            }
        );
        let workloads = match std::env::var("QVDC_BENCH_WRITE").as_deref() {
            Ok("create") => vec![Workload::Create],
            Ok("toggle") => vec![Workload::Toggle],
            _ => vec![Workload::Toggle, Workload::Create],
        };
        let mut round = 0;
        for workload in workloads {
            println!(
                "{}",
                match workload {
                    Workload::Toggle => "writes: pool assign/unassign, one pool per client",
                    Workload::Create => "writes: pool create, a new pool every write",
                }
            );
            for &clients in &client_counts {
                throughput(&cluster, workload, clients, seconds, round).await;
                round += 1;
            }
        }
        if kills > 0 {
            let objects = env_number("QVDC_BENCH_STATE", 0);
            if objects > 0 {
                fill(&cluster, objects).await;
            }
            failover(&mut cluster, kills).await;
        }
    });
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
