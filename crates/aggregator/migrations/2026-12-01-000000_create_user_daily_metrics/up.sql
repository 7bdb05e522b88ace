-- Per-user daily rows (`GET /metrics?user_id=U`) and the state of metrics refreshes
-- (`POST /metrics/refresh`, `GET /metrics/refresh/status`), as agentos-compat.md defines them.
--
-- Expand only: new columns have defaults or allow NULL, so binaries of the previous release keep
-- writing while this one rolls out (what they write counts as events without a user).

-- The user a run counts for: the user_id of its winning event.
ALTER TABLE runs ADD COLUMN user_id text NOT NULL DEFAULT '';
COMMENT ON COLUMN runs.user_id IS 'user_id of the winning event, the empty string when it names none: the user whose rows the run counts in.';

-- What a session's user is decided from: its earliest agentos.session.created, else its
-- earliest run (each the earliest by time, ties to the lower user id, the empty string first).
ALTER TABLE sessions
    ADD COLUMN created_time timestamptz,
    ADD COLUMN created_user_id text,
    ADD COLUMN first_run_time timestamptz,
    ADD COLUMN first_run_user_id text,
    ADD CONSTRAINT sessions_created_check CHECK ((created_time IS NULL) = (created_user_id IS NULL)),
    ADD CONSTRAINT sessions_first_run_check CHECK ((first_run_time IS NULL) = (first_run_user_id IS NULL));
COMMENT ON COLUMN sessions.created_time IS 'Time of the earliest agentos.session.created of the session; NULL when none was seen (or it was counted before per-user rows existed).';
COMMENT ON COLUMN sessions.created_user_id IS 'user_id of that session.created, the empty string when it names none.';
COMMENT ON COLUMN sessions.first_run_time IS 'Time of the earliest agentos.run.completed of the session; NULL when none was seen (or it was counted before per-user rows existed).';
COMMENT ON COLUMN sessions.first_run_user_id IS 'user_id of that run.completed, the empty string when it names none.';

CREATE TABLE user_daily_metrics (
    table_id integer NOT NULL,
    user_id text NOT NULL,
    date date NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    agent_runs_count bigint NOT NULL DEFAULT 0,
    agent_sessions_count bigint NOT NULL DEFAULT 0,
    team_runs_count bigint NOT NULL DEFAULT 0,
    team_sessions_count bigint NOT NULL DEFAULT 0,
    workflow_runs_count bigint NOT NULL DEFAULT 0,
    workflow_sessions_count bigint NOT NULL DEFAULT 0,
    users_count bigint NOT NULL DEFAULT 0,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    total_tokens bigint NOT NULL DEFAULT 0,
    audio_tokens bigint NOT NULL DEFAULT 0,
    input_audio_tokens bigint NOT NULL DEFAULT 0,
    output_audio_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens bigint NOT NULL DEFAULT 0,
    cache_write_tokens bigint NOT NULL DEFAULT 0,
    reasoning_tokens bigint NOT NULL DEFAULT 0,
    cost numeric NOT NULL DEFAULT 0,
    model_metrics jsonb NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- One user's days are adjacent in the key: a per-user range read is one index range scan.
    CONSTRAINT user_daily_metrics_pkey PRIMARY KEY (table_id, user_id, date),
    CONSTRAINT user_daily_metrics_id_key UNIQUE (id),
    CONSTRAINT user_daily_metrics_table_id_fkey FOREIGN KEY (table_id) REFERENCES metrics_tables (id),
    CONSTRAINT user_daily_metrics_counts_check CHECK (
        agent_runs_count >= 0 AND agent_sessions_count >= 0
        AND team_runs_count >= 0 AND team_sessions_count >= 0
        AND workflow_runs_count >= 0 AND workflow_sessions_count >= 0
        AND users_count IN (0, 1)
    ),
    CONSTRAINT user_daily_metrics_tokens_check CHECK (
        input_tokens >= 0 AND output_tokens >= 0 AND total_tokens >= 0
        AND audio_tokens >= 0 AND input_audio_tokens >= 0 AND output_audio_tokens >= 0
        AND cached_tokens >= 0 AND cache_write_tokens >= 0 AND reasoning_tokens >= 0
    ),
    CONSTRAINT user_daily_metrics_cost_check CHECK (cost >= 0),
    CONSTRAINT user_daily_metrics_model_metrics_check CHECK (jsonb_typeof(model_metrics) = 'array')
);
-- Rebuilds recompute a date range of every user.
CREATE INDEX user_daily_metrics_date_idx ON user_daily_metrics (table_id, date);
-- The table-wide latest change also covers changes of per-user rows alone.
CREATE INDEX user_daily_metrics_updated_at_idx ON user_daily_metrics (table_id, updated_at);
COMMENT ON TABLE user_daily_metrics IS 'One row per metrics table, user and UTC day on which the user is active or one of its runs or sessions counts: what GET /metrics?user_id= returns. The empty user_id holds the events without a user.';
COMMENT ON COLUMN user_daily_metrics.table_id IS 'The metrics table (metrics_tables.id).';
COMMENT ON COLUMN user_daily_metrics.user_id IS 'The user, or the empty string for events that name none.';
COMMENT ON COLUMN user_daily_metrics.date IS 'The UTC day.';
COMMENT ON COLUMN user_daily_metrics.id IS 'Stable id of the (table, user, day) row, distinct from the all-users row''s; kept by rebuilds.';
COMMENT ON COLUMN user_daily_metrics.agent_runs_count IS 'The user''s distinct runs of agent sessions completed that day.';
COMMENT ON COLUMN user_daily_metrics.agent_sessions_count IS 'The user''s agent sessions whose earliest event falls on that day.';
COMMENT ON COLUMN user_daily_metrics.team_runs_count IS 'The user''s distinct runs of team sessions completed that day.';
COMMENT ON COLUMN user_daily_metrics.team_sessions_count IS 'The user''s team sessions whose earliest event falls on that day.';
COMMENT ON COLUMN user_daily_metrics.workflow_runs_count IS 'The user''s distinct runs of workflow sessions completed that day.';
COMMENT ON COLUMN user_daily_metrics.workflow_sessions_count IS 'The user''s workflow sessions whose earliest event falls on that day.';
COMMENT ON COLUMN user_daily_metrics.users_count IS '1 when the (non-empty) user has an event that day, else 0.';
COMMENT ON COLUMN user_daily_metrics.input_tokens IS 'Sum over the user''s runs of the day.';
COMMENT ON COLUMN user_daily_metrics.output_tokens IS 'Sum over the user''s runs of the day.';
COMMENT ON COLUMN user_daily_metrics.total_tokens IS 'Sum over the user''s runs of the day.';
COMMENT ON COLUMN user_daily_metrics.audio_tokens IS 'Sum over the user''s runs of the day.';
COMMENT ON COLUMN user_daily_metrics.input_audio_tokens IS 'Sum over the user''s runs of the day.';
COMMENT ON COLUMN user_daily_metrics.output_audio_tokens IS 'Sum over the user''s runs of the day.';
COMMENT ON COLUMN user_daily_metrics.cached_tokens IS 'Sum over the user''s runs of the day.';
COMMENT ON COLUMN user_daily_metrics.cache_write_tokens IS 'Sum over the user''s runs of the day.';
COMMENT ON COLUMN user_daily_metrics.reasoning_tokens IS 'Sum over the user''s runs of the day.';
COMMENT ON COLUMN user_daily_metrics.cost IS 'Exact sum of the user''s run costs of the day.';
COMMENT ON COLUMN user_daily_metrics.model_metrics IS 'The user''s runs per (model, provider), in the order of daily_metrics.model_metrics.';
COMMENT ON COLUMN user_daily_metrics.created_at IS 'When the row was first written.';
COMMENT ON COLUMN user_daily_metrics.updated_at IS 'When the row''s values last changed.';

