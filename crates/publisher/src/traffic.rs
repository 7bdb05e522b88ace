//! Realistic synthetic traffic: sessions of agents, teams and workflows, each opened by a
//! `session.created` and followed by runs with models, tokens and cost; optionally with
//! redeliveries, re-sent runs, shuffled order and poison messages.
//!
//! The same options and seed always give the same messages, and [`Summary`] says what the rows
//! must add up to once every message is consumed.

use std::collections::BTreeSet;

use bigdecimal::BigDecimal;
use chrono::{DateTime, Duration, Utc};
use metrics_events::{Event, EventKind, RunCompleted, SessionCreated, SessionType, Tokens, Usage};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::message::{EVENT_CONTENT_TYPE, OutgoingMessage};

/// What to generate.
#[derive(Debug, Clone)]
pub struct TrafficOptions {
    /// Sessions to generate; each has 1 to `max_runs_per_session` runs.
    pub sessions: usize,
    /// The most runs of one session.
    pub max_runs_per_session: u32,
    /// Distinct users the sessions belong to.
    pub users: usize,
    /// The first instant sessions start at.
    pub start: DateTime<Utc>,
    /// Sessions start uniformly within this many days from `start`.
    pub days: u32,
    /// The CloudEvents `source`.
    pub source: String,
    /// Events per message: 1 publishes single events, more publishes batches.
    pub batch: usize,
    /// Fraction of events also delivered a second time, unchanged (redeliveries).
    pub duplicates: f64,
    /// Fraction of runs re-sent later as a new event with the same `run_id`.
    pub resent_runs: f64,
    /// Publish in random order instead of time order.
    pub shuffle: bool,
    /// Fraction of extra messages that are poison (each must end in the dead-letter queue).
    pub poison: f64,
    /// The random seed.
    pub seed: u64,
}

impl Default for TrafficOptions {
    fn default() -> Self {
        Self {
            sessions: 1000,
            max_runs_per_session: 5,
            users: 100,
            start: Utc::now() - Duration::days(7),
            days: 7,
            source: "agno://metrics-loadgen".to_owned(),
            batch: 1,
            duplicates: 0.0,
            resent_runs: 0.0,
            shuffle: false,
            poison: 0.0,
            seed: 1,
        }
    }
}

/// What the generated traffic holds, and what the rows must add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Messages to publish.
    pub messages: usize,
    /// Events in them, repeats included.
    pub events_sent: usize,
    /// Distinct events.
    pub distinct_events: usize,
    /// Events delivered twice, unchanged.
    pub redeliveries: usize,
    /// Runs re-sent as a new event.
    pub resent_runs: usize,
    /// Poison messages (each is dead-lettered).
    pub poison_messages: usize,
    /// Distinct users.
    pub users: usize,
    /// The first and last UTC day with events.
    pub first_day: String,
    /// The last UTC day with events.
    pub last_day: String,
    /// Sessions by type: agent, team, workflow.
    pub sessions: [u64; 3],
    /// Runs by session type: agent, team, workflow.
    pub runs: [u64; 3],
    /// Sum of `input_tokens`.
    pub input_tokens: i64,
    /// Sum of `output_tokens`.
    pub output_tokens: i64,
    /// Sum of `total_tokens`.
    pub total_tokens: i64,
    /// Sum of `cost`, exact.
    pub cost: String,
}

/// Generated messages and their summary.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// The messages, in publishing order.
    pub messages: Vec<OutgoingMessage>,
    /// What they hold.
    pub summary: Summary,
}

const MODELS: [(&str, Option<&str>); 5] = [
    ("gpt-4o", Some("OpenAI")),
    ("gpt-4o-mini", Some("OpenAI")),
    ("claude-sonnet-4", Some("Anthropic")),
    ("gemini-2.5-pro", Some("Google")),
    ("llama-3.1-70b", None),
];

fn type_index(session_type: SessionType) -> usize {
    match session_type {
        SessionType::Agent => 0,
        SessionType::Team => 1,
        SessionType::Workflow => 2,
    }
}

/// The distinct events of the traffic `options` describe, in time order: every session's
/// `session.created` and its runs, without the redeliveries, re-sent runs, shuffling, poison and
/// batching that [`generate`] adds. For fixtures and benchmarks that feed the aggregator or the
/// decoder directly; the same options and seed give the same events as [`generate`] carries.
pub fn events(options: &TrafficOptions) -> Vec<Event> {
    let mut events = sessions(options, &mut StdRng::seed_from_u64(options.seed));
    events.sort_by_key(|event| event.time);
    events
}

