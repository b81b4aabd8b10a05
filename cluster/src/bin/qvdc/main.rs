//! `qvdc`: a control-plane node (`qvdc server`) and a local sandbox cluster (`qvdc dev`).

mod dev;
mod recovery;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use qvdc_actors::Timings;
use qvdc_cluster::{Node, NodeConfig, Storage};
use qvdc_raft::{
    store::{self, STORAGE_FORMAT},
    LogRetention,
};
use qvdc_transport::{
    tls::{self, Identity, Role},
    Endpoint,
};
use serde::Deserialize;

/// The qvdc control plane.
#[derive(Debug, Parser)]
#[command(name = "qvdc", version = qvdc_cluster::RELEASE)]
struct Cli {
    /// How logs are written: text lines, or one JSON object per line for log shippers.
    #[arg(long, global = true, env = "QVDC_LOG_FORMAT", default_value = "text")]
    log_format: qvdc_transport::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
enum Command {
    /// Run one control-plane node.
    ///
    /// Three nodes started with the same --initial-cluster form a cluster; a node restarted
    /// with its data dir rejoins with its state. A new node (to grow the cluster or replace
    /// a dead one) starts with --join and is added with `qvctl cluster add-node`. Every flag
    /// may also come from --config.
    ///
    /// Example:
    ///   qvdc server --node-id 1 --listen 127.0.0.1:7101 --data-dir /var/lib/qvdc \
    ///     --initial-cluster 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103 \
    ///     --ca-cert certs/ca.crt --cert certs/node-1.crt --key certs/node-1.key
    ///   qvdc server --node-id 4 --listen 127.0.0.1:7104 --data-dir /var/lib/qvdc --join \
    ///     --ca-cert certs/ca.crt --cert certs/node-4.crt --key certs/node-4.key
    #[command(verbatim_doc_comment)]
    Server(ServerArgs),
    /// Start a local sandbox: certificates, 3 control-plane nodes and N host agents on
    /// loopback, until Ctrl-C.
    Dev(dev::DevArgs),
    /// Build a node's data directory of a new cluster from a backup file.
    Restore(recovery::RestoreArgs),
    /// Make the last surviving node of a cluster that lost its quorum for good a new
    /// one-node cluster with its state (read --help first).
    ForceNewCluster(recovery::ForceNewClusterArgs),
}

#[derive(Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServerArgs {
    /// TOML file with any of the flags below as keys (node-id = 1, listen = "..."); flags win.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Check the flags, the config file, the certificates and the data directory's format,
    /// say what was found, and exit without starting (0 when all is well).
    #[arg(long)]
    #[serde(skip)]
    check_config: bool,
    /// This node's id in --initial-cluster.
    #[arg(long)]
    node_id: Option<u64>,
    /// UDP address to serve QUIC on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where the node keeps its Raft log and state (created if missing).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Every initial member as ID=HOST:PORT, comma-separated.
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Join a running cluster instead of forming one: start with an empty data dir and
    /// wait for `qvctl cluster add-node ID ADDR` (run against the cluster) to add this node.
    /// --initial-cluster is not needed then.
    #[arg(long, conflicts_with = "initial_cluster")]
    #[serde(default)]
    join: bool,
    /// Cluster CA certificate.
    #[arg(long, env = "QVDC_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// This node's server certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This node's key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Snapshot the state once this many log entries were applied since the last snapshot.
    #[arg(long)]
    snapshot_after_logs: Option<u64>,
    /// Log entries kept behind a snapshot for followers that lag a little; one further
    /// behind receives the snapshot.
    #[arg(long)]
    logs_kept_after_snapshot: Option<u64>,
    /// A host silent this long is Unreachable and its reports count as UNKNOWN (default
    /// 3000: three missed heartbeats at the default 1 s interval).
    #[arg(long)]
    host_stale_after_ms: Option<u64>,
    /// How long a guest gets to shut down when asked before its host destroys it.
    #[arg(long)]
    vm_shutdown_timeout_ms: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: bind it to an address
    /// only your monitoring reaches, e.g. 127.0.0.1:9101).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

impl ServerArgs {
    /// Fills flags not given on the command line from the config file.
    fn merged(self) -> anyhow::Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: ServerArgs =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Self {
            config: self.config,
            check_config: self.check_config,
            node_id: self.node_id.or(file.node_id),
            listen: self.listen.or(file.listen),
            data_dir: self.data_dir.or(file.data_dir),
            initial_cluster: self.initial_cluster.or(file.initial_cluster),
            join: self.join || file.join,
            ca_cert: self.ca_cert.or(file.ca_cert),
            cert: self.cert.or(file.cert),
            key: self.key.or(file.key),
            snapshot_after_logs: self.snapshot_after_logs.or(file.snapshot_after_logs),
            logs_kept_after_snapshot: self
                .logs_kept_after_snapshot
                .or(file.logs_kept_after_snapshot),
            host_stale_after_ms: self.host_stale_after_ms.or(file.host_stale_after_ms),
            vm_shutdown_timeout_ms: self.vm_shutdown_timeout_ms.or(file.vm_shutdown_timeout_ms),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
        })
    }
}

