//! `GET /metrics`: the request's parameters, their validation (`metrics-api.md`, and
//! `agentos-compat.md` for `user_id`), and the response: all users' rows or one user's.
//!
//! A range of up to [`WHOLE_READ_DAYS`] days is read whole, as the JSON the writer rendered for
//! each row, joined with commas ([`metrics_aggregator::read_rendered`]): the body is that text
//! between its head and tail, nothing is decoded. Rows without rendered JSON (written
//! before the column existed) are read and rendered here, with the same serialisation
//! ([`DayJson`]). Longer and open ranges are read row by row and, past [`STREAM_AFTER_BYTES`],
//! sent as they come, so memory stays bounded whatever the table holds (a database error midway
//! then cuts the body short).

use std::convert::Infallible;
use std::sync::Arc;

use actix_web::body::SizedStream;
use actix_web::http::header::ContentType;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use anyhow::Context;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use futures_util::{Stream, StreamExt};
use metrics_aggregator::{DailyMetrics, DateRange, DayJson, MetricsPage, Pool};
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::{mpsc, oneshot};

use crate::auth::{self, Scope};
use crate::buffers::BodyBuffers;
use crate::cache::{PageCache, PageKey, Version};
use crate::error::ApiError;
use crate::listener::Changes;
use crate::startup::AppState;
use crate::telemetry::Metrics;

/// The query parameters of `GET /metrics`, as sent; unknown ones are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct MetricsQuery {
    /// First day, inclusive, `YYYY-MM-DD`.
    pub starting_date: Option<String>,
    /// Last day, inclusive, `YYYY-MM-DD`.
    pub ending_date: Option<String>,
    /// The configured database to read; the default one when absent.
    pub db_id: Option<String>,
    /// The metrics table of that database; its default table when absent.
    pub table: Option<String>,
    /// One user's rows (`""`: the events without a user); all users' when absent.
    pub user_id: Option<String>,
}

/// The longest `user_id` accepted, in characters (the event contract's limit).
pub const MAX_USER_ID_CHARS: usize = 256;

/// Checks a `user_id` parameter's length.
///
/// # Errors
///
/// [`ApiError::Validation`] for more than [`MAX_USER_ID_CHARS`] characters.
pub fn checked_user_id(user_id: Option<String>) -> Result<Option<String>, ApiError> {
    match user_id {
        Some(user) if user.chars().nth(MAX_USER_ID_CHARS).is_some() => Err(ApiError::Validation(
            format!("Invalid user_id: at most {MAX_USER_ID_CHARS} characters"),
        )),
        user => Ok(user),
    }
}

impl MetricsQuery {
    /// Parses a raw query string.
    ///
    /// # Errors
    ///
    /// [`ApiError::Validation`] when the string is not a valid form encoding (a repeated
    /// parameter, invalid UTF-8).
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(query)
            .map_err(|err| ApiError::Validation(format!("Invalid query string: {err}")))
    }

    /// The inclusive date range the parameters name.
    ///
    /// # Errors
    ///
    /// [`ApiError::Validation`] naming a date that does not parse, [`ApiError::BadRequest`]
    /// for a start after the end.
    pub fn range(&self) -> Result<DateRange, ApiError> {
        let start = self
            .starting_date
            .as_deref()
            .map(|value| parse_date("starting_date", value))
            .transpose()?;
        let end = self
            .ending_date
            .as_deref()
            .map(|value| parse_date("ending_date", value))
            .transpose()?;
        if let (Some(start), Some(end)) = (start, end)
            && start > end
        {
            return Err(ApiError::BadRequest(format!(
                "Invalid date range: starting_date {start} is after ending_date {end}"
            )));
        }
        Ok(DateRange { start, end })
    }
}

