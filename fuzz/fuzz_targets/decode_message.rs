//! `metrics_events::decode_message` on arbitrary bytes, at limits small enough that libFuzzer
//! reaches them: it never panics, never accepts more than the limits allow, and every reason
//! it gives stays short enough for the dead-letter header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metrics_events::{Limits, decode_message};

/// The longest rendered reason: the quoted id (64 characters and an ellipsis), the field path
/// and the capped reason (512 and an ellipsis), with room for the fixed words.
const MAX_ERROR_CHARS: usize = 1024;

fuzz_target!(|body: &[u8]| {
    let limits = Limits {
        max_body_bytes: 4096,
        max_batch_events: 8,
        max_id_chars: 16,
        max_source_chars: 32,
    };
    match decode_message(body, &limits) {
        Ok(message) => {
            assert!(body.len() <= limits.max_body_bytes);
            assert!(message.events.len() <= limits.max_batch_events);
            assert!(message.is_batch || message.events.len() == 1);
            for event in &message.events {
                if let Err(err) = event {
                    let rendered = err.to_string();
                    assert!(rendered.chars().count() <= MAX_ERROR_CHARS, "{rendered}");
                }
            }
        }
        Err(err) => {
            let rendered = err.to_string();
            assert!(rendered.chars().count() <= MAX_ERROR_CHARS, "{rendered}");
        }
    }
});
