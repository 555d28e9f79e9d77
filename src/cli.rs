//! The `lanyard` command line: parses arguments, runs one command, maps failures to exit
//! codes (0 success, 1 runtime failure, 2 usage or configuration error).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::api;
use crate::ca::{Ca, StartError};
use crate::client::{new_key_and_csr, ApiClient, ClientError};
use crate::config::{parse_duration, Config, ConfigError};
use crate::timefmt::rfc3339;
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// Lanyard: an instance-identity certificate authority for container platforms.
#[derive(Debug, Parser)]
#[command(name = "lanyard", version, about)]
pub struct Cli {
    /// Configuration file (default: $LANYARD_CONFIG, else ca-config/lanyard.toml; the agent:
    /// ca-config/agent.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// CA URL for client commands (default: from the config).
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
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
    /// Print the identity in a certificate file.
    Inspect {
        /// PEM file (the first certificate is shown) or a DER certificate.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
    let cli = match Cli::try_parse() {
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
        Command::Init => init(&cli),
        Command::Serve => serve(&cli).await,
        Command::Agent => {
            let path = config_path(&cli.config, "ca-config/agent.toml");
            crate::agent::run(&path).await.map_err(|e| Failure {
                code: e.exit_code(),
                message: e.to_string(),
            })
        }
        Command::Inspect { file, json } => inspect(file, *json),
        _ => client_command(&cli).await,
    }
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    Ok(Config::load(&config_path(
        &cli.config,
        "ca-config/lanyard.toml",
    ))?)
}

fn init(cli: &Cli) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let (_, report) = Ca::init(&config)?;
    print_init_report(&report);
    Ok(())
}

fn print_init_report(r: &crate::ca::InitReport) {
    if let Some(k) = &r.generated_kek {
        eprintln!(
            "lanyard: generated a new key-encryption key in {} (mode 0600); keep it safe, the state cannot be opened without it",
            k.display()
        );
    }
    eprintln!(
        "lanyard: initialized; operator credential in {}",
        r.operator_credential.display()
    );
}

