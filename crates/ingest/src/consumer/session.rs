//! One session with the broker: connect, declare, open the channels, then gather and settle
//! batches until shutdown or failure, and close.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, Event};
use secrecy::ExposeSecret;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::budget::{Budget, prefetch};
use super::dead_letter::{DeadLetterChannel, publish_refused};
use super::gather::{Gathered, Gatherer};
use super::requeue::read_deliveries;
use super::settle::settle;
use super::{CLOSE_TIMEOUT, Context, error_chain};
use crate::config::redacted_url;
use crate::error::SessionError;

/// A connection with its consuming channel, its dead-letter channel and its consumer.
pub(super) struct Session {
    connection: Connection,
    lost: Lost,
    channel: Channel,
    publisher: DeadLetterChannel,
    consumer: Consumer,
}

/// Whether the connection has failed, as the client reports it on the connection's event
/// stream. Every wait on the broker during a session also waits on this: the client leaves some
/// of its promises pending for ever once the connection is gone (an acknowledgement queued just
/// as its channel dies is dropped unanswered), and the failure must end the session at once,
/// not after [`BROKER_TIMEOUT`](super::BROKER_TIMEOUT).
pub(super) struct Lost {
    token: CancellationToken,
    error: Arc<OnceLock<lapin::Error>>,
    watcher: JoinHandle<()>,
}

impl Lost {
    /// Starts watching `connection`'s events; the watch ends when this is dropped.
    fn watch(connection: &Connection) -> Self {
        let token = CancellationToken::new();
        let error = Arc::new(OnceLock::new());
        let mut events = Box::pin(connection.events_listener());
        let watcher = tokio::spawn({
            let token = token.clone();
            let error = Arc::clone(&error);
            async move {
                while let Some(event) = events.next().await {
                    if let Event::Error(err) = event {
                        warn!(error = %err, "the RabbitMQ connection failed");
                        let _ = error.set(err);
                        token.cancel();
                        return;
                    }
                }
            }
        });
        Self {
            token,
            error,
            watcher,
        }
    }

    /// Resolves once the connection has failed, with the client's error; cancel-safe.
    pub(super) async fn wait(&self) -> SessionError {
        self.token.cancelled().await;
        match self.error.get() {
            Some(err) => SessionError::Amqp {
                action: "keeping the connection",
                source: err.clone(),
            },
            None => SessionError::ChannelClosed,
        }
    }

    /// Runs `work` unless the connection fails first.
    pub(super) async fn unless<T>(
        &self,
        work: impl Future<Output = Result<T, SessionError>>,
    ) -> Result<T, SessionError> {
        tokio::select! {
            result = work => result,
            err = self.wait() => Err(err),
        }
    }
}

