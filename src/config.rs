//! The CA server's configuration: TOML, validated at start, overridable per key from the
//! environment (`LANYARD_<SECTION>_<KEY>`).
//!
//! Loading is strict: an unknown key, a wrong type or an out-of-range value is a
//! [`ConfigError`] that names the key, so `main` can exit 2 with a useful line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A configuration problem, always naming the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key is unknown, missing, of the wrong type or has a bad value.
    #[error("config key `{key}`: {message}")]
    Key {
        /// Dotted key path (`issuance.max_ttl`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// A problem with one named key.
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A duration written as `"90s"`, `"15m"`, `"24h"` or `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(ConfigDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `"90s"`, `"15m"`, `"24h"`, `"30d"` (and combinations such as `"1h30m"`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("`{s}` is not a duration like \"90s\", \"15m\", \"24h\" or \"30d\" ({e})")
    })
}

/// The whole server configuration (`ca-config/lanyard.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The SPIFFE trust domain, e.g. `lanyard.internal`.
    pub trust_domain: String,
    /// Where the store, the KEK file (dev) and the operator credential live.
    pub state_dir: PathBuf,
    /// Initialize an empty state on `serve` (dev).
    #[serde(default)]
    pub auto_init: bool,
    /// This replica's name, for the schedule lease and logs; default
    /// `<hostname>:<listen port>` (the port actually bound).
    #[serde(default)]
    pub replica_name: Option<String>,
    /// Where the API listens.
    pub listen: ListenConfig,
    /// Key-encryption key source.
    #[serde(default)]
    pub keys: KeysConfig,
    /// CA key algorithm and lifetimes.
    #[serde(default)]
    pub authority: AuthorityConfig,
    /// Leaf certificate lifetimes.
    #[serde(default)]
    pub issuance: IssuanceConfig,
    /// Root rotation.
    #[serde(default)]
    pub rotation: RotationConfig,
    /// Storage backend.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Client defaults for the CLI (`token`, `authority`, `cert`, `bundle`, `revoke`).
    #[serde(default)]
    pub client: ClientConfig,
}

/// `[listen]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenConfig {
    /// Socket address of the HTTPS API.
    pub address: SocketAddr,
    /// Extra DNS names or IP addresses for the server certificate (beside `localhost` and
    /// `127.0.0.1`).
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Connections not yet classified (TLS handshake, client-certificate check, or being
    /// refused), each bounded by the handshake timeout. Beyond it a new connection is closed
    /// at once, so the accept loop never stops accepting.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Connections whose client certificate verified against the bundle (cells, operators,
    /// components). Agents hold one long poll each, so this is sized for the platform.
    #[serde(default = "default_max_authenticated_connections")]
    pub max_authenticated_connections: usize,
    /// Connections without a verified client certificate (public endpoints, joins). Beyond
    /// it they are answered 503 while authenticated ones are still served.
    #[serde(default = "default_max_anonymous_connections")]
    pub max_anonymous_connections: usize,
    /// Anonymous connections (and handshakes in progress) from one IP address; generous so a
    /// NAT or a proxy in front of many clients still works.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Trust-bundle long polls held for anonymous callers; beyond it they are answered at
    /// once instead of held, so polls cannot take every anonymous connection from joins.
    #[serde(default = "default_max_anonymous_long_polls")]
    pub max_anonymous_long_polls: usize,
    /// Threads that run requests' blocking work (signing, store writes) at once; default
    /// four per CPU (store writes wait on fsync or the database, not only on the CPU).
    #[serde(default = "default_blocking_threads")]
    pub blocking_threads: usize,
    /// Requests whose blocking work may wait for a thread; beyond it they are answered 503
    /// with `Retry-After: 1`.
    #[serde(default = "default_blocking_queue_depth")]
    pub blocking_queue_depth: usize,
}

fn default_max_handshakes() -> usize {
    4096
}

fn default_max_authenticated_connections() -> usize {
    32768
}

fn default_max_anonymous_connections() -> usize {
    4096
}

fn default_max_connections_per_address() -> usize {
    256
}

fn default_max_anonymous_long_polls() -> usize {
    2048
}

fn default_blocking_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) * 4
}

fn default_blocking_queue_depth() -> usize {
    1024
}

/// `[keys]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysConfig {
    /// File holding the base64 KEK; `LANYARD_KEK` wins over it.
    pub kek_file: Option<PathBuf>,
}

