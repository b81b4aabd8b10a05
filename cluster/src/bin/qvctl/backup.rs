//! `qvctl cluster snapshot save|inspect`: backups on the operator's machine.

use std::{io::Write, path::Path, process::ExitCode};

use anyhow::Context;
use qvdc_cluster::Client;
use qvdc_raft::backup;
use qvdc_transport::protocol::{ApiRequest, ApiResponse};

/// Asks the leader for a backup and writes it to `path` atomically.
pub(crate) async fn save(client: &mut Client, path: &Path) -> anyhow::Result<ExitCode> {
    let (index, term, file) = match client.request(ApiRequest::ClusterBackup).await {
        Ok(ApiResponse::Backup { index, term, file }) => (index, term, file),
        Ok(other) => anyhow::bail!("the cluster answered a backup request with {other:?}"),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(e.exit_code() as u8));
        }
    };
    // Refuse to keep what does not read back: the bytes are checked before they are kept.
    backup::decode(&file).context("the backup the cluster sent does not check out")?;
    write_atomically(path, &file)?;
    println!(
        "saved {}: index {index}, term {term}, {} bytes (check it with `qvctl cluster snapshot \
         inspect {}`)",
        path.display(),
        file.len(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = Path::new(&temporary);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(temporary, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Checks a backup file and describes it.
pub(crate) fn inspect(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let backup = backup::decode(&bytes).with_context(|| format!("{}", path.display()))?;
    let state = backup.state();
    let members: Vec<String> = backup
        .members
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect();
    Ok(format!(
        "{}: qvdc backup, checksum OK\n\
         taken by qvdc {} from leader node {}, at index {} (term {})\n\
         members then: {}\n\
         holds {} hosts, {} pools, {} VMs, {} networks, {} revoked certificates",
        path.display(),
        backup.release,
        backup.leader,
        backup.log_id.index,
        backup.log_id.leader_id.term,
        members.join(","),
        state.hosts.len(),
        state.pools.len(),
        state.vms.len(),
        state.networks.len(),
        state.revoked.len(),
    ))
}
