//! `TestBroker`: per-test exchange and queue names on the real RabbitMQ, deleted afterwards.
//!
//! The broker is `TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`). Names end in
//! a random suffix, so tests run in parallel without sharing a queue. The service under test
//! declares its own topology; the broker deletes the exchange, the queue and their dead-letter
//! pair (`<queue>.dlx`, `<queue>.dead`) in [`TestBroker::cleanup`], or on drop.

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rand::Rng;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A message read back from a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMessage {
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its body.
    pub body: Vec<u8>,
    /// Its properties, headers included.
    pub properties: BasicProperties,
}

impl ReceivedMessage {
    /// A string header, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into()),
            AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
            _ => None,
        }
    }
}

/// Throwaway names on the test RabbitMQ and a channel to publish and inspect with.
#[derive(Debug)]
pub struct TestBroker {
    url: String,
    exchange: String,
    queue: String,
    connection: Connection,
    channel: Channel,
    cleaned: bool,
}

impl TestBroker {
    /// Connects and picks fresh names; declares nothing.
    ///
    /// # Panics
    ///
    /// When the broker cannot be reached.
    pub async fn new() -> Self {
        let url = url();
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "cannot reach the test RabbitMQ at TEST_AMQP_URL={url}: {err}. Start it (see \
                     README, `Running the tests`) or point TEST_AMQP_URL at one."
                )
            });
        let channel = connection
            .create_channel()
            .await
            .expect("opening a channel on the test RabbitMQ");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("enabling publisher confirms");
        let suffix = format!("{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff);
        Self {
            url,
            exchange: format!("test.events.{suffix}"),
            queue: format!("test.ingest.{suffix}"),
            connection,
            channel,
            cleaned: false,
        }
    }

    /// The broker URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This test's exchange.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// This test's queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// This test's dead-letter queue, `<queue>.dead`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// The channel (in confirm mode) the fixture uses.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes `body` persistently to the test exchange and waits for the broker's confirm.
    ///
    /// # Panics
    ///
    /// When the broker refuses it.
    pub async fn publish(&self, routing_key: &str, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/cloudevents+json".into()),
            )
            .await
            .expect("publishing to the test exchange")
            .await
            .expect("waiting for the publisher confirm");
        assert!(confirm.is_ack(), "the broker refused a test message");
    }

    /// Publishes one message with the given properties (headers, content type) and waits for
    /// the broker's confirm.
    ///
    /// # Panics
    ///
    /// When the broker refuses it.
    pub async fn publish_with(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publishing to the test exchange")
            .await
            .expect("waiting for the publisher confirm");
        assert!(confirm.is_ack(), "the broker refused a test message");
    }

    /// Publishes many bodies, then waits for all confirms at once.
    ///
    /// # Panics
    ///
    /// When the broker refuses one.
    pub async fn publish_all<'a>(
        &self,
        routing_key: &str,
        bodies: impl IntoIterator<Item = &'a [u8]>,
    ) {
        let mut confirms = Vec::new();
        for body in bodies {
            confirms.push(
                self.channel
                    .basic_publish(
                        self.exchange.as_str().into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publishing to the test exchange"),
            );
        }
        for confirm in confirms {
            let confirmation = confirm.await.expect("waiting for a publisher confirm");
            assert!(confirmation.is_ack(), "the broker refused a test message");
        }
    }

    /// The number of ready (not delivered) messages in `queue`.
    ///
    /// # Panics
    ///
    /// When the queue does not exist.
    pub async fn ready_count(&self, queue: &str) -> u32 {
        let channel = self
            .connection
            .create_channel()
            .await
            .expect("opening a channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("inspecting a test queue");
        let _ = channel.close(200, "done".into()).await;
        declared.message_count()
    }

    /// Takes (and acknowledges) the next message of `queue`, if any.
    ///
    /// # Panics
    ///
    /// When the queue cannot be read.
    pub async fn get(&self, queue: &str) -> Option<ReceivedMessage> {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("reading a test queue")?;
        Some(ReceivedMessage {
            routing_key: message.delivery.routing_key.as_str().to_owned(),
            body: message.delivery.data,
            properties: message.delivery.properties,
        })
    }

    /// Deletes the exchange and queues of this test.
    pub async fn cleanup(mut self) {
        delete(&self.channel, &self.exchange, &self.queue).await;
        self.cleaned = true;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // Drop cannot await; a short-lived runtime on its own thread deletes the names.
        let (url, exchange, queue) = (self.url.clone(), self.exchange.clone(), self.queue.clone());
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let connect = Connection::connect(&url, ConnectionProperties::default());
                let Ok(Ok(connection)) =
                    tokio::time::timeout(Duration::from_secs(5), connect).await
                else {
                    return;
                };
                if let Ok(channel) = connection.create_channel().await {
                    delete(&channel, &exchange, &queue).await;
                }
                let _ = connection.close(200, "done".into()).await;
            });
        })
        .join();
    }
}

async fn delete(channel: &Channel, exchange: &str, queue: &str) {
    for name in [queue.to_owned(), format!("{queue}.dead")] {
        let _ = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for name in [exchange.to_owned(), format!("{queue}.dlx")] {
        let _ = channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

fn url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}
