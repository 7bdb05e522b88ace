//! Settings: the embedded `config/default.toml`, an optional `--config` file, then the
//! environment (`METRICS_` + key path with `__`, and AgentOS's `OS_SECURITY_KEY`,
//! `JWT_VERIFICATION_KEY` and `JWT_JWKS_FILE`), validated into one typed tree. Only this module reads the environment; tests build [`Settings`] in code.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use metrics_aggregator::TableName;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The reference configuration, embedded so the binary runs without any file.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The environment variable AgentOS reads its security key from.
pub const OS_SECURITY_KEY: &str = "OS_SECURITY_KEY";

/// The environment variables AgentOS reads its JWT keys from, and the keys they set.
pub const JWT_VARIABLES: [(&str, &str); 2] = [
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Most responses kept; 0 disables the cache.
    pub entries: usize,
    /// Longest an entry is reused.
    pub max_age: Duration,
    /// Largest body kept; larger ones are served, never stored.
    pub max_body_bytes: usize,
}

/// The public API listener.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Longest a request waits for the database.
    pub request_timeout: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_timeout: Duration,
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Where to listen; port 0 picks a free port.
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
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// The id clients name in `db_id`.
    pub id: String,
    /// The connection URL; it may hold a password, so it is never logged.
    pub url: SecretString,
    /// The metrics tables it holds; the first is the default one. Never empty.
    pub tables: Vec<TableName>,
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The default level filter (`RUST_LOG` overrides it).
    pub level: String,
    /// JSON lines instead of compact text.
    pub json: bool,
}

/// Why the settings could not be loaded; the message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or deserialised.
    #[error("reading the configuration")]
    Load(#[from] config::ConfigError),
    /// A value is out of its domain.
    #[error("invalid configuration key `{key}`: {reason}")]
    Invalid {
        /// The dotted key path.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
struct RawSettings {
    http: RawHttp,
    admin: RawAdmin,
    auth: RawAuth,
    database: RawDatabase,
    databases: Vec<RawExtraDatabase>,
    cache: RawCache,
    log: RawLog,
}

#[derive(Debug, Deserialize)]
struct RawCache {
    entries: usize,
    max_age_ms: u64,
    max_body_bytes: usize,
}

#[derive(Debug, Deserialize)]
struct RawHttp {
    listen: String,
    workers: usize,
    request_timeout_ms: u64,
    shutdown_timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
struct RawAdmin {
    listen: String,
}

#[derive(Debug, Deserialize)]
struct RawAuth {
    security_key: SecretString,
    jwt: RawJwt,
}

#[derive(Debug, Deserialize)]
struct RawJwt {
    verification_key: SecretString,
    jwks_file: String,
    algorithm: String,
    audience: String,
    scopes_claim: String,
    user_claim: String,
    leeway_ms: u64,
}

#[derive(Debug, Deserialize)]
struct RawDatabase {
    id: String,
    url: SecretString,
    tables: RawTables,
    pool_size: u32,
    tcp_timeout_ms: u64,
}

/// `tables`: a list in a file, a comma-separated string in the environment.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawTables {
    List(Vec<String>),
    Text(String),
}

impl RawTables {
    fn into_names(self) -> Vec<String> {
        match self {
            RawTables::List(names) => names,
            RawTables::Text(text) if text.is_empty() => Vec::new(),
            RawTables::Text(text) => text.split(',').map(str::to_owned).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawExtraDatabase {
    id: String,
    url: SecretString,
    tables: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawLog {
    level: String,
    format: String,
}

impl Settings {
    /// Loads the settings from the defaults, `file` and the process environment.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the source or key at fault.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars().collect())
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
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(file) = file {
            builder = builder.add_source(File::from(file).format(FileFormat::Toml));
        }
        let os_key: HashMap<String, String> = env
            .get(OS_SECURITY_KEY)
            .map(|key| ("AUTH__SECURITY_KEY".to_owned(), key.clone()))
            .into_iter()
            .chain(JWT_VARIABLES.iter().filter_map(|(variable, key)| {
                env.get(*variable)
                    .map(|value| ((*key).to_owned(), value.clone()))
            }))
            .collect();
        let metrics_env: HashMap<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with("METRICS_"))
            .collect();
        let raw: RawSettings = builder
            .add_source(Environment::default().separator("__").source(Some(os_key)))
            // Every value stays the string it was written as: keys, URLs and names are never
            // coerced (`try_parsing` would turn a key `007` into `7` and `1e3` into `1000`).
            // Numbers and booleans are parsed by deserialisation, only where the setting is
            // one; `database.tables` splits its own comma-separated string.
            .add_source(
                Environment::with_prefix("METRICS")
                    .prefix_separator("_")
                    .separator("__")
                    .source(Some(metrics_env)),
            )
            .build()?
            .try_deserialize()?;
        Self::validate(raw)
    }

    fn validate(raw: RawSettings) -> Result<Self, ConfigError> {
        let default = DatabaseSettings {
            tables: tables("database.tables", raw.database.tables.into_names())?,
            id: raw.database.id,
            url: raw.database.url,
        };
        let mut databases = vec![default];
        for (index, extra) in raw.databases.into_iter().enumerate() {
            databases.push(DatabaseSettings {
                tables: tables(&format!("databases[{index}].tables"), extra.tables)?,
                id: extra.id,
                url: extra.url,
            });
        }
        let mut ids = HashSet::new();
        for (index, database) in databases.iter().enumerate() {
            let key = if index == 0 {
                "database.id".to_owned()
            } else {
                format!("databases[{}].id", index - 1)
            };
            if database.id.is_empty() {
                return Err(invalid(&key, "must not be empty"));
            }
            if !ids.insert(database.id.as_str()) {
                return Err(invalid(&key, format!("`{}` is used twice", database.id)));
            }
            if database.url.expose_secret().is_empty() {
                let key = key.replace(".id", ".url");
                return Err(invalid(&key, "must not be empty"));
            }
        }
        if raw.database.pool_size == 0 {
            return Err(invalid("database.pool_size", "must be at least 1"));
        }
        if raw.http.request_timeout_ms == 0 {
            return Err(invalid("http.request_timeout_ms", "must be at least 1"));
        }
        if raw.database.tcp_timeout_ms < 1000 {
            return Err(invalid("database.tcp_timeout_ms", "must be at least 1000"));
        }
        let json = match raw.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("`{other}` is neither `text` nor `json`"),
                ));
            }
        };
        let key = raw.auth.security_key;
        let jwt = jwt_settings(raw.auth.jwt)?;
        Ok(Self {
            http: HttpSettings {
                listen: address("http.listen", &raw.http.listen)?,
                workers: raw.http.workers,
                request_timeout: Duration::from_millis(raw.http.request_timeout_ms),
                shutdown_timeout: Duration::from_millis(raw.http.shutdown_timeout_ms),
            },
            admin: AdminSettings {
                listen: address("admin.listen", &raw.admin.listen)?,
            },
            auth: AuthSettings {
                security_key: (!key.expose_secret().is_empty()).then_some(key),
                jwt,
            },
            databases,
            pool_size: raw.database.pool_size,
            tcp_timeout: Duration::from_millis(raw.database.tcp_timeout_ms),
            cache: CacheSettings {
                entries: raw.cache.entries,
                max_age: Duration::from_millis(raw.cache.max_age_ms),
                max_body_bytes: raw.cache.max_body_bytes,
            },
            log: LogSettings {
                level: raw.log.level,
                json,
            },
        })
    }
}

