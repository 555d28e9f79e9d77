//! The command line's shape: every command, flag and default, as clap types.
//!
//! Options apply where they mean something: `--server` and `--credential` only on the
//! commands that call a running CA, `--config` only on those that read a config file. They
//! are added to those commands by [`command`] rather than declared on each variant, so a new
//! client command gets them without more code. For compatibility they are also accepted
//! (unlisted) before the subcommand: `lanyard --server URL authority list`.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, CommandFactory, Parser, Subcommand, ValueEnum};

/// `lanyard --version`: the crate version and the git revision it was built from
/// ("unknown" outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("BUILD_GIT_REVISION"),
    ")"
);

/// Lanyard: an instance-identity certificate authority for container platforms.
#[derive(Debug, Parser)]
#[command(name = "lanyard", version = VERSION, about)]
pub struct Cli {
    /// Configuration file. Filled from the subcommand's own `--config` after parsing.
    #[arg(long, value_name = "FILE", hide = true)]
    pub config: Option<PathBuf>,
    /// CA URLs for client commands, in order. Filled from the subcommand's own `--server`
    /// after parsing.
    #[arg(long, value_name = "URL", hide = true)]
    pub server: Vec<String>,
    /// Credential directory for client commands. Filled from the subcommand's own
    /// `--credential` after parsing.
    #[arg(long, value_name = "DIR", hide = true)]
    pub credential: Option<PathBuf>,
    /// Log lines on stderr: `text` (colored only on a terminal, and never with NO_COLOR set)
    /// or `json` (one object per line). The filter is LANYARD_LOG (default `info`).
    #[arg(
        long,
        global = true,
        env = "LANYARD_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text",
        value_parser = ["text", "json"]
    )]
    pub log_format: String,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands (by their path, `store migrate`) that read no configuration file.
const WITHOUT_CONFIG: &[&str] = &["inspect", "completions"];

/// Commands (by their path) that do not call a running CA: no `--server`, no `--credential`.
const NOT_CLIENTS: &[&str] = &[
    "init",
    "serve",
    "agent",
    "store migrate",
    "inspect",
    "completions",
];

fn config_arg() -> Arg {
    Arg::new("config")
        .long("config")
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help(
            "Configuration file (default: $LANYARD_CONFIG, else ca-config/lanyard.toml; \
             the agent: ca-config/agent.toml)",
        )
}

fn server_arg() -> Arg {
    Arg::new("server")
        .long("server")
        .value_name("URL")
        .action(ArgAction::Append)
        .help(
            "CA URL (default: the config's client.server, else https://<listen.address>). \
             Repeat it for several replicas: a request moves to the next one when a replica \
             cannot be reached or answers 503",
        )
}

fn credential_arg() -> Arg {
    Arg::new("credential")
        .long("credential")
        .value_name("DIR")
        .value_parser(clap::value_parser!(PathBuf))
        .help(
            "Credential directory: cert.pem, key.pem, trust-bundle.pem (default: the config's \
             client.credential, else <state_dir>/credentials/operator)",
        )
}

/// The whole command tree: the derived commands, with `--config`, `--server` and
/// `--credential` added to the commands they apply to.
pub fn command() -> clap::Command {
    fn add(cmd: clap::Command, path: &str) -> clap::Command {
        if cmd.has_subcommands() {
            let names: Vec<String> = cmd
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            return names.into_iter().fold(cmd, |cmd, name| {
                let sub = format!("{path} {name}").trim().to_string();
                cmd.mut_subcommand(&name, |c| add(c, &sub))
            });
        }
        let is = |list: &[&str]| {
            list.iter()
                .any(|p| *p == path || path.starts_with(&format!("{p} ")))
        };
        let mut cmd = cmd;
        if !is(WITHOUT_CONFIG) {
            cmd = cmd.arg(config_arg());
        }
        if !is(NOT_CLIENTS) {
            cmd = cmd.arg(server_arg()).arg(credential_arg());
        }
        cmd
    }
    add(Cli::command(), "")
}

