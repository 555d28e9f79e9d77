//! The agent's configuration (`ca-config/agent.toml`), loaded as strictly as the server's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{load_toml, ConfigDuration, ConfigError};

/// Where the local API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket path (`unix:/run/lanyard/agent.sock`).
    Unix(PathBuf),
    /// A loopback TCP address (`127.0.0.1:PORT`), for tests.
    Tcp(std::net::SocketAddr),
}

impl Listen {
    fn parse(s: &str) -> Result<Listen, ConfigError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(ConfigError::key("listen", "`unix:` needs a socket path"));
            }
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        let addr: std::net::SocketAddr = s.parse().map_err(|_| {
            ConfigError::key(
                "listen",
                format!("`{s}` is neither `unix:/path` nor `127.0.0.1:PORT`"),
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(ConfigError::key(
                "listen",
                "the local API speaks plain HTTP and may listen on loopback only",
            ));
        }
        Ok(Listen::Tcp(addr))
    }
}

/// `ca-config/agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// CA URL, `https://host:port`; or `servers`, exactly one of the two.
    #[serde(default)]
    pub server: Option<String>,
    /// Several CA replica URLs, tried in this order when one cannot be reached or answers
    /// 503; or `server`, exactly one of the two.
    #[serde(default)]
    pub servers: Option<Vec<String>>,
    /// `server` or `servers`, resolved and checked by [`AgentConfig::load`].
    #[serde(skip)]
    urls: Vec<String>,
    /// Bootstrap trust: the CA's bundle (PEM).
    pub trust_bundle_file: PathBuf,
    /// The one-time join token (`LANYARD_JOIN_TOKEN` wins).
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
    /// Where per-instance directories are written.
    pub credentials_root: PathBuf,
    /// Where the agent keeps its cell credential, bundle and instance list (default: a
    /// sibling of `credentials_root` named `<root>.agent-state`).
    #[serde(default)]
    pub state_dir: PathBuf,
    /// `unix:/path` or `127.0.0.1:PORT` (default: `unix:<state_dir>/agent.sock`).
    #[serde(default)]
    pub listen: String,
    /// Lifetime requested for instance certificates (default 24h).
    #[serde(default = "default_instance_ttl")]
    pub instance_ttl: ConfigDuration,
    /// Renew when this fraction of the time from receipt to notAfter has passed.
    #[serde(default = "default_renew_fraction")]
    pub renew_fraction: f64,
    /// Longest wait between retries after a failure.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: ConfigDuration,
    /// How long the agent gathers instance requests into one batch.
    #[serde(default = "default_batch_window")]
    pub batch_window: ConfigDuration,
}

fn default_instance_ttl() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(86400))
}

fn default_renew_fraction() -> f64 {
    0.5
}

fn default_max_backoff() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

fn default_batch_window() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(20))
}

/// Every key of [`AgentConfig`] an environment variable may override (`LANYARD_<KEY>`).
pub(crate) const AGENT_KEYS: &[(&str, &str)] = &[
    ("", "server"),
    ("", "servers"),
    ("", "trust_bundle_file"),
    ("", "join_token_file"),
    ("", "credentials_root"),
    ("", "state_dir"),
    ("", "listen"),
    ("", "instance_ttl"),
    ("", "renew_fraction"),
    ("", "max_backoff"),
    ("", "batch_window"),
];

impl AgentConfig {
    /// Reads and validates the file (with `LANYARD_<KEY>` overrides).
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let mut c: AgentConfig = load_toml(path, AGENT_KEYS)?;
        if c.state_dir.as_os_str().is_empty() {
            let name = c
                .credentials_root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "credentials".into());
            c.state_dir = c
                .credentials_root
                .parent()
                .unwrap_or(Path::new("."))
                .join(format!("{name}.agent-state"));
        }
        if c.listen.is_empty() {
            c.listen = format!("unix:{}", c.state_dir.join("agent.sock").display());
        }
        c.listen()?;
        c.urls = c.resolve_servers(
            std::env::var_os("LANYARD_SERVER").is_some(),
            std::env::var_os("LANYARD_SERVERS").is_some(),
        )?;
        if !(c.renew_fraction > 0.0 && c.renew_fraction < 1.0) {
            return Err(ConfigError::key(
                "renew_fraction",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if c.instance_ttl.0 < Duration::from_secs(1) {
            return Err(ConfigError::key("instance_ttl", "must be at least 1s"));
        }
        if c.batch_window.0 > Duration::from_secs(1) {
            return Err(ConfigError::key("batch_window", "must be at most 1s"));
        }
        Ok(c)
    }

    /// The CA URLs in order of preference: `server` alone, or `servers`.
    pub fn server_urls(&self) -> &[String] {
        &self.urls
    }

    /// `server` or `servers` as one checked list. `from_env_*` say whether the environment
    /// set that key: an environment override of either one replaces both from the file, so
    /// `LANYARD_SERVER` still works on a file that lists `servers` (and the reverse).
    fn resolve_servers(
        &mut self,
        server_from_env: bool,
        servers_from_env: bool,
    ) -> Result<Vec<String>, ConfigError> {
        match (server_from_env, servers_from_env) {
            (true, false) => self.servers = None,
            (false, true) => self.server = None,
            _ => {}
        }
        let urls = match (&self.server, &self.servers) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::key(
                    "servers",
                    "give either `server` (one CA URL) or `servers` (several), not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::key(
                    "server",
                    "missing: the CA URL (or `servers = [URL, ...]` for several replicas)",
                ))
            }
            (Some(one), None) => {
                check_url(one).map_err(|m| ConfigError::key("server", m))?;
                vec![one.clone()]
            }
            (None, Some(list)) => {
                if list.is_empty() {
                    return Err(ConfigError::key("servers", "must name at least one URL"));
                }
                for (i, url) in list.iter().enumerate() {
                    check_url(url).map_err(|m| ConfigError::key(format!("servers[{i}]"), m))?;
                    if list[..i].contains(url) {
                        return Err(ConfigError::key(
                            format!("servers[{i}]"),
                            format!("`{url}` is listed twice"),
                        ));
                    }
                }
                list.clone()
            }
        };
        Ok(urls)
    }

    /// The parsed listen address.
    pub fn listen(&self) -> Result<Listen, ConfigError> {
        Listen::parse(&self.listen)
    }
}

