//! Metrics table names: what a deployment configures and a client asks for.
//!
//! A name is a value in `metrics_tables`, never an SQL identifier: every other table is keyed by
//! its id, so a name reaches SQL only as a bound parameter. It is still held to the shape of a
//! PostgreSQL identifier, so configuration mistakes fail early and names stay readable.

use std::fmt;
use std::str::FromStr;

use diesel::prelude::*;

use crate::schema::metrics_tables;

/// The default metrics table, as in Agno.
pub const DEFAULT_TABLE: &str = "agno_metrics";

/// A valid metrics table name: a lowercase letter or `_`, then up to 62 lowercase letters,
/// digits or `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName(String);

/// The error of a string that is not a valid [`TableName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a valid metrics table name (a lowercase letter or `_`, then up to 62 lowercase \
     letters, digits or `_`)"
)]
pub struct InvalidTableName(pub String);

impl TableName {
    /// The name as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TableName {
    fn default() -> Self {
        Self(DEFAULT_TABLE.to_owned())
    }
}

impl FromStr for TableName {
    type Err = InvalidTableName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = s.bytes();
        let valid = matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
            && s.len() <= 63
            && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidTableName(s.to_owned()))
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a registered metrics table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableId(pub(crate) i32);

impl TableId {
    /// The raw id, as stored in `metrics_tables.id`.
    pub fn get(self) -> i32 {
        self.0
    }
}

/// Registers `name` (once; later calls find it) and returns its id. Writers call this at start.
///
/// # Errors
///
/// The database error when the registry cannot be read or written.
pub fn register_table(conn: &mut PgConnection, name: &TableName) -> QueryResult<TableId> {
    diesel::insert_into(metrics_tables::table)
        .values(metrics_tables::name.eq(name.as_str()))
        .on_conflict_do_nothing()
        .execute(conn)?;
    metrics_tables::table
        .filter(metrics_tables::name.eq(name.as_str()))
        .select(metrics_tables::id)
        .first(conn)
        .map(TableId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_identifier_shaped() {
        for valid in ["agno_metrics", "_x", "a", "m2", &"a".repeat(63)] {
            assert_eq!(
                valid.parse::<TableName>().map(|n| n.0),
                Ok(valid.to_owned())
            );
        }
        for invalid in [
            "",
            "Agno",
            "1abc",
            "agno-metrics",
            "agno_metrics; DROP TABLE runs",
            "a\"b",
            &"a".repeat(64),
            "métriques",
        ] {
            assert_eq!(
                invalid.parse::<TableName>(),
                Err(InvalidTableName(invalid.to_owned()))
            );
        }
    }
}
