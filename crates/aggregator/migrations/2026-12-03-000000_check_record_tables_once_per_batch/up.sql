-- `runs` and `sessions` take nearly every row apply inserts (one per run, one per session), and
-- each row fired its foreign key's check on metrics_tables: a lookup and a row lock, per row,
-- about a third of the insert's time. The same guarantee now costs once per batch and once per
-- change of metrics_tables:
--
-- - apply takes a key-share lock on its metrics_tables row with its writer lock (`lock_table`),
--   and fails when the row does not exist: every record it writes names a registered table, and
--   the row cannot go away before the batch commits;
-- - a metrics_tables row that records still name cannot be deleted, nor its id changed (the
--   trigger below), as the foreign keys refused it.
--
-- day_users, daily_metrics and user_daily_metrics keep their foreign keys: they insert a row
-- only for a new (day, user) pair or a new day row, not for every event.

ALTER TABLE runs DROP CONSTRAINT runs_table_id_fkey;
ALTER TABLE sessions DROP CONSTRAINT sessions_table_id_fkey;

CREATE FUNCTION metrics_tables_keep_referenced() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_OP = 'DELETE' OR NEW.id <> OLD.id)
        AND (EXISTS (SELECT 1 FROM runs WHERE table_id = OLD.id)
            OR EXISTS (SELECT 1 FROM sessions WHERE table_id = OLD.id)) THEN
        RAISE EXCEPTION 'metrics table % is still named by runs or sessions', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END;
$$;
COMMENT ON FUNCTION metrics_tables_keep_referenced() IS 'Refuses to delete a metrics_tables row, or change its id, while runs or sessions name it: what the foreign keys of those tables did.';

CREATE TRIGGER metrics_tables_keep_referenced
    BEFORE DELETE OR UPDATE OF id ON metrics_tables
    FOR EACH ROW EXECUTE FUNCTION metrics_tables_keep_referenced();
