//! Settings: embedded defaults (`config/default.toml`) < optional file < `METRICS_*` environment,
//! loaded by `metrics_service::config`.
//!
//! Only this module reads the environment. Every value is validated while it is deserialised
//! (see the `deserialize_with` of each field), so a bad setting fails at start naming its key;
//! [`Settings::validate`] adds the checks that compare two keys.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use metrics_aggregator::{ConnectionLimits, TableName};
use metrics_events::Limits;
use metrics_service::backoff::Backoff;
use metrics_service::config::{
    Layers, at_least, parse_address, parses_as, process_env, socket_address_text,
};
use secrecy::{ExposeSecret, SecretString};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

pub use metrics_service::config::{ConfigError, redacted_url};
pub use metrics_service::telemetry::{LogFormat, LogSettings};

/// The embedded defaults: every key, commented.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Everything the service reads from its configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// RabbitMQ.
    pub amqp: AmqpSettings,
    /// Batching of deliveries into transactions.
    pub batch: BatchSettings,
    /// Staging events in the inbox and applying them later.
    pub inbox: InboxSettings,
    /// Size limits of the event contract.
    pub limits: LimitsSettings,
    /// Waits between attempts after a failure.
    pub backoff: BackoffSettings,
    /// Draining on SIGTERM / SIGINT.
    pub shutdown: ShutdownSettings,
    /// The admin listener.
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// Connection URL; may hold a password.
    #[serde(deserialize_with = "postgres_url")]
    pub url: SecretString,
    /// Most open connections.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub pool_size: u32,
    /// Wait for a connection, in milliseconds.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub connect_timeout_ms: u64,
    /// Longest statement, lock wait or idle transaction, in milliseconds.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub statement_timeout_ms: u64,
    /// Longest silence of the network (`tcp_user_timeout`, keepalives), in milliseconds.
    #[serde(deserialize_with = "at_least::<_, _, 1000>")]
    pub tcp_timeout_ms: u64,
    /// The metrics table events are counted into.
    #[serde(deserialize_with = "parses_as::<_, TableName>")]
    pub table: String,
}

impl DatabaseSettings {
    /// The limits every connection gets.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            tcp_timeout: Duration::from_millis(self.tcp_timeout_ms),
        }
    }
}

/// `[amqp]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    /// Connection URL; may hold a password.
    #[serde(deserialize_with = "amqp_url")]
    pub url: SecretString,
    /// The topic exchange producers publish to.
    #[serde(deserialize_with = "amqp_name")]
    pub exchange: String,
    /// The quorum queue consumed.
    #[serde(deserialize_with = "amqp_name")]
    pub queue: String,
    /// `basic.qos` prefetch count.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub prefetch: u16,
    /// `x-delivery-limit` of the queue.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub delivery_limit: u32,
    /// Wait for the broker to accept a connection, in milliseconds.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub connect_timeout_ms: u64,
    /// The heartbeat asked for, in seconds, when the URL names none.
    pub heartbeat_s: u16,
}

/// `[batch]`.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchSettings {
    /// Most deliveries per transaction.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub size: usize,
    /// Most events per transaction.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub max_events: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub wait_ms: u64,
    /// Most bytes of message bodies held at once; caps the prefetch (`consumer::prefetch`).
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub memory_bytes: usize,
}

/// `[inbox]`.
#[derive(Debug, Clone, Deserialize)]
pub struct InboxSettings {
    /// Whether batches are staged in the inbox and acknowledged before they are applied.
    pub enabled: bool,
    /// A batch of at least this many events is applied at once, not staged.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub direct_events: usize,
    /// Most events applied from the inbox in one transaction.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub apply_events: usize,
    /// Most bytes of staged events read into one transaction (past the first).
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub apply_bytes: usize,
    /// How long the applier waits, once its consumer has staged a batch, for more to share the
    /// transaction, in milliseconds.
    pub wait_ms: u64,
    /// How often the applier looks for staged events nobody told it of, in milliseconds.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub poll_ms: u64,
}

/// `[limits]`: see [`Limits`].
#[derive(Debug, Clone, Deserialize)]
pub struct LimitsSettings {
    /// Largest message body in bytes.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub max_body_bytes: usize,
    /// Most events in a batch message.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub max_batch_events: usize,
    /// Longest id-like field in characters.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub max_id_chars: usize,
    /// Longest `source` in characters.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub max_source_chars: usize,
}

/// `[backoff]`.
#[derive(Debug, Clone, Deserialize)]
pub struct BackoffSettings {
    /// First wait after a failure, in milliseconds.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub min_ms: u64,
    /// Longest wait, in milliseconds; at least `min_ms`.
    pub max_ms: u64,
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    /// Most time spent draining, in milliseconds.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub timeout_ms: u64,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    /// Listen address, `host:port`; port 0 picks a free one.
    #[serde(deserialize_with = "socket_address_text")]
    pub listen: String,
    /// How long a batch may wait to be settled before `/readyz` reports not ready, in
    /// milliseconds.
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pub stall_timeout_ms: u64,
}

