//! Every Prometheus metric of the service, each defined once here, and the log targets the
//! service silences (the subscriber itself is `metrics_service::telemetry`'s).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use metrics_service::telemetry::{FilterError, LogSettings};
use tracing_subscriber::fmt::MakeWriter;

/// Log targets silenced whatever the filter: tracing-actix-web also emits an event for every
/// error response (its default `emit_event_on_error` feature, which the workspace dependency
/// keeps on): a warning per client error, and a second log line per 500. `ApiError` logs each
/// 500 once itself.
const SILENCED: [&str; 1] = ["tracing_actix_web::middleware=off"];

/// Installs the global subscriber (`metrics_service::telemetry::init`) with the targets this
/// service silences. Tests pass `with_test_writer`'s writer; a second call leaves the first
/// subscriber.
///
/// # Errors
///
/// When `RUST_LOG` or `settings.level` is not a valid filter.
pub fn init<W>(settings: &LogSettings, writer: W) -> Result<(), FilterError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    metrics_service::telemetry::init(settings, writer, &SILENCED)
}

/// The labels of a finished API request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route pattern (`/metrics`), or `unmatched`.
    pub route: String,
    /// The response status code.
    pub status: u16,
}

/// The labels of a database pool's connections.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The configured database id.
    pub database: String,
    /// `idle` or `in_use`.
    pub state: &'static str,
}

/// The labels of a database pool.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatabaseLabels {
    /// The configured database id.
    pub database: String,
}

/// The labels of a response cache lookup.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit` or `miss`.
    pub outcome: &'static str,
}

/// The service's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    pool_connections: Family<PoolLabels, Gauge>,
    pool_size: Family<DatabaseLabels, Gauge>,
    cache_lookups: Family<CacheLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    // 0.25 ms to about 4 s: a cached page is sub-millisecond, a timeout is seconds.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RequestLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        let pool_size = Family::<DatabaseLabels, Gauge>::default();
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "metrics_query_requests",
            "API requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "metrics_query_request_duration_seconds",
            "Time to answer an API request, by route and status",
            duration.clone(),
        );
        registry.register(
            "metrics_query_pool_connections",
            "Open database connections, by database and state (idle, in_use)",
            pool_connections.clone(),
        );
        registry.register(
            "metrics_query_pool_max_connections",
            "Most connections a database's pool holds",
            pool_size.clone(),
        );
        registry.register(
            "metrics_query_cache_lookups",
            "Response cache lookups of GET /metrics, by outcome (hit, miss)",
            cache_lookups.clone(),
        );
        Self {
            registry,
            cache_lookups,
            requests,
            duration,
            pool_connections,
            pool_size,
        }
    }
}

impl Metrics {
    /// Counts a finished request.
    pub fn observe_request(&self, route: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels {
            route: route.to_owned(),
            status,
        };
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }

    /// Counts a response cache lookup.
    pub fn observe_cache(&self, outcome: &'static str) {
        self.cache_lookups
            .get_or_create(&CacheLabels { outcome })
            .inc();
    }

    /// Records a pool's state as of now.
    pub fn observe_pool(&self, database: &str, connections: u32, idle: u32, max: u32) {
        let labels = |state| PoolLabels {
            database: database.to_owned(),
            state,
        };
        self.pool_connections
            .get_or_create(&labels("idle"))
            .set(i64::from(idle));
        self.pool_connections
            .get_or_create(&labels("in_use"))
            .set(i64::from(connections.saturating_sub(idle)));
        self.pool_size
            .get_or_create(&DatabaseLabels {
                database: database.to_owned(),
            })
            .set(i64::from(max));
    }

    /// The Prometheus text exposition of every metric.
    ///
    /// # Errors
    ///
    /// Only a formatting error of the encoder.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
