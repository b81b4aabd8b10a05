//! `qvctl`: the operator's command line for a qvdc cluster.
//!
//! `cli` parses the command line; `commands` turns a command into a request to the cluster
//! (or runs a certificate command locally); `wait` follows a change with `--wait`, shown by
//! `progress`. Responses are rendered by the library's `output`.

mod backup;
mod cli;
mod commands;
mod dashboard;
mod events;
mod progress;
mod wait;

use std::process::ExitCode;

use clap::Parser;
use qvdc_cluster::output;
use qvdc_transport::protocol::{ApiRequest, ApiResponse};

use crate::{
    cli::{CertsCommand, Cli, ClusterCommand, Command, SnapshotCommand},
    commands::{certs, client, request_of},
    wait::{follow, wait_goal, Goal},
};

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
    if let Command::Cluster(ClusterCommand::Snapshot(SnapshotCommand::Inspect { file })) =
        &cli.command
    {
        println!("{}", backup::inspect(file)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Dashboard { listen, open } = cli.command {
        let connection = cli.connection.clone();
        client(&connection)?; // says now what is missing, before anything listens
        let connect = Box::new(move || client(&connection));
        return dashboard::run(listen, open, connect).await;
    }
    let mut client = client(&cli.connection)?;
    if let Command::Cluster(ClusterCommand::Snapshot(SnapshotCommand::Save { file })) = &cli.command
    {
        return backup::save(&mut client, file).await;
    }
    if let Command::Events {
        since,
        last,
        follow,
        changes_only,
    } = cli.command
    {
        let format = cli.output;
        return Ok(events::events(&mut client, since, last, follow, changes_only, format).await);
    }
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
    if cli.watch {
        if !is_read(&request) {
            anyhow::bail!("--watch is for list and show commands (and `cluster status`)");
        }
        return Ok(events::watch(&mut client, request, cli.output).await);
    }
    let ha_of = match (&request, cli.output) {
        (ApiRequest::VmShow { name }, output::Format::Table) => Some(name.clone()),
        _ => None,
    };
    let outcome = match client.request(request).await {
        Ok(response) => {
            println!("{}", output::render(&response, cli.output));
            // `vm show` adds the VM's HA policy and what HA is doing about it; a cluster of
            // a release without HA does not know the request, and the line is left out.
            if let Some(name) = ha_of {
                let ha = ApiRequest::VmHa {
                    name: Some(name.clone()),
                };
                if let Ok(ApiResponse::VmHa(views)) = client.request(ha).await {
                    for view in views {
                        println!("HA: {}", view.policy);
                        if let Some(status) = view.status {
                            println!("HA status: {status}");
                        }
                    }
                }
                if let Ok(ApiResponse::Moves(moves)) = client.request(ApiRequest::Moves).await {
                    for m in moves.moves.iter().filter(|m| m.vm == name) {
                        if m.failed {
                            println!("last move: to {} ({}) failed: {}", m.to, m.mode, m.status);
                        } else {
                            println!("moving: to {} ({}): {}", m.to, m.mode, m.status);
                        }
                    }
                }
            }
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

/// Whether `request` only reads, so that `--watch` may repeat it.
fn is_read(request: &ApiRequest) -> bool {
    matches!(
        request,
        ApiRequest::ClusterStatus
            | ApiRequest::HostList
            | ApiRequest::HostShow { .. }
            | ApiRequest::PoolList
            | ApiRequest::PoolShow { .. }
            | ApiRequest::VmList
            | ApiRequest::VmShow { .. }
            | ApiRequest::VolumeList { .. }
            | ApiRequest::NetworkList
            | ApiRequest::NetworkShow { .. }
            | ApiRequest::Moves
            | ApiRequest::VmHa { .. }
            | ApiRequest::Stale(_)
    )
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
