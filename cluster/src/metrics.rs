//! A node's Prometheus metrics (ADR 26), served by `qvdc server --metrics-listen ADDR` at
//! `/metrics`: Raft (leader, term, indexes, leader changes, proposals, log commit and
//! snapshot durations), operator requests by kind and outcome with their latency, commands
//! sent to hosts, and — on the leader — hosts by liveness, each pool's health and capacity
//! on each host, VMs by power state and each host's heartbeat age.

use std::sync::Arc;

use qvdc_actors::CommandMetrics;
use qvdc_raft::store::StoreMetrics;
use qvdc_transport::{
    http::{self, HttpRequest, HttpResponse},
    metrics::{self, Counter, Family, Gauges, KindLabel, KindOutcome, Registry, SecondsFamily},
    protocol::{ApiErrorKind, Health, Response},
};

use crate::context::Context;

/// Everything a node counts. Cheap to clone.
#[derive(Clone)]
pub(crate) struct NodeMetrics {
    registry: Arc<Registry>,
    pub(crate) store: StoreMetrics,
    pub(crate) commands: CommandMetrics,
    pub(crate) requests: Family<KindOutcome, Counter>,
    pub(crate) request_seconds: SecondsFamily<KindLabel>,
    pub(crate) proposals: Family<KindLabel, Counter>,
    pub(crate) leader_changes: Counter,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let store = StoreMetrics::default();
        let commands = CommandMetrics::default();
        let requests = Family::default();
        let request_seconds = metrics::seconds_family();
        let proposals = Family::default();
        let leader_changes = Counter::default();
        let mut registry = Registry::default();
        store.register(&mut registry);
        commands.register(&mut registry);
        registry.register(
            "qvdc_api_requests",
            "Operator requests answered by this node, by kind and outcome (ok, invalid, not_found, already_exists, unavailable, internal, not_leader, forbidden)",
            requests.clone(),
        );
        registry.register(
            "qvdc_api_request_seconds",
            "Time to answer an operator request, by kind (passing it on to the leader included)",
            request_seconds.clone(),
        );
        registry.register(
            "qvdc_raft_proposals",
            "Changes this node proposed as leader, by outcome: committed, refused (invalid against the state) or failed (not committed: leadership lost, timeout)",
            proposals.clone(),
        );
        registry.register(
            "qvdc_raft_leader_changes",
            "Times this node saw the leader change (including to no leader known)",
            leader_changes.clone(),
        );
        Self {
            registry: Arc::new(registry),
            store,
            commands,
            requests,
            request_seconds,
            proposals,
            leader_changes,
        }
    }
}

impl NodeMetrics {
    /// Counts one answered operator request of `kind`.
    pub(crate) fn answered(&self, kind: &'static str, response: &Response, seconds: f64) {
        let outcome = match response {
            Response::Api(result) | Response::ApiPassedOn { result, .. } => match result {
                Ok(_) => "ok",
                Err(e) => match e.kind {
                    ApiErrorKind::Invalid => "invalid",
                    ApiErrorKind::NotFound => "not_found",
                    ApiErrorKind::AlreadyExists => "already_exists",
                    ApiErrorKind::Unavailable => "unavailable",
                    ApiErrorKind::Internal => "internal",
                },
            },
            Response::NotLeader { .. } => "not_leader",
            Response::Forbidden { .. } => "forbidden",
            _ => "other",
        };
        self.requests
            .get_or_create(&KindOutcome { kind, outcome })
            .inc();
        self.request_seconds
            .get_or_create(&KindLabel { kind })
            .observe(seconds);
    }

    pub(crate) fn proposed(&self, outcome: &'static str) {
        self.proposals
            .get_or_create(&KindLabel { kind: outcome })
            .inc();
    }
}

