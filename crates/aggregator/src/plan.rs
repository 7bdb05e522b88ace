//! The plan of a batch: what each event changes, folded in memory over the stored state of the
//! keys the batch names. Pure: [`crate::apply`] reads that state, runs the fold and writes back
//! what it says changed (the store, `store.rs`).
//!
//! Every change to a day is made twice, to the all-users row ([`Scope::AllUsers`]) and to the row
//! of exactly one user ([`Scope::User`]), so the per-user rows of a day always add up to the
//! all-users row.

use std::collections::{BTreeMap, HashMap, HashSet};

use bigdecimal::BigDecimal;
use chrono::{DateTime, NaiveDate, Utc};
use metrics_events::{Event, EventKind, SessionType};
use serde::Deserialize;

use crate::error::ApplyError;
use crate::models::{
    DailyMetrics, DayUser, ModelCount, RunRecord, SessionRecord, StoredSessionType, TokenColumns,
};
use crate::tables::TableId;

/// What applying did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// The event changed what is counted.
    Counted,
    /// Everything it says was already counted: a redelivery, a re-sent run, or a later event of
    /// a session already counted on an earlier day by a user already seen that day.
    Duplicate,
}

/// Whose row of a day a change goes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Scope {
    /// The day's row of all users (`daily_metrics`).
    AllUsers,
    /// The day's row of one user (`user_daily_metrics`); `""` for events naming none.
    User(String),
}

impl Scope {
    /// The user of the row as its key stores it: `""` for the all-users row and for events naming
    /// no user.
    pub fn user(&self) -> &str {
        match self {
            Scope::AllUsers => "",
            Scope::User(user) => user,
        }
    }
}

/// A row of a day within a scope.
pub(crate) type DayKey = (Scope, NaiveDate);

/// The in-memory fold of a batch over the stored state of the keys it names.
#[derive(Debug)]
pub(crate) struct Plan {
    table: TableId,
    /// Each run's counted record, and whether the fold changed it.
    runs: HashMap<String, (RunRecord, bool)>,
    /// Each session's record, and whether the fold changed it.
    sessions: HashMap<String, (SessionRecord, bool)>,
    /// The (day, user) pairs not counted yet: the first event of each counts its user.
    new_users: HashSet<DayUser>,
    /// What the batch changes on each row.
    pub deltas: BTreeMap<DayKey, DayDelta>,
}

impl Plan {
    /// A fold over the stored `runs` and `sessions` of the batch's keys; `new_users` are the
    /// batch's (day, user) pairs that are not stored yet.
    pub fn new(
        table: TableId,
        runs: Vec<RunRecord>,
        sessions: Vec<SessionRecord>,
        new_users: HashSet<DayUser>,
    ) -> Self {
        Self {
            table,
            runs: runs
                .into_iter()
                .map(|run| (run.run_id.clone(), (run, false)))
                .collect(),
            sessions: sessions
                .into_iter()
                .map(|session| (session.session_id.clone(), (session, false)))
                .collect(),
            new_users,
            deltas: BTreeMap::new(),
        }
    }

    /// Applies `change` to the all-users row of `date` and to the row of `user` on it.
    fn change(&mut self, date: NaiveDate, user: &str, change: impl Fn(&mut DayDelta)) {
        change(self.deltas.entry((Scope::AllUsers, date)).or_default());
        change(
            self.deltas
                .entry((Scope::User(user.to_owned()), date))
                .or_default(),
        );
    }

