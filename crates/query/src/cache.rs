//! [`PageCache`]: rendered `GET /metrics` bodies, reused while their table has not changed.
//!
//! While the database's change listener listens ([`crate::listener`]), a request learns whether
//! anything changed without asking the database: an entry stored under the current
//! [`Changes::version`] is served as is, with no round trip. The version a body is stored under
//! is the one read before its rows were read, so a change committed meanwhile kills the entry.
//! Otherwise (no entry under the version, or nobody listening) the request falls back to the
//! stamp: an entry whose stamp equals the table's latest change is served (and, when listening,
//! tagged with the version read before the stamp, so the next request needs no round trip).
//! When no entry is stored for the key at all ([`PageCache::holds`]), no stamp can make a hit,
//! and the request reads the stamp and the rows together instead.
//!
//! The stamp path: a request first learns the table's latest change
//! ([`latest_change`](metrics_aggregator::latest_change), one index probe; the aggregator's stamps
//! increase strictly with every commit). An entry rendered under the same stamp is served as is;
//! anything else reads and renders the rows.
//!
//! Stamp reads are batched per table ([`PageCache::stamp`]): requests that arrive while a stamp
//! read runs wait for the next one, which then answers all of them. Every request is thus
//! answered from a stamp read that started after it arrived, so a write committed before a
//! request is visible to it, as without the cache; under load, one stamp read serves many
//! requests.
//!
//! The aggregator's stamps increase strictly with every commit; `cache.max_age_ms` only bounds
//! how long an entry can hide a write whose stamp did not move (a clock stepping back, rows edited
//! by hand). Past it, one request re-reads while the others are still served the entry, so expiry
//! never sends every waiting request to the database.
//! Entries are bounded in number, and in size: a body larger than the bound is never stored; the
//! oldest entry goes first.
//!
//! A stamp read that does not answer within the stamp timeout (a frozen connection) is given up
//! on: its waiters get an error and read without the cache, and the next request starts a new
//! stamp read instead of queueing behind the frozen one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::web::{self, Bytes};
use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use metrics_aggregator::{Pool, TableName};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::listener::{self, Changes};

/// What a cached body answers: a database (by position), a table, a range and a user.
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
    /// The user whose rows (`""`: the events without a user); `None`: all users'.
    pub user: Option<String>,
}

/// What an entry is current under: a stamp read from the table, or a version of the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The table's latest change.
    Stamp(DateTime<Utc>),
    /// A [`Changes::version`].
    Notified(u64),
}

impl From<DateTime<Utc>> for Version {
    fn from(stamp: DateTime<Utc>) -> Self {
        Self::Stamp(stamp)
    }
}

#[derive(Debug)]
struct Entry {
    stamp: Option<DateTime<Utc>>,
    notified: Option<u64>,
    stored: Instant,
    body: Bytes,
    /// When a request started re-reading this expired entry; meanwhile the others keep
    /// getting the body, so expiry costs one read instead of one per waiting request.
    refreshing: Option<Instant>,
}

/// The outcome of one stamp read, shared by every request of its batch.
type StampOutcome = Result<Option<DateTime<Utc>>, Arc<anyhow::Error>>;

/// The requests waiting for a table's next stamp read.
#[derive(Debug, Default)]
struct Batch {
    running: bool,
    waiters: Vec<oneshot::Sender<StampOutcome>>,
}

/// Marks a table's stamp reads as stopped if their task is dropped before it finishes (its
/// worker stopping or restarting), so the next request starts a new one instead of waiting
/// for a task that is gone. Waiters of that moment get an error.
struct Running {
    cache: Arc<PageCache>,
    key: (usize, TableName),
    finished: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut batches = self
            .cache
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(batch) = batches.get_mut(&self.key) {
            batch.running = false;
            batch.waiters.clear();
        }
    }
}

