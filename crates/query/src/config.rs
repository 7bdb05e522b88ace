//! Settings: the embedded `config/default.toml`, an optional `--config` file, then the
//! environment (`METRICS_` + key path with `__`, and AgentOS's `OS_SECURITY_KEY`,
//! `JWT_VERIFICATION_KEY` and `JWT_JWKS_FILE`), loaded by `metrics_service::config` into one
//! typed tree. Values are validated while they are deserialised (each field's
//! `deserialize_with`); what spans several keys (database ids, JWT keys) is checked once the tree
//! is read. Only this module reads the environment; tests build [`Settings`] in code.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use metrics_aggregator::TableName;
use metrics_service::config::{
    Layers, at_least, millis, optional_secret, positive_millis, process_env, socket_address,
};
use secrecy::{ExposeSecret, SecretString};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

pub use metrics_service::config::ConfigError;
pub use metrics_service::telemetry::{LogFormat, LogSettings};

/// The reference configuration, embedded so the binary runs without any file.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The environment variable AgentOS reads its security key from.
pub const OS_SECURITY_KEY: &str = "OS_SECURITY_KEY";

/// The environment variables AgentOS reads its keys from, and the keys they set (under the
/// `METRICS_*` variables, which win).
pub const AGENTOS_VARIABLES: [(&str, &str); 3] = [
    (OS_SECURITY_KEY, "AUTH__SECURITY_KEY"),
    ("JWT_VERIFICATION_KEY", "AUTH__JWT__VERIFICATION_KEY"),
    ("JWT_JWKS_FILE", "AUTH__JWT__JWKS_FILE"),
];

/// The validated settings of the service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The public API listener.
    pub http: HttpSettings,
    /// The admin listener (probes, Prometheus).
    pub admin: AdminSettings,
    /// Who may call the API.
    pub auth: AuthSettings,
    /// Every database the service reads, the default one first.
    pub databases: Vec<DatabaseSettings>,
    /// Most connections each database's pool holds.
    pub pool_size: u32,
    /// Longest silence of the network on a database connection.
    pub tcp_timeout: Duration,
    /// The response cache.
    pub cache: CacheSettings,
    /// Logging.
    pub log: LogSettings,
}

/// The response cache ([`crate::cache`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CacheSettings {
    /// Most responses kept; 0 disables the cache.
    pub entries: usize,
    /// Longest an entry is reused.
    #[serde(rename = "max_age_ms", deserialize_with = "millis")]
    pub max_age: Duration,
    /// Largest body kept; larger ones are served, never stored.
    pub max_body_bytes: usize,
}

/// The public API listener.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    /// Where to listen; port 0 picks a free port.
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Longest a request waits for the database.
    #[serde(rename = "request_timeout_ms", deserialize_with = "positive_millis")]
    pub request_timeout: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(rename = "shutdown_timeout_ms", deserialize_with = "millis")]
    pub shutdown_timeout: Duration,
    /// Longest a new connection may take to send its first request head; then 408 and close.
    #[serde(rename = "header_timeout_ms", deserialize_with = "positive_millis")]
    pub header_timeout: Duration,
    /// Longest a connection may stay idle between requests before the service closes it.
    #[serde(rename = "keep_alive_ms", deserialize_with = "positive_millis")]
    pub keep_alive: Duration,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    /// Where to listen; port 0 picks a free port.
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
}

/// Authentication of API requests.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// The bearer key; `None` leaves the API open (unless JWTs are configured).
    pub security_key: Option<SecretString>,
    /// JWT verification; `None` when no verification key or JWKS file is set.
    pub jwt: Option<JwtSettings>,
}

/// JWT verification ([`crate::jwt`]).
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// A PEM public key, or the shared secret of an HS algorithm.
    pub verification_key: Option<SecretString>,
    /// A JWKS file; the token's `kid` picks its key.
    pub jwks_file: Option<PathBuf>,
    /// The one algorithm tokens must use (`RS256`, `HS256`, `ES256`, `EdDSA`, ...).
    pub algorithm: String,
    /// The audience tokens must name in `aud`; `None`: not checked.
    pub audience: Option<String>,
    /// The claim holding the scopes.
    pub scopes_claim: String,
    /// The claim holding the user id.
    pub user_claim: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

