-- `apply` reads the per-user rows of a batch by key, (user, day). With two indexes to choose
-- from, the primary key `(table_id, user_id, date)` and `(table_id, date)`, PostgreSQL took the
-- second whenever its statistics did not yet say better (a new table, or one autovacuum had not
-- analysed since it grew): every key then read all users' rows of its day and filtered out all
-- but one, 50 rows per key at 100 users a day, 15 ms of a 55 ms batch of 1,000 events, and more
-- with every user a day has. The day index now ends with the user too, so either index finds a
-- key's row by its whole key, whatever the statistics say; rebuilds still read a date range
-- through it.
CREATE INDEX user_daily_metrics_date_user_idx ON user_daily_metrics (table_id, date, user_id);
DROP INDEX user_daily_metrics_date_idx;
