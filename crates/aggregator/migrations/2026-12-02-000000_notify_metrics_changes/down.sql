DROP TRIGGER metrics_tables_notify_changed ON metrics_tables;
DROP TRIGGER user_daily_metrics_notify_changed ON user_daily_metrics;
DROP TRIGGER daily_metrics_notify_changed ON daily_metrics;
DROP FUNCTION metrics_notify_changed();