impl Settings {
    /// Loads the defaults, then `file` when given, then the process environment.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the key when a layer cannot be read or a value is invalid.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_sources(file, None)
    }

    /// Like [`Settings::load`], with `env` (variable name to value) standing in for the process
    /// environment when given.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the key when a layer cannot be read or a value is invalid.
    pub fn from_sources(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let settings: Settings = Layers {
            defaults: DEFAULTS,
            file,
            aliases: &[],
        }
        .load(&env.unwrap_or_else(process_env))?;
        settings.validate()?;
        Ok(settings)
    }

    /// The checks that compare keys, and those of values tests set in code.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.batch.size > usize::from(self.amqp.prefetch) {
            return Err(ConfigError::invalid(
                "batch.size",
                "must not exceed `amqp.prefetch`, or a batch could never fill",
            ));
        }
        if self.batch.memory_bytes < self.limits.max_body_bytes {
            return Err(ConfigError::invalid(
                "batch.memory_bytes",
                "must be at least `limits.max_body_bytes`, or a largest message would not fit",
            ));
        }
        if self.backoff.max_ms < self.backoff.min_ms {
            return Err(ConfigError::invalid(
                "backoff.max_ms",
                "must be at least `backoff.min_ms`",
            ));
        }
        self.table_name()?;
        self.admin_listen()?;
        Ok(())
    }

    /// `database.table` as a table name.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when it is not a valid name.
    pub fn table_name(&self) -> Result<TableName, ConfigError> {
        self.database
            .table
            .parse()
            .map_err(|err| ConfigError::invalid("database.table", format!("{err}")))
    }

    /// `admin.listen` as a socket address.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when it is not `ip:port`.
    pub fn admin_listen(&self) -> Result<SocketAddr, ConfigError> {
        parse_address(&self.admin.listen)
            .map_err(|reason| ConfigError::invalid("admin.listen", reason))
    }

    /// The event contract's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.limits.max_body_bytes,
            max_batch_events: self.limits.max_batch_events,
            max_id_chars: self.limits.max_id_chars,
            max_source_chars: self.limits.max_source_chars,
        }
    }
}

impl AmqpSettings {
    /// The exchange dead letters go through: `<queue>.dlx`.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.queue)
    }

    /// The queue dead letters end in: `<queue>.dead`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }
}

impl BackoffSettings {
    /// The retry policy these settings describe: from `min_ms` doubling up to `max_ms`, with
    /// jitter, reset after `max_ms` of success (see `metrics_backoff`).
    pub fn policy(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.min_ms),
            Duration::from_millis(self.max_ms),
        )
    }
}