fn required<T>(value: Option<T>, flag: &str) -> anyhow::Result<T> {
    value.with_context(|| format!("missing --{flag} (or `{flag} = ...` in --config)"))
}

/// Parses `1=127.0.0.1:7101,2=...` into node ids and addresses.
fn parse_initial_cluster(text: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("{part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .parse()
            .with_context(|| format!("node id {id:?} is not a number"))?;
        let _: SocketAddr = addr
            .parse()
            .with_context(|| format!("{addr:?} is not an IP:PORT address"))?;
        if members.insert(id, addr.to_owned()).is_some() {
            bail!("node id {id} appears twice in --initial-cluster");
        }
    }
    if members.is_empty() {
        bail!("--initial-cluster names no node");
    }
    Ok(members)
}

/// A node's configuration, checked: everything `qvdc server` needs before it binds its
/// address and opens its data directory.
struct Checked {
    config: NodeConfig,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    identity: Identity,
    data_dir: PathBuf,
}

/// Merges the config file into the flags and checks everything that can be checked without
/// starting: required values, the certificate's role and name, the numbers.
fn check(args: ServerArgs) -> anyhow::Result<Checked> {
    let args = args.merged()?;
    let node_id = required(args.node_id, "node-id")?;
    let listen = required(args.listen, "listen")?;
    let data_dir = required(args.data_dir, "data-dir")?;
    let initial_cluster = if args.join {
        BTreeMap::new()
    } else {
        let text = args.initial_cluster.context(
            "missing --initial-cluster (or `initial-cluster = ...` in --config); \
             to add this node to a running cluster, start it with --join instead",
        )?;
        parse_initial_cluster(&text)?
    };
    let identity = Identity::load(
        &required(args.ca_cert, "ca-cert")?,
        &required(args.cert, "cert")?,
        &required(args.key, "key")?,
    )?;
    let own = identity.peer_identity()?;
    if own.role != Role::Server {
        bail!(
            "--cert is not a server certificate; issue one with `qvctl certs issue --role server`"
        );
    }
    let expected = qvdc_raft::server_cert_name(node_id);
    if own.name != expected {
        bail!(
            "--cert is the certificate of {:?}, but this is node {node_id}: peers accept a node only with a certificate named {expected:?}; issue one with `qvctl certs issue --role server --name {expected}`",
            own.name
        );
    }
    if !args.join && !initial_cluster.contains_key(&node_id) {
        bail!(
            "--initial-cluster does not name this node ({node_id}); list every initial member, \
             this one included, as ID=HOST:PORT"
        );
    }
    let defaults = LogRetention::default();
    let retention = LogRetention {
        snapshot_after_logs: args
            .snapshot_after_logs
            .unwrap_or(defaults.snapshot_after_logs),
        logs_kept_after_snapshot: args
            .logs_kept_after_snapshot
            .unwrap_or(defaults.logs_kept_after_snapshot),
    };
    if retention.snapshot_after_logs == 0 {
        bail!("--snapshot-after-logs must be at least 1");
    }
    let mut timings = Timings::default();
    if let Some(ms) = args.host_stale_after_ms {
        if ms < 500 {
            bail!("--host-stale-after-ms must be at least 500 (hosts heartbeat every second)");
        }
        timings.stale_after_ms = ms;
    }
    if let Some(ms) = args.vm_shutdown_timeout_ms {
        timings.vm_shutdown_timeout_ms = ms;
        // The leader waits for the host's answer, which comes after the guest stopped.
        timings.command_timeout_ms = timings.command_timeout_ms.max(ms + 5_000);
    }
    let config = NodeConfig {
        node_id,
        initial_cluster,
        join: args.join,
        storage: Storage::Dir(data_dir.clone()),
        timings,
        retention,
        clock: Default::default(),
    };
    Ok(Checked {
        config,
        listen,
        metrics_listen: args.metrics_listen,
        identity,
        data_dir,
    })
}

