//! `qhost`: the host agent daemon. Dials the control plane, registers this host, mounts the
//! pools, runs the VMs and configures the networks assigned to it, and reports their state
//! every heartbeat.

use std::{net::SocketAddr, net::ToSocketAddrs, path::PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use qvdc_host::{
    agent::{InventoryRescan, HEARTBEAT_INTERVAL_MS_DEFAULT, INVENTORY_RESCAN_MS},
    inventory,
    lease::FileLease,
    libvirt::SYSTEM_URI,
    source_policy::SourcePolicy,
    Agent, AgentConfig, Fence, FileFence, HostParts, IpNetworker, Libvirt, RealMounter,
};
use qvdc_transport::{
    tls::{self, Identity},
    Endpoint,
};

/// Runs the qvdc host agent on this machine.
///
/// Example:
///   qhost --host-id host-1 --cluster 127.0.0.1:7001,127.0.0.1:7002 --data-dir /var/lib/qhost \
///         --ca-cert certs/ca.crt --cert certs/host-1.crt --key certs/host-1.key
#[derive(Debug, Parser)]
#[command(name = "qhost", version, verbatim_doc_comment)]
struct Args {
    /// This host's id; must equal the name in its certificate.
    #[arg(long, env = "QHOST_HOST_ID")]
    host_id: String,
    /// Control-plane addresses (HOST:PORT, comma-separated); any reachable node will do.
    #[arg(long, env = "QVDC_CLUSTER", value_delimiter = ',', required = true)]
    cluster: Vec<String>,
    /// Where the agent keeps its state; pools are mounted under DATA_DIR/pools/NAME.
    #[arg(long, env = "QHOST_DATA_DIR")]
    data_dir: PathBuf,
    /// Cluster CA certificate (PEM).
    #[arg(long, env = "QVDC_CA_CERT")]
    ca_cert: PathBuf,
    /// This host's certificate (PEM), issued with `qvctl certs issue --role host`.
    #[arg(long, env = "QVDC_CERT")]
    cert: PathBuf,
    /// This host's private key (PEM).
    #[arg(long, env = "QVDC_KEY")]
    key: PathBuf,
    /// Local UDP address to dial from.
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// How often the host reports its state.
    #[arg(long, default_value_t = HEARTBEAT_INTERVAL_MS_DEFAULT)]
    heartbeat_interval_ms: u64,
    /// The libvirt connection VMs run on: qemu:///system for KVM, test:///default for
    /// libvirt's in-memory test driver (no daemon, no real VMs).
    #[arg(long, env = "QHOST_LIBVIRT", default_value = SYSTEM_URI)]
    libvirt: String,
    /// Create network bridges inside this network namespace instead of the host's own (it
    /// must exist; useful when several agents share one machine).
    #[arg(long)]
    netns: Option<String>,
    /// Pool sources this host accepts: directories, image files or block devices at or
    /// under these paths, comma-separated (default: any, except the host's system
    /// directories, this agent's --data-dir, and block devices that are mounted or in use,
    /// which are always refused).
    #[arg(long, env = "QHOST_POOL_SOURCE_ALLOW", value_delimiter = ',')]
    pool_source_allow: Vec<PathBuf>,
    /// The libvirt URI other hosts' libvirtd reach this host's libvirtd at, which makes this
    /// host a target of live migrations (`qvctl vm migrate`, maintenance), e.g.
    /// qemu+tls://host-1.example.com/system (libvirtd must listen: `libvirtd --listen`
    /// with TLS, or TCP on a trusted network). The guest's memory goes to the same
    /// address. Hosts whose VMs move between them need the same --data-dir, so the disks'
    /// paths match. Without it, VMs reach this host only by a shut-down and a start.
    #[arg(long, env = "QHOST_MIGRATION_URI")]
    migration_uri: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: bind it to an address
    /// only your monitoring reaches, e.g. 127.0.0.1:9201).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// How logs are written: text lines, or one JSON object per line for log shippers.
    #[arg(long, env = "QVDC_LOG_FORMAT", default_value = "text")]
    log_format: qvdc_transport::logging::LogFormat,
}

fn resolve(addrs: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for addr in addrs {
        let resolved = addr
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve control-plane address {addr:?}"))?;
        out.extend(resolved.take(1));
    }
    if out.is_empty() {
        bail!("--cluster names no address");
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    qvdc_transport::logging::init(args.log_format, "info", false);
    let identity =
        Identity::load(&args.ca_cert, &args.cert, &args.key).context("loading TLS identity")?;
    let me = identity.peer_identity()?;
    if me.name != args.host_id {
        bail!(
            "--host-id is {:?} but the certificate names {:?}: a host may only speak for itself",
            args.host_id,
            me.name
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let endpoint = Endpoint::bind(args.bind, &identity, false)?;
    // `qvctl certs issue --replace` while running: new connections use the new pair.
    tls::spawn_reloader(identity.clone());
    let data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    for allowed in &args.pool_source_allow {
        if !allowed.is_absolute() {
            bail!(
                "--pool-source-allow {}: give absolute paths",
                allowed.display()
            );
        }
    }
    let pool_sources = SourcePolicy::new(args.pool_source_allow.clone(), Some(data_dir));
    let config = AgentConfig {
        host_id: args.host_id,
        cluster: resolve(&args.cluster)?,
        pool_root: args.data_dir.join("pools"),
        pool_sources: pool_sources.clone(),
        inventory: inventory::scan(),
        rescan_inventory: Some(InventoryRescan {
            scan: inventory::scan,
            every_ms: INVENTORY_RESCAN_MS,
        }),
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        migration_uri: args.migration_uri.clone(),
        metrics: Default::default(),
        leader_watch: true,
    };
    let fence = Fence::open(Box::new(FileFence::new(args.data_dir.join("fence"))))?;
    let parts = HostParts {
        mounter: RealMounter::with_policy(pool_sources),
        hypervisor: Libvirt::new(args.libvirt),
        networker: match args.netns {
            Some(netns) => IpNetworker::in_namespace(netns),
            None => IpNetworker::host(),
        },
    };
    if let Some(addr) = args.metrics_listen {
        let bound = config
            .metrics
            .serve(addr)
            .await
            .with_context(|| format!("serving metrics on {addr} (--metrics-listen)"))?;
        tracing::info!(%bound, "metrics at http://{bound}/metrics");
    }
    let lease = FileLease::new(args.data_dir.join("lease"));
    let agent = Agent::new(config, endpoint, parts, fence).with_lease_store(lease);
    tokio::select! {
        () = agent.run() => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
    }
    Ok(())
}
