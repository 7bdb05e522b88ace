//! Settings: embedded defaults < optional TOML file < environment, deserialised into a service's
//! own typed tree.
//!
//! Values are validated while they are deserialised: a field that must be positive, an address,
//! a log filter or a duration is declared with one of the `deserialize_with` functions below, and
//! its error names the key (`invalid configuration key `amqp.prefetch`: must be at least 1`).
//! Environment values are never coerced: keys, URLs and names stay the strings they were written
//! as (a key `007` stays `007`); numbers and booleans are parsed only where the field is one.
//!
//! Unknown keys are ignored rather than refused: deployments often share one `METRICS_*`
//! environment between metrics-ingest and metrics-query, whose keys differ.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

/// The prefix of every variable the services read (`METRICS_` + key path joined with `__`).
pub const ENV_PREFIX: &str = "METRICS";

/// Why the settings could not be loaded; the message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or a value has the wrong type; the source names the key.
    #[error("reading the configuration")]
    Load(#[source] config::ConfigError),
    /// A value is out of its domain.
    #[error("invalid configuration key `{key}`: {reason}")]
    Invalid {
        /// The dotted key path, as in the service's `config/default.toml`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// An invalid value at `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl From<config::ConfigError> for ConfigError {
    /// A value refused by one of this module's validating deserialisers becomes
    /// [`ConfigError::Invalid`] at its key; anything else stays a load error.
    fn from(err: config::ConfigError) -> Self {
        match err {
            config::ConfigError::At {
                error,
                key: Some(key),
                ..
            } if matches!(*error, config::ConfigError::Message(_)) => match *error {
                config::ConfigError::Message(reason) => Self::Invalid { key, reason },
                other => Self::Load(other),
            },
            other => Self::Load(other),
        }
    }
}

/// The layers of a service's settings.
#[derive(Debug, Clone, Copy)]
pub struct Layers<'a> {
    /// The embedded defaults (TOML): every key, commented.
    pub defaults: &'a str,
    /// A TOML file over the defaults; it must exist when given.
    pub file: Option<&'a Path>,
    /// Variables outside the `METRICS_` prefix that set a key (name, key path joined with
    /// `__`), read under the `METRICS_*` variables, which win.
    pub aliases: &'a [(&'a str, &'a str)],
}

impl Layers<'_> {
    /// Deserialises the layers into `T`, with `env` (variable name to value) as the environment.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the key when a layer cannot be read or a value is invalid.
    pub fn load<T: DeserializeOwned>(
        &self,
        env: &HashMap<String, String>,
    ) -> Result<T, ConfigError> {
        let mut builder =
            Config::builder().add_source(File::from_str(self.defaults, FileFormat::Toml));
        if let Some(file) = self.file {
            builder = builder.add_source(File::from(file).format(FileFormat::Toml).required(true));
        }
        let aliases: HashMap<String, String> = self
            .aliases
            .iter()
            .filter_map(|(variable, key)| {
                env.get(*variable)
                    .map(|value| ((*key).to_owned(), value.clone()))
            })
            .collect();
        // No `try_parsing`: it would turn a key `007` into `7` and `1e3` into `1000`. Values stay
        // strings until a field's type parses them.
        let metrics = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .source(Some(env.clone()));
        Ok(builder
            .add_source(Environment::default().separator("__").source(Some(aliases)))
            .add_source(metrics)
            .build()?
            .try_deserialize()?)
    }
}

/// The process environment, for [`Layers::load`].
pub fn process_env() -> HashMap<String, String> {
    std::env::vars().collect()
}

/// A number of at least `MIN` (`deserialize_with = "at_least::<_, _, 1>"`).
///
/// # Errors
///
/// `must be at least MIN`, or the number's own deserialisation error.
pub fn at_least<'de, D, T, const MIN: u64>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Copy + TryInto<u64>,
{
    let value = T::deserialize(deserializer)?;
    match value.try_into() {
        Ok(number) if number < MIN => Err(D::Error::custom(format!("must be at least {MIN}"))),
        _ => Ok(value),
    }
}

/// A whole number of milliseconds, as a [`Duration`].
///
/// # Errors
///
/// When the value is not a non-negative integer.
pub fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

/// A positive whole number of milliseconds, as a [`Duration`].
///
/// # Errors
///
/// `must be at least 1`, or when the value is not an integer.
pub fn positive_millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    at_least::<D, u64, 1>(deserializer).map(Duration::from_millis)
}

/// An `ip:port` socket address.
///
/// # Errors
///
/// When the text is not one.
pub fn socket_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_address(&text).map_err(D::Error::custom)
}

