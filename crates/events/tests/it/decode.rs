//! Decoding, one test per rule of `events.md`.

use bigdecimal::BigDecimal;
use chrono::{DateTime, NaiveDate, Utc};
use metrics_events::{
    Decoded, Event, EventError, EventKind, Ignored, Limits, MessageError, RunCompleted,
    SessionCreated, SessionType, Tokens, Usage, decode_message, encode, encode_batch,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

fn decode_one(value: &Value) -> Result<Decoded, EventError> {
    let body = serde_json::to_vec(value).unwrap();
    let mut message = decode_message(&body, &Limits::default()).unwrap();
    assert!(!message.is_batch);
    assert_eq!(message.events.len(), 1);
    message.events.remove(0)
}

fn error_of(value: &Value) -> String {
    decode_one(value).unwrap_err().to_string()
}

fn session_created() -> Value {
    json!({
        "specversion": "1.0",
        "id": "evt-1",
        "source": "agno://app",
        "type": "agentos.session.created",
        "time": "2025-07-31T10:00:00Z",
        "data": {"session_id": "s-1", "session_type": "agent", "user_id": "u-1", "agent_id": "a"}
    })
}

fn run_completed() -> Value {
    json!({
        "specversion": "1.0",
        "id": "evt-2",
        "source": "agno://app",
        "type": "agentos.run.completed",
        "time": "2025-07-31T10:05:00.123456789+02:00",
        "datacontenttype": "application/json",
        "data": {
            "run_id": "r-1",
            "session_id": "s-1",
            "session_type": "team",
            "user_id": null,
            "parent_run_id": "r-0",
            "model": "gpt-4o",
            "model_provider": "OpenAI",
            "metrics": {
                "input_tokens": 100,
                "output_tokens": 40,
                "audio_total_tokens": 7,
                "audio_input_tokens": 3,
                "audio_output_tokens": 4,
                "cache_read_tokens": 11,
                "cache_write_tokens": 5,
                "reasoning_tokens": 9,
                "cost": 0.0125,
                "duration": 1.5,
                "time_to_first_token": 0.2
            }
        }
    })
}

#[test]
fn session_created_decodes_to_its_domain_event() {
    assert_eq!(
        decode_one(&session_created()),
        Ok(Decoded::Event(Event {
            source: "agno://app".to_owned(),
            id: "evt-1".to_owned(),
            time: utc("2025-07-31T10:00:00Z"),
            kind: EventKind::SessionCreated(SessionCreated {
                session_id: "s-1".to_owned(),
                session_type: SessionType::Agent,
                user_id: Some("u-1".to_owned()),
            }),
        }))
    );
}

#[test]
fn run_completed_reads_agnos_metric_names_and_derives_total_tokens() {
    assert_eq!(
        decode_one(&run_completed()),
        Ok(Decoded::Event(Event {
            source: "agno://app".to_owned(),
            id: "evt-2".to_owned(),
            // Offset applied, nanoseconds truncated to the microseconds PostgreSQL keeps.
            time: utc("2025-07-31T08:05:00.123456Z"),
            kind: EventKind::RunCompleted(RunCompleted {
                run_id: "r-1".to_owned(),
                session_id: "s-1".to_owned(),
                session_type: SessionType::Team,
                user_id: None,
                parent_run_id: Some("r-0".to_owned()),
                model: Some("gpt-4o".to_owned()),
                model_provider: Some("OpenAI".to_owned()),
                usage: Usage {
                    tokens: Tokens {
                        input_tokens: 100,
                        output_tokens: 40,
                        total_tokens: 140,
                        audio_tokens: 7,
                        input_audio_tokens: 3,
                        output_audio_tokens: 4,
                        cached_tokens: 11,
                        cache_write_tokens: 5,
                        reasoning_tokens: 9,
                    },
                    cost: "0.0125".parse::<BigDecimal>().unwrap(),
                },
            }),
        }))
    );
}

#[test]
fn contract_metric_names_are_read_alike() {
    let mut event = run_completed();
    event["data"]["metrics"] = json!({
        "input_tokens": 1, "output_tokens": 2, "total_tokens": 30, "audio_tokens": 4,
        "input_audio_tokens": 5, "output_audio_tokens": 6, "cached_tokens": 7,
        "cache_write_tokens": 8, "reasoning_tokens": 9
    });
    let Ok(Decoded::Event(Event {
        kind: EventKind::RunCompleted(run),
        ..
    })) = decode_one(&event)
    else {
        panic!("not a run");
    };
    assert_eq!(
        run.usage,
        Usage {
            tokens: Tokens {
                input_tokens: 1,
                output_tokens: 2,
                total_tokens: 30,
                audio_tokens: 4,
                input_audio_tokens: 5,
                output_audio_tokens: 6,
                cached_tokens: 7,
                cache_write_tokens: 8,
                reasoning_tokens: 9,
            },
            cost: BigDecimal::from(0),
        }
    );
}

#[test]
fn a_name_and_its_alias_must_agree() {
    let mut event = run_completed();
    event["data"]["metrics"]["cached_tokens"] = json!(12);
    assert_eq!(
        error_of(&event),
        "event `evt-2`: field `data.metrics.cached_tokens`: 12 disagrees with its alias \
         `cache_read_tokens` (11)"
    );
    event["data"]["metrics"]["cached_tokens"] = json!(11);
    assert!(decode_one(&event).is_ok());
}

#[test]
fn model_id_is_an_alias_of_model() {
    let mut event = run_completed();
    let data = event["data"].as_object_mut().unwrap();
    data.remove("model");
    data.remove("model_provider");
    data.insert("model_id".to_owned(), json!("claude"));
    let Ok(Decoded::Event(Event {
        kind: EventKind::RunCompleted(run),
        ..
    })) = decode_one(&event)
    else {
        panic!("not a run");
    };
    assert_eq!(
        (run.model, run.model_provider),
        (Some("claude".to_owned()), None)
    );
    event["data"]["model"] = json!("gpt");
    assert_eq!(
        error_of(&event),
        "event `evt-2`: field `data.model`: `gpt` disagrees with its alias `model_id` (`claude`)"
    );
}

#[test]
fn the_day_is_the_utc_date_of_any_offset() {
    let mut event = session_created();
    for (time, date) in [
        ("2025-07-31T23:30:00-02:00", "2025-08-01"),
        ("2025-08-01T01:30:00+05:30", "2025-07-31"),
        ("2025-07-31T00:00:00Z", "2025-07-31"),
        ("2025-07-31T23:59:59.999999z", "2025-07-31"),
    ] {
        event["time"] = json!(time);
        let Ok(Decoded::Event(decoded)) = decode_one(&event) else {
            panic!("{time} refused");
        };
        assert_eq!(decoded.date(), date.parse::<NaiveDate>().unwrap(), "{time}");
    }
}

#[test]
fn times_without_offset_or_outside_the_years_2000_to_2999_are_refused() {
    let mut event = session_created();
    event["time"] = json!("2025-07-31T10:00:00");
    assert_eq!(
        error_of(&event),
        "event `evt-1`: field `time`: is not an RFC 3339 timestamp with an offset (premature end \
         of input)"
    );
    for (time, day) in [
        ("1999-12-31T23:59:59Z", "1999-12-31"),
        ("2000-01-01T00:30:00+01:00", "1999-12-31"),
        ("3000-01-01T00:00:00Z", "3000-01-01"),
        ("9999-12-31T23:59:59Z", "9999-12-31"),
        ("0000-01-01T00:00:00Z", "0000-01-01"),
    ] {
        event["time"] = json!(time);
        assert_eq!(
            error_of(&event),
            format!(
                "event `evt-1`: field `time`: falls on {day} (UTC), outside 2000-01-01 to \
                 2999-12-31"
            ),
            "{time}"
        );
    }
}

#[test]
fn unknown_types_are_ignored() {
    let mut event = session_created();
    event["type"] = json!("agentos.tool.called");
    event["data"] = json!("anything");
    assert_eq!(
        decode_one(&event),
        Ok(Decoded::Ignored(Ignored {
            source: "agno://app".to_owned(),
            id: "evt-1".to_owned(),
            event_type: "agentos.tool.called".to_owned(),
        }))
    );
}

#[test]
fn every_required_attribute_is_required() {
    for attribute in ["specversion", "id", "source", "type", "time"] {
        let mut event = session_created();
        event.as_object_mut().unwrap().remove(attribute);
        let expected = if attribute == "id" {
            "event: missing field `id`".to_owned()
        } else {
            format!("event `evt-1`: missing field `{attribute}`")
        };
        assert_eq!(error_of(&event), expected);
    }
    let mut event = session_created();
    event.as_object_mut().unwrap().remove("data");
    assert_eq!(error_of(&event), "event `evt-1`: field `data`: is required");
    for field in ["session_id", "session_type"] {
        let mut event = session_created();
        event["data"].as_object_mut().unwrap().remove(field);
        assert_eq!(
            error_of(&event),
            format!("event `evt-1`: field `data`: missing field `{field}`")
        );
    }
    for field in ["run_id", "session_id", "session_type"] {
        let mut event = run_completed();
        event["data"].as_object_mut().unwrap().remove(field);
        assert_eq!(
            error_of(&event),
            format!("event `evt-2`: field `data`: missing field `{field}`")
        );
    }
}

#[test]
fn wrong_types_and_values_name_their_field() {
    let cases = [
        (
            "/specversion",
            json!("0.3"),
            "field `specversion`: `0.3` is not supported (expected `1.0`)",
        ),
        ("/source", json!(""), "field `source`: must not be empty"),
        (
            "/data/run_id",
            json!(""),
            "field `data.run_id`: must not be empty",
        ),
        (
            "/data/run_id",
            json!(42),
            "field `data.run_id`: invalid type: integer `42`, expected a string",
        ),
        (
            "/data/session_type",
            json!("crew"),
            "field `data.session_type`: unknown variant `crew`, expected one of `agent`, `team`, `workflow`",
        ),
        (
            "/data/metrics/input_tokens",
            json!(-5),
            "field `data.metrics.input_tokens`: invalid value: integer `-5`, expected u64",
        ),
        (
            "/data/metrics/output_tokens",
            json!("40"),
            "field `data.metrics.output_tokens`: invalid type: string \"40\", expected u64",
        ),
        (
            "/data/metrics/reasoning_tokens",
            json!(1.5),
            "field `data.metrics.reasoning_tokens`: invalid type: floating point `1.5`, expected u64",
        ),
        (
            "/data/metrics/cache_write_tokens",
            json!(u64::MAX),
            "field `data.metrics.cache_write_tokens`: is over the largest count, 9223372036854775807",
        ),
        (
            "/data/metrics/cost",
            json!(-0.5),
            "field `data.metrics.cost`: -0.5 is negative; a cost is a non-negative number",
        ),
        (
            "/data/metrics",
            json!([1]),
            "field `data.metrics`: is a JSON array, not an object",
        ),
        (
            "/data",
            json!([]),
            "field `data`: is a JSON array, not an object",
        ),
    ];
    for (pointer, value, reason) in cases {
        let mut event = run_completed();
        *event.pointer_mut(pointer).unwrap() = value;
        assert_eq!(
            error_of(&event),
            format!("event `evt-2`: {reason}"),
            "{pointer}"
        );
    }
}

#[test]
fn empty_or_null_user_ids_mean_no_user() {
    for user_id in [json!(""), Value::Null] {
        let mut event = session_created();
        event["data"]["user_id"] = user_id;
        let Ok(Decoded::Event(decoded)) = decode_one(&event) else {
            panic!("refused");
        };
        assert_eq!(decoded.user_id(), None);
    }
}

#[test]
fn ids_and_sources_over_their_limits_are_refused() {
    let long = "x".repeat(257);
    for (pointer, field) in [
        ("/id", "id"),
        ("/data/session_id", "data.session_id"),
        ("/data/run_id", "data.run_id"),
        ("/data/parent_run_id", "data.parent_run_id"),
        ("/data/user_id", "data.user_id"),
        ("/data/model", "data.model"),
        ("/data/model_provider", "data.model_provider"),
    ] {
        let mut event = run_completed();
        *event.pointer_mut(pointer).unwrap() = json!(long);
        let error = decode_one(&event).unwrap_err();
        assert_eq!(error.field.as_deref(), Some(field));
        assert_eq!(error.reason, "is longer than the limit of 256 characters");
    }
    let mut event = run_completed();
    event["source"] = json!("s".repeat(1025));
    assert_eq!(
        error_of(&event),
        "event `evt-2`: field `source`: is longer than the limit of 1024 characters"
    );
    // Characters, not bytes: 256 three-byte characters are within the limit.
    event["source"] = json!("agno");
    event["data"]["run_id"] = json!("é".repeat(256));
    assert!(decode_one(&event).is_ok());
}

#[test]
fn a_long_id_is_shortened_when_quoted() {
    let mut event = run_completed();
    event["id"] = json!("i".repeat(10_000));
    let message = error_of(&event);
    assert_eq!(
        message,
        format!(
            "event `{}...`: field `id`: is longer than the limit of 256 characters",
            "i".repeat(64)
        )
    );
}

#[test]
fn whole_message_problems_refuse_the_message() {
    let limits = Limits::default();
    let too_large = vec![b' '; limits.max_body_bytes + 1];
    assert_eq!(
        decode_message(&too_large, &limits).unwrap_err().to_string(),
        "message body of 1048577 bytes is over the limit of 1048576 bytes"
    );
    assert!(matches!(
        decode_message(b"{not json", &limits),
        Err(MessageError::NotJson(_))
    ));
    assert_eq!(
        decode_message(b"\"hello\"", &limits)
            .unwrap_err()
            .to_string(),
        "message body is a JSON string, not an event object or a batch array"
    );
    let batch = encode_batch(&vec![sample_event(); 1001]).unwrap();
    assert_eq!(
        decode_message(&serde_json::to_vec(&batch).unwrap(), &limits)
            .unwrap_err()
            .to_string(),
        "batch of 1001 events is over the limit of 1000 events"
    );
    let nested = "[".repeat(100_000) + &"]".repeat(100_000);
    assert!(matches!(
        decode_message(nested.as_bytes(), &limits),
        Err(MessageError::NotJson(_))
    ));
}

#[test]
fn an_invalid_batch_element_is_refused_alone() {
    let mut bad = run_completed();
    bad["data"]["metrics"]["input_tokens"] = json!(-1);
    let body = serde_json::to_vec(&json!([session_created(), bad, 7, run_completed()])).unwrap();
    let message = decode_message(&body, &Limits::default()).unwrap();
    assert!(message.is_batch);
    let rendered: Vec<Result<String, String>> = message
        .events
        .iter()
        .map(|item| {
            item.as_ref()
                .map(|decoded| decoded.id().to_owned())
                .map_err(ToString::to_string)
        })
        .collect();
    assert_eq!(
        rendered,
        vec![
            Ok("evt-1".to_owned()),
            Err(
                "batch element 1 (event `evt-2`): field `data.metrics.input_tokens`: invalid \
                 value: integer `-1`, expected u64"
                    .to_owned()
            ),
            Err("batch element 2: is a JSON number, not an event object".to_owned()),
            Ok("evt-2".to_owned()),
        ]
    );
}

fn sample_event() -> Event {
    match decode_one(&run_completed()) {
        Ok(Decoded::Event(event)) => event,
        other => panic!("{other:?}"),
    }
}

fn arb_id() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.:/-]{1,40}"
}

