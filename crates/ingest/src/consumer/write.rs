//! Writing: `apply` of a batch's events in one transaction, retried with backoff while the
//! failure is transient.

use std::sync::Arc;

use metrics_aggregator::EventOutcome;
use metrics_events::Event;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Context, error_chain};
use crate::database::DatabaseError;
use crate::error::SessionError;
use crate::telemetry::Outcome;

/// How writing some events ended, short of shutdown.
pub(super) enum Attempt {
    /// Committed: the outcome of each event, in order.
    Committed(Vec<EventOutcome>),
    /// Refused for good (not for a transient reason); nothing was written.
    Refused(DatabaseError),
}

/// Applies `events`, retrying while the failure is transient.
///
/// # Errors
///
/// [`SessionError::Abandoned`] when shutdown comes while the database is failing.
pub(super) async fn write(
    context: &Context,
    events: &Arc<[Event]>,
    shutdown: &CancellationToken,
) -> Result<Attempt, SessionError> {
    let metrics = &context.metrics;
    let mut failures: u32 = 0;
    loop {
        let (result, elapsed) = context.database.apply(Arc::clone(events)).await;
        metrics.observe_apply(elapsed.as_secs_f64());
        match result {
            Ok(report) => {
                context.database_backoff().succeeded();
                metrics.observe_batch(events.len());
                if failures > 0 {
                    metrics.reconnected("database");
                    info!(attempts = failures + 1, "PostgreSQL is back; batch written");
                }
                return Ok(Attempt::Committed(report.outcomes));
            }
            Err(err) if err.is_transient() => {
                metrics.count(Outcome::Retried, events.len());
                context.health.batch_failed(format!(
                    "writing a batch to PostgreSQL fails: {}",
                    error_chain(&err)
                ));
                // Logs once when the wait passes the stall timeout, probed or not.
                let _ = context.health.stalled();
                let delay = context.database_backoff().next_wait();
                failures = failures.saturating_add(1);
                // Logged once per outage, not once per attempt.
                if failures == 1 {
                    warn!(
                        error = %error_chain(&err),
                        events = events.len(),
                        "writing a batch failed; retrying with backoff, deliveries kept unacknowledged"
                    );
                } else {
                    debug!(error = %error_chain(&err), attempt = failures, "retrying a batch");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Err(SessionError::Abandoned),
                    () = sleep(delay) => {}
                }
            }
            Err(err) => return Ok(Attempt::Refused(err)),
        }
    }
}
