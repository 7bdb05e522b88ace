//! Writing: `apply` of a batch's events in one transaction (or their staging in the inbox),
//! retried with backoff while the failure is transient.

use std::sync::Arc;
use std::time::Duration;

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
pub(super) enum Attempt<T = Vec<EventOutcome>> {
    /// Committed: the outcome of each event, in order (applied), or nothing (staged).
    Committed(T),
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
    let attempt = retrying(context, events.len(), shutdown, || {
        context.database.apply(Arc::clone(events))
    })
    .await?;
    Ok(match attempt {
        Attempt::Committed(report) => Attempt::Committed(report.outcomes),
        Attempt::Refused(err) => Attempt::Refused(err),
    })
}

/// Makes `attempt`, a write of `events` events, until it commits, is refused for good, or
/// shutdown comes while it fails transiently.
///
/// # Errors
///
/// [`SessionError::Abandoned`] when shutdown comes while the database is failing.
pub(super) async fn retrying<T, F>(
    context: &Context,
    events: usize,
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> F,
) -> Result<Attempt<T>, SessionError>
where
    F: Future<Output = (Result<T, DatabaseError>, Duration)>,
{
    let metrics = &context.metrics;
    let mut failures: u32 = 0;
    loop {
        let (result, elapsed) = attempt().await;
        metrics.observe_apply(elapsed.as_secs_f64());
        match result {
            Ok(written) => {
                context.database_backoff().succeeded();
                metrics.observe_batch(events);
                if failures > 0 {
                    metrics.reconnected("database");
                    info!(attempts = failures + 1, "PostgreSQL is back; batch written");
                }
                return Ok(Attempt::Committed(written));
            }
            Err(err) if err.is_transient() => {
                metrics.count(Outcome::Retried, events);
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
                        events,
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
