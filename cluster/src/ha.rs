//! HA on the leader (ADR 23): host leases granted with heartbeats, and the watcher that
//! restarts a lost host's HA VMs elsewhere by committing `FailOverVm` moves that
//! `core::ha` decided. Soft state only: a new leader starts empty and waits a full lease.

use std::{collections::HashMap, sync::Arc, time::Duration};

use qvdc_actors::{core::ha, Supervision};
use qvdc_raft::{Command, DesiredState};
use qvdc_transport::protocol::{
    ApiResponse, FencedVm, HostReply, IsolationResponse, Leadership, Response,
};
use tracing::{info, warn};

use crate::{context::Context, reply::not_found, write::propose};

/// How often the leader looks for lost hosts.
const HA_CHECK_MS: u64 = 500;

/// What the leader's HA keeps between rounds.
#[derive(Debug, Default)]
pub(crate) struct HaState {
    /// The latest plan's reasons, for `vm show`.
    plan: ha::Plan,
    /// By host: the fence list last offered to it and the connection it went on.
    sent: HashMap<String, Offered>,
    /// By host: the connection on which it said it takes leases.
    leased: HashMap<String, usize>,
}

#[derive(Debug)]
struct Offered {
    connection: usize,
    list: Vec<FencedVm>,
}

/// How `host` treats each of its VMs once its lease lapses: an HA VM by its isolation
/// response, any other kept running (nothing restarts it elsewhere). A VM the host finds
/// on no list is powered off: the list may not have reached it yet.
fn fenced(desired: &DesiredState, host: &str) -> Vec<FencedVm> {
    // A VM on its way here by a live migration may run here before its move is recorded.
    let arriving = desired
        .vms
        .values()
        .filter(|vm| vm.moving.as_ref().is_some_and(|m| m.to == host));
    desired
        .vms_of_host(host)
        .chain(arriving)
        .map(|vm| FencedVm {
            id: vm.spec.id.clone(),
            response: if vm.ha.restart {
                vm.ha.isolation
            } else {
                IsolationResponse::Keep
            },
        })
        .collect()
}

/// Host `host` said on `connection` whether it takes leases.
pub(crate) fn capabilities(node: &Context, host: &str, connection: usize, leases: bool) {
    let mut state = node.ha.lock().expect("HA state lock poisoned");
    // Every session starts here: whatever was offered on an earlier connection (whose id a
    // new one may reuse) is not known to have arrived.
    state.sent.remove(host);
    if leases {
        state.leased.insert(host.to_owned(), connection);
    } else {
        state.leased.remove(host);
    }
}

/// The answer to a heartbeat from a leader a quorum confirmed: a renewed lease, with the
/// host's fence list unless the host is known to have it already; a plain acknowledgement
/// to a host that did not say it takes leases (an older release).
pub(crate) fn lease(node: &Context, host: &str, connection: usize) -> HostReply {
    let list = fenced(&node.desired.borrow(), host);
    let mut state = node.ha.lock().expect("HA state lock poisoned");
    if state.leased.get(host) != Some(&connection) {
        return HostReply::HeartbeatAck;
    }
    // A host sends its next heartbeat only once it has the answer to the last, so a
    // heartbeat on the connection the list went on shows the host has it.
    let has_it = state
        .sent
        .get(host)
        .is_some_and(|o| o.connection == connection && o.list == list);
    if has_it {
        return HostReply::Lease { fenced: None };
    }
    let offered = Offered {
        connection,
        list: list.clone(),
    };
    state.sent.insert(host.to_owned(), offered);
    HostReply::Lease { fenced: Some(list) }
}

/// Restarts lost hosts' HA VMs while this node leads for `leadership`.
pub(crate) async fn watch(node: Arc<Context>, leadership: Leadership) {
    node.ha.lock().expect("HA state lock poisoned").plan = ha::Plan::default();
    let period = Duration::from_millis(HA_CHECK_MS);
    let each = |supervision: Supervision| {
        let node = node.clone();
        async move { round(&node, &supervision).await }
    };
    node.each_leader_round(leadership, period, "HA", || true, each)
        .await;
}

async fn round(node: &Context, supervision: &Supervision) -> Result<(), String> {
    let silences = supervision.silences().await.map_err(|e| e.to_string())?;
    let lost_after = ha::lost_after();
    let desired = node.desired.borrow().clone();
    let anything_lost = desired.vms.values().any(|vm| {
        vm.ha.restart
            && silences
                .get(&vm.host)
                .is_some_and(|s| *s >= Duration::from_secs(3))
    });
    let plan = if anything_lost {
        let facts = crate::api::placement_facts(supervision, node)
            .await
            .map_err(|_| "placement facts unavailable".to_owned())?;
        ha::plan(&desired, &silences, facts)
    } else {
        ha::Plan::default()
    };
    let moves = plan.moves.clone();
    node.ha.lock().expect("HA state lock poisoned").plan = plan;
    for ha::Move { vm, from, to } in moves {
        // Heard from again since the silences were read (it came back): not lost after all.
        let now_silent = supervision.silences().await.map_err(|e| e.to_string())?;
        let silent = now_silent.get(&from).copied().unwrap_or_default();
        if silent < lost_after {
            continue;
        }
        info!(%vm, %from, %to, silent_ms = silent.as_millis() as u64, lost_after_ms = lost_after.as_millis() as u64,
            "host lost: restarting HA VM elsewhere");
        let command = Command::FailOverVm {
            name: vm.clone(),
            from,
            to,
        };
        if let Err(response) = propose(node, command).await {
            warn!(%vm, ?response, "HA restart not committed; retrying next round");
        }
    }
    Ok(())
}

/// `vm ha`: the HA policy and status of one VM or all.
pub(crate) fn view(node: &Context, name: Option<String>) -> Response {
    let desired = node.desired.borrow().clone();
    if let Some(name) = &name {
        if !desired.vms.contains_key(name) {
            return not_found(format!(
                "no VM named {name:?}; `qvctl vm list` shows the VMs"
            ));
        }
    }
    let state = node.ha.lock().expect("HA state lock poisoned");
    let views = ha::views(&desired, &state.plan, name.as_deref());
    Response::Api(Ok(ApiResponse::VmHa(views)))
}