/// Parses `YYYY-MM-DD`, also accepting that day's midnight (`YYYY-MM-DDT00:00:00`, optionally
/// with zero fractions and `Z`), as Agno's own parameter parsing does; nothing else.
fn parse_date(name: &str, value: &str) -> Result<NaiveDate, ApiError> {
    let invalid = || {
        ApiError::Validation(format!(
            "Invalid {name}: expected a date in YYYY-MM-DD format"
        ))
    };
    let (day, time) = value.split_at_checked(10).ok_or_else(invalid)?;
    let bytes = day.as_bytes();
    let shaped = bytes.iter().enumerate().all(|(index, byte)| match index {
        4 | 7 => *byte == b'-',
        _ => byte.is_ascii_digit(),
    });
    if !shaped || !is_midnight(time) {
        return Err(invalid());
    }
    let number = |range: std::ops::Range<usize>| {
        day.get(range)
            .and_then(|digits| digits.parse::<u32>().ok())
            .ok_or_else(invalid)
    };
    let year = i32::try_from(number(0..4)?).map_err(|_| invalid())?;
    NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?).ok_or_else(invalid)
}

fn is_midnight(time: &str) -> bool {
    let Some(rest) = time.strip_prefix("T00:00:00") else {
        return time.is_empty();
    };
    let rest = rest.strip_suffix('Z').unwrap_or(rest);
    match rest.strip_prefix('.') {
        Some(fraction) => !fraction.is_empty() && fraction.bytes().all(|b| b == b'0'),
        None => rest.is_empty(),
    }
}

/// `GET /metrics` (and `/metrics/`).
///
/// # Errors
///
/// Any [`ApiError`]: 401 before anything else, then 422, 400, 404, and 500 when the database
/// fails or does not answer within the request timeout.
pub async fn get_metrics(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth::authorize(
        &request,
        state.security_key.as_ref(),
        state.jwt.as_ref(),
        Scope::Read,
    )?;
    let query = MetricsQuery::parse(request.query_string())?;
    let range = query.range()?;
    let user = caller.user_to_read(checked_user_id(query.user_id)?);
    let (position, database) = state.databases.find(query.db_id.as_deref())?;
    let key = PageKey {
        database: position,
        table: database.table(query.table.as_deref())?.clone(),
        start: range.start,
        end: range.end,
        user,
    };
    let pool = database.pool();
    let changes = state
        .cache
        .as_ref()
        .map(|cache| cache.changes(position, &database.url));
    let cache = state.cache.clone();
    let timeout = state.request_timeout;
    let metrics = state.metrics.clone();
    let bodies = state.bodies.clone();
    let read = read_body(key, range, pool, cache, changes, metrics, bodies);
    let body = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(err)) => return Err(ApiError::Internal(err.context("reading metrics"))),
        Err(_) => {
            database.give_up_on(timeout);
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the database did not answer within {} ms",
                timeout.as_millis()
            )));
        }
    };
    let mut response = HttpResponse::Ok();
    response.content_type(ContentType::json());
    Ok(match body {
        Body::Whole(body) if body.len() <= CHUNK_BYTES => response.body(body),
        Body::Whole(body) => response.body(in_parts(body)),
        Body::Streaming(first, rest) => {
            let rest = futures_util::stream::unfold(rest, |mut rest| async move {
                rest.recv().await.map(|chunk| (chunk, rest))
            });
            response.streaming(futures_util::stream::iter(parts(first)).chain(rest))
        }
    })
}

/// A whole body larger than [`CHUNK_BYTES`] as actix-http is best given it: with its length (`content-length`, the same
/// bytes on the wire) and in parts of [`CHUNK_BYTES`] that share its buffer. The dispatcher
/// copies a body into its connection's write buffer until that holds its configured size
/// (32 KiB), and replaces a write buffer grown past 128 KiB with a new one once written; given a
/// 330 KB body in one piece, it would allocate, fault in and free a buffer of that size for
/// every response, which cost about a sixth of a per-user read's throughput.
fn in_parts(body: Bytes) -> SizedStream<impl Stream<Item = Result<Bytes, Infallible>>> {
    let size = u64::try_from(body.len()).unwrap_or(u64::MAX);
    SizedStream::new(size, futures_util::stream::iter(parts(body)))
}

/// `body` in slices of at most [`CHUNK_BYTES`] that share its buffer.
fn parts<E>(body: Bytes) -> impl Iterator<Item = Result<Bytes, E>> {
    (0..body.len())
        .step_by(CHUNK_BYTES)
        .map(move |start| Ok(body.slice(start..body.len().min(start + CHUNK_BYTES))))
}

