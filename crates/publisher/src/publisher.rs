//! The publisher: one connection, a channel in confirm mode, reconnects with backoff.

use std::time::Duration;

use lapin::PublisherConfirm;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use metrics_backoff::Backoff;
use metrics_events::Event;
use tokio::sync::Mutex;
use tokio::time::{sleep, timeout};

use crate::message::OutgoingMessage;

/// How long closing a connection may take before it is dropped: one that broke may never answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a [`Publisher`] connects and retries.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// The producers' exchange (`agentos.events`); declared (topic, durable) at each connect,
    /// so publishing works before any consumer has started.
    pub exchange: String,
    /// The connection name shown in the RabbitMQ management UI.
    pub connection_name: String,
    /// Messages published before waiting for their confirms.
    pub window: usize,
    /// Attempts at one window before giving up: each failed attempt reconnects first.
    pub attempts: u32,
    /// The first wait before reconnecting, plus jitter; it doubles up to `max_backoff`
    /// (`metrics_backoff`, the policy metrics-ingest uses too).
    pub min_backoff: Duration,
    /// The longest wait before reconnecting; the waits start again from `min_backoff` once
    /// publishing has worked this long.
    pub max_backoff: Duration,
    /// The longest wait for connecting (with the channel and the exchange's declaration), or
    /// for publishing a window and having its confirms: a broker that takes the connection or
    /// the messages and then stops answering (as a node still booting, or one blocked by an
    /// alarm, may) costs one attempt, never a hang.
    pub timeout: Duration,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            exchange: "agentos.events".to_owned(),
            connection_name: "metrics-publisher".to_owned(),
            window: 256,
            attempts: 10,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why publishing failed after every attempt.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker could not be reached or refused an operation.
    #[error("{action} on RabbitMQ")]
    Amqp {
        /// What was being done.
        action: &'static str,
        /// The broker's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker did not answer in time.
    #[error("{action} on RabbitMQ timed out")]
    Timeout {
        /// What was being done.
        action: &'static str,
    },
    /// The broker negatively acknowledged a message (it could not take responsibility for it).
    #[error("RabbitMQ refused a message (negative publisher confirm)")]
    Nacked,
    /// An event holds a value the wire cannot carry; nothing was published.
    #[error("encoding the event")]
    Encode(#[from] metrics_events::EncodeError),
}

impl PublishError {
    fn amqp(action: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Amqp { action, source }
    }
}

struct Link {
    connection: Connection,
    channel: Channel,
}

/// Publishes events with confirms; safe to share between tasks.
pub struct Publisher {
    url: String,
    options: PublisherOptions,
    link: Mutex<Option<Link>>,
    backoff: std::sync::Mutex<Backoff>,
}

impl Publisher {
    /// Connects to `url` and declares the exchange, trying up to [`PublisherOptions::attempts`]
    /// times with backoff, as a failed window does: a broker restarting when the producer
    /// starts is waited for.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when every attempt failed to reach the broker or have the exchange
    /// declared.
    pub async fn connect(url: &str, options: PublisherOptions) -> Result<Self, PublishError> {
        let mut backoff = Backoff::new(options.min_backoff, options.max_backoff);
        let mut attempt = 1;
        let link = loop {
            match open(url, &options).await {
                Ok(link) => break link,
                Err(err) if attempt >= options.attempts => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, attempt, "connecting failed; retrying");
                    sleep(backoff.next_wait()).await;
                    attempt += 1;
                }
            }
        };
        backoff.succeeded();
        Ok(Self {
            url: url.to_owned(),
            backoff: std::sync::Mutex::new(backoff),
            options,
            link: Mutex::new(Some(link)),
        })
    }

    /// Publishes one event, routed by its type, and waits for its confirm.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when every attempt failed.
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.publish_all(&[OutgoingMessage::event(event)?]).await
    }

    /// Publishes `events` as one batch message and waits for its confirm.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when every attempt failed.
    pub async fn publish_batch(&self, events: &[Event]) -> Result<(), PublishError> {
        self.publish_all(&[OutgoingMessage::batch(events)?]).await
    }

    /// Publishes `messages` in windows of [`PublisherOptions::window`], waiting for each
    /// window's confirms. A window that fails is published again, whole, on a new connection:
    /// a message may reach the broker twice, never zero times.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when a window failed [`PublisherOptions::attempts`] times.
    pub async fn publish_all(&self, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        for window in messages.chunks(self.options.window.max(1)) {
            self.publish_window(window).await?;
        }
        Ok(())
    }

    async fn publish_window(&self, window: &[OutgoingMessage]) -> Result<(), PublishError> {
        let mut attempt = 1;
        loop {
            let mut link = self.link.lock().await;
            let result = match link.as_ref() {
                Some(current) => self.send(&current.channel, window).await,
                None => match open(&self.url, &self.options).await {
                    Ok(opened) => {
                        let result = self.send(&opened.channel, window).await;
                        *link = Some(opened);
                        result
                    }
                    Err(err) => Err(err),
                },
            };
            match result {
                Ok(()) => {
                    self.backoff().succeeded();
                    return Ok(());
                }
                Err(err) if attempt >= self.options.attempts => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, attempt, "publishing failed; reconnecting");
                    if let Some(broken) = link.take() {
                        let closing = broken
                            .connection
                            .close(320, ShortString::from("reconnecting"));
                        let _ = timeout(CLOSE_TIMEOUT, closing).await;
                    }
                    drop(link);
                    let wait = self.backoff().next_wait();
                    sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes `window` on `channel` and waits for every confirm, within
    /// [`PublisherOptions::timeout`] in all.
    async fn send(
        &self,
        channel: &Channel,
        window: &[OutgoingMessage],
    ) -> Result<(), PublishError> {
        timeout(self.options.timeout, self.send_unbounded(channel, window))
            .await
            .map_err(|_| PublishError::Timeout {
                action: "publishing a window and waiting for its confirms",
            })?
    }

    async fn send_unbounded(
        &self,
        channel: &Channel,
        window: &[OutgoingMessage],
    ) -> Result<(), PublishError> {
        let mut confirms: Vec<PublisherConfirm> = Vec::with_capacity(window.len());
        for message in window {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(message.content_type.into());
            confirms.push(
                channel
                    .basic_publish(
                        self.options.exchange.as_str().into(),
                        message.routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &message.body,
                        properties,
                    )
                    .await
                    .map_err(PublishError::amqp("publishing"))?,
            );
        }
        for confirm in confirms {
            let confirmation = confirm
                .await
                .map_err(PublishError::amqp("waiting for a publisher confirm"))?;
            if confirmation.is_nack() {
                return Err(PublishError::Nacked);
            }
        }
        Ok(())
    }

    /// Closes the channel and the connection.
    pub async fn close(self) {
        if let Some(link) = self.link.lock().await.take() {
            let closing = link.channel.close(200, ShortString::from("done"));
            let _ = timeout(CLOSE_TIMEOUT, closing).await;
            let closing = link.connection.close(200, ShortString::from("done"));
            let _ = timeout(CLOSE_TIMEOUT, closing).await;
        }
    }
}

/// Connects, opens a channel in confirm mode and declares the exchange, within
/// [`PublisherOptions::timeout`] in all.
async fn open(url: &str, options: &PublisherOptions) -> Result<Link, PublishError> {
    timeout(options.timeout, open_unbounded(url, options))
        .await
        .map_err(|_| PublishError::Timeout {
            action: "connecting",
        })?
}

async fn open_unbounded(url: &str, options: &PublisherOptions) -> Result<Link, PublishError> {
    let connection = Connection::connect(
        url,
        ConnectionProperties::default()
            .with_connection_name(options.connection_name.as_str().into()),
    )
    .await
    .map_err(PublishError::amqp("connecting"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(PublishError::amqp("opening a channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(PublishError::amqp("enabling publisher confirms"))?;
    channel
        .exchange_declare(
            options.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(PublishError::amqp("declaring the events exchange"))?;
    Ok(Link {
        connection,
        channel,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::net::TcpListener;

    use super::*;

    /// A listener on loopback that takes connections and never answers: a broker that has
    /// opened its port and hangs in the handshake.
    async fn silent_broker() -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("amqp://guest:guest@{}/%2f", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (url, task)
    }

    #[tokio::test]
    async fn a_broker_silent_in_the_handshake_costs_an_attempt_not_a_hang() {
        let (url, broker) = silent_broker().await;
        let options = PublisherOptions {
            attempts: 2,
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            timeout: Duration::from_millis(300),
            ..PublisherOptions::default()
        };
        let started = Instant::now();
        let result = Publisher::connect(&url, options).await;
        let elapsed = started.elapsed();
        broker.abort();
        assert!(
            matches!(
                result,
                Err(PublishError::Timeout {
                    action: "connecting"
                })
            ),
            "{:?}",
            result.err()
        );
        // Two bounded attempts and one wait between them, not the test's own limit.
        assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }
}
