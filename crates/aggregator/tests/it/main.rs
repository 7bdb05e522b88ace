//! Integration tests of the aggregator against the real PostgreSQL (`TEST_DATABASE_URL`).
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test loudly, like the tests themselves"
)]

mod concurrency;
mod errors;
mod inbox;
mod migrations;
mod property;
mod read;
mod rebuild;
mod refresh;
mod rules;
mod support;
mod users;
