//! The delivery loop: from the queue to committed rows, one explicit outcome per delivery.
//!
//! Invariants:
//!
//! - **Ack only after commit.** A delivery is acknowledged only once its events are committed
//!   (applied, or with `inbox.enabled` stored in the inbox for the applier, module
//!   [`crate::inbox`]), or it was dead-lettered with a broker confirm. Anything not acknowledged when a channel
//!   dies goes back to the queue and is redelivered; `apply` is idempotent, so it counts once.
//! - **One batch written at a time, the next one gathered meanwhile.** Deliveries arrive in
//!   delivery-tag order and batches are acknowledged strictly in order, so when a batch is
//!   acknowledged every earlier tag is settled too and one `basic.ack` with `multiple` covers the
//!   whole batch (AMQP 0-9-1 reference, `basic.ack`). Gathering the next batch while the
//!   previous one is in the database overlaps broker and database work instead of adding them
//!   up. With the inbox, whose inserts conflict with nothing, two batches are written at once;
//!   the second waits for the first's acknowledgement before its own (`session::Order`).
//! - **Bad input never blocks the queue.** An undecodable or invalid message (or batch element)
//!   is dead-lettered with the reason and acknowledged; the valid events of a batch still count.
//! - **Transient database failures never lose or spin.** The batch stays unacknowledged and
//!   `apply` is retried after an exponential backoff; meanwhile at most the prefetch window of
//!   deliveries waits in memory.
//! - **Memory is bounded in bytes.** Every body held (prefetched, gathered, being written,
//!   awaiting its dead letter) is an unacknowledged delivery, and the broker pushes at most the
//!   prefetch count of them whatever their size; so the prefetch is capped at
//!   `batch.memory_bytes / limits.max_body_bytes` (module `budget`). A body over
//!   `limits.max_body_bytes` is dead-lettered as it arrives, never kept with a batch. The
//!   deliveries waiting in the reader task's channel, or being moved to the tail, are
//!   unacknowledged too: the same prefetch cap bounds them (the gauge counts a body from the
//!   moment it is gathered).
//! - **The broker's delivery limit never dead-letters a valid message.** A delivery redelivered
//!   at least half `amqp.delivery_limit` times (`x-delivery-count`, as a crash loop leaves it)
//!   is published again to the tail of the queue with a confirm and then acknowledged on its
//!   own, before any later delivery is passed on to gathering, so no batch's `multiple`
//!   acknowledgement covers it first (module `requeue`). Only ingest decides that a message is
//!   bad, and dead-letters it with the reason.
//! - **Reconnect with backoff.** Any broker failure ends the session: the connection is dropped
//!   (the broker requeues what was unacknowledged) and a new session connects, redeclares the
//!   topology and consumes again.
//!
//! The stages, one module each, and what flows between them:
//!
//! - `session`: connects, opens the channels, and drives the loop below until shutdown.
//! - `requeue`: a task reads the consumer and passes the deliveries on, moving those
//!   redelivered too often to the tail of the queue.
//! - `gather`: deliveries into a `gather::Batch` of decoded `gather::Pending` messages.
//! - `settle`: sorts a batch into events to write and `dead_letter::DeadLetter`s, writes and
//!   dead-letters them at once, then acknowledges the batch with one `multiple` ack.
//! - `write`: one `write::Attempt` of `apply` (or of staging in the inbox), retried while the
//!   failure is transient.
//! - `isolate`: a batch the database refuses for good is written event by event, so only the
//!   event at fault ends as an `isolate::Written::Refused`.
//! - `dead_letter`: publishes dead letters in confirm mode, headers trimmed to the frame size;
//!   also those of staged events the applier refused, from what the inbox kept of them.
//! - `budget`: the prefetch cap, and the count of body bytes held (`metrics_ingest_held_bytes`).

mod budget;
mod dead_letter;
mod gather;
mod isolate;
mod requeue;
mod session;
mod settle;
mod write;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics_backoff::Backoff;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::Health;
use crate::config::Settings;
use crate::database::Database;
use crate::telemetry::Metrics;
use crate::topology::Topology;

pub use budget::prefetch;
pub use dead_letter::{DROPPED_HEADERS_HEADER, ERROR_HEADER};
pub use requeue::{DELIVERY_COUNT_HEADER, REQUEUED_HEADER};

/// How long closing a channel or connection may take before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an acknowledgement or a publisher confirm may take: a broker that does not answer
/// in this time is treated as gone, and the session reconnects.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the consumer shares with the rest of the service.
#[derive(Debug)]
pub struct Context {
    /// The settings the service started with.
    pub settings: Settings,
    /// The broker entities.
    pub topology: Topology,
    /// PostgreSQL.
    pub database: Arc<Database>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Readiness.
    pub health: Arc<Health>,
    /// The signals between the consumer and the inbox's applier.
    pub inbox: crate::inbox::Signals,
    /// The waits between attempts to write to PostgreSQL, shared by every batch so that the
    /// escalation survives from one batch to the next until the database has worked for a while.
    pub database_backoff: Mutex<Backoff>,
}

impl Context {
    fn database_backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.database_backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The attempts to open a session with the broker so far, and the waits between them.
struct Reconnects {
    backoff: Backoff,
    attempts: u64,
}

impl Reconnects {
    /// A session is about to be opened.
    fn attempt(&mut self) {
        self.attempts += 1;
    }

    /// A session is consuming: counted as a reconnection unless it is the first attempt.
    fn connected(&mut self, metrics: &Metrics) {
        if self.attempts > 1 {
            metrics.reconnected("amqp");
        }
        self.backoff.succeeded();
    }

    /// A session failed: the wait before the next one.
    fn failed(&mut self) -> Duration {
        self.backoff.next_wait()
    }
}

/// Consumes until `shutdown` is cancelled, reconnecting with backoff after every failure. On
/// shutdown it stops consuming, settles the batch in hand and closes channel and connection.
pub async fn run(context: Arc<Context>, shutdown: CancellationToken) {
    let mut reconnects = Reconnects {
        backoff: context.settings.backoff.policy(),
        attempts: 0,
    };
    while !shutdown.is_cancelled() {
        reconnects.attempt();
        let result = match session::Session::open(&context, &shutdown).await {
            Ok(None) => Ok(()),
            Ok(Some(session)) => {
                reconnects.connected(&context.metrics);
                session.consume(&context, &shutdown).await
            }
            Err(err) => Err(err),
        };
        context.health.set_channel(None);
        // The unsettled batch went back to the queue with the connection.
        context.health.batch_settled();
        context.metrics.set_ready(false);
        match result {
            Ok(()) => break,
            Err(_) if shutdown.is_cancelled() => break,
            Err(err) => {
                let delay = reconnects.failed();
                warn!(
                    error = %error_chain(&err),
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "the RabbitMQ session ended; reconnecting"
                );
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = sleep(delay) => {}
                }
            }
        }
    }
    info!("consumer stopped");
}

pub use metrics_service::error_chain;
