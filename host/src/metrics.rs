//! What a host agent measures (ADR 26), served by `qhost --metrics-listen ADDR` at
//! `/metrics`: how long commands and probes take, how commands end, and the errors of
//! libvirt and of mounts.

use std::net::SocketAddr;

use qvdc_transport::{
    http::{self, HttpRequest, HttpResponse},
    metrics::{
        self, Counter, Family, Gauges, Histogram, KindLabel, KindOutcome, Registry, SecondsFamily,
    },
};

/// Cheap to clone: clones record into the same metrics.
#[derive(Debug, Clone)]
pub struct HostMetrics {
    registry: std::sync::Arc<Registry>,
    pub command_seconds: SecondsFamily<KindLabel>,
    pub commands: Family<KindOutcome, Counter>,
    pub probe_seconds: Histogram,
    pub survey_seconds: Histogram,
    pub libvirt_errors: Family<KindLabel, Counter>,
    pub mount_errors: Family<KindLabel, Counter>,
    /// Sessions with the control plane that failed (no answer in time, refused, lost) and
    /// were dialed again; redirects to the leader are not counted.
    pub sessions_failed: Counter,
    /// Registrations with a leader: one per session that got as far, so one more after
    /// every leader change.
    pub registrations: Counter,
}

impl Default for HostMetrics {
    fn default() -> Self {
        let command_seconds = metrics::seconds_family();
        let commands = Family::default();
        let probe_seconds = metrics::seconds();
        let survey_seconds = metrics::seconds();
        let libvirt_errors = Family::default();
        let mount_errors = Family::default();
        let sessions_failed = Counter::default();
        let registrations = Counter::default();
        let mut registry = Registry::default();
        registry.register(
            "qhost_command_seconds",
            "Time to carry out one command of the control plane, by kind",
            command_seconds.clone(),
        );
        registry.register(
            "qhost_commands",
            "Commands of the control plane, by kind and outcome (ok, failed, stale: refused as from a deposed leader)",
            commands.clone(),
        );
        registry.register(
            "qhost_pool_probe_seconds",
            "Time to look at one mounted pool (mount table and statvfs)",
            probe_seconds.clone(),
        );
        registry.register(
            "qhost_survey_seconds",
            "Time to list this host's domains and networks for a heartbeat",
            survey_seconds.clone(),
        );
        registry.register(
            "qhost_libvirt_errors",
            "libvirt failures: listing domains (list) or carrying out a VM command (its kind)",
            libvirt_errors.clone(),
        );
        registry.register(
            "qhost_mount_errors",
            "Mount and pool failures: a probe that found a pool unhealthy (probe) or a pool command that failed (its kind)",
            mount_errors.clone(),
        );
        registry.register(
            "qhost_sessions_failed",
            "Sessions with the control plane that failed (no answer in time, refused, connection lost) and were dialed again",
            sessions_failed.clone(),
        );
        registry.register(
            "qhost_registrations",
            "Registrations with a leader: one per session that got that far, one more after every leader change",
            registrations.clone(),
        );
        // Present from the start at 0, so that alerts on their rate have a series to read.
        drop(libvirt_errors.get_or_create(&KindLabel { kind: "list" }));
        drop(mount_errors.get_or_create(&KindLabel { kind: "probe" }));
        Self {
            registry: std::sync::Arc::new(registry),
            command_seconds,
            commands,
            probe_seconds,
            survey_seconds,
            libvirt_errors,
            mount_errors,
            sessions_failed,
            registrations,
        }
    }
}

impl HostMetrics {
    /// Counts one command of `kind` that took `seconds` and ended `outcome`.
    pub(crate) fn command(&self, kind: &'static str, outcome: &'static str, seconds: f64) {
        self.command_seconds
            .get_or_create(&KindLabel { kind })
            .observe(seconds);
        self.commands
            .get_or_create(&KindOutcome { kind, outcome })
            .inc();
    }

    pub(crate) fn libvirt_error(&self, kind: &'static str) {
        self.libvirt_errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub(crate) fn mount_error(&self, kind: &'static str) {
        self.mount_errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// The text of `/metrics` now.
    pub fn render(&self) -> String {
        metrics::render(&self.registry, &Gauges::default())
    }

    /// Serves `/metrics` on `addr` until the task is dropped; returns the bound address.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let metrics = self.clone();
        tokio::spawn(http::serve(listener, 0, move |request: HttpRequest| {
            let text =
                (request.method == "GET" && request.path == "/metrics").then(|| metrics.render());
            async move {
                match text {
                    Some(text) => HttpResponse::new(200, metrics::CONTENT_TYPE, text),
                    None => HttpResponse::text(404, "metrics are at GET /metrics"),
                }
            }
        }));
        Ok(bound)
    }
}
