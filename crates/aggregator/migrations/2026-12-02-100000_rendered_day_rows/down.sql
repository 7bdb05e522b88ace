ALTER TABLE user_daily_metrics DROP COLUMN rendered;
ALTER TABLE daily_metrics DROP COLUMN rendered;
