//! Integration tests of `metrics-query` against the real PostgreSQL, each service started
//! in-process on loopback, rows written through the aggregator.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test loudly, like the tests themselves"
)]

mod actix_errors;
mod admin;
mod auth;
mod binary;
mod dashboard;
mod deploy;
mod errors;
mod head_errors;
mod jwt;
mod listener;
mod metrics;
mod openapi;
mod refresh;
mod rendered;
mod support;
mod users;
