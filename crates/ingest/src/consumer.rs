//! The delivery loop: from the queue to committed rows, one explicit outcome per delivery.
//!
//! Invariants:
//!
//! - **Ack only after commit.** A delivery is acknowledged only once its events are committed
//!   (or it was dead-lettered with a broker confirm). Anything not acknowledged when a channel
//!   dies goes back to the queue and is redelivered; `apply` is idempotent, so it counts once.
//! - **One batch written at a time, the next one gathered meanwhile.** Deliveries arrive in
//!   delivery-tag order and batches are settled strictly in order, so when a batch is settled
//!   every earlier tag is settled too and one `basic.ack` with `multiple` covers the whole batch
//!   (AMQP 0-9-1 reference, `basic.ack`). Gathering the next batch while the previous one is in
//!   the database overlaps broker and database work instead of adding them up.
//! - **Bad input never blocks the queue.** An undecodable or invalid message (or batch element)
//!   is dead-lettered with the reason and acknowledged; the valid events of a batch still count.
//! - **Transient database failures never lose or spin.** The batch stays unacknowledged, the
//!   pool is reset, and `apply` is retried after an exponential backoff; meanwhile at most
//!   `prefetch` deliveries wait in memory.
//! - **Reconnect with backoff.** Any broker failure ends the session: the connection is dropped
//!   (the broker requeues what was unacknowledged) and a new session connects, redeclares the
//!   topology and consumes again.

use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use metrics_aggregator::EventOutcome;
use metrics_backoff::Backoff;
use metrics_events::{Decoded, Event, Message, MessageError, decode_message};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use crate::admin::Health;
use crate::config::{Settings, redacted_url};
use crate::database::{Database, DatabaseError};
use crate::error::SessionError;
use crate::requeue;
use crate::telemetry::{Metrics, Outcome};
use crate::topology::Topology;

/// The header carrying the reason of a dead letter (`events.md`).
pub const ERROR_HEADER: &str = "x-metrics-error";

/// The content type of a dead-lettered batch element: one CloudEvent (`events.md`).
const EVENT_CONTENT_TYPE: &str = "application/cloudevents+json";

/// How long closing a channel or connection may take before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an acknowledgement or a publisher confirm may take: a broker that does not answer
/// in this time is treated as gone, and the session reconnects.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// AMQP `delivery-mode` of a persistent message.
const PERSISTENT: u8 = 2;

/// What the consumer shares with the rest of the service.
#[derive(Debug)]
pub struct Context {
    /// The settings the service started with.
    pub settings: Settings,
    /// The broker entities.
    pub topology: Topology,
    /// PostgreSQL.
    pub database: Arc<Database>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Readiness.
    pub health: Arc<Health>,
    /// The waits between attempts to write to PostgreSQL, shared by every batch so that the
    /// escalation survives from one batch to the next until the database has worked for a while.
    pub database_backoff: Mutex<Backoff>,
}

impl Context {
    fn database_backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.database_backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Consumes until `shutdown` is cancelled, reconnecting with backoff after every failure. On
/// shutdown it stops consuming, settles the batch in hand and closes channel and connection.
pub async fn run(context: Arc<Context>, shutdown: CancellationToken) {
    let mut backoff = context.settings.backoff.policy();
    let mut sessions: u64 = 0;
    while !shutdown.is_cancelled() {
        let result = session(&context, &shutdown, &mut backoff, sessions).await;
        sessions += 1;
        context.health.set_channel(None);
        // The unsettled batch went back to the queue with the connection.
        context.health.batch_settled();
        context.metrics.set_ready(false);
        match result {
            Ok(()) => break,
            Err(_) if shutdown.is_cancelled() => break,
            Err(err) => {
                let delay = backoff.next_wait();
                warn!(
                    error = %error_chain(&err),
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "the RabbitMQ session ended; reconnecting"
                );
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = sleep(delay) => {}
                }
            }
        }
    }
    info!("consumer stopped");
}