/// `[authority]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthorityConfig {
    /// Only `ecdsa-p256` today.
    pub algorithm: String,
    /// Lifetime of a root.
    pub root_ttl: ConfigDuration,
    /// Lifetime of an intermediate.
    pub intermediate_ttl: ConfigDuration,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        AuthorityConfig {
            algorithm: "ecdsa-p256".into(),
            root_ttl: ConfigDuration(Duration::from_secs(365 * 86400)),
            intermediate_ttl: ConfigDuration(Duration::from_secs(30 * 86400)),
        }
    }
}

/// `[issuance]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssuanceConfig {
    /// TTL when a request names none.
    pub default_ttl: ConfigDuration,
    /// Shortest TTL a request may ask for.
    pub min_ttl: ConfigDuration,
    /// Longest TTL a request may ask for.
    pub max_ttl: ConfigDuration,
    /// How far notBefore is set in the past, for clock skew.
    pub backdate: ConfigDuration,
    /// Accept loopback `container_ip`s (local testing of apps that verify by IP). Off in
    /// production: a container never owns 127.0.0.1, and a certificate naming it could pass
    /// for a service on the cell.
    #[serde(default)]
    pub allow_loopback_ips: bool,
}

impl Default for IssuanceConfig {
    fn default() -> Self {
        IssuanceConfig {
            default_ttl: ConfigDuration(Duration::from_secs(86400)),
            min_ttl: ConfigDuration(Duration::from_secs(60)),
            max_ttl: ConfigDuration(Duration::from_secs(7 * 86400)),
            backdate: ConfigDuration(Duration::from_secs(60)),
            allow_loopback_ips: false,
        }
    }
}

/// `[rotation]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotationConfig {
    /// Prepare, activate and retire on schedule.
    pub automatic: bool,
    /// How long a prepared root must be published before it may sign.
    pub propagation_delay: ConfigDuration,
    /// How often the scheduler looks (default 10s).
    #[serde(default = "default_check_interval")]
    pub check_interval: ConfigDuration,
    /// How long the schedule lease lasts without a renewal (default 15s): on a shared
    /// store one replica at a time runs the schedule, and another takes over within two
    /// lease periods after its holder stops.
    #[serde(default = "default_lease")]
    pub lease: ConfigDuration,
}

fn default_lease() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(15))
}

/// The shortest root or intermediate lifetime (see `Config::validate`).
const MIN_CA_TTL: Duration = Duration::from_secs(2);

fn default_check_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            automatic: false,
            propagation_delay: ConfigDuration(Duration::from_secs(600)),
            check_interval: default_check_interval(),
            lease: default_lease(),
        }
    }
}

/// `[storage]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StorageConfig {
    /// `sled` (embedded, default) or `postgres`.
    pub backend: String,
    /// PostgreSQL URL for `backend = "postgres"`: `postgres://user:password@host:port/db`,
    /// optionally with `sslmode=disable|prefer|require|verify-full` and `sslrootcert=FILE`.
    pub url: Option<String>,
    /// How long a certificate record is kept after the certificate expired (default 90d);
    /// then the server deletes it. The audit log keeps the facts.
    #[serde(default = "default_expired_retention")]
    pub expired_retention: ConfigDuration,
}

fn default_expired_retention() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(90 * 86400))
}

/// The URL may hold the database password, so `Debug` (and so any `{:?}` of the config) shows
/// only whether one is set.
impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("backend", &self.backend)
            .field("url", &self.url.as_ref().map(|_| "..."))
            .field("expired_retention", &self.expired_retention)
            .finish()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: "sled".into(),
            url: None,
            expired_retention: default_expired_retention(),
        }
    }
}

/// `[client]`: what the CLI's client commands use when `--server`/`--credential` are not given.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientConfig {
    /// Base URL of the CA, default `https://<listen.address>`.
    pub server: Option<String>,
    /// Credential directory, default `<state_dir>/credentials/operator`.
    pub credential: Option<PathBuf>,
}

