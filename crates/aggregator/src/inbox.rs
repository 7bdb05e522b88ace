//! The inbox: events stored by ingest and acknowledged to the broker before they are folded into
//! the day rows, for producers of many small messages.
//!
//! [`apply`](crate::apply) does a transaction's worth of work (the writer lock, the stored state,
//! the fold, the day rows) for however few events a batch holds, and ingest may hold only as many
//! unacknowledged deliveries as its byte budget allows; so a batch of single-event messages is
//! small and pays that fixed cost for a handful of events. [`stage`] instead stores a batch with
//! one insert, no lock and no read, and ingest acknowledges once it commits; [`apply_staged`]
//! then takes the stored events in batches as large as the caller likes, applies them and deletes
//! them in one transaction under the table's writer lock, so each staged event is applied exactly
//! once whatever fails in between (and applying it twice would change nothing anyway).
//!
//! A staged event the database refuses for good (a daily sum past 2^63 - 1, say) has already been
//! acknowledged, so its row stays, with the reason in `refused`, for the caller to dead-letter
//! ([`refused_events`], then [`forget`]): each row keeps the bytes the event was decoded from, the
//! delivery's routing key and its serialised properties.

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Binary, Bool, Integer, Nullable, Text};
use metrics_events::Event;

use crate::apply::apply_in_transaction;
use crate::error::ApplyError;
use crate::plan::EventOutcome;
use crate::store::{self, Prepared};
use crate::tables::TableId;

/// One event to stage, with what its dead letter would carry.
#[derive(Debug, Clone, Copy)]
pub struct Staged<'a> {
    /// The bytes the event was decoded from: the whole body of a single-event message, or the
    /// event's own element of a batch.
    pub event: &'a [u8],
    /// Whether `event` is an element of a batch message (its dead letter then carries the
    /// element alone, as one CloudEvent).
    pub element: bool,
    /// The routing key of its delivery.
    pub routing_key: &'a str,
    /// Its delivery's properties, serialised by the caller.
    pub properties: &'a [u8],
}

const STAGE: &str = "INSERT INTO inbox (table_id, event, element, routing_key, properties) \
     SELECT $1, e.event, e.element, e.routing_key, e.properties \
     FROM unnest($2, $3, $4, $5) AS e (event, element, routing_key, properties)";

/// Stores `events` in the inbox of `table` with one insert (its own transaction unless the
/// caller opened one).
///
/// # Errors
///
/// The statement's error; nothing was stored.
pub fn stage(conn: &mut PgConnection, table: TableId, events: &[Staged<'_>]) -> QueryResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let bodies: Vec<&[u8]> = events.iter().map(|event| event.event).collect();
    let elements: Vec<bool> = events.iter().map(|event| event.element).collect();
    let keys: Vec<&str> = events.iter().map(|event| event.routing_key).collect();
    let properties: Vec<&[u8]> = events.iter().map(|event| event.properties).collect();
    Prepared::new(STAGE)
        .bind::<Integer, _>(table.0)
        .bind::<Array<Binary>, _>(bodies)
        .bind::<Array<Bool>, _>(elements)
        .bind::<Array<Text>, _>(keys)
        .bind::<Array<Binary>, _>(properties)
        .execute(conn)?;
    Ok(())
}

/// The oldest staged events of a table not refused, at most `$2` of them and no more bytes than
/// `$3` past the first. Planned for each batch (`sql_query`): the inbox is empty most of the time
/// and large after an outage, and one kept plan would fit only one of the two.
const TAKE: &str = "SELECT id, event FROM ( \
         SELECT id, event, sum(octet_length(event)) OVER (ORDER BY id) AS upto \
         FROM (SELECT id, event FROM inbox WHERE table_id = $1 AND refused IS NULL \
               ORDER BY id LIMIT $2) AS head \
     ) AS counted WHERE upto - octet_length(event) < GREATEST($3, 1) ORDER BY id";

#[derive(QueryableByName)]
struct Taken {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Binary)]
    event: Vec<u8>,
}

const DELETE: &str = "DELETE FROM inbox WHERE id = ANY($1)";

const REFUSE: &str = "UPDATE inbox SET refused = r.reason \
     FROM unnest($1, $2) AS r (id, reason) WHERE inbox.id = r.id";

/// What [`apply_staged`] took from the inbox and what became of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagedReport {
    /// Staged events taken.
    pub taken: usize,
    /// Of those, events that changed what is counted.
    pub counted: usize,
    /// Events that changed nothing (already counted).
    pub duplicates: usize,
    /// Events of a type the caller's decoder ignores.
    pub ignored: usize,
    /// Events refused for good: left in the inbox with the reason, for their dead letters.
    pub refused: usize,
}

impl StagedReport {
    fn tally(&mut self, outcome: EventOutcome) {
        match outcome {
            EventOutcome::Counted => self.counted += 1,
            EventOutcome::Duplicate => self.duplicates += 1,
        }
    }
}