fn arb_event() -> impl Strategy<Value = Event> {
    let session_type = prop_oneof![
        Just(SessionType::Agent),
        Just(SessionType::Team),
        Just(SessionType::Workflow)
    ];
    let usage = (
        prop::array::uniform9(0..i64::MAX / 4),
        0u32..1_000_000,
        0u32..6,
    )
        .prop_map(|(tokens, mantissa, scale)| Usage {
            tokens: Tokens::from_counts(tokens),
            cost: format!("{mantissa}e-{scale}")
                .parse::<f64>()
                .unwrap()
                .to_string()
                .parse()
                .unwrap(),
        });
    let kind = prop_oneof![
        (arb_id(), session_type.clone(), prop::option::of(arb_id())).prop_map(
            |(session_id, session_type, user_id)| EventKind::SessionCreated(SessionCreated {
                session_id,
                session_type,
                user_id,
            })
        ),
        (
            (arb_id(), arb_id(), session_type),
            (
                prop::option::of(arb_id()),
                prop::option::of(arb_id()),
                prop::option::of(arb_id()),
                prop::option::of(arb_id())
            ),
            usage
        )
            .prop_map(
                |(
                    (run_id, session_id, session_type),
                    (user_id, parent_run_id, model, model_provider),
                    usage,
                )| {
                    EventKind::RunCompleted(RunCompleted {
                        run_id,
                        session_id,
                        session_type,
                        user_id,
                        parent_run_id,
                        model,
                        model_provider,
                        usage,
                    })
                }
            ),
    ];
    (
        arb_id(),
        arb_id(),
        946_684_800_000_000i64..32_503_679_999_999_999,
        kind,
    )
        .prop_map(|(source, id, micros, kind)| Event {
            source,
            id,
            time: DateTime::from_timestamp_micros(micros).unwrap(),
            kind,
        })
}

