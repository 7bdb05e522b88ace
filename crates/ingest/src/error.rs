//! The errors of the ingest service: configuration (the skeleton's), and why a session with the
//! broker ended.

pub use metrics_service::config::ConfigError;

/// Why a session with the broker ended; the consumer reconnects after any of them.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The broker refused or dropped an operation, or the connection failed.
    #[error("{action} on RabbitMQ")]
    Amqp {
        /// What was being done.
        action: &'static str,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker did not answer in time.
    #[error("{action} on RabbitMQ timed out")]
    Timeout {
        /// What was being done.
        action: &'static str,
    },
    /// The broker refused (nacked) a dead letter, so the original cannot be acknowledged.
    #[error("RabbitMQ refused a dead letter")]
    DeadLetterRefused,
    /// No queue took a dead letter (the dead-letter queue or its binding is gone); the
    /// original stays unacknowledged, and the next session declares the topology again.
    #[error("RabbitMQ returned a dead letter as unroutable")]
    DeadLetterUnroutable,
    /// The broker refused or returned the copy of a message moved to the tail of the queue; the
    /// original stays unacknowledged.
    #[error("RabbitMQ refused a message moved to the tail of the queue")]
    RequeueRefused,
    /// `amqp.url` does not parse (validated at start, so not expected).
    #[error("the AMQP URL does not parse")]
    InvalidUrl,
    /// The consumer was cancelled by the broker (queue deleted, node shutting down).
    #[error("RabbitMQ cancelled the consumer")]
    ConsumerCancelled,
    /// The channel closed before the batch could be acknowledged.
    #[error("the channel closed before the batch was acknowledged")]
    ChannelClosed,
    /// Shutdown came while the database was failing; the batch stays unacknowledged.
    #[error("shutting down before the batch could be written")]
    Abandoned,
    /// The inbox could not be read or updated while dead-lettering refused events.
    #[error("reading the inbox's refused events")]
    Database(#[source] crate::database::DatabaseError),
    /// A blocking task panicked or was aborted.
    #[error("a database worker stopped")]
    Worker(#[source] tokio::task::JoinError),
}

impl SessionError {
    /// Wraps a client error with what was being done.
    pub(crate) fn amqp(action: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| SessionError::Amqp { action, source }
    }
}
