//! One session with the broker: connect, declare, open the channels, then gather and settle
//! batches until shutdown or failure, and close.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::budget::{Budget, prefetch};
use super::dead_letter::DeadLetterChannel;
use super::gather::{Gathered, Gatherer};
use super::requeue::read_deliveries;
use super::settle::settle;
use super::{CLOSE_TIMEOUT, Context};
use crate::config::redacted_url;
use crate::error::SessionError;

/// A connection with its consuming channel, its dead-letter channel and its consumer.
pub(super) struct Session {
    connection: Connection,
    channel: Channel,
    publisher: DeadLetterChannel,
    consumer: Consumer,
}

impl Session {
    /// Connects, declares the topology and starts consuming; `None` when shutdown came first.
    pub(super) async fn open(
        context: &Context,
        shutdown: &CancellationToken,
    ) -> Result<Option<Self>, SessionError> {
        let amqp = &context.settings.amqp;
        let mut uri =
            AMQPUri::from_str(amqp.url.expose_secret()).map_err(|_| SessionError::InvalidUrl)?;
        // Heartbeats find a frozen connection (AMQP 0-9-1, section 4.2.7): lapin closes one that
        // was silent for two of them.
        uri.query.heartbeat.get_or_insert(amqp.heartbeat_s);
        let connect = Connection::connect_uri(
            uri,
            ConnectionProperties::default().with_connection_name("metrics-ingest".into()),
        );
        let connect_timeout = Duration::from_millis(amqp.connect_timeout_ms);
        let connection = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            connected = timeout(connect_timeout, connect) => connected
                .map_err(|_| SessionError::Timeout { action: "connecting" })?
                .map_err(SessionError::amqp("connecting"))?,
        };
        // Every step is bounded: a connection that dies mid-setup must not leave a promise
        // pending.
        let opened = timeout(connect_timeout, open_channels(context, &connection))
            .await
            .map_err(|_| SessionError::Timeout {
                action: "opening the channels",
            })
            .and_then(|opened| opened);
        match opened {
            Ok((channel, publisher, consumer)) => Ok(Some(Self {
                publisher: DeadLetterChannel {
                    channel: publisher,
                    frame_max: connection.configuration().frame_max(),
                },
                connection,
                channel,
                consumer,
            })),
            Err(err) => {
                close_connection(&connection).await;
                Err(err)
            }
        }
    }

    /// Consumes until shutdown or failure, then closes the channel and the connection.
    pub(super) async fn consume(
        self,
        context: &Arc<Context>,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        context.health.set_channel(Some(self.channel.clone()));
        context.metrics.set_ready(true);
        info!(
            amqp.url = %redacted_url(&context.settings.amqp.url),
            messaging.destination.name = %context.topology.queue,
            prefetch = prefetch(&context.settings),
            memory_bytes = context.settings.batch.memory_bytes,
            "consuming"
        );
        let Self {
            connection,
            channel,
            publisher,
            consumer,
        } = self;
        let consumer_tag = consumer.tag();
        let (mut deliveries, reader) = read_deliveries(context, &publisher.channel, consumer);
        let result = run(
            context,
            shutdown,
            &channel,
            &publisher,
            &consumer_tag,
            &mut deliveries,
        )
        .await;
        // Deliveries it still holds return to the queue with the channel.
        reader.abort();
        context.health.set_channel(None);
        let _ = timeout(
            CLOSE_TIMEOUT,
            channel.close(200, ShortString::from("metrics-ingest stopping")),
        )
        .await;
        close_connection(&connection).await;
        result
    }
}

