//! `qvdc restore` and `qvdc force-new-cluster`: building a new cluster's data directories
//! from a backup, or around the one node that survived (docs/operations.md, ADR 21).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context};
use qvdc_cluster::node::DATA_FILE;
use qvdc_raft::{
    backup::{self, StartingPoint},
    store,
};

use crate::parse_initial_cluster;

/// Build one node's data directory of a new cluster from a backup file.
///
/// Run it once per member, each with its own --node-id and --data-dir and the same --from and
/// --initial-cluster; then start every member with `qvdc server` and the same
/// --initial-cluster. The nodes start at the backup's log position with the backup's state;
/// hosts keep their VMs and reconnect.
///
/// Example:
///   qvdc restore --from /var/backups/qvdc.qvbk --node-id 1 --data-dir /var/lib/qvdc \
///     --initial-cluster 1=10.0.0.1:7100,2=10.0.0.2:7100,3=10.0.0.3:7100
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct RestoreArgs {
    /// The backup file (`qvctl cluster snapshot save`).
    #[arg(long)]
    from: PathBuf,
    /// This node's id in --initial-cluster.
    #[arg(long)]
    node_id: u64,
    /// The data directory to create; it must not hold a node's data.
    #[arg(long)]
    data_dir: PathBuf,
    /// Every member of the new cluster as ID=HOST:PORT, comma-separated.
    #[arg(long)]
    initial_cluster: String,
    /// Start the new cluster's terms above this one. Hosts refuse commands from leaderships
    /// older than the newest they obeyed: if the old cluster ran on after the backup, pass
    /// the highest term it reached (`qvctl cluster status`, or the first number in a host's
    /// fence file). Defaults to the backup's own term.
    #[arg(long, default_value_t = 0)]
    term_at_least: u64,
}

/// Turn the one surviving node of a cluster that lost its quorum for good into a new
/// one-node cluster, keeping its state
///
/// DANGER: only when the other members are gone for good. The node keeps every entry of its
/// own log, including ones that may never have been committed, and writes that only the
/// lost members had acknowledged are gone. Stop the node first; its old database and log are
/// kept next to the new ones (raft.redb.before-force-new-cluster and
/// raft-log.before-force-new-cluster, in this release's storage format). Then start it with `qvdc server`
/// (--initial-cluster ID=its --listen address) and grow the cluster back with `qvdc server
/// --join` and `qvctl cluster add-node`. Hosts reconnect without being re-provisioned.
///
/// Example:
///   qvdc force-new-cluster --node-id 1 --listen 10.0.0.1:7100 --data-dir /var/lib/qvdc
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct ForceNewClusterArgs {
    /// The surviving node's id.
    #[arg(long)]
    node_id: u64,
    /// The address the node will serve on: the new cluster's only member.
    #[arg(long)]
    listen: SocketAddr,
    /// The surviving node's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Start the new cluster's terms above this one (see `qvdc restore --help`). Defaults to
    /// the highest term the survivor voted in; if the lost nodes may have elected a leader
    /// without it, pass the highest term the hosts obeyed (the first number in a host's
    /// fence file).
    #[arg(long, default_value_t = 0)]
    term_at_least: u64,
}

pub(crate) fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let members = parse_initial_cluster(&args.initial_cluster)?;
    let bytes =
        std::fs::read(&args.from).with_context(|| format!("reading {}", args.from.display()))?;
    let backup = backup::decode(&bytes).with_context(|| format!("{}", args.from.display()))?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let start = StartingPoint {
        state: backup.state(),
        log_id: backup.log_id,
        term_at_least: args.term_at_least,
    };
    backup::write_data_dir(
        &args.data_dir.join(DATA_FILE),
        args.node_id,
        &members,
        &start,
    )?;
    println!(
        "node {}: {} now holds the backup's state at index {} (term {}, taken by qvdc {}); \
         start it with `qvdc server --node-id {} --data-dir {} --initial-cluster {}`",
        args.node_id,
        args.data_dir.display(),
        backup.log_id.index,
        backup.log_id.leader_id.term,
        backup.release,
        args.node_id,
        args.data_dir.display(),
        args.initial_cluster,
    );
    Ok(())
}

pub(crate) async fn force_new_cluster(args: ForceNewClusterArgs) -> anyhow::Result<()> {
    let file = args.data_dir.join(DATA_FILE);
    if !file.exists() {
        bail!(
            "{} does not exist: there is nothing to recover",
            file.display()
        );
    }
    // Refuses a file a running node holds before anything changes (a newer format is refused
    // when the replay opens it).
    store::ensure_not_in_use(&file)?;
    let replayed = backup::replay(&file, args.node_id).await?;
    let kept = args
        .data_dir
        .join(format!("{DATA_FILE}.before-force-new-cluster"));
    // The log's segments go aside with the database, under the same suffix.
    let (log, kept_log) = (store::log_dir(&file), store::log_dir(&kept));
    for earlier in [&kept, &kept_log] {
        if earlier.exists() {
            bail!(
                "{} exists from an earlier recovery: move it away first",
                earlier.display()
            );
        }
    }
    std::fs::rename(&file, &kept).with_context(|| format!("moving {} aside", file.display()))?;
    if log.exists() {
        if let Err(e) = std::fs::rename(&log, &kept_log) {
            std::fs::rename(&kept, &file).with_context(|| {
                format!(
                    "moving {} aside failed ({e}); and putting {} back failed: move it to {} \
                     by hand",
                    log.display(),
                    kept.display(),
                    file.display()
                )
            })?;
            return Err(e).with_context(|| format!("moving {} aside", log.display()));
        }
    }
    let members = BTreeMap::from([(args.node_id, args.listen.to_string())]);
    let start = StartingPoint {
        state: &replayed.state,
        log_id: replayed.last,
        term_at_least: args.term_at_least.max(replayed.vote_term),
    };
    if let Err(e) = backup::write_data_dir(&file, args.node_id, &members, &start) {
        // Leave the directory as it was: a node started on an empty one would form a new,
        // empty cluster.
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_dir_all(&log);
        if kept_log.exists() {
            std::fs::rename(&kept_log, &log).with_context(|| {
                format!(
                    "{e:#}; and putting {} back failed: move it to {} by hand, and {} to {}",
                    kept_log.display(),
                    log.display(),
                    kept.display(),
                    file.display()
                )
            })?;
        }
        std::fs::rename(&kept, &file).with_context(|| {
            format!(
                "{e:#}; and putting {} back failed: move it to {} by hand",
                kept.display(),
                file.display()
            )
        })?;
        return Err(e.into());
    }
    println!(
        "node {} is now a one-node cluster at index {} with its state ({} pools, {} VMs); the \
         old database is kept as {}. Start it with `qvdc server --node-id {} --listen {} \
         --data-dir {} --initial-cluster {}={}`, then add members with `qvctl cluster add-node`",
        args.node_id,
        replayed.last.index,
        replayed.state.pools.len(),
        replayed.state.vms.len(),
        kept.display(),
        args.node_id,
        args.listen,
        args.data_dir.display(),
        args.node_id,
        args.listen,
    );
    Ok(())
}
