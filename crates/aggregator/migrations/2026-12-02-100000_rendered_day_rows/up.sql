-- Each day row keeps its own JSON as GET /metrics serves it (one `DayAggregatedMetrics` object,
-- rendered by the writer from the row's values), so that a read is a concatenation rather than
-- a decode and a render of two dozen columns per row. NULL means "not rendered yet": rows written
-- before this column existed, or recomputed by a rebuild that has not rendered them yet; readers
-- then render from the columns, and the next refresh fills it.
ALTER TABLE daily_metrics ADD COLUMN rendered text;
ALTER TABLE user_daily_metrics ADD COLUMN rendered text;
COMMENT ON COLUMN daily_metrics.rendered IS 'The row as GET /metrics renders it (JSON text), or NULL when not rendered yet.';
COMMENT ON COLUMN user_daily_metrics.rendered IS 'The row as GET /metrics?user_id= renders it (JSON text), or NULL when not rendered yet.';