impl Drop for Lost {
    fn drop(&mut self) {
        self.watcher.abort();
    }
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
        let lost = Lost::watch(&connection);
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
                lost,
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
            lost,
            channel,
            publisher,
            consumer,
        } = self;
        let consumer_tag = consumer.tag();
        let (mut deliveries, reader) = read_deliveries(context, &publisher.channel, consumer);
        let refused = tokio::spawn(dead_letter_refused(Arc::clone(context), publisher.clone()));
        let result = run(
            context,
            shutdown,
            &lost,
            &channel,
            &publisher,
            &consumer_tag,
            &mut deliveries,
        )
        .await;
        // Deliveries it still holds return to the queue with the channel.
        reader.abort();
        refused.abort();
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
    lost: &Lost,
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
        lost,
        budget: &budget,
        batch_size,
    };
    // With the inbox a batch is staged with one insert that conflicts with no other: two are
    // written at once (acknowledged in order), so that one's commit and acknowledgement overlap
    // the other's.
    let mut in_flight = InFlight::new(if context.settings.inbox.enabled { 2 } else { 1 });
    loop {
        match gatherer.gather(&mut in_flight, shutdown).await {
            Gathered::Ready(batch) => {
                in_flight.wait_for_room_unless(lost).await?;
                let after = in_flight.chain();
                let task = settle(
                    Arc::clone(context),
                    publisher.clone(),
                    batch,
                    after,
                    shutdown.clone(),
                );
                in_flight.handles.push_back(tokio::spawn(task));
            }
            Gathered::Stopping(batch) => {
                // Stop the flow first; deliveries already pushed but not gathered go back to
                // the queue when the channel closes.
                let _ = timeout(
                    CLOSE_TIMEOUT,
                    channel.basic_cancel(consumer_tag.clone(), BasicCancelOptions::default()),
                )
                .await;
                in_flight.wait_all_unless(lost).await?;
                info!(
                    deliveries = batch.deliveries.len(),
                    "stopping: settling the batch in hand"
                );
                if !batch.deliveries.is_empty() {
                    lost.unless(settle(
                        Arc::clone(context),
                        publisher.clone(),
                        batch,
                        Order::first(),
                        CancellationToken::new(),
                    ))
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

/// Dead-letters the staged events the applier refused, when it says so, and once at the start
/// of the session for those an earlier session left (`inbox.enabled`); ends with the session.
async fn dead_letter_refused(context: Arc<Context>, publisher: DeadLetterChannel) {
    let mut pending = context.settings.inbox.enabled;
    loop {
        if pending {
            match publish_refused(&context, &publisher).await {
                Ok(0) => {}
                Ok(published) => info!(
                    published,
                    "dead-lettered staged events the database refused"
                ),
                Err(err) => {
                    warn!(
                        error = %error_chain(&err),
                        "dead-lettering refused staged events failed; trying again"
                    );
                    tokio::time::sleep(Duration::from_millis(context.settings.inbox.poll_ms)).await;
                    continue;
                }
            }
        }
        context.inbox.refused_notified().await;
        pending = true;
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

/// The batches being written (at most `limit`, in delivery order), and how the first of them
/// to fail ended.
pub(super) struct InFlight {
    limit: usize,
    handles: VecDeque<JoinHandle<Result<(), SessionError>>>,
    result: Option<Result<(), SessionError>>,
    /// Resolves once the newest batch is acknowledged: the next one acknowledges after it.
    newest: Option<oneshot::Receiver<()>>,
}

impl InFlight {
    fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            handles: VecDeque::new(),
            result: None,
            newest: None,
        }
    }

    /// Whether no more batches may be written until one ends.
    pub(super) fn is_busy(&self) -> bool {
        self.handles.len() >= self.limit
    }

    /// Whether any batch is being written.
    pub(super) fn is_writing(&self) -> bool {
        !self.handles.is_empty()
    }

    pub(super) fn has_failed(&self) -> bool {
        matches!(self.result, Some(Err(_)))
    }

    /// Waits for the oldest batch to end and keeps its result (the first failure sticks);
    /// cancel-safe.
    pub(super) async fn finished(&mut self) {
        if let Some(handle) = self.handles.front_mut() {
            let result = handle.await.map_err(SessionError::Worker).and_then(|r| r);
            self.handles.pop_front();
            if !self.has_failed() {
                self.result = Some(result);
            }
        }
    }

    /// The order of the next batch: acknowledged once the newest one is.
    fn chain(&mut self) -> Order {
        let (done, next) = oneshot::channel();
        Order {
            after: self.newest.replace(next),
            done: Some(done),
        }
    }

    fn abort(&mut self) {
        for handle in self.handles.drain(..) {
            handle.abort();
        }
    }

    fn take_result(&mut self) -> Result<(), SessionError> {
        match self.result.take() {
            Some(Err(err)) => Err(err),
            _ => Ok(()),
        }
    }

    /// Waits until another batch may be written, unless the connection fails first: then no
    /// batch can be acknowledged any more, so they are aborted and their deliveries return to
    /// the queue.
    async fn wait_for_room_unless(&mut self, lost: &Lost) -> Result<(), SessionError> {
        self.wait_down_to_unless(self.limit - 1, lost).await
    }

    /// Waits for every batch to end, unless the connection fails first (as above).
    async fn wait_all_unless(&mut self, lost: &Lost) -> Result<(), SessionError> {
        self.wait_down_to_unless(0, lost).await
    }

    /// Waits until at most `most` batches are being written (or one has failed), unless the
    /// connection fails first (as above).
    async fn wait_down_to_unless(&mut self, most: usize, lost: &Lost) -> Result<(), SessionError> {
        let result = lost
            .unless(async {
                while self.handles.len() > most && !self.has_failed() {
                    self.finished().await;
                }
                self.take_result()
            })
            .await;
        if result.is_err() {
            self.abort();
        }
        result
    }
}

/// Where a batch stands among those written at once: it is acknowledged only after the one
/// before it (`multiple` covers every earlier delivery), then lets the next one go.
pub(super) struct Order {
    after: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl Order {
    /// A batch with none before it.
    pub(super) fn first() -> Self {
        Self {
            after: None,
            done: None,
        }
    }

    /// Waits for the batch before to be acknowledged.
    ///
    /// # Errors
    ///
    /// [`SessionError::ChannelClosed`] when it ended without being acknowledged: the session is
    /// ending, and this batch must not be acknowledged either.
    pub(super) async fn wait_turn(&mut self) -> Result<(), SessionError> {
        match self.after.take() {
            Some(after) => after.await.map_err(|_| SessionError::ChannelClosed),
            None => Ok(()),
        }
    }

    /// This batch is acknowledged: the next one may be.
    pub(super) fn acknowledged(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use metrics_test_support::TestBroker;
    use metrics_test_support::proxy::Proxy;

    use super::*;

    /// A connection cut under the client ends every wait of the session within moments,
    /// including one that the client itself would never resolve.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_connection_ends_the_waits_of_the_session() {
        let broker = TestBroker::new().await;
        let mut url = url::Url::parse(broker.url()).unwrap();
        let upstream = url.socket_addrs(|| Some(5672)).unwrap()[0];
        let proxy = Proxy::start(upstream).await;
        url.set_port(Some(proxy.port)).unwrap();
        let connection = Connection::connect(url.as_str(), ConnectionProperties::default())
            .await
            .unwrap();
        let lost = Lost::watch(&connection);
        assert!(
            timeout(Duration::from_millis(200), lost.wait())
                .await
                .is_err(),
            "a working connection is not reported lost"
        );

        assert_eq!(proxy.cut(), 1);
        let ended = timeout(
            Duration::from_secs(5),
            lost.unless(pending::<Result<(), SessionError>>()),
        )
        .await
        .expect("the wait ends once the connection is cut");
        assert!(
            matches!(
                ended,
                Err(SessionError::Amqp {
                    action: "keeping the connection",
                    ..
                })
            ),
            "{ended:?}"
        );
        // Every later wait ends at once too.
        assert!(
            timeout(Duration::from_millis(100), lost.wait())
                .await
                .is_ok()
        );
        broker.cleanup().await;
    }
}