/// One connection: connect, declare, consume until shutdown or failure, close.
async fn session(
    context: &Arc<Context>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
    sessions: u64,
) -> Result<(), SessionError> {
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
    let connection = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        connected = timeout(Duration::from_millis(amqp.connect_timeout_ms), connect) => connected
            .map_err(|_| SessionError::Timeout { action: "connecting" })?
            .map_err(SessionError::amqp("connecting"))?,
    };
    let result = consume_on(context, shutdown, backoff, sessions, &connection).await;
    context.health.set_channel(None);
    let _ = timeout(
        CLOSE_TIMEOUT,
        connection.close(200, ShortString::from("metrics-ingest stopping")),
    )
    .await;
    result
}

async fn consume_on(
    context: &Arc<Context>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
    sessions: u64,
    connection: &Connection,
) -> Result<(), SessionError> {
    let amqp = &context.settings.amqp;
    // Every step is bounded: a connection that dies mid-setup must not leave a promise pending.
    let (channel, publisher, consumer) = timeout(
        Duration::from_millis(amqp.connect_timeout_ms),
        open_channels(context, connection),
    )
    .await
    .map_err(|_| SessionError::Timeout {
        action: "opening the channels",
    })??;

    if sessions > 0 {
        context.metrics.reconnected("amqp");
    }
    backoff.succeeded();
    context.health.set_channel(Some(channel.clone()));
    context.metrics.set_ready(true);
    info!(
        amqp.url = %redacted_url(&amqp.url),
        messaging.destination.name = %context.topology.queue,
        prefetch = amqp.prefetch,
        "consuming"
    );

    let publisher = DeadLetterChannel {
        channel: publisher,
        frame_max: connection.configuration().frame_max(),
    };
    let consumer_tag = consumer.tag();
    let (mut deliveries, reader) = read_deliveries(context, &publisher, consumer);
    let result = consume(
        context,
        shutdown,
        &channel,
        &publisher,
        &consumer_tag,
        &mut deliveries,
    )
    .await;
    reader.abort();
    let _ = timeout(
        CLOSE_TIMEOUT,
        channel.close(200, ShortString::from("metrics-ingest stopping")),
    )
    .await;
    result
}

