-- Every committed change of the rows GET /metrics serves is announced on the channel
-- `metrics_changed` (LISTEN/NOTIFY), so metrics-query's response cache learns of it without
-- asking per request. Statement-level triggers: one notification per statement (PostgreSQL folds
-- the identical ones of a transaction into one, delivered at commit), whatever the writer.

CREATE FUNCTION metrics_notify_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('metrics_changed', '');
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION metrics_notify_changed() IS 'Announces a change of the rows GET /metrics serves on the channel metrics_changed (empty payload).';

CREATE TRIGGER daily_metrics_notify_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON daily_metrics
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_notify_changed();
CREATE TRIGGER user_daily_metrics_notify_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON user_daily_metrics
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_notify_changed();
-- A table's registration changes no rows, but announcing it costs nothing and keeps the rule
-- simple: every table a read looks at announces its changes.
CREATE TRIGGER metrics_tables_notify_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON metrics_tables
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_notify_changed();
