//! `POST /metrics/refresh` and `GET /metrics/refresh/status` (`agentos-compat.md`).
//!
//! A refresh claims its table on a connection of its own (the aggregator's refresh lock, held
//! for the refresh's length; see [`metrics_aggregator::start_refresh`]), within the request
//! timeout. Claimed, it recounts every day of the table under the writers' lock: the request
//! waits for it (`background=false`, 200 with the rows) or it runs on after a 202. Either way
//! the response cache of the table is dropped when it ends.

use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use metrics_aggregator::{DateRange, RefreshStatus, TableName};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::auth::{self, Scope};
use crate::cache::PageCache;
use crate::error::ApiError;
use crate::routes::metrics::{Rfc3339, checked_user_id, render_rows};
use crate::startup::AppState;

/// The message of a refresh started in the background.
pub const STARTED: &str = "Metrics refresh started in background";
/// The message of a refresh refused because another one runs.
pub const ALREADY_RUNNING: &str = "A metrics refresh is already in progress for this database";

/// The query parameters of `POST /metrics/refresh`; unknown ones are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct RefreshQuery {
    /// The configured database; the default one when absent.
    pub db_id: Option<String>,
    /// The metrics table of that database; its default table when absent.
    pub table: Option<String>,
    /// Whose rows the answer carries (`""`: the events without a user); all users' when absent.
    pub user_id: Option<String>,
    /// `true` or `false` (the default).
    pub background: Option<String>,
}

impl RefreshQuery {
    fn parse(query: &str) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(query)
            .map_err(|err| ApiError::Validation(format!("Invalid query string: {err}")))
    }

    fn background(&self) -> Result<bool, ApiError> {
        match self.background.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(ApiError::Validation(
                "Invalid background: expected true or false".to_owned(),
            )),
        }
    }
}

/// The query parameters of `GET /metrics/refresh/status`; unknown ones are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct StatusQuery {
    /// The configured database; the default one when absent.
    pub db_id: Option<String>,
    /// The metrics table of that database; its default table when absent.
    pub table: Option<String>,
}

/// The body of a refresh that did not return rows.
#[derive(Debug, Serialize)]
struct RefreshStarted {
    status: &'static str,
    message: &'static str,
}

/// The body of `GET /metrics/refresh/status`.
#[derive(Serialize)]
struct StatusBody {
    status: &'static str,
    started_at: Option<Rfc3339>,
    finished_at: Option<Rfc3339>,
    error: Option<String>,
}

impl From<RefreshStatus> for StatusBody {
    fn from(status: RefreshStatus) -> Self {
        Self {
            status: status.state.as_str(),
            started_at: status.started_at.map(Rfc3339),
            finished_at: status.finished_at.map(Rfc3339),
            error: status.error,
        }
    }
}

/// `POST /metrics/refresh`.
///
/// # Errors
///
/// Any [`ApiError`]: 401 and 403 first, then 422, 404, and 500 when the database fails (or does
/// not let the refresh start within the request timeout).
pub async fn refresh_metrics(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth::authorize(
        &request,
        state.security_key.as_ref(),
        state.jwt.as_ref(),
        Scope::Write,
    )?;
    let query = RefreshQuery::parse(request.query_string())?;
    let background = query.background()?;
    let user = caller.user_to_read(checked_user_id(query.user_id)?);
    let (position, database) = state.databases.find(query.db_id.as_deref())?;
    let table = database.table(query.table.as_deref())?.clone();
    let url = database.url.clone();

    let claim_table = table.clone();
    let claim = web::block(move || -> anyhow::Result<_> {
        let mut conn = metrics_aggregator::connect_one(url.expose_secret())?;
        let claimed = metrics_aggregator::start_refresh(&mut conn, &claim_table)?;
        Ok(claimed.map(|id| (conn, id)))
    });
    let timeout = state.request_timeout;
    let claimed = match tokio::time::timeout(timeout, claim).await {
        Ok(Ok(Ok(claimed))) => claimed,
        Ok(Ok(Err(err))) => return Err(ApiError::Internal(err.context("starting a refresh"))),
        Ok(Err(err)) => return Err(ApiError::Internal(anyhow::Error::new(err))),
        Err(_) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the database did not let the refresh start within {} ms",
                timeout.as_millis()
            )));
        }
    };
    let status = if background {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let Some((mut conn, table_id)) = claimed else {
        return Ok(HttpResponse::build(status).json(RefreshStarted {
            status: "already_running",
            message: ALREADY_RUNNING,
        }));
    };

    let cache = state.cache.clone();
    // The refresh, then (for a waiting client) the rows it answers with.
    let run = move || -> anyhow::Result<Option<Vec<u8>>> {
        let outcome = metrics_aggregator::finish_refresh(&mut conn, table_id);
        invalidate(cache.as_deref(), position, &table);
        outcome?;
        if background {
            return Ok(None);
        }
        let page = match &user {
            None => metrics_aggregator::read(&mut conn, table.as_str(), DateRange::default())?,
            Some(user) => metrics_aggregator::read_user(
                &mut conn,
                table.as_str(),
                user,
                DateRange::default(),
            )?,
        };
        Ok(Some(render_rows(&page.rows)?))
    };
    if background {
        actix_web::rt::spawn(async move {
            match web::block(run).await {
                Ok(Ok(_)) => tracing::info!("background metrics refresh completed"),
                // The status records the failure; operators get the cause here, once.
                Ok(Err(err)) => tracing::error!(
                    error = format!("{err:#}"),
                    "background metrics refresh failed"
                ),
                Err(err) => tracing::error!(error = %err, "background metrics refresh stopped"),
            }
        });
        return Ok(HttpResponse::Accepted().json(RefreshStarted {
            status: "started",
            message: STARTED,
        }));
    }
    let body = web::block(run)
        .await
        .map_err(|err| ApiError::Internal(anyhow::Error::new(err)))?
        .map_err(|err| ApiError::Internal(err.context("refreshing metrics")))?
        .unwrap_or_default();
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body))
}

fn invalidate(cache: Option<&PageCache>, database: usize, table: &TableName) {
    if let Some(cache) = cache {
        cache.invalidate(database, table);
    }
}

/// `GET /metrics/refresh/status`.
///
/// # Errors
///
/// Any [`ApiError`]: 401 and 403 first, then 422, 404, and 500 when the database fails or does
/// not answer within the request timeout.
pub async fn get_refresh_status(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    auth::authorize(
        &request,
        state.security_key.as_ref(),
        state.jwt.as_ref(),
        Scope::Read,
    )?;
    let query: StatusQuery = serde_urlencoded::from_str(request.query_string())
        .map_err(|err| ApiError::Validation(format!("Invalid query string: {err}")))?;
    let (_, database) = state.databases.find(query.db_id.as_deref())?;
    let table = database.table(query.table.as_deref())?.clone();
    let pool = database.pool();
    let read = web::block(move || -> anyhow::Result<RefreshStatus> {
        let mut conn = pool.get()?;
        Ok(metrics_aggregator::refresh_status(
            &mut conn,
            table.as_str(),
        )?)
    });
    let timeout = state.request_timeout;
    let status = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Ok(status))) => status,
        Ok(Ok(Err(err))) => {
            return Err(ApiError::Internal(
                err.context("reading the refresh status"),
            ));
        }
        Ok(Err(err)) => return Err(ApiError::Internal(anyhow::Error::new(err))),
        Err(_) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the database did not answer within {} ms",
                timeout.as_millis()
            )));
        }
    };
    Ok(HttpResponse::Ok().json(StatusBody::from(status)))
}