async fn serve(cli: &Cli) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let addr = config.listen.address;
    let (ca, report) = tokio::task::spawn_blocking(move || Ca::open(&config))
        .await
        .map_err(Failure::runtime)??;
    if let Some(r) = &report {
        print_init_report(r);
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::runtime(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(Failure::runtime)?;
    tracing::info!(address = %local, trust_domain = %ca.config.trust_domain, "lanyard serving on https://{local}");
    crate::http::serve(Arc::new(ca), listener, shutdown_signal())
        .await
        .map_err(Failure::runtime)?;
    tracing::info!("lanyard stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn client_defaults(cli: &Cli) -> Result<(String, PathBuf), Failure> {
    if let (Some(s), Some(c)) = (&cli.server, &cli.credential) {
        return Ok((s.clone(), c.clone()));
    }
    let config = load_config(cli)?;
    Ok((
        cli.server
            .clone()
            .unwrap_or_else(|| config.client_server_url()),
        cli.credential
            .clone()
            .unwrap_or_else(|| config.client_credential_dir()),
    ))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(Failure::runtime)?
    );
    Ok(())
}

fn ttl_seconds(s: &Option<String>) -> Result<Option<api::JsonInt>, Failure> {
    s.as_ref()
        .map(|t| {
            parse_duration(t)
                .map(|d| (d.as_secs() as i64).into())
                .map_err(|e| Failure::usage(format!("--ttl: {e}")))
        })
        .transpose()
}

async fn client_command(cli: &Cli) -> Result<(), Failure> {
    let (server, cred_dir) = client_defaults(cli)?;
    let client = ApiClient::from_credential_dir(&server, &cred_dir)?;
    match &cli.command {
        Command::Token(TokenCommand::Create { role, name, ttl }) => {
            let ttl = parse_duration(ttl).map_err(|e| Failure::usage(format!("--ttl: {e}")))?;
            let r: api::JoinTokenResponse = client
                .post(
                    "/v1/join-tokens",
                    &api::JoinTokenRequest {
                        role: role.clone(),
                        name: name.clone(),
                        ttl_seconds: Some((ttl.as_secs() as i64).into()),
                    },
                    None,
                )
                .await?;
            println!("{}", r.token);
            eprintln!(
                "lanyard: join token for cell {name} expires at {}",
                r.expires_at
            );
        }
        Command::Authority(cmd) => authority(&client, cmd).await?,
        Command::Cert(CertCommand::Component { name, out, ttl }) => {
            // Fail before anything is issued if the files cannot be written.
            std::fs::create_dir_all(out)
                .map_err(|e| Failure::runtime(format!("--out {}: {e}", out.display())))?;
            let (key_pem, csr) = new_key_and_csr()?;
            let r: api::IssuedCertificate = client
                .post(
                    "/v1/component-certificates",
                    &api::ComponentCertificateRequest {
                        csr,
                        name: name.clone(),
                        ttl_seconds: ttl_seconds(ttl)?,
                    },
                    None,
                )
                .await?;
            let bundle = fetch_bundle_pem(&client).await?;
            crate::ca::write_credential_dir(out, &r.certificate_chain, &key_pem, &bundle)
                .map_err(|e| Failure::runtime(format!("writing {}: {e}", out.display())))?;
            println!("{}", out.display());
            eprintln!(
                "lanyard: component {name}: serial {} valid until {}",
                r.serial, r.not_after
            );
        }
        Command::Credential(CredentialCommand::Renew) => {
            let (key_pem, csr) = new_key_and_csr()?;
            let r: api::IssuedCertificate = client
                .post("/v1/operator-credentials", &api::CsrRequest { csr }, None)
                .await?;
            let bundle = fetch_bundle_pem(&client).await?;
            crate::ca::write_credential_dir(&cred_dir, &r.certificate_chain, &key_pem, &bundle)
                .map_err(|e| Failure::runtime(format!("writing {}: {e}", cred_dir.display())))?;
            eprintln!(
                "lanyard: renewed {} under authority {}: serial {} valid until {}",
                cred_dir.display(),
                r.authority_id,
                r.serial,
                r.not_after
            );
        }
        Command::Bundle { format, watch } => {
            let json = format == "spiffe";
            let mut known = None;
            let mut client = client;
            loop {
                let wait = if known.is_some() { 300 } else { 0 };
                match client.trust_bundle(known, wait, json).await {
                    Ok(Some((seq, body))) => {
                        if *watch && !json {
                            // PEM ignores text between blocks; this tells versions apart.
                            println!("# trust bundle sequence {seq}");
                        }
                        print!("{body}");
                        if json {
                            println!();
                        }
                        use std::io::Write;
                        let _ = std::io::stdout().flush();
                        known = Some(seq);
                        if *watch {
                            // Follow the CA through rotations: trust what it just published.
                            let pem = if json {
                                fetch_bundle_pem(&client).await?
                            } else {
                                body
                            };
                            client = client_trusting(&server, &cred_dir, &pem)?;
                        }
                    }
                    Ok(None) => {}
                    Err(e) if *watch && matches!(e, ClientError::Transport { .. }) => {
                        eprintln!("lanyard: {e}; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
                if !*watch {
                    break;
                }
            }
        }
        Command::Bench {
            requests,
            concurrency,
            batch_size,
            watchers,
        } => {
            let opts = crate::bench::BenchOptions {
                requests: *requests,
                concurrency: *concurrency,
                batch_size: (*batch_size).clamp(1, crate::http::handlers::MAX_BATCH),
                watchers: *watchers,
            };
            let bundle = fetch_bundle_pem(&client).await?;
            let report = crate::bench::run(&server, &client, &bundle, &opts).await?;
            print!("{}", report.render(&opts));
        }
        Command::Revoke { serial, reason } => {
            let r: crate::store::CertificateRecord = client
                .post(
                    &format!("/v1/certificates/{serial}/revoke"),
                    &api::RevokeRequest {
                        reason: reason.clone(),
                    },
                    None,
                )
                .await?;
            print_json(&r)?;
        }
        _ => return Err(Failure::usage("not a client command")),
    }
    Ok(())
}

/// A client with the credential in `dir` (if any) that trusts `bundle_pem`.
fn client_trusting(server: &str, dir: &Path, bundle_pem: &str) -> Result<ApiClient, Failure> {
    let files = crate::client::CredentialFiles::read(dir).ok();
    let identity = files
        .as_ref()
        .and_then(|f| match (&f.chain_pem, &f.key_pem) {
            (Some(c), Some(k)) => Some((c.as_str(), k.as_str())),
            _ => None,
        });
    let tls = crate::client::tls_config(bundle_pem.as_bytes(), identity)?;
    Ok(ApiClient::new(server, tls)?)
}

async fn fetch_bundle_pem(client: &ApiClient) -> Result<String, Failure> {
    client
        .trust_bundle(None, 0, false)
        .await?
        .map(|(_, b)| b)
        .ok_or_else(|| Failure::runtime("the server sent no trust bundle"))
}

async fn authority(client: &ApiClient, cmd: &AuthorityCommand) -> Result<(), Failure> {
    match cmd {
        AuthorityCommand::List { json } => {
            let r: api::AuthoritiesResponse = client.get("/v1/authorities").await?;
            if *json {
                return print_json(&r);
            }
            print!("{}", authority_table(&r));
        }
        AuthorityCommand::Prepare { json } => {
            let r: api::AuthorityView = client
                .post("/v1/authorities/prepare", &serde_json::json!({}), None)
                .await?;
            show_authority(&r, *json, "prepared")?;
        }
        AuthorityCommand::Activate { id, force, json } => {
            let r: api::AuthorityView = client
                .post(
                    &format!("/v1/authorities/{id}/activate"),
                    &api::ForceRequest { force: *force },
                    None,
                )
                .await?;
            show_authority(&r, *json, "activated")?;
        }
        AuthorityCommand::Retire { id, force, json } => {
            let r: api::AuthorityView = client
                .post(
                    &format!("/v1/authorities/{id}/retire"),
                    &api::ForceRequest { force: *force },
                    None,
                )
                .await?;
            show_authority(&r, *json, "retired")?;
        }
    }
    Ok(())
}

fn show_authority(a: &api::AuthorityView, json: bool, what: &str) -> Result<(), Failure> {
    if json {
        return print_json(a);
    }
    println!("authority {} {what}: state {}", a.id, a.state);
    Ok(())
}

/// The readable table of `lanyard authority list`.
pub fn authority_table(r: &api::AuthoritiesResponse) -> String {
    let day = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let mut rows = vec![[
        "ID".to_string(),
        "STATE".into(),
        "CREATED".into(),
        "ACTIVATED".into(),
        "ROOT EXPIRES".into(),
        "LAST LEAF EXPIRES".into(),
    ]];
    for a in &r.authorities {
        rows.push([
            a.id.clone(),
            a.state.clone(),
            a.created_at.clone(),
            day(&a.activated_at),
            a.root_not_after.clone(),
            day(&a.last_leaf_not_after),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "trust bundle sequence: {}\n",
        r.trust_bundle_sequence
    ));
    out
}

fn inspect(file: &Path, json: bool) -> Result<(), Failure> {
    let text =
        std::fs::read(file).map_err(|e| Failure::runtime(format!("{}: {e}", file.display())))?;
    // PEM (the first certificate of a chain), or a single DER certificate.
    let der = match parse_pem_certs(&text) {
        Ok(mut certs) => certs.remove(0),
        Err(_) if CertInfo::from_der(&text).is_ok() => text,
        Err(e) => return Err(Failure::runtime(format!("{}: {e}", file.display()))),
    };
    let info = CertInfo::from_der(&der)
        .map_err(|e| Failure::runtime(format!("{}: {e}", file.display())))?;
    if json {
        let v = serde_json::json!({
            "instance": info.ou_value("app").and(info.common_name.clone()),
            "app": info.ou_value("app"),
            "space": info.ou_value("space"),
            "organization": info.ou_value("organization"),
            "spiffe_id": info.spiffe_id(),
            "certificate": info,
        });
        return print_json(&v);
    }
    let dash = |o: Option<&str>| o.unwrap_or("-").to_string();
    let instance = info.ou_value("app").and(info.common_name.as_deref());
    println!("instance:   {}", dash(instance));
    println!("app:        {}", dash(info.ou_value("app")));
    println!("space:      {}", dash(info.ou_value("space")));
    println!("org:        {}", dash(info.ou_value("organization")));
    println!("spiffe id:  {}", dash(info.spiffe_id()));
    println!("subject:    {}", info.subject);
    println!("issuer:     {}", info.issuer);
    println!("serial:     {}", info.serial);
    println!("not before: {}", rfc3339(info.not_before));
    println!("not after:  {}", rfc3339(info.not_after));
    if !info.dns_names.is_empty() {
        println!("dns:        {}", info.dns_names.join(", "));
    }
    if !info.ip_addresses.is_empty() {
        let ips: Vec<String> = info.ip_addresses.iter().map(|i| i.to_string()).collect();
        println!("ip:         {}", ips.join(", "));
    }
    println!("ca:         {}", info.is_ca);
    Ok(())
}
