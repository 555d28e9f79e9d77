//! `lanyard cert component --watch` and `lanyard bundle --watch --out`: keep a proxy's files
//! fresh without an operator.
//!
//! The component watch issues the credential once (with the operator credential, or takes
//! the valid component credential already in the directory), then renews it with its own
//! certificate (`POST /v1/component-credentials`, a new key each time) when a fraction of its
//! life has passed, and follows the trust bundle by long poll. Every change rewrites
//! `cert.pem`, `key.pem` and `trust-bundle.pem` as one set (see [`crate::atomic_dir`]) and
//! then runs the change command. Both watches stop cleanly on SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use super::Failure;
use crate::api;
use crate::client::{new_key_and_csr, tls_config, ApiClient, ClientError};
use crate::credential_dir::{BUNDLE_FILE, CERT_FILE, KEY_FILE};
use crate::mtls::{CredentialPaths, Credentials};

/// How long a replaced version of the set stays for readers that resolved it just before.
const OLD_VERSION_GRACE: Duration = Duration::from_secs(5);
/// The longest the change command may run before it is stopped (and counted as failed).
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// The long poll's wait; the CA caps it at 300 s.
const POLL_WAIT: u64 = 300;
/// A credential in the directory must be valid this much longer to renew itself (the renewal
/// is the first thing the watch does with a credential past its renewal time).
const MIN_LEFT: Duration = Duration::from_secs(1);

/// What `cert component --watch` was asked to do.
#[derive(Debug)]
pub(super) struct ComponentWatch<'a> {
    /// The CA's URLs, in order.
    pub(super) servers: &'a [String],
    /// The operator credential for the first issuance, when there is one.
    pub(super) operator_dir: Option<&'a Path>,
    /// Component name.
    pub(super) name: &'a str,
    /// The directory of the three files.
    pub(super) out: &'a Path,
    /// Requested lifetime, for the first issuance and every renewal.
    pub(super) ttl: Option<api::JsonInt>,
    /// Run through `sh -c` after each change.
    pub(super) on_change: Option<&'a str>,
    /// Renew when this fraction of the life has passed.
    pub(super) renew_fraction: f64,
}

/// The component's credential as the watch holds it.
struct Held {
    chain_pem: String,
    key_pem: Zeroizing<String>,
    bundle_pem: String,
    /// The bundle's sequence, once known from the CA.
    seq: Option<u64>,
    serial: String,
    not_after: SystemTime,
    /// When to renew.
    renew_at: SystemTime,
}

impl Held {
    fn new(
        chain_pem: String,
        key_pem: Zeroizing<String>,
        bundle_pem: String,
        received: SystemTime,
        fraction: f64,
    ) -> Result<Held, Failure> {
        let leaf = crate::x509::inspect::parse_pem_certs(chain_pem.as_bytes())
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|d| crate::x509::inspect::CertInfo::from_der(&d).ok())
            .ok_or_else(|| {
                Failure::runtime("the CA sent a certificate chain that does not parse")
            })?;
        let renew_at = received + crate::agent::renewal_delay(received, leaf.not_after, fraction);
        Ok(Held {
            chain_pem,
            key_pem,
            bundle_pem,
            seq: None,
            serial: leaf.serial,
            not_after: leaf.not_after,
            renew_at,
        })
    }

    /// A client for the CA that presents this credential and trusts this bundle.
    fn client(&self, like: &ApiClient) -> Result<ApiClient, Failure> {
        let tls = tls_config(
            self.bundle_pem.as_bytes(),
            Some((&self.chain_pem, &self.key_pem)),
        )?;
        Ok(like.with_tls(tls)?)
    }
}