-- Rows counted before this migration have no user recorded: they are the no-user rows, and
-- every user seen on a day gets its (empty) row there, exactly what a rebuild of the migrated
-- records computes.
INSERT INTO user_daily_metrics (
    table_id, user_id, date, id,
    agent_runs_count, agent_sessions_count, team_runs_count, team_sessions_count,
    workflow_runs_count, workflow_sessions_count, users_count,
    input_tokens, output_tokens, total_tokens, audio_tokens, input_audio_tokens,
    output_audio_tokens, cached_tokens, cache_write_tokens, reasoning_tokens,
    cost, model_metrics, created_at, updated_at
)
SELECT d.table_id, '', d.date, gen_random_uuid(),
    d.agent_runs_count, d.agent_sessions_count, d.team_runs_count, d.team_sessions_count,
    d.workflow_runs_count, d.workflow_sessions_count, 0,
    d.input_tokens, d.output_tokens, d.total_tokens, d.audio_tokens, d.input_audio_tokens,
    d.output_audio_tokens, d.cached_tokens, d.cache_write_tokens, d.reasoning_tokens,
    d.cost, d.model_metrics, d.created_at, d.updated_at
FROM daily_metrics d
WHERE EXISTS (
        SELECT 1 FROM runs r WHERE r.table_id = d.table_id AND r.date = d.date
    ) OR EXISTS (
        SELECT 1 FROM sessions s WHERE s.table_id = d.table_id AND s.date = d.date
    ) OR EXISTS (
        SELECT 1 FROM day_users u
        WHERE u.table_id = d.table_id AND u.date = d.date AND u.user_id = ''
    );
INSERT INTO user_daily_metrics (table_id, user_id, date, users_count, created_at, updated_at)
SELECT u.table_id, u.user_id, u.date, 1, d.created_at, d.updated_at
FROM day_users u
JOIN daily_metrics d ON d.table_id = u.table_id AND d.date = u.date
WHERE u.user_id <> '';

CREATE TABLE metrics_refreshes (
    table_id integer NOT NULL,
    status text NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    error text,
    CONSTRAINT metrics_refreshes_pkey PRIMARY KEY (table_id),
    CONSTRAINT metrics_refreshes_table_id_fkey FOREIGN KEY (table_id) REFERENCES metrics_tables (id),
    CONSTRAINT metrics_refreshes_status_check CHECK (status IN ('running', 'completed', 'failed')),
    CONSTRAINT metrics_refreshes_finished_check CHECK ((status = 'running') = (finished_at IS NULL))
);
COMMENT ON TABLE metrics_refreshes IS 'The latest refresh of each metrics table (POST /metrics/refresh); a table without a row has never been refreshed (idle). A running refresh holds a session-level advisory lock, so a row that says running while nobody holds the lock belongs to a worker that died.';
COMMENT ON COLUMN metrics_refreshes.table_id IS 'The metrics table (metrics_tables.id).';
COMMENT ON COLUMN metrics_refreshes.status IS 'running, completed or failed.';
COMMENT ON COLUMN metrics_refreshes.started_at IS 'When the refresh started.';
COMMENT ON COLUMN metrics_refreshes.finished_at IS 'When it completed or failed; NULL while running.';
COMMENT ON COLUMN metrics_refreshes.error IS 'Why it failed, a sentence; NULL otherwise.';