/// The sessions and their runs, in generation order.
fn sessions(options: &TrafficOptions, rng: &mut StdRng) -> Vec<Event> {
    let mut events = Vec::new();
    let span = i64::from(options.days.max(1)) * 86_400;
    for s in 0..options.sessions {
        let session_type = SessionType::ALL[rng.random_range(0..3)];
        let user = format!("user-{}", rng.random_range(0..options.users.max(1)));
        let session_id = format!("{}-session-{s}", options.seed);
        let started = options.start + Duration::seconds(rng.random_range(0..span));
        events.push(Event {
            source: options.source.clone(),
            id: format!("{}-created-{s}", options.seed),
            time: started,
            kind: EventKind::SessionCreated(SessionCreated {
                session_id: session_id.clone(),
                session_type,
                user_id: Some(user.clone()),
            }),
        });
        let mut time = started;
        for r in 0..rng.random_range(1..=options.max_runs_per_session.max(1)) {
            time += Duration::seconds(rng.random_range(1..900));
            let (model, provider) = MODELS[rng.random_range(0..MODELS.len())];
            let input = rng.random_range(50..4_000i64);
            let output = rng.random_range(10..1_500i64);
            let run_cost = BigDecimal::new(rng.random_range(1..50_000i64).into(), 6);
            events.push(Event {
                source: options.source.clone(),
                id: format!("{}-run-{s}-{r}", options.seed),
                time,
                kind: EventKind::RunCompleted(RunCompleted {
                    run_id: format!("{}-run-{s}-{r}", options.seed),
                    session_id: session_id.clone(),
                    session_type,
                    user_id: Some(user.clone()),
                    parent_run_id: None,
                    model: Some(model.to_owned()),
                    model_provider: provider.map(str::to_owned),
                    usage: Usage {
                        tokens: Tokens {
                            input_tokens: input,
                            output_tokens: output,
                            total_tokens: input + output,
                            cached_tokens: input / 4,
                            reasoning_tokens: output / 5,
                            ..Tokens::default()
                        },
                        cost: run_cost,
                    },
                }),
            });
        }
    }
    events
}

/// Generates the traffic `options` describe.
pub fn generate(options: &TrafficOptions) -> Traffic {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut summary = Summary::default();
    let mut events = sessions(options, &mut rng);
    let mut cost = BigDecimal::from(0);
    let mut users = BTreeSet::new();
    for event in &events {
        match &event.kind {
            EventKind::SessionCreated(session) => {
                summary.sessions[type_index(session.session_type)] += 1;
                users.extend(session.user_id.clone());
            }
            EventKind::RunCompleted(run) => {
                summary.runs[type_index(run.session_type)] += 1;
                summary.input_tokens += run.usage.tokens.input_tokens;
                summary.output_tokens += run.usage.tokens.output_tokens;
                summary.total_tokens += run.usage.tokens.total_tokens;
                cost += &run.usage.cost;
            }
        }
    }
    summary.distinct_events = events.len();
    summary.users = users.len();
    summary.first_day = events
        .iter()
        .map(Event::date)
        .min()
        .map(|d| d.to_string())
        .unwrap_or_default();
    summary.last_day = events
        .iter()
        .map(Event::date)
        .max()
        .map(|d| d.to_string())
        .unwrap_or_default();
    summary.cost = cost.normalized().to_string();

    // Repeats: unchanged redeliveries, and runs re-sent later under a new event id (the earlier
    // report keeps counting, so the totals do not move).
    let originals = events.len();
    for i in 0..originals {
        if rng.random_bool(options.duplicates.clamp(0.0, 1.0)) {
            events.push(events[i].clone());
            summary.redeliveries += 1;
        }
        if matches!(events[i].kind, EventKind::RunCompleted(_))
            && rng.random_bool(options.resent_runs.clamp(0.0, 1.0))
        {
            let mut resent = events[i].clone();
            resent.id = format!("{}-resent", resent.id);
            resent.time += Duration::seconds(rng.random_range(1..3_600));
            events.push(resent);
            summary.resent_runs += 1;
        }
    }
    if options.shuffle {
        events.shuffle(&mut rng);
    } else {
        events.sort_by_key(|event| event.time);
    }
    summary.events_sent = events.len();

    let encoded: Result<Vec<OutgoingMessage>, _> = if options.batch <= 1 {
        events.iter().map(OutgoingMessage::event).collect()
    } else {
        events
            .chunks(options.batch)
            .map(OutgoingMessage::batch)
            .collect()
    };
    #[expect(
        clippy::expect_used,
        reason = "generated counts are non-negative and costs have six decimals: a double holds them"
    )]
    let mut messages = encoded.expect("generated events encode");
    let poison = (messages.len() as f64 * options.poison.clamp(0.0, 1.0)).round() as usize;
    for p in 0..poison {
        let at = rng.random_range(0..=messages.len());
        messages.insert(at, poison_message(options.seed, p, options.start));
    }
    summary.poison_messages = poison;
    summary.messages = messages.len();
    Traffic { messages, summary }
}

