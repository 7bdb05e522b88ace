//! Integration tests of the event contract: decoding, encoding and the published schema.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test loudly, like the tests themselves"
)]

mod decode;
mod schema;