/// A bounded map of rendered bodies by [`PageKey`], and the batched stamp reads.
#[derive(Debug)]
pub struct PageCache {
    max_entries: usize,
    max_age: Duration,
    max_body_bytes: usize,
    stamp_timeout: Duration,
    entries: Mutex<HashMap<PageKey, Entry>>,
    batches: Mutex<HashMap<(usize, TableName), Batch>>,
    listeners: Mutex<HashMap<usize, Arc<Changes>>>,
    /// Stops the listeners when the cache goes.
    stop: CancellationToken,
}

impl Drop for PageCache {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PageCache {
    /// A cache of at most `max_entries` bodies, each served for at most `max_age`.
    pub fn new(max_entries: usize, max_age: Duration) -> Self {
        Self {
            max_entries,
            max_age,
            max_body_bytes: usize::MAX,
            stamp_timeout: Duration::MAX,
            entries: Mutex::new(HashMap::with_capacity(max_entries)),
            batches: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        }
    }

    /// Stores no body larger than `max_body_bytes`.
    #[must_use]
    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = max_body_bytes;
        self
    }

    /// Gives up on a stamp read after `stamp_timeout`.
    #[must_use]
    pub fn with_stamp_timeout(mut self, stamp_timeout: Duration) -> Self {
        self.stamp_timeout = stamp_timeout;
        self
    }

    /// The committed changes of database `database` (at `url`), as its listener knows them; the
    /// listener starts with the first call.
    pub fn changes(&self, database: usize, url: &SecretString) -> Arc<Changes> {
        let mut listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        listeners
            .entry(database)
            .or_insert_with(|| {
                let changes = Arc::new(Changes::default());
                if let Err(err) = listener::spawn(
                    url.expose_secret().to_owned(),
                    changes.clone(),
                    self.stop.child_token(),
                ) {
                    tracing::error!(error = %err, "cannot start the change listener");
                }
                changes
            })
            .clone()
    }

    /// The latest change of `table` in database `database` (reached through `pool`), from a
    /// read that starts after this call; `None` when the table has no rows.
    ///
    /// # Errors
    ///
    /// The error of the stamp read this request waited for.
    pub async fn stamp(
        self: &Arc<Self>,
        database: usize,
        table: &TableName,
        pool: &Pool,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        let (sender, receiver) = oneshot::channel();
        let key = (database, table.clone());
        let start = {
            let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
            let batch = batches.entry(key.clone()).or_default();
            batch.waiters.push(sender);
            !std::mem::replace(&mut batch.running, true)
        };
        if start {
            actix_web::rt::spawn(self.clone().read_stamps(key, pool.clone()));
        }
        receiver
            .await
            .context("the stamp read ended without an answer")?
            .map_err(|err| anyhow::anyhow!("{err:#}"))
    }

    /// Reads the stamp of `key`'s table for each batch of waiters until none is left.
    async fn read_stamps(self: Arc<Self>, key: (usize, TableName), pool: Pool) {
        let mut running = Running {
            cache: self.clone(),
            key: key.clone(),
            finished: false,
        };
        loop {
            let waiters = {
                let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(batch) = batches.get_mut(&key) else {
                    running.finished = true;
                    return;
                };
                if batch.waiters.is_empty() {
                    batch.running = false;
                    running.finished = true;
                    return;
                }
                std::mem::take(&mut batch.waiters)
            };
            let pool = pool.clone();
            let table = key.1.clone();
            let read = web::block(move || -> anyhow::Result<_> {
                let mut conn = pool.get()?;
                Ok(metrics_aggregator::latest_change(
                    &mut conn,
                    table.as_str(),
                )?)
            });
            // A read stuck on a frozen connection keeps its blocking thread, but nobody waits
            // for it past the timeout: its waiters get an error and the loop moves on.
            let outcome: StampOutcome =
                match tokio::time::timeout(self.stamp_timeout, read).await {
                    Ok(joined) => joined
                        .map_err(anyhow::Error::new)
                        .and_then(|outcome| outcome.context("reading the table's latest change")),
                    Err(_) => Err(anyhow::anyhow!(
                        "the table's latest change was not read within {} ms",
                        self.stamp_timeout.as_millis()
                    )),
                }
                .map_err(Arc::new);
            for waiter in waiters {
                // A waiter whose request timed out has gone; the others still get the answer.
                let _ = waiter.send(outcome.clone());
            }
        }
    }

