//! Publishing AgentOS events to RabbitMQ, as `events.md` asks producers to: persistent messages
//! on the `agentos.events` topic exchange, routed by event type, with publisher confirms.
//!
//! [`Publisher`] keeps one connection and a channel in confirm mode, pipelines a window of
//! messages before waiting for their confirms, and reconnects with backoff when the broker goes
//! away, publishing again whatever was not confirmed. Delivery is at least once; ingest counts a
//! repeated event once.
//!
//! [`traffic`] generates realistic synthetic traffic; `metrics-loadgen` publishes it.

mod message;
mod publisher;
pub mod traffic;

pub use message::{BATCH_CONTENT_TYPE, BATCH_ROUTING_KEY, EVENT_CONTENT_TYPE, OutgoingMessage};
pub use publisher::{PublishError, Publisher, PublisherOptions};
