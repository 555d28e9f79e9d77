//! Commands that talk to a running CA: tokens, authorities, component certificates,
//! operator credentials, the trust bundle, revocation and the load generator.

use std::path::{Path, PathBuf};

use super::args::{AuthorityCommand, CertCommand, Cli, Command, CredentialCommand, TokenCommand};
use super::output::{authority_table, print_json, show_authority};
use super::{load_config, Failure};
use crate::api;
use crate::client::{new_key_and_csr, ApiClient, ClientError};
use crate::credential_dir::write_credential_dir;
use crate::duration::parse_ttl;

/// The CA URLs (in order) and credential directory: the flags, else the server config's
/// client defaults.
fn client_defaults(cli: &Cli) -> Result<(Vec<String>, PathBuf), Failure> {
    if let (false, Some(c)) = (cli.server.is_empty(), &cli.credential) {
        return Ok((cli.server.clone(), c.clone()));
    }
    let config = load_config(cli)?;
    let servers = if cli.server.is_empty() {
        vec![config.client_server_url()]
    } else {
        cli.server.clone()
    };
    Ok((
        servers,
        cli.credential
            .clone()
            .unwrap_or_else(|| config.client_credential_dir()),
    ))
}

/// `--ttl` as the API's `ttl_seconds`; a flag that is not a duration is a usage error.
fn ttl_flag(s: &str) -> Result<api::JsonInt, Failure> {
    parse_ttl(s).map_err(|e| Failure::usage(format!("--ttl: {e}")))
}

/// Runs a command that calls the CA.
pub(super) async fn client_command(cli: &Cli) -> Result<(), Failure> {
    let (servers, cred_dir) = client_defaults(cli)?;
    let client = ApiClient::failover_from_credential_dir(&servers, &cred_dir)?;
    match &cli.command {
        Command::Token(TokenCommand::Create { role, name, ttl }) => {
            let ttl = ttl_flag(ttl)?;
            let r: api::JoinTokenResponse = client
                .post(
                    "/v1/join-tokens",
                    &api::JoinTokenRequest {
                        role: role.clone(),
                        name: name.clone(),
                        ttl_seconds: Some(ttl),
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
                        ttl_seconds: ttl.as_deref().map(ttl_flag).transpose()?,
                    },
                    None,
                )
                .await?;
            let bundle = fetch_bundle_pem(&client).await?;
            write_credential_dir(out, &r.certificate_chain, &key_pem, &bundle)
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
            write_credential_dir(&cred_dir, &r.certificate_chain, &key_pem, &bundle)
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
                            client = client_trusting(&client, &cred_dir, &pem)?;
                        }
                    }
                    Ok(None) => {}
                    // Every replica down or not ready: wait, then go round them again.
                    Err(e)
                        if *watch
                            && (matches!(e, ClientError::Transport { .. })
                                || matches!(&e, ClientError::Api(p) if p.status == 503)) =>
                    {
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
        Command::Bench { .. } => {
            let opts = bench_options(&cli.command)?;
            let bundle = fetch_bundle_pem(&client).await?;
            // The load goes to one replica (the one that answered), so its figures are that
            // replica's.
            let v = crate::bench::run_against_ca(client.current_server(), &client, &bundle, &opts)
                .await?;
            print_bench(&opts, &v, cli)?;
        }
        Command::Revoke { serial, reason } => {
            let r: api::CertificateView = client
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

/// `client`'s replicas with the credential in `dir` (if any), trusting `bundle_pem`.
fn client_trusting(client: &ApiClient, dir: &Path, bundle_pem: &str) -> Result<ApiClient, Failure> {
    let files = crate::client::CredentialFiles::read(dir).ok();
    let identity = files
        .as_ref()
        .and_then(|f| match (&f.chain_pem, &f.key_pem) {
            (Some(c), Some(k)) => Some((c.as_str(), k.as_str())),
            _ => None,
        });
    let tls = crate::client::tls_config(bundle_pem.as_bytes(), identity)?;
    Ok(client.with_tls(tls)?)
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

/// `lanyard bench`'s flags as options.
pub(super) fn bench_options(c: &Command) -> Result<crate::bench::BenchOptions, Failure> {
    let Command::Bench {
        mode,
        requests,
        concurrency,
        batch_size,
        watchers,
        rate,
        server_pid,
        target,
        target_dir,
        json: _,
    } = c
    else {
        return Err(Failure::usage("not the bench command"));
    };
    Ok(crate::bench::BenchOptions {
        mode: *mode,
        requests: *requests,
        concurrency: *concurrency,
        batch_size: (*batch_size).clamp(1, api::MAX_BATCH),
        watchers: *watchers,
        rate: *rate,
        server_pid: *server_pid,
        target: target.clone(),
        target_dir: target_dir.clone(),
    })
}

/// Prints a bench mode's figures as text, or as one JSON line with `--json`.
pub(super) fn print_bench(
    o: &crate::bench::BenchOptions,
    v: &serde_json::Value,
    cli: &Cli,
) -> Result<(), Failure> {
    if matches!(cli.command, Command::Bench { json: true, .. }) {
        println!("{v}");
    } else {
        print!("{}", crate::bench::render(o, v));
    }
    Ok(())
}

/// `lanyard bench` in a mode that needs no CA client (`cfssl`, `floor`, `in-process`,
/// `agent`).
pub(super) async fn local_bench(cli: &Cli) -> Result<(), Failure> {
    let opts = bench_options(&cli.command)?;
    let v = crate::bench::run_local(&opts).await?;
    print_bench(&opts, &v, cli)
}