/// One message of each kind of bad input `events.md` names, in turn. Every body is different (it
/// names the seed and the index), so the dead-letter queue can be checked message by message.
fn poison_message(seed: u64, index: usize, start: DateTime<Utc>) -> OutgoingMessage {
    let time = start.to_rfc3339();
    let run = |id: &str, time: &str, data: serde_json::Value| {
        serde_json::json!({
            "specversion": "1.0", "id": id, "source": "agno://metrics-loadgen",
            "type": "agentos.run.completed", "time": time, "data": data,
        })
        .to_string()
    };
    let id = format!("poison-{seed}-{index}");
    let body = match index % 7 {
        0 => format!("{id} is not JSON"),
        1 => format!("\"{id} is a JSON string\""),
        2 => run(
            &id,
            &time,
            serde_json::json!({"session_id": "s", "session_type": "agent"}),
        ),
        3 => run(
            &id,
            &time,
            serde_json::json!({"run_id": id, "session_id": "s", "session_type": "agent",
                "metrics": {"input_tokens": -1}}),
        ),
        4 => run(
            &id,
            "yesterday",
            serde_json::json!({"run_id": id, "session_id": "s",
            "session_type": "agent"}),
        ),
        5 => run(
            &id,
            "1999-12-31T23:00:00Z",
            serde_json::json!({"run_id": id,
            "session_id": "s", "session_type": "agent"}),
        ),
        _ => run(
            &id,
            &time,
            serde_json::json!({"run_id": id, "session_id": "s",
            "session_type": "crew"}),
        ),
    };
    OutgoingMessage::raw("agentos.run.completed", EVENT_CONTENT_TYPE, body)
}

#[cfg(test)]
mod tests {
    use metrics_events::{Decoded, Limits, decode_message};

    use super::*;

    #[test]
    fn traffic_is_reproducible_and_its_summary_adds_up() {
        let options = TrafficOptions {
            sessions: 50,
            duplicates: 0.2,
            resent_runs: 0.2,
            shuffle: true,
            poison: 0.05,
            batch: 10,
            seed: 7,
            ..TrafficOptions::default()
        };
        let traffic = generate(&options);
        assert_eq!(generate(&options).messages, traffic.messages);

        let mut valid = Vec::new();
        let mut poison = 0;
        for message in &traffic.messages {
            match decode_message(&message.body, &Limits::default()) {
                Ok(decoded) if decoded.events.iter().all(Result::is_ok) => {
                    valid.extend(decoded.events.into_iter().filter_map(|e| match e {
                        Ok(Decoded::Event(event)) => Some(event),
                        _ => None,
                    }))
                }
                _ => poison += 1,
            }
        }
        let summary = &traffic.summary;
        assert_eq!(poison, summary.poison_messages);
        assert_eq!(valid.len(), summary.events_sent);
        assert_eq!(
            summary.events_sent,
            summary.distinct_events + summary.redeliveries + summary.resent_runs
        );
        let sessions = valid
            .iter()
            .filter(|e| matches!(e.kind, EventKind::SessionCreated(_)))
            .map(|e| (&e.source, &e.id))
            .collect::<BTreeSet<_>>()
            .len();
        assert_eq!(sessions as u64, summary.sessions.iter().sum::<u64>());
        assert_eq!(summary.sessions.iter().sum::<u64>(), 50);
    }
}
