//! `metrics-ingest`: consumes AgentOS events from RabbitMQ and counts them into the
//! aggregator's daily rows in PostgreSQL, exactly once in effect.
//!
//! - [`config`]: the service's settings, loaded and validated by the `metrics-service` skeleton.
//! - [`telemetry`]: the Prometheus metrics.
//! - [`topology`]: the exchange, quorum queue and dead-letter entities, declared at every connect.
//! - [`consumer`]: the delivery loop (batching, apply, dead letters, acks, reconnects).
//! - [`database`]: the pool, and `apply` and the inbox's statements on the blocking pool.
//! - [`inbox`]: the applier of the events staged in the inbox (`inbox.enabled`).
//! - [`admin`]: what `/livez`, `/readyz` and `/metrics` answer on the skeleton's admin listener.
//! - [`startup`]: [`Application`], and the `run`, `migrate` and `healthcheck` commands.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod database;
pub mod error;
pub mod inbox;
pub mod startup;
pub mod telemetry;
pub mod topology;

pub use config::Settings;
pub use error::{ConfigError, SessionError};
pub use startup::{Application, healthcheck, migrate, run};
