//! `metrics-query`: the actix-web service that serves AgentOS's `GET /metrics` from the
//! aggregator's daily rows, exactly as `metrics-openapi.yaml` and `metrics-api.md` say.
//!
//! - [`config`]: the typed, validated [`Settings`].
//! - [`startup`]: [`Application::build`] binds the API and admin listeners,
//!   [`Application::run_until_stopped`] serves and drains.
//! - [`routes`]: `GET /metrics`, `POST /metrics/refresh`, `GET /metrics/refresh/status`,
//!   `GET /openapi.json`, the dashboard (`/dashboard`), and the 404 and 405 fallbacks.
//! - [`error`]: [`ApiError`], the contract's `{"detail", "error_code"}` bodies.
//! - [`http1`]: the API listener's HTTP/1 server, whose connections give the errors actix-http
//!   answers by itself (a malformed, late or oversized request head) the same bodies.
//! - [`auth`]: the bearer key and JWT scope checks; [`jwt`] verifies JWTs.
//! - [`cache`]: rendered responses reused while their table is unchanged; [`listener`] learns
//!   of every committed change through PostgreSQL's `LISTEN`/`NOTIFY`; [`buffers`] keeps the
//!   buffers of the bodies that misses build, for the next miss.
//! - [`admin`]: probes, Prometheus text, and the `healthcheck` client.
//! - [`telemetry`]: the log subscriber and the metric definitions.
//!
//! The service reads, except for refreshes, which recount a table's rows under the writers' lock
//! and keep their state in the database; it never migrates.

pub mod admin;
pub mod auth;
pub mod buffers;
pub mod cache;
pub mod config;
pub mod error;
pub mod http1;
pub mod jwt;
pub mod listener;
pub mod routes;
pub mod startup;
pub mod telemetry;

pub use config::Settings;
pub use error::ApiError;
pub use startup::Application;
