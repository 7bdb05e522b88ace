//! Settling a gathered batch: its events written and its bad input dead-lettered at once, the
//! events the database refused dead-lettered next, then the whole batch acknowledged with one
//! `multiple` ack.

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use metrics_aggregator::EventOutcome;
use metrics_events::{Decoded, Event, Message};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::budget::Held;
use super::dead_letter::{self, Carried, DeadLetter, DeadLetterChannel};
use super::gather::{Batch, Pending};
use super::isolate::{Written, write_isolating};
use super::session::Order;
use super::write::{Attempt, retrying};
use super::{BROKER_TIMEOUT, Context, error_chain};
use crate::database::{StagedAt, Staging};
use crate::error::SessionError;
use crate::telemetry::Outcome;

/// Where an event to write came from: its delivery in the batch and the bytes it was decoded
/// from, which its dead letter carries if the database refuses it.
struct Origin {
    delivery: usize,
    carried: Carried,
}

/// A batch taken apart: what to write, what to dead-letter at once, and what to acknowledge.
struct Sorted {
    /// The valid events, in delivery order.
    events: Vec<Event>,
    /// Where each of `events` came from.
    origins: Vec<Origin>,
    /// Undecodable messages and invalid elements.
    dead_letters: Vec<DeadLetter>,
    /// Events of a type this service does not count.
    ignored: usize,
    /// The deliveries, in delivery-tag order.
    deliveries: Vec<Delivery>,
    /// Their bodies' shares of the byte budget, released once the batch is written and its dead
    /// letters confirmed.
    held: Vec<Held>,
}

impl Sorted {
    fn new(batch: Batch) -> Self {
        let mut sorted = Sorted {
            events: Vec::with_capacity(batch.events),
            origins: Vec::with_capacity(batch.events),
            dead_letters: Vec::new(),
            ignored: 0,
            deliveries: Vec::with_capacity(batch.deliveries.len()),
            held: Vec::with_capacity(batch.deliveries.len()),
        };
        for (index, pending) in batch.deliveries.into_iter().enumerate() {
            let Pending {
                delivery,
                decoded,
                held,
            } = pending;
            sorted.deliveries.push(delivery);
            sorted.held.push(held);
            match decoded {
                Ok(message) => sorted.add(index, message),
                Err(err) => sorted.dead_letters.push(DeadLetter {
                    delivery: index,
                    carried: Carried::Body,
                    reason: error_chain(&err),
                    event_id: None,
                }),
            }
        }
        sorted
    }

    fn add(&mut self, delivery: usize, message: Message) {
        let Message {
            is_batch,
            events,
            spans,
        } = message;
        for (element, span) in events.into_iter().zip(spans) {
            let carried = if is_batch {
                Carried::Element(span)
            } else {
                Carried::Body
            };
            match element {
                Ok(Decoded::Event(event)) => {
                    self.events.push(event);
                    self.origins.push(Origin { delivery, carried });
                }
                Ok(Decoded::Ignored(ignored)) => {
                    debug!(
                        event.id = %ignored.id,
                        event.r#type = %ignored.event_type,
                        "ignoring an event of an unknown type"
                    );
                    self.ignored += 1;
                }
                Err(err) => self.dead_letters.push(DeadLetter {
                    delivery,
                    carried,
                    event_id: err.event_id.clone(),
                    reason: err.to_string(),
                }),
            }
        }
    }
}

/// What became of a batch's events once written.
#[derive(Default)]
struct Tally {
    counted: usize,
    duplicates: usize,
    staged: usize,
    refused: Vec<DeadLetter>,
}

impl Tally {
    fn new(written: Vec<Written>, origins: Vec<Origin>) -> Self {
        let mut tally = Tally::default();
        for (written, Origin { delivery, carried }) in written.into_iter().zip(origins) {
            match written {
                Written::Stored(EventOutcome::Counted) => tally.counted += 1,
                Written::Stored(EventOutcome::Duplicate) => tally.duplicates += 1,
                Written::Staged => tally.staged += 1,
                Written::Refused(refusal) => tally.refused.push(DeadLetter {
                    delivery,
                    carried,
                    reason: refusal.reason,
                    event_id: Some(refusal.event_id),
                }),
            }
        }
        tally
    }
}

/// Writes a batch, dead-letters its bad input, and acknowledges it all with one `multiple` ack.
pub(super) async fn settle(
    context: Arc<Context>,
    publisher: DeadLetterChannel,
    batch: Batch,
    order: Order,
    shutdown: CancellationToken,
) -> Result<(), SessionError> {
    let span = info_span!(
        "batch",
        messaging.system = "rabbitmq",
        messaging.destination.name = %context.topology.queue,
        deliveries = batch.deliveries.len(),
    );
    settle_batch(&context, &publisher, batch, order, &shutdown)
        .instrument(span)
        .await
}

