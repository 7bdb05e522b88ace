DROP TABLE day_users;
DROP TABLE sessions;
DROP TABLE runs;
DROP TABLE daily_metrics;
DROP TABLE metrics_tables;
