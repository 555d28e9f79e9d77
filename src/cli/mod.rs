//! The `lanyard` command line: parses arguments, runs one command, maps failures to exit
//! codes (0 success, 1 runtime failure, 2 usage or configuration error).
//!
//! `args` holds the clap types, `client_commands` the commands that call a running CA (and
//! start `console`, which serves `crate::console`),
//! `server_commands` `init` and `serve`, `output` what commands print, `watch` the commands
//! that keep a proxy's files fresh (`cert component --watch`, `bundle --watch --out`). The
//! agent runs from here but knows nothing of the command line.

mod args;
mod audit_commands;
mod client_commands;
mod output;
mod server_commands;
mod watch;

use std::path::PathBuf;

use crate::ca::StartError;
use crate::client::ClientError;
use crate::config::{Config, ConfigError};

pub use args::{
    command, AuthorityCommand, BenchMode, CertCommand, Cli, Command, CompletionShell,
    CredentialCommand, StoreCommand, TokenCommand, REVOCATION_REASONS, VERSION,
};
pub use output::authority_table;

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn runtime(m: impl std::fmt::Display) -> Self {
        Failure {
            code: 1,
            message: m.to_string(),
        }
    }

    fn usage(m: impl std::fmt::Display) -> Self {
        Failure {
            code: 2,
            message: m.to_string(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::usage(e)
    }
}

impl From<StartError> for Failure {
    fn from(e: StartError) -> Self {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

impl From<crate::console::ConsoleError> for Failure {
    fn from(e: crate::console::ConsoleError) -> Self {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Setup(m) => Failure::usage(m),
            ClientError::Transport { url, message } => {
                Failure::runtime(unreachable(&url, &message))
            }
            other => Failure::runtime(other),
        }
    }
}

/// A connection failure as a line that says what to try next.
fn unreachable(url: &str, message: &str) -> String {
    let refused = message.contains("Connection refused") || message.contains("os error 111");
    if refused {
        format!(
            "cannot reach the CA at {url}: connection refused. Is it running? Start it with \
             `lanyard serve`, or name the CA with `--server URL`"
        )
    } else {
        format!(
            "cannot reach the CA at {url}: {message}. Check that it runs there, or name the \
             CA with `--server URL`"
        )
    }
}

/// Runs the command line and returns the exit code.
pub fn run() -> i32 {
    let cli = match args::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                // --help and --version
                let _ = e.print();
                return 0;
            }
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                eprintln!("lanyard: error: a subcommand is required (see `--help`)");
                return 2;
            }
            // One readable line, like every other error.
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!(
                "lanyard: error: {} (see `lanyard --help`)",
                first.join(" ").trim_start_matches("error: ")
            );
            return 2;
        }
    };
    init_logging(&cli.log_format);
    // One crypto provider for the whole process, so no TLS stack can pick another.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lanyard: error: cannot start the runtime: {e}");
            return 1;
        }
    };
    let json = cli.log_format == "json";
    match rt.block_on(dispatch(cli)) {
        Ok(()) => 0,
        Err(f) if json => {
            // Every stderr line stays JSON for a log shipper.
            tracing::error!(exit_code = f.code, "{}", f.message);
            f.code
        }
        Err(f) => {
            eprintln!("lanyard: error: {}", f.message);
            f.code
        }
    }
}

/// Logs on stderr, filtered by `LANYARD_LOG` (default `info`), as text or JSON lines. Colour
/// only on a terminal and never when `NO_COLOR` is set (https://no-color.org): redirected
/// logs carry no escape codes.
fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LANYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        // Each line carries the fields of the spans it was written in (the request span's
        // `request_id` among them) at the top level of `span` and in `spans`.
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
    } else {
        builder
            .with_ansi(!no_color && std::io::stderr().is_terminal())
            .try_init()
    };
}

/// The config file: `--config`, else `$LANYARD_CONFIG`, else `default`.
pub fn config_path(flag: &Option<PathBuf>, default: &str) -> PathBuf {
    flag.clone()
        .or_else(|| std::env::var_os("LANYARD_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(default))
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    for var in crate::config::unknown_env_overrides(&[
        crate::config::SERVER_KEYS,
        crate::agent::config::AGENT_KEYS,
    ]) {
        if cli.log_format == "json" {
            tracing::warn!(variable = %var, "names no configuration key; it is ignored");
        } else {
            eprintln!("lanyard: warning: {var} names no configuration key; it is ignored");
        }
    }
    match &cli.command {
        Command::Init => server_commands::init(&cli),
        Command::Serve => server_commands::serve(&cli).await,
        Command::Store(StoreCommand::Migrate { to }) => {
            server_commands::store_migrate(&cli, to).await
        }
        Command::Completions { shell } => {
            completions(*shell);
            Ok(())
        }
        Command::Agent => {
            let path = existing_config(&cli.config, "ca-config/agent.toml")?;
            crate::agent::run(&path).await.map_err(|e| Failure {
                code: e.exit_code(),
                message: e.to_string(),
            })
        }
        Command::Inspect { file, json } => output::inspect(file, *json),
        Command::Console { .. } => client_commands::console(&cli).await,
        Command::Bench { mode, .. } if !matches!(mode, BenchMode::Issue | BenchMode::Watchers) => {
            client_commands::local_bench(&cli).await
        }
        _ => client_commands::client_command(&cli).await,
    }
}

/// The config file as [`config_path`] finds it; a usage error that says how to name one when
/// there is no such file.
fn existing_config(flag: &Option<PathBuf>, default: &str) -> Result<PathBuf, Failure> {
    let path = config_path(flag, default);
    if path.exists() {
        return Ok(path);
    }
    let how = if flag.is_some() {
        "`--config`"
    } else if std::env::var_os("LANYARD_CONFIG").is_some() {
        "`LANYARD_CONFIG`"
    } else {
        "the default"
    };
    Err(Failure::usage(format!(
        "no config file at {} ({how}): pass `--config FILE` or set `LANYARD_CONFIG` \
         (examples are in ca-config/ of the source tree)",
        path.display()
    )))
}

/// The server config: `--config`, else `$LANYARD_CONFIG`, else `ca-config/lanyard.toml`.
fn load_config(cli: &Cli) -> Result<Config, Failure> {
    Ok(Config::load(&existing_config(
        &cli.config,
        "ca-config/lanyard.toml",
    )?)?)
}

/// `lanyard completions SHELL`: the script on stdout.
fn completions(shell: CompletionShell) {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    // Into memory first: clap_complete panics on a failed write (a closed pipe, `| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "lanyard", &mut script);
    use std::io::Write;
    let _ = std::io::stdout().write_all(&script);
}
