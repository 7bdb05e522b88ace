//! Isolating refusals: when the database refuses a batch for good, each of its events is written
//! alone, so that only the one at fault is refused (and dead-lettered) and the others count.

use std::sync::Arc;

use metrics_aggregator::EventOutcome;
use metrics_events::Event;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::write::{Attempt, write};
use super::{Context, error_chain};
use crate::database::DatabaseError;
use crate::error::SessionError;

/// The outcome of one event.
pub(super) enum Written {
    /// Committed: counted, or a duplicate of one counted before.
    Stored(EventOutcome),
    /// Committed to the inbox, to be applied later (`inbox.enabled`).
    Staged,
    /// Refused for good by the database.
    Refused(Refusal),
}

/// An event the database refused for good, and why: the reason of its dead letter.
pub(super) struct Refusal {
    /// The event's id.
    pub event_id: String,
    /// The `x-metrics-error` header of its dead letter.
    pub reason: String,
}

impl Refusal {
    fn new(event: &Event, err: &DatabaseError) -> Self {
        warn!(event.id = %event.id, error = %error_chain(err), "the database refused an event");
        Self {
            event_id: event.id.clone(),
            reason: format!(
                "event `{}`: could not be counted: {}",
                event.id,
                error_chain(err)
            ),
        }
    }
}

/// Applies `events` in one transaction, retrying transient failures with backoff. When the
/// database refuses the batch for good, each event is applied alone so that only the one at
/// fault is refused. One outcome per event, in order.
///
/// # Errors
///
/// [`SessionError::Abandoned`] when shutdown comes while the database is failing: the batch
/// stays unacknowledged and goes back to the queue.
pub(super) async fn write_isolating(
    context: &Context,
    events: Vec<Event>,
    shutdown: &CancellationToken,
) -> Result<Vec<Written>, SessionError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let events: Arc<[Event]> = events.into();
    match write(context, &events, shutdown).await? {
        Attempt::Committed(outcomes) => Ok(outcomes.into_iter().map(Written::Stored).collect()),
        Attempt::Refused(err) if events.len() == 1 => {
            Ok(vec![Written::Refused(Refusal::new(&events[0], &err))])
        }
        Attempt::Refused(_) => {
            let mut written = Vec::with_capacity(events.len());
            for event in events.iter() {
                let single: Arc<[Event]> = Arc::new([event.clone()]);
                written.push(match write(context, &single, shutdown).await? {
                    Attempt::Committed(outcomes) => Written::Stored(
                        outcomes.first().copied().unwrap_or(EventOutcome::Duplicate),
                    ),
                    Attempt::Refused(err) => Written::Refused(Refusal::new(event, &err)),
                });
            }
            Ok(written)
        }
    }
}
