//! Integration tests of the event contract: decoding, encoding and the published schema.

mod decode;
mod schema;