/// One database the service reads.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// The id clients name in `db_id`.
    pub id: String,
    /// The connection URL; it may hold a password, so it is never logged.
    pub url: SecretString,
    /// The metrics tables it holds; the first is the default one. Never empty.
    #[serde(deserialize_with = "table_names")]
    pub tables: Vec<TableName>,
}

/// The file's layout, where it differs from [`Settings`]: the default database and the pool
/// settings share `[database]`, the others are `[[databases]]`.
#[derive(Debug, Deserialize)]
struct SettingsFile {
    http: HttpSettings,
    admin: AdminSettings,
    auth: AuthFile,
    database: DefaultDatabase,
    databases: Vec<DatabaseSettings>,
    cache: CacheSettings,
    log: LogSettings,
}

/// `[database]`.
#[derive(Debug, Deserialize)]
struct DefaultDatabase {
    id: String,
    url: SecretString,
    #[serde(deserialize_with = "table_names")]
    tables: Vec<TableName>,
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    pool_size: u32,
    #[serde(deserialize_with = "at_least::<_, _, 1000>")]
    tcp_timeout_ms: u64,
}

/// `[auth]`.
#[derive(Debug, Deserialize)]
struct AuthFile {
    #[serde(deserialize_with = "optional_secret")]
    security_key: Option<SecretString>,
    jwt: JwtFile,
}

/// `[auth.jwt]`: empty strings leave a value unset.
#[derive(Debug, Deserialize)]
struct JwtFile {
    #[serde(deserialize_with = "optional_secret")]
    verification_key: Option<SecretString>,
    #[serde(deserialize_with = "optional_text")]
    jwks_file: Option<String>,
    algorithm: String,
    #[serde(deserialize_with = "optional_text")]
    audience: Option<String>,
    scopes_claim: String,
    user_claim: String,
    leeway_ms: u64,
}

impl Settings {
    /// Loads the settings from the defaults, `file` and the process environment.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the source or key at fault.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, process_env())
    }

    /// Loads the settings from the defaults, `file` and the given environment variables.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the source or key at fault.
    pub fn load_from(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let read: SettingsFile = Layers {
            defaults: DEFAULT_TOML,
            file,
            aliases: &AGENTOS_VARIABLES,
        }
        .load(&env)?;
        Self::from_file(read)
    }

    fn from_file(read: SettingsFile) -> Result<Self, ConfigError> {
        let default = DatabaseSettings {
            id: read.database.id,
            url: read.database.url,
            tables: read.database.tables,
        };
        let databases: Vec<DatabaseSettings> =
            std::iter::once(default).chain(read.databases).collect();
        let mut ids = HashSet::new();
        for (index, database) in databases.iter().enumerate() {
            let section = if index == 0 {
                "database".to_owned()
            } else {
                format!("databases[{}]", index - 1)
            };
            if database.id.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{section}.id"),
                    "must not be empty",
                ));
            }
            if !ids.insert(database.id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{section}.id"),
                    format!("`{}` is used twice", database.id),
                ));
            }
            if database.url.expose_secret().is_empty() {
                return Err(ConfigError::invalid(
                    format!("{section}.url"),
                    "must not be empty",
                ));
            }
        }
        Ok(Self {
            http: read.http,
            admin: read.admin,
            auth: AuthSettings {
                security_key: read.auth.security_key,
                jwt: jwt_settings(read.auth.jwt)?,
            },
            databases,
            pool_size: read.database.pool_size,
            tcp_timeout: Duration::from_millis(read.database.tcp_timeout_ms),
            cache: read.cache,
            log: read.log,
        })
    }
}

