-- The metrics tables of AgentOS Metrics: daily rows as `GET /metrics` serves them, and the
-- per-run, per-session and per-user-day records they are computed from (so that any date range
-- can be rebuilt, and so that replays and late events stay exact).

CREATE TABLE metrics_tables (
    id integer GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT metrics_tables_pkey PRIMARY KEY (id),
    CONSTRAINT metrics_tables_name_key UNIQUE (name),
    CONSTRAINT metrics_tables_name_check CHECK (name ~ '^[a-z_][a-z0-9_]{0,62}$')
);
COMMENT ON TABLE metrics_tables IS 'The metrics tables a client can pick with the `table` parameter of GET /metrics; every other table is keyed by one of these.';
COMMENT ON COLUMN metrics_tables.id IS 'Surrogate key used by the other tables.';
COMMENT ON COLUMN metrics_tables.name IS 'The name a deployment configures and a client asks for (default agno_metrics).';
COMMENT ON COLUMN metrics_tables.created_at IS 'When the first writer registered the name.';

CREATE TABLE daily_metrics (
    table_id integer NOT NULL,
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
    CONSTRAINT daily_metrics_pkey PRIMARY KEY (table_id, date),
    CONSTRAINT daily_metrics_id_key UNIQUE (id),
    CONSTRAINT daily_metrics_table_id_fkey FOREIGN KEY (table_id) REFERENCES metrics_tables (id),
    CONSTRAINT daily_metrics_counts_check CHECK (
        agent_runs_count >= 0 AND agent_sessions_count >= 0
        AND team_runs_count >= 0 AND team_sessions_count >= 0
        AND workflow_runs_count >= 0 AND workflow_sessions_count >= 0
        AND users_count >= 0
    ),
    CONSTRAINT daily_metrics_tokens_check CHECK (
        input_tokens >= 0 AND output_tokens >= 0 AND total_tokens >= 0
        AND audio_tokens >= 0 AND input_audio_tokens >= 0 AND output_audio_tokens >= 0
        AND cached_tokens >= 0 AND cache_write_tokens >= 0 AND reasoning_tokens >= 0
    ),
    CONSTRAINT daily_metrics_cost_check CHECK (cost >= 0),
    CONSTRAINT daily_metrics_model_metrics_check CHECK (jsonb_typeof(model_metrics) = 'array')
);
-- The table-wide latest change (`updated_at` of GET /metrics) is one index probe.
CREATE INDEX daily_metrics_updated_at_idx ON daily_metrics (table_id, updated_at);
COMMENT ON TABLE daily_metrics IS 'One row per metrics table and UTC day that has events: what GET /metrics returns.';
COMMENT ON COLUMN daily_metrics.table_id IS 'The metrics table (metrics_tables.id).';
COMMENT ON COLUMN daily_metrics.date IS 'The UTC day.';
COMMENT ON COLUMN daily_metrics.id IS 'Stable id of the day''s row; kept by rebuilds.';
COMMENT ON COLUMN daily_metrics.agent_runs_count IS 'Distinct runs of agent sessions completed that day.';
COMMENT ON COLUMN daily_metrics.agent_sessions_count IS 'Agent sessions whose earliest event falls on that day.';
COMMENT ON COLUMN daily_metrics.team_runs_count IS 'Distinct runs of team sessions completed that day.';
COMMENT ON COLUMN daily_metrics.team_sessions_count IS 'Team sessions whose earliest event falls on that day.';
COMMENT ON COLUMN daily_metrics.workflow_runs_count IS 'Distinct runs of workflow sessions completed that day.';
COMMENT ON COLUMN daily_metrics.workflow_sessions_count IS 'Workflow sessions whose earliest event falls on that day.';
COMMENT ON COLUMN daily_metrics.users_count IS 'Distinct non-empty user ids among all events of that day.';
COMMENT ON COLUMN daily_metrics.input_tokens IS 'Sum over the day''s runs.';
COMMENT ON COLUMN daily_metrics.output_tokens IS 'Sum over the day''s runs.';
COMMENT ON COLUMN daily_metrics.total_tokens IS 'Sum over the day''s runs.';
COMMENT ON COLUMN daily_metrics.audio_tokens IS 'Sum over the day''s runs (Agno: audio_total_tokens).';
COMMENT ON COLUMN daily_metrics.input_audio_tokens IS 'Sum over the day''s runs (Agno: audio_input_tokens).';
COMMENT ON COLUMN daily_metrics.output_audio_tokens IS 'Sum over the day''s runs (Agno: audio_output_tokens).';
COMMENT ON COLUMN daily_metrics.cached_tokens IS 'Sum over the day''s runs (Agno: cache_read_tokens).';
COMMENT ON COLUMN daily_metrics.cache_write_tokens IS 'Sum over the day''s runs.';
COMMENT ON COLUMN daily_metrics.reasoning_tokens IS 'Sum over the day''s runs.';
COMMENT ON COLUMN daily_metrics.cost IS 'Exact sum of the day''s run costs.';
COMMENT ON COLUMN daily_metrics.model_metrics IS 'Runs per (model, provider): [{model_id, model_provider, count}], count descending, then model_id and model_provider in byte order.';
COMMENT ON COLUMN daily_metrics.created_at IS 'When the row was first written.';
COMMENT ON COLUMN daily_metrics.updated_at IS 'When the row''s values last changed.';

