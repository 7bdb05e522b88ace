//! [`PageCache`]: rendered `GET /metrics` bodies, reused while their table has not changed.
//!
//! A request first asks the database for the table's latest change (the aggregator's
//! [`read`](metrics_aggregator::read) of an empty range returns only that stamp, in two
//! index-backed queries with no rows). An entry rendered under the same stamp is served as is;
//! anything else reads and renders the rows. So a write is visible to the next request, as
//! without the cache.
//!
//! Stamps are transaction start times, so in a rare interleaving a write can commit with a stamp
//! older than one already seen and leave the stamp unchanged; `cache.max_age_ms` bounds how long
//! an entry can hide such a write. Entries are bounded in number; the oldest goes first.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use metrics_aggregator::{DateRange, TableName};

/// What a cached body answers: a database (by position), a table and a range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    /// The database's position in the configuration.
    pub database: usize,
    /// The metrics table.
    pub table: TableName,
    /// The first day, inclusive.
    pub start: Option<NaiveDate>,
    /// The last day, inclusive.
    pub end: Option<NaiveDate>,
}

#[derive(Debug)]
struct Entry {
    stamp: DateTime<Utc>,
    stored: Instant,
    body: Bytes,
}

/// A bounded map of rendered bodies by [`PageKey`].
#[derive(Debug)]
pub struct PageCache {
    max_entries: usize,
    max_age: Duration,
    entries: Mutex<HashMap<PageKey, Entry>>,
}

/// A range that holds no day: reading it returns only the table's latest change.
pub const STAMP_ONLY: DateRange = DateRange {
    start: NaiveDate::from_ymd_opt(9999, 12, 31),
    end: NaiveDate::from_ymd_opt(9999, 12, 30),
};

impl PageCache {
    /// A cache of at most `max_entries` bodies, each served for at most `max_age`.
    pub fn new(max_entries: usize, max_age: Duration) -> Self {
        Self {
            max_entries,
            max_age,
            entries: Mutex::new(HashMap::with_capacity(max_entries)),
        }
    }

    /// The body stored for `key` under `stamp`, when it is young enough.
    pub fn get(&self, key: &PageKey, stamp: DateTime<Utc>) -> Option<Bytes> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(key)
            .filter(|entry| entry.stamp == stamp && entry.stored.elapsed() < self.max_age)
            .map(|entry| entry.body.clone())
    }

    /// Stores `body` for `key`, rendered from rows as of `stamp`.
    pub fn put(&self, key: PageKey, stamp: DateTime<Utc>, body: Bytes) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, entry)| entry.stored)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key,
            Entry {
                stamp,
                stored: Instant::now(),
                body,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(day: u32) -> PageKey {
        PageKey {
            database: 0,
            table: TableName::default(),
            start: NaiveDate::from_ymd_opt(2025, 1, day),
            end: None,
        }
    }

    #[test]
    fn stamp_only_range_holds_no_day() {
        assert!(STAMP_ONLY.start > STAMP_ONLY.end);
        assert!(STAMP_ONLY.end.is_some());
    }

    #[test]
    fn an_entry_serves_only_its_stamp_and_the_oldest_goes_first() {
        let cache = PageCache::new(2, Duration::from_secs(60));
        let stamp = DateTime::<Utc>::UNIX_EPOCH;
        let later = stamp + chrono::Duration::seconds(1);
        cache.put(key(1), stamp, Bytes::from_static(b"one"));
        assert_eq!(cache.get(&key(1), stamp), Some(Bytes::from_static(b"one")));
        assert_eq!(cache.get(&key(1), later), None);
        cache.put(key(2), stamp, Bytes::from_static(b"two"));
        cache.put(key(3), stamp, Bytes::from_static(b"three"));
        assert_eq!(cache.get(&key(1), stamp), None);
        assert_eq!(
            cache.get(&key(3), stamp),
            Some(Bytes::from_static(b"three"))
        );
    }

    #[test]
    fn entries_expire() {
        let cache = PageCache::new(2, Duration::ZERO);
        let stamp = DateTime::<Utc>::UNIX_EPOCH;
        cache.put(key(1), stamp, Bytes::from_static(b"one"));
        assert_eq!(cache.get(&key(1), stamp), None);
    }
}
