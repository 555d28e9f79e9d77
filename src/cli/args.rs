//! The command line's shape: every command, flag and default, as clap types.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Lanyard: an instance-identity certificate authority for container platforms.
#[derive(Debug, Parser)]
#[command(name = "lanyard", version, about)]
pub struct Cli {
    /// Configuration file (default: $LANYARD_CONFIG, else ca-config/lanyard.toml; the agent:
    /// ca-config/agent.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// CA URL for client commands (default: from the config). Repeat it for several
    /// replicas: each request goes to the next one when a replica cannot be reached or
    /// answers 503.
    #[arg(long, global = true, value_name = "URL")]
    pub server: Vec<String>,
    /// Credential directory for client commands (default: from the config).
    #[arg(long, global = true, value_name = "DIR")]
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
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Instance ownership bindings.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// The CA's hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Load generator against a running CA: issuance throughput and latency.
    Bench {
        /// Certificates to issue.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Concurrent workers.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Certificates per request (more than 1 uses the batch endpoint).
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        /// Trust bundle long polls to hold open during the run.
        #[arg(long, default_value_t = 0)]
        watchers: usize,
    },
    /// The CA's storage.
    #[command(subcommand)]
    Store(StoreCommand),
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

/// Every `--server` value on the command line, in order. clap keeps a global option's values
/// from one level only (those after the subcommand replace those before it), so
/// `--server A authority list --server B` would silently lose A; the caller uses this list
/// when it is longer. Stops at `--`, after which nothing is an option.
pub(super) fn every_server_flag<S: AsRef<str>>(args: &[S]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter().map(AsRef::as_ref);
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--server" {
            if let Some(v) = it.next() {
                out.push(v.to_string());
            }
        } else if let Some(v) = a.strip_prefix("--server=") {
            out.push(v.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_repeats_before_and_after_the_subcommand_in_order() {
        let cli = Cli::try_parse_from([
            "lanyard",
            "--server",
            "https://a:1",
            "authority",
            "list",
            "--server",
            "https://b:1",
        ])
        .unwrap();
        // clap alone keeps only the values after the subcommand...
        assert_eq!(cli.server, ["https://b:1"]);
        // ...so the command line reads them all, in order.
        let args = [
            "lanyard",
            "--server",
            "https://a:1",
            "authority",
            "list",
            "--server=https://b:1",
            "--",
            "--server",
        ];
        assert_eq!(every_server_flag(&args), ["https://a:1", "https://b:1"]);
        let cli = Cli::try_parse_from([
            "lanyard",
            "bundle",
            "--server",
            "https://a:1",
            "--server",
            "https://b:1",
        ])
        .unwrap();
        assert_eq!(cli.server, ["https://a:1", "https://b:1"]);
        let cli = Cli::try_parse_from(["lanyard", "authority", "list"]).unwrap();
        assert!(cli.server.is_empty());
    }
}