    /// Folds one event into the state and the day deltas.
    pub fn observe(&mut self, event: &Event) -> EventOutcome {
        let mut counted = false;
        if let EventKind::RunCompleted(run) = &event.kind {
            let candidate = RunRecord {
                table_id: self.table.0,
                run_id: run.run_id.clone(),
                date: event.date(),
                time: event.time,
                source: event.source.clone(),
                event_id: event.id.clone(),
                session_id: run.session_id.clone(),
                session_type: StoredSessionType(run.session_type),
                model: run.model.clone(),
                model_provider: run
                    .model
                    .as_ref()
                    .map(|_| run.model_provider.clone().unwrap_or_default()),
                tokens: TokenColumns(run.usage.tokens),
                cost: run.usage.cost.clone(),
                user_id: event.user_id().unwrap_or_default().to_owned(),
            };
            counted |= self.observe_run(candidate);
        }
        counted |= self.observe_session(event);
        let user = day_user(self.table, event);
        if self.new_users.remove(&user) {
            let active = i64::from(!user.user_id.is_empty());
            self.change(user.date, &user.user_id, |delta| delta.users += active);
            counted = true;
        }
        if counted {
            EventOutcome::Counted
        } else {
            EventOutcome::Duplicate
        }
    }

    fn observe_run(&mut self, candidate: RunRecord) -> bool {
        match self.runs.get_mut(&candidate.run_id) {
            Some((stored, _)) if stored.precedence() <= candidate.precedence() => false,
            Some((stored, dirty)) => {
                let replaced = std::mem::replace(stored, candidate);
                *dirty = true;
                let current = stored.clone();
                self.add_run(&replaced, -1);
                self.add_run(&current, 1);
                true
            }
            None => {
                self.add_run(&candidate, 1);
                self.runs
                    .insert(candidate.run_id.clone(), (candidate, true));
                true
            }
        }
    }

    fn add_run(&mut self, run: &RunRecord, sign: i64) {
        self.change(run.date, &run.user_id, |delta| delta.add_run(run, sign));
    }

    fn observe_session(&mut self, event: &Event) -> bool {
        let type_from_run = matches!(event.kind, EventKind::RunCompleted(_));
        let mut observed = SessionRecord {
            table_id: self.table.0,
            session_id: event.session_id().to_owned(),
            date: event.date(),
            first_time: event.time,
            session_type: StoredSessionType(event.session_type()),
            type_from_run,
            type_time: event.time,
            created_time: None,
            created_user_id: None,
            first_run_time: None,
            first_run_user_id: None,
        };
        let user = Some(event.user_id().unwrap_or_default().to_owned());
        if type_from_run {
            observed.first_run_time = Some(event.time);
            observed.first_run_user_id = user;
        } else {
            observed.created_time = Some(event.time);
            observed.created_user_id = user;
        }
        match self.sessions.get_mut(event.session_id()) {
            None => {
                self.add_session(&observed, 1);
                self.sessions
                    .insert(observed.session_id.clone(), (observed, true));
                true
            }
            Some((stored, dirty)) => {
                let merged = merge_session(stored, &observed);
                if merged == *stored {
                    return false;
                }
                let previous = std::mem::replace(stored, merged);
                *dirty = true;
                let current = stored.clone();
                let counted_as =
                    |s: &SessionRecord| (s.date, s.session_type, s.user_id().to_owned());
                if counted_as(&previous) != counted_as(&current) {
                    self.add_session(&previous, -1);
                    self.add_session(&current, 1);
                }
                true
            }
        }
    }

    fn add_session(&mut self, session: &SessionRecord, sign: i64) {
        let index = type_index(session.session_type.0);
        self.change(session.date, session.user_id(), |delta| {
            delta.sessions[index] += sign;
        });
    }

    /// The runs the fold changed, by run id.
    pub fn changed_runs(&self) -> Vec<&RunRecord> {
        changed(&self.runs)
    }

    /// The sessions the fold changed, by session id.
    pub fn changed_sessions(&self) -> Vec<&SessionRecord> {
        changed(&self.sessions)
    }
}

/// The records marked changed, in the order of their keys.
fn changed<T>(records: &HashMap<String, (T, bool)>) -> Vec<&T> {
    let mut changed: Vec<(&String, &T)> = records
        .iter()
        .filter(|(_, (_, dirty))| *dirty)
        .map(|(key, (record, _))| (key, record))
        .collect();
    changed.sort_unstable_by_key(|(key, _)| *key);
    changed.into_iter().map(|(_, record)| record).collect()
}