/// Runs `cert component --watch` until SIGINT/SIGTERM.
pub(super) async fn component(w: ComponentWatch<'_>) -> Result<(), Failure> {
    if !(w.renew_fraction > 0.0 && w.renew_fraction < 1.0) {
        return Err(Failure::usage("--renew-fraction must lie between 0 and 1"));
    }
    std::fs::create_dir_all(w.out)
        .map_err(|e| Failure::runtime(format!("--out {}: {e}", w.out.display())))?;
    let shutdown = crate::runtime::shutdown_signal();
    tokio::pin!(shutdown);
    // Versions left by an earlier run that stopped within the grace period.
    crate::atomic_dir::remove_stale_versions(w.out);
    let run = async {
        let (mut held, mut client) = first_credential(&w).await?;
        write_component(&w, &held).await?;
        loop {
            let wait = held
                .renew_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let (poller, seq) = (client.clone(), held.seq);
            let poll = async move { poller.trust_bundle(seq, POLL_WAIT, false).await };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    match renew(&w, &held, &client).await {
                        Ok(next) => {
                            held = next;
                            client = held.client(&client)?;
                            write_component(&w, &held).await?;
                        }
                        Err(e) => {
                            let retry = retry_delay(&held);
                            eprintln!(
                                "lanyard: component {}: renewal failed ({e}); retrying in {}s",
                                w.name,
                                retry.as_secs()
                            );
                            held.renew_at = SystemTime::now() + retry;
                        }
                    }
                }
                r = poll => match r {
                    Ok(Some((seq, pem))) => {
                        let known = held.seq.is_some();
                        held.seq = Some(seq);
                        if pem != held.bundle_pem {
                            held.bundle_pem = pem;
                            client = held.client(&client)?;
                            write_component(&w, &held).await?;
                        } else if known {
                            eprintln!("lanyard: trust bundle sequence {seq}: same roots");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("lanyard: trust bundle watch: {e}; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                },
            }
        }
    };
    tokio::select! {
        _ = &mut shutdown => {
            eprintln!("lanyard: component {}: stopped; the files stay in place", w.name);
            Ok(())
        }
        r = run => r,
    }
}

/// How long to wait after a failed renewal: a tenth of the time left, between 1 s and 60 s.
fn retry_delay(held: &Held) -> Duration {
    let left = held
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The credential to start from: a valid one for this name in the directory, or a new one
/// issued with the operator credential. Returns it with a client that presents it.
async fn first_credential(w: &ComponentWatch<'_>) -> Result<(Held, ApiClient), Failure> {
    if let Some((chain, key, bundle, not_before)) = existing(w) {
        // The life that counts started when it was issued (notBefore is backdated a little,
        // which only brings the first renewal forward).
        let held = Held::new(chain, key, bundle, not_before, w.renew_fraction)?;
        let anon =
            ApiClient::new_failover(w.servers, tls_config(held.bundle_pem.as_bytes(), None)?)?;
        let client = held.client(&anon)?;
        eprintln!(
            "lanyard: component {}: using the credential in {} (serial {})",
            w.name,
            w.out.display(),
            held.serial
        );
        return Ok((held, client));
    }
    let Some(op) = w.operator_dir else {
        return Err(Failure::usage(format!(
            "{} holds no valid credential for component {}, and there is no operator \
             credential to issue one (--credential DIR)",
            w.out.display(),
            w.name
        )));
    };
    let operator = ApiClient::failover_from_credential_dir(w.servers, op)?;
    let (key_pem, csr) = new_key_and_csr()?;
    let r: api::IssuedCertificate = operator
        .post(
            "/v1/component-certificates",
            &api::ComponentCertificateRequest {
                csr,
                name: w.name.to_string(),
                ttl_seconds: w.ttl,
            },
            None,
        )
        .await?;
    let (seq, bundle) = fetch_bundle(&operator).await?;
    let mut held = Held::new(
        r.certificate_chain,
        key_pem,
        bundle,
        SystemTime::now(),
        w.renew_fraction,
    )?;
    held.seq = Some(seq);
    let client = held.client(&operator)?;
    eprintln!(
        "lanyard: component {}: issued with the operator credential",
        w.name
    );
    Ok((held, client))
}

/// The directory's credential, if it is this component's, its key matches and it is valid
/// for a while yet: chain, key, bundle and notBefore.
fn existing(w: &ComponentWatch<'_>) -> Option<(String, Zeroizing<String>, String, SystemTime)> {
    let creds = Credentials::open(CredentialPaths::component_dir(w.out), None).ok()?;
    let id = creds.identity().ok()?;
    let ours = id.component.as_ref().map(|n| n.as_str()) == Some(w.name);
    if !ours || id.not_after < SystemTime::now() + MIN_LEFT {
        return None;
    }
    let read = |n: &str| std::fs::read_to_string(w.out.join(n)).ok();
    let chain = read(CERT_FILE)?;
    let key = Zeroizing::new(read(KEY_FILE)?);
    let bundle = read(BUNDLE_FILE)?;
    let not_before = crate::x509::inspect::parse_pem_certs(chain.as_bytes())
        .ok()?
        .first()
        .and_then(|d| crate::x509::inspect::CertInfo::from_der(d).ok())?
        .not_before;
    Some((chain, key, bundle, not_before))
}

/// Renews with the component's own credential (new key), and takes the current bundle.
async fn renew(
    w: &ComponentWatch<'_>,
    held: &Held,
    client: &ApiClient,
) -> Result<Held, ClientError> {
    let (key_pem, csr) = new_key_and_csr()?;
    let r: api::IssuedCertificate = client
        .post(
            "/v1/component-credentials",
            &api::ComponentCredentialRequest {
                csr,
                ttl_seconds: w.ttl,
            },
            None,
        )
        .await?;
    // A certificate from a new generation needs the bundle that publishes its root; the
    // bundle fetched now always does (a generation is published before it signs).
    let (seq, bundle) = match client.trust_bundle(None, 0, false).await {
        Ok(Some(b)) => b,
        _ => (held.seq.unwrap_or(0), held.bundle_pem.clone()),
    };
    let mut next = Held::new(
        r.certificate_chain,
        key_pem,
        bundle,
        SystemTime::now(),
        w.renew_fraction,
    )
    .map_err(|f| ClientError::Decode(f.message))?;
    next.seq = Some(seq);
    eprintln!(
        "lanyard: component {}: renewed: serial {} valid until {} (was {})",
        w.name, r.serial, r.not_after, held.serial
    );
    Ok(next)
}

async fn fetch_bundle(client: &ApiClient) -> Result<(u64, String), Failure> {
    client
        .trust_bundle(None, 0, false)
        .await?
        .ok_or_else(|| Failure::runtime("the server sent no trust bundle"))
}

/// Swaps in the set (unless the files already hold exactly it), then runs the command.
async fn write_component(w: &ComponentWatch<'_>, held: &Held) -> Result<(), Failure> {
    let same = {
        let read = |n: &str| std::fs::read_to_string(w.out.join(n)).ok();
        read(CERT_FILE).as_deref() == Some(held.chain_pem.as_str())
            && read(KEY_FILE)
                .map(Zeroizing::new)
                .as_deref()
                .map(String::as_str)
                == Some(held.key_pem.as_str())
            && read(BUNDLE_FILE).as_deref() == Some(held.bundle_pem.as_str())
    };
    if same {
        return Ok(());
    }
    let dir = w.out.to_path_buf();
    let (chain, key, bundle) = (
        held.chain_pem.clone(),
        held.key_pem.clone(),
        held.bundle_pem.clone(),
    );
    let old = tokio::task::spawn_blocking(move || {
        crate::atomic_dir::write_set(
            &dir,
            &[
                (CERT_FILE, chain.as_bytes(), 0o644),
                (KEY_FILE, key.as_bytes(), 0o600),
                (BUNDLE_FILE, bundle.as_bytes(), 0o644),
            ],
        )
    })
    .await
    .map_err(|e| Failure::runtime(e.to_string()))?
    .map_err(|e| Failure::runtime(format!("writing {}: {e}", w.out.display())))?;
    remove_later(old);
    eprintln!(
        "lanyard: component {}: wrote {} (serial {}, valid until {}, bundle sequence {})",
        w.name,
        w.out.display(),
        held.serial,
        crate::timefmt::rfc3339(held.not_after),
        held.seq
            .map(|s| s.to_string())
            .unwrap_or_else(|| "?".into())
    );
    run_on_change(w.on_change).await;
    Ok(())
}

/// Removes a replaced version directory once readers had time to finish with it.
fn remove_later(old: Option<PathBuf>) {
    if let Some(old) = old {
        tokio::spawn(async move {
            tokio::time::sleep(OLD_VERSION_GRACE).await;
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(old)).await;
        });
    }
}

/// Runs the change command through `sh -c` and waits for it. A failure is logged, never
/// fatal: the command runs again at the next change.
async fn run_on_change(cmd: Option<&str>) {
    let Some(cmd) = cmd else { return };
    let child = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lanyard: --on-change: cannot start `sh -c {cmd}`: {e}");
            return;
        }
    };
    match tokio::time::timeout(COMMAND_LIMIT, child.wait()).await {
        Ok(Ok(s)) if s.success() => {}
        Ok(Ok(s)) => {
            eprintln!("lanyard: --on-change `{cmd}` failed ({s}); it runs again at the next change")
        }
        Ok(Err(e)) => eprintln!("lanyard: --on-change `{cmd}`: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            eprintln!(
                "lanyard: --on-change `{cmd}` ran over {}s and was stopped; it runs again at the next change",
                COMMAND_LIMIT.as_secs()
            );
        }
    }
}

