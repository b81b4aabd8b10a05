//! `qvctl`: the operator's command line for a qvdc cluster.

use std::{
    collections::BTreeMap, net::SocketAddr, net::ToSocketAddrs, path::PathBuf, process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use qvdc_cluster::client::ClientError;
use qvdc_cluster::{output, Client};
use qvdc_transport::{
    protocol::{
        ApiErrorKind, ApiRequest, ApiResponse, DesiredPower, Liveness, NetworkSpec, PoolScope,
        PoolSource, PoolSpec, PowerState, RevokedCertificate, VmDisk, VmNic, VmSpec, VolumeFormat,
    },
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
///   qvctl vm create web --vcpus 2 --memory 512M --disk shared/web.qcow2 --start --wait
///   qvctl vm list
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Output format.
    #[arg(
        long,
        short,
        global = true,
        value_enum,
        default_value = "table",
        help_heading = "Output"
    )]
    output: output::Format,
    /// Read from whichever node answers first, from its own copy of the desired state,
    /// without the leader: works during elections and on a cut-off node, may miss the
    /// latest changes, and shows hosts' reports (health, power, liveness) as unknown.
    /// For status, list and show commands. Without it, reads are linearizable.
    #[arg(long, global = true, help_heading = "Output")]
    stale: bool,
    #[command(subcommand)]
    command: Command,
}

