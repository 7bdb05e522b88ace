//! Dead-lettering: bad input, and events the database refuses for good, published to
//! `<queue>.dlx` with the reason in `x-metrics-error`, on a channel of their own in confirm mode.

use std::ops::Range;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::time::timeout;
use tracing::warn;

use super::{BROKER_TIMEOUT, Context};
use crate::error::SessionError;
use crate::telemetry::Outcome;

/// The header carrying the reason of a dead letter (`events.md`).
pub const ERROR_HEADER: &str = "x-metrics-error";

/// The content type of a dead-lettered batch element: one CloudEvent (`events.md`).
const EVENT_CONTENT_TYPE: &str = "application/cloudevents+json";

/// AMQP `delivery-mode` of a persistent message.
const PERSISTENT: u8 = 2;

/// The channel dead letters are published on, in confirm mode, and the connection's frame size,
/// which their headers must fit.
#[derive(Clone)]
pub(super) struct DeadLetterChannel {
    pub channel: Channel,
    pub frame_max: u32,
}

/// Which bytes of a delivery's body a dead letter carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Carried {
    /// The whole body.
    Body,
    /// One element of a batch: its own JSON text.
    Element(Range<usize>),
}

/// One message (or batch element) to dead-letter.
pub(super) struct DeadLetter {
    /// Index of its delivery in the batch.
    pub delivery: usize,
    /// The bytes it carries.
    pub carried: Carried,
    /// The `x-metrics-error` header.
    pub reason: String,
    /// The event id, for the log.
    pub event_id: Option<String>,
}

/// Dead-letters `delivery` on its own as soon as it arrives, then acknowledges it alone: for a
/// body over `limits.max_body_bytes`, which must not wait with a batch. Acknowledging it out of
/// order is safe: every batch acknowledged so far ended before it, and the `multiple` ack of a
/// later batch only covers deliveries still unacknowledged.
pub(super) async fn reject_now(
    context: &Context,
    publisher: &DeadLetterChannel,
    delivery: Delivery,
    reason: String,
) -> Result<(), SessionError> {
    let dead = DeadLetter {
        delivery: 0,
        carried: Carried::Body,
        reason,
        event_id: None,
    };
    publish(context, publisher, std::slice::from_ref(&delivery), &[dead]).await?;
    let acked = timeout(
        BROKER_TIMEOUT,
        delivery.acker.ack(BasicAckOptions { multiple: false }),
    )
    .await
    .map_err(|_| SessionError::Timeout {
        action: "acknowledging a dead-lettered message",
    })?
    .map_err(SessionError::amqp("acknowledging a dead-lettered message"))?;
    if acked {
        Ok(())
    } else {
        Err(SessionError::ChannelClosed)
    }
}

/// Publishes each dead letter to `<queue>.dlx` and waits for the broker's confirms.
///
/// Why not `basic.reject` without requeue: the queue's own dead-lettering would keep the
/// message, but AMQP 0-9-1 gives no way to add a header when rejecting, and `events.md` wants
/// the reason in `x-metrics-error`; nor can it dead-letter one element of a batch. So the
/// service publishes the dead letter itself, in confirm mode, and acknowledges the original
/// only after the confirm: a crash in between at worst dead-letters a message twice, never
/// loses it.
pub(super) async fn publish(
    context: &Context,
    publisher: &DeadLetterChannel,
    deliveries: &[Delivery],
    dead_letters: &[DeadLetter],
) -> Result<(), SessionError> {
    let letters = dead_letters.iter().filter_map(|dead| {
        let delivery = deliveries.get(dead.delivery)?;
        // The original bytes, never a re-encoding (`events.md`): the whole body, or the batch
        // element's own JSON text.
        let (body, element) = match &dead.carried {
            Carried::Body => (delivery.data.as_slice(), false),
            Carried::Element(span) => (delivery.data.get(span.clone()).unwrap_or_default(), true),
        };
        Some(Letter {
            body,
            element,
            properties: delivery.properties.clone(),
            routing_key: delivery.routing_key.clone(),
            reason: &dead.reason,
            event_id: dead.event_id.as_deref().unwrap_or(""),
        })
    });
    publish_letters(context, publisher, letters).await
}

/// One dead letter: the bytes it carries, the original's properties and routing key, and why.
struct Letter<'a> {
    body: &'a [u8],
    /// Whether `body` is one element of a batch (its content type is then a CloudEvent's).
    element: bool,
    properties: BasicProperties,
    routing_key: ShortString,
    reason: &'a str,
    event_id: &'a str,
}