/// Gathers the next batch while the previous one is settled, until shutdown or failure.
async fn run(
    context: &Arc<Context>,
    shutdown: &CancellationToken,
    channel: &Channel,
    publisher: &DeadLetterChannel,
    consumer_tag: &ShortString,
    deliveries: &mut super::requeue::Deliveries,
) -> Result<(), SessionError> {
    let budget = Budget::new(context.metrics.clone());
    let batch_size = context
        .settings
        .batch
        .size
        .min(usize::from(prefetch(&context.settings)));
    let mut gatherer = Gatherer {
        context,
        deliveries,
        publisher,
        budget: &budget,
        batch_size,
    };
    let mut in_flight = InFlight::default();
    loop {
        match gatherer.gather(&mut in_flight, shutdown).await {
            Gathered::Ready(batch) => {
                in_flight.wait().await?;
                let task = settle(
                    Arc::clone(context),
                    publisher.clone(),
                    batch,
                    shutdown.clone(),
                );
                in_flight.handle = Some(tokio::spawn(task));
            }
            Gathered::Stopping(batch) => {
                // Stop the flow first; deliveries already pushed but not gathered go back to
                // the queue when the channel closes.
                let _ = timeout(
                    CLOSE_TIMEOUT,
                    channel.basic_cancel(consumer_tag.clone(), BasicCancelOptions::default()),
                )
                .await;
                in_flight.wait().await?;
                info!(
                    deliveries = batch.deliveries.len(),
                    "stopping: settling the batch in hand"
                );
                if !batch.deliveries.is_empty() {
                    settle(
                        Arc::clone(context),
                        publisher.clone(),
                        batch,
                        CancellationToken::new(),
                    )
                    .await?;
                }
                return Ok(());
            }
            Gathered::Closed(err) => {
                // The connection is gone, so the batch being written can no longer be
                // acknowledged (and an acknowledgement on a dead connection may never
                // resolve): stop waiting for it. Its deliveries return to the queue; if its
                // transaction commits anyway, the redelivery counts as a duplicate.
                in_flight.abort();
                return Err(err);
            }
        }
    }
}

async fn close_connection(connection: &Connection) {
    let _ = timeout(
        CLOSE_TIMEOUT,
        connection.close(200, ShortString::from("metrics-ingest stopping")),
    )
    .await;
}

/// Opens the consuming channel (topology declared, prefetch set, consumer started) and the
/// dead-letter channel.
async fn open_channels(
    context: &Context,
    connection: &Connection,
) -> Result<(Channel, Channel, Consumer), SessionError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(SessionError::amqp("opening a channel"))?;
    context.topology.declare(&channel).await?;
    // The prefetch count is what bounds the bodies held in bytes (see `budget`).
    channel
        .basic_qos(prefetch(&context.settings), BasicQosOptions::default())
        .await
        .map_err(SessionError::amqp("setting the prefetch"))?;
    // Dead letters go out on their own channel in confirm mode, so the original is acknowledged
    // only once the broker has taken responsibility for its dead letter.
    let publisher = connection
        .create_channel()
        .await
        .map_err(SessionError::amqp("opening the dead-letter channel"))?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(SessionError::amqp("enabling publisher confirms"))?;
    let consumer = channel
        .basic_consume(
            context.topology.queue.as_str().into(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(SessionError::amqp("starting to consume"))?;

    Ok((channel, publisher, consumer))
}

/// The batch being written, if any, and how it ended once it has.
#[derive(Default)]
pub(super) struct InFlight {
    handle: Option<JoinHandle<Result<(), SessionError>>>,
    result: Option<Result<(), SessionError>>,
}

impl InFlight {
    pub(super) fn is_busy(&self) -> bool {
        self.handle.is_some()
    }

    pub(super) fn has_failed(&self) -> bool {
        matches!(self.result, Some(Err(_)))
    }

    /// Waits for the batch to end and keeps its result; cancel-safe.
    pub(super) async fn finished(&mut self) {
        if let Some(handle) = self.handle.as_mut() {
            let result = handle.await.map_err(SessionError::Worker).and_then(|r| r);
            self.handle = None;
            self.result = Some(result);
        }
    }

    fn abort(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }

    async fn wait(&mut self) -> Result<(), SessionError> {
        self.finished().await;
        self.result.take().unwrap_or(Ok(()))
    }
}
