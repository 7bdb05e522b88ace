//! Fixtures for the AgentOS Metrics tests. They always use the real services: a missing one
//! fails the test with a message that says how to start it, never a silent skip.
#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "fixtures run only inside tests, where failing loudly is the point"
)]

mod broker;
mod database;
pub mod deploy;
mod eventually;
pub mod private;
pub mod process;
pub mod proxy;
pub mod rows;

pub use broker::{ReceivedMessage, TestBroker};
pub use database::{TestDatabase, block_writes};
pub use eventually::eventually;
