DROP TABLE metrics_refreshes;
DROP TABLE user_daily_metrics;
ALTER TABLE sessions
    DROP CONSTRAINT sessions_first_run_check,
    DROP CONSTRAINT sessions_created_check,
    DROP COLUMN first_run_user_id,
    DROP COLUMN first_run_time,
    DROP COLUMN created_user_id,
    DROP COLUMN created_time;
ALTER TABLE runs DROP COLUMN user_id;
