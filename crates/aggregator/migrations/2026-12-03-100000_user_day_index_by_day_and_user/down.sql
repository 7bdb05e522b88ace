CREATE INDEX user_daily_metrics_date_idx ON user_daily_metrics (table_id, date);
DROP INDEX user_daily_metrics_date_user_idx;