/// A response body: whole, or (past [`STREAM_AFTER_BYTES`]) its first part and the rest as the
/// database hands it over.
enum Body {
    Whole(Bytes),
    Streaming(Bytes, mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

/// Ranges up to this many days are read in one piece (one query, the rows joined here); longer
/// or open ones row by row, so that memory stays bounded whatever the table holds.
const WHOLE_READ_DAYS: i64 = 1_000;

/// A body read row by row is sent as it comes once it passes this size (it is then not cached);
/// a smaller one is sent whole.
const STREAM_AFTER_BYTES: usize = 1 << 20;

/// The size of the parts a body is handed to actix-http in.
const CHUNK_BYTES: usize = 64 * 1024;

/// The start of every body, up to the rows.
const HEAD: &[u8] = b"{\"metrics\":[";

/// The body for `key` and `range`: from the cache when its table is unchanged, else read (and
/// cached).
async fn read_body(
    key: PageKey,
    range: DateRange,
    pool: Pool,
    cache: Option<Arc<PageCache>>,
    changes: Option<Arc<Changes>>,
    metrics: Arc<Metrics>,
    bodies: Arc<BodyBuffers>,
) -> anyhow::Result<Body> {
    // The listener's version before anything is read (see `crate::cache`).
    let notified = changes.as_deref().and_then(Changes::version);
    // The table's latest change when the cache has just read it: a miss then reads only the
    // rows (the stamp is read before them either way).
    let mut known = None;
    if let Some(cache) = &cache {
        if let Some(body) = notified.and_then(|version| cache.get(&key, Version::Notified(version)))
        {
            metrics.observe_cache("hit");
            return Ok(Body::Whole(body));
        }
        // Without an entry for the key, no stamp can make a hit (the case of reads that vary
        // by user or range): the rows are read at once, with the table's latest change read
        // on the same connection just before them, so a miss costs one trip to the blocking
        // pool, not two. Without a stamp (its read failed or was given up on), the rows are
        // read directly too.
        let stamp = if !cache.holds(&key) {
            None
        } else {
            match cache.stamp(key.database, &key.table, &pool).await {
                Ok(stamp) => {
                    known = Some(stamp);
                    stamp
                }
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "reading without the cache");
                    None
                }
            }
        };
        if let Some(stamp) = stamp
            && let Some(body) = cache.get(&key, stamp)
        {
            if let Some(version) = notified {
                cache.confirm(&key, stamp, version);
            }
            metrics.observe_cache("hit");
            return Ok(Body::Whole(body));
        }
        metrics.observe_cache("miss");
    }
    let whole = match (range.start, range.end) {
        (Some(start), Some(end)) => (end - start).num_days() < WHOLE_READ_DAYS,
        _ => false,
    };
    // Sync diesel on the blocking pool (see the aggregator's crate docs); the caller's timeout
    // answers the client even while the thread still waits on the database.
    if whole {
        return web::block(move || {
            let mut conn = pool.get()?;
            let table = key.table.as_str();
            let updated_at = match known {
                Some(stamp) => stamp,
                None => metrics_aggregator::latest_change(&mut conn, table)?,
            };
            let body = match updated_at {
                None => render(&MetricsPage::default())?,
                Some(_) => {
                    let user = key.user.as_deref();
                    // About 900 bytes a row with three models: room for most reads.
                    let mut body = bodies.take(HEAD.len() + 64 + days(range) * 928);
                    body.extend_from_slice(HEAD);
                    if metrics_aggregator::read_rendered(&mut conn, table, user, range, &mut body)?
                    {
                        tail(&mut body, updated_at);
                        body
                    } else {
                        // Rows not rendered yet (written before `rendered` existed).
                        render(&MetricsPage {
                            rows: metrics_aggregator::read_rows(&mut conn, table, user, range)?,
                            updated_at,
                        })?
                    }
                }
            };
            let body = bodies.freeze(body);
            if let Some(cache) = &cache {
                cache.put_versions(key, updated_at, notified, body.clone());
            }
            Ok(Body::Whole(body))
        })
        .await?;
    }
    let (first, first_received) = oneshot::channel();
    actix_web::rt::task::spawn_blocking(move || {
        read_streaming(&key, range, &pool, cache.as_deref(), notified, first);
    });
    first_received
        .await
        .context("the read ended without an answer")?
}