    /// The body stored for `key` under `version`, when it is young enough. Past `max_age`, the
    /// first caller gets `None` and is expected to re-read and [`put`](Self::put); until it does
    /// (or for another `max_age` if it fails), other callers still get the body.
    pub fn get(&self, key: &PageKey, version: impl Into<Version>) -> Option<Bytes> {
        self.get_at(key, version, Instant::now())
    }

    fn get_at(&self, key: &PageKey, version: impl Into<Version>, now: Instant) -> Option<Bytes> {
        let version = version.into();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get_mut(key).filter(|entry| match version {
            Version::Stamp(stamp) => entry.stamp == Some(stamp),
            Version::Notified(version) => entry.notified == Some(version),
        })?;
        let young = |since: Instant| now.saturating_duration_since(since) < self.max_age;
        if young(entry.stored) {
            return Some(entry.body.clone());
        }
        match entry.refreshing {
            Some(started) if young(started) => Some(entry.body.clone()),
            _ => {
                entry.refreshing = Some(now);
                None
            }
        }
    }

    /// Whether an entry is stored for `key`, whatever it is current under: without one, a
    /// stamp read cannot turn into a hit, and the caller reads the rows (and the stamp with
    /// them) at once.
    pub fn holds(&self, key: &PageKey) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
    }

    /// Drops every entry of `table` in database `database`: a refresh may have deleted rows,
    /// which moves no stamp.
    pub fn invalidate(&self, database: usize, table: &TableName) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|key, _| key.database != database || key.table != *table);
    }

    /// Marks the entry of `key` stored under `stamp` as current under listener version
    /// `notified` too: the stamp was read after that version was, and matched.
    pub fn confirm(&self, key: &PageKey, stamp: DateTime<Utc>, notified: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries
            .get_mut(key)
            .filter(|entry| entry.stamp == Some(stamp))
        {
            entry.notified = Some(notified);
        }
    }

    /// Stores `body` for `key`, rendered from rows as of `stamp`, unless it is larger than the
    /// bound (then an older entry for `key` goes too).
    pub fn put(&self, key: PageKey, stamp: DateTime<Utc>, body: Bytes) {
        self.put_versions(key, Some(stamp), None, body);
    }

    /// Stores `body` for `key`, rendered from rows read after the table's latest change was
    /// `stamp` and after listener version `notified` was read (each when known), unless it is
    /// larger than the bound (then an older entry for `key` goes too).
    pub fn put_versions(
        &self,
        key: PageKey,
        stamp: Option<DateTime<Utc>>,
        notified: Option<u64>,
        body: Bytes,
    ) {
        if stamp.is_none() && notified.is_none() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if body.len() > self.max_body_bytes {
            entries.remove(&key);
            return;
        }
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
                notified,
                stored: Instant::now(),
                body,
                refreshing: None,
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
            user: None,
        }
    }

    #[test]
    fn users_have_entries_of_their_own_and_invalidation_drops_the_tables() {
        let cache = PageCache::new(4, Duration::from_secs(60));
        let stamp = DateTime::<Utc>::UNIX_EPOCH;
        let user = |name: &str| PageKey {
            user: Some(name.to_owned()),
            ..key(1)
        };
        cache.put(key(1), stamp, Bytes::from_static(b"all"));
        cache.put(user("u1"), stamp, Bytes::from_static(b"u1"));
        cache.put(user(""), stamp, Bytes::from_static(b"none"));
        assert_eq!(cache.get(&key(1), stamp), Some(Bytes::from_static(b"all")));
        assert_eq!(
            cache.get(&user("u1"), stamp),
            Some(Bytes::from_static(b"u1"))
        );
        assert_eq!(
            cache.get(&user(""), stamp),
            Some(Bytes::from_static(b"none"))
        );
        assert_eq!(cache.get(&user("u2"), stamp), None);
        assert!(cache.holds(&user("u1")));
        assert!(!cache.holds(&user("u2")));
        let other_table = PageKey {
            table: "other".parse().unwrap(),
            ..key(1)
        };
        cache.put(other_table.clone(), stamp, Bytes::from_static(b"other"));
        cache.invalidate(0, &TableName::default());
        assert!(!cache.holds(&user("u1")));
        assert!(cache.holds(&other_table));
        assert_eq!(cache.get(&key(1), stamp), None);
        assert_eq!(cache.get(&user("u1"), stamp), None);
        assert_eq!(
            cache.get(&other_table, stamp),
            Some(Bytes::from_static(b"other"))
        );
    }

    #[test]
    fn stamp_reads_dropped_midway_let_the_next_request_start_anew() {
        let cache = Arc::new(PageCache::new(2, Duration::from_secs(1)));
        let key = (0, TableName::default());
        let (sender, mut receiver) = oneshot::channel();
        cache.batches.lock().unwrap().insert(
            key.clone(),
            Batch {
                running: true,
                waiters: vec![sender],
            },
        );

        drop(Running {
            cache: cache.clone(),
            key: key.clone(),
            finished: false,
        });

        assert!(!cache.batches.lock().unwrap()[&key].running);
        assert!(receiver.try_recv().is_err());
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
    fn bodies_over_the_size_bound_are_never_stored() {
        let cache = PageCache::new(2, Duration::from_secs(60)).with_max_body_bytes(3);
        let stamp = DateTime::<Utc>::UNIX_EPOCH;
        cache.put(key(1), stamp, Bytes::from_static(b"one"));
        assert_eq!(cache.get(&key(1), stamp), Some(Bytes::from_static(b"one")));
        cache.put(key(1), stamp, Bytes::from_static(b"four"));
        assert_eq!(cache.get(&key(1), stamp), None);
        assert!(cache.entries.lock().unwrap().is_empty());
    }

    #[test]
    fn an_expired_entry_sends_one_caller_to_re_read() {
        let cache = PageCache::new(2, Duration::from_secs(1));
        let stamp = DateTime::<Utc>::UNIX_EPOCH;
        cache.put(key(1), stamp, Bytes::from_static(b"one"));
        let later = Instant::now() + Duration::from_secs(2);
        assert_eq!(cache.get_at(&key(1), stamp, later), None);
        assert_eq!(
            cache.get_at(&key(1), stamp, later),
            Some(Bytes::from_static(b"one"))
        );
        // A refresher that never came back is replaced after another max_age.
        let much_later = later + Duration::from_secs(2);
        assert_eq!(cache.get_at(&key(1), stamp, much_later), None);
        cache.put(key(1), stamp, Bytes::from_static(b"two"));
        assert_eq!(cache.get(&key(1), stamp), Some(Bytes::from_static(b"two")));
    }

    #[test]
    fn entries_serve_the_listener_version_they_were_stored_or_confirmed_under() {
        let cache = PageCache::new(2, Duration::from_secs(60));
        let stamp = DateTime::<Utc>::UNIX_EPOCH;
        cache.put_versions(key(1), Some(stamp), Some(3), Bytes::from_static(b"one"));
        assert_eq!(
            cache.get(&key(1), Version::Notified(3)),
            Some(Bytes::from_static(b"one"))
        );
        assert_eq!(cache.get(&key(1), Version::Notified(5)), None);
        assert_eq!(cache.get(&key(1), stamp), Some(Bytes::from_static(b"one")));
        cache.confirm(&key(1), stamp, 5);
        assert_eq!(
            cache.get(&key(1), Version::Notified(5)),
            Some(Bytes::from_static(b"one"))
        );
        assert_eq!(cache.get(&key(1), Version::Notified(3)), None);
        // A confirmation under another stamp changes nothing.
        cache.confirm(&key(1), stamp + chrono::Duration::seconds(1), 7);
        assert_eq!(cache.get(&key(1), Version::Notified(7)), None);
        // Nothing to be current under: not stored.
        cache.put_versions(key(2), None, None, Bytes::from_static(b"two"));
        assert_eq!(cache.entries.lock().unwrap().len(), 1);
    }
}