/// An `https://host[:port]` URL, as the client will need it.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
    if parsed.scheme() != "https" || parsed.host_str().is_none() {
        return Err(format!("`{url}` must be an https://host[:port] URL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_agent_config_loads() {
        let c = AgentConfig::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/ca-config/agent.toml"
        )))
        .unwrap();
        assert_eq!(c.renew_fraction, 0.5);
        assert!(matches!(c.listen().unwrap(), Listen::Unix(_)));
    }

    #[test]
    fn a_minimal_config_gets_defaults_for_the_rest() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            "server = \"https://127.0.0.1:8443\"\ntrust_bundle_file = \"/b.pem\"\ncredentials_root = \"/var/creds\"\n",
        )
        .unwrap();
        let c = AgentConfig::load(f.path()).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/creds.agent-state"));
        assert_eq!(
            c.listen().unwrap(),
            Listen::Unix("/var/creds.agent-state/agent.sock".into())
        );
        assert_eq!(c.instance_ttl.0, Duration::from_secs(86400));
    }

    fn load_text(text: &str) -> Result<AgentConfig, ConfigError> {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            format!("{text}\ntrust_bundle_file = \"/b.pem\"\ncredentials_root = \"/var/creds\"\n"),
        )
        .unwrap();
        AgentConfig::load(f.path())
    }

    fn error_key(r: Result<AgentConfig, ConfigError>) -> String {
        match r {
            Err(ConfigError::Key { key, .. }) => key,
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn server_or_servers_gives_the_ordered_urls() {
        let c = load_text("server = \"https://ca:8443\"").unwrap();
        assert_eq!(c.server_urls(), ["https://ca:8443"]);
        let c = load_text("servers = [\"https://b:8443\", \"https://a:8443\"]").unwrap();
        assert_eq!(c.server_urls(), ["https://b:8443", "https://a:8443"]);
    }

    #[test]
    fn exactly_one_of_server_and_servers_with_https_urls() {
        let both = "server = \"https://a:1\"\nservers = [\"https://b:1\"]";
        assert_eq!(error_key(load_text(both)), "servers");
        assert_eq!(error_key(load_text("")), "server");
        assert_eq!(error_key(load_text("servers = []")), "servers");
        assert_eq!(error_key(load_text("server = \"http://a:1\"")), "server");
        assert_eq!(
            error_key(load_text("servers = [\"https://a:1\", \"ftp://b\"]")),
            "servers[1]"
        );
        assert_eq!(
            error_key(load_text("servers = [\"https://a:1\", \"https://a:1\"]")),
            "servers[1]"
        );
        assert_eq!(error_key(load_text("servers = \"https://a:1\"")), "servers");
    }

    #[test]
    fn an_environment_override_of_either_key_replaces_both() {
        let mut c = load_text("servers = [\"https://a:1\"]").unwrap();
        // As if LANYARD_SERVER had set `server` over a file with `servers`.
        c.server = Some("https://env:1".into());
        assert_eq!(c.resolve_servers(true, false).unwrap(), ["https://env:1"]);
        let mut c = load_text("server = \"https://a:1\"").unwrap();
        c.servers = Some(vec!["https://e1:1".into(), "https://e2:1".into()]);
        assert_eq!(
            c.resolve_servers(false, true).unwrap(),
            ["https://e1:1", "https://e2:1"]
        );
        // Both from the environment is as ambiguous as both in the file.
        c.server = Some("https://env:1".into());
        assert!(c.resolve_servers(true, true).is_err());
    }

    #[test]
    fn listen_accepts_unix_paths_and_loopback_only() {
        assert_eq!(
            Listen::parse("unix:/tmp/a.sock").unwrap(),
            Listen::Unix("/tmp/a.sock".into())
        );
        assert!(matches!(
            Listen::parse("127.0.0.1:9000").unwrap(),
            Listen::Tcp(_)
        ));
        // Port 0: the system picks one and the agent prints the bound address.
        assert!(matches!(
            Listen::parse("127.0.0.1:0").unwrap(),
            Listen::Tcp(a) if a.port() == 0
        ));
        assert!(Listen::parse("0.0.0.0:9000").is_err());
        assert!(Listen::parse("unix:").is_err());
        assert!(Listen::parse("localhost").is_err());
    }
}
