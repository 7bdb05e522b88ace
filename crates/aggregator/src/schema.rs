// @generated automatically by Diesel CLI.

diesel::table! {
    daily_metrics (table_id, date) {
        table_id -> Int4,
        date -> Date,
        id -> Uuid,
        agent_runs_count -> Int8,
        agent_sessions_count -> Int8,
        team_runs_count -> Int8,
        team_sessions_count -> Int8,
        workflow_runs_count -> Int8,
        workflow_sessions_count -> Int8,
        users_count -> Int8,
        input_tokens -> Int8,
        output_tokens -> Int8,
        total_tokens -> Int8,
        audio_tokens -> Int8,
        input_audio_tokens -> Int8,
        output_audio_tokens -> Int8,
        cached_tokens -> Int8,
        cache_write_tokens -> Int8,
        reasoning_tokens -> Int8,
        cost -> Numeric,
        model_metrics -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        rendered -> Nullable<Text>,
    }
}

diesel::table! {
    day_users (table_id, date, user_id) {
        table_id -> Int4,
        date -> Date,
        user_id -> Text,
    }
}

diesel::table! {
    inbox (id) {
        id -> Int8,
        table_id -> Int4,
        event -> Bytea,
        element -> Bool,
        routing_key -> Text,
        properties -> Bytea,
        refused -> Nullable<Text>,
    }
}

diesel::table! {
    metrics_refreshes (table_id) {
        table_id -> Int4,
        status -> Text,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    metrics_tables (id) {
        id -> Int4,
        name -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    runs (table_id, run_id) {
        table_id -> Int4,
        run_id -> Text,
        date -> Date,
        time -> Timestamptz,
        source -> Text,
        event_id -> Text,
        session_id -> Text,
        session_type -> Text,
        model -> Nullable<Text>,
        model_provider -> Nullable<Text>,
        input_tokens -> Int8,
        output_tokens -> Int8,
        total_tokens -> Int8,
        audio_tokens -> Int8,
        input_audio_tokens -> Int8,
        output_audio_tokens -> Int8,
        cached_tokens -> Int8,
        cache_write_tokens -> Int8,
        reasoning_tokens -> Int8,
        cost -> Numeric,
        user_id -> Text,
    }
}

diesel::table! {
    sessions (table_id, session_id) {
        table_id -> Int4,
        session_id -> Text,
        date -> Date,
        first_time -> Timestamptz,
        session_type -> Text,
        type_from_run -> Bool,
        type_time -> Timestamptz,
        created_time -> Nullable<Timestamptz>,
        created_user_id -> Nullable<Text>,
        first_run_time -> Nullable<Timestamptz>,
        first_run_user_id -> Nullable<Text>,
    }
}

diesel::table! {
    user_daily_metrics (table_id, user_id, date) {
        table_id -> Int4,
        user_id -> Text,
        date -> Date,
        id -> Uuid,
        agent_runs_count -> Int8,
        agent_sessions_count -> Int8,
        team_runs_count -> Int8,
        team_sessions_count -> Int8,
        workflow_runs_count -> Int8,
        workflow_sessions_count -> Int8,
        users_count -> Int8,
        input_tokens -> Int8,
        output_tokens -> Int8,
        total_tokens -> Int8,
        audio_tokens -> Int8,
        input_audio_tokens -> Int8,
        output_audio_tokens -> Int8,
        cached_tokens -> Int8,
        cache_write_tokens -> Int8,
        reasoning_tokens -> Int8,
        cost -> Numeric,
        model_metrics -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        rendered -> Nullable<Text>,
    }
}

diesel::joinable!(daily_metrics -> metrics_tables (table_id));
diesel::joinable!(day_users -> metrics_tables (table_id));
diesel::joinable!(metrics_refreshes -> metrics_tables (table_id));
diesel::joinable!(user_daily_metrics -> metrics_tables (table_id));

diesel::allow_tables_to_appear_in_same_query!(
    daily_metrics,
    day_users,
    inbox,
    metrics_refreshes,
    metrics_tables,
    runs,
    sessions,
    user_daily_metrics,
);
