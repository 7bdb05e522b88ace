//! Reading the consumer, and keeping valid messages away from the broker's delivery limit.
//!
//! A quorum queue counts every return of a delivery (a `nack` with requeue, or the consumer's
//! channel closing with the delivery unacknowledged, as when the process is killed) in the
//! message's `x-delivery-count` header, and dead-letters the message when a return takes the
//! count past `x-delivery-limit` (RabbitMQ docs, "Quorum Queues: Poison Message Handling").
//! A crash of ingest returns every delivery it held (up to `amqp.prefetch`), valid or not, so a
//! crash loop of `amqp.delivery_limit` crashes would send that many valid messages to the
//! dead-letter queue, where nothing counts them.
//!
//! Ingest never lets a message get there: a delivery that arrives with `x-delivery-count` at
//! half the limit or more is published again to the queue (through the default exchange, so
//! only this queue gets it), as a new message whose count starts at zero, and the delivery is
//! acknowledged once the broker has confirmed the copy. The copy waits at the tail of the queue,
//! so a message that crashes the service every time it is taken no longer keeps the head of the
//! queue: everything behind it is counted between two of its turns. Whether a message is bad is
//! decided by ingest alone, which dead-letters it with the reason; the broker's limit is only a
//! backstop for a consumer that does not do this. The copy carries `x-metrics-requeued`, the
//! number of times it was moved, so an operator sees a message that keeps coming around.
//!
//! The move happens in [`read_deliveries`], a task that reads the consumer on its own so that a
//! delivery is looked at as soon as it arrives, even while the batches wait for the database;
//! it passes the other deliveries on to gathering through a channel.
//!
//! Memory: the deliveries in that channel, and those being moved, are unacknowledged like every
//! other body held, so the prefetch cap of `budget` bounds them with the rest (the channel's
//! capacity is that prefetch too). They are not counted in `metrics_ingest_held_bytes` until
//! gathered, like the deliveries in the client's own buffer.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::try_join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{debug, warn};

use super::budget::prefetch;
use super::{BROKER_TIMEOUT, Context};
use crate::error::SessionError;
use crate::telemetry::Outcome;

/// The header in which a quorum queue counts the earlier returns of a delivery.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// The header counting how many times ingest moved a message to the tail of the queue.
pub const REQUEUED_HEADER: &str = "x-metrics-requeued";

/// AMQP `delivery-mode` of a persistent message.
const PERSISTENT: u8 = 2;

/// The value of an integer header, whatever integer type the broker used.
fn integer(headers: Option<&FieldTable>, name: &str) -> u64 {
    let value = headers.and_then(|table| table.inner().get(name));
    let number = match value {
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::LongLongInt(n)) => *n,
        _ => 0,
    };
    u64::try_from(number).unwrap_or(0)
}

/// How many times the broker has returned this delivery before (`x-delivery-count`; 0 on a
/// first delivery, which carries no such header).
pub fn delivery_count(properties: &BasicProperties) -> u64 {
    integer(properties.headers().as_ref(), DELIVERY_COUNT_HEADER)
}

/// Whether a delivery returned `count` times must be moved to the tail of the queue: at half
/// the limit, which leaves the other half for crashes that come before the move is confirmed.
pub fn is_due(count: u64, delivery_limit: u32) -> bool {
    count >= (u64::from(delivery_limit) / 2).max(1)
}

/// The deliveries of a session, as [`read_deliveries`] passes them on.
pub(super) type Deliveries = mpsc::Receiver<Result<Delivery, SessionError>>;