/// Reads the rows of `key` one by one: answers `first` with the whole body when it stays under
/// [`STREAM_AFTER_BYTES`] (and caches it), else with its first part and a channel that carries
/// the rest.
fn read_streaming(
    key: &PageKey,
    range: DateRange,
    pool: &Pool,
    cache: Option<&PageCache>,
    notified: Option<u64>,
    first: oneshot::Sender<anyhow::Result<Body>>,
) {
    let mut sink = Sink {
        first: Some(first),
        rest: None,
        body: Vec::with_capacity(CHUNK_BYTES),
        rows: 0,
        failed: None,
    };
    sink.body.extend_from_slice(HEAD);
    let read = pool.get().map_err(anyhow::Error::new).and_then(|mut conn| {
        metrics_aggregator::stream(
            &mut conn,
            key.table.as_str(),
            key.user.as_deref(),
            range,
            |row| sink.row(row),
        )
        .map_err(anyhow::Error::new)
    });
    let read = match sink.failed.take() {
        Some(err) => Err(anyhow::Error::new(err)),
        None => read,
    };
    match read {
        Ok(stamp) => {
            tail(&mut sink.body, stamp);
            match sink.first.take() {
                Some(first) => {
                    let body = Bytes::from(std::mem::take(&mut sink.body));
                    if let Some(cache) = cache {
                        cache.put_versions(key.clone(), stamp, notified, body.clone());
                    }
                    let _ = first.send(Ok(Body::Whole(body)));
                }
                None => {
                    sink.send();
                }
            }
        }
        Err(err) => match (sink.first.take(), &sink.rest) {
            (Some(first), _) => {
                let _ = first.send(Err(err));
            }
            // The status is sent: cutting the body short is all that is left to say.
            (None, Some(rest)) => {
                tracing::error!(error = %format!("{err:#}"), "reading metrics midway");
                let _ = rest.blocking_send(Err(std::io::Error::other(format!("{err:#}"))));
            }
            (None, None) => {}
        },
    }
}

/// Where [`read_streaming`] puts the rows.
struct Sink {
    /// The answer to the request, until the body is whole or streaming starts.
    first: Option<oneshot::Sender<anyhow::Result<Body>>>,
    /// The rest of a streamed body.
    rest: Option<mpsc::Sender<Result<Bytes, std::io::Error>>>,
    /// What is not sent yet.
    body: Vec<u8>,
    rows: usize,
    /// A row that could not be rendered.
    failed: Option<serde_json::Error>,
}

impl Sink {
    /// Adds a row; false when nobody waits for the body any more.
    fn row(&mut self, row: &DailyMetrics) -> bool {
        if self.rows > 0 {
            self.body.push(b',');
        }
        self.rows += 1;
        if let Err(err) = serde_json::to_writer(&mut self.body, &DayJson(row)) {
            self.failed = Some(err);
            return false;
        }
        match &self.rest {
            Some(_) if self.body.len() >= CHUNK_BYTES => self.send(),
            Some(_) => true,
            None if self.body.len() >= STREAM_AFTER_BYTES => {
                let (sender, receiver) = mpsc::channel(4);
                self.rest = Some(sender);
                let chunk = self.take();
                self.first
                    .take()
                    .is_some_and(|first| first.send(Ok(Body::Streaming(chunk, receiver))).is_ok())
            }
            None => true,
        }
    }

    /// Sends what the body holds on the streaming channel; false when nobody listens.
    fn send(&mut self) -> bool {
        let chunk = self.take();
        self.rest
            .as_ref()
            .is_some_and(|rest| rest.blocking_send(Ok(chunk)).is_ok())
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::replace(
            &mut self.body,
            Vec::with_capacity(CHUNK_BYTES),
        ))
    }
}

/// The number of days of a range with both bounds, at most [`WHOLE_READ_DAYS`].
fn days(range: DateRange) -> usize {
    match (range.start, range.end) {
        (Some(start), Some(end)) => {
            usize::try_from((end - start).num_days().min(WHOLE_READ_DAYS) + 1).unwrap_or(0)
        }
        _ => 0,
    }
}

