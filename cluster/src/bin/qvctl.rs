//! `qvctl`: the operator's command line for a qvdc cluster.

use std::{net::SocketAddr, net::ToSocketAddrs, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use qvdc_cluster::{output, Client};
use qvdc_transport::{
    protocol::{ApiRequest, PoolSource, PoolSpec},
    tls::{self, Identity, Role},
    Endpoint,
};

/// Drive a qvdc cluster: define storage pools, watch hosts report them, manage certificates.
///
/// Connection settings come from flags or the environment (`qvdc dev` writes a cluster.env
/// you can `source`). Exit codes: 0 ok, 1 error, 2 bad usage, 3 rejected by the cluster,
/// 4 timed out, 5 cluster unreachable.
///
/// Examples:
///   qvctl cluster status
///   qvctl pool create shared --type dir --path /srv/shared --hosts host-1,host-2,host-3
///   qvctl pool show shared --output json
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: output::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Connection {
    /// Control-plane addresses, comma-separated; any node will do.
    #[arg(long, global = true, env = "QVDC_CLUSTER", value_delimiter = ',')]
    cluster: Vec<String>,
    /// Cluster CA certificate.
    #[arg(long, global = true, env = "QVDC_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Your operator certificate.
    #[arg(long, global = true, env = "QVDC_CERT")]
    cert: Option<PathBuf>,
    /// Your operator key.
    #[arg(long, global = true, env = "QVDC_KEY")]
    key: Option<PathBuf>,
    /// Give up on a request after this long (elections and redirects included).
    #[arg(long, global = true, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Id of this change. A change sent again with the same id is applied at most once and
    /// gets the first answer: pass one when a script may retry (default: a fresh id).
    #[arg(long, global = true)]
    request_id: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the cluster CA and issue certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The control plane itself.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Hypervisor hosts.
    #[command(subcommand)]
    Host(HostCommand),
    /// Storage pools.
    #[command(subcommand)]
    Pool(PoolCommand),
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a new cluster CA: DIR/ca.crt and DIR/ca.key. Keep ca.key safe.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate signed by the CA in DIR: writes DIR/NAME.crt and DIR/NAME.key.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// server (control-plane node), host (hypervisor host, NAME = host id) or operator.
        #[arg(long)]
        role: Role,
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Members, leader and term, as the answering node sees them.
    Status,
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    /// Registered hosts with their inventory and liveness.
    List,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Define a pool and assign it to hosts; each host mounts it under its pool root.
    Create {
        name: String,
        /// Pool type; `dir` bind-mounts a directory that exists on every host.
        #[arg(long = "type", value_enum, default_value = "dir")]
        kind: PoolKind,
        /// Absolute path of the source directory on each host (for --type dir).
        #[arg(long)]
        path: String,
        /// Hosts to mount it on, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        hosts: Vec<String>,
    },
    /// One pool: overall health, capacity, and what each host reports.
    Show { name: String },
    /// All pools with their health and capacity.
    List,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PoolKind {
    Dir,
}

fn resolve(addrs: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    if addrs.is_empty() {
        bail!("no cluster address: pass --cluster HOST:PORT,... or set QVDC_CLUSTER (qvdc dev writes it to cluster.env)");
    }
    addrs
        .iter()
        .map(|a| {
            a.to_socket_addrs()
                .ok()
                .and_then(|mut r| r.next())
                .with_context(|| format!("cannot resolve {a:?}"))
        })
        .collect()
}

fn client(connection: &Connection) -> anyhow::Result<Client> {
    let nodes = resolve(&connection.cluster)?;
    let missing = |what: &str, var: &str| format!("no {what}: pass --{what} or set {var}");
    let ca = connection
        .ca_cert
        .as_ref()
        .with_context(|| missing("ca-cert", "QVDC_CA_CERT"))?;
    let cert = connection
        .cert
        .as_ref()
        .with_context(|| missing("cert", "QVDC_CERT"))?;
    let key = connection
        .key
        .as_ref()
        .with_context(|| missing("key", "QVDC_KEY"))?;
    let identity = Identity::load(ca, cert, key)?;
    let endpoint = Endpoint::bind("0.0.0.0:0".parse().expect("valid"), &identity, false)?;
    Ok(Client::new(
        endpoint,
        nodes,
        Duration::from_millis(connection.timeout_ms),
    ))
}

fn certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir } => {
            let path = tls::init_ca(&dir)?;
            println!(
                "created CA {}; issue certificates with `qvctl certs issue --dir {}`",
                path.display(),
                dir.display()
            );
        }
        CertsCommand::Issue { dir, role, name } => {
            let (cert, key) = tls::issue(&dir, role, &name)?;
            println!(
                "issued {role} certificate {} (key {})",
                cert.display(),
                key.display()
            );
        }
    }
    Ok(())
}

fn request_of(command: Command, request_id: String) -> ApiRequest {
    match command {
        Command::Cluster(ClusterCommand::Status) => ApiRequest::ClusterStatus,
        Command::Host(HostCommand::List) => ApiRequest::HostList,
        Command::Pool(PoolCommand::Create {
            name,
            kind: PoolKind::Dir,
            path,
            hosts,
        }) => ApiRequest::PoolCreate {
            request_id,
            spec: PoolSpec {
                name,
                source: PoolSource::Dir { path },
            },
            hosts,
        },
        Command::Pool(PoolCommand::Show { name }) => ApiRequest::PoolShow { name },
        Command::Pool(PoolCommand::List) => ApiRequest::PoolList,
        Command::Certs(_) => unreachable!("handled locally"),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Certs(command) = cli.command {
        certs(command)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = client(&cli.connection)?;
    let request_id = cli
        .connection
        .request_id
        .clone()
        .unwrap_or_else(|| client.new_request_id());
    match client.request(request_of(cli.command, request_id)).await {
        Ok(response) => {
            println!("{}", output::render(&response, cli.output));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(e.exit_code() as u8))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
