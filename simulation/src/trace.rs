//! The event trace of a run: every qvdc log event at INFO or above, stamped with simulated
//! time and the simulated machine it happened on. Two runs of one seed must produce the same
//! trace, byte for byte; its hash is how tests compare them.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use tracing::{field::Visit, span, Event, Level, Metadata, Subscriber};
use tracing_subscriber::{layer::Context, registry::LookupSpan, Layer};

/// Events recorded so far, shared with the harness.
pub type Events = Arc<Mutex<Vec<String>>>;

/// A tracing layer that appends qvdc's events to an [`Events`] list.
pub struct TraceLayer {
    events: Events,
    /// Simulated milliseconds as of the last step, which the harness keeps up to date: the
    /// time of events between steps (the harness crashing a machine), which turmoil does not
    /// know.
    between_steps: Arc<AtomicU64>,
}

impl TraceLayer {
    pub fn new(events: Events) -> Self {
        Self {
            events,
            between_steps: Default::default(),
        }
    }

    /// The clock for events between steps; store the world's elapsed milliseconds in it.
    pub fn between_steps(&self) -> Arc<AtomicU64> {
        self.between_steps.clone()
    }
}

struct MachineName(String);

/// What the trace records: qvdc's events at INFO and above, and turmoil's machine spans.
/// Apply it as a per-layer filter (`TraceLayer::new(..).with_filter(recorded())`), so other
/// layers still see everything they ask for.
pub fn recorded() -> tracing_subscriber::filter::FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(|meta| {
        is_machine_span(meta)
            || (meta.is_event()
                && meta.target().starts_with("qvdc")
                && *meta.level() <= Level::INFO)
    })
}

/// turmoil wraps each machine's tick in a span named "node" that carries the machine's name.
fn is_machine_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.name() == "node" && meta.target().starts_with("turmoil")
}

/// The `name` field of turmoil's machine span, without formatting the others.
struct NameField(Option<String>);

impl Visit for NameField {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "name" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "name" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_owned());
        }
    }
}

#[derive(Default)]
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for TraceLayer {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if !is_machine_span(attrs.metadata()) {
            return;
        }
        // turmoil opens one of these per machine per step: keep it cheap.
        let mut name = NameField(None);
        attrs.record(&mut name);
        if let (Some(span), Some(name)) = (ctx.span(id), name.0) {
            span.extensions_mut().insert(MachineName(name));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        // Task spans are disabled (see `enabled`), so the current span is turmoil's machine span.
        let machine = ctx
            .lookup_current()
            .and_then(|span| {
                span.scope()
                    .find_map(|s| s.extensions().get::<MachineName>().map(|m| m.0.clone()))
            })
            .unwrap_or_else(|| "-".into());
        let mut fields = Fields::default();
        event.record(&mut fields);
        let at_ms = turmoil::sim_elapsed().map_or_else(
            || self.between_steps.load(Ordering::Relaxed),
            |at| u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
        );
        let line = format!(
            "{at_ms:>8} {machine:<9} {:<5} {}:{}",
            meta.level(),
            meta.target(),
            fields.0
        );
        self.events.lock().expect("trace lock poisoned").push(line);
    }
}

/// The simulated milliseconds a trace line was stamped with (its first field).
pub fn at_ms(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

/// FNV-1a over the trace: stable across Rust versions and platforms.
pub fn hash(events: &[String]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in events.iter().flat_map(|e| e.bytes().chain([b'\n'])) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