proptest! {
    #[test]
    fn encoding_then_decoding_gives_the_event_back(events in prop::collection::vec(arb_event(), 1..8)) {
        let body = serde_json::to_vec(&encode_batch(&events).unwrap()).unwrap();
        let decoded: Vec<Decoded> = decode_message(&body, &Limits::default())
            .unwrap()
            .events
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let expected: Vec<Decoded> = events.iter().cloned().map(Decoded::Event).collect();
        prop_assert_eq!(decoded, expected);
        for event in &events {
            let single = serde_json::to_vec(&encode(event).unwrap()).unwrap();
            let message = decode_message(&single, &Limits::default()).unwrap();
            prop_assert_eq!(message.events, vec![Ok(Decoded::Event(event.clone()))]);
        }
    }
}

/// A reason quotes what it refuses; a hostile value must not make it (and so the dead-letter
/// header, which an AMQP content-header frame has to hold whole) as large as the body.
#[test]
fn reasons_quoting_a_huge_value_stay_short() {
    let huge = "x".repeat(500_000);
    let cases = [
        ("/specversion", json!(huge)),
        ("/data/session_type", json!(huge)),
        ("/data/metrics/input_tokens", json!(huge)),
        ("/data/metrics/cost", json!(huge)),
        ("/time", json!(huge)),
    ];
    for (pointer, value) in cases {
        let mut event = run_completed();
        *event.pointer_mut(pointer).unwrap() = value;
        let message = error_of(&event);
        assert!(
            message.chars().count() <= 1024,
            "{pointer}: a reason of {} characters",
            message.chars().count()
        );
        assert!(message.starts_with("event `evt-2`: field `"), "{pointer}");
    }
    let mut event = run_completed();
    event["data"]["session_type"] = json!(huge);
    assert_eq!(
        error_of(&event),
        format!(
            "event `evt-2`: field `data.session_type`: unknown variant `{}...",
            "x".repeat(512 - "unknown variant `".len())
        )
    );
}

