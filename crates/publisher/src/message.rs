//! A message as it goes on the wire: routing key, content type and body.

use metrics_events::{EncodeError, Event, encode, encode_batch};

/// The content type of a single event (CloudEvents structured mode).
pub const EVENT_CONTENT_TYPE: &str = "application/cloudevents+json";
/// The content type of a batch of events.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// The routing key of a batch (`events.md`).
pub const BATCH_ROUTING_KEY: &str = "agentos.batch";

/// A message ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The routing key: the event's type, or [`BATCH_ROUTING_KEY`].
    pub routing_key: String,
    /// The `content-type` property.
    pub content_type: &'static str,
    /// The JSON body.
    pub body: Vec<u8>,
}

impl OutgoingMessage {
    /// One event, routed by its type.
    ///
    /// # Errors
    ///
    /// [`EncodeError`] when the event holds a value the wire cannot carry.
    pub fn event(event: &Event) -> Result<Self, EncodeError> {
        Ok(Self {
            routing_key: event.event_type().to_owned(),
            content_type: EVENT_CONTENT_TYPE,
            body: encode(event)?.to_string().into_bytes(),
        })
    }

    /// A batch of events, routed with [`BATCH_ROUTING_KEY`].
    ///
    /// # Errors
    ///
    /// [`EncodeError`] when an event holds a value the wire cannot carry.
    pub fn batch<'a>(events: impl IntoIterator<Item = &'a Event>) -> Result<Self, EncodeError> {
        Ok(Self {
            routing_key: BATCH_ROUTING_KEY.to_owned(),
            content_type: BATCH_CONTENT_TYPE,
            body: encode_batch(events)?.to_string().into_bytes(),
        })
    }

    /// Any body: for other event types, or for testing how consumers handle bad input.
    pub fn raw(routing_key: &str, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            routing_key: routing_key.to_owned(),
            content_type,
            body: body.into(),
        }
    }
}
