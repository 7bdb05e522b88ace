//! `metrics-service`: what `metrics-ingest` and `metrics-query` both stand on, written once.
//!
//! - [`config`]: settings layered from embedded defaults, a file and `METRICS_*` variables,
//!   typed and validated while they are deserialised, so a bad value stops the start naming its
//!   key; secrets stay [`secrecy::SecretString`]s and URLs are logged redacted.
//! - [`telemetry`]: the `tracing` subscriber (`RUST_LOG` over `log.level`, text or JSON).
//! - [`admin`]: the admin listener (`/livez`, `/readyz`, Prometheus `/metrics`) and the tiny HTTP
//!   client behind each binary's `healthcheck` subcommand.
//! - [`shutdown`]: SIGTERM / SIGINT cancel a token.
//! - [`text`]: error chains and bounded quotes of untrusted text.
//! - [`backoff`]: the retry policy (the `metrics-backoff` crate, re-exported).
//!
//! What a service reads, serves or counts stays in that service; this crate knows neither
//! RabbitMQ nor the metrics tables.

pub mod admin;
pub mod config;
pub mod shutdown;
pub mod telemetry;
pub mod text;

pub use metrics_backoff as backoff;
pub use text::{error_chain, truncated};