/// Applies the oldest staged events of `table`, at most `max_events` of them and about
/// `max_bytes` of their bytes (always at least one), in one transaction under the table's writer
/// lock: they are decoded with `decode` (`Ok(None)`: an event this version does not count,
/// deleted unapplied; `Err`: bad input that staging should have refused, kept as refused with
/// that reason), applied as one batch and deleted. When the batch is
/// refused for good, each event is applied alone (a savepoint each), and those refused are kept
/// with the reason `refusal` gives them. Returns an empty report when nothing is staged.
///
/// # Errors
///
/// A transient [`ApplyError`] (or one of the inbox's own statements); nothing was applied or
/// deleted, and the same events are taken next time.
pub fn apply_staged(
    conn: &mut PgConnection,
    table: TableId,
    max_events: usize,
    max_bytes: usize,
    decode: impl Fn(&[u8]) -> Result<Option<Event>, String>,
    refusal: impl Fn(&Event, &ApplyError) -> String,
) -> Result<StagedReport, ApplyError> {
    conn.transaction(|conn| {
        // The writer lock first: another applier of the table waits here, then takes what this
        // one left.
        store::lock_table(conn, table)?;
        let taken: Vec<Taken> = diesel::sql_query(TAKE)
            .bind::<Integer, _>(table.0)
            .bind::<BigInt, _>(i64::try_from(max_events.max(1)).unwrap_or(i64::MAX))
            .bind::<BigInt, _>(i64::try_from(max_bytes).unwrap_or(i64::MAX))
            .load(conn)?;
        let mut report = StagedReport {
            taken: taken.len(),
            ..StagedReport::default()
        };
        if taken.is_empty() {
            return Ok(report);
        }
        let mut done: Vec<i64> = Vec::with_capacity(taken.len());
        let mut refused: Vec<(i64, String)> = Vec::new();
        let mut ids: Vec<i64> = Vec::with_capacity(taken.len());
        let mut events: Vec<Event> = Vec::with_capacity(taken.len());
        for Taken { id, event } in taken {
            match decode(&event) {
                Ok(Some(event)) => {
                    ids.push(id);
                    events.push(event);
                }
                Ok(None) => {
                    report.ignored += 1;
                    done.push(id);
                }
                Err(reason) => refused.push((id, reason)),
            }
        }
        // A savepoint: a refusal rolls back the batch's writes, not the lock or the taking.
        let batch = if events.is_empty() {
            Ok(crate::ApplyReport::default())
        } else {
            conn.transaction(|conn| apply_in_transaction(conn, table, &events))
        };
        match batch {
            Ok(applied) => {
                for outcome in applied.outcomes {
                    report.tally(outcome);
                }
                done.extend(ids);
            }
            Err(err) if err.is_transient() => return Err(err),
            Err(err) if events.len() == 1 => refused.push((ids[0], refusal(&events[0], &err))),
            Err(_) => {
                // Each event alone, so that only the one at fault is refused.
                for (id, event) in ids.into_iter().zip(&events) {
                    let single = std::slice::from_ref(event);
                    match conn.transaction(|conn| apply_in_transaction(conn, table, single)) {
                        Ok(applied) => {
                            for outcome in applied.outcomes {
                                report.tally(outcome);
                            }
                            done.push(id);
                        }
                        Err(err) if err.is_transient() => return Err(err),
                        Err(err) => refused.push((id, refusal(event, &err))),
                    }
                }
            }
        }
        Prepared::new(DELETE)
            .bind::<Array<BigInt>, _>(&done)
            .execute(conn)?;
        if !refused.is_empty() {
            report.refused = refused.len();
            let (refused_ids, reasons): (Vec<i64>, Vec<String>) = refused.into_iter().unzip();
            Prepared::new(REFUSE)
                .bind::<Array<BigInt>, _>(refused_ids)
                .bind::<Array<Text>, _>(reasons)
                .execute(conn)?;
        }
        Ok(report)
    })
}

/// A staged event refused for good, waiting for its dead letter.
#[derive(Debug, Clone, QueryableByName)]
pub struct RefusedEvent {
    /// Its row.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// The bytes it was decoded from.
    #[diesel(sql_type = Binary)]
    pub event: Vec<u8>,
    /// Whether it is an element of a batch message.
    #[diesel(sql_type = Bool)]
    pub element: bool,
    /// Its delivery's routing key.
    #[diesel(sql_type = Text)]
    pub routing_key: String,
    /// Its delivery's properties, as the caller serialised them.
    #[diesel(sql_type = Binary)]
    pub properties: Vec<u8>,
    /// Why it was refused.
    #[diesel(sql_type = Nullable<Text>)]
    pub refused: Option<String>,
}

/// Up to `limit` refused events of `table`, oldest first.
///
/// # Errors
///
/// The statement's error.
pub fn refused_events(
    conn: &mut PgConnection,
    table: TableId,
    limit: usize,
) -> QueryResult<Vec<RefusedEvent>> {
    diesel::sql_query(
        "SELECT id, event, element, routing_key, properties, refused FROM inbox \
         WHERE table_id = $1 AND refused IS NOT NULL ORDER BY id LIMIT $2",
    )
    .bind::<Integer, _>(table.0)
    .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
    .load(conn)
}

/// Deletes refused events whose dead letters are published.
///
/// # Errors
///
/// The statement's error.
pub fn forget(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<usize> {
    Prepared::new(DELETE)
        .bind::<Array<BigInt>, _>(ids)
        .execute(conn)
}

/// How many events of `table` are staged and not refused.
///
/// # Errors
///
/// The statement's error.
pub fn staged_count(conn: &mut PgConnection, table: TableId) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    diesel::sql_query("SELECT count(*) AS count FROM inbox WHERE table_id = $1 AND refused IS NULL")
        .bind::<Integer, _>(table.0)
        .get_result::<Count>(conn)
        .map(|count| count.count)
}

/// Whether the inbox holds any row, staged or refused, of any metrics table.
///
/// # Errors
///
/// The statement's error.
pub fn inbox_holds_events(conn: &mut PgConnection) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        crate::schema::inbox::table.select(crate::schema::inbox::id),
    ))
    .get_result(conn)
}