/// Every key of [`Config`] that an environment variable may override, as (section, key).
pub(crate) const SERVER_KEYS: &[(&str, &str)] = &[
    ("", "trust_domain"),
    ("", "state_dir"),
    ("", "auto_init"),
    ("", "replica_name"),
    ("listen", "address"),
    ("listen", "server_names"),
    ("listen", "max_handshakes"),
    ("listen", "max_authenticated_connections"),
    ("listen", "max_anonymous_connections"),
    ("listen", "max_connections_per_address"),
    ("listen", "max_anonymous_long_polls"),
    ("listen", "blocking_threads"),
    ("listen", "blocking_queue_depth"),
    ("keys", "kek_file"),
    ("authority", "algorithm"),
    ("authority", "root_ttl"),
    ("authority", "intermediate_ttl"),
    ("issuance", "default_ttl"),
    ("issuance", "min_ttl"),
    ("issuance", "max_ttl"),
    ("issuance", "backdate"),
    ("issuance", "allow_loopback_ips"),
    ("rotation", "automatic"),
    ("rotation", "propagation_delay"),
    ("rotation", "check_interval"),
    ("rotation", "lease"),
    ("storage", "backend"),
    ("storage", "url"),
    ("storage", "expired_retention"),
    ("client", "server"),
    ("client", "credential"),
];

impl Config {
    /// Reads, overrides from the environment, parses and validates.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = load_toml(path, SERVER_KEYS)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let td = &self.trust_domain;
        if td.is_empty()
            || td.len() > 255
            || !td
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
            || td.starts_with(['.', '-'])
            || td.ends_with(['.', '-'])
        {
            return Err(ConfigError::key(
                "trust_domain",
                "must be a lowercase DNS name such as `lanyard.internal`",
            ));
        }
        if self.authority.algorithm != "ecdsa-p256" {
            return Err(ConfigError::key(
                "authority.algorithm",
                format!(
                    "`{}` is not supported (use \"ecdsa-p256\")",
                    self.authority.algorithm
                ),
            ));
        }
        let a = &self.authority;
        // Short CA lifetimes are allowed so rotation can be exercised end to end in tests.
        // The floor is what whole-second X.509 times allow: notAfter is encoded truncated to
        // the second, so a CA certificate configured for 2s really lives between 1s and 2s,
        // and one configured for 1s could expire a moment after it was signed.
        if a.root_ttl.0 < MIN_CA_TTL {
            return Err(ConfigError::key(
                "authority.root_ttl",
                "must be at least 2s",
            ));
        }
        if a.intermediate_ttl.0 > a.root_ttl.0 || a.intermediate_ttl.0 < MIN_CA_TTL {
            return Err(ConfigError::key(
                "authority.intermediate_ttl",
                "must be at least 2s and not longer than authority.root_ttl",
            ));
        }
        let i = &self.issuance;
        // A leaf may ask for 1s (it then lives under a second, see above): the caller's
        // choice, since the CA's own credentials use default_ttl and max_ttl.
        if i.min_ttl.0 < Duration::from_secs(1) {
            return Err(ConfigError::key("issuance.min_ttl", "must be at least 1s"));
        }
        if i.max_ttl < i.min_ttl {
            return Err(ConfigError::key(
                "issuance.max_ttl",
                "must not be below issuance.min_ttl",
            ));
        }
        if i.default_ttl < i.min_ttl || i.default_ttl > i.max_ttl {
            return Err(ConfigError::key(
                "issuance.default_ttl",
                "must lie between issuance.min_ttl and issuance.max_ttl",
            ));
        }
        if i.max_ttl.0 > a.intermediate_ttl.0 {
            return Err(ConfigError::key(
                "issuance.max_ttl",
                "must not be longer than authority.intermediate_ttl",
            ));
        }
        if i.backdate.0 > Duration::from_secs(3600) {
            return Err(ConfigError::key("issuance.backdate", "must be at most 1h"));
        }
        if self.rotation.automatic && self.rotation.propagation_delay.0 * 3 > a.root_ttl.0 {
            // The schedule prepares at 1/2 and must activate by 5/6 of the root's life.
            return Err(ConfigError::key(
                "rotation.propagation_delay",
                "must be shorter than a third of authority.root_ttl when rotation.automatic is on",
            ));
        }
        // Each check reads the generations and the local credentials; 100ms keeps the
        // background loops far from busy even with the shortest lifetimes.
        if self.rotation.check_interval.0 < Duration::from_millis(100) {
            return Err(ConfigError::key(
                "rotation.check_interval",
                "must be at least 100ms",
            ));
        }
        // The intermediate is renewed when a third of its life is left, and the automatic
        // schedule must see both half and five sixths of the root's life (a window of a
        // third, with intermediate_ttl <= root_ttl): checks at most a sixth apart land at
        // least twice in each window.
        if self.rotation.check_interval.0 * 6 > a.intermediate_ttl.0 {
            return Err(ConfigError::key(
                "rotation.check_interval",
                "must be at most a sixth of authority.intermediate_ttl",
            ));
        }
        // Renewed every third of the period: at least a second keeps that from being busy
        // work, at most an hour keeps a takeover from waiting for most of a day.
        let lease = self.rotation.lease.0;
        if lease < Duration::from_secs(1) || lease > Duration::from_secs(3600) {
            return Err(ConfigError::key(
                "rotation.lease",
                "must be between 1s and 1h",
            ));
        }
        if let Some(name) = &self.replica_name {
            if name.trim().is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
                return Err(ConfigError::key(
                    "replica_name",
                    "must be 1 to 255 printable characters",
                ));
            }
        }
        // A record is what `GET /v1/certificates` and revocation find: it must outlive
        // every clock skew between replicas and the backdate of the certificates.
        if self.storage.expired_retention.0 < Duration::from_secs(1) {
            return Err(ConfigError::key(
                "storage.expired_retention",
                "must be at least 1s",
            ));
        }
        match self.storage.backend.as_str() {
            "sled" => {}
            "postgres" => match &self.storage.url {
                None => return Err(ConfigError::key(
                    "storage.url",
                    "is required when storage.backend is \"postgres\" (or set LANYARD_STORAGE_URL)",
                )),
                Some(url) => crate::store::PostgresStore::check_url(url)
                    .map_err(|e| ConfigError::key("storage.url", e))?,
            },
            other => {
                return Err(ConfigError::key(
                    "storage.backend",
                    format!("`{other}` is not a backend (use \"sled\" or \"postgres\")"),
                ))
            }
        }
        let l = &self.listen;
        for (key, value) in [
            ("listen.max_handshakes", l.max_handshakes),
            (
                "listen.max_authenticated_connections",
                l.max_authenticated_connections,
            ),
            (
                "listen.max_anonymous_connections",
                l.max_anonymous_connections,
            ),
            (
                "listen.max_connections_per_address",
                l.max_connections_per_address,
            ),
            ("listen.blocking_threads", l.blocking_threads),
        ] {
            // Zero would refuse every connection (or every request) of that kind.
            if value == 0 {
                return Err(ConfigError::key(key, "must be at least 1"));
            }
        }
        for n in &self.listen.server_names {
            if n.parse::<crate::ids::Name>().is_err() && n.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::key(
                    "listen.server_names",
                    format!("`{n}` is not a DNS name or IP address"),
                ));
            }
        }
        Ok(())
    }

    /// This replica's name: `replica_name`, else `<hostname>:<port>` with the port the API
    /// listener actually bound (`listen.address` may say port 0).
    pub(crate) fn replica_name(&self, bound_port: u16) -> String {
        if let Some(n) = &self.replica_name {
            return n.clone();
        }
        format!("{}:{bound_port}", hostname())
    }

    /// The KEK file: the configured one, or none.
    pub(crate) fn kek_file(&self) -> Option<&Path> {
        self.keys.kek_file.as_deref()
    }

    /// Directory of the local operator credential written by `init`.
    pub(crate) fn operator_credential_dir(&self) -> PathBuf {
        self.state_dir.join("credentials").join("operator")
    }

    /// The URL clients use by default.
    pub(crate) fn client_server_url(&self) -> String {
        if let Some(s) = &self.client.server {
            return s.clone();
        }
        let addr = self.listen.address;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        format!("https://{host}:{}", addr.port())
    }

    /// The credential directory clients use by default.
    pub(crate) fn client_credential_dir(&self) -> PathBuf {
        self.client
            .credential
            .clone()
            .unwrap_or_else(|| self.operator_credential_dir())
    }
}