async fn publish_letters(
    context: &Context,
    publisher: &DeadLetterChannel,
    letters: impl Iterator<Item = Letter<'_>>,
) -> Result<(), SessionError> {
    let exchange = context.topology.dead_letter_exchange.as_str();
    let mut confirms = Vec::new();
    for letter in letters {
        let mut properties = letter.properties;
        if letter.element {
            properties = properties.with_content_type(EVENT_CONTENT_TYPE.into());
        }
        let headers = dead_letter_headers(
            properties.headers().as_ref(),
            letter.reason,
            header_budget(publisher.frame_max),
        );
        properties = properties.with_headers(headers);
        if properties.delivery_mode().is_none() {
            properties = properties.with_delivery_mode(PERSISTENT);
        }
        warn!(
            event.id = letter.event_id,
            messaging.rabbitmq.destination.routing_key = %letter.routing_key,
            reason = %letter.reason,
            "dead-lettering bad input"
        );
        let confirm = publisher
            .channel
            .basic_publish(
                exchange.into(),
                letter.routing_key,
                // `mandatory`: a dead letter that no queue takes comes back (`basic.return`)
                // and is an error, never a silent drop (AMQP 0-9-1 reference, `basic.publish`).
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                letter.body,
                properties,
            )
            .await
            .map_err(SessionError::amqp("publishing a dead letter"))?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        let confirmation = timeout(BROKER_TIMEOUT, confirm)
            .await
            .map_err(|_| SessionError::Timeout {
                action: "confirming a dead letter",
            })?
            .map_err(SessionError::amqp("confirming a dead letter"))?;
        if !confirmation.is_ack() {
            return Err(SessionError::DeadLetterRefused);
        }
        if confirmation.take_message().is_some() {
            return Err(SessionError::DeadLetterUnroutable);
        }
    }
    Ok(())
}

/// Staged events read back per round of [`publish_refused`].
const REFUSED_PER_ROUND: usize = 64;

/// Dead-letters the staged events the database refused for good after their deliveries were
/// acknowledged (`inbox.enabled`), from what the inbox kept of each: its bytes, its delivery's
/// routing key and properties, and the reason. Each is deleted from the inbox once the broker
/// has confirmed its dead letter: a crash in between dead-letters it twice, never loses it.
/// Returns how many were dead-lettered.
///
/// # Errors
///
/// A broker failure, or [`SessionError::Database`] when the inbox cannot be read or updated.
pub(super) async fn publish_refused(
    context: &Context,
    publisher: &DeadLetterChannel,
) -> Result<usize, SessionError> {
    let mut published = 0;
    loop {
        let refused = context
            .database
            .refused_events(REFUSED_PER_ROUND)
            .await
            .map_err(SessionError::Database)?;
        if refused.is_empty() {
            return Ok(published);
        }
        let letters = refused.iter().map(|event| {
            let reason = event.refused.as_deref().unwrap_or_default();
            Letter {
                body: &event.event,
                element: event.element,
                // Kept by `settle::store` from the delivery's own; a row written by hand that
                // does not parse still gets its dead letter, with no properties but the reason.
                properties: serde_json::from_slice(&event.properties).unwrap_or_default(),
                routing_key: event.routing_key.as_str().into(),
                reason,
                event_id: reason
                    .strip_prefix("event `")
                    .and_then(|rest| rest.split_once('`'))
                    .map_or("", |(id, _)| id),
            }
        });
        publish_letters(context, publisher, letters).await?;
        let ids: Vec<i64> = refused.iter().map(|event| event.id).collect();
        context
            .database
            .forget(ids)
            .await
            .map_err(SessionError::Database)?;
        context.metrics.count(Outcome::DeadLettered, refused.len());
        published += refused.len();
    }
}

/// Room for a dead letter's headers in a `frame_max` content-header frame: the frame's own
/// fields and every other property (short strings of at most 255 bytes each) come first.
fn header_budget(frame_max: u32) -> usize {
    // 0 means no limit was negotiated (AMQP 0-9-1, `connection.tune`).
    if frame_max == 0 {
        return usize::MAX;
    }
    usize::try_from(frame_max)
        .unwrap_or(usize::MAX)
        .saturating_sub(OTHER_PROPERTIES_BYTES)
}

/// The encoded size of the header frame's fixed parts plus every property other than
/// `headers` at its largest: 14 short strings, the timestamp, the two octets and the flags.
const OTHER_PROPERTIES_BYTES: usize = 8 + 14 + 14 * 256 + 8 + 2 + 2;