/// Listed after each command's own options, under their own heading.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
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
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Volume files in pools.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Networks (vSwitches): a Linux bridge on each assigned host.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Print a shell completion script, e.g. `qvctl completions bash > /etc/bash_completion.d/qvctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum NetworkCommand {
    /// Define a network; each assigned host creates its bridge (and VLAN port).
    ///
    ///   qvctl network create prod --bridge br-prod --hosts host-1,host-2
    ///   qvctl network create dmz --bridge br-dmz --vlan 42 --uplink eth0 --hosts host-1
    #[command(verbatim_doc_comment)]
    Create {
        name: String,
        /// The bridge's interface name on every host (at most 15 bytes).
        #[arg(long)]
        bridge: String,
        /// VLAN id carried on --uplink into the bridge.
        #[arg(long, requires = "uplink")]
        vlan: Option<u16>,
        /// The host interface the VLAN rides on.
        #[arg(long, requires = "vlan")]
        uplink: Option<String>,
        #[arg(long, value_delimiter = ',', required = true)]
        hosts: Vec<String>,
    },
    /// Add hosts to the network.
    Assign {
        name: String,
        #[arg(long, value_delimiter = ',', required = true)]
        hosts: Vec<String>,
    },
    /// Take hosts off the network; they remove its bridge.
    Unassign {
        name: String,
        #[arg(long, value_delimiter = ',', required = true)]
        hosts: Vec<String>,
    },
    /// Delete the network; every host removes its bridge.
    Delete { name: String },
    /// One network and whether it is up on each host.
    Show { name: String },
    /// All networks.
    List,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Create a volume file in a pool, through one of its healthy hosts (in a local pool,
    /// through the host named with --host, whose storage then holds it).
    Create {
        pool: String,
        name: String,
        /// Size, e.g. 64M or 20G (binary units).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long, value_enum, default_value = "qcow2")]
        format: FormatArg,
        /// The host whose own storage holds the volume (local pools; may be left out when
        /// the pool has one host). VMs using the volume run on that host only.
        #[arg(long)]
        host: Option<String>,
    },
    /// Grow a volume.
    Resize {
        pool: String,
        name: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Delete a volume and its file.
    Delete { pool: String, name: String },
    /// The volumes qvdc manages in a pool (`pool files` lists every file).
    List { pool: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Qcow2,
    Raw,
}

impl From<FormatArg> for VolumeFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Qcow2 => VolumeFormat::Qcow2,
            FormatArg::Raw => VolumeFormat::Raw,
        }
    }
}

#[derive(Debug, Args)]
struct Wait {
    /// Follow the change until the hosts report it done, host by host.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (exit code 4).
    #[arg(long, default_value_t = 120_000)]
    wait_timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Define a VM; the cluster picks a host unless --host is given
    ///
    /// With --dry-run, shows where the VM would go and, for every other host, why not
    /// (unreachable, in maintenance, a pool not healthy there, a network not up, too few
    /// cores or too little free memory), and creates nothing.
    ///
    /// Examples:
    ///   qvctl vm create web --vcpus 2 --memory 2G --disk shared/web.qcow2 --dry-run
    ///   qvctl vm create web --vcpus 2 --memory 2G --disk shared/web.qcow2 --start --wait
    #[command(verbatim_doc_comment)]
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Memory, e.g. 512M or 2G (binary units).
        #[arg(long, value_parser = parse_size)]
        memory: u64,
        /// A disk: POOL/VOLUME, optionally :raw (default qcow2). Repeat for more disks.
        #[arg(long = "disk", value_parser = parse_disk)]
        disks: Vec<VmDisk>,
        /// A NIC on this network. Repeat for more NICs.
        #[arg(long = "network")]
        networks: Vec<String>,
        /// Run it on this host instead of letting the cluster choose.
        #[arg(long)]
        host: Option<String>,
        /// Start it once defined.
        #[arg(long)]
        start: bool,
        /// Show where it would be placed and why not elsewhere; create nothing.
        #[arg(long, conflicts_with_all = ["start", "wait"])]
        dry_run: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Start a VM (and keep it running).
    Start {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Shut a VM down gracefully (destroyed if it ignores the request) and keep it stopped.
    Stop {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Reboot a running VM.
    Reboot { name: String },
    /// Pull the plug on a VM and keep it stopped.
    ForceOff {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Delete a VM: it is stopped, its host destroys and undefines the domain, then the VM is
    /// gone. While its host is unreachable the delete fails and the VM stays, stopped, so its
    /// name and disks cannot be reused under a guest that may still run. Volumes stay.
    Delete {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Bring a domain qvdc did not create under management, as a VM of its name
    ///
    /// `qvctl vm list` shows such domains as unmanaged. The domain is left as it is (running
    /// or not); from now on qvdc keeps it in that state. Each of its disks must be a qcow2 or
    /// raw file directly in a pool mounted on its host: those files become volumes. Its NICs
    /// stay as they are and are not shown as qvdc networks.
    ///
    /// Examples:
    ///   qvctl vm adopt host-1/legacy-db
    ///   qvctl vm adopt host-2/legacy-db --name legacy-db-2   # renamed first; must be shut off
    ///   qvctl vm show legacy-db
    #[command(verbatim_doc_comment)]
    Adopt {
        /// The domain as HOST/DOMAIN, e.g. host-1/legacy-db.
        #[arg(value_parser = parse_host_domain)]
        domain: (String, String),
        /// Adopt it as a VM of this name: the domain is renamed first, which libvirt does
        /// only while it is shut off. Needed when a VM already has the domain's name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Give a VM back to its host untouched: the guest keeps running as it is, qvdc forgets
    /// the VM and the volumes of its disks (their files stay) and lists it as unmanaged.
    /// While its host is unreachable the release fails; qvdc leaves the VM alone meanwhile.
    Release { name: String },
    /// One VM: its definition, host, desired and reported power state.
    Show { name: String },
    /// All VMs.
    List,
}

/// Parses 512M, 2G, 1024K, 1T (binary units) or plain bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "unknown unit {unit:?}; use K, M, G or T, like 512M"
            ))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write it like 512M or 2G"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text} is too large"))
}

/// Parses HOST/DOMAIN.
fn parse_host_domain(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((host, domain)) if !host.is_empty() && !domain.is_empty() => {
            Ok((host.into(), domain.into()))
        }
        _ => Err(format!(
            "{text:?} must be HOST/DOMAIN, like host-1/legacy-db; `qvctl vm list` shows the unmanaged domains"
        )),
    }
}

/// Parses POOL/VOLUME[:raw|:qcow2].
fn parse_disk(text: &str) -> Result<VmDisk, String> {
    let (path, format) = match text.rsplit_once(':') {
        Some((path, "raw")) => (path, VolumeFormat::Raw),
        Some((path, "qcow2")) => (path, VolumeFormat::Qcow2),
        Some((_, other)) => return Err(format!("unknown disk format {other:?}; use qcow2 or raw")),
        None => (text, VolumeFormat::Qcow2),
    };
    let Some((pool, volume)) = path
        .split_once('/')
        .filter(|(pool, volume)| !pool.is_empty() && !volume.is_empty())
    else {
        return Err(format!(
            "disk {text:?} must be POOL/VOLUME, like shared/web.qcow2"
        ));
    };
    Ok(VmDisk {
        pool: pool.into(),
        volume: volume.into(),
        format,
    })
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a new cluster CA: DIR/ca.crt and DIR/ca.key. Keep ca.key safe.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate signed by the CA in DIR: writes DIR/NAME.crt and DIR/NAME.key
    ///
    /// The key is written readable by its owner only (0600), as PKCS#8 that `openssl pkey`
    /// reads. The name `ca` is reserved. To rotate a certificate, issue it again with
    /// --replace: a running node or host picks up the new files within a few seconds,
    /// without a restart; then revoke the old one (`qvctl certs revoke`).
    ///
    /// Example: qvctl certs issue --dir certs --role host --name host-1 --days 90
    #[command(verbatim_doc_comment)]
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// server (control-plane node), host (hypervisor host, NAME = host id) or operator.
        #[arg(long)]
        role: Role,
        #[arg(long)]
        name: String,
        /// Days until the certificate expires (1 to 3650).
        #[arg(long, default_value_t = tls::CERT_VALIDITY_DAYS_DEFAULT)]
        days: u32,
        /// Replace an existing certificate and key of this name.
        #[arg(long)]
        replace: bool,
    },
    /// Revoke a certificate: every node refuses it and closes the connections it holds
    ///
    /// Name the certificate by its file, or by its serial (as `openssl x509 -noout -serial`
    /// prints it) with the role and name it was issued for. The deny list is replicated
    /// like the rest of the cluster's state. To replace a certificate without downtime,
    /// issue the new one with `certs issue --replace` first, wait until its holder uses it,
    /// then revoke the old one (keep a copy of the old file, or note its serial).
    ///
    /// Examples:
    ///   qvctl certs revoke certs/host-3.crt
    ///   qvctl certs revoke --serial 7A3B01 --role operator --name alice
    #[command(verbatim_doc_comment)]
    Revoke {
        /// The certificate file (PEM).
        #[arg(required_unless_present = "serial", conflicts_with = "serial")]
        certificate: Option<PathBuf>,
        #[arg(long, requires_all = ["role", "name"])]
        serial: Option<String>,
        /// The role of the certificate --serial names.
        #[arg(long)]
        role: Option<Role>,
        /// The name of the certificate --serial names.
        #[arg(long)]
        name: Option<String>,
    },
    /// The certificates on the cluster's deny list.
    Revoked,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Members, leader and term, as the answering node sees them.
    Status,
    /// Add a control-plane node started with `qvdc server --join`
    ///
    /// It first copies the state as a learner (no vote), then becomes a voter. Give it a
    /// server certificate first (`qvctl certs issue --role server --name node-4`).
    ///
    /// Example: qvctl cluster add-node 4 10.0.0.4:7100
    #[command(verbatim_doc_comment)]
    AddNode {
        /// An id no node of this cluster has used before.
        node_id: u64,
        /// The new node's --listen address, IP:PORT.
        addr: String,
    },
    /// Remove a node from the cluster (dead or alive).
    ///
    /// It loses its vote and stops receiving the log; stop the process yourself.
    RemoveNode { node_id: u64 },
    /// Replace a dead node with a fresh one started with `qvdc server --join`
    ///
    /// Adds NEW, then removes OLD. The new node gets a new id; ids are never reused.
    ///
    /// Example: qvctl cluster replace-node 2 5 10.0.0.5:7100
    #[command(verbatim_doc_comment)]
    ReplaceNode { old: u64, new: u64, addr: String },
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    /// Registered hosts with their inventory and liveness.
    List,
    /// One host: inventory, liveness, and the pools and VMs assigned to it.
    Show { host: String },
    /// Put a host in maintenance (it keeps its VMs but gets no new ones), or take it out.
    Maintenance {
        host: String,
        #[arg(value_enum)]
        state: OnOff,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Define a pool and assign it to hosts; each host mounts it under its pool root.
    ///
    ///   --type dir   --path /srv/shared               bind-mount a directory on every host
    ///   --type nfs   --server nfs1 --export /vms      mount an NFS export [--options vers=4.2]
    ///   --type block --device /dev/sdb --fs-type xfs  mount a block device (or image file)
    #[command(verbatim_doc_comment)]
    Create {
        name: String,
        #[arg(long = "type", value_enum, default_value = "dir")]
        kind: PoolKind,
        /// Absolute path of the source directory on each host (--type dir).
        #[arg(long, required_if_eq("kind", "dir"))]
        path: Option<String>,
        /// NFS server (--type nfs).
        #[arg(long, required_if_eq("kind", "nfs"))]
        server: Option<String>,
        /// Exported path on the NFS server (--type nfs).
        #[arg(long, required_if_eq("kind", "nfs"))]
        export: Option<String>,
        /// NFS mount options, comma-separated (--type nfs).
        #[arg(long)]
        options: Option<String>,
        /// Block device or filesystem image (--type block).
        #[arg(long, required_if_eq("kind", "block"))]
        device: Option<String>,
        /// Filesystem on the device: ext4, xfs or btrfs (--type block).
        #[arg(long, default_value = "ext4")]
        fs_type: String,
        /// Hosts to mount it on, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        hosts: Vec<String>,
        /// shared: every host sees the same storage (NFS, a SAN), a VM may run on any of
        /// them. local: each host has its own storage under this pool (a local disk); a
        /// volume lives on one host and VMs using it run there only.
        #[arg(long, value_enum, default_value = "shared")]
        scope: ScopeArg,
        #[command(flatten)]
        wait: Wait,
    },
    /// One pool: overall health, capacity, and what each host reports.
    Show { name: String },
    /// All pools with their health and capacity.
    List,
    /// Assign the pool to more hosts; they mount it.
    Assign {
        name: String,
        #[arg(long, value_delimiter = ',', required = true)]
        hosts: Vec<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Take the pool away from hosts; they unmount it (its data stays).
    Unassign {
        name: String,
        #[arg(long, value_delimiter = ',', required = true)]
        hosts: Vec<String>,
    },
    /// Delete the pool: every host unmounts it. Its data and files stay on the storage.
    ///
    /// With --wait, follows each host until it has unmounted the pool.
    #[command(verbatim_doc_comment)]
    Delete {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// The files in the pool, as one of its hosts sees them.
    Files {
        name: String,
        /// Ask this host (default: the first healthy one).
        #[arg(long)]
        host: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ScopeArg {
    Shared,
    Local,
}

impl From<ScopeArg> for PoolScope {
    fn from(scope: ScopeArg) -> Self {
        match scope {
            ScopeArg::Shared => PoolScope::Shared,
            ScopeArg::Local => PoolScope::Local,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PoolKind {
    Dir,
    Nfs,
    Block,
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

/// What `certs revoke` names, read from the certificate file or taken from its flags.
fn revocation(
    certificate: Option<PathBuf>,
    serial: Option<String>,
    role: Option<Role>,
    name: Option<String>,
) -> anyhow::Result<RevokedCertificate> {
    if let Some(path) = certificate {
        let identity = tls::certificate_file(&path)?;
        return Ok(RevokedCertificate {
            serial: identity.serial,
            role: identity.role.to_string(),
            name: identity.name,
        });
    }
    // clap requires all three when there is no file.
    let (Some(serial), Some(role), Some(name)) = (serial, role, name) else {
        anyhow::bail!("give the certificate file, or --serial with --role and --name");
    };
    Ok(RevokedCertificate {
        serial: tls::parse_serial(&serial).map_err(anyhow::Error::msg)?,
        role: role.to_string(),
        name,
    })
}

/// Runs the certificate commands that need no cluster.
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
        CertsCommand::Issue {
            dir,
            role,
            name,
            days,
            replace,
        } => {
            let options = tls::IssueOptions { days, replace };
            let (cert, key) = tls::issue_with(&dir, role, &name, options)?;
            println!(
                "issued {role} certificate {}, valid for {days} days (key {}, readable by its owner only)",
                cert.display(),
                key.display()
            );
        }
        CertsCommand::Revoke { .. } | CertsCommand::Revoked => {
            unreachable!("sent to the cluster")
        }
    }
    Ok(())
}

fn request_of(command: Command, request_id: String) -> anyhow::Result<ApiRequest> {
    Ok(match command {
        Command::Cluster(ClusterCommand::Status) => ApiRequest::ClusterStatus,
        Command::Cluster(ClusterCommand::AddNode { node_id, addr }) => {
            ApiRequest::ClusterAddNode { node_id, addr }
        }
        Command::Cluster(ClusterCommand::RemoveNode { node_id }) => {
            ApiRequest::ClusterRemoveNode { node_id }
        }
        Command::Cluster(ClusterCommand::ReplaceNode { .. }) => unreachable!("two requests"),
        Command::Host(HostCommand::List) => ApiRequest::HostList,
        Command::Host(HostCommand::Show { host }) => ApiRequest::HostShow { host },
        Command::Host(HostCommand::Maintenance { host, state }) => ApiRequest::HostMaintenance {
            request_id,
            host,
            on: state == OnOff::On,
        },
        Command::Pool(PoolCommand::Assign { name, hosts, .. }) => ApiRequest::PoolAssign {
            request_id,
            pool: name,
            hosts,
        },
        Command::Pool(PoolCommand::Unassign { name, hosts }) => ApiRequest::PoolUnassign {
            request_id,
            pool: name,
            hosts,
        },
        Command::Pool(PoolCommand::Delete { name, .. }) => ApiRequest::PoolDelete {
            request_id,
            pool: name,
        },
        Command::Pool(PoolCommand::Files { name, host }) => {
            ApiRequest::PoolFiles { pool: name, host }
        }
        Command::Volume(VolumeCommand::Create {
            pool,
            name,
            size,
            format,
            host,
        }) => ApiRequest::VolumeCreate {
            host,
            request_id,
            pool,
            name,
            format: format.into(),
            size_bytes: size,
        },
        Command::Volume(VolumeCommand::Resize { pool, name, size }) => ApiRequest::VolumeResize {
            request_id,
            pool,
            name,
            size_bytes: size,
        },
        Command::Volume(VolumeCommand::Delete { pool, name }) => ApiRequest::VolumeDelete {
            request_id,
            pool,
            name,
        },
        Command::Volume(VolumeCommand::List { pool }) => ApiRequest::VolumeList { pool },
        Command::Network(command) => network_request(command, request_id),
        Command::Pool(PoolCommand::Create {
            name,
            kind,
            path,
            server,
            export,
            options,
            device,
            fs_type,
            hosts,
            scope,
            ..
        }) => {
            // clap requires each type's flags, so the unwraps below cannot fail.
            let source = match kind {
                PoolKind::Dir => PoolSource::Dir {
                    path: path.unwrap_or_default(),
                },
                PoolKind::Nfs => PoolSource::Nfs {
                    server: server.unwrap_or_default(),
                    export: export.unwrap_or_default(),
                    options,
                },
                PoolKind::Block => PoolSource::Block {
                    device: device.unwrap_or_default(),
                    fs_type,
                },
            };
            ApiRequest::PoolCreate {
                request_id,
                spec: PoolSpec {
                    name,
                    source,
                    scope: scope.into(),
                },
                hosts,
            }
        }
        Command::Pool(PoolCommand::Show { name }) => ApiRequest::PoolShow { name },
        Command::Pool(PoolCommand::List) => ApiRequest::PoolList,
        Command::Vm(command) => vm_request(command, request_id),
        Command::Certs(CertsCommand::Revoke {
            certificate,
            serial,
            role,
            name,
        }) => ApiRequest::CertRevoke {
            request_id,
            certificate: revocation(certificate, serial, role, name)?,
        },
        Command::Certs(CertsCommand::Revoked) => ApiRequest::CertRevoked,
        Command::Certs(_) | Command::Completions { .. } => unreachable!("handled locally"),
    })
}

fn network_request(command: NetworkCommand, request_id: String) -> ApiRequest {
    match command {
        NetworkCommand::Create {
            name,
            bridge,
            vlan,
            uplink,
            hosts,
        } => ApiRequest::NetworkCreate {
            request_id,
            spec: NetworkSpec {
                name,
                bridge,
                vlan,
                uplink,
            },
            hosts,
        },
        NetworkCommand::Assign { name, hosts } => ApiRequest::NetworkAssign {
            request_id,
            network: name,
            hosts,
        },
        NetworkCommand::Unassign { name, hosts } => ApiRequest::NetworkUnassign {
            request_id,
            network: name,
            hosts,
        },
        NetworkCommand::Delete { name } => ApiRequest::NetworkDelete {
            request_id,
            network: name,
        },
        NetworkCommand::Show { name } => ApiRequest::NetworkShow { network: name },
        NetworkCommand::List => ApiRequest::NetworkList,
    }
}

fn vm_request(command: VmCommand, request_id: String) -> ApiRequest {
    let power = |name, power| ApiRequest::VmSetPower {
        request_id: request_id.clone(),
        name,
        power,
    };
    match command {
        VmCommand::Create {
            name,
            vcpus,
            memory,
            disks,
            networks,
            host,
            start,
            dry_run,
            ..
        } => {
            let spec = VmSpec {
                id: String::new(),
                name,
                vcpus,
                memory_bytes: memory,
                disks,
                nics: networks
                    .into_iter()
                    .map(|network| VmNic { network, mac: None })
                    .collect(),
            };
            if dry_run {
                ApiRequest::VmPlacement { spec, host }
            } else {
                ApiRequest::VmCreate {
                    spec,
                    host,
                    start,
                    request_id,
                }
            }
        }
        VmCommand::Start { name, .. } => power(name, DesiredPower::Running),
        VmCommand::Stop { name, .. } => power(name, DesiredPower::Stopped),
        VmCommand::Reboot { name } => ApiRequest::VmReboot { request_id, name },
        VmCommand::ForceOff { name, .. } => ApiRequest::VmForceOff { request_id, name },
        VmCommand::Delete { name, .. } => ApiRequest::VmDelete { request_id, name },
        VmCommand::Adopt {
            domain: (host, domain),
            name,
        } => ApiRequest::VmAdopt {
            request_id,
            host,
            domain,
            name,
        },
        VmCommand::Release { name } => ApiRequest::VmRelease { request_id, name },
        VmCommand::Show { name } => ApiRequest::VmShow { name },
        VmCommand::List => ApiRequest::VmList,
    }
}

/// What `--wait` waits for.
enum Goal {
    /// The VM in this power state.
    Power(String, PowerState),
    /// The VM gone.
    Gone(String),
    /// The pool unmounted from every host it is not assigned to, these hosts (the pool's
    /// before the delete) included even if a new leader has not heard from them yet.
    Unmounted(String, Vec<String>),
    /// Every host of the pool reported it (healthy or not).
    Reported(String),
}

/// The goal a `--wait` follows and for how long, if one was asked for.
fn wait_goal(command: &Command) -> Option<(Goal, u64)> {
    let (goal, wait) = match command {
        Command::Vm(VmCommand::Create {
            name, start, wait, ..
        }) => {
            let power = if *start {
                PowerState::Running
            } else {
                PowerState::ShutOff
            };
            (Goal::Power(name.clone(), power), wait)
        }
        Command::Vm(VmCommand::Start { name, wait }) => {
            (Goal::Power(name.clone(), PowerState::Running), wait)
        }
        Command::Vm(VmCommand::Stop { name, wait } | VmCommand::ForceOff { name, wait }) => {
            (Goal::Power(name.clone(), PowerState::ShutOff), wait)
        }
        Command::Vm(VmCommand::Delete { name, wait }) => (Goal::Gone(name.clone()), wait),
        Command::Pool(PoolCommand::Delete { name, wait }) => {
            (Goal::Unmounted(name.clone(), Vec::new()), wait)
        }
        Command::Pool(
            PoolCommand::Create { name, wait, .. } | PoolCommand::Assign { name, wait, .. },
        ) => (Goal::Reported(name.clone()), wait),
        _ => return None,
    };
    wait.wait.then_some((goal, wait.wait_timeout_ms))
}

/// How each part of a change is going: a spinner per part on a terminal, a line per change
/// otherwise (logs and scripts read those).
struct Progress {
    bars: Option<(
        indicatif::MultiProgress,
        BTreeMap<String, indicatif::ProgressBar>,
    )>,
    last: BTreeMap<String, String>,
}

impl Progress {
    fn new() -> Self {
        use std::io::IsTerminal;
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| (indicatif::MultiProgress::new(), BTreeMap::new()));
        Self {
            bars,
            last: BTreeMap::new(),
        }
    }

    fn update(&mut self, part: &str, state: String, done: bool) {
        if self.last.get(part) == Some(&state) {
            return;
        }
        self.last.insert(part.to_owned(), state.clone());
        let Some((multi, bars)) = &mut self.bars else {
            eprintln!("{part}: {state}");
            return;
        };
        let bar = bars.entry(part.to_owned()).or_insert_with(|| {
            let bar = multi.add(indicatif::ProgressBar::new_spinner());
            let style = indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg}")
                .expect("valid template");
            bar.set_style(style);
            bar.set_prefix(part.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if done {
            bar.finish_with_message(state);
        } else {
            bar.set_message(state);
        }
    }

    /// Marks every part shown before that is not in `current` as done with `state`.
    fn settle(&mut self, current: &[String], state: &str) {
        let gone: Vec<String> = self
            .last
            .iter()
            .filter(|(part, last)| !current.contains(part) && *last != state)
            .map(|(part, _)| part.clone())
            .collect();
        for part in gone {
            self.update(&part, state.to_owned(), true);
        }
    }

    fn finish(self) {
        if let Some((_, bars)) = self.bars {
            bars.values().for_each(|b| b.finish());
        }
    }
}

/// Polls until the goal is reached, showing each change of state.
async fn follow(client: &mut Client, goal: Goal, timeout_ms: u64) -> Result<(), ClientError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let mut progress = Progress::new();
    let result = loop {
        match step(client, &goal, &mut progress).await {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
        if tokio::time::Instant::now() >= deadline {
            let last: Vec<String> = progress
                .last
                .iter()
                .map(|(part, state)| format!("{part}: {state}"))
                .collect();
            break Err(ClientError::Timeout {
                waited_ms: timeout_ms,
                last: last.join("; "),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    progress.finish();
    result
}

/// One look at the goal; `true` once it is reached.
async fn step(
    client: &mut Client,
    goal: &Goal,
    progress: &mut Progress,
) -> Result<bool, ClientError> {
    match goal {
        Goal::Power(name, _) | Goal::Gone(name) => {
            let now = client
                .request(ApiRequest::VmShow { name: name.clone() })
                .await;
            match (goal, now) {
                (Goal::Gone(_), Err(ClientError::Rejected(e)))
                    if e.kind == ApiErrorKind::NotFound =>
                {
                    progress.update(name, "deleted".into(), true);
                    Ok(true)
                }
                (_, Err(e)) => Err(e),
                (goal, Ok(ApiResponse::Vm(vm))) => {
                    let reached = matches!(goal, Goal::Power(_, p) if *p == vm.power);
                    let mut state = format!("{} on {} ({})", vm.power, vm.host, vm.reason);
                    if let Some(error) = &vm.error {
                        state.push_str(&format!(": {error}"));
                    }
                    progress.update(name, state, reached);
                    Ok(reached)
                }
                (_, Ok(other)) => Err(ClientError::Protocol(format!("{other:?}"))),
            }
        }
        Goal::Unmounted(pool, had) => {
            let (hosts, unheard) = match client
                .request(ApiRequest::PoolRemnants { pool: pool.clone() })
                .await?
            {
                ApiResponse::Remnants { hosts, unheard, .. } => (hosts, unheard),
                other => return Err(ClientError::Protocol(format!("{other:?}"))),
            };
            let unheard: Vec<&String> = unheard.iter().filter(|h| had.contains(h)).collect();
            let mut current = Vec::new();
            for (host, liveness) in &hosts {
                let state = match liveness {
                    Liveness::Ready => "unmounting".to_owned(),
                    Liveness::Unreachable => {
                        "still mounted; the host is unreachable and unmounts once back".to_owned()
                    }
                };
                let part = format!("{pool} on {host}");
                progress.update(&part, state, false);
                current.push(part);
            }
            for host in &unheard {
                let part = format!("{pool} on {host}");
                let state = "not heard from by the new leader yet".to_owned();
                progress.update(&part, state, false);
                current.push(part);
            }
            progress.settle(&current, "unmounted");
            Ok(hosts.is_empty() && unheard.is_empty())
        }
        Goal::Reported(pool) => {
            let view = match client
                .request(ApiRequest::PoolShow { name: pool.clone() })
                .await?
            {
                ApiResponse::Pool(view) => view,
                other => return Err(ClientError::Protocol(format!("{other:?}"))),
            };
            let mut all = true;
            for host in &view.hosts {
                let reported = host.health != qvdc_transport::protocol::Health::Unknown;
                all &= reported;
                let mut state = host.health.to_string();
                if let Some(error) = &host.error {
                    state.push_str(&format!(": {error}"));
                }
                progress.update(&format!("{pool} on {}", host.host_id), state, reported);
            }
            Ok(all)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Certs(command @ (CertsCommand::Init { .. } | CertsCommand::Issue { .. })) =
        cli.command
    {
        certs(command)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Completions { shell } = cli.command {
        let mut cli = <Cli as clap::CommandFactory>::command();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cli, "qvctl", &mut script);
        // A reader that stops early (`| head`) is not an error.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = client(&cli.connection)?;
    let request_id = cli
        .connection
        .request_id
        .clone()
        .unwrap_or_else(|| client.new_request_id());
    if let Command::Cluster(ClusterCommand::ReplaceNode { old, new, addr }) = cli.command {
        let steps = [
            ApiRequest::ClusterAddNode { node_id: new, addr },
            ApiRequest::ClusterRemoveNode { node_id: old },
        ];
        for step in steps {
            match client.request(step).await {
                Ok(response) => println!("{}", output::render(&response, cli.output)),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(e.exit_code() as u8));
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut wait = wait_goal(&cli.command);
    if let Some((Goal::Unmounted(pool, had), _)) = &mut wait {
        // Which hosts had the pool, asked before it is gone from the record.
        if let Ok(ApiResponse::Pool(view)) = client
            .request(ApiRequest::PoolShow { name: pool.clone() })
            .await
        {
            *had = view.hosts.into_iter().map(|h| h.host_id).collect();
        }
    }
    let mut request = request_of(cli.command, request_id)?;
    if cli.stale {
        request = ApiRequest::Stale(Box::new(request));
    }
    let outcome = match client.request(request).await {
        Ok(response) => {
            println!("{}", output::render(&response, cli.output));
            match wait {
                Some((goal, timeout_ms)) => follow(&mut client, goal, timeout_ms).await,
                None => Ok(()),
            }
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(e.exit_code() as u8))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Colour only for a person at a terminal: a log file or a pipe gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_ansi(colour)
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// A command's help lists its own options first; the connection and output flags every
    /// command shares come after, under their own headings.
    #[test]
    fn a_command_help_lists_its_own_options_before_the_shared_ones() {
        let mut cli = Cli::command();
        cli.build(); // propagates the global flags to every subcommand, as parsing does
        let help = cli
            .find_subcommand_mut("pool")
            .and_then(|pool| pool.find_subcommand_mut("create"))
            .unwrap()
            .render_long_help()
            .to_string();
        let at = |needle: &str| {
            help.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing:\n{help}"))
        };
        assert!(at("--type") < at("--path") && at("--path") < at("--hosts"));
        assert!(at("--hosts") < at("Connection:") && at("Connection:") < at("--cluster"));
        assert!(at("--cluster") < at("Output:") && at("Output:") < at("--output"));
    }

    #[test]
    fn sizes_take_binary_units_and_refuse_what_is_not_a_size() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size(" 2g "), Ok(2 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10kb"), Ok(10 << 10));
        assert!(parse_size("2X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("M").unwrap_err().contains("not a size"));
        assert!(parse_size("-1G").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn disks_and_domains_name_both_parts() {
        let disk = parse_disk("shared/web.img:raw").unwrap();
        assert_eq!(
            (disk.pool.as_str(), disk.volume.as_str(), disk.format),
            ("shared", "web.img", VolumeFormat::Raw)
        );
        assert_eq!(
            parse_disk("shared/web.qcow2").unwrap().format,
            VolumeFormat::Qcow2,
            "qcow2 unless said otherwise"
        );
        for bad in ["web.qcow2", "shared/", "/web.qcow2", "shared/web:vmdk"] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_host_domain("host-1/legacy-db"),
            Ok(("host-1".into(), "legacy-db".into()))
        );
        for bad in ["legacy-db", "host-1/", "/legacy-db"] {
            assert!(parse_host_domain(bad).is_err(), "{bad}");
        }
    }

    /// Every write a command makes carries the invocation's request id, so a retry of the
    /// same invocation (or `--request-id`) is applied once.
    #[test]
    fn writes_carry_the_request_id() {
        let request = |args: &[&str]| {
            let cli = Cli::try_parse_from(args.iter().copied()).unwrap();
            request_of(cli.command, "req-9".into()).unwrap()
        };
        match request(&["qvctl", "vm", "reboot", "web"]) {
            ApiRequest::VmReboot { request_id, name } => {
                assert_eq!((request_id.as_str(), name.as_str()), ("req-9", "web"))
            }
            other => panic!("{other:?}"),
        }
        match request(&[
            "qvctl",
            "volume",
            "create",
            "shared",
            "web.qcow2",
            "--size",
            "1G",
        ]) {
            ApiRequest::VolumeCreate {
                request_id,
                size_bytes,
                ..
            } => assert_eq!((request_id.as_str(), size_bytes), ("req-9", 1 << 30)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dry_run_cannot_be_combined_with_start_or_wait() {
        let base = [
            "qvctl",
            "vm",
            "create",
            "web",
            "--memory",
            "1G",
            "--dry-run",
        ];
        assert!(Cli::try_parse_from(base).is_ok());
        for extra in ["--start", "--wait"] {
            let args = base.iter().copied().chain([extra]);
            assert!(Cli::try_parse_from(args).is_err(), "{extra}");
        }
    }
}
