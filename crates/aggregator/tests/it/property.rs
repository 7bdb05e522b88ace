//! Random event sets, delivered shuffled, with duplicates and in random batches, give the same
//! rows, all-users and per-user, as any other delivery, as `rebuild`, and as the in-memory
//! reference; and each day's per-user rows add up to its all-users row.

use chrono::{DateTime, Duration, Utc};
use metrics_aggregator::{DateRange, EventOutcome, apply, rebuild};
use metrics_events::{Event, EventKind, RunCompleted, SessionCreated, SessionType, Tokens, Usage};
use metrics_test_support::TestDatabase;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use std::collections::BTreeMap;

use metrics_test_support::rows::{Day, reference_by_user, user_snapshot};

use crate::support::{reference, snapshot, stored_and_rendered, table};

/// The all-users rows the per-user rows add up to: every count, token, cost and model summed
/// per day; `users_count` is left out (a day's users are distinct, not summed).
fn sum_of_users(by_user: &BTreeMap<String, Vec<Day>>) -> Vec<Day> {
    type ModelSums = BTreeMap<(String, String), i64>;
    let mut days: BTreeMap<chrono::NaiveDate, (Day, ModelSums)> = BTreeMap::new();
    for day in by_user.values().flatten() {
        let (sum, models) = days
            .entry(day.date)
            .or_insert_with(|| (Day::empty(day.date), BTreeMap::new()));
        for (total, count) in sum.runs.iter_mut().zip(day.runs) {
            *total += count;
        }
        for (total, count) in sum.sessions.iter_mut().zip(day.sessions) {
            *total += count;
        }
        for (total, count) in sum.tokens.iter_mut().zip(day.tokens) {
            *total += count;
        }
        sum.cost += &day.cost;
        for model in &day.models {
            *models
                .entry((model.model_id.clone(), model.model_provider.clone()))
                .or_default() += model.count;
        }
    }
    days.into_values()
        .map(|(mut day, models)| {
            day.cost = day.cost.normalized();
            let mut models: Vec<_> = models
                .into_iter()
                .map(|((id, provider), count)| {
                    metrics_test_support::rows::model(&id, &provider, count)
                })
                .collect();
            models.sort_by(|a, b| {
                (b.count, &a.model_id, &a.model_provider).cmp(&(
                    a.count,
                    &b.model_id,
                    &b.model_provider,
                ))
            });
            day.models = models;
            day
        })
        .collect()
}

/// `rows` without their `users_count`, for comparing with [`sum_of_users`].
fn without_users(rows: &[Day]) -> Vec<Day> {
    rows.iter()
        .map(|day| Day {
            users: 0,
            ..day.clone()
        })
        .collect()
}

/// Few ids, users and days, so that events collide on every key.
fn arb_event(index: usize) -> impl Strategy<Value = Event> {
    let session_type = prop_oneof![
        Just(SessionType::Agent),
        Just(SessionType::Team),
        Just(SessionType::Workflow)
    ];
    let user = prop_oneof![
        Just(None),
        Just(Some(String::new())),
        (0..4u8).prop_map(|u| Some(format!("user-{u}")))
    ];
    let model = prop_oneof![
        Just((None, None)),
        Just((Some("gpt-4o".to_owned()), Some("OpenAI".to_owned()))),
        Just((Some("gpt-4o".to_owned()), None)),
        Just((Some("claude".to_owned()), Some("Anthropic".to_owned()))),
    ];
    let usage =
        (prop::array::uniform9(0..1_000i64), 0..10_000u32).prop_map(|(tokens, cents)| Usage {
            tokens: Tokens::from_counts(tokens),
            cost: format!("{cents}e-3").parse().unwrap(),
        });
    let kind = prop_oneof![
        1 => (0..6u8, session_type.clone(), user.clone()).prop_map(|(s, session_type, user_id)| {
            EventKind::SessionCreated(SessionCreated {
                session_id: format!("s{s}"),
                session_type,
                user_id: user_id.filter(|u| !u.is_empty()),
            })
        }),
        3 => (0..12u8, 0..6u8, session_type, user, model, usage).prop_map(
            |(r, s, session_type, user_id, (model, model_provider), usage)| {
                EventKind::RunCompleted(RunCompleted {
                    run_id: format!("r{r}"),
                    session_id: format!("s{s}"),
                    session_type,
                    user_id: user_id.filter(|u| !u.is_empty()),
                    parent_run_id: None,
                    model,
                    model_provider,
                    usage,
                })
            }
        ),
    ];
    // Four days around midnights, to the second, so that equal times happen too.
    (0..4 * 86_400i64 / 3_600, 0..2u8, kind).prop_map(move |(hours, source, kind)| Event {
        source: format!("agno://app-{source}"),
        id: format!("evt-{index}"),
        time: DateTime::<Utc>::from_timestamp(1_753_920_000, 0).unwrap() + Duration::hours(hours),
        kind,
    })
}