/// The header recording how many of the original headers were left off a dead letter.
pub const DROPPED_HEADERS_HEADER: &str = "x-metrics-dropped-headers";

/// The original's headers plus `x-metrics-error`, within `budget` encoded bytes: the content
/// header must fit in one frame (AMQP 0-9-1, section 4.2.6.1), or the broker closes the
/// connection and the dead letter could never be published. The largest original headers are
/// left off first, and their number recorded in `x-metrics-dropped-headers`.
fn dead_letter_headers(original: Option<&FieldTable>, reason: &str, budget: usize) -> FieldTable {
    let mut kept: Vec<(ShortString, AMQPValue)> = original
        .map(|table| {
            table
                .inner()
                .iter()
                .filter(|(key, _)| key.as_str() != ERROR_HEADER)
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    let reason = AMQPValue::LongString(LongString::from(reason));
    let marker = AMQPValue::LongLongInt(0);
    let entry = |key: &str, value: &AMQPValue| 1 + key.len() + encoded_size(value);
    let mut size = 4
        + entry(ERROR_HEADER, &reason)
        + kept
            .iter()
            .map(|(key, value)| entry(key.as_str(), value))
            .sum::<usize>();
    let mut dropped: i64 = 0;
    if size > budget {
        size += entry(DROPPED_HEADERS_HEADER, &marker);
        kept.sort_by_key(|(key, value)| entry(key.as_str(), value));
        while size > budget {
            let Some((key, value)) = kept.pop() else {
                break;
            };
            size -= entry(key.as_str(), &value);
            dropped += 1;
        }
    }
    let mut headers = FieldTable::default();
    for (key, value) in kept {
        headers.insert(key, value);
    }
    headers.insert(ERROR_HEADER.into(), reason);
    if dropped > 0 {
        headers.insert(
            DROPPED_HEADERS_HEADER.into(),
            AMQPValue::LongLongInt(dropped),
        );
    }
    headers
}

/// The encoded size of a field value with its type octet (AMQP 0-9-1, section 4.2.5.5).
fn encoded_size(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(text) => 1 + text.as_str().len(),
        AMQPValue::LongString(text) => 4 + text.as_bytes().len(),
        AMQPValue::ByteArray(bytes) => 4 + bytes.as_slice().len(),
        AMQPValue::FieldArray(items) => {
            4 + items.as_slice().iter().map(encoded_size).sum::<usize>()
        }
        AMQPValue::FieldTable(table) => {
            4 + table
                .inner()
                .iter()
                .map(|(key, value)| 1 + key.as_str().len() + encoded_size(value))
                .sum::<usize>()
        }
        AMQPValue::Void => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in pairs {
            table.insert((*key).into(), value.clone());
        }
        table
    }

    fn text(len: usize) -> AMQPValue {
        AMQPValue::LongString(LongString::from("h".repeat(len)))
    }

    #[test]
    fn headers_that_fit_are_kept_with_the_reason() {
        let original = table(&[("x-trace", text(10)), (ERROR_HEADER, text(3))]);
        let headers = dead_letter_headers(Some(&original), "bad", 1000);
        assert_eq!(
            headers,
            table(&[
                ("x-trace", text(10)),
                (ERROR_HEADER, AMQPValue::LongString("bad".into())),
            ])
        );
    }

    #[test]
    fn the_largest_headers_go_first_when_they_would_not_fit() {
        let original = table(&[
            ("small", text(10)),
            ("large", text(5000)),
            ("larger", text(9000)),
        ]);
        let headers = dead_letter_headers(Some(&original), "bad", 6000);
        assert_eq!(
            headers,
            table(&[
                ("small", text(10)),
                ("large", text(5000)),
                (ERROR_HEADER, AMQPValue::LongString("bad".into())),
                (DROPPED_HEADERS_HEADER, AMQPValue::LongLongInt(1)),
            ])
        );
        // Encoded: table length, then per entry the key's length octet and bytes, the type octet
        // and the value (AMQP 0-9-1, section 4.2.5.5).
        let size = 4
            + (1 + 5 + 1 + 4 + 10)
            + (1 + 5 + 1 + 4 + 5000)
            + (1 + ERROR_HEADER.len() + 1 + 4 + 3)
            + (1 + DROPPED_HEADERS_HEADER.len() + 1 + 8);
        assert!(size <= 6000, "{size}");
        assert_eq!(header_budget(0), usize::MAX);
        assert_eq!(header_budget(131_072), 131_072 - OTHER_PROPERTIES_BYTES);
    }
}