/// Nesting beyond the 128 levels serde_json allows is refused as not JSON, never by the stack,
/// wherever it sits in an event; nesting within it in a field the decoder ignores is accepted.
#[test]
fn deep_nesting_inside_an_event_is_refused_without_overflowing() {
    let limits = Limits::default();
    for depth in [120, 200, 100_000] {
        let nested = "[".repeat(depth) + &"]".repeat(depth);
        for field in ["note", "metrics"] {
            let body = format!(
                r#"{{"specversion":"1.0","id":"e","source":"s","type":"agentos.run.completed","time":"2025-07-31T10:00:00Z","data":{{"run_id":"r","session_id":"s","session_type":"agent","{field}":{nested}}}}}"#
            );
            let result = decode_message(body.as_bytes(), &limits);
            match (depth, field) {
                (120, "note") => assert!(matches!(
                    result.unwrap().events.as_slice(),
                    [Ok(Decoded::Event(_))]
                )),
                (120, _) => assert_eq!(
                    result.unwrap().events[0].as_ref().unwrap_err().to_string(),
                    "event `e`: field `data.metrics`: is a JSON array, not an object"
                ),
                _ => assert!(
                    matches!(result, Err(MessageError::NotJson(_))),
                    "{depth} {field}"
                ),
            }
        }
    }
}

