//! Reading a metrics table's rows for `GET /metrics`.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::dsl::max;
use diesel::prelude::*;

use crate::models::DailyMetrics;
use crate::schema::{daily_metrics, metrics_tables};

/// An inclusive range of UTC days; an absent bound is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DateRange {
    /// The first day, inclusive.
    pub start: Option<NaiveDate>,
    /// The last day, inclusive.
    pub end: Option<NaiveDate>,
}

/// The rows of a metrics table within a range, and the table's latest change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsPage {
    /// One row per day with events, ascending by date.
    pub rows: Vec<DailyMetrics>,
    /// The latest `updated_at` of any row of the table, inside the range or not; `None` when the
    /// table has no rows (or was never written).
    pub updated_at: Option<DateTime<Utc>>,
}

/// Reads the rows of metrics table `table` within `range`, in two index-backed queries.
///
/// A table that no writer has registered yet reads as empty.
///
/// # Errors
///
/// The database error when a query fails.
pub fn read(conn: &mut PgConnection, table: &str, range: DateRange) -> QueryResult<MetricsPage> {
    let table_ids = metrics_tables::table
        .filter(metrics_tables::name.eq(table))
        .select(metrics_tables::id);
    let updated_at: Option<DateTime<Utc>> = daily_metrics::table
        .filter(daily_metrics::table_id.eq_any(table_ids))
        .select(max(daily_metrics::updated_at))
        .get_result(conn)?;
    if updated_at.is_none() {
        return Ok(MetricsPage::default());
    }
    let mut query = daily_metrics::table
        .filter(daily_metrics::table_id.eq_any(table_ids))
        .select(DailyMetrics::as_select())
        .order(daily_metrics::date.asc())
        .into_boxed();
    if let Some(start) = range.start {
        query = query.filter(daily_metrics::date.ge(start));
    }
    if let Some(end) = range.end {
        query = query.filter(daily_metrics::date.le(end));
    }
    Ok(MetricsPage {
        rows: query.load(conn)?,
        updated_at,
    })
}