/// The host's name, as the kernel has it (no dependency for one value), else `$HOSTNAME`,
/// else `localhost`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Environment variables that start with `LANYARD_` but name no key of `key_sets` and are
/// not one of the process variables: most likely a misspelled override.
pub(crate) fn unknown_env_overrides(key_sets: &[&[(&str, &str)]]) -> Vec<String> {
    const PROCESS: &[&str] = &[
        "LANYARD_KEK",
        "LANYARD_CONFIG",
        "LANYARD_LOG",
        "LANYARD_LOG_FORMAT",
        "LANYARD_JOIN_TOKEN",
        // The test suite's: scripts/test.sh exports them to every process of a run, the
        // servers that tests start included.
        "LANYARD_TEST_POSTGRES_URL",
        "LANYARD_REQUIRE_POSTGRES",
        "LANYARD_REQUIRE_CHROMIUM",
        // scripts/test.sh's thread count, inherited the same way when set.
        "LANYARD_TEST_THREADS",
    ];
    let known: std::collections::HashSet<String> = key_sets
        .iter()
        .flat_map(|set| set.iter())
        .map(|(section, key)| env_name(section, key))
        .chain(PROCESS.iter().map(|s| s.to_string()))
        .collect();
    let mut unknown: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("LANYARD_") && !known.contains(k))
        .collect();
    unknown.sort();
    unknown
}

