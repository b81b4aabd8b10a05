//! Prometheus metrics (ADR 26): the types every crate records into, from the
//! `prometheus-client` crate (re-exported here so that all crates use one version), the
//! buckets durations are counted in, and the text a `/metrics` answer is made of.
//!
//! Each node and host owns its metrics (no process-wide registry: the simulation runs many
//! nodes in one process). Code records into them whether or not they are served; serving
//! them only registers them. Values computed when scraped (what the leader knows of hosts,
//! pools and VMs) are written by [`Gauges`] after the registry's own.

use std::fmt::Write;

pub use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// The `Content-Type` of what [`render`] writes: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A histogram of durations in seconds: 100 µs to about 26 s, doubling.
pub fn seconds() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_1, 2.0, 19,
    ))
}

/// A family of duration histograms, one per label set.
pub type SecondsFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub fn seconds_family<L: Clone + std::hash::Hash + Eq>() -> SecondsFamily<L> {
    Family::new_with_constructor(seconds)
}

/// One label: what kind of request, command or error.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// A kind and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindOutcome {
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// Seconds elapsed since `started`, for a histogram.
pub fn since(started: tokio::time::Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// The registry's metrics in text format, then `extra` (see [`Gauges`]).
pub fn render(registry: &Registry, extra: &Gauges) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text.push_str(&extra.0);
    text
}

/// Gauge families written by hand, for values computed at scrape time.
#[derive(Debug, Default)]
pub struct Gauges(String);

impl Gauges {
    /// Starts family `name`: its help and type lines. Samples of it follow.
    pub fn family(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} gauge");
    }

    /// One sample of the family begun last.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"");
                for c in text.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scraped_text_has_the_registry_and_the_computed_gauges_escaped() {
        let mut registry = Registry::default();
        let requests: Family<KindOutcome, Counter> = Family::default();
        registry.register("qvdc_api_requests", "Requests answered", requests.clone());
        requests
            .get_or_create(&KindOutcome {
                kind: "pool_create",
                outcome: "ok",
            })
            .inc();
        let mut gauges = Gauges::default();
        gauges.family(
            "qvdc_pool_host_up",
            "Whether the pool is healthy on the host",
        );
        gauges.sample(
            "qvdc_pool_host_up",
            &[("pool", "a\"b"), ("host", "h\\1\n")],
            0.0,
        );
        let text = render(&registry, &gauges);
        assert!(
            text.contains(r#"qvdc_api_requests_total{kind="pool_create",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"qvdc_pool_host_up{pool="a\"b",host="h\\1\n"} 0"#),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }
}
