DROP FUNCTION metrics_day_json(uuid, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, numeric, jsonb, date, timestamptz, timestamptz);
DROP FUNCTION metrics_json_decimal(numeric);
DROP TRIGGER metrics_tables_notify_changed ON metrics_tables;
DROP TRIGGER user_daily_metrics_notify_changed ON user_daily_metrics;
DROP TRIGGER daily_metrics_notify_changed ON daily_metrics;
DROP FUNCTION metrics_notify_changed();