/// A number beyond a double's range (`1e400`) is not JSON any event can be read from, read or
/// not: a body with one is refused as not JSON, whatever the type of its event, like one nesting
/// past the parser's limit, batch or not.
#[test]
fn numbers_beyond_a_double_are_refused_wherever_they_sit() {
    let limits = Limits::default();
    let with_huge = |event: &Value| {
        let text = serde_json::to_string(event).unwrap();
        text.replacen("\"data\":{", "\"data\":{\"note\":1e400,", 1)
    };
    let mut other = session_created();
    other["type"] = json!("agentos.tool.called");
    for event in [session_created(), run_completed(), other] {
        let body = with_huge(&event);
        assert!(
            matches!(
                decode_message(body.as_bytes(), &limits),
                Err(MessageError::NotJson(_))
            ),
            "{body}"
        );
    }
    // As long as it stays finite, an exponent is a number like any other.
    let mut tiny = run_completed();
    tiny["data"]["metrics"]["cost"] = json!(1e-300);
    let body = serde_json::to_string(&tiny).unwrap();
    assert!(body.contains("1e-300"), "{body}");
    let message = decode_message(body.as_bytes(), &limits).unwrap();
    assert!(matches!(message.events.as_slice(), [Ok(Decoded::Event(_))]));

    let batch = format!(
        "[{},{},{}]",
        serde_json::to_string(&session_created()).unwrap(),
        with_huge(&run_completed()),
        serde_json::to_string(&run_completed()).unwrap()
    );
    let refused = decode_message(batch.as_bytes(), &limits).unwrap_err();
    assert!(matches!(refused, MessageError::NotJson(_)), "{refused}");
    let reason = std::error::Error::source(&refused).unwrap().to_string();
    assert!(reason.starts_with("number out of range"), "{reason}");
}

