//! Gathering: deliveries into a [`Batch`], each decoded as it arrives, while the previous batch
//! is being written.

use std::time::Duration;

use lapin::message::Delivery;
use metrics_events::{Message, MessageError, decode_message};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span};

use super::budget::{Budget, Held};
use super::dead_letter::{self, DeadLetterChannel};
use super::requeue::Deliveries;
use super::session::{InFlight, Lost};
use super::{Context, error_chain};
use crate::error::SessionError;
use crate::telemetry::Outcome;

/// A delivery, what its body decoded to, and its share of the byte budget.
pub(super) struct Pending {
    /// The delivery; its body stays until the batch is settled, so that an event the database
    /// refuses for good is dead-lettered with its original bytes too.
    pub delivery: Delivery,
    /// The decoded body, or why it is bad input.
    pub decoded: Result<Message, MessageError>,
    /// The body's bytes, counted as held while this lives.
    pub held: Held,
}

/// Deliveries gathered for one transaction, in delivery-tag order.
#[derive(Default)]
pub(super) struct Batch {
    /// The deliveries.
    pub deliveries: Vec<Pending>,
    /// Events in them, an undecodable body counting as one.
    pub events: usize,
    /// Whether it filled up (`batch.size` deliveries or `batch.max_events` events) before its
    /// wait passed: deliveries arrive faster than the batches are written.
    pub full: bool,
}

/// How gathering ended.
pub(super) enum Gathered {
    /// The batch is full, or its wait has passed and the previous batch is written (or failed).
    Ready(Batch),
    /// Shutdown was requested: the batch in hand is to be settled, then the session ends.
    Stopping(Batch),
    /// The channel or the consumer went away; the batch in hand returns to the queue.
    Closed(SessionError),
}

/// What gathering reads from and writes to during one session.
pub(super) struct Gatherer<'a> {
    pub context: &'a Context,
    /// What the reader task passes on (`requeue::read_deliveries`).
    pub deliveries: &'a mut Deliveries,
    pub publisher: &'a DeadLetterChannel,
    /// Whether the connection has failed.
    pub lost: &'a Lost,
    pub budget: &'a Budget,
    /// Most deliveries in a batch: `batch.size`, or the prefetch when that is lower.
    pub batch_size: usize,
}

impl Gatherer<'_> {
    /// Gathers deliveries until the batch is full, or its wait has passed and the previous batch
    /// is written; decodes each as it arrives.
    pub(super) async fn gather(
        &mut self,
        in_flight: &mut InFlight,
        shutdown: &CancellationToken,
    ) -> Gathered {
        let settings = &self.context.settings;
        let wait = Duration::from_millis(settings.batch.wait_ms);
        let mut batch = Batch::default();
        let mut deadline: Option<Instant> = None;
        loop {
            if batch.deliveries.len() >= self.batch_size
                || batch.events >= settings.batch.max_events
            {
                batch.full = true;
                return Gathered::Ready(batch);
            }
            if in_flight.has_failed() {
                return Gathered::Ready(batch);
            }
            let expired = deadline.is_some_and(|deadline| Instant::now() >= deadline);
            if expired && !in_flight.is_busy() {
                return Gathered::Ready(batch);
            }
            let writing = in_flight.is_writing();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Gathered::Stopping(batch),
                err = self.lost.wait() => return Gathered::Closed(err),
                () = in_flight.finished(), if writing => {}
                next = self.deliveries.recv() => match next {
                    Some(Ok(delivery)) => {
                        if let Err(err) = self.take(delivery, &mut batch, &mut deadline, wait).await {
                            return Gathered::Closed(err);
                        }
                    }
                    Some(Err(err)) => return Gathered::Closed(err),
                    None => return Gathered::Closed(SessionError::ConsumerCancelled),
                },
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && !expired => {}
            }
        }
    }

    /// Decodes `delivery` into `batch`, or dead-letters it at once when its body is over
    /// `limits.max_body_bytes`: such a body is never held with a batch.
    async fn take(
        &self,
        delivery: Delivery,
        batch: &mut Batch,
        deadline: &mut Option<Instant>,
        wait: Duration,
    ) -> Result<(), SessionError> {
        let context = self.context;
        let limits = context.settings.limits();
        let span = debug_span!(
            "delivery",
            messaging.system = "rabbitmq",
            messaging.destination.name = %context.topology.queue,
            messaging.rabbitmq.delivery_tag = delivery.delivery_tag,
            event.id = tracing::field::Empty,
        )
        .entered();
        debug!(
            bytes = delivery.data.len(),
            redelivered = delivery.redelivered,
            "received"
        );
        if delivery.data.len() > limits.max_body_bytes {
            drop(span);
            let reason = MessageError::TooLarge {
                size: delivery.data.len(),
                limit: limits.max_body_bytes,
            };
            dead_letter::reject_now(context, self.publisher, delivery, error_chain(&reason))
                .await?;
            context.metrics.count(Outcome::DeadLettered, 1);
            return Ok(());
        }
        deadline.get_or_insert_with(|| Instant::now() + wait);
        let decoded = decode_message(&delivery.data, &limits);
        if let Ok(Message {
            is_batch: false,
            events,
            ..
        }) = &decoded
            && let Some(Ok(event)) = events.first()
        {
            span.record("event.id", event.id());
        }
        drop(span);
        batch.events += decoded.as_ref().map_or(1, |message| message.events.len());
        let held = self.budget.hold(delivery.data.len());
        batch.deliveries.push(Pending {
            delivery,
            decoded,
            held,
        });
        Ok(())
    }
}
