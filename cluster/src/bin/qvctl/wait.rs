//! `--wait`: what a change waits for, and following it by polling the cluster until it is
//! reached or the wait times out.

use std::time::Duration;

use qvdc_cluster::{client::ClientError, Client};
use qvdc_transport::protocol::{
    ApiError, ApiErrorKind, ApiRequest, ApiResponse, DesiredPower, Liveness, MovesView, PowerState,
};

use crate::{
    cli::{Command, EnterExit, HostCommand, PoolCommand, VmCommand},
    progress::Progress,
};

/// What `--wait` waits for.
pub(crate) enum Goal {
    /// The VM in this power state.
    Power(String, PowerState),
    /// The VM gone.
    Gone(String),
    /// The pool unmounted from every host it is not assigned to, these hosts (the pool's
    /// before the delete) included even if a new leader has not heard from them yet.
    Unmounted(String, Vec<String>),
    /// Every host of the pool reported it (healthy or not).
    Reported(String),
    /// The VM's move over: on the new host and in its desired power state, or failed.
    Moved(String),
    /// The host in maintenance and running no VM that should run, and every VM moved off it
    /// reported by its new host in its desired power state.
    Evacuated(String),
}

/// The goal a `--wait` follows and for how long, if one was asked for.
pub(crate) fn wait_goal(command: &Command) -> Option<(Goal, u64)> {
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
        Command::Vm(VmCommand::Migrate { name, wait, .. }) => (Goal::Moved(name.clone()), wait),
        Command::Host(HostCommand::Maintenance {
            action: EnterExit::Enter,
            host,
            wait,
        }) => (Goal::Evacuated(host.clone()), wait),
        _ => return None,
    };
    wait.wait.then_some((goal, wait.wait_timeout_ms))
}

/// Polls until the goal is reached, showing each change of state.
pub(crate) async fn follow(
    client: &mut Client,
    goal: Goal,
    timeout_ms: u64,
) -> Result<(), ClientError> {
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
        Goal::Moved(name) => {
            let moves = moves(client).await?;
            if let Some(m) = moves.moves.iter().find(|m| m.vm == *name) {
                let what = format!("{name} {} to {}", m.mode, m.to);
                if m.failed {
                    progress.update(&what, format!("failed: {}", m.status), true);
                    return Err(ClientError::Rejected(ApiError::new(
                        ApiErrorKind::Unavailable,
                        format!(
                            "moving VM {name} to {} failed: {}; it stays on {}",
                            m.to, m.status, m.from
                        ),
                    )));
                }
                progress.update(&what, m.status.clone(), false);
                return Ok(false);
            }
            // The move is over: the VM runs (or not) as it should on its new host.
            let vm = match client
                .request(ApiRequest::VmShow { name: name.clone() })
                .await?
            {
                ApiResponse::Vm(vm) => vm,
                other => return Err(ClientError::Protocol(format!("{other:?}"))),
            };
            let reached = vm.power == wanted_power(vm.desired);
            progress.settle(&[], "moved");
            progress.update(
                name,
                format!("{} on {} ({})", vm.power, vm.host, vm.reason),
                reached,
            );
            Ok(reached)
        }
        Goal::Evacuated(host) => {
            let moves = moves(client).await?;
            let Some(evacuation) = moves.evacuations.iter().find(|e| e.host == *host) else {
                return Err(ClientError::Rejected(ApiError::new(
                    ApiErrorKind::Invalid,
                    format!("host {host} is no longer in maintenance"),
                )));
            };
            if !evacuation.remaining.is_empty() {
                let mut current = Vec::new();
                for (vm, what) in &evacuation.remaining {
                    progress.update(vm, what.clone(), false);
                    current.push(vm.clone());
                }
                progress.settle(&current, "moved");
                return Ok(false);
            }
            // Every move is over in the record. A moved VM counts once its new host reports
            // it in its desired power state: right after a live move the view has no report
            // from the new host yet, and an operator told "evacuated" would see it UNKNOWN.
            let moved: Vec<String> = progress.last.keys().cloned().collect();
            let mut all = true;
            for name in moved {
                let vm = match client
                    .request(ApiRequest::VmShow { name: name.clone() })
                    .await
                {
                    Ok(ApiResponse::Vm(vm)) => vm,
                    // Deleted meanwhile: nothing of it runs on the host.
                    Err(ClientError::Rejected(e)) if e.kind == ApiErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                    Ok(other) => return Err(ClientError::Protocol(format!("{other:?}"))),
                };
                let reached = vm.power == wanted_power(vm.desired) && vm.host != *host;
                progress.update(
                    &name,
                    format!("{} on {} ({})", vm.power, vm.host, vm.reason),
                    reached,
                );
                all &= reached;
            }
            Ok(all)
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

/// The power state a VM's view shows once its host carried out what is desired.
fn wanted_power(desired: DesiredPower) -> PowerState {
    match desired {
        DesiredPower::Running => PowerState::Running,
        DesiredPower::Stopped => PowerState::ShutOff,
    }
}

async fn moves(client: &mut Client) -> Result<MovesView, ClientError> {
    match client.request(ApiRequest::Moves).await? {
        ApiResponse::Moves(moves) => Ok(moves),
        other => Err(ClientError::Protocol(format!("{other:?}"))),
    }
}