/// Absurd dates in every shape: the years 0 and 9999, the edges of chrono's range, and times
/// that are not dates at all.
#[test]
fn absurd_times_are_refused_with_their_reason() {
    let mut event = session_created();
    for time in [
        "0000-01-01T00:00:00+00:00",
        "9999-12-31T23:59:59+00:00",
        "0001-01-01T00:00:00-23:59",
        "9999-12-31T23:59:59+23:59",
    ] {
        event["time"] = json!(time);
        let error = decode_one(&event).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("time"), "{time}");
        assert!(error.reason.starts_with("falls on "), "{time}: {error}");
    }
    for time in [
        "+10000-01-01T00:00:00Z",
        "-0001-01-01T00:00:00Z",
        "2025-02-30T00:00:00Z",
        "2025-07-31T24:00:01Z",
        "",
        "2025-07-31T10:00:00+99:00",
    ] {
        event["time"] = json!(time);
        let error = decode_one(&event).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("time"), "{time}");
        assert!(
            error
                .reason
                .starts_with("is not an RFC 3339 timestamp with an offset"),
            "{time}: {error}"
        );
    }
}

/// A NUL is bad input wherever it sits (`events.md`): PostgreSQL text cannot hold it, so it must
/// never reach the database. The reason names the field.
#[test]
fn a_nul_anywhere_in_an_event_is_refused_naming_the_field() {
    let cases: [(&[&str], &str); 12] = [
        (&["id"], "event `evt-2\\u0000x`: field `id`"),
        (&["source"], "event `evt-2`: field `source`"),
        (&["type"], "event `evt-2`: field `type`"),
        (&["time"], "event `evt-2`: field `time`"),
        (&["data", "run_id"], "event `evt-2`: field `data.run_id`"),
        (
            &["data", "session_id"],
            "event `evt-2`: field `data.session_id`",
        ),
        (&["data", "user_id"], "event `evt-2`: field `data.user_id`"),
        (
            &["data", "parent_run_id"],
            "event `evt-2`: field `data.parent_run_id`",
        ),
        (&["data", "model"], "event `evt-2`: field `data.model`"),
        (
            &["data", "model_provider"],
            "event `evt-2`: field `data.model_provider`",
        ),
        (&["data", "note"], "event `evt-2`: field `data.note`"),
        (
            &["data", "metrics", "tags"],
            "event `evt-2`: field `data.metrics.tags[1]`",
        ),
    ];
    for (path, prefix) in cases {
        let mut event = run_completed();
        let mut target = &mut event;
        for key in &path[..path.len() - 1] {
            target = &mut target[*key];
        }
        let last = path[path.len() - 1];
        target[last] = if last == "tags" {
            json!(["fine", "bad\u{0}"])
        } else {
            json!(format!("{}\u{0}x", target[last].as_str().unwrap_or("v")))
        };
        assert_eq!(
            error_of(&event),
            format!("{prefix}: contains a NUL character (\\u0000), which cannot be stored"),
            "{path:?}"
        );
    }
    // In a key, and in an event of a type this version ignores.
    let mut event = session_created();
    event["data"]["a\u{0}b"] = json!(1);
    assert_eq!(
        error_of(&event),
        "event `evt-1`: field `data.a\\u0000b`: contains a NUL character (\\u0000), which \
         cannot be stored"
    );
    // A huge key is quoted shortened.
    let mut event = session_created();
    event["data"][format!("{}\u{0}", "k".repeat(5000))] = json!(1);
    assert_eq!(
        error_of(&event),
        format!(
            "event `evt-1`: field `data.{}...`: contains a NUL character (\\u0000), which \
             cannot be stored",
            "k".repeat(59)
        )
    );
    let mut event = session_created();
    event["type"] = json!("agentos.other");
    event["data"]["x"] = json!("\u{0}");
    assert!(decode_one(&event).is_err());
    // An escaped backslash before `u0000` is not a NUL.
    let body = br#"{"specversion":"1.0","id":"e","source":"s","type":"agentos.session.created","time":"2025-07-31T10:00:00Z","data":{"session_id":"a\\u0000","session_type":"agent"}}"#;
    let message = decode_message(body, &Limits::default()).unwrap();
    assert!(matches!(message.events.as_slice(), [Ok(Decoded::Event(_))]));
}

