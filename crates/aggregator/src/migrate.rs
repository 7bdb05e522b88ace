//! The embedded migrations, applied under a PostgreSQL advisory lock so that several replicas
//! starting at once run each migration exactly once.

use diesel::PgConnection;
use diesel::RunQueryDsl;
use diesel::sql_types::BigInt;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::MigrateError;

/// The migrations in `crates/aggregator/migrations`, compiled into the binary.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The advisory lock key of migrations ("metrmigr" as ASCII), distinct from the apply lock.
const MIGRATION_LOCK: i64 = 0x6d65_7472_6d69_6772;

/// Applies every pending migration and returns how many ran.
///
/// # Errors
///
/// [`MigrateError`] when the lock cannot be taken or a migration fails.
pub fn migrate(conn: &mut PgConnection) -> Result<usize, MigrateError> {
    with_lock(conn, |conn| {
        conn.run_pending_migrations(MIGRATIONS)
            .map(|applied| applied.len())
            .map_err(MigrateError::Migration)
    })
}

/// Reverts every applied migration (the `down.sql` of each, newest first).
///
/// # Errors
///
/// [`MigrateError`] when the lock cannot be taken or a migration fails.
pub fn revert_all(conn: &mut PgConnection) -> Result<usize, MigrateError> {
    with_lock(conn, |conn| {
        conn.revert_all_migrations(MIGRATIONS)
            .map(|reverted| reverted.len())
            .map_err(MigrateError::Migration)
    })
}

fn with_lock<T>(
    conn: &mut PgConnection,
    body: impl FnOnce(&mut PgConnection) -> Result<T, MigrateError>,
) -> Result<T, MigrateError> {
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(conn)
        .map_err(MigrateError::Lock)?;
    let result = body(conn);
    // A session-level lock outlives a failed migration's transaction: release it either way.
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(conn)
        .map_err(MigrateError::Lock);
    let value = result?;
    unlocked?;
    Ok(value)
}