CREATE TABLE runs (
    table_id integer NOT NULL,
    run_id text NOT NULL,
    date date NOT NULL,
    time timestamptz NOT NULL,
    source text NOT NULL,
    event_id text NOT NULL,
    session_id text NOT NULL,
    session_type text NOT NULL,
    model text,
    model_provider text,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    total_tokens bigint NOT NULL,
    audio_tokens bigint NOT NULL,
    input_audio_tokens bigint NOT NULL,
    output_audio_tokens bigint NOT NULL,
    cached_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    reasoning_tokens bigint NOT NULL,
    cost numeric NOT NULL,
    CONSTRAINT runs_pkey PRIMARY KEY (table_id, run_id),
    CONSTRAINT runs_table_id_fkey FOREIGN KEY (table_id) REFERENCES metrics_tables (id),
    CONSTRAINT runs_session_type_check CHECK (session_type IN ('agent', 'team', 'workflow')),
    CONSTRAINT runs_tokens_check CHECK (
        input_tokens >= 0 AND output_tokens >= 0 AND total_tokens >= 0
        AND audio_tokens >= 0 AND input_audio_tokens >= 0 AND output_audio_tokens >= 0
        AND cached_tokens >= 0 AND cache_write_tokens >= 0 AND reasoning_tokens >= 0
    ),
    CONSTRAINT runs_cost_check CHECK (cost >= 0)
);
CREATE INDEX runs_date_idx ON runs (table_id, date);
COMMENT ON TABLE runs IS 'One row per counted run: the winning agentos.run.completed of each run_id (earliest time, then source, then event id).';
COMMENT ON COLUMN runs.table_id IS 'The metrics table (metrics_tables.id).';
COMMENT ON COLUMN runs.run_id IS 'The run.';
COMMENT ON COLUMN runs.date IS 'UTC day of time: the day the run counts on.';
COMMENT ON COLUMN runs.time IS 'When the run completed.';
COMMENT ON COLUMN runs.source IS 'CloudEvents source of the winning event.';
COMMENT ON COLUMN runs.event_id IS 'CloudEvents id of the winning event.';
COMMENT ON COLUMN runs.session_id IS 'The session the run belongs to.';
COMMENT ON COLUMN runs.session_type IS 'agent, team or workflow: the run counter it adds to.';
COMMENT ON COLUMN runs.model IS 'Model id, when the run named one.';
COMMENT ON COLUMN runs.model_provider IS 'Model provider, when the run named one.';
COMMENT ON COLUMN runs.input_tokens IS 'The run''s own usage.';
COMMENT ON COLUMN runs.output_tokens IS 'The run''s own usage.';
COMMENT ON COLUMN runs.total_tokens IS 'The run''s own usage.';
COMMENT ON COLUMN runs.audio_tokens IS 'The run''s own usage.';
COMMENT ON COLUMN runs.input_audio_tokens IS 'The run''s own usage.';
COMMENT ON COLUMN runs.output_audio_tokens IS 'The run''s own usage.';
COMMENT ON COLUMN runs.cached_tokens IS 'The run''s own usage.';
COMMENT ON COLUMN runs.cache_write_tokens IS 'The run''s own usage.';
COMMENT ON COLUMN runs.reasoning_tokens IS 'The run''s own usage.';
COMMENT ON COLUMN runs.cost IS 'The run''s own cost.';

CREATE TABLE sessions (
    table_id integer NOT NULL,
    session_id text NOT NULL,
    date date NOT NULL,
    first_time timestamptz NOT NULL,
    session_type text NOT NULL,
    type_from_run boolean NOT NULL,
    type_time timestamptz NOT NULL,
    CONSTRAINT sessions_pkey PRIMARY KEY (table_id, session_id),
    CONSTRAINT sessions_table_id_fkey FOREIGN KEY (table_id) REFERENCES metrics_tables (id),
    CONSTRAINT sessions_session_type_check CHECK (session_type IN ('agent', 'team', 'workflow'))
);
CREATE INDEX sessions_date_idx ON sessions (table_id, date);
COMMENT ON TABLE sessions IS 'One row per counted session, on the day of its earliest event.';
COMMENT ON COLUMN sessions.table_id IS 'The metrics table (metrics_tables.id).';
COMMENT ON COLUMN sessions.session_id IS 'The session.';
COMMENT ON COLUMN sessions.date IS 'UTC day of first_time: the day the session counts on.';
COMMENT ON COLUMN sessions.first_time IS 'Time of the earliest event seen for the session.';
COMMENT ON COLUMN sessions.session_type IS 'agent, team or workflow: the session counter it adds to.';
COMMENT ON COLUMN sessions.type_from_run IS 'False when session_type comes from an agentos.session.created, true when from a run (no session.created seen).';
COMMENT ON COLUMN sessions.type_time IS 'Time of the event session_type was taken from (the earliest of its kind).';

CREATE TABLE day_users (
    table_id integer NOT NULL,
    date date NOT NULL,
    user_id text NOT NULL,
    CONSTRAINT day_users_pkey PRIMARY KEY (table_id, date, user_id),
    CONSTRAINT day_users_table_id_fkey FOREIGN KEY (table_id) REFERENCES metrics_tables (id)
);
COMMENT ON TABLE day_users IS 'The distinct users of each day''s events; the empty user_id marks a day with events that named no user.';
COMMENT ON COLUMN day_users.table_id IS 'The metrics table (metrics_tables.id).';
COMMENT ON COLUMN day_users.date IS 'The UTC day of the events.';
COMMENT ON COLUMN day_users.user_id IS 'A user id named by an event of that day, or the empty string.';
