//! Building and running the service: [`Application::build`] creates the pools and binds both
//! listeners (ports may be 0; the bound ones are reported), [`Application::run_until_stopped`]
//! serves until the shutdown token is cancelled, then drains.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, Error, web};
use anyhow::Context;
use metrics_aggregator::{ConnectionLimits, Pool, TableName};
use metrics_service::truncated;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tracing_actix_web::TracingLogger;

use crate::admin;
use crate::buffers::BodyBuffers;
use crate::cache::PageCache;
use crate::config::Settings;
use crate::error::{self, ApiError};
use crate::http1;
use crate::jwt::JwtVerifier;
use crate::routes;
use crate::telemetry::Metrics;

/// One configured database: its pool and the metrics tables it may be asked for.
#[derive(Debug)]
pub struct Database {
    /// The id clients name in `db_id`.
    pub id: String,
    /// Its connection pool (lazy: the service starts while the database is down); replaced
    /// after a read that got no answer in time ([`Database::give_up_on`]), with when it was.
    pool: Mutex<(Pool, Instant)>,
    /// How to build that pool again.
    connect: PoolSettings,
    /// Its URL, for the dedicated connection a refresh holds its lock on.
    pub url: SecretString,
    /// The metrics tables it holds; the first is the default one.
    pub tables: Vec<TableName>,
}

/// What a database's pool is built from.
#[derive(Debug, Clone)]
struct PoolSettings {
    url: SecretString,
    size: u32,
    connect_timeout: Duration,
}

impl PoolSettings {
    fn connect(&self) -> Result<Pool, metrics_aggregator::PoolError> {
        metrics_aggregator::connect(self.url.expose_secret(), self.size, self.connect_timeout)
    }
}

impl Database {
    /// The database's connection pool.
    pub fn pool(&self) -> Pool {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Replaces the pool after a read that got no answer within the request timeout, which
    /// PostgreSQL's own statement timeout (the same) would have ended: its connection is
    /// presumed frozen (packets dropped, a stalled peer), and the blocking thread waiting on it
    /// keeps it checked out for as long as TCP takes to give up, if ever. Later reads connect
    /// afresh instead of queueing for it; the old pool closes its connections as they come
    /// back. At most once per `interval`, so that a slow database is not answered with a storm
    /// of connections.
    pub fn give_up_on(&self, interval: Duration) {
        let mut current = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if current.1.elapsed() < interval {
            return;
        }
        match self.connect.connect() {
            Ok(fresh) => {
                tracing::warn!(
                    database = %self.id,
                    "a read got no answer in time: its connection is given up on and the pool \
                     replaced"
                );
                *current = (fresh, Instant::now());
            }
            Err(err) => tracing::error!(error = %err, "replacing the pool"),
        }
    }
    /// The configured table named `name`, or the default one when `None`. The name is only
    /// compared with configuration here; SQL sees it as a bound parameter.
    ///
    /// # Errors
    ///
    /// [`ApiError::NotFound`] for a table this database is not configured with.
    pub fn table(&self, name: Option<&str>) -> Result<&TableName, ApiError> {
        let found = match name {
            None => self.tables.first(),
            Some(name) => self.tables.iter().find(|table| table.as_str() == name),
        };
        found.ok_or_else(|| {
            ApiError::NotFound(format!(
                "Table '{}' not found in database '{}'",
                truncated(name.unwrap_or_default(), ECHO_CHARS),
                self.id
            ))
        })
    }
}

/// The longest client-supplied name an error detail quotes back whole; longer ones are cut
/// there and marked with `…`, so a huge parameter never makes a huge response.
const ECHO_CHARS: usize = 128;

/// Every configured database, the default one first.
#[derive(Debug)]
pub struct Databases(Vec<Database>);

impl Databases {
    /// The database with id `id`, or the default one when `None`, with its position.
    ///
    /// # Errors
    ///
    /// [`ApiError::NotFound`] for an id that is not configured.
    pub fn find(&self, id: Option<&str>) -> Result<(usize, &Database), ApiError> {
        let found = match id {
            None => self.0.first().map(|database| (0, database)),
            Some(id) => self
                .0
                .iter()
                .enumerate()
                .find(|(_, database)| database.id == id),
        };
        found.ok_or_else(|| {
            ApiError::NotFound(format!(
                "Database with id '{}' not found",
                truncated(id.unwrap_or_default(), ECHO_CHARS)
            ))
        })
    }

