//! Commands that talk to a running CA: tokens, authorities, component certificates,
//! operator credentials, the trust bundle, revocation and the load generator.

use std::path::{Path, PathBuf};

use super::args::{
    AuthorityCommand, CertCommand, Cli, Command, CredentialCommand, InstanceCommand, TokenCommand,
};
use super::output::{authority_table, out, outln, print_json, show_authority};
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

/// The CA URLs and the operator credential (if any) for `cert component --watch`, which can
/// run on a host that has neither an operator credential nor the CA's config.
fn watch_defaults(cli: &Cli) -> Result<(Vec<String>, Option<PathBuf>), Failure> {
    if cli.server.is_empty() {
        let (servers, dir) = client_defaults(cli)?;
        return Ok((servers, Some(dir)));
    }
    let dir = cli
        .credential
        .clone()
        .or_else(|| load_config(cli).ok().map(|c| c.client_credential_dir()));
    Ok((cli.server.clone(), dir))
}

/// The longest a join token may live (the API's `ttl_seconds` range is 1 to 86400).
const JOIN_TOKEN_TTL: (i128, i128) = (1, 86400);

/// `--ttl` of `token create`, checked against the join token range before anything is sent.
fn join_token_ttl(s: &str) -> Result<api::JsonInt, Failure> {
    let ttl = ttl_flag(s)?;
    let (min, max) = JOIN_TOKEN_TTL;
    if !(min..=max).contains(&ttl.0) {
        return Err(Failure::usage(format!(
            "--ttl {s} is out of range: a join token lives from {} to {}",
            human_seconds(min),
            human_seconds(max)
        )));
    }
    Ok(ttl)
}

