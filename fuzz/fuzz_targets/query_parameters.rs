//! The query string of `GET /metrics` as `metrics-query` parses it, on arbitrary input: it never
//! panics, and a refusal is only ever the contract's 422 or 400.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metrics_query::ApiError;
use metrics_query::routes::metrics::MetricsQuery;

fuzz_target!(|query: &str| {
    let range = MetricsQuery::parse(query).and_then(|parsed| parsed.range());
    match range {
        Ok(range) => {
            if let (Some(start), Some(end)) = (range.start, range.end) {
                assert!(start <= end);
            }
        }
        Err(ApiError::Validation(_) | ApiError::BadRequest(_)) => {}
        Err(other) => panic!("unexpected refusal: {other:?}"),
    }
});