    /// Every database, the default one first.
    pub fn iter(&self) -> impl Iterator<Item = &Database> {
        self.0.iter()
    }
}

/// What the API's handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The databases.
    pub databases: Arc<Databases>,
    /// The bearer key; `None` (and no `jwt`) leaves the API open.
    pub security_key: Option<SecretString>,
    /// JWT verification, when configured.
    pub jwt: Option<JwtVerifier>,
    /// Longest a request waits for the database.
    pub request_timeout: Duration,
    /// The Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Rendered responses; `None` when `cache.entries` is 0.
    pub cache: Option<Arc<PageCache>>,
    /// Buffers for the bodies of cache misses, used again once sent.
    pub bodies: Arc<BodyBuffers>,
}

/// The largest body buffer kept for the next read: a whole read's body (up to 1,000 days of
/// about 900 bytes) fits.
const KEPT_BODY_BYTES: usize = 1 << 20;

/// The service with both listeners bound, not yet serving.
pub struct Application {
    port: u16,
    admin_port: u16,
    api: Server,
    admin: Server,
    draining: Arc<AtomicBool>,
}

impl Application {
    /// Creates the pools and binds the API and admin listeners. Call it inside the actix
    /// runtime.
    ///
    /// # Errors
    ///
    /// When a listener cannot be bound or a pool cannot be built.
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let databases = settings
            .databases
            .iter()
            .map(|database| {
                let limits = ConnectionLimits {
                    statement_timeout: settings.http.request_timeout,
                    tcp_timeout: settings.tcp_timeout,
                };
                let connect = PoolSettings {
                    url: SecretString::from(limits.apply_to(database.url.expose_secret())),
                    size: settings.pool_size,
                    connect_timeout: settings.http.request_timeout,
                };
                let pool = connect
                    .connect()
                    .with_context(|| format!("building the pool of database `{}`", database.id))?;
                Ok(Database {
                    id: database.id.clone(),
                    pool: Mutex::new((pool, Instant::now())),
                    connect,
                    url: database.url.clone(),
                    tables: database.tables.clone(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let databases = Arc::new(Databases(databases));
        let metrics = Arc::new(Metrics::default());
        let draining = Arc::new(AtomicBool::new(false));

        let jwt = settings
            .auth
            .jwt
            .as_ref()
            .map(JwtVerifier::new)
            .transpose()
            .context("loading the JWT verification keys")?;
        if settings.auth.security_key.is_none() && jwt.is_none() {
            tracing::warn!(
                "no security key (auth.security_key or OS_SECURITY_KEY) and no JWT verification \
                 key (auth.jwt, JWT_VERIFICATION_KEY or JWT_JWKS_FILE) is set: the API is open to \
                 anyone who can reach it"
            );
        }
        // Every database read runs on a worker's blocking threads and holds a pooled connection
        // while it does: more threads than connections would only queue for one, each with a
        // malloc arena of its own that keeps the memory of the bodies it built.
        let connections = usize::try_from(settings.pool_size)
            .unwrap_or(usize::MAX)
            .saturating_mul(settings.databases.len());
        let state = web::Data::new(AppState {
            databases: databases.clone(),
            security_key: settings.auth.security_key.clone(),
            jwt,
            request_timeout: settings.http.request_timeout,
            metrics: metrics.clone(),
            cache: (settings.cache.entries > 0).then(|| {
                Arc::new(
                    PageCache::new(settings.cache.entries, settings.cache.max_age)
                        .with_max_body_bytes(settings.cache.max_body_bytes)
                        .with_stamp_timeout(settings.http.request_timeout / 2),
                )
            }),
            // As many as there can be reads at once, each up to a whole read's largest body.
            bodies: BodyBuffers::new(connections, KEPT_BODY_BYTES),
        });

        let listener = TcpListener::bind(settings.http.listen)
            .with_context(|| format!("binding the API listener to {}", settings.http.listen))?;
        let port = listener.local_addr()?.port();
        let workers = match settings.http.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            workers => workers,
        };
        let server = http1::ServerSettings {
            workers,
            max_blocking_threads: connections.div_ceil(workers).max(2),
            shutdown_timeout: settings.http.shutdown_timeout,
            client_request_timeout: settings.http.header_timeout,
            keep_alive: settings.http.keep_alive,
            ..http1::ServerSettings::default()
        };
        // Not `HttpServer`: its connections cannot be wrapped, and the API listener's are, to
        // give actix-http's own 400, 408 and 431 the contract's body (`crate::http1`).
        let api = http1::server(listener, server, move || {
            App::new()
                .app_data(state.clone())
                .wrap(from_fn(error::contract_errors))
                .wrap(from_fn(record_request))
                .wrap(TracingLogger::default())
                .configure(|config| {
                    with_and_without_slash(config, "/metrics", |resource| {
                        resource
                            .route(web::get().to(routes::metrics::get_metrics))
                            .default_service(web::to(routes::method_not_allowed))
                    });
                    with_and_without_slash(config, "/metrics/refresh", |resource| {
                        resource
                            .route(web::post().to(routes::refresh::refresh_metrics))
                            .default_service(web::to(routes::post_only))
                    });
                    with_and_without_slash(config, "/metrics/refresh/status", |resource| {
                        resource
                            .route(web::get().to(routes::refresh::get_refresh_status))
                            .default_service(web::to(routes::method_not_allowed))
                    });
                })
                .service(
                    web::resource("/openapi.json")
                        .route(web::get().to(routes::openapi::get_openapi))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .configure(routes::dashboard::configure)
                .default_service(web::to(routes::not_found))
        })?;

        let admin_listener = TcpListener::bind(settings.admin.listen)
            .with_context(|| format!("binding the admin listener to {}", settings.admin.listen))?;
        let admin_port = admin_listener.local_addr()?.port();
        let admin = admin::server(
            admin_listener,
            admin::AdminState {
                databases,
                metrics,
                draining: draining.clone(),
                timeout: settings.http.request_timeout,
            },
        )?;
        tracing::info!(
            http.port = port,
            admin.port = admin_port,
            "metrics-query listening"
        );
        Ok(Self {
            port,
            admin_port,
            api,
            admin,
            draining,
        })
    }

    /// The bound port of the API.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bound port of the admin listener.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Serves until `shutdown` is cancelled, then reports not ready, stops accepting, lets
    /// in-flight requests finish (`http.shutdown_timeout_ms`) and stops the admin listener.
    ///
    /// # Errors
    ///
    /// When a server fails.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let api_handle = self.api.handle();
        let admin_handle = self.admin.handle();
        let api = actix_web::rt::spawn(self.api);
        let admin = actix_web::rt::spawn(self.admin);
        shutdown.cancelled().await;
        tracing::info!("shutting down: draining requests");
        self.draining.store(true, Ordering::Relaxed);
        api_handle.stop(true).await;
        admin_handle.stop(true).await;
        api.await.context("joining the API server")??;
        admin.await.context("joining the admin server")??;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Serves `path` and `path/` alike, as the resource `build` makes, registered once for each:
/// a resource of one static path is matched by comparing strings, where a resource of several
/// paths is matched by a set of regular expressions on every request.
fn with_and_without_slash(
    config: &mut web::ServiceConfig,
    path: &str,
    build: impl Fn(actix_web::Resource) -> actix_web::Resource,
) {
    config.service(build(web::resource(path)));
    config.service(build(web::resource(format!("{path}/"))));
}

/// Counts every API response by route and status, with its latency.
async fn record_request(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let metrics = request
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let response = next.call(request).await;
    if let Some(metrics) = metrics {
        let (route, status) = match &response {
            Ok(response) => (
                response.request().match_pattern(),
                response.status().as_u16(),
            ),
            Err(error) => (None, error.as_response_error().status_code().as_u16()),
        };
        let route = route.as_deref().map_or("unmatched", |route| {
            // `/metrics/` is the same route as `/metrics`.
            if route.len() > 1 {
                route.trim_end_matches('/')
            } else {
                route
            }
        });
        let elapsed = started.elapsed();
        metrics.observe_request(route, status, elapsed);
        tracing::debug!(
            http.route = route,
            http.status_code = status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        );
    }
    response
}
