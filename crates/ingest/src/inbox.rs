//! The applier: folds the events staged in the inbox (`inbox.enabled`) into the day rows.
//!
//! With the inbox on, the consumer stores the events of each batch that filled up (a backlog; the
//! others it applies at once) in the `inbox` table with one insert and acknowledges it; this task
//! applies them afterwards in transactions of up to `inbox.apply_events` events
//! (`metrics_aggregator::apply_staged`), where the consumer's batches are bounded by the
//! prefetch. Each transaction takes the table's writer lock, applies the oldest
//! staged events and deletes them, so every replica may run an applier: they take turns, and
//! each event is applied once whatever crashes in between.
//!
//! - It wakes when the consumer has staged a batch (`inbox.wait_ms` later, if set, so that the
//!   batches staged meanwhile share one transaction; those staged while it applies share the
//!   next one anyway), and every `inbox.poll_ms` otherwise (events staged by another replica, or
//!   left by a process that stopped), and applies until the inbox is empty.
//! - A transient failure is retried after the backoff; nothing is lost meanwhile: the events
//!   stay staged. After `admin.stall_timeout_ms` of failures `/readyz` answers 503 with the
//!   reason.
//! - An event the database refuses for good stays staged with the reason, and the consumer's
//!   session publishes its dead letter (`consumer::dead_letter::publish_refused`).
//! - On shutdown, once the consumer has settled its last batch, it applies what is staged within
//!   `shutdown.timeout_ms`; what is left is applied by the next applier to run.
//! - With the inbox off, it looks once at start, for events a process with it on left staged
//!   (or refused), and applies them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::consumer::{Context, error_chain};
use crate::telemetry::Outcome;

/// What the consumer and the applier tell each other.
#[derive(Debug, Default)]
pub struct Signals {
    staged: Notify,
    refused: Notify,
}

impl Signals {
    /// The consumer staged a batch: the applier wakes.
    pub fn staged(&self) {
        self.staged.notify_one();
    }

    /// The applier left refused events for their dead letters.
    pub fn refused(&self) {
        self.refused.notify_one();
    }

    /// Resolves at the next [`Signals::refused`] (or at once if one came since the last wait).
    pub async fn refused_notified(&self) {
        self.refused.notified().await;
    }
}

/// Applies staged events until `stop` is cancelled, then once more until the inbox is empty
/// (bounded by the caller); see the module's documentation.
pub async fn run(context: Arc<Context>, stop: CancellationToken) {
    let settings = &context.settings.inbox;
    let poll = Duration::from_millis(settings.poll_ms);
    if !settings.enabled {
        // Only what an earlier process with the inbox on left behind.
        let left = loop {
            match context.database.inbox_holds_events().await {
                Ok(left) => break left,
                Err(err) => {
                    debug!(error = %error_chain(&err), "looking into the inbox");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = sleep(poll) => {}
                    }
                }
            }
        };
        if left {
            info!("the inbox holds events staged earlier: applying them");
            drain(&context, &stop).await;
            context.inbox.refused();
        }
        return;
    }
    let wait = Duration::from_millis(settings.wait_ms);
    let mut polled = false;
    loop {
        // A poll looks first, without the writer lock (whose row lock on `metrics_tables` is a
        // write): an idle replica then writes nothing.
        if !(polled && matches!(context.database.inbox_holds_events().await, Ok(false))) {
            drain(&context, &stop).await;
        }
        if stop.is_cancelled() {
            break;
        }
        polled = tokio::select! {
            biased;
            () = stop.cancelled() => false,
            () = context.inbox.staged.notified() => {
                // More batches arrive meanwhile: one transaction for all of them costs a
                // fraction of one each. (Without a wait, those staged while it applies share
                // the next one.)
                if !wait.is_zero() {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = sleep(wait) => {}
                    }
                }
                false
            }
            () = sleep(poll) => true,
        };
    }
    // The consumer has settled its last batch: what it staged is applied now if time allows.
    drain(&context, &CancellationToken::new()).await;
    debug!("applier stopped");
}

/// Applies until the inbox is empty; a transient failure is retried after the backoff, unless
/// `stop` is cancelled (then it returns).
async fn drain(context: &Context, stop: &CancellationToken) {
    let settings = &context.settings.inbox;
    let limits = context.settings.limits();
    let metrics = &context.metrics;
    let mut backoff = context.settings.backoff.policy();
    let mut failures: u32 = 0;
    loop {
        let (result, elapsed) = context
            .database
            .apply_staged(settings.apply_events, settings.apply_bytes, limits)
            .await;
        match result {
            Ok(report) => {
                backoff.succeeded();
                context.health.applier_succeeded();
                if failures > 0 {
                    metrics.reconnected("database");
                    info!(
                        attempts = failures + 1,
                        "PostgreSQL is back; applying the inbox"
                    );
                    failures = 0;
                }
                if report.taken == 0 {
                    return;
                }
                metrics.observe_apply(elapsed.as_secs_f64());
                metrics.observe_batch(report.taken);
                metrics.count(Outcome::Applied, report.counted);
                metrics.count(Outcome::Duplicate, report.duplicates);
                metrics.count(Outcome::Ignored, report.ignored);
                if report.refused > 0 {
                    warn!(
                        refused = report.refused,
                        "the database refused staged events; dead-lettering them"
                    );
                    context.inbox.refused();
                }
                debug!(
                    taken = report.taken,
                    counted = report.counted,
                    duplicates = report.duplicates,
                    "staged events applied"
                );
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                context
                    .health
                    .applier_failed(format!("applying the inbox: {}", error_chain(&err)));
                if failures == 1 {
                    warn!(
                        error = %error_chain(&err),
                        "applying the inbox failed; retrying with backoff, the events stay staged"
                    );
                }
                let delay = backoff.next_wait();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = sleep(delay) => {}
                }
            }
        }
    }
}
