-- What metrics-query's response cache and range reads need from the daily tables:
--
-- 1. Every committed change of the rows GET /metrics serves is announced on the channel
--    `metrics_changed` (LISTEN/NOTIFY), so the service learns of it without asking per request.
--    Statement-level triggers: one notification per statement (PostgreSQL folds the identical
--    ones of a transaction into one, delivered at commit), whatever the writer.
-- 2. PostgreSQL writes a row's JSON object of GET /metrics (`DayAggregatedMetrics`, byte for
--    byte as the service renders it), so that a read receives the body's rows ready-made
--    instead of decoding and rendering two dozen columns per row. (Computed when read, not kept
--    in a generated column: that would cost every writer's upsert the rendering.)

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

-- The exact value of a numeric as JSON number text in the shape of a float: plain between 1e-6
-- and 1e21, else in exponent form, with every digit of the decimal (`0.0`, `12.0`, `0.25`,
-- `1e-7`, `3.4e308`).
CREATE FUNCTION metrics_json_decimal(value numeric) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    plain text := trim_scale(abs(value))::text;
    whole text := split_part(plain, '.', 1);
    all_digits text := whole || split_part(plain, '.', 2);
    digits text := ltrim(all_digits, '0');
    point integer;
    len integer;
    sign text := CASE WHEN value < 0 THEN '-' ELSE '' END;
BEGIN
    IF digits = '' THEN
        RETURN '0.0';
    END IF;
    -- value = 0.<digits> x 10^point
    point := length(whole) - (length(all_digits) - length(digits));
    digits := rtrim(digits, '0');
    len := length(digits);
    IF point < -5 OR point > 21 THEN
        RETURN sign || left(digits, 1)
            || CASE WHEN len > 1 THEN '.' || substr(digits, 2) ELSE '' END
            || 'e' || (point - 1)::text;
    ELSIF point >= len THEN
        RETURN sign || digits || repeat('0', point - len) || '.0';
    ELSIF point > 0 THEN
        RETURN sign || left(digits, point) || '.' || substr(digits, point + 1);
    END IF;
    RETURN sign || '0.' || repeat('0', -point) || digits;
END;
$$;
COMMENT ON FUNCTION metrics_json_decimal(numeric) IS 'A numeric as GET /metrics writes cost: exact, in the shape of a float.';

-- One row as GET /metrics writes it (`DayAggregatedMetrics` of metrics-api.md): fields in the
-- contract's order, the nine token counts and Agno's four aliases, the exact cost, each model's
-- keys in the contract's order (jsonb's own text would write them shortest first), the day at
-- UTC midnight, times as Unix seconds. It reads only its arguments: immutable, as a generated
-- column needs. Strings are jsonb's text of them, whose escapes are the service's.
CREATE FUNCTION metrics_day_json(
    id uuid,
    agent_runs_count bigint, agent_sessions_count bigint,
    team_runs_count bigint, team_sessions_count bigint,
    workflow_runs_count bigint, workflow_sessions_count bigint,
    users_count bigint,
    input_tokens bigint, output_tokens bigint, total_tokens bigint,
    audio_tokens bigint, input_audio_tokens bigint, output_audio_tokens bigint,
    cached_tokens bigint, cache_write_tokens bigint, reasoning_tokens bigint,
    cost numeric, model_metrics jsonb, date date,
    created_at timestamptz, updated_at timestamptz
) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    models text := '[';
    model jsonb;
BEGIN
    FOR i IN 0 .. jsonb_array_length(model_metrics) - 1 LOOP
        model := model_metrics -> i;
        models := models || CASE WHEN i = 0 THEN '' ELSE ',' END
            || '{"model_id":' || (model -> 'model_id')::text
            || ',"model_provider":' || (model -> 'model_provider')::text
            || ',"count":' || (model -> 'count')::text || '}';
    END LOOP;
    RETURN '{"id":"' || id::text
        || '","agent_runs_count":' || agent_runs_count::text
        || ',"agent_sessions_count":' || agent_sessions_count::text
        || ',"team_runs_count":' || team_runs_count::text
        || ',"team_sessions_count":' || team_sessions_count::text
        || ',"workflow_runs_count":' || workflow_runs_count::text
        || ',"workflow_sessions_count":' || workflow_sessions_count::text
        || ',"users_count":' || users_count::text
        || ',"token_metrics":{"input_tokens":' || input_tokens::text
        || ',"output_tokens":' || output_tokens::text
        || ',"total_tokens":' || total_tokens::text
        || ',"audio_tokens":' || audio_tokens::text
        || ',"input_audio_tokens":' || input_audio_tokens::text
        || ',"output_audio_tokens":' || output_audio_tokens::text
        || ',"cached_tokens":' || cached_tokens::text
        || ',"cache_write_tokens":' || cache_write_tokens::text
        || ',"reasoning_tokens":' || reasoning_tokens::text
        || ',"audio_total_tokens":' || audio_tokens::text
        || ',"audio_input_tokens":' || input_audio_tokens::text
        || ',"audio_output_tokens":' || output_audio_tokens::text
        || ',"cache_read_tokens":' || cached_tokens::text
        || ',"cost":' || metrics_json_decimal(cost)
        || '},"model_metrics":' || models || ']'
        || ',"date":"' || to_char(date, 'YYYY-MM-DD')
        || 'T00:00:00Z","created_at":' || floor(extract(epoch FROM created_at))::bigint::text
        || ',"updated_at":' || floor(extract(epoch FROM updated_at))::bigint::text
        || '}';
END;
$$;
COMMENT ON FUNCTION metrics_day_json(uuid, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, numeric, jsonb, date, timestamptz, timestamptz) IS 'A daily row as the JSON object GET /metrics serves.';