/// `qvdc server --check-config`: checks the configuration and the data directory without
/// starting, and says what it found.
fn check_config(args: ServerArgs) -> anyhow::Result<()> {
    let checked = check(args)?;
    let config = &checked.config;
    let role = if config.join {
        "joins a running cluster".to_owned()
    } else {
        let members: Vec<String> = config
            .initial_cluster
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect();
        format!("initial cluster {}", members.join(","))
    };
    println!(
        "node {}: listens on {}, {role}",
        config.node_id, checked.listen
    );
    let own = checked.identity.peer_identity()?;
    println!(
        "certificate: {} ({}), serial {}",
        own.name, own.role, own.serial
    );
    let file = checked.data_dir.join(qvdc_cluster::node::DATA_FILE);
    let data = if !file.exists() {
        "new (created at start)".to_owned()
    } else {
        match store::inspect_format(&file) {
            Ok(Some(format)) if format < STORAGE_FORMAT => format!(
                "storage format {format}, migrated to {STORAGE_FORMAT} when the node starts \
                 (back it up first: docs/operations.md)"
            ),
            Ok(Some(format)) => format!("storage format {format}"),
            Ok(None) => "empty".to_owned(),
            // Not a fault: the repair at start is what redb is for.
            Err(e @ store::StoreError::NeedsRepair { .. }) => e.to_string(),
            Err(e) => return Err(e.into()),
        }
    };
    println!("data directory {}: {data}", checked.data_dir.display());
    println!("configuration OK");
    Ok(())
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    if args.check_config {
        return check_config(args);
    }
    let Checked {
        config,
        listen,
        metrics_listen,
        identity,
        data_dir,
    } = check(args)?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let endpoint = Endpoint::bind(listen, &identity, true)?;
    // `qvctl certs issue --replace` while running: new connections use the new pair.
    tls::spawn_reloader(identity.clone());
    let node = Node::start(config, endpoint).await?;
    if let Some(addr) = metrics_listen {
        let bound = node
            .serve_metrics(addr)
            .await
            .with_context(|| format!("serving metrics on {addr} (--metrics-listen)"))?;
        tracing::info!(%bound, "metrics at http://{bound}/metrics");
    }
    wait_for_signal().await;
    tracing::info!("stopping");
    // A planned stop of the leader hands leadership over first: no write waits for an
    // election timeout.
    node.hand_over().await;
    node.shutdown().await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    qvdc_transport::logging::init(cli.log_format, "info", false);
    match cli.command {
        Command::Server(args) => serve(args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Restore(args) => recovery::restore(args),
        Command::ForceNewCluster(args) => recovery::force_new_cluster(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_fills_what_flags_leave_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "node-id = 2\nlisten = \"127.0.0.1:7102\"\ndata-dir = \"/var/lib/qvdc\"\n",
        )
        .unwrap();
        let flags = ServerArgs {
            config: Some(file.clone()),
            node_id: Some(3),
            ..Default::default()
        };
        let merged = flags.merged().unwrap();
        assert_eq!(merged.node_id, Some(3), "a flag wins over the file");
        assert_eq!(merged.listen, Some("127.0.0.1:7102".parse().unwrap()));
        assert_eq!(merged.data_dir, Some("/var/lib/qvdc".into()));
        std::fs::write(&file, "node-idd = 2\n").unwrap();
        let err = ServerArgs {
            config: Some(file),
            ..Default::default()
        }
        .merged()
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("node-idd"),
            "unknown keys are named: {err:#}"
        );
    }

    #[test]
    fn initial_cluster_is_parsed_and_checked() {
        let members = parse_initial_cluster("1=127.0.0.1:1,2=127.0.0.1:2").unwrap();
        assert_eq!(members[&2], "127.0.0.1:2");
        for bad in [
            "",
            "1",
            "x=127.0.0.1:1",
            "1=nowhere",
            "1=127.0.0.1:1,1=127.0.0.1:2",
        ] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad:?}");
        }
    }
}
