//! The AgentOS Metrics event contract (`events.md`): CloudEvents 1.0 run and session events as
//! producers publish them, decoded and validated into domain [`Event`]s.
//!
//! This crate does no I/O. [`decode_message`] turns a message body into events (or precise
//! reasons for refusing them), [`encode`] writes an event back, and [`json_schema`] is the
//! published JSON Schema of the wire format (`docs/events.schema.json`).

mod decode;
mod encode;
mod event;
mod wire;

pub use decode::{
    Decoded, EventError, Ignored, Limits, Message, MessageError, decode_event, decode_message,
};
pub use encode::{EncodeError, encode, encode_batch};
pub use event::{
    Event, EventKind, MAX_DATE, MIN_DATE, RUN_COMPLETED, RunCompleted, SESSION_CREATED,
    SPEC_VERSION, SessionCreated, SessionType, Tokens, UnknownSessionType, Usage,
};
pub use wire::{
    CloudEvent, RunCompletedData, RunCompletedEvent, RunCompletedType, RunMetrics,
    SessionCreatedData, SessionCreatedEvent, SessionCreatedType, SpecVersion, json_schema,
};