/// An `ip:port` socket address, kept as the text it was written as.
///
/// # Errors
///
/// When the text is not one.
pub fn socket_address_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_address(&text).map_err(D::Error::custom)?;
    Ok(text)
}

/// `text` as a socket address, or the reason it is not one.
///
/// # Errors
///
/// The reason, naming the text.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not an address like 0.0.0.0:7777"))
}

/// Text that parses as `T` (a table name, for instance), kept as written; the reason is `T`'s
/// parse error.
///
/// # Errors
///
/// When the text does not parse.
pub fn parses_as<'de, D, T>(deserializer: D) -> Result<String, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse::<T>().map_err(D::Error::custom)?;
    Ok(text)
}

/// A secret that is unset when empty (environment variables cannot be absent in a file).
///
/// # Errors
///
/// When the value is not a string.
pub fn optional_secret<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SecretString>, D::Error> {
    let secret = SecretString::deserialize(deserializer)?;
    Ok((!secret.expose_secret().is_empty()).then_some(secret))
}

/// A URL with its password replaced by `***`, for logs.
pub fn redacted_url(url: &SecretString) -> String {
    match url::Url::parse(url.expose_secret()) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.into()
        }
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    struct Inner {
        #[serde(deserialize_with = "at_least::<_, _, 1>")]
        count: u16,
        #[serde(deserialize_with = "socket_address")]
        listen: SocketAddr,
        #[serde(deserialize_with = "positive_millis")]
        wait_ms: Duration,
        #[serde(deserialize_with = "optional_secret")]
        key: Option<SecretString>,
        name: String,
    }

    const DEFAULTS: &str =
        "[inner]\ncount = 3\nlisten = \"127.0.0.1:1\"\nwait_ms = 5\nkey = \"\"\nname = \"n\"\n";

    fn load(pairs: &[(&str, &str)]) -> Result<Sample, ConfigError> {
        let env = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Layers {
            defaults: DEFAULTS,
            file: None,
            aliases: &[("OTHER_KEY", "INNER__KEY")],
        }
        .load(&env)
    }

    #[test]
    fn validating_deserialisers_name_the_key() {
        let message = |pairs: &[(&str, &str)]| load(pairs).unwrap_err().to_string();
        assert_eq!(
            message(&[("METRICS_INNER__COUNT", "0")]),
            "invalid configuration key `inner.count`: must be at least 1"
        );
        assert_eq!(
            message(&[("METRICS_INNER__LISTEN", "here")]),
            "invalid configuration key `inner.listen`: `here` is not an address like 0.0.0.0:7777"
        );
        assert_eq!(
            message(&[("METRICS_INNER__WAIT_MS", "0")]),
            "invalid configuration key `inner.wait_ms`: must be at least 1"
        );
        let err = load(&[("METRICS_INNER__COUNT", "many")]).unwrap_err();
        assert!(crate::error_chain(&err).contains("inner.count"), "{err:?}");
    }

    #[test]
    fn strings_stay_as_written_and_numbers_parse_where_they_are_numbers() {
        let sample = load(&[
            ("METRICS_INNER__NAME", "007"),
            ("METRICS_INNER__KEY", "1e3"),
            ("METRICS_INNER__COUNT", "0700"),
        ])
        .unwrap();
        assert_eq!(sample.inner.name, "007");
        assert_eq!(sample.inner.key.unwrap().expose_secret(), "1e3");
        assert_eq!(sample.inner.count, 700);
        assert_eq!(sample.inner.wait_ms, Duration::from_millis(5));
        assert_eq!(sample.inner.listen.port(), 1);
    }

    #[test]
    fn aliases_set_keys_under_the_metrics_variables() {
        let key = |pairs: &[(&str, &str)]| {
            load(pairs)
                .unwrap()
                .inner
                .key
                .map(|key| key.expose_secret().to_owned())
        };
        assert_eq!(key(&[]), None);
        assert_eq!(key(&[("OTHER_KEY", "a")]), Some("a".to_owned()));
        assert_eq!(
            key(&[("OTHER_KEY", "a"), ("METRICS_INNER__KEY", "b")]),
            Some("b".to_owned())
        );
    }

    #[test]
    fn redacted_urls_hide_the_password() {
        let url = SecretString::from("amqp://guest:hunter2@rabbit:5672/%2f");
        assert_eq!(redacted_url(&url), "amqp://guest:***@rabbit:5672/%2f");
        let url = SecretString::from("not a url");
        assert_eq!(redacted_url(&url), "<unparsable URL>");
    }
}