/// Parses a command line (the program name first).
pub(super) fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches;
    let matches = command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    // The subcommand's own options, from the innermost command that has them.
    let mut m: &ArgMatches = &matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    let defined = |id: &str| m.try_contains_id(id).unwrap_or(false);
    if defined("config") {
        if let Some(c) = m.get_one::<PathBuf>("config") {
            cli.config = Some(c.clone());
        }
    }
    if defined("server") {
        if let Some(v) = m.get_many::<String>("server") {
            cli.server.extend(v.cloned());
        }
    }
    if defined("credential") {
        if let Some(c) = m.get_one::<PathBuf>("credential") {
            cli.credential = Some(c.clone());
        }
    }
    Ok(cli)
}

/// The shells `lanyard completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// The revocation reasons of RFC 5280 a CRL entry can carry, by their RFC names.
pub const REVOCATION_REASONS: &[&str] = crate::api::REVOCATION_REASONS;

/// `--reason`: an RFC 5280 name in any spelling (see [`crate::api::rfc_revocation_reason`]),
/// sent as the RFC spells it. The API also keeps free text, but an operator at the command
/// line is held to the names a CRL can carry, so every revocation made here has its code.
fn reason_parser(given: &str) -> Result<String, String> {
    crate::api::rfc_revocation_reason(given)
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "`{}` is not an RFC 5280 revocation reason; use one of: {}",
                given.chars().take(64).collect::<String>(),
                REVOCATION_REASONS.join(", ")
            )
        })
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the state: KEK (dev), first authority generation, server certificate,
    /// operator credential.
    Init,
    /// Serve the API.
    Serve,
    /// Run the cell agent.
    Agent,
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Authority generations and root rotation.
    #[command(subcommand)]
    Authority(AuthorityCommand),
    /// Certificates for system components.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Operator credentials.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Print the trust bundle.
    Bundle {
        /// pem or spiffe.
        #[arg(long, default_value = "pem", value_parser = ["pem", "spiffe"])]
        format: String,
        /// Print each new version as it is published (or, with --out, rewrite the file).
        #[arg(long)]
        watch: bool,
        /// Write the bundle to this file (replaced atomically) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// With --watch and --out: run this command (through `sh -c`) after each change.
        #[arg(long, value_name = "CMD", requires_all = ["watch", "out"])]
        on_change: Option<String>,
    },
    /// Revoke one certificate.
    Revoke {
        /// Serial, lowercase hex.
        serial: String,
        /// Why, by its RFC 5280 name (keyCompromise, superseded, cessationOfOperation, ...; any
        /// case); it goes into the CRL entry as the reason code.
        #[arg(long, value_parser = reason_parser)]
        reason: Option<String>,
        /// Print the certificate record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Instance ownership bindings.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// The CA's hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Load generator and benchmarks: issuance throughput and latency against a running CA
    /// (default), or another workload with `--mode` (see `scripts/bench.sh`).
    Bench {
        /// What to measure.
        #[arg(long, value_enum, default_value_t = BenchMode::Issue)]
        mode: BenchMode,
        /// Certificates to issue (`issue`, `cfssl`), iterations (`floor`, `in-process`) or
        /// instances PUT at once (`agent`).
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Concurrent workers.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Certificates per request (more than 1 uses the batch endpoint).
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        /// Trust bundle long polls to hold open during the run (`issue`), or to hold and
        /// release with a rotation step (`watchers`).
        #[arg(long, default_value_t = 0)]
        watchers: usize,
        /// Requests per second, paced (open loop; latency counts from each request's
        /// scheduled time); without it every worker sends as fast as it is answered.
        #[arg(long, value_name = "PER_SECOND")]
        rate: Option<f64>,
        /// The server's process id: its CPU time (utime + stime) and RSS are read from
        /// /proc around the run.
        #[arg(long, value_name = "PID")]
        server_pid: Option<u32>,
        /// The other endpoint: cfssl's base URL (`cfssl`) or the agent's local API (`agent`).
        #[arg(long, value_name = "URL")]
        target: Option<String>,
        /// `cfssl`: directory with `ca.pem`, `client.pem`, `client-key.pem`; `agent`: the
        /// agent's credentials root.
        #[arg(long, value_name = "DIR")]
        target_dir: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serve the read-only operator console: a local web page that shows the generations,
    /// the bundle, issuance, cells, expiring certificates and the audit log, refreshing live.
    ///
    /// The console talks to the CA with the operator credential, as `kubectl proxy` does: the
    /// browser needs no client certificate, and whoever can reach the listen address sees
    /// what the operator may read. Hence loopback only, unless `--allow-remote`.
    Console {
        /// Where the console listens (`IP:PORT`, or `localhost:PORT`); port 0 picks a free one.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Listen on a non-loopback address. The console has no login and no TLS of its own:
        /// anyone who reaches the address reads what the operator credential may read.
        #[arg(long)]
        allow_remote: bool,
        /// Also accept this Host header (`name:port`, as the browser sends it), e.g. the local
        /// end of an SSH tunnel (`localhost:9000`). Repeatable. Any other Host is refused
        /// (a DNS rebinding defence).
        #[arg(long, value_name = "HOST:PORT", action = clap::ArgAction::Append)]
        accept_host: Vec<String>,
    },
    /// The CA's storage.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Print a shell completion script on stdout.
    ///
    /// bash: `lanyard completions bash > /etc/bash_completion.d/lanyard`;
    /// zsh: `lanyard completions zsh > "${fpath[1]}/_lanyard"`;
    /// fish: `lanyard completions fish > ~/.config/fish/completions/lanyard.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the identity in a certificate file.
    Inspect {
        /// PEM file (the first certificate is shown) or a DER certificate.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `lanyard instance ...`
#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Release an instance's ownership binding (whichever cell owns it), so that another
    /// cell may obtain certificates for it. Does not revoke anything.
    Release {
        /// The instance GUID.
        guid: String,
    },
}

/// `lanyard audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the most recent entries, oldest first, one per line.
    Tail {
        /// How many of the most recent entries.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: u64,
        /// One JSON entry per line instead.
        #[arg(long)]
        json: bool,
        /// Keep printing new entries as they are appended.
        #[arg(long)]
        follow: bool,
    },
    /// Fetch the whole log and check every seq, link and hash: exit 0 when it verifies,
    /// exit 1 naming the first bad seq (an edited, deleted or reordered entry).
    Verify,
}

/// What `lanyard bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    /// Instance certificates from a running CA, over mutual TLS.
    Issue,
    /// The same load against cfssl's `/api/v1/cfssl/sign` (`--target`, `--target-dir`).
    Cfssl,
    /// The crypto floor in this process: one P-256 CSR verification and one signature.
    Floor,
    /// Issuances through the API router in this process (for instruction counts).
    InProcess,
    /// `--requests` PUTs at once to an agent's local API, until every credential is on disk.
    Agent,
    /// `--watchers` bundle long polls held, then a rotation step (prepare) releases them.
    Watchers,
}