/// JWT verification is on when a verification key or a JWKS file is set; the keys are loaded
/// once here so that a bad one fails at start, naming its key.
fn jwt_settings(read: JwtFile) -> Result<Option<JwtSettings>, ConfigError> {
    if read.verification_key.is_none() && read.jwks_file.is_none() {
        return Ok(None);
    }
    for (key, value) in [
        ("auth.jwt.scopes_claim", &read.scopes_claim),
        ("auth.jwt.user_claim", &read.user_claim),
    ] {
        if value.is_empty() {
            return Err(ConfigError::invalid(key, "must not be empty"));
        }
    }
    let settings = JwtSettings {
        verification_key: read.verification_key,
        jwks_file: read.jwks_file.map(PathBuf::from),
        algorithm: read.algorithm,
        audience: read.audience,
        scopes_claim: read.scopes_claim,
        user_claim: read.user_claim,
        leeway: Duration::from_secs(read.leeway_ms.div_ceil(1000)),
    };
    crate::jwt::JwtVerifier::new(&settings)
        .map_err(|err| ConfigError::invalid(err.key, err.reason))?;
    Ok(Some(settings))
}

/// Text that is unset when empty.
fn optional_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(deserializer)?;
    Ok((!text.is_empty()).then_some(text))
}

/// `tables`: a list in a file, a comma-separated string in the environment; at least one, each a
/// valid table name.
fn table_names<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<TableName>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        List(Vec<String>),
        Text(String),
    }
    let names = match Written::deserialize(deserializer)? {
        Written::List(names) => names,
        Written::Text(text) if text.is_empty() => Vec::new(),
        Written::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    if names.is_empty() {
        return Err(D::Error::custom("must name at least one table"));
    }
    names
        .into_iter()
        .map(|name| name.parse().map_err(D::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_load_without_any_file_or_environment() {
        let settings = Settings::load_from(None, HashMap::new()).unwrap();
        assert_eq!(settings.http.listen, "0.0.0.0:7777".parse().unwrap());
        assert_eq!(settings.admin.listen, "0.0.0.0:7778".parse().unwrap());
        assert_eq!(settings.http.workers, 0);
        assert_eq!(settings.http.request_timeout, Duration::from_secs(5));
        assert_eq!(settings.http.header_timeout, Duration::from_secs(5));
        assert_eq!(settings.http.keep_alive, Duration::from_secs(5));
        assert_eq!(settings.pool_size, 8);
        assert_eq!(
            settings.cache,
            CacheSettings {
                entries: 32,
                max_age: Duration::from_secs(1),
                max_body_bytes: 1024 * 1024,
            }
        );
        assert!(settings.auth.security_key.is_none());
        assert_eq!(settings.databases.len(), 1);
        assert_eq!(settings.databases[0].id, "default");
        assert_eq!(settings.databases[0].tables, vec![TableName::default()]);
        assert_eq!(
            settings.log,
            LogSettings {
                level: "info".to_owned(),
                format: LogFormat::Text
            }
        );
    }

    #[test]
    fn environment_overrides_nested_keys_and_lists() {
        let settings = Settings::load_from(
            None,
            env(&[
                ("METRICS_DATABASE__URL", "postgres://db/x"),
                ("METRICS_DATABASE__TABLES", "one,two"),
                ("METRICS_HTTP__LISTEN", "127.0.0.1:0"),
                ("METRICS_HTTP__WORKERS", "3"),
                ("METRICS_LOG__FORMAT", "json"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.databases[0].url.expose_secret(), "postgres://db/x");
        let tables: Vec<&str> = settings.databases[0]
            .tables
            .iter()
            .map(TableName::as_str)
            .collect();
        assert_eq!(tables, ["one", "two"]);
        assert_eq!(settings.http.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(settings.http.workers, 3);
        assert_eq!(settings.log.format, LogFormat::Json);
    }

    #[test]
    fn strings_that_look_like_numbers_or_booleans_stay_as_written() {
        for written in ["007", "1e3", "true", "0x1F", "-0", "1,2", " 42 "] {
            let settings = Settings::load_from(
                None,
                env(&[
                    ("METRICS_AUTH__SECURITY_KEY", written),
                    ("METRICS_DATABASE__ID", written),
                    ("METRICS_DATABASE__URL", written),
                ]),
            )
            .unwrap();
            let key = settings.auth.security_key.unwrap();
            assert_eq!(key.expose_secret(), written);
            assert_eq!(settings.databases[0].id, written);
            assert_eq!(settings.databases[0].url.expose_secret(), written);
        }
        // Where a setting is a number, the string is parsed as one.
        let settings = Settings::load_from(
            None,
            env(&[
                ("METRICS_HTTP__WORKERS", "007"),
                ("METRICS_DATABASE__TABLES", "t007"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.http.workers, 7);
        assert_eq!(settings.databases[0].tables[0].as_str(), "t007");
    }

    #[test]
    fn os_security_key_sets_the_key_and_the_service_variable_wins() {
        let key = |pairs: &[(&str, &str)]| {
            Settings::load_from(None, env(pairs))
                .unwrap()
                .auth
                .security_key
                .map(|key| key.expose_secret().to_owned())
        };
        assert_eq!(key(&[("OS_SECURITY_KEY", "k1")]), Some("k1".to_owned()));
        assert_eq!(
            key(&[
                ("OS_SECURITY_KEY", "k1"),
                ("METRICS_AUTH__SECURITY_KEY", "k2")
            ]),
            Some("k2".to_owned())
        );
        assert_eq!(key(&[("OS_SECURITY_KEY", "")]), None);
    }

    #[test]
    fn agentos_jwt_variables_turn_jwt_verification_on() {
        let settings = Settings::load_from(None, HashMap::new()).unwrap();
        assert!(settings.auth.jwt.is_none());
        let settings = Settings::load_from(
            None,
            env(&[
                ("JWT_VERIFICATION_KEY", "a shared secret"),
                ("METRICS_AUTH__JWT__ALGORITHM", "HS512"),
                ("METRICS_AUTH__JWT__AUDIENCE", "my-os"),
            ]),
        )
        .unwrap();
        let jwt = settings.auth.jwt.unwrap();
        assert_eq!(
            jwt.verification_key
                .map(|key| key.expose_secret().to_owned()),
            Some("a shared secret".to_owned())
        );
        assert_eq!(jwt.algorithm, "HS512");
        assert_eq!(jwt.audience.as_deref(), Some("my-os"));
        assert_eq!(jwt.scopes_claim, "scopes");
        assert_eq!(jwt.user_claim, "sub");
        assert_eq!(jwt.leeway, Duration::from_secs(10));
        assert_eq!(
            Settings::load_from(None, env(&[("JWT_VERIFICATION_KEY", "not a PEM key")]))
                .unwrap_err()
                .to_string()
                .split(':')
                .next(),
            Some("invalid configuration key `auth.jwt.verification_key`")
        );
        assert_eq!(
            Settings::load_from(None, env(&[("JWT_JWKS_FILE", "/nonexistent/jwks.json")]))
                .unwrap_err()
                .to_string()
                .split(':')
                .next(),
            Some("invalid configuration key `auth.jwt.jwks_file`")
        );
    }

    #[test]
    fn a_file_adds_databases() {
        let dir = std::env::temp_dir().join(format!("metrics-query-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("query.toml");
        std::fs::write(
            &path,
            "[[databases]]\nid = \"eu\"\nurl = \"postgres://eu/m\"\ntables = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let settings = Settings::load_from(Some(&path), HashMap::new()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let ids: Vec<&str> = settings.databases.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["default", "eu"]);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let message = |pairs: &[(&str, &str)]| {
            Settings::load_from(None, env(pairs))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            message(&[("METRICS_HTTP__LISTEN", "nowhere")]),
            "invalid configuration key `http.listen`: `nowhere` is not an address like 0.0.0.0:7777"
        );
        assert_eq!(
            message(&[("METRICS_DATABASE__POOL_SIZE", "0")]),
            "invalid configuration key `database.pool_size`: must be at least 1"
        );
        assert_eq!(
            message(&[("METRICS_DATABASE__TABLES", "Bad-Name")]),
            "invalid configuration key `database.tables`: `Bad-Name` is not a valid metrics table \
             name (a lowercase letter or `_`, then up to 62 lowercase letters, digits or `_`)"
        );
        assert_eq!(
            message(&[("METRICS_LOG__FORMAT", "xml")]),
            "invalid configuration key `log.format`: `xml` is neither `text` nor `json`"
        );
        assert_eq!(
            message(&[("METRICS_HTTP__REQUEST_TIMEOUT_MS", "0")]),
            "invalid configuration key `http.request_timeout_ms`: must be at least 1"
        );
    }
}
