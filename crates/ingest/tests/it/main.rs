//! Integration tests of metrics-ingest against the real RabbitMQ and PostgreSQL: each test has
//! its own exchange, queue and database, and cleans them up.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test loudly, like the tests themselves"
)]

mod admin;
mod commands;
mod deploy;
mod faults;
mod inbox;
mod lifecycle;
mod limits;
mod memory;
mod pipeline;
mod poison;
mod support;
