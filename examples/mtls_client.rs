//! A client app that calls another app over mutual TLS with its own instance credential.
//!
//! It presents its instance certificate, verifies the server against the trust bundle and
//! the URL's host name (an instance GUID, an internal route or an IP SAN), and prints the
//! status line, then the body. It tells on stderr who answered.
//!
//! ```sh
//! # the URL names the instance; --connect-to says where it actually listens
//! cargo run --example mtls_client -- --credentials /path/to/instance-dir \
//!     --connect-to 127.0.0.1 https://9a1c2f3e-5b6d-4e7f-8a9b-0c1d:9443/
//! ```
//!
//! Exit code: 0 for a 2xx answer, 1 for any other answer or a failed connection, 2 for bad
//! arguments.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lanyard::mtls::{CredentialPaths, Credentials, PeerIdentity};

/// Command line; options can also come from the environment.
#[derive(Debug, Parser)]
#[command(about = "Calls a URL over Lanyard mutual TLS and prints the answer")]
struct Args {
    /// The URL to GET.
    url: reqwest::Url,
    /// Credential directory (instance or component layout). Without it: CF_INSTANCE_CERT,
    /// CF_INSTANCE_KEY and CF_SYSTEM_CERT_PATH.
    #[arg(long, env = "MTLS_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Connect to this IP address instead of resolving the URL's host; the certificate is
    /// still checked against the host name.
    #[arg(long)]
    connect_to: Option<IpAddr>,
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mtls_client: error: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(status) if (200..300).contains(&status) => {}
        Ok(_) => std::process::exit(1),
        Err(e) => {
            eprintln!("mtls_client: error: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<u16, Box<dyn std::error::Error>> {
    let paths = match &args.credentials {
        Some(dir) => CredentialPaths::detect(dir)?,
        None => CredentialPaths::from_env()?,
    };
    // One request: no need to watch the files.
    let creds = Credentials::open(paths, None)?;
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(creds.client_config()?)
        .tls_info(true)
        .timeout(Duration::from_secs(30));
    if let (Some(ip), Some(host)) = (args.connect_to, args.url.host_str()) {
        // The port in this address is ignored; the URL's port is used.
        builder = builder.resolve(host, SocketAddr::new(ip, 0));
    }
    let resp = builder.build()?.get(args.url.clone()).send().await?;
    if let Some(der) = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
    {
        match PeerIdentity::from_der(der) {
            Ok(server) => eprintln!("mtls_client: answered by {}", server.describe()),
            Err(e) => eprintln!("mtls_client: server certificate: {e}"),
        }
    }
    let status = resp.status();
    println!("{}", status.as_u16());
    print!("{}", resp.text().await?);
    Ok(status.as_u16())
}