fn arb_events() -> impl Strategy<Value = Vec<Event>> {
    (1..40usize).prop_flat_map(|len| (0..len).map(arb_event).collect::<Vec<_>>())
}

/// A delivery of `events`: every event at least once, some several times, shuffled, in batches.
fn arb_delivery(events: Vec<Event>) -> impl Strategy<Value = Vec<Vec<Event>>> {
    let len = events.len();
    (
        prop::collection::vec(0..len, 0..len),
        prop::collection::vec(1..8usize, 1..40),
    )
        .prop_flat_map(move |(extra, cuts)| {
            let mut all: Vec<Event> = events.clone();
            all.extend(extra.into_iter().map(|i| events[i].clone()));
            (Just(all).prop_shuffle(), Just(cuts))
        })
        .prop_map(|(all, cuts)| {
            let mut batches = Vec::new();
            let mut rest = all.as_slice();
            for cut in cuts.into_iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (batch, tail) = rest.split_at(cut.min(rest.len()));
                batches.push(batch.to_vec());
                rest = tail;
            }
            batches
        })
}

#[test]
fn rows_depend_only_on_the_set_of_distinct_events() {
    let db = TestDatabase::migrated();
    // The runner's closure is `Fn`: the connection and the case counter live in cells.
    let conn = std::cell::RefCell::new(db.connect());
    let case = std::cell::Cell::new(0);
    let strategy = arb_events().prop_flat_map(|events| {
        (
            Just(events.clone()),
            arb_delivery(events.clone()),
            arb_delivery(events),
        )
    });
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |(events, first, second)| {
            case.set(case.get() + 1);
            let names = [
                format!("prop_{}_a", case.get()),
                format!("prop_{}_b", case.get()),
            ];
            let mut conn = conn.borrow_mut();
            let conn = &mut *conn;
            for (name, delivery) in names.iter().zip([&first, &second]) {
                let t = table(conn, name);
                let mut counted = 0;
                for batch in delivery {
                    let report = apply(conn, t, batch).unwrap();
                    counted += report
                        .outcomes
                        .iter()
                        .filter(|o| **o == EventOutcome::Counted)
                        .count();
                }
                // No more events count than there are distinct ones.
                prop_assert!(counted <= events.len());
            }
            let expected = reference(&events);
            let expected_by_user = reference_by_user(&events);
            let a = snapshot(conn, &names[0]);
            prop_assert_eq!(&a, &expected);
            prop_assert_eq!(&snapshot(conn, &names[1]), &expected);
            let a_by_user = user_snapshot(conn, &names[0]);
            prop_assert_eq!(&a_by_user, &expected_by_user);
            prop_assert_eq!(&user_snapshot(conn, &names[1]), &expected_by_user);

            // Every row keeps the JSON of its values, as a read serves it.
            for (stored, rendered) in stored_and_rendered(conn, &names[0]) {
                prop_assert_eq!(stored, Some(rendered));
            }

            // Per day, the per-user rows (the no-user rows among them) add up to the all-users
            // row in every count but users_count.
            prop_assert_eq!(without_users(&sum_of_users(&a_by_user)), without_users(&a));

            // A rebuild recomputes the same rows and so changes none of them.
            let t = table(conn, &names[0]);
            let report = rebuild(conn, t, DateRange::default()).unwrap();
            prop_assert_eq!(report, Default::default());
            prop_assert_eq!(&snapshot(conn, &names[0]), &expected);
            prop_assert_eq!(&user_snapshot(conn, &names[0]), &expected_by_user);
            Ok(())
        })
        .unwrap();
}
