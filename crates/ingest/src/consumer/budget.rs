//! The byte budget of the bodies ingest holds (`batch.memory_bytes`).
//!
//! Why the prefetch count is the lever: every body the service holds, in the client's buffer,
//! in the batch being gathered, in the batch being written or waiting for its dead letter's
//! confirm, belongs to a delivery not yet acknowledged, and the broker pushes at most the
//! prefetch count of those whatever their size. RabbitMQ ignores `basic.qos` `prefetch_size`,
//! refuses a channel-global prefetch on quorum queues, and applies a new per-consumer prefetch
//! only to consumers started after it; pausing the consumer (`basic.cancel`) would still let
//! through every delivery already on its way, up to the prefetch count. So the only bound that
//! holds whatever the messages look like is `prefetch × largest body ≤ budget`: the prefetch
//! asked of the broker is capped at `batch.memory_bytes / limits.max_body_bytes` ([`prefetch`]).
//! A body over `limits.max_body_bytes` (which the broker still delivers whole) is dead-lettered
//! as soon as it arrives, before the next delivery is taken, and never kept with a batch.
//!
//! [`Budget`] counts the bytes actually held, for the `metrics_ingest_held_bytes` gauges: each
//! gathered body holds a [`Held`] share until its batch is settled or dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Settings;
use crate::telemetry::Metrics;

/// The prefetch count asked of the broker: `amqp.prefetch`, capped so that that many bodies of
/// `limits.max_body_bytes` fit in `batch.memory_bytes`; at least 1.
pub fn prefetch(settings: &Settings) -> u16 {
    let fits = settings.batch.memory_bytes / settings.limits.max_body_bytes.max(1);
    let fits = u16::try_from(fits).unwrap_or(u16::MAX).max(1);
    settings.amqp.prefetch.min(fits)
}

/// The bytes of bodies held by one session.
#[derive(Debug, Clone)]
pub(super) struct Budget {
    held: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Budget {
    pub(super) fn new(metrics: Metrics) -> Self {
        Self {
            held: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }

    /// Counts `bytes` as held until the returned share is dropped.
    pub(super) fn hold(&self, bytes: usize) -> Held {
        let now = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.metrics.set_held_bytes(now);
        Held {
            budget: self.clone(),
            bytes,
        }
    }
}

/// Bytes of one body, counted in the [`Budget`] while this lives.
#[derive(Debug)]
pub(super) struct Held {
    budget: Budget,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        let now = self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed) - self.bytes;
        self.budget.metrics.set_held_bytes(now);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let env = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>();
        Settings::from_sources(None, Some(env)).unwrap()
    }

    #[test]
    fn the_prefetch_fits_the_budget_at_the_largest_body() {
        let defaults = settings(&[]);
        assert_eq!(prefetch(&defaults), defaults.amqp.prefetch);
        assert!(
            usize::from(prefetch(&defaults)) * defaults.limits.max_body_bytes
                <= defaults.batch.memory_bytes
        );
        let small_bodies = settings(&[
            ("METRICS_LIMITS__MAX_BODY_BYTES", "65536"),
            ("METRICS_AMQP__PREFETCH", "1000"),
            ("METRICS_BATCH__SIZE", "500"),
        ]);
        assert_eq!(prefetch(&small_bodies), 384);
        let tiny_budget = settings(&[
            ("METRICS_LIMITS__MAX_BODY_BYTES", "1000"),
            ("METRICS_BATCH__MEMORY_BYTES", "1999"),
        ]);
        assert_eq!(prefetch(&tiny_budget), 1);
    }

    #[test]
    fn held_bytes_are_released_with_their_share() {
        let metrics = Metrics::new();
        let budget = Budget::new(metrics.clone());
        let first = budget.hold(100);
        let second = budget.hold(50);
        assert_eq!(metrics.held_bytes(), 150);
        drop(first);
        assert_eq!(metrics.held_bytes(), 50);
        drop(second);
        assert_eq!(metrics.held_bytes(), 0);
        assert_eq!(metrics.held_bytes_max(), 150);
    }
}