/// The state of a session after also seeing `observed`: the earliest time overall, the type of
/// the earliest `session.created` (else of the earliest run), ties to the lower type, and the
/// earliest `session.created` and run with their users, ties to the lower user id.
fn merge_session(stored: &SessionRecord, observed: &SessionRecord) -> SessionRecord {
    let first_time = stored.first_time.min(observed.first_time);
    let type_key = |s: &SessionRecord| (s.type_from_run, s.type_time, s.session_type.0);
    let typed_by = if type_key(observed) < type_key(stored) {
        observed
    } else {
        stored
    };
    SessionRecord {
        table_id: stored.table_id,
        session_id: stored.session_id.clone(),
        date: first_time.date_naive(),
        first_time,
        session_type: typed_by.session_type,
        type_from_run: typed_by.type_from_run,
        type_time: typed_by.type_time,
        created_time: None,
        created_user_id: None,
        first_run_time: None,
        first_run_user_id: None,
    }
    .with_users(
        earliest(
            (&stored.created_time, &stored.created_user_id),
            (&observed.created_time, &observed.created_user_id),
        ),
        earliest(
            (&stored.first_run_time, &stored.first_run_user_id),
            (&observed.first_run_time, &observed.first_run_user_id),
        ),
    )
}

/// A time and the user seen at it, when any.
type Sighting = (Option<DateTime<Utc>>, Option<String>);

/// The earlier of two sightings (`None` is no sighting), ties to the lower user id.
fn earliest(
    a: (&Option<DateTime<Utc>>, &Option<String>),
    b: (&Option<DateTime<Utc>>, &Option<String>),
) -> Sighting {
    let key = |(time, user): (&Option<DateTime<Utc>>, &Option<String>)| {
        time.map(|time| (time, user.clone().unwrap_or_default()))
    };
    match (key(a), key(b)) {
        (Some(a), Some(b)) => {
            let (time, user) = a.min(b);
            (Some(time), Some(user))
        }
        (Some((time, user)), None) | (None, Some((time, user))) => (Some(time), Some(user)),
        (None, None) => (None, None),
    }
}

impl SessionRecord {
    fn with_users(mut self, created: Sighting, first_run: Sighting) -> Self {
        (self.created_time, self.created_user_id) = created;
        (self.first_run_time, self.first_run_user_id) = first_run;
        self
    }
}

fn type_index(session_type: SessionType) -> usize {
    match session_type {
        SessionType::Agent => 0,
        SessionType::Team => 1,
        SessionType::Workflow => 2,
    }
}

/// What a batch changes on one row.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DayDelta {
    runs: [i64; 3],
    sessions: [i64; 3],
    users: i64,
    tokens: [i128; 9],
    cost: BigDecimal,
    models: BTreeMap<(String, String), i64>,
}

impl DayDelta {
    fn add_run(&mut self, run: &RunRecord, sign: i64) {
        self.runs[type_index(run.session_type.0)] += sign;
        for (sum, count) in self.tokens.iter_mut().zip(run.tokens.0.counts()) {
            *sum += i128::from(sign) * i128::from(count);
        }
        if sign > 0 {
            self.cost += &run.cost;
        } else {
            self.cost -= &run.cost;
        }
        if let Some(model) = &run.model {
            let provider = run.model_provider.clone().unwrap_or_default();
            *self.models.entry((model.clone(), provider)).or_default() += sign;
        }
    }

