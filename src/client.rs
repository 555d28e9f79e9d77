//! An HTTPS client for the Lanyard API (CLI, agent, tests): trusts a bundle file, presents a
//! credential directory's certificate, turns problem+json answers into [`ClientError::Api`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::api::Problem;
use crate::credential_dir::{BUNDLE_FILE, CERT_FILE, KEY_FILE};
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// The longest any call but a long poll may take; a hung CA must not stall the agent.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Client-side failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Files or settings are wrong.
    #[error("{0}")]
    Setup(String),
    /// The server could not be reached or the connection failed.
    #[error("cannot reach {url}: {message}")]
    Transport {
        /// URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The server answered with a problem.
    #[error("{} {}: {}", .0.status, .0.title, .0.detail)]
    Api(Problem),
    /// The server's answer did not parse.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

/// Generates an EC P-256 key with the OS CSPRNG and a CSR for it. The subject is empty on
/// purpose: the CA takes only the public key.
pub fn new_key_and_csr() -> Result<(Zeroizing<String>, String), ClientError> {
    let kp = rcgen::KeyPair::generate()
        .map_err(|e| ClientError::Setup(format!("key generation: {e}")))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&kp)
        .and_then(|c| c.pem())
        .map_err(|e| ClientError::Setup(format!("CSR: {e}")))?;
    Ok((Zeroizing::new(kp.serialize_pem()), csr))
}

/// Accepts only the Lanyard API server: a chain to the bundle for the host name, *and* the
/// server's own SPIFFE ID. Any certificate from the bundle could carry a host name (an app's
/// route, say); only the CA's server certificate carries `/component/lanyard-server`, a name
/// the CA never issues to anyone else.
#[derive(Debug)]
struct LanyardServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for LanyardServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let suffix = format!("/component/{}", crate::api::SERVER_NAME);
        let is_server = CertInfo::from_der(end_entity)
            .map(|i| {
                i.uris.len() == 1
                    && i.uris[0].starts_with("spiffe://")
                    && i.uris[0].ends_with(&suffix)
            })
            .unwrap_or(false);
        if !is_server {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A rustls client config for the Lanyard API: trusts `bundle_pem`, accepts only the CA's
/// own server certificate, and optionally presents a client certificate.
pub fn tls_config(
    bundle_pem: &[u8],
    identity: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in
        parse_pem_certs(bundle_pem).map_err(|e| ClientError::Setup(format!("trust bundle: {e}")))?
    {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| ClientError::Setup(format!("trust bundle: {e}")))?;
    }
    let provider = crate::tls_provider::provider();
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ClientError::Setup(format!("trust bundle: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ClientError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LanyardServerVerifier { inner }));
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain_pem, key_pem)) => {
            let chain: Vec<CertificateDer<'static>> = parse_pem_certs(chain_pem.as_bytes())
                .map_err(|e| ClientError::Setup(format!("certificate: {e}")))?
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            let key =
                pem::parse(key_pem).map_err(|e| ClientError::Setup(format!("private key: {e}")))?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.into_contents()));
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Setup(format!("client certificate: {e}")))
        }
    }
}

/// A credential directory's files (`cert.pem`, `key.pem`, `trust-bundle.pem`).
pub struct CredentialFiles {
    /// PEM chain, if present.
    pub chain_pem: Option<String>,
    /// PEM key, if present.
    pub key_pem: Option<Zeroizing<String>>,
    /// PEM bundle.
    pub bundle_pem: String,
}

impl std::fmt::Debug for CredentialFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialFiles(...)")
    }
}

impl CredentialFiles {
    /// Reads a directory; the bundle is required, the certificate and key optional.
    pub fn read(dir: &Path) -> Result<Self, ClientError> {
        let read = |n: &str| std::fs::read_to_string(dir.join(n));
        let bundle_pem = read(BUNDLE_FILE)
            .map_err(|e| ClientError::Setup(format!("{}: {e}", dir.join(BUNDLE_FILE).display())))?;
        Ok(CredentialFiles {
            chain_pem: read(CERT_FILE).ok(),
            key_pem: read(KEY_FILE).ok().map(Zeroizing::new),
            bundle_pem,
        })
    }
}

/// The API client.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for `base` (`https://127.0.0.1:8443`) with the given TLS config.
    pub fn new(base: &str, tls: rustls::ClientConfig) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(base)
            .map_err(|e| ClientError::Setup(format!("server URL `{base}`: {e}")))?;
        if url.scheme() != "https" || url.host_str().is_none() {
            return Err(ClientError::Setup(format!(
                "server URL `{base}` must be https://host[:port]"
            )));
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// A client presenting the credential in `dir` (if it has one) and trusting its bundle.
    pub fn from_credential_dir(base: &str, dir: &Path) -> Result<Self, ClientError> {
        let f = CredentialFiles::read(dir)?;
        let identity = match (&f.chain_pem, &f.key_pem) {
            (Some(c), Some(k)) => Some((c.as_str(), k.as_str())),
            _ => None,
        };
        Self::new(base, tls_config(f.bundle_pem.as_bytes(), identity)?)
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        let mut message = e.to_string();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        ClientError::Transport {
            url: self.base.clone(),
            message,
        }
    }

    async fn answer<R: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<R, ClientError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<Problem>(&bytes) {
                Ok(p) => ClientError::Api(p),
                Err(_) => ClientError::Api(Problem {
                    type_: "about:blank".into(),
                    title: status.canonical_reason().unwrap_or("error").into(),
                    status: status.as_u16(),
                    detail: String::from_utf8_lossy(&bytes).into_owned(),
                }),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// POSTs JSON, optionally with a bearer token, and parses the JSON answer.
    pub async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        bearer: Option<&str>,
    ) -> Result<R, ClientError> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT)
            .json(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        self.answer(resp).await
    }

    /// GETs JSON.
    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.answer(resp).await
    }

    /// Fetches the trust bundle; with `known` and `wait`, long-polls. Returns `None` on 304,
    /// otherwise the sequence and the body (PEM, or SPIFFE JSON when `json`).
    pub async fn trust_bundle(
        &self,
        known: Option<u64>,
        wait: u64,
        json: bool,
    ) -> Result<Option<(u64, String)>, ClientError> {
        let mut url = format!("{}/v1/trust-bundle", self.base);
        if wait > 0 {
            url.push_str(&format!("?wait={wait}"));
        }
        let mut req = self.http.get(url).timeout(Duration::from_secs(wait + 30));
        if let Some(n) = known {
            req = req.header("If-None-Match", format!("\"{n}\""));
        }
        if json {
            req = req.header("Accept", "application/json");
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let seq = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_matches('"').parse::<u64>().ok());
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(ClientError::Decode(format!(
                "trust bundle answered {status}: {text}"
            )));
        }
        let seq = seq.ok_or_else(|| ClientError::Decode("trust bundle without an ETag".into()))?;
        Ok(Some((seq, text)))
    }
}