/// The text of `/metrics` now.
pub(crate) async fn scrape(ctx: &Context) -> String {
    let mut g = Gauges::default();
    let (leader, term, last_log, applied, snapshot) = {
        let m = ctx.raft.metrics();
        let m = m.borrow();
        (
            m.current_leader,
            m.current_term,
            m.last_log_index,
            m.last_applied.map(|id| id.index),
            m.snapshot.map(|id| id.index),
        )
    };
    let index = |i: Option<u64>| i.unwrap_or(0) as f64;
    for (name, help, value) in [
        (
            "qvdc_raft_has_leader",
            "Whether this node knows a leader",
            one(leader.is_some()),
        ),
        (
            "qvdc_raft_is_leader",
            "Whether this node leads",
            one(leader == Some(ctx.id)),
        ),
        (
            "qvdc_raft_term",
            "This node's current Raft term",
            term as f64,
        ),
        (
            "qvdc_raft_last_log_index",
            "The last entry of this node's log",
            index(last_log),
        ),
        (
            "qvdc_raft_commit_index",
            "The last entry this node knows to be committed",
            index(ctx.log.committed_index()),
        ),
        (
            "qvdc_raft_applied_index",
            "The last entry this node applied",
            index(applied),
        ),
        (
            "qvdc_raft_snapshot_index",
            "The last entry in this node's snapshot",
            index(snapshot),
        ),
    ] {
        g.family(name, help);
        g.sample(name, &[], value);
    }
    let desired = ctx.desired();
    g.family(
        "qvdc_audit_changes_recorded",
        "Changes recorded in the audit trail so far (the trail's next sequence number minus one)",
    );
    g.sample(
        "qvdc_audit_changes_recorded",
        &[],
        desired.audit.next_seq.saturating_sub(1) as f64,
    );
    if let Some(supervision) = ctx.supervision().await {
        leader_gauges(ctx, &supervision, &mut g).await;
    }
    metrics::render(&ctx.metrics.registry, &g)
}

/// What only the leader knows: reported state.
async fn leader_gauges(ctx: &Context, supervision: &qvdc_actors::Supervision, g: &mut Gauges) {
    if let Ok(liveness) = supervision.liveness().await {
        let hosts = ctx.host_views(&liveness);
        let name = "qvdc_hosts";
        g.family(
            name,
            "Hosts by liveness (Ready, Unreachable) and maintenance",
        );
        for state in ["Ready", "Unreachable"] {
            for maintenance in [false, true] {
                let count = hosts
                    .iter()
                    .filter(|h| h.liveness.to_string() == state && h.maintenance == maintenance)
                    .count();
                let m = if maintenance { "true" } else { "false" };
                g.sample(
                    name,
                    &[("liveness", state), ("maintenance", m)],
                    count as f64,
                );
            }
        }
    }
    if let Ok(silences) = supervision.silences().await {
        let name = "qvdc_host_heartbeat_age_seconds";
        g.family(name, "Time since the leader last heard from each host");
        for (host, silence) in silences {
            g.sample(name, &[("host", &host)], silence.as_secs_f64());
        }
    }
    if let Ok(pools) = supervision.pool_views().await {
        let families = [
            (
                "qvdc_pool_host_up",
                "Whether the pool is healthy on the host (1) or not (0; UNKNOWN included)",
            ),
            (
                "qvdc_pool_host_capacity_bytes",
                "The pool's size as the host last reported it",
            ),
            (
                "qvdc_pool_host_used_bytes",
                "The pool's used bytes as the host last reported them",
            ),
        ];
        for (i, (name, help)) in families.iter().enumerate() {
            g.family(name, help);
            for pool in &pools {
                for host in &pool.hosts {
                    let value = match i {
                        0 => one(host.health == Health::Healthy),
                        1 => host.capacity.total_bytes as f64,
                        _ => host.capacity.used_bytes as f64,
                    };
                    g.sample(
                        name,
                        &[("pool", &pool.spec.name), ("host", &host.host_id)],
                        value,
                    );
                }
            }
        }
        let name = "qvdc_pool_host_health";
        g.family(
            name,
            "Each pool's health on each host, as a 1 for its state",
        );
        for pool in &pools {
            for host in &pool.hosts {
                let health = host.health.to_string();
                let labels = [
                    ("pool", pool.spec.name.as_str()),
                    ("host", &host.host_id),
                    ("health", &health),
                ];
                g.sample(name, &labels, 1.0);
            }
        }
    }
    if let Ok(vms) = supervision.vm_views().await {
        let name = "qvdc_vms";
        g.family(name, "Managed VMs by power state as their hosts report it");
        let mut by_power = std::collections::BTreeMap::<String, u64>::new();
        for vm in vms {
            *by_power.entry(vm.power.to_string()).or_default() += 1;
        }
        for (power, count) in by_power {
            g.sample(name, &[("power", &power)], count as f64);
        }
    }
}

fn one(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Serves `/metrics` on `addr` until the task is dropped.
pub(crate) async fn serve(ctx: Arc<Context>, listener: tokio::net::TcpListener) {
    http::serve(listener, 0, move |request: HttpRequest| {
        let ctx = ctx.clone();
        async move {
            match (request.method.as_str(), request.path.as_str()) {
                ("GET", "/metrics") => {
                    HttpResponse::new(200, metrics::CONTENT_TYPE, scrape(&ctx).await)
                }
                ("GET", _) => HttpResponse::text(404, "not found: metrics are at /metrics"),
                _ => HttpResponse::text(405, "only GET /metrics is served here"),
            }
        }
    })
    .await;
}
