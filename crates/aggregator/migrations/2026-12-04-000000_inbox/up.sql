-- The inbox (`inbox.enabled` of metrics-ingest): events ingest has stored and acknowledged, not
-- yet folded into the day rows. Ingest writes a batch's events here with one insert and no lock,
-- and acknowledges its deliveries once that commits; an applier takes them in large batches
-- under the table's writer lock, folds them with `apply` and deletes them in the same
-- transaction, so each is applied exactly once whatever crashes in between.
--
-- Each row keeps what the event's dead letter needs should the database refuse it for good
-- (a 64-bit overflow of a daily sum, say) after its delivery was acknowledged: the bytes it was
-- decoded from (the whole body, or its element of a batch), the delivery's routing key and its
-- AMQP properties (serde JSON of lapin's `BasicProperties`). A refused row keeps the reason in
-- `refused` until ingest has published its dead letter; only then is it deleted.
--
-- No foreign key: every insert would check metrics_tables per row (see
-- 2026-12-03-000000_check_record_tables_once_per_batch); the applier's writer lock checks the
-- table once per batch and refuses the rows of an unregistered one.
CREATE TABLE inbox (
    id bigserial PRIMARY KEY,
    table_id integer NOT NULL,
    event bytea NOT NULL,
    element boolean NOT NULL,
    routing_key text NOT NULL,
    properties bytea NOT NULL,
    refused text
);
COMMENT ON TABLE inbox IS 'Events acknowledged by metrics-ingest and not yet applied to the day rows; rows with refused set wait for their dead letter.';