/// Runs `bundle --watch --out FILE [--on-change CMD]` until SIGINT/SIGTERM: each new bundle
/// replaces FILE atomically, then CMD runs.
pub(super) async fn bundle_file(
    client: ApiClient,
    cred_dir: &Path,
    out: &Path,
    json: bool,
    on_change: Option<&str>,
) -> Result<(), Failure> {
    let shutdown = crate::runtime::shutdown_signal();
    tokio::pin!(shutdown);
    let run = async {
        let mut client = client;
        let mut known = None;
        loop {
            let wait = if known.is_some() { POLL_WAIT } else { 0 };
            match client.trust_bundle(known, wait, json).await {
                Ok(Some((seq, body))) => {
                    known = Some(seq);
                    let current = std::fs::read_to_string(out).ok();
                    if current.as_deref() != Some(body.as_str()) {
                        crate::fsutil::write_atomic(out, body.as_bytes(), 0o644).map_err(|e| {
                            Failure::runtime(format!("writing {}: {e}", out.display()))
                        })?;
                        eprintln!(
                            "lanyard: wrote trust bundle sequence {seq} to {}",
                            out.display()
                        );
                        run_on_change(on_change).await;
                    }
                    // Follow the CA through rotations: trust what it just published.
                    let pem = if json {
                        fetch_bundle(&client).await?.1
                    } else {
                        body
                    };
                    client = super::client_commands::client_trusting(&client, cred_dir, &pem)?;
                }
                Ok(None) => {}
                Err(e)
                    if matches!(e, ClientError::Transport { .. })
                        || matches!(&e, ClientError::Api(p) if p.status == 503) =>
                {
                    eprintln!("lanyard: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    tokio::select! {
        _ = &mut shutdown => Ok(()),
        r = run => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_change_command_is_not_fatal_and_a_good_one_runs() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("ran");
        run_on_change(Some("exit 3")).await;
        run_on_change(Some(&format!("touch {}", marker.display()))).await;
        assert!(marker.exists());
        run_on_change(None).await;
    }
}
