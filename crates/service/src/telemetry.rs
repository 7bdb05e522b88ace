//! The `tracing` subscriber of a service: `RUST_LOG` over `log.level`, compact text or JSON
//! lines. A filter that does not parse is an error, never silently replaced.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LogSettings {
    /// The filter when `RUST_LOG` is unset or empty (`info`, `metrics_ingest=debug,info`, ...).
    #[serde(deserialize_with = "log_filter")]
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Compact human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match String::deserialize(deserializer)?.as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(D::Error::custom(format!(
                "`{other}` is neither `text` nor `json`"
            ))),
        }
    }
}

/// A non-empty `tracing` filter directive, kept as written.
///
/// # Errors
///
/// When it is empty or does not parse.
pub fn log_filter<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let level = String::deserialize(deserializer)?;
    if level.is_empty() {
        return Err(D::Error::custom("must not be empty"));
    }
    EnvFilter::try_new(&level)
        .map_err(|err| D::Error::custom(format!("is not a log filter ({err})")))?;
    Ok(level)
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("`{source_name}` is not a log filter")]
pub struct FilterError {
    source_name: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl FilterError {
    fn new(
        source_name: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            source_name,
            source: source.into(),
        }
    }
}

/// Installs the global subscriber writing to `writer`: `RUST_LOG` when set and not empty, else
/// `settings.level`, plus `silenced` directives (`target=off`). Tests start several services in
/// one process: a second call keeps the first subscriber.
///
/// # Errors
///
/// When `RUST_LOG`, `settings.level` or a silenced directive is not a valid filter.
pub fn init<W>(settings: &LogSettings, writer: W, silenced: &[&str]) -> Result<(), FilterError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let mut filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) if !directives.is_empty() => {
            EnvFilter::try_new(directives).map_err(|err| FilterError::new("RUST_LOG", err))?
        }
        _ => {
            EnvFilter::try_new(&settings.level).map_err(|err| FilterError::new("log.level", err))?
        }
    };
    for directive in silenced {
        filter = filter.add_directive(
            directive
                .parse()
                .map_err(|err| FilterError::new("a silenced directive", err))?,
        );
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // `try_init` fails only when a subscriber is already set, which tests do on purpose.
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;

    use super::*;
    use crate::config::Layers;

    #[derive(Debug, Deserialize)]
    struct Sample {
        log: LogSettings,
    }

    fn load(level: &str, format: &str) -> Result<LogSettings, String> {
        let env = HashMap::from([
            ("METRICS_LOG__LEVEL".to_owned(), level.to_owned()),
            ("METRICS_LOG__FORMAT".to_owned(), format.to_owned()),
        ]);
        Layers {
            defaults: "[log]\nlevel = \"info\"\nformat = \"text\"\n",
            file: None,
            aliases: &[],
        }
        .load::<Sample>(&env)
        .map(|sample| sample.log)
        .map_err(|err| err.to_string())
    }

    #[test]
    fn log_settings_are_checked_while_they_are_read() {
        assert_eq!(
            load("metrics_ingest=debug,info", "json"),
            Ok(LogSettings {
                level: "metrics_ingest=debug,info".to_owned(),
                format: LogFormat::Json
            })
        );
        assert_eq!(
            load("", "text"),
            Err("invalid configuration key `log.level`: must not be empty".to_owned())
        );
        assert!(
            load("metrics_ingest=[", "text")
                .unwrap_err()
                .starts_with("invalid configuration key `log.level`: is not a log filter"),
        );
        assert_eq!(
            load("info", "xml"),
            Err(
                "invalid configuration key `log.format`: `xml` is neither `text` nor `json`"
                    .to_owned()
            )
        );
    }
}