/// `lanyard store ...`
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy the embedded store of `--config` (CA stopped) into an empty PostgreSQL database.
    Migrate {
        /// The target: postgres://user:password@host:port/db (empty; migrations are applied).
        /// Give it in `LANYARD_MIGRATE_TO` instead to keep a password out of the process list.
        #[arg(long, env = "LANYARD_MIGRATE_TO", hide_env_values = true)]
        to: String,
    },
}

/// `lanyard token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a one-time join token.
    Create {
        /// Only `cell`.
        #[arg(long, default_value = "cell")]
        role: String,
        /// The cell's name.
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. 15m.
        #[arg(long, default_value = "15m")]
        ttl: String,
    },
}

/// `lanyard authority ...`
#[derive(Debug, Subcommand)]
pub enum AuthorityCommand {
    /// List generations.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prepare a new generation.
    Prepare {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Activate a prepared generation.
    Activate {
        /// Generation id.
        id: String,
        /// Skip the propagation delay.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Retire a retiring generation.
    Retire {
        /// Generation id.
        id: String,
        /// Retire although it signed certificates that are still valid.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `lanyard cert ...`
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a component certificate: key made here, CSR sent, files written.
    Component {
        /// Component name, e.g. gorouter.
        #[arg(long)]
        name: String,
        /// Output directory (cert.pem, key.pem, trust-bundle.pem).
        #[arg(long)]
        out: PathBuf,
        /// Lifetime, e.g. 24h.
        #[arg(long)]
        ttl: Option<String>,
        /// Keep the files fresh: renew with the component's own credential, follow the
        /// trust bundle, rewrite the three files as a set; until SIGTERM.
        #[arg(long)]
        watch: bool,
        /// With --watch: run this command (through `sh -c`) after each change of the files,
        /// e.g. `nginx -s reload`. A failure is logged and the command runs again at the next
        /// change.
        #[arg(long, value_name = "CMD", requires = "watch")]
        on_change: Option<String>,
        /// With --watch: renew when this fraction of the certificate's life has passed.
        #[arg(
            long,
            value_name = "FRACTION",
            default_value_t = 0.5,
            requires = "watch"
        )]
        renew_fraction: f64,
    },
}

/// `lanyard credential ...`
#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Renew an operator credential directory in place (new key, same name).
    Renew,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Cli {
        parse(std::iter::once("lanyard").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn server_repeats_before_and_after_the_subcommand_in_order() {
        let cli = parsed(&[
            "--server",
            "https://a:1",
            "authority",
            "list",
            "--server",
            "https://b:1",
        ]);
        assert_eq!(cli.server, ["https://a:1", "https://b:1"]);
        let cli = parsed(&["bundle", "--server", "https://a:1", "--server=https://b:1"]);
        assert_eq!(cli.server, ["https://a:1", "https://b:1"]);
        let cli = parsed(&["authority", "list"]);
        assert!(cli.server.is_empty());
    }

    #[test]
    fn the_subcommands_config_and_credential_win_over_the_ones_before_it() {
        let cli = parsed(&[
            "--config",
            "a.toml",
            "--credential",
            "a",
            "token",
            "create",
            "--name",
            "c",
            "--config",
            "b.toml",
            "--credential",
            "b",
        ]);
        assert_eq!(cli.config, Some(PathBuf::from("b.toml")));
        assert_eq!(cli.credential, Some(PathBuf::from("b")));
        let cli = parsed(&["--config", "a.toml", "serve"]);
        assert_eq!(cli.config, Some(PathBuf::from("a.toml")));
    }

    #[test]
    fn client_options_are_refused_where_they_do_not_apply() {
        let refused =
            |args: &[&str]| parse(std::iter::once("lanyard").chain(args.iter().copied())).is_err();
        assert!(refused(&["serve", "--server", "https://a:1"]));
        assert!(refused(&["init", "--credential", "d"]));
        assert!(refused(&["agent", "--server", "https://a:1"]));
        assert!(refused(&["inspect", "f.pem", "--config", "x.toml"]));
        assert!(refused(&["completions", "bash", "--server", "https://a:1"]));
        assert!(!refused(&["serve", "--config", "x.toml"]));
        assert!(!refused(&["revoke", "ab", "--credential", "d"]));
    }

    #[test]
    fn each_commands_help_lists_only_its_own_options() {
        let help = |path: &[&str]| {
            let mut cmd = command();
            cmd.build();
            let mut c = &cmd;
            for p in path {
                c = c.find_subcommand(p).unwrap();
            }
            c.clone().render_help().to_string()
        };
        let serve = help(&["serve"]);
        assert!(
            serve.contains("--config") && !serve.contains("--server"),
            "{serve}"
        );
        let inspect = help(&["inspect"]);
        assert!(
            !inspect.contains("--config") && !inspect.contains("--credential"),
            "{inspect}"
        );
        let list = help(&["authority", "list"]);
        for flag in ["--server", "--credential", "--config", "--json"] {
            assert!(list.contains(flag), "{flag} in {list}");
        }
        let top = help(&[]);
        assert!(!top.contains("--server"), "{top}");
    }

    #[test]
    fn revoke_reasons_are_the_rfc_names_in_any_spelling_and_nothing_else() {
        for given in [
            "keycompromise",
            "key compromise",
            "KEY_COMPROMISE",
            "key-Compromise",
        ] {
            let cli = parsed(&["revoke", "ab", "--reason", given]);
            assert!(
                matches!(cli.command, Command::Revoke { reason: Some(ref r), .. } if r == "keyCompromise"),
                "{given}"
            );
        }
        for refused in ["lost it", "", "removeFromCRL"] {
            assert!(
                parse(["lanyard", "revoke", "ab", "--reason", refused]).is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn the_version_names_the_git_revision() {
        let v = command().render_version().to_string();
        assert!(
            v.starts_with(&format!("lanyard {} (git ", env!("CARGO_PKG_VERSION"))),
            "{v}"
        );
    }
}
