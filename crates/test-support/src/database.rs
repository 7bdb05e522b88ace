//! `TestDatabase`: a fresh PostgreSQL database per test, dropped when the test ends.
//!
//! The server is `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! Each database is named `metrics_test_<unix seconds>_<random>`; databases of that shape older
//! than an hour are leftovers of crashed runs and are swept when the first fixture of a process
//! is created.

use std::sync::Once;
use std::time::{SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use diesel::sql_types::Text;
use rand::Rng;
use url::Url;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PREFIX: &str = "metrics_test_";
const LEFTOVER_AGE_SECS: u64 = 3600;

/// A throwaway database on the test server, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDatabase {
    /// The runs counted so far in `table`'s all-users rows, every session type together.
    ///
    /// # Panics
    ///
    /// When the database cannot be read.
    pub fn runs_counted(&self, table: &str) -> i64 {
        let mut conn = self.connect();
        let page =
            metrics_aggregator::read(&mut conn, table, metrics_aggregator::DateRange::default())
                .unwrap();
        page.rows
            .iter()
            .map(|row| row.runs_counts().iter().sum::<i64>())
            .sum()
    }

    /// A fresh database with every migration applied.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or the migrations fail.
    pub fn migrated() -> Self {
        let database = Self::empty();
        let mut conn = database.connect();
        metrics_aggregator::migrate(&mut conn).expect("migrating the test database");
        database
    }

    /// A fresh database with no tables.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached.
    pub fn empty() -> Self {
        let admin_url =
            std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let mut admin = PgConnection::establish(&admin_url).unwrap_or_else(|err| {
            panic!(
                "cannot reach the test PostgreSQL at TEST_DATABASE_URL={admin_url}: {err}. \
                 Start it (see README, `Running the tests`) or point TEST_DATABASE_URL at one."
            )
        });
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| sweep_leftovers(&mut admin));

        let name = format!(
            "{PREFIX}{}_{:016x}",
            unix_seconds(),
            rand::rng().random::<u64>()
        );
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .expect("creating the test database");
        let mut url = Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
        url.set_path(&name);
        Self {
            name,
            url: url.into(),
            admin_url,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL for the database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection to the database.
    ///
    /// # Panics
    ///
    /// When the connection fails.
    pub fn connect(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connecting to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            drop_database(&mut admin, &self.name);
        }
    }
}

fn drop_database(admin: &mut PgConnection, name: &str) {
    // Names are generated here from digits and hex only, so quoting them is safe.
    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(admin);
}

#[derive(QueryableByName)]
struct DatabaseName {
    #[diesel(sql_type = Text)]
    datname: String,
}

fn sweep_leftovers(admin: &mut PgConnection) {
    let Ok(names) = diesel::sql_query(
        "SELECT datname FROM pg_database WHERE datname LIKE 'metrics\\_test\\_%'",
    )
    .load::<DatabaseName>(admin) else {
        return;
    };
    let now = unix_seconds();
    for DatabaseName { datname } in names {
        let created = datname
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        let is_valid_name = datname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if let Some(created) = created
            && is_valid_name
            && now.saturating_sub(created) > LEFTOVER_AGE_SECS
        {
            drop_database(admin, &datname);
        }
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

/// Opens a transaction on `conn` that holds an `EXCLUSIVE` lock on every table of its database
/// until it ends: reads pass, every write waits. `metrics_tables` is locked first, as a writer
/// takes it first (its writer lock key-share locks the table's row), so that a write in flight
/// finishes instead of deadlocking with the locking.
///
/// # Panics
///
/// When a statement fails.
pub fn block_writes(conn: &mut PgConnection) {
    use diesel::connection::SimpleConnection;
    conn.batch_execute(
        "BEGIN; \
         DO $$ DECLARE t record; BEGIN \
           FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' \
               ORDER BY tablename <> 'metrics_tables', tablename LOOP \
             EXECUTE format('LOCK TABLE %I IN EXCLUSIVE MODE', t.tablename); \
           END LOOP; \
         END $$;",
    )
    .unwrap();
}