/// Ends a body: the rows' array and the table's latest change.
fn tail(body: &mut Vec<u8>, updated_at: Option<DateTime<Utc>>) {
    body.extend_from_slice(b"],\"updated_at\":");
    match updated_at {
        Some(stamp) => {
            body.push(b'"');
            body.extend_from_slice(stamp.to_rfc3339_opts(SecondsFormat::Secs, true).as_bytes());
            body.push(b'"');
        }
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
}

/// Renders a page as the contract's `MetricsResponse` JSON.
///
/// # Errors
///
/// Serialisation errors, which only a non-string map key in `model_metrics` could cause.
pub fn render(page: &MetricsPage) -> serde_json::Result<Vec<u8>> {
    // About 650 bytes per row with one model; one allocation for typical pages.
    let mut body = Vec::with_capacity(64 + page.rows.len() * 720);
    serde_json::to_writer(
        &mut body,
        &Response {
            rows: &page.rows,
            updated_at: page.updated_at,
        },
    )?;
    Ok(body)
}

/// Renders rows as a JSON array of the contract's `DayAggregatedMetrics` (the body of a
/// synchronous `POST /metrics/refresh`).
///
/// # Errors
///
/// Serialisation errors, as for [`render`].
pub fn render_rows(rows: &[DailyMetrics]) -> serde_json::Result<Vec<u8>> {
    let mut body = Vec::with_capacity(2 + rows.len() * 720);
    serde_json::to_writer(&mut body, &Rows(rows))?;
    Ok(body)
}

struct Response<'a> {
    rows: &'a [DailyMetrics],
    updated_at: Option<DateTime<Utc>>,
}

impl Serialize for Response<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut response = serializer.serialize_struct("MetricsResponse", 2)?;
        response.serialize_field("metrics", &Rows(self.rows))?;
        response.serialize_field("updated_at", &self.updated_at.map(Rfc3339))?;
        response.end()
    }
}

struct Rows<'a>(&'a [DailyMetrics]);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut rows = serializer.serialize_seq(Some(self.0.len()))?;
        for row in self.0 {
            rows.serialize_element(&DayJson(row))?;
        }
        rows.end()
    }
}

/// An instant as RFC 3339 UTC to the second (`2025-07-31T20:29:01Z`).
pub(crate) struct Rfc3339(pub(crate) DateTime<Utc>);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_rfc3339_opts(SecondsFormat::Secs, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(value: &str) -> Result<NaiveDate, String> {
        parse_date("starting_date", value).map_err(|err| err.to_string())
    }

    #[test]
    fn dates_parse_as_days_or_their_midnight() {
        let day = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        for valid in [
            "2024-02-29",
            "2024-02-29T00:00:00",
            "2024-02-29T00:00:00Z",
            "2024-02-29T00:00:00.000",
        ] {
            assert_eq!(date(valid), Ok(day), "{valid}");
        }
    }

    #[test]
    fn anything_else_is_a_validation_error_naming_the_parameter() {
        for invalid in [
            "",
            "2024-13-01",
            "2023-02-29",
            "20240101",
            "yesterday",
            "2024-1-01",
            "2024-01-01T00:00:01",
            "2024-01-01T12:00:00Z",
            "2024-01-01 ",
            "+2024-01-01",
            "2024-01-01T00:00:00.",
            "２０２４-01-01",
        ] {
            assert_eq!(
                date(invalid),
                Err("Invalid starting_date: expected a date in YYYY-MM-DD format".to_owned()),
                "{invalid:?}"
            );
        }
    }

    #[test]
    fn a_reversed_range_is_a_bad_request() {
        let query = MetricsQuery {
            starting_date: Some("2024-02-02".into()),
            ending_date: Some("2024-02-01".into()),
            ..MetricsQuery::default()
        };
        assert_eq!(
            query.range().unwrap_err().to_string(),
            "Invalid date range: starting_date 2024-02-02 is after ending_date 2024-02-01"
        );
    }

    #[test]
    fn user_ids_longer_than_256_characters_are_refused() {
        let at_limit = "é".repeat(256);
        assert_eq!(
            checked_user_id(Some(at_limit.clone())).unwrap(),
            Some(at_limit)
        );
        assert_eq!(
            checked_user_id(Some(String::new())).unwrap(),
            Some(String::new())
        );
        assert_eq!(
            checked_user_id(Some("u".repeat(257)))
                .unwrap_err()
                .to_string(),
            "Invalid user_id: at most 256 characters"
        );
    }
}
