//! Encoding events back into CloudEvents JSON, for producers written in Rust and for tests.
//!
//! `decode(encode(event)) == event` for every valid event: the encoder writes the contract's
//! names and every count, so nothing is left to defaults.

use bigdecimal::ToPrimitive;
use serde_json::Value;

use crate::event::{Event, EventKind, RunCompleted, SessionCreated};
use crate::wire::{
    CloudEvent, RunCompletedData, RunCompletedType, RunMetrics, SessionCreatedData,
    SessionCreatedType, SpecVersion,
};

/// The CloudEvents structured-mode JSON of `event`.
pub fn encode(event: &Event) -> Value {
    let json = match &event.kind {
        EventKind::SessionCreated(session) => serde_json::to_value(envelope(
            event,
            SessionCreatedType::SessionCreated,
            session_data(session),
        )),
        EventKind::RunCompleted(run) => serde_json::to_value(envelope(
            event,
            RunCompletedType::RunCompleted,
            run_data(run),
        )),
    };
    // Serialising plain structs of strings and numbers into a `Value` cannot fail.
    json.unwrap_or(Value::Null)
}

fn envelope<T, D>(event: &Event, event_type: T, data: D) -> CloudEvent<T, D> {
    CloudEvent {
        specversion: SpecVersion::V1,
        id: event.id.clone(),
        source: event.source.clone(),
        event_type,
        time: event.time.fixed_offset(),
        datacontenttype: Some("application/json".to_owned()),
        data,
    }
}

/// A batch body (`application/cloudevents-batch+json`) of `events`.
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a Event>) -> Value {
    Value::Array(events.into_iter().map(encode).collect())
}

fn session_data(session: &SessionCreated) -> SessionCreatedData {
    SessionCreatedData {
        session_id: session.session_id.clone(),
        session_type: session.session_type,
        user_id: session.user_id.clone(),
        agent_id: None,
        team_id: None,
        workflow_id: None,
    }
}

fn run_data(run: &RunCompleted) -> RunCompletedData {
    let usage = &run.usage;
    let count = |value: i64| Some(value.unsigned_abs());
    RunCompletedData {
        run_id: run.run_id.clone(),
        session_id: run.session_id.clone(),
        session_type: run.session_type,
        user_id: run.user_id.clone(),
        parent_run_id: run.parent_run_id.clone(),
        model: run.model.clone(),
        model_id: None,
        model_provider: run.model_provider.clone(),
        metrics: Some(RunMetrics {
            input_tokens: count(usage.input_tokens),
            output_tokens: count(usage.output_tokens),
            total_tokens: count(usage.total_tokens),
            audio_tokens: count(usage.audio_tokens),
            input_audio_tokens: count(usage.input_audio_tokens),
            output_audio_tokens: count(usage.output_audio_tokens),
            cached_tokens: count(usage.cached_tokens),
            cache_write_tokens: count(usage.cache_write_tokens),
            reasoning_tokens: count(usage.reasoning_tokens),
            cost: usage.cost.to_f64(),
            ..RunMetrics::default()
        }),
    }
}
