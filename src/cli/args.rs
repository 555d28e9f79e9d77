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
        /// Print each new version as it is published.
        #[arg(long)]
        watch: bool,
    },
    /// Revoke one certificate.
    Revoke {
        /// Serial, lowercase hex.
        serial: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
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
        #[arg(long)]
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
