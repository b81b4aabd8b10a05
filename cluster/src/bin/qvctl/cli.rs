//! The command line: every command, option and argument, with the parsers of sizes, disks
//! and domains; `--help` is generated from what is here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use qvdc_cluster::output;
use qvdc_transport::{
    protocol::{PoolScope, VmDisk, VolumeFormat},
    tls::{self, Role},
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
#[command(name = "qvctl", version = qvdc_cluster::RELEASE, verbatim_doc_comment)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) connection: Connection,
    /// Output format.
    #[arg(
        long,
        short,
        global = true,
        value_enum,
        default_value = "table",
        help_heading = "Output"
    )]
    pub(crate) output: output::Format,
    /// Read from whichever node answers first, from its own copy of the desired state,
    /// without the leader: works during elections and on a cut-off node, may miss the
    /// latest changes, and shows hosts' reports (health, power, liveness) as unknown.
    /// For status, list and show commands. Without it, reads are linearizable.
    #[arg(long, global = true, help_heading = "Output")]
    pub(crate) stale: bool,
    /// For list and show commands: print again each time something changes (a change
    /// applied, a host's report), like `kubectl get -w`. Ctrl-C stops.
    #[arg(long, short = 'w', global = true, help_heading = "Output")]
    pub(crate) watch: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Listed after each command's own options, under their own heading.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub(crate) struct Connection {
    /// Control-plane addresses, comma-separated; any node will do.
    #[arg(long, global = true, env = "QVDC_CLUSTER", value_delimiter = ',')]
    pub(crate) cluster: Vec<String>,
    /// Cluster CA certificate.
    #[arg(long, global = true, env = "QVDC_CA_CERT")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Your operator certificate.
    #[arg(long, global = true, env = "QVDC_CERT")]
    pub(crate) cert: Option<PathBuf>,
    /// Your operator key.
    #[arg(long, global = true, env = "QVDC_KEY")]
    pub(crate) key: Option<PathBuf>,
    /// Give up on a request after this long (elections and redirects included).
    #[arg(long, global = true, default_value_t = 10_000)]
    pub(crate) timeout_ms: u64,
    /// Id of this change. A change sent again with the same id is applied at most once and
    /// gets the first answer: pass one when a script may retry (default: a fresh id).
    #[arg(long, global = true)]
    pub(crate) request_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// What changed, who changed it, and what hosts reported
    ///
    /// Two streams, oldest first. Changes to desired state come from the audit trail kept in
    /// the replicated state: `#N` numbers them without gaps, with the operator's certificate
    /// name (or "qvdc" for its own: HA restarts, moves, host registration), the node that
    /// passed the request on, the outcome and the request id. Hosts' reports (host liveness,
    /// pool health per host, VM power, network state) are what the leader learned; after a
    /// leader change they start again from the state of everything.
    ///
    /// Examples:
    ///   qvctl events                     the last 20 changes and the current reported state
    ///   qvctl events --follow            and everything after, as it happens
    ///   qvctl events --since 120 -f -o json
    ///                                    one JSON object per line, from change #120 on
    #[command(verbatim_doc_comment)]
    Events {
        /// Start at change #N (default: the last --last changes).
        #[arg(long, value_name = "N")]
        since: Option<u64>,
        /// How many recent changes to start with when --since is not given.
        #[arg(long, default_value_t = 20, value_name = "N")]
        last: u64,
        /// Keep printing as things happen, across leader changes (Ctrl-C stops).
        #[arg(long, short)]
        follow: bool,
        /// Only changes to desired state, not hosts' reports.
        #[arg(long)]
        changes_only: bool,
    },
    /// Serve a web dashboard of the cluster on this machine
    ///
    /// Pages for the cluster, hosts, storage pools (with each pool's health on each host),
    /// VMs, networks and the audit trail, updated live; forms to create pools and VMs and to
    /// assign pools to hosts. It runs here and talks to the cluster with your certificate,
    /// like `kubectl proxy`: the servers get no new login. Keep it on a loopback address:
    /// whoever reaches it acts with your certificate.
    ///
    /// Example: qvctl dashboard --open
    #[command(verbatim_doc_comment)]
    Dashboard {
        /// Address to serve the dashboard on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Open it in the default browser (xdg-open).
        #[arg(long)]
        open: bool,
    },
    /// Print a shell completion script, e.g. `qvctl completions bash > /etc/bash_completion.d/qvctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NetworkCommand {
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
pub(crate) enum VolumeCommand {
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
pub(crate) enum FormatArg {
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
pub(crate) struct Wait {
    /// Follow the change until the hosts report it done, host by host.
    #[arg(long)]
    pub(crate) wait: bool,
    /// Give up waiting after this long (exit code 4).
    #[arg(long, default_value_t = 120_000)]
    pub(crate) wait_timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
pub(crate) enum VmCommand {
    /// Define a VM; the cluster picks a host unless --host is given
    ///
    /// With --dry-run, shows where the VM would go and, for every other host, why not
    /// (unreachable, in maintenance, a pool not healthy there, a network not up, too few
    /// cores or too little free memory), and creates nothing.
    ///
    /// Examples:
    ///   qvctl vm create web --vcpus 2 --memory 2G --disk shared/web.qcow2 --dry-run
    ///   qvctl vm create web --vcpus 2 --memory 2G --disk shared/web.qcow2 --start --wait
    ///   qvctl vm create db --memory 4G --disk shared/db.qcow2 --start --ha restart --ha-priority 10
    ///
    /// With --ha restart, the VM runs again on another host that has its pools healthy and
    /// the memory when its host is lost (silent for 12 s: 8 s of lease, then time for the
    /// host's isolation response); `qvctl vm ha` shows what HA is doing.
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
        ha: HaArgs,
        #[command(flatten)]
        wait: Wait,
    },
    /// Set a VM's HA policy, or show what HA does for every VM (without arguments)
    ///
    /// Examples:
    ///   qvctl vm ha                                   # policy and status of every VM
    ///   qvctl vm ha db --ha restart --ha-priority 10  # restart db elsewhere if its host is lost
    ///   qvctl vm ha web --ha off
    #[command(verbatim_doc_comment)]
    Ha {
        name: Option<String>,
        #[command(flatten)]
        ha: HaArgs,
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
    /// An HA VM (isolation power-off or shut-down) whose host is lost is deleted at once:
    /// that host stopped the guest itself when its lease lapsed.
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
    /// Move a VM to another host: live if it runs, else stopped here and started there
    ///
    /// A running VM migrates live (libvirt peer to peer: its memory is copied while it runs,
    /// then it pauses for the last copy, typically well under a second) when the new host
    /// takes live migrations (qhost --migration-uri); otherwise, and for a VM not running
    /// now, it is shut down here and started there. Every disk must be on a shared pool the
    /// new host has healthy. Without --to, placement picks the host (most free memory).
    /// The move is recorded before and after: a leader change or a failed host mid-way
    /// finishes or abandons it, never runs the VM twice. `qvctl vm moves` shows moves.
    ///
    /// Examples:
    ///   qvctl vm migrate web --to host-2 --wait
    ///   qvctl vm migrate web                   # wherever placement puts it
    #[command(verbatim_doc_comment)]
    Migrate {
        name: String,
        /// The host to move it to; placement picks one if left out.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// The moves under way (and each VM's last failed one), and what every host in
    /// maintenance still runs.
    Moves,
    /// One VM: its definition, host, desired and reported power state.
    Show { name: String },
    /// All VMs.
    List,
}

/// A VM's HA policy on the command line.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HaArgs {
    /// restart: run the VM again on another host when its host is lost; off: leave it down.
    #[arg(long, value_enum)]
    pub(crate) ha: Option<HaMode>,
    /// Higher restarts first when not every VM of a lost host fits elsewhere (0-255).
    #[arg(long, default_value_t = 0, requires = "ha")]
    pub(crate) ha_priority: u8,
    /// What the VM's host does with it once it loses the control plane for 8 s, before the VM
    /// may start elsewhere: power-off (at once), shut-down (3 s to shut down, then power off)
    /// or keep (left running: the pool's storage lock then refuses the second start until
    /// the first guest ends).
    #[arg(long, value_enum, default_value_t = Isolation::PowerOff, requires = "ha")]
    pub(crate) isolation: Isolation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum HaMode {
    Restart,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Isolation {
    PowerOff,
    ShutDown,
    Keep,
}

impl HaArgs {
    /// The policy asked for, if any.
    pub(crate) fn policy(&self) -> Option<qvdc_transport::protocol::HaPolicy> {
        use qvdc_transport::protocol::{HaPolicy, IsolationResponse};
        let mode = self.ha?;
        Some(match mode {
            HaMode::Off => HaPolicy::default(),
            HaMode::Restart => HaPolicy {
                restart: true,
                priority: self.ha_priority,
                isolation: match self.isolation {
                    Isolation::PowerOff => IsolationResponse::PowerOff,
                    Isolation::ShutDown => IsolationResponse::ShutDown,
                    Isolation::Keep => IsolationResponse::Keep,
                },
            },
        })
    }
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
pub(crate) enum CertsCommand {
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
pub(crate) enum ClusterCommand {
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
    /// Back up the whole desired state to a file, or check a backup file
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Set how many changes the audit trail keeps (`qvctl events`); the oldest go first
    ///
    /// The trail is part of the replicated state: each change costs a few hundred bytes in
    /// every node's memory and snapshot. Default 10000, at most 100000.
    AuditRetention {
        /// Changes to keep.
        entries: u32,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Save a consistent backup through the leader: everything acknowledged before it
    ///
    /// The file carries the log index and term it stands at and a SHA-256 checksum; it is
    /// written to FILE.tmp, synced, then renamed, so FILE is never half-written. Restore it
    /// with `qvdc restore` (docs/operations.md).
    ///
    /// Example: qvctl cluster snapshot save /var/backups/qvdc-$(date +%F).qvbk
    #[command(verbatim_doc_comment)]
    Save { file: std::path::PathBuf },
    /// Check a backup file offline and show what it holds
    ///
    /// Verifies the header, the length and the checksum, decodes the state, and prints the
    /// log position, the members it was taken from and how many objects it holds.
    Inspect { file: std::path::PathBuf },
}

#[derive(Debug, Subcommand)]
pub(crate) enum HostCommand {
    /// Registered hosts with their inventory and liveness.
    List,
    /// One host: inventory, liveness, and the pools and VMs assigned to it.
    Show { host: String },
    /// Put a host in maintenance and move its VMs off, or take it out again
    ///
    /// enter: the host gets no new VMs, and its running VMs move to other hosts, two at a
    /// time: live (`qvctl vm migrate`) to hosts that take live migrations (qhost
    /// --migration-uri), else shut down and started on another host. Stopped VMs stay. A
    /// host that runs a VM that cannot run elsewhere (a disk on the host's own storage) is
    /// refused: stop that VM first. exit: the host takes VMs again (none move back).
    ///
    /// Examples:
    ///   qvctl host maintenance enter host-1 --wait   # each VM's move, until all run elsewhere
    ///   qvctl vm moves                               # what moves, and what is left to move
    ///   qvctl host maintenance exit host-1
    #[command(verbatim_doc_comment)]
    Maintenance {
        #[arg(value_enum)]
        action: EnterExit,
        host: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Forget a dead host: its record and its pool and network assignments go
    ///
    /// Only a host silent for 12 s or more (lost), and only once no VM is on it: HA moves its
    /// HA VMs elsewhere; delete the others (`qvctl vm delete` works for a lost host's VMs).
    /// A host that comes back later registers again as a new host with nothing assigned,
    /// and removes the domains that meanwhile run elsewhere.
    #[command(verbatim_doc_comment)]
    Remove { host: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EnterExit {
    Enter,
    Exit,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PoolCommand {
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
pub(crate) enum ScopeArg {
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
pub(crate) enum PoolKind {
    Dir,
    Nfs,
    Block,
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