/// Each element's span is its original text, byte for byte: whitespace, escapes and key order
/// as the producer wrote them; a single event's span is the whole body.
#[test]
fn spans_give_each_elements_original_bytes() {
    let first = r#"{ "specversion" : "1.0", "type":"agentos.session.created","id":"a\u00e9", "source":"s","time":"2025-07-31T10:00:00Z","data":{"session_type":"agent","session_id":"x"} }"#;
    let second = r#"{"id":"b","x":"\u0000"}"#;
    let third = r#"  7.50"#;
    let body = format!(" [\n{first} ,{second},{third}\t]\n");
    let message = decode_message(body.as_bytes(), &Limits::default()).unwrap();
    assert!(message.is_batch);
    let elements: Vec<&[u8]> = (0..3)
        .map(|index| message.element(body.as_bytes(), index).unwrap())
        .collect();
    assert_eq!(
        elements,
        [first.as_bytes(), second.as_bytes(), third.trim().as_bytes()]
    );
    assert!(message.events[0].is_ok());
    assert!(message.events[1].is_err() && message.events[2].is_err());
    assert_eq!(message.element(body.as_bytes(), 3), None);

    let single = format!("\n{first}\n");
    let message = decode_message(single.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(
        message.element(single.as_bytes(), 0),
        Some(single.as_bytes())
    );
}
