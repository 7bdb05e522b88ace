//! The published JSON Schema (`docs/events.schema.json`) is generated from the wire types the
//! decoder uses; this test fails when the two drift apart.

use std::path::PathBuf;

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/events.schema.json")
}

#[test]
fn published_schema_matches_the_wire_types() {
    let generated = serde_json::to_string_pretty(&metrics_events::json_schema()).unwrap() + "\n";
    let path = schema_path();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == generated,
        "{} is out of date with the wire types; regenerate it with \
         `UPDATE_SCHEMA=1 cargo test -p metrics-events --test it schema`",
        path.display()
    );
}

#[test]
fn schema_names_both_event_types_and_every_token_alias() {
    let schema = serde_json::to_string(&metrics_events::json_schema()).unwrap();
    for needle in [
        "agentos.session.created",
        "agentos.run.completed",
        "audio_total_tokens",
        "audio_input_tokens",
        "audio_output_tokens",
        "cache_read_tokens",
        "model_id",
    ] {
        assert!(schema.contains(needle), "schema lacks {needle}");
    }
}
