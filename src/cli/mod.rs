//! The `lanyard` command line: parses arguments, runs one command, maps failures to exit
//! codes (0 success, 1 runtime failure, 2 usage or configuration error).
//!
//! `args` holds the clap types, `client_commands` the commands that call a running CA,
//! `server_commands` `init` and `serve`, `output` what commands print. The agent runs from
//! here but knows nothing of the command line.

mod args;
mod client_commands;
mod output;
mod server_commands;

use std::path::PathBuf;

use clap::Parser;

use crate::ca::StartError;
use crate::client::ClientError;
use crate::config::{Config, ConfigError};

pub use args::{
    AuthorityCommand, BenchMode, CertCommand, Cli, Command, CredentialCommand, StoreCommand,
    TokenCommand,
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

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Setup(m) => Failure::usage(m),
            other => Failure::runtime(other),
        }
    }
}

/// Runs the command line and returns the exit code.
pub fn run() -> i32 {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cli = match Cli::try_parse_from(&raw) {
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
    // `--server` given both before and after the subcommand: keep every one, in order.
    let every = args::every_server_flag(
        &raw.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
    );
    if every.len() > cli.server.len() {
        cli.server = every;
    }
    init_logging();
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
    match rt.block_on(dispatch(cli)) {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("lanyard: error: {}", f.message);
            f.code
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LANYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
        eprintln!("lanyard: warning: {var} names no configuration key; it is ignored");
    }
    match &cli.command {
        Command::Init => server_commands::init(&cli),
        Command::Serve => server_commands::serve(&cli).await,
        Command::Store(StoreCommand::Migrate { to }) => {
            server_commands::store_migrate(&cli, to).await
        }
        Command::Agent => {
            let path = config_path(&cli.config, "ca-config/agent.toml");
            crate::agent::run(&path).await.map_err(|e| Failure {
                code: e.exit_code(),
                message: e.to_string(),
            })
        }
        Command::Inspect { file, json } => output::inspect(file, *json),
        Command::Bench { mode, .. } if !matches!(mode, BenchMode::Issue | BenchMode::Watchers) => {
            client_commands::local_bench(&cli).await
        }
        _ => client_commands::client_command(&cli).await,
    }
}

/// The server config: `--config`, else `$LANYARD_CONFIG`, else `ca-config/lanyard.toml`.
fn load_config(cli: &Cli) -> Result<Config, Failure> {
    Ok(Config::load(&config_path(
        &cli.config,
        "ca-config/lanyard.toml",
    ))?)
}