    /// The row after this delta (a new row when none is `stored`), or `None` when a stored row
    /// does not change.
    ///
    /// # Errors
    ///
    /// [`ApplyError::Overflow`] when a token sum leaves the 64-bit range;
    /// [`ApplyError::StoredModels`] when the stored `model_metrics` is not a list of model counts.
    pub fn next_row(
        &self,
        table: TableId,
        date: NaiveDate,
        stored: Option<DailyMetrics>,
        now: DateTime<Utc>,
    ) -> Result<Option<DailyMetrics>, ApplyError> {
        let overflow = || ApplyError::Overflow { date };
        let is_new = stored.is_none();
        let mut row = stored.unwrap_or_else(|| DailyMetrics::empty(table.0, date, now));
        let before = row.clone();
        for (session_type, (runs, sessions)) in SessionType::ALL
            .into_iter()
            .zip(self.runs.iter().zip(&self.sessions))
        {
            *row.runs_count_mut(session_type) += runs;
            *row.sessions_count_mut(session_type) += sessions;
        }
        row.users_count += self.users;
        for (sum, delta) in row.tokens.counts_mut().into_iter().zip(self.tokens) {
            *sum = i64::try_from(i128::from(*sum) + delta).map_err(|_| overflow())?;
        }
        row.cost += &self.cost;
        if !self.models.is_empty() {
            row.model_metrics = merge_models(&row.model_metrics, &self.models)
                .map_err(|source| ApplyError::StoredModels { date, source })?;
        }
        if !is_new && row == before {
            return Ok(None);
        }
        row.updated_at = now;
        Ok(Some(row))
    }
}

/// Adds per-(model, provider) deltas to a stored `model_metrics` list and renders it in the
/// contract's order: count descending, then model id and provider in byte order (the order the
/// rebuild's `COLLATE "C"` produces).
///
/// # Errors
///
/// The JSON error when `stored` is not a list of model counts: a row the fold cannot trust, never
/// taken as empty and written back.
fn merge_models(
    stored: &serde_json::Value,
    deltas: &BTreeMap<(String, String), i64>,
) -> Result<serde_json::Value, serde_json::Error> {
    let mut counts: BTreeMap<(String, String), i64> = Vec::<ModelCount>::deserialize(stored)?
        .into_iter()
        .map(|model| ((model.model_id, model.model_provider), model.count))
        .collect();
    for (key, delta) in deltas {
        *counts.entry(key.clone()).or_default() += delta;
    }
    let mut models: Vec<ModelCount> = counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|((model_id, model_provider), count)| ModelCount {
            model_id,
            model_provider,
            count,
        })
        .collect();
    models.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.model_id.cmp(&b.model_id))
            .then_with(|| a.model_provider.cmp(&b.model_provider))
    });
    serde_json::to_value(models)
}