/// Opens the consuming channel (topology declared, prefetch set, consumer started) and the
/// dead-letter channel.
async fn open_channels(
    context: &Context,
    connection: &Connection,
) -> Result<(Channel, Channel, Consumer), SessionError> {
    let amqp = &context.settings.amqp;
    let channel = connection
        .create_channel()
        .await
        .map_err(SessionError::amqp("opening a channel"))?;
    context.topology.declare(&channel).await?;
    channel
        .basic_qos(amqp.prefetch, BasicQosOptions::default())
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

/// The deliveries of the session, as [`read_deliveries`] passes them on.
type Deliveries = mpsc::Receiver<Result<lapin::message::Delivery, SessionError>>;

/// Reads the consumer in a task of its own, so that every delivery is looked at as soon as it
/// arrives, even while the batches wait for the database, and passes the deliveries on; those
/// redelivered up to half the delivery limit are moved to the tail of the queue instead
/// ([`requeue`]): otherwise a crash loop that kills the service while it holds them would take
/// their count past the limit and the broker would dead-letter them, valid or not. The channel
/// holds at most `amqp.prefetch` deliveries, which the broker never exceeds anyway. The task
/// ends with the consumer, at the first error, or when aborted with the session.
fn read_deliveries(
    context: &Arc<Context>,
    publisher: &DeadLetterChannel,
    consumer: Consumer,
) -> (Deliveries, JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(usize::from(context.settings.amqp.prefetch).max(1));
    let context = Arc::clone(context);
    let channel = publisher.channel.clone();
    let limit = context.topology.delivery_limit;
    let reader = tokio::spawn(async move {
        // Whatever has arrived, at once: the deliveries due for a move go to the tail together
        // (confirmed and acknowledged) before the others of the chunk are passed on, so that no
        // batch's `multiple` acknowledgement covers one of them first.
        let mut chunks = consumer.ready_chunks(usize::from(context.settings.amqp.prefetch));
        while let Some(chunk) = chunks.next().await {
            let mut due = Vec::new();
            let mut passed = Vec::with_capacity(chunk.len());
            for next in chunk {
                match next {
                    Ok(delivery) => {
                        let count = requeue::delivery_count(&delivery.properties);
                        if requeue::is_due(count, limit) {
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
                        .map(|delivery| requeue::delivery_count(&delivery.properties))
                        .max(),
                    "redelivered too often: moving the messages to the tail of the queue"
                );
                let queue = context.topology.queue.as_str();
                if let Err(err) = requeue::requeue(&channel, queue, &due, BROKER_TIMEOUT).await {
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

/// How gathering a batch ended, other than with a full or timed-out batch.
enum End {
    /// Shutdown was requested.
    Shutdown,
    /// The channel or the consumer went away.
    Closed(SessionError),
}

/// The channel dead letters are published on, in confirm mode, and the connection's frame size,
/// which their headers must fit.
#[derive(Clone)]
struct DeadLetterChannel {
    channel: Channel,
    frame_max: u32,
}

async fn consume(
    context: &Arc<Context>,
    shutdown: &CancellationToken,
    channel: &Channel,
    publisher: &DeadLetterChannel,
    consumer_tag: &ShortString,
    deliveries: &mut Deliveries,
) -> Result<(), SessionError> {
    let mut in_flight = InFlight::default();
    loop {
        let (batch, end) = gather(context, deliveries, &mut in_flight, shutdown).await;
        if let Some(End::Shutdown) = end {
            // Stop the flow first; deliveries already pushed but not gathered go back to the
            // queue when the channel closes.
            let _ = timeout(
                CLOSE_TIMEOUT,
                channel.basic_cancel(consumer_tag.clone(), BasicCancelOptions::default()),
            )
            .await;
        }
        match end {
            None => {
                in_flight.wait().await?;
                let task = process(
                    Arc::clone(context),
                    publisher.clone(),
                    batch,
                    shutdown.clone(),
                );
                in_flight.handle = Some(tokio::spawn(task));
            }
            Some(End::Shutdown) => {
                in_flight.wait().await?;
                info!(
                    deliveries = batch.deliveries.len(),
                    "stopping: settling the batch in hand"
                );
                if !batch.deliveries.is_empty() {
                    process(
                        Arc::clone(context),
                        publisher.clone(),
                        batch,
                        CancellationToken::new(),
                    )
                    .await?;
                }
                return Ok(());
            }
            Some(End::Closed(err)) => {
                // The connection is gone, so the batch being written can no longer be
                // acknowledged (and an acknowledgement on a dead connection may never resolve):
                // stop waiting for it. Its deliveries return to the queue; if its transaction
                // commits anyway, the redelivery counts as a duplicate.
                in_flight.abort();
                return Err(err);
            }
        }
    }
}

/// The batch being written, if any, and how it ended once it has.
#[derive(Default)]
struct InFlight {
    handle: Option<JoinHandle<Result<(), SessionError>>>,
    result: Option<Result<(), SessionError>>,
}

impl InFlight {
    fn is_busy(&self) -> bool {
        self.handle.is_some()
    }

    fn has_failed(&self) -> bool {
        matches!(self.result, Some(Err(_)))
    }

    /// Waits for the batch to end and keeps its result; cancel-safe.
    async fn finished(&mut self) {
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

/// A delivery and what its body decoded to.
struct Pending {
    delivery: lapin::message::Delivery,
    decoded: Result<Message, MessageError>,
}

#[derive(Default)]
struct Batch {
    deliveries: Vec<Pending>,
    events: usize,
}

/// Gathers deliveries until the batch is full, or its wait has passed and the previous batch is
/// written; decodes each as it arrives.
async fn gather(
    context: &Context,
    deliveries: &mut Deliveries,
    in_flight: &mut InFlight,
    shutdown: &CancellationToken,
) -> (Batch, Option<End>) {
    let settings = &context.settings;
    let wait = Duration::from_millis(settings.batch.wait_ms);
    let limits = settings.limits();
    let mut batch = Batch::default();
    let mut deadline: Option<Instant> = None;
    loop {
        if batch.deliveries.len() >= settings.batch.size
            || batch.events >= settings.batch.max_events
            || in_flight.has_failed()
        {
            return (batch, None);
        }
        let expired = deadline.is_some_and(|deadline| Instant::now() >= deadline);
        if expired && !in_flight.is_busy() {
            return (batch, None);
        }
        let busy = in_flight.is_busy();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return (batch, Some(End::Shutdown)),
            () = in_flight.finished(), if busy => {}
            next = deliveries.recv() => match next {
                Some(Ok(delivery)) => {
                    deadline.get_or_insert_with(|| Instant::now() + wait);
                    let span = debug_span!(
                        "delivery",
                        messaging.system = "rabbitmq",
                        messaging.destination.name = %context.topology.queue,
                        messaging.rabbitmq.delivery_tag = delivery.delivery_tag,
                        event.id = tracing::field::Empty,
                    )
                    .entered();
                    let decoded = decode_message(&delivery.data, &limits);
                    if let Ok(Message { is_batch: false, events, .. }) = &decoded
                        && let Some(Ok(event)) = events.first()
                    {
                        span.record("event.id", event.id());
                    }
                    debug!(bytes = delivery.data.len(), redelivered = delivery.redelivered, "received");
                    drop(span);
                    // The body stays with the delivery until the batch is settled: an event the
                    // database refuses for good is dead-lettered with its original bytes too.
                    batch.events += decoded.as_ref().map_or(1, |message| message.events.len());
                    batch.deliveries.push(Pending { delivery, decoded });
                }
                Some(Err(err)) => return (batch, Some(End::Closed(err))),
                None => return (batch, Some(End::Closed(SessionError::ConsumerCancelled))),
            },
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && !expired => {}
        }
    }
}

/// One message (or batch element) to dead-letter.
struct DeadLetter {
    /// Index of its delivery in the batch.
    delivery: usize,
    /// The bytes of the delivery's body it carries, and whether they are one element of a batch;
    /// `None` for the whole body.
    element: Option<Range<usize>>,
    /// The `x-metrics-error` header.
    reason: String,
    /// The event id, for the log.
    event_id: Option<String>,
}

/// Writes a batch, dead-letters its bad input, and acknowledges it all with one `multiple` ack.
async fn process(
    context: Arc<Context>,
    publisher: DeadLetterChannel,
    batch: Batch,
    shutdown: CancellationToken,
) -> Result<(), SessionError> {
    let span = info_span!(
        "batch",
        messaging.system = "rabbitmq",
        messaging.destination.name = %context.topology.queue,
        deliveries = batch.deliveries.len(),
    );
    process_batch(&context, &publisher, batch, &shutdown)
        .instrument(span)
        .await
}

async fn process_batch(
    context: &Arc<Context>,
    publisher: &DeadLetterChannel,
    batch: Batch,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let mut events: Vec<Event> = Vec::with_capacity(batch.events);
    let mut origins: Vec<(usize, Option<Range<usize>>)> = Vec::with_capacity(batch.events);
    let mut dead_letters = Vec::new();
    let mut ignored = 0;
    let mut deliveries = Vec::with_capacity(batch.deliveries.len());
    for (index, Pending { delivery, decoded }) in batch.deliveries.into_iter().enumerate() {
        deliveries.push(delivery);
        let message = match decoded {
            Ok(message) => message,
            Err(err) => {
                dead_letters.push(DeadLetter {
                    delivery: index,
                    element: None,
                    reason: error_chain(&err),
                    event_id: None,
                });
                continue;
            }
        };
        let Message {
            is_batch,
            events: elements,
            spans,
        } = message;
        for (element, span) in elements.into_iter().zip(spans) {
            let element_index = is_batch.then_some(span);
            match element {
                Ok(Decoded::Event(event)) => {
                    events.push(event);
                    origins.push((index, element_index));
                }
                Ok(Decoded::Ignored(ignored_event)) => {
                    debug!(
                        event.id = %ignored_event.id,
                        event.r#type = %ignored_event.event_type,
                        "ignoring an event of an unknown type"
                    );
                    ignored += 1;
                }
                Err(err) => dead_letters.push(DeadLetter {
                    delivery: index,
                    element: element_index,
                    event_id: err.event_id.clone(),
                    reason: err.to_string(),
                }),
            }
        }
    }
    let Some(last) = deliveries.last() else {
        return Ok(());
    };
    context.health.batch_started();

    let (applied, published) = tokio::join!(
        write(context, events, shutdown),
        publish_dead_letters(context, publisher, &deliveries, &dead_letters),
    );
    published?;
    let outcomes = applied?;

    // Events the database refused for good (not for a transient reason) are dead-lettered too.
    let mut refused = Vec::new();
    let (mut counted, mut duplicates) = (0, 0);
    for (outcome, (delivery, element)) in outcomes.into_iter().zip(origins) {
        match outcome {
            Ok(EventOutcome::Counted) => counted += 1,
            Ok(EventOutcome::Duplicate) => duplicates += 1,
            Err((event_id, reason)) => refused.push(DeadLetter {
                delivery,
                element,
                reason,
                event_id: Some(event_id),
            }),
        }
    }
    publish_dead_letters(context, publisher, &deliveries, &refused).await?;

    let acked = timeout(
        BROKER_TIMEOUT,
        last.acker.ack(BasicAckOptions { multiple: true }),
    )
    .await
    .map_err(|_| SessionError::Timeout {
        action: "acknowledging a batch",
    })?
    .map_err(SessionError::amqp("acknowledging a batch"))?;
    if !acked {
        return Err(SessionError::ChannelClosed);
    }
    context.health.batch_settled();
    let metrics = &context.metrics;
    metrics.count(Outcome::Applied, counted);
    metrics.count(Outcome::Duplicate, duplicates);
    metrics.count(Outcome::Ignored, ignored);
    metrics.count(Outcome::DeadLettered, dead_letters.len() + refused.len());
    debug!(
        counted,
        duplicates,
        ignored,
        dead_lettered = dead_letters.len() + refused.len(),
        "batch settled"
    );
    Ok(())
}

/// The outcome of one event: counted or duplicate, or refused for good with its id and reason.
type Written = Result<EventOutcome, (String, String)>;

/// Applies `events` in one transaction, retrying transient failures with backoff. When the
/// database refuses the batch for good, each event is applied alone so that only the one at
/// fault is refused.
///
/// # Errors
///
/// [`SessionError::Abandoned`] when shutdown comes while the database is failing: the batch
/// stays unacknowledged and goes back to the queue.
async fn write(
    context: &Arc<Context>,
    events: Vec<Event>,
    shutdown: &CancellationToken,
) -> Result<Vec<Written>, SessionError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let events: Arc<[Event]> = events.into();
    match write_with_retry(context, &events, shutdown).await? {
        Ok(outcomes) => Ok(outcomes.into_iter().map(Ok).collect()),
        Err(err) if events.len() == 1 => Ok(vec![Err(refusal(&events[0], &err))]),
        Err(_) => {
            let mut written = Vec::with_capacity(events.len());
            for event in events.iter() {
                let single: Arc<[Event]> = Arc::new([event.clone()]);
                written.push(match write_with_retry(context, &single, shutdown).await? {
                    Ok(outcomes) => {
                        Ok(outcomes.first().copied().unwrap_or(EventOutcome::Duplicate))
                    }
                    Err(err) => Err(refusal(event, &err)),
                });
            }
            Ok(written)
        }
    }
}

fn refusal(event: &Event, err: &DatabaseError) -> (String, String) {
    warn!(event.id = %event.id, error = %error_chain(err), "the database refused an event");
    (
        event.id.clone(),
        format!(
            "event `{}`: could not be counted: {}",
            event.id,
            error_chain(err)
        ),
    )
}

/// Applies `events`, retrying while the failure is transient. The outer error is shutdown; the
/// inner one a permanent refusal.
async fn write_with_retry(
    context: &Arc<Context>,
    events: &Arc<[Event]>,
    shutdown: &CancellationToken,
) -> Result<Result<Vec<EventOutcome>, DatabaseError>, SessionError> {
    let metrics = &context.metrics;
    let mut failures: u32 = 0;
    loop {
        let (result, elapsed) = context.database.apply(Arc::clone(events)).await;
        metrics.observe_apply(elapsed.as_secs_f64());
        match result {
            Ok(report) => {
                context.database_backoff().succeeded();
                metrics.observe_batch(events.len());
                if failures > 0 {
                    metrics.reconnected("database");
                    info!(attempts = failures + 1, "PostgreSQL is back; batch written");
                }
                return Ok(Ok(report.outcomes));
            }
            Err(err) if err.is_transient() => {
                metrics.count(Outcome::Retried, events.len());
                context.health.batch_failed(format!(
                    "writing a batch to PostgreSQL fails: {}",
                    error_chain(&err)
                ));
                // Logs once when the wait passes the stall timeout, probed or not.
                let _ = context.health.stalled();
                let delay = context.database_backoff().next_wait();
                failures = failures.saturating_add(1);
                // Logged once per outage, not once per attempt.
                if failures == 1 {
                    warn!(
                        error = %error_chain(&err),
                        events = events.len(),
                        "writing a batch failed; retrying with backoff, deliveries kept unacknowledged"
                    );
                } else {
                    debug!(error = %error_chain(&err), attempt = failures, "retrying a batch");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Err(SessionError::Abandoned),
                    () = sleep(delay) => {}
                }
            }
            Err(err) => return Ok(Err(err)),
        }
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
async fn publish_dead_letters(
    context: &Context,
    publisher: &DeadLetterChannel,
    deliveries: &[lapin::message::Delivery],
    dead_letters: &[DeadLetter],
) -> Result<(), SessionError> {
    if dead_letters.is_empty() {
        return Ok(());
    }
    let exchange = context.topology.dead_letter_exchange.as_str();
    let mut confirms = Vec::with_capacity(dead_letters.len());
    for dead in dead_letters {
        let Some(delivery) = deliveries.get(dead.delivery) else {
            continue;
        };
        let mut properties = delivery.properties.clone();
        // The original bytes, never a re-encoding (`events.md`): the whole body, or the batch
        // element's own JSON text.
        let body = match &dead.element {
            None => delivery.data.as_slice(),
            Some(span) => {
                properties = properties.with_content_type(EVENT_CONTENT_TYPE.into());
                delivery.data.get(span.clone()).unwrap_or_default()
            }
        };
        let headers = dead_letter_headers(
            properties.headers().as_ref(),
            &dead.reason,
            header_budget(publisher.frame_max),
        );
        properties = properties.with_headers(headers);
        if properties.delivery_mode().is_none() {
            properties = properties.with_delivery_mode(PERSISTENT);
        }
        warn!(
            event.id = dead.event_id.as_deref().unwrap_or(""),
            messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
            reason = %dead.reason,
            "dead-lettering bad input"
        );
        let confirm = publisher
            .channel
            .basic_publish(
                exchange.into(),
                delivery.routing_key.clone(),
                // `mandatory`: a dead letter that no queue takes comes back (`basic.return`)
                // and is an error, never a silent drop (AMQP 0-9-1 reference, `basic.publish`).
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
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

/// An error and its sources, joined by `: `.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
