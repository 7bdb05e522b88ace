//! End to end: the real `metrics-ingest` and `metrics-query` binaries, started as processes on
//! free loopback ports against the real RabbitMQ and PostgreSQL (each test with its own database,
//! exchange and queue), fed over AMQP with publisher confirms and read over HTTP.
//!
//! `dashboard` drives the dashboard in headless Chromium. (`scripts/up.sh` is tested in
//! `tests/up`.)
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `scripts/test.sh` does).
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test loudly, like the tests themselves"
)]

mod dashboard;
mod hostile;
mod loadgen;
mod pipeline;