/// A `postgres://` or `postgresql://` URL.
fn postgres_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SecretString, D::Error> {
    let url = SecretString::deserialize(deserializer)?;
    let parsed = url::Url::parse(url.expose_secret())
        .map_err(|err| D::Error::custom(format!("is not a URL ({err})")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(D::Error::custom(
            "must start with `postgres://` or `postgresql://`",
        ));
    }
    Ok(url)
}

/// An `amqp://` or `amqps://` URL.
fn amqp_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SecretString, D::Error> {
    let url = SecretString::deserialize(deserializer)?;
    lapin::uri::AMQPUri::from_str(url.expose_secret()).map_err(|_| {
        D::Error::custom("is not an AMQP URL (`amqp://user:password@host:port/vhost`)")
    })?;
    Ok(url)
}

/// Exchange and queue names: non-empty, at most 250 bytes (`<queue>.dead` must still fit in an
/// AMQP short string), and not the `amq.` prefix the broker reserves (AMQP 0-9-1 reference,
/// `exchange.declare`).
fn amqp_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    if name.is_empty() {
        return Err(D::Error::custom("must not be empty"));
    }
    if name.len() > 250 {
        return Err(D::Error::custom("must be at most 250 bytes"));
    }
    if name.starts_with("amq.") {
        return Err(D::Error::custom(
            "must not start with `amq.` (reserved by the broker)",
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_load_and_validate() {
        let settings = Settings::from_sources(None, env(&[])).unwrap();
        assert_eq!(settings.amqp.exchange, "agentos.events");
        assert_eq!(settings.amqp.queue, "metrics.ingest");
        assert_eq!(settings.amqp.dead_letter_exchange(), "metrics.ingest.dlx");
        assert_eq!(settings.amqp.dead_letter_queue(), "metrics.ingest.dead");
        assert_eq!(settings.database.table, "agno_metrics");
        assert_eq!(settings.limits(), Limits::default());
        assert_eq!(settings.log.format, LogFormat::Text);
    }

    #[test]
    fn environment_overrides_defaults_with_double_underscores() {
        let settings = Settings::from_sources(
            None,
            env(&[
                ("METRICS_AMQP__QUEUE", "other.queue"),
                ("METRICS_AMQP__PREFETCH", "700"),
                ("METRICS_DATABASE__URL", "postgres://u:p@db:5432/m"),
                ("METRICS_ADMIN__LISTEN", "127.0.0.1:0"),
                ("METRICS_LOG__FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.amqp.queue, "other.queue");
        assert_eq!(settings.amqp.prefetch, 700);
        assert_eq!(
            settings.database.url.expose_secret(),
            "postgres://u:p@db:5432/m"
        );
        assert_eq!(settings.admin.listen, "127.0.0.1:0");
        assert_eq!(settings.log.format, LogFormat::Json);
    }

    #[test]
    fn strings_that_look_like_numbers_or_booleans_stay_as_written() {
        for written in ["007", "1e3", "true", "-0"] {
            let settings = Settings::from_sources(
                None,
                env(&[
                    ("METRICS_AMQP__EXCHANGE", written),
                    ("METRICS_AMQP__QUEUE", written),
                    ("METRICS_LOG__LEVEL", "info"),
                ]),
            )
            .unwrap();
            assert_eq!(settings.amqp.exchange, written);
            assert_eq!(settings.amqp.queue, written);
        }
        // Where a setting is a number, the string is parsed as one.
        let settings =
            Settings::from_sources(None, env(&[("METRICS_AMQP__PREFETCH", "0700")])).unwrap();
        assert_eq!(settings.amqp.prefetch, 700);
    }

    #[test]
    fn a_file_sits_between_defaults_and_environment() {
        let dir =
            std::env::temp_dir().join(format!("metrics-ingest-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ingest.toml");
        std::fs::write(
            &file,
            "[amqp]\nqueue = \"from.file\"\nexchange = \"file.exchange\"\n",
        )
        .unwrap();
        let settings =
            Settings::from_sources(Some(&file), env(&[("METRICS_AMQP__QUEUE", "from.env")]))
                .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(settings.amqp.queue, "from.env");
        assert_eq!(settings.amqp.exchange, "file.exchange");
    }

    #[test]
    fn invalid_values_name_their_key() {
        for (key, value, named) in [
            ("METRICS_AMQP__PREFETCH", "0", "amqp.prefetch"),
            ("METRICS_BATCH__SIZE", "5000", "batch.size"),
            ("METRICS_DATABASE__TABLE", "Bad-Name", "database.table"),
            ("METRICS_DATABASE__URL", "mysql://x", "database.url"),
            ("METRICS_AMQP__URL", "http://x", "amqp.url"),
            ("METRICS_AMQP__QUEUE", "amq.mine", "amqp.queue"),
            ("METRICS_ADMIN__LISTEN", "localhost", "admin.listen"),
            ("METRICS_BACKOFF__MAX_MS", "1", "backoff.max_ms"),
            ("METRICS_BATCH__MEMORY_BYTES", "1000", "batch.memory_bytes"),
        ] {
            let err = Settings::from_sources(None, env(&[(key, value)])).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key, .. } if *key == named),
                "{key}={value}: {err}"
            );
            assert!(err.to_string().contains(named), "{err}");
        }
    }

    #[test]
    fn undeserialisable_values_name_their_key() {
        let err =
            Settings::from_sources(None, env(&[("METRICS_AMQP__PREFETCH", "many")])).unwrap_err();
        let text = metrics_service::error_chain(&err);
        assert!(text.contains("amqp.prefetch"), "{text}");
        let err = Settings::from_sources(None, env(&[("METRICS_LOG__FORMAT", "xml")])).unwrap_err();
        let text = metrics_service::error_chain(&err);
        assert!(text.contains("log.format"), "{text}");
    }

    #[test]
    fn keys_of_the_query_service_are_ignored() {
        let settings = Settings::from_sources(
            None,
            env(&[
                ("METRICS_HTTP__LISTEN", "0.0.0.0:7777"),
                ("METRICS_DATABASE__TABLES", "agno_metrics"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.database.table, "agno_metrics");
    }

    #[test]
    fn backoff_waits_lie_between_the_settings() {
        let mut backoff = BackoffSettings {
            min_ms: 100,
            max_ms: 1000,
        }
        .policy();
        for _ in 0..30 {
            let wait = backoff.next_wait();
            assert!(wait >= Duration::from_millis(100) && wait <= Duration::from_millis(1000));
        }
        assert_eq!(backoff.sustained(), Duration::from_millis(1000));
    }
}