fn env_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        format!("LANYARD_{}", key.to_ascii_uppercase())
    } else {
        format!(
            "LANYARD_{}_{}",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        )
    }
}

/// Reads a TOML file, applies `LANYARD_<SECTION>_<KEY>` overrides for `keys`, and
/// deserializes it strictly, naming the key path of any error.
pub(crate) fn load_toml<T: DeserializeOwned>(
    path: &Path,
    keys: &[(&str, &str)],
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut value: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })?;
    apply_env_overrides(&mut value, keys)?;
    let de = toml::Value::Table(value);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let message = e.inner().message().to_string();
        ConfigError::Key {
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message,
        }
    })
}

fn apply_env_overrides(table: &mut toml::Table, keys: &[(&str, &str)]) -> Result<(), ConfigError> {
    for (section, key) in keys {
        let var = env_name(section, key);
        let Ok(raw) = std::env::var(&var) else {
            continue;
        };
        // A value that parses as TOML (true, 3, ["a"]) is taken as such; anything else is a
        // string, so `LANYARD_LISTEN_ADDRESS=127.0.0.1:9000` needs no quotes.
        let parsed = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw.clone()));
        let target = if section.is_empty() {
            &mut *table
        } else {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => t,
                _ => return Err(ConfigError::key(*section, "must be a table")),
            }
        };
        target.insert(key.to_string(), parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    const DEV: &str = include_str!("../ca-config/lanyard.toml");

    #[test]
    fn the_dev_config_loads() {
        let f = write(DEV);
        let c = Config::load(f.path()).unwrap();
        assert_eq!(c.trust_domain, "lanyard.internal");
        assert_eq!(c.issuance.default_ttl.0, Duration::from_secs(86400));
        assert_eq!(c.authority.root_ttl.0, Duration::from_secs(365 * 86400));
    }

    #[test]
    fn the_production_example_loads() {
        let text = include_str!("../ca-config/production.example.toml");
        let f = write(text);
        let c = Config::load(f.path()).unwrap();
        assert!(!c.auto_init);
        assert_eq!(
            c.listen.server_names,
            vec!["lanyard.service.cf.internal".to_string()]
        );
    }

    #[test]
    fn port_zero_lets_the_system_pick_the_port() {
        let f = write(&DEV.replace("127.0.0.1:8443", "127.0.0.1:0"));
        let c = Config::load(f.path()).unwrap();
        assert_eq!(c.listen.address.port(), 0);
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let f = write(&DEV.replace("[issuance]", "[issuance]\nbogus = 1"));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn a_bad_duration_is_an_error_naming_the_key() {
        let f = write(&DEV.replace("default_ttl = \"24h\"", "default_ttl = \"soon\""));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("issuance.default_ttl"), "{e}");
    }

    #[test]
    fn a_default_ttl_outside_the_limits_is_refused() {
        let f = write(&DEV.replace("default_ttl = \"24h\"", "default_ttl = \"30d\""));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("issuance.default_ttl"), "{e}");
    }

    /// The dev config with `[section] key = value` lines added (later keys win).
    fn dev_with(lines: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut text = DEV.to_string();
        for (section, line) in lines {
            let header = format!("[{section}]");
            let body = text
                .lines()
                .filter(|l| !l.starts_with(line.split('=').next().unwrap()))
                .collect::<Vec<_>>()
                .join("\n");
            text = body.replacen(&header, &format!("{header}\n{line}"), 1);
        }
        let f = write(&text);
        Config::load(f.path())
    }

    const SHORTEST: &[(&str, &str)] = &[
        ("authority", "root_ttl = \"2s\""),
        ("authority", "intermediate_ttl = \"2s\""),
        ("issuance", "min_ttl = \"1s\""),
        ("issuance", "default_ttl = \"1s\""),
        ("issuance", "max_ttl = \"2s\""),
        ("rotation", "automatic = true"),
        ("rotation", "propagation_delay = \"500ms\""),
        ("rotation", "check_interval = \"100ms\""),
    ];

    #[test]
    fn two_second_ca_lifetimes_with_automatic_rotation_are_accepted() {
        let c = dev_with(SHORTEST).unwrap();
        assert_eq!(c.authority.root_ttl.0, Duration::from_secs(2));
        assert_eq!(c.authority.intermediate_ttl.0, Duration::from_secs(2));
        assert_eq!(c.rotation.check_interval.0, Duration::from_millis(100));
    }

    #[test]
    fn ca_lifetimes_under_two_seconds_are_refused() {
        for (key, line) in [
            ("authority.root_ttl", "root_ttl = \"1s\""),
            (
                "authority.intermediate_ttl",
                "intermediate_ttl = \"1500ms\"",
            ),
        ] {
            let mut lines = SHORTEST.to_vec();
            lines.push(("authority", line));
            let e = dev_with(&lines).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("at least 2s"), "{e}");
        }
    }

    #[test]
    fn a_check_interval_under_100ms_or_over_a_sixth_of_the_intermediate_life_is_refused() {
        for (line, why) in [
            ("check_interval = \"50ms\"", "at least 100ms"),
            (
                "check_interval = \"400ms\"",
                "a sixth of authority.intermediate_ttl",
            ),
        ] {
            let mut lines = SHORTEST.to_vec();
            lines.push(("rotation", line));
            let e = dev_with(&lines).unwrap_err().to_string();
            assert!(
                e.contains("rotation.check_interval") && e.contains(why),
                "{e}"
            );
        }
        // The default interval (10s) is fine with a one-minute intermediate.
        dev_with(&[
            ("authority", "intermediate_ttl = \"1m\""),
            ("issuance", "default_ttl = \"1m\""),
            ("issuance", "max_ttl = \"1m\""),
        ])
        .unwrap();
    }

    #[test]
    fn a_propagation_delay_over_a_third_of_the_root_life_is_refused_with_automatic_rotation() {
        let mut lines = SHORTEST.to_vec();
        lines.push(("rotation", "propagation_delay = \"700ms\""));
        let e = dev_with(&lines).unwrap_err().to_string();
        assert!(e.contains("rotation.propagation_delay"), "{e}");
    }

    #[test]
    fn the_schedule_lease_defaults_to_15s_and_is_bounded() {
        let c = dev_with(&[]).unwrap();
        assert_eq!(c.rotation.lease.0, Duration::from_secs(15));
        assert_eq!(c.replica_name, None);
        for bad in ["lease = \"500ms\"", "lease = \"2h\"", "lease = \"soon\""] {
            let e = dev_with(&[("rotation", bad)]).unwrap_err().to_string();
            assert!(e.contains("rotation.lease"), "{e}");
        }
        let c = dev_with(&[("rotation", "lease = \"3s\"")]).unwrap();
        assert_eq!(c.rotation.lease.0, Duration::from_secs(3));
    }

    #[test]
    fn expired_records_are_kept_90_days_unless_configured_and_at_least_a_second() {
        let c = dev_with(&[]).unwrap();
        assert_eq!(
            c.storage.expired_retention.0,
            Duration::from_secs(90 * 86400)
        );
        let c = dev_with(&[("storage", "expired_retention = \"1h\"")]).unwrap();
        assert_eq!(c.storage.expired_retention.0, Duration::from_secs(3600));
        let e = dev_with(&[("storage", "expired_retention = \"500ms\"")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.expired_retention"), "{e}");
    }

    #[test]
    fn the_debug_output_of_the_config_never_shows_the_database_url() {
        let c = StorageConfig {
            backend: "postgres".into(),
            url: Some("postgres://lanyard:s3cret@db:5432/lanyard".into()),
            ..StorageConfig::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres"), "{shown}");
    }

    #[test]
    fn the_replica_name_defaults_to_host_and_bound_port() {
        let c = dev_with(&[]).unwrap();
        let name = c.replica_name(8443);
        assert!(name.ends_with(":8443") && name.len() > 5, "{name}");
        let f = write(&format!("replica_name = \"ca-1\"\n{DEV}"));
        let c = Config::load(f.path()).unwrap();
        assert_eq!(c.replica_name(8443), "ca-1");
        let f = write(&format!("replica_name = \"\"\n{DEV}"));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("replica_name"), "{e}");
    }

    #[test]
    fn durations_accept_the_documented_forms() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert!(parse_duration("12").is_err());
    }
}
