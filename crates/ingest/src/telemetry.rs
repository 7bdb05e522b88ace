//! The Prometheus metrics of the service, each defined once here (logging is set up by
//! `metrics_service::telemetry`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The label of one outcome.
pub type OutcomeLabel = [(&'static str, &'static str); 1];

/// What became of an event (an element of a message) or of a whole delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted into the rows.
    Applied,
    /// Already counted: nothing changed.
    Duplicate,
    /// A type this version does not read: acknowledged and ignored.
    Ignored,
    /// Undecodable or invalid: dead-lettered with the reason.
    DeadLettered,
    /// A transient database failure: left unacknowledged and tried again after a backoff.
    Retried,
    /// Redelivered up to half the delivery limit: moved to the tail of the queue (`requeue`).
    Requeued,
    /// Stored in the inbox and acknowledged; counted as applied or duplicate once the applier
    /// has folded it (`inbox.enabled`).
    Staged,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Retried => "retried",
            Outcome::Requeued => "requeued",
            Outcome::Staged => "staged",
        }
    }

    fn label(self) -> OutcomeLabel {
        [("outcome", self.as_str())]
    }
}

/// The Prometheus metrics of the service.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    events: Family<OutcomeLabel, Counter>,
    batch_events: Histogram,
    apply_duration: Histogram,
    reconnects: Family<[(&'static str, &'static str); 1], Counter>,
    ready: Gauge,
    held_bytes: Gauge,
    held_bytes_max: Gauge,
}

impl Metrics {
    /// Defines and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let events = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "metrics_ingest_deliveries",
            "Deliveries by outcome, a batch message counting once per event: applied, \
             duplicate, ignored, dead_lettered, retried (once per attempt that failed transiently), \
             requeued, staged (stored in the inbox; applied or duplicate once applied)",
            events.clone(),
        );
        let batch_events = Histogram::new([
            1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
        ]);
        registry.register(
            "metrics_ingest_batch_events",
            "Events written per transaction",
            batch_events.clone(),
        );
        let apply_duration = Histogram::new([
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
        ]);
        registry.register(
            "metrics_ingest_apply_duration_seconds",
            "Time to write one batch to PostgreSQL (one transaction), successful or not",
            apply_duration.clone(),
        );
        let reconnects = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "metrics_ingest_reconnects",
            "Connections re-established after a failure, by dependency (amqp, database)",
            reconnects.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "metrics_ingest_ready",
            "1 while consuming with a usable channel, 0 while connecting or draining",
            ready.clone(),
        );
        let held_bytes = Gauge::default();
        registry.register(
            "metrics_ingest_held_bytes",
            "Bytes of message bodies held: gathered, being written or awaiting a dead letter",
            held_bytes.clone(),
        );
        let held_bytes_max = Gauge::default();
        registry.register(
            "metrics_ingest_held_bytes_max",
            "The most bytes of message bodies held at once since start (batch.memory_bytes bounds it)",
            held_bytes_max.clone(),
        );
        for outcome in [
            Outcome::Applied,
            Outcome::Duplicate,
            Outcome::Ignored,
            Outcome::DeadLettered,
            Outcome::Retried,
            Outcome::Requeued,
        ] {
            let _ = events.get_or_create(&outcome.label());
        }
        for dependency in ["amqp", "database"] {
            let _ = reconnects.get_or_create(&[("dependency", dependency)]);
        }
        Self {
            registry: Arc::new(registry),
            events,
            batch_events,
            apply_duration,
            reconnects,
            ready,
            held_bytes,
            held_bytes_max,
        }
    }

    /// Counts `n` events with `outcome`.
    pub fn count(&self, outcome: Outcome, n: usize) {
        if n > 0 {
            self.events
                .get_or_create(&outcome.label())
                .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    /// How many events ended with `outcome` so far.
    pub fn counted(&self, outcome: Outcome) -> u64 {
        self.events.get_or_create(&outcome.label()).get()
    }

    /// Records a written batch of `events` events.
    pub fn observe_batch(&self, events: usize) {
        #[expect(clippy::cast_precision_loss, reason = "batch sizes are far below 2^52")]
        self.batch_events.observe(events as f64);
    }

    /// Records the duration of one `apply`.
    pub fn observe_apply(&self, seconds: f64) {
        self.apply_duration.observe(seconds);
    }

    /// Counts a reconnection to `dependency` (`amqp` or `database`).
    pub fn reconnected(&self, dependency: &'static str) {
        self.reconnects
            .get_or_create(&[("dependency", dependency)])
            .inc();
    }

    /// Publishes readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Publishes the bytes of message bodies held now, and the most held so far.
    pub fn set_held_bytes(&self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.held_bytes.set(bytes);
        self.held_bytes_max
            .inner()
            .fetch_max(bytes, Ordering::Relaxed);
    }

    /// The bytes of message bodies held now.
    pub fn held_bytes(&self) -> i64 {
        self.held_bytes.get()
    }

    /// The most bytes of message bodies held at once so far.
    pub fn held_bytes_max(&self) -> i64 {
        self.held_bytes_max.get()
    }

    /// The Prometheus text exposition of every metric.
    ///
    /// # Errors
    ///
    /// Only if formatting into a string fails.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_exposed_from_the_start() {
        let metrics = Metrics::new();
        metrics.count(Outcome::Applied, 3);
        let text = metrics.encode().unwrap();
        assert!(text.contains("metrics_ingest_deliveries_total{outcome=\"applied\"} 3"));
        for outcome in ["duplicate", "ignored", "dead_lettered", "retried"] {
            assert!(
                text.contains(&format!(
                    "metrics_ingest_deliveries_total{{outcome=\"{outcome}\"}} 0"
                )),
                "{text}"
            );
        }
        assert!(text.contains("metrics_ingest_apply_duration_seconds_bucket"));
        assert!(text.contains("metrics_ingest_reconnects_total{dependency=\"amqp\"} 0"));
    }
}