/// The (day, user) pair an event makes active; `""` when it names no user.
pub(crate) fn day_user(table: TableId, event: &Event) -> DayUser {
    DayUser {
        table_id: table.0,
        date: event.date(),
        user_id: event.user_id().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use metrics_events::{RunCompleted, SessionCreated, Tokens, Usage};
    use serde_json::json;

    use super::*;

    const TABLE: TableId = TableId(1);

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 7, day, hour, 0, 0).unwrap()
    }

    fn run(id: &str, time: DateTime<Utc>, run_id: &str, user: Option<&str>) -> Event {
        Event {
            source: "agno://test".to_owned(),
            id: id.to_owned(),
            time,
            kind: EventKind::RunCompleted(RunCompleted {
                run_id: run_id.to_owned(),
                session_id: format!("s-{run_id}"),
                session_type: SessionType::Team,
                user_id: user.map(str::to_owned),
                parent_run_id: None,
                model: Some("gpt-4o".to_owned()),
                model_provider: None,
                usage: Usage {
                    tokens: Tokens::from_counts([10, 20, 30, 1, 2, 3, 4, 5, 6]),
                    cost: "0.25".parse().unwrap(),
                },
            }),
        }
    }

    fn session(id: &str, time: DateTime<Utc>, session_id: &str, user: Option<&str>) -> Event {
        Event {
            source: "agno://test".to_owned(),
            id: id.to_owned(),
            time,
            kind: EventKind::SessionCreated(SessionCreated {
                session_id: session_id.to_owned(),
                session_type: SessionType::Workflow,
                user_id: user.map(str::to_owned),
            }),
        }
    }

    /// A plan over nothing stored, to which every (day, user) of `events` is new.
    fn fresh(events: &[Event]) -> Plan {
        let users = events.iter().map(|event| day_user(TABLE, event)).collect();
        Plan::new(TABLE, Vec::new(), Vec::new(), users)
    }

    fn day(n: u32) -> NaiveDate {
        at(n, 0).date_naive()
    }

    fn delta(plan: &Plan, scope: Scope, date: NaiveDate) -> &DayDelta {
        &plan.deltas[&(scope, date)]
    }

    #[test]
    fn a_run_counts_once_on_its_day_for_all_users_and_its_user() {
        let event = run("e1", at(1, 9), "r1", Some("ada"));
        let mut plan = fresh(std::slice::from_ref(&event));
        assert_eq!(plan.observe(&event), EventOutcome::Counted);
        assert_eq!(plan.observe(&event), EventOutcome::Duplicate);
        for scope in [Scope::AllUsers, Scope::User("ada".to_owned())] {
            let delta = delta(&plan, scope, day(1));
            assert_eq!(delta.runs, [0, 1, 0]);
            assert_eq!(delta.sessions, [0, 1, 0]);
            assert_eq!(delta.users, 1);
            assert_eq!(delta.tokens, [10, 20, 30, 1, 2, 3, 4, 5, 6]);
            assert_eq!(delta.cost, "0.25".parse::<BigDecimal>().unwrap());
            let models = BTreeMap::from([(("gpt-4o".to_owned(), String::new()), 1)]);
            assert_eq!(delta.models, models);
        }
        assert_eq!(plan.changed_runs().len(), 1);
        assert_eq!(plan.changed_sessions().len(), 1);
    }

    #[test]
    fn an_earlier_report_of_a_stored_run_moves_its_counts_to_its_day() {
        let late = run("e2", at(3, 9), "r1", Some("ada"));
        let early = run("e1", at(1, 9), "r1", Some("bob"));
        let mut stored = fresh(std::slice::from_ref(&late));
        stored.observe(&late);
        let stored_run = stored.changed_runs()[0].clone();
        let mut plan = Plan::new(TABLE, vec![stored_run], Vec::new(), HashSet::new());
        assert_eq!(plan.observe(&early), EventOutcome::Counted);
        assert_eq!(plan.observe(&late), EventOutcome::Duplicate);
        assert_eq!(delta(&plan, Scope::AllUsers, day(3)).runs, [0, -1, 0]);
        assert_eq!(delta(&plan, Scope::AllUsers, day(1)).runs, [0, 1, 0]);
        let ada = delta(&plan, Scope::User("ada".to_owned()), day(3));
        assert_eq!((ada.runs, ada.tokens[0]), ([0, -1, 0], -10));
        assert_eq!(
            delta(&plan, Scope::User("bob".to_owned()), day(1)).runs,
            [0, 1, 0]
        );
        assert_eq!(plan.changed_runs()[0].event_id, "e1");
    }

    #[test]
    fn a_session_counts_on_its_earliest_day_with_its_created_user() {
        let events = [
            run("e1", at(2, 9), "r1", Some("bob")),
            session("e2", at(1, 9), "s-r1", Some("ada")),
        ];
        let mut plan = fresh(&events);
        for event in &events {
            assert_eq!(plan.observe(event), EventOutcome::Counted);
        }
        // The run's session moved to day 1, typed by its `session.created`, counted for ada.
        assert_eq!(delta(&plan, Scope::AllUsers, day(2)).sessions, [0, 0, 0]);
        assert_eq!(delta(&plan, Scope::AllUsers, day(1)).sessions, [0, 0, 1]);
        let ada = delta(&plan, Scope::User("ada".to_owned()), day(1));
        assert_eq!((ada.sessions, ada.users), ([0, 0, 1], 1));
        assert_eq!(
            delta(&plan, Scope::User("bob".to_owned()), day(2)).sessions,
            [0, 0, 0]
        );
    }

    #[test]
    fn per_user_deltas_add_up_to_the_all_users_delta() {
        let users = [Some("ada"), Some("bob"), None];
        let events: Vec<Event> = (0..60u32)
            .map(|i| {
                let time = at(1 + i % 3, i % 24);
                let user = users[(i % 3) as usize];
                if i % 4 == 0 {
                    session(&format!("e{i}"), time, &format!("s-r{}", i % 7), user)
                } else {
                    run(&format!("e{i}"), time, &format!("r{}", i % 11), user)
                }
            })
            .collect();
        let mut plan = fresh(&events);
        for event in events.iter().rev() {
            plan.observe(event);
        }
        for date in (1..=3).map(day) {
            let mut sum = DayDelta::default();
            let per_user = plan
                .deltas
                .iter()
                .filter(|((scope, d), _)| *d == date && *scope != Scope::AllUsers);
            for (_, delta) in per_user {
                for i in 0..3 {
                    sum.runs[i] += delta.runs[i];
                    sum.sessions[i] += delta.sessions[i];
                }
                sum.users += delta.users;
                for i in 0..9 {
                    sum.tokens[i] += delta.tokens[i];
                }
                sum.cost += &delta.cost;
                for (model, count) in &delta.models {
                    *sum.models.entry(model.clone()).or_default() += count;
                }
            }
            sum.models.retain(|_, count| *count != 0);
            let mut all = delta(&plan, Scope::AllUsers, date).clone();
            all.models.retain(|_, count| *count != 0);
            assert_eq!(sum, all, "{date}");
        }
    }

    #[test]
    fn a_sum_past_the_64_bit_range_is_an_overflow() {
        let mut stored = DailyMetrics::empty(TABLE.0, day(1), at(1, 0));
        stored.tokens.total_tokens = i64::MAX;
        let mut delta = DayDelta::default();
        delta.tokens[2] = 1;
        assert!(matches!(
            delta.next_row(TABLE, day(1), Some(stored), at(1, 1)),
            Err(ApplyError::Overflow { .. })
        ));
    }

    #[test]
    fn a_stored_model_list_that_does_not_parse_is_an_error_not_empty() {
        let mut stored = DailyMetrics::empty(TABLE.0, day(1), at(1, 0));
        stored.model_metrics = json!({"gpt-4o": 3});
        let mut delta = DayDelta::default();
        delta.models.insert(("gpt-4o".to_owned(), String::new()), 1);
        assert!(matches!(
            delta.next_row(TABLE, day(1), Some(stored), at(1, 1)),
            Err(ApplyError::StoredModels { .. })
        ));
    }

    #[test]
    fn an_unchanged_stored_row_is_not_written_and_a_changed_one_is_restamped() {
        let stored = DailyMetrics::empty(TABLE.0, day(1), at(1, 0));
        let delta = DayDelta::default();
        let next = delta.next_row(TABLE, day(1), Some(stored.clone()), at(1, 1));
        assert_eq!(next.unwrap(), None);
        let delta = DayDelta {
            users: 1,
            ..DayDelta::default()
        };
        let next = delta.next_row(TABLE, day(1), Some(stored.clone()), at(1, 1));
        let row = next.unwrap().unwrap();
        assert_eq!((row.users_count, row.id), (1, stored.id));
        assert_eq!((row.created_at, row.updated_at), (at(1, 0), at(1, 1)));
    }

    #[test]
    fn models_render_by_count_then_bytes_and_drop_at_zero() {
        let stored = json!([
            {"model_id": "b", "model_provider": "", "count": 2},
            {"model_id": "gone", "model_provider": "x", "count": 1},
        ]);
        let deltas = BTreeMap::from([
            (("B".to_owned(), String::new()), 2),
            (("a".to_owned(), "p".to_owned()), 3),
            (("gone".to_owned(), "x".to_owned()), -1),
        ]);
        assert_eq!(
            merge_models(&stored, &deltas).unwrap(),
            json!([
                {"model_id": "a", "model_provider": "p", "count": 3},
                {"model_id": "B", "model_provider": "", "count": 2},
                {"model_id": "b", "model_provider": "", "count": 2},
            ])
        );
    }
}