/// JWT verification is on when a verification key or a JWKS file is set; the keys are loaded
/// once here so that a bad one fails at start, naming its key.
fn jwt_settings(raw: RawJwt) -> Result<Option<JwtSettings>, ConfigError> {
    let verification_key =
        (!raw.verification_key.expose_secret().is_empty()).then_some(raw.verification_key);
    let jwks_file = (!raw.jwks_file.is_empty()).then(|| PathBuf::from(raw.jwks_file));
    if verification_key.is_none() && jwks_file.is_none() {
        return Ok(None);
    }
    for (key, value) in [
        ("auth.jwt.scopes_claim", &raw.scopes_claim),
        ("auth.jwt.user_claim", &raw.user_claim),
    ] {
        if value.is_empty() {
            return Err(invalid(key, "must not be empty"));
        }
    }
    let settings = JwtSettings {
        verification_key,
        jwks_file,
        algorithm: raw.algorithm,
        audience: (!raw.audience.is_empty()).then_some(raw.audience),
        scopes_claim: raw.scopes_claim,
        user_claim: raw.user_claim,
        leeway: Duration::from_secs(raw.leeway_ms.div_ceil(1000)),
    };
    crate::jwt::JwtVerifier::new(&settings).map_err(|err| invalid(err.key, err.reason))?;
    Ok(Some(settings))
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn address(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("`{value}` is not an address like 0.0.0.0:7777"),
        )
    })
}

fn tables(key: &str, names: Vec<String>) -> Result<Vec<TableName>, ConfigError> {
    if names.is_empty() {
        return Err(invalid(key, "must name at least one table"));
    }
    names
        .into_iter()
        .map(|name| name.parse().map_err(|err| invalid(key, format!("{err}"))))
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
                json: false
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
        assert!(settings.log.json);
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
