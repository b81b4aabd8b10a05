//! Control-plane benchmark: three `qvdc server` processes on loopback with real QUIC, mutual
//! TLS and fsync. Measures committed writes per second and their latency at 1, 16 and 256
//! concurrent clients, then failover: the leader is `kill -9`ed and the time until the next
//! write commits is measured, repeatedly.
//!
//! Run: `cargo bench -p qvdc-cluster --bench control_plane` (QVDC_BENCH_KILLS=N to change
//! the number of failovers, QVDC_BENCH_SECONDS=N the seconds per concurrency level).

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use qvdc_cluster::Client;
use qvdc_transport::{
    protocol::{
        ApiRequest, ApiResponse, HostMessage, Inventory, PoolSource, PoolSpec, Request, Response,
    },
    quic,
    tls::{self, Identity, Role},
    Endpoint,
};

const QVDC: &str = env!("CARGO_BIN_EXE_qvdc");
const HOST: &str = "bench-host";

struct Cluster {
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    nodes: Vec<Option<Child>>,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        tls::init_ca(&certs).unwrap();
        for i in 1..=3 {
            tls::issue(&certs, Role::Server, &format!("node-{i}")).unwrap();
        }
        tls::issue(&certs, Role::Operator, "bench").unwrap();
        tls::issue(&certs, Role::Host, HOST).unwrap();
        let addrs = (0..3)
            .map(|_| {
                format!(
                    "127.0.0.1:{}",
                    UdpSocket::bind("127.0.0.1:0")
                        .unwrap()
                        .local_addr()
                        .unwrap()
                        .port()
                )
            })
            .collect();
        let mut cluster = Self {
            dir,
            addrs,
            nodes: Vec::new(),
        };
        for id in 1..=3 {
            let child = cluster.spawn(id);
            cluster.nodes.push(Some(child));
        }
        cluster
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn spawn(&self, id: usize) -> Child {
        let c = self.certs();
        let initial: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect();
        Command::new(QVDC)
            .args([
                "server",
                "--node-id",
                &id.to_string(),
                "--listen",
                &self.addrs[id - 1],
            ])
            .args([
                "--data-dir",
                &self
                    .dir
                    .path()
                    .join(format!("node-{id}"))
                    .display()
                    .to_string(),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--ca-cert", &c.join("ca.crt").display().to_string()])
            .args([
                "--cert",
                &c.join(format!("node-{id}.crt")).display().to_string(),
            ])
            .args([
                "--key",
                &c.join(format!("node-{id}.key")).display().to_string(),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qvdc server")
    }

    fn identity(&self, name: &str) -> Identity {
        let c = self.certs();
        Identity::load(
            &c.join("ca.crt"),
            &c.join(format!("{name}.crt")),
            &c.join(format!("{name}.key")),
        )
        .unwrap()
    }

    fn client(&self) -> Client {
        let endpoint = Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            &self.identity("bench"),
            false,
        )
        .unwrap();
        let nodes: Vec<SocketAddr> = self.addrs.iter().map(|a| a.parse().unwrap()).collect();
        Client::new(endpoint, nodes, Duration::from_secs(30))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Registers a host (without ever heartbeating) so that pools can be assigned to it.
async fn register_host(cluster: &Cluster) {
    let endpoint = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &cluster.identity(HOST),
        false,
    )
    .unwrap();
    let inventory = Inventory {
        hostname: HOST.into(),
        cpu_cores: 1,
        memory_bytes: 1 << 30,
    };
    let started = Instant::now();
    loop {
        for addr in &cluster.addrs {
            let Ok(connection) = endpoint.connect(addr.parse().unwrap()).await else {
                continue;
            };
            let register = Request::Host(HostMessage::Register {
                host_id: HOST.into(),
                inventory: inventory.clone(),
            });
            if let Ok(Response::Host(_)) = quic::call::<_, Response>(&connection, &register).await {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "could not register the bench host"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_pool(client: &mut Client, name: String) -> Duration {
    let spec = PoolSpec {
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

async fn throughput(cluster: &Cluster, clients: usize, seconds: u64, round: usize) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = cluster.client();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while Instant::now() < deadline {
                latencies.push(create_pool(&mut client, format!("r{round}-c{c}-{n}")).await);
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
    all.sort();
    println!(
        "{clients:>4} clients: {:>8.0} writes/s   p50 {:>10}   p99 {:>10}   ({} writes in {elapsed:.1} s)",
        all.len() as f64 / elapsed,
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        all.len()
    );
}

async fn leader(client: &mut Client) -> usize {
    loop {
        if let Ok(ApiResponse::ClusterStatus(s)) = client.request(ApiRequest::ClusterStatus).await {
            if let Some(leader) = s.leader {
                return leader as usize;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn failover(cluster: &mut Cluster, kills: usize) {
    let mut times = Vec::new();
    for k in 0..kills {
        let mut client = cluster.client();
        let victim = leader(&mut client).await;
        create_pool(&mut client, format!("before-kill-{k}")).await;
        let mut child = cluster.nodes[victim - 1].take().unwrap();
        child.kill().unwrap(); // SIGKILL
        let killed = Instant::now();
        child.wait().unwrap();
        let mut fresh = cluster.client();
        create_pool(&mut fresh, format!("after-kill-{k}")).await;
        times.push(killed.elapsed());
        let restarted = cluster.spawn(victim);
        cluster.nodes[victim - 1] = Some(restarted);
        tokio::time::sleep(Duration::from_secs(2)).await; // let it rejoin before the next kill
    }
    times.sort();
    println!(
        "failover (leader kill -9 -> next committed write), {kills} kills: p50 {}   p99 {}   max {}",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap())
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut cluster = Cluster::start();
        register_host(&cluster).await;
        println!(
            "3 qvdc servers on loopback, QUIC + mTLS, redb with fsync; {} cores",
            num_cpus()
        );
        for (round, clients) in [1, 16, 256].into_iter().enumerate() {
            throughput(&cluster, clients, seconds, round).await;
        }
        failover(&mut cluster, kills).await;
    });
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