/// Reads `consumer` in a task of its own and passes the deliveries on, except those redelivered
/// at least half the delivery limit, which are moved to the tail of the queue ([`requeue`] on
/// `channel`, in confirm mode) instead. The channel passed on holds at most the prefetch, which
/// the broker never exceeds anyway. The task ends with the consumer, after the first error
/// (passed on), or when aborted with the session.
pub(super) fn read_deliveries(
    context: &Arc<Context>,
    channel: &Channel,
    consumer: Consumer,
) -> (Deliveries, JoinHandle<()>) {
    let window = usize::from(prefetch(&context.settings)).max(1);
    let (sender, receiver) = mpsc::channel(window);
    let context = Arc::clone(context);
    let channel = channel.clone();
    let limit = context.topology.delivery_limit;
    let reader = tokio::spawn(async move {
        // Whatever has arrived, at once: the deliveries due for a move go to the tail together
        // (confirmed and acknowledged) before the others of the chunk are passed on, so that no
        // batch's `multiple` acknowledgement covers one of them first.
        let mut chunks = consumer.ready_chunks(window);
        while let Some(chunk) = chunks.next().await {
            let mut due = Vec::new();
            let mut passed = Vec::with_capacity(chunk.len());
            for next in chunk {
                match next {
                    Ok(delivery) => {
                        let count = delivery_count(&delivery.properties);
                        if is_due(count, limit) {
                            debug!(delivery_count = count, "redelivered too often");
                            due.push(delivery);
                        } else {
                            passed.push(Ok(delivery));
                        }
                    }
                    Err(err) => passed.push(Err(SessionError::Amqp {
                        action: "receiving deliveries",
                        source: err,
                    })),
                }
            }
            if !due.is_empty() {
                warn!(
                    deliveries = due.len(),
                    max_delivery_count = due
                        .iter()
                        .map(|delivery| delivery_count(&delivery.properties))
                        .max(),
                    "redelivered too often: moving the messages to the tail of the queue"
                );
                let queue = context.topology.queue.as_str();
                if let Err(err) = requeue(&channel, queue, &due, BROKER_TIMEOUT).await {
                    let _ = sender.send(Err(err)).await;
                    return;
                }
                context.metrics.count(Outcome::Requeued, due.len());
            }
            for item in passed {
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    (receiver, reader)
}

/// The properties of the copy: the original's, without the broker's count, with
/// `x-metrics-requeued` one higher, persistent.
pub fn copy_properties(properties: &BasicProperties) -> BasicProperties {
    let original = properties.headers().as_ref();
    let moves = integer(original, REQUEUED_HEADER).saturating_add(1);
    let mut headers = FieldTable::default();
    for (key, value) in original.map(FieldTable::inner).into_iter().flatten() {
        if key.as_str() != DELIVERY_COUNT_HEADER && key.as_str() != REQUEUED_HEADER {
            headers.insert(key.clone(), value.clone());
        }
    }
    headers.insert(
        REQUEUED_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(moves).unwrap_or(i64::MAX)),
    );
    let mut copy = properties.clone().with_headers(headers);
    if copy.delivery_mode().is_none() {
        copy = copy.with_delivery_mode(PERSISTENT);
    }
    copy
}

/// Publishes a copy of each of `deliveries` to `queue` on `channel` (in confirm mode), waits for
/// the broker's confirms, then acknowledges each delivery alone. A crash in between leaves both:
/// the copy and the redelivered original count once, since counting is idempotent. The copies
/// go out together and their confirms are awaited together, so a whole window of deliveries
/// moves in about one round trip.
///
/// # Errors
///
/// When the broker refuses or returns a copy, or does not answer within `deadline`: the
/// deliveries not yet acknowledged stay so, and the session ends.
pub async fn requeue(
    channel: &Channel,
    queue: &str,
    deliveries: &[Delivery],
    deadline: Duration,
) -> Result<(), SessionError> {
    let action = "moving a message to the tail of the queue";
    let mut confirms = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                // `mandatory`: a copy that no queue takes comes back and is an error.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                copy_properties(&delivery.properties),
            )
            .await
            .map_err(SessionError::amqp(action))?;
        confirms.push(confirm);
    }
    let confirmations = timeout(deadline, try_join_all(confirms))
        .await
        .map_err(|_| SessionError::Timeout { action })?
        .map_err(SessionError::amqp(action))?;
    for confirmation in confirmations {
        if !confirmation.is_ack() || confirmation.take_message().is_some() {
            return Err(SessionError::RequeueRefused);
        }
    }
    let acks = deliveries
        .iter()
        .map(|delivery| delivery.acker.ack(BasicAckOptions { multiple: false }));
    let acked = timeout(deadline, try_join_all(acks))
        .await
        .map_err(|_| SessionError::Timeout { action })?
        .map_err(SessionError::amqp(action))?;
    if acked.into_iter().all(|acked| acked) {
        Ok(())
    } else {
        Err(SessionError::ChannelClosed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    fn with_headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (key, value) in pairs {
            table.insert((*key).into(), value.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn the_count_is_read_whatever_its_integer_type() {
        assert_eq!(delivery_count(&BasicProperties::default()), 0);
        for value in [
            AMQPValue::LongLongInt(7),
            AMQPValue::LongInt(7),
            AMQPValue::LongUInt(7),
            AMQPValue::ShortShortUInt(7),
        ] {
            assert_eq!(
                delivery_count(&with_headers(&[(DELIVERY_COUNT_HEADER, value)])),
                7
            );
        }
        let text = AMQPValue::LongString(LongString::from("7"));
        assert_eq!(
            delivery_count(&with_headers(&[(DELIVERY_COUNT_HEADER, text)])),
            0
        );
    }

    #[test]
    fn a_message_moves_at_half_the_limit() {
        assert!(!is_due(0, 20));
        assert!(!is_due(9, 20));
        assert!(is_due(10, 20));
        assert!(is_due(25, 20));
        assert!(!is_due(0, 1));
        assert!(is_due(1, 1));
    }

    #[test]
    fn the_copy_drops_the_count_and_counts_its_moves() {
        let original = with_headers(&[
            (DELIVERY_COUNT_HEADER, AMQPValue::LongLongInt(10)),
            ("trace", AMQPValue::LongString(LongString::from("abc"))),
        ]);
        let copy = copy_properties(&original);
        let headers = copy.headers().clone().unwrap();
        assert!(!headers.inner().contains_key(DELIVERY_COUNT_HEADER));
        assert_eq!(integer(Some(&headers), REQUEUED_HEADER), 1);
        assert!(headers.inner().contains_key("trace"));
        assert_eq!(copy.delivery_mode(), &Some(PERSISTENT));
        let again = copy_properties(&copy);
        assert_eq!(integer(again.headers().as_ref(), REQUEUED_HEADER), 2);
    }
}
