//! The broker topology of `events.md`, declared idempotently at every (re)connect:
//!
//! - the producers' topic exchange (durable);
//! - the quorum queue, durable, bound to it with `agentos.#`, with `x-delivery-limit` and
//!   dead-lettering to `<queue>.dlx`;
//! - the dead-letter exchange `<queue>.dlx` (fanout, durable) and the quorum queue
//!   `<queue>.dead` bound to it, so deployments with different queues never mix dead letters.
//!
//! Declaring an existing entity with the same arguments is a no-op (AMQP 0-9-1 reference,
//! `exchange.declare` / `queue.declare`); with different arguments the broker closes the channel
//! with `PRECONDITION_FAILED`, which surfaces as an error naming the entity.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::AmqpSettings;
use crate::error::SessionError;

/// The routing-key pattern of the binding: every `agentos.` key, batches included.
pub const BINDING_KEY: &str = "agentos.#";

/// The names of the entities of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The producers' exchange.
    pub exchange: String,
    /// The consumed queue.
    pub queue: String,
    /// `<queue>.dlx`.
    pub dead_letter_exchange: String,
    /// `<queue>.dead`.
    pub dead_letter_queue: String,
    /// `x-delivery-limit` of the queue.
    pub delivery_limit: u32,
}

impl Topology {
    /// The topology the settings name.
    pub fn from_settings(amqp: &AmqpSettings) -> Self {
        Self {
            exchange: amqp.exchange.clone(),
            queue: amqp.queue.clone(),
            dead_letter_exchange: amqp.dead_letter_exchange(),
            dead_letter_queue: amqp.dead_letter_queue(),
            delivery_limit: amqp.delivery_limit,
        }
    }

    /// Declares every entity on `channel`; safe to repeat.
    ///
    /// # Errors
    ///
    /// [`SessionError::Amqp`] when the broker refuses a declaration (for example an existing
    /// queue with other arguments).
    pub async fn declare(&self, channel: &Channel) -> Result<(), SessionError> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable_exchange,
                FieldTable::default(),
            )
            .await
            .map_err(SessionError::amqp("declaring the events exchange"))?;
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable_exchange,
                FieldTable::default(),
            )
            .await
            .map_err(SessionError::amqp("declaring the dead-letter exchange"))?;

        let mut dead_arguments = FieldTable::default();
        dead_arguments.insert("x-queue-type".into(), long_string("quorum"));
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable_queue,
                dead_arguments,
            )
            .await
            .map_err(SessionError::amqp("declaring the dead-letter queue"))?;
        channel
            .queue_bind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(SessionError::amqp("binding the dead-letter queue"))?;

        channel
            .queue_declare(
                self.queue.as_str().into(),
                durable_queue,
                self.queue_arguments(),
            )
            .await
            .map_err(SessionError::amqp("declaring the ingest queue"))?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                BINDING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(SessionError::amqp("binding the ingest queue"))?;
        Ok(())
    }

    /// The arguments of the ingest queue. A quorum queue is replicated and supports
    /// `x-delivery-limit`: after that many deliveries (a message that crashes every consumer
    /// that takes it) the broker dead-letters it to `<queue>.dlx` instead of redelivering it
    /// forever (RabbitMQ docs, "Quorum Queues: Poison Message Handling").
    fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), long_string("quorum"));
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            long_string(&self.dead_letter_exchange),
        );
        arguments
    }
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}