async fn settle_batch(
    context: &Context,
    publisher: &DeadLetterChannel,
    batch: Batch,
    mut order: Order,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let full = batch.full;
    let Sorted {
        events,
        origins,
        dead_letters,
        ignored,
        deliveries,
        held,
    } = Sorted::new(batch);
    let Some(last) = deliveries.last() else {
        order.wait_turn().await?;
        order.acknowledged();
        return Ok(());
    };
    context.health.batch_started();
    let acker = last.acker.clone();
    let deliveries: Arc<[Delivery]> = deliveries.into();

    let (written, published) = tokio::join!(
        store(context, events, &origins, &deliveries, full, shutdown),
        dead_letter::publish(context, publisher, &deliveries, &dead_letters),
    );
    published?;
    // Events the database refused for good (not for a transient reason) are dead-lettered too.
    let tally = Tally::new(written?, origins);
    dead_letter::publish(context, publisher, &deliveries, &tally.refused).await?;

    // The bodies are of no more use: they are released before the acknowledgement, which lets
    // the broker push the next deliveries at once. Released after it, the next bodies could
    // arrive while these were still held: up to a batch of bodies over the byte budget.
    drop(deliveries);
    drop(held);
    // Batches written at once are acknowledged in delivery order: a `multiple` ack covers every
    // earlier delivery, so this one waits for the batch before it.
    order.wait_turn().await?;
    let acked = timeout(
        BROKER_TIMEOUT,
        acker.ack(BasicAckOptions { multiple: true }),
    )
    .await
    .map_err(|_| SessionError::Timeout {
        action: "acknowledging a batch",
    })?
    .map_err(SessionError::amqp("acknowledging a batch"))?;
    if !acked {
        return Err(SessionError::ChannelClosed);
    }
    order.acknowledged();
    context.health.batch_settled();
    let dead_lettered = dead_letters.len() + tally.refused.len();
    let metrics = &context.metrics;
    metrics.count(Outcome::Applied, tally.counted);
    metrics.count(Outcome::Duplicate, tally.duplicates);
    metrics.count(Outcome::Staged, tally.staged);
    metrics.count(Outcome::Ignored, ignored);
    metrics.count(Outcome::DeadLettered, dead_lettered);
    debug!(
        counted = tally.counted,
        duplicates = tally.duplicates,
        staged = tally.staged,
        ignored,
        dead_lettered,
        "batch settled"
    );
    Ok(())
}

/// Writes a batch's events: staged in the inbox (one insert; applied later by the applier, module
/// `inbox`) when `inbox.enabled`, the batch filled up before its wait passed (`full`: the
/// deliveries come faster than batches are written) and it holds fewer than
/// `inbox.direct_events` events; else applied at once, which costs one transaction where
/// staging costs two, and counts the events sooner. A batch the inbox refuses for good is
/// applied at once instead, so an event the database cannot take is still isolated and
/// dead-lettered while its delivery is held.
async fn store(
    context: &Context,
    events: Vec<Event>,
    origins: &[Origin],
    deliveries: &Arc<[Delivery]>,
    full: bool,
    shutdown: &CancellationToken,
) -> Result<Vec<Written>, SessionError> {
    let inbox = &context.settings.inbox;
    if inbox.enabled && full && !events.is_empty() && events.len() < inbox.direct_events {
        let staging = Arc::new(Staging {
            deliveries: Arc::clone(deliveries),
            properties: deliveries
                .iter()
                .map(|delivery| stored_properties(&delivery.properties))
                .collect(),
            events: origins
                .iter()
                .map(|origin| match &origin.carried {
                    Carried::Body => StagedAt {
                        delivery: origin.delivery,
                        bytes: 0..deliveries.get(origin.delivery).map_or(0, |d| d.data.len()),
                        element: false,
                    },
                    Carried::Element(span) => StagedAt {
                        delivery: origin.delivery,
                        bytes: span.clone(),
                        element: true,
                    },
                })
                .collect(),
        });
        match retrying(context, events.len(), shutdown, || {
            context.database.stage(Arc::clone(&staging))
        })
        .await?
        {
            Attempt::Committed(()) => {
                context.inbox.staged();
                return Ok(events.iter().map(|_| Written::Staged).collect());
            }
            Attempt::Refused(err) => warn!(
                error = %error_chain(&err),
                events = events.len(),
                "the inbox refused a batch; applying it at once"
            ),
        }
    }
    write_isolating(context, events, shutdown).await
}

/// A delivery's properties as the inbox keeps them for a dead letter: serde JSON of the
/// properties set, every unset one (a `null`) left out, which reads back as unset.
fn stored_properties(properties: &lapin::BasicProperties) -> Vec<u8> {
    match serde_json::to_value(properties) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.retain(|_, value| !value.is_null());
            serde_json::to_vec(&fields).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable};

    use super::stored_properties;

    #[test]
    fn stored_properties_leave_out_what_is_unset_and_read_back_whole() {
        assert_eq!(stored_properties(&BasicProperties::default()), b"{}");
        let mut headers = FieldTable::default();
        headers.insert("x-trace".into(), AMQPValue::LongString("t-1".into()));
        let properties = BasicProperties::default()
            .with_content_type("application/cloudevents+json".into())
            .with_message_id("m-1".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let stored = stored_properties(&properties);
        assert!(!stored.windows(4).any(|w| w == b"null"), "{stored:?}");
        let read: BasicProperties = serde_json::from_slice(&stored).unwrap();
        assert_eq!(read, properties);
    }
}