/// Seconds as the CLI writes durations: the largest unit that divides them (`7d`, `24h`,
/// `90s`; days from two on, since people say 24h rather than 1d).
pub(super) fn human_seconds(secs: i128) -> String {
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if secs != 0 && secs % n == 0 && (unit != "d" || secs >= 2 * n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// A server's 422 on `ttl_seconds` (`... is out of range (60 to 604800)`) as the usage error
/// `--ttl` deserves, with the range in the CLI's units; any other failure unchanged.
fn ttl_refusal(flag: Option<&str>, e: ClientError) -> Failure {
    if let (Some(flag), ClientError::Api(p)) = (flag, &e) {
        if p.status == 422 && p.detail.starts_with("ttl_seconds") {
            let range = p
                .detail
                .rsplit_once('(')
                .and_then(|(_, r)| r.trim_end_matches(')').split_once(" to "))
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
            if let Some((min, max)) = range {
                return Failure::usage(format!(
                    "--ttl {flag} is out of range: this CA issues from {} to {}",
                    human_seconds(min),
                    human_seconds(max)
                ));
            }
            return Failure::usage(format!("--ttl {flag}: {}", p.detail));
        }
    }
    e.into()
}

/// The client, or a usage error that says how to get a credential when there is none.
fn connect(servers: &[String], cred_dir: &Path) -> Result<ApiClient, Failure> {
    if !cred_dir.join(crate::credential_dir::BUNDLE_FILE).exists() {
        return Err(Failure::usage(format!(
            "no credential in {}: run `lanyard serve` (with auto_init) or `lanyard init` first \
             to create the operator credential, or pass `--credential DIR`",
            cred_dir.display()
        )));
    }
    Ok(ApiClient::failover_from_credential_dir(servers, cred_dir)?)
}

/// `lanyard console`: serves the operator console with the client defaults of every client
/// command (the CA URLs and the operator credential), until SIGINT or SIGTERM.
pub(super) async fn console(cli: &Cli) -> Result<(), Failure> {
    let Command::Console {
        listen,
        allow_remote,
        accept_host,
    } = &cli.command
    else {
        return Err(Failure::usage("not the console command"));
    };
    crate::console::check_flags(listen, *allow_remote, accept_host)?;
    let (servers, credential_dir) = client_defaults(cli)?;
    // The same checks and messages as any client command (no credential yet, a bad URL).
    connect(&servers, &credential_dir)?;
    crate::console::run(crate::console::ConsoleOptions {
        servers,
        credential_dir,
        listen: listen.clone(),
        allow_remote: *allow_remote,
        accept_hosts: accept_host.clone(),
    })
    .await?;
    Ok(())
}

/// Runs a command that calls the CA.
pub(super) async fn client_command(cli: &Cli) -> Result<(), Failure> {
    if let Command::Cert(CertCommand::Component {
        name,
        out,
        ttl,
        watch: true,
        on_change,
        renew_fraction,
    }) = &cli.command
    {
        let (servers, operator_dir) = watch_defaults(cli)?;
        return super::watch::component(super::watch::ComponentWatch {
            servers: &servers,
            operator_dir: operator_dir.as_deref(),
            name,
            out,
            ttl: ttl.as_deref().map(ttl_flag).transpose()?,
            on_change: on_change.as_deref(),
            renew_fraction: *renew_fraction,
        })
        .await;
    }
    // Usage errors first, before any file is read or anything is sent.
    if let Command::Token(TokenCommand::Create { ttl, .. }) = &cli.command {
        join_token_ttl(ttl)?;
    }
    let (servers, cred_dir) = client_defaults(cli)?;
    let client = connect(&servers, &cred_dir)?;
    match &cli.command {
        Command::Token(TokenCommand::Create { role, name, ttl }) => {
            let ttl = join_token_ttl(ttl)?;
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
            outln!("{}", r.token);
            eprintln!(
                "lanyard: join token for cell {name} expires at {}",
                r.expires_at
            );
        }
        Command::Authority(cmd) => authority(&client, cmd).await?,
        Command::Cert(CertCommand::Component { name, out, ttl, .. }) => {
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
                .await
                .map_err(|e| ttl_refusal(ttl.as_deref(), e))?;
            let bundle = fetch_bundle_pem(&client).await?;
            write_credential_dir(out, &r.certificate_chain, &key_pem, &bundle)
                .map_err(|e| Failure::runtime(format!("writing {}: {e}", out.display())))?;
            outln!("{}", out.display());
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
        Command::Bundle {
            format,
            watch: true,
            out: Some(out),
            on_change,
        } => {
            super::watch::bundle_file(
                client,
                &cred_dir,
                out,
                format == "spiffe",
                on_change.as_deref(),
            )
            .await?
        }
        Command::Bundle {
            format,
            out: Some(out),
            ..
        } => {
            let (seq, body) = client
                .trust_bundle(None, 0, format == "spiffe")
                .await?
                .ok_or_else(|| Failure::runtime("the server sent no trust bundle"))?;
            crate::fsutil::write_atomic(out, body.as_bytes(), 0o644)
                .map_err(|e| Failure::runtime(format!("writing {}: {e}", out.display())))?;
            eprintln!(
                "lanyard: wrote trust bundle sequence {seq} to {}",
                out.display()
            );
        }
        Command::Bundle { format, watch, .. } => {
            let json = format == "spiffe";
            let mut known = None;
            let mut client = client;
            loop {
                let wait = if known.is_some() { 300 } else { 0 };
                match client.trust_bundle(known, wait, json).await {
                    Ok(Some((seq, body))) => {
                        if *watch && !json {
                            // PEM ignores text between blocks; this tells versions apart.
                            outln!("# trust bundle sequence {seq}");
                        }
                        out!("{body}");
                        if json {
                            outln!();
                        }
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
        Command::Revoke {
            serial,
            reason,
            json,
        } => {
            let r: api::CertificateView = client
                .post(
                    &format!("/v1/certificates/{serial}/revoke"),
                    &api::RevokeRequest {
                        reason: reason.clone(),
                    },
                    None,
                )
                .await?;
            if *json {
                print_json(&r)?;
            } else {
                outln!("{}", revoked_line(&r));
            }
        }
        Command::Audit(cmd) => super::audit_commands::audit(&client, cmd).await?,
        Command::Instance(InstanceCommand::Release { guid }) => {
            let r: api::InstanceBindingView = client
                .post(
                    &format!("/v1/instances/{guid}/release"),
                    &serde_json::json!({}),
                    None,
                )
                .await?;
            eprintln!(
                "lanyard: released instance {} (owned by {}); its certificates stay valid",
                r.instance_guid, r.owner
            );
            print_json(&r)?;
        }
        _ => return Err(Failure::usage("not a client command")),
    }
    Ok(())
}

/// `client`'s replicas with the credential in `dir` (if any), trusting `bundle_pem`.
pub(super) fn client_trusting(
    client: &ApiClient,
    dir: &Path,
    bundle_pem: &str,
) -> Result<ApiClient, Failure> {
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

/// The API's `pass "force": true to override` in a rotation refusal, in the CLI's words.
fn force_hint(e: ClientError) -> Failure {
    match e {
        ClientError::Api(mut p) if p.status == 409 => {
            const API: &str = "pass \"force\": true to override";
            if p.detail.contains(API) {
                p.detail = p.detail.replace(API, "use --force to override");
            }
            ClientError::Api(p).into()
        }
        other => other.into(),
    }
}

/// What `revoke` prints for people.
fn revoked_line(r: &api::CertificateView) -> String {
    let who = r
        .instance_guid
        .as_ref()
        .map(|g| format!("instance {g}"))
        .or_else(|| r.name.as_ref().map(|n| format!("{} {n}", r.kind)))
        .unwrap_or_else(|| r.kind.clone());
    let reason = r
        .revocation_reason
        .as_ref()
        .map(|x| format!(" ({x})"))
        .unwrap_or_default();
    format!(
        "revoked {} ({who}) at {}{reason}; it is on the CRL of authority {}",
        r.serial,
        r.revoked_at.as_deref().unwrap_or("-"),
        r.authority_id
    )
}

async fn authority(client: &ApiClient, cmd: &AuthorityCommand) -> Result<(), Failure> {
    match cmd {
        AuthorityCommand::List { json } => {
            let r: api::AuthoritiesResponse = client.get("/v1/authorities").await?;
            if *json {
                return print_json(&r);
            }
            out!("{}", authority_table(&r));
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
                .await
                .map_err(force_hint)?;
            show_authority(&r, *json, "activated")?;
        }
        AuthorityCommand::Retire { id, force, json } => {
            let r: api::AuthorityView = client
                .post(
                    &format!("/v1/authorities/{id}/retire"),
                    &api::ForceRequest { force: *force },
                    None,
                )
                .await
                .map_err(force_hint)?;
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
        outln!("{v}");
    } else {
        out!("{}", crate::bench::render(o, v));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_in_the_units_people_use() {
        assert_eq!(human_seconds(1), "1s");
        assert_eq!(human_seconds(90), "90s");
        assert_eq!(human_seconds(60), "1m");
        assert_eq!(human_seconds(86400), "24h");
        assert_eq!(human_seconds(604800), "7d");
    }
}
