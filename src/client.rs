//! An HTTPS client for the Lanyard API (CLI, agent, tests): trusts a bundle file, presents a
//! credential directory's certificate, turns problem+json answers into [`ClientError::Api`],
//! and fails over between several CA replicas (see [`ApiClient`]).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// How long establishing a connection (TCP and TLS) may take before the next replica is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// A TLS configuration trusting the bundle and presenting the certificate and key when
    /// both are there.
    pub fn tls_config(&self) -> Result<rustls::ClientConfig, ClientError> {
        let identity = match (&self.chain_pem, &self.key_pem) {
            (Some(c), Some(k)) => Some((c.as_str(), k.as_str())),
            _ => None,
        };
        tls_config(self.bundle_pem.as_bytes(), identity)
    }
}

/// The ordered CA URLs a client tries, and which one answered last. Shared by the clones of
/// a client and by the clients [`ApiClient::with_tls`] derives from it, so a TLS rebuild
/// (a new bundle, a renewed credential) does not send the next request back to a dead URL.
#[derive(Debug)]
struct Replicas {
    urls: Vec<String>,
    /// Index into `urls` of the URL that last answered; every request starts there.
    current: AtomicUsize,
}

impl Replicas {
    /// Remembers that `i` answered, and says so when that changes which replica is used.
    fn settle(&self, i: usize) {
        let previous = self.current.swap(i, Ordering::Relaxed);
        if previous != i {
            tracing::info!(replica = %self.urls[i], "now using CA replica");
        }
    }
}

/// Whether a request may be sent again, to the next replica, after its connection broke once
/// the request could have reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Only when nothing reached a server. A POST that reached one may have taken effect
    /// there: a join token may be spent, a generation prepared. Its caller sees the error and
    /// decides; the agent's own retry starts at the same URL and moves on if it is down.
    Unsent,
    /// Whenever the exchange failed: a GET changes nothing, so asking the next replica is
    /// always safe (the trust bundle long poll resumes at once when its replica dies).
    Always,
}

/// How one attempt on one replica ended, when it did not succeed.
#[derive(Debug)]
enum AttemptError {
    /// No connection: refused, unreachable, TLS handshake failed, connect timeout. Nothing
    /// was sent, so any request may go to the next replica.
    Unreached(ClientError),
    /// The replica answered 503 (not ready, its database away): it did nothing.
    Unavailable(ClientError),
    /// The request may have reached the replica, then the connection broke or timed out.
    Lost(ClientError),
    /// The replica answered: its answer (a 409, say) is the answer, not a reason to ask
    /// another replica, which shares its state.
    Answered(ClientError),
}

impl AttemptError {
    fn moves_on(&self, resend: Resend) -> bool {
        match self {
            AttemptError::Unreached(_) | AttemptError::Unavailable(_) => true,
            AttemptError::Lost(_) => resend == Resend::Always,
            AttemptError::Answered(_) => false,
        }
    }

    fn into_inner(self) -> ClientError {
        match self {
            AttemptError::Unreached(e)
            | AttemptError::Unavailable(e)
            | AttemptError::Lost(e)
            | AttemptError::Answered(e) => e,
        }
    }
}

/// One HTTP answer, read whole.
struct Exchange {
    status: reqwest::StatusCode,
    etag: Option<u64>,
    body: Vec<u8>,
}

impl Exchange {
    /// The answer as a problem: the server's problem+json, or one made from the status.
    fn problem(&self) -> ClientError {
        match serde_json::from_slice::<Problem>(&self.body) {
            Ok(p) => ClientError::Api(p),
            Err(_) => ClientError::Api(Problem {
                type_: "about:blank".into(),
                title: self.status.canonical_reason().unwrap_or("error").into(),
                status: self.status.as_u16(),
                detail: String::from_utf8_lossy(&self.body).into_owned(),
            }),
        }
    }

    /// A success parsed as JSON, anything else as the replica's final answer.
    fn json<R: DeserializeOwned>(self) -> Result<R, AttemptError> {
        if !self.status.is_success() {
            return Err(AttemptError::Answered(self.problem()));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| AttemptError::Answered(ClientError::Decode(e.to_string())))
    }
}

fn transport(url: &str, e: &reqwest::Error) -> ClientError {
    let mut message = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        message.push_str(": ");
        message.push_str(&s.to_string());
        src = s.source();
    }
    ClientError::Transport {
        url: url.to_string(),
        message,
    }
}

/// Sends one request to one replica and reads its answer; a 503 is [`AttemptError::Unavailable`].
async fn exchange(url: &str, req: reqwest::RequestBuilder) -> Result<Exchange, AttemptError> {
    let resp = req.send().await.map_err(|e| {
        // reqwest reports every failure inside its connector (TCP connect, TLS handshake,
        // the connect timeout) as a connect error: the request itself was never written.
        if e.is_connect() {
            AttemptError::Unreached(transport(url, &e))
        } else {
            AttemptError::Lost(transport(url, &e))
        }
    })?;
    let status = resp.status();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_matches('"').parse::<u64>().ok());
    let body = resp
        .bytes()
        .await
        .map_err(|e| AttemptError::Lost(transport(url, &e)))?
        .to_vec();
    let x = Exchange { status, etag, body };
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        return Err(AttemptError::Unavailable(x.problem()));
    }
    Ok(x)
}

/// The API client. It knows one or several CA URLs (equal replicas) in order of preference:
/// each request goes to the URL that answered last and, when that one cannot be reached or
/// answers 503, to the next, for at most one pass over the list. Any other answer, a 409 or a
/// 500 included, is the answer: replicas share their state, so another would say the same.
#[derive(Clone, Debug)]
pub struct ApiClient {
    replicas: Arc<Replicas>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for `base` (`https://127.0.0.1:8443`) with the given TLS config.
    pub fn new(base: &str, tls: rustls::ClientConfig) -> Result<Self, ClientError> {
        Self::new_failover(&[base], tls)
    }

    /// A client for several CA replicas, tried in this order (see [`ApiClient`]).
    pub fn new_failover<S: AsRef<str>>(
        servers: &[S],
        tls: rustls::ClientConfig,
    ) -> Result<Self, ClientError> {
        let urls = check_urls(servers)?;
        Ok(ApiClient {
            replicas: Arc::new(Replicas {
                urls,
                current: AtomicUsize::new(0),
            }),
            http: http_client(tls)?,
        })
    }

    /// The same replicas with another TLS config (a new bundle or credential); the new client
    /// shares this one's memory of which replica answers.
    pub fn with_tls(&self, tls: rustls::ClientConfig) -> Result<Self, ClientError> {
        Ok(ApiClient {
            replicas: self.replicas.clone(),
            http: http_client(tls)?,
        })
    }

    /// A client presenting the credential in `dir` (if it has one) and trusting its bundle.
    pub fn from_credential_dir(base: &str, dir: &Path) -> Result<Self, ClientError> {
        Self::failover_from_credential_dir(&[base], dir)
    }

    /// [`ApiClient::from_credential_dir`] for several CA replicas, tried in this order.
    pub fn failover_from_credential_dir<S: AsRef<str>>(
        servers: &[S],
        dir: &Path,
    ) -> Result<Self, ClientError> {
        Self::new_failover(servers, CredentialFiles::read(dir)?.tls_config()?)
    }

    /// Every CA URL, in order.
    pub fn servers(&self) -> &[String] {
        &self.replicas.urls
    }

    /// The URL the next request goes to first: the one that answered last.
    pub fn current_server(&self) -> &str {
        let i = self.replicas.current.load(Ordering::Relaxed);
        &self.replicas.urls[i % self.replicas.urls.len()]
    }

    /// Runs `attempt` on each replica in turn from the current one, until one answers (or
    /// fails in a way `resend` does not allow to try elsewhere), at most once each.
    async fn failover<T, F, Fut>(&self, resend: Resend, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, AttemptError>>,
    {
        let urls = &self.replicas.urls;
        let n = urls.len();
        let start = self.replicas.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for step in 0..n {
            let i = (start + step) % n;
            match attempt(urls[i].clone()).await {
                Ok(v) => {
                    self.replicas.settle(i);
                    return Ok(v);
                }
                Err(e) if !e.moves_on(resend) => {
                    if matches!(e, AttemptError::Answered(_)) {
                        self.replicas.settle(i);
                    }
                    return Err(e.into_inner());
                }
                Err(e) => {
                    let e = e.into_inner();
                    if step + 1 < n {
                        let next = &urls[(i + 1) % n];
                        tracing::info!(replica = %urls[i], error = %e, next = %next, "CA replica unavailable; trying the next");
                    }
                    last = Some(e);
                }
            }
        }
        // `check_urls` guarantees one URL at least, so the loop ran and set `last`.
        Err(last.unwrap_or_else(|| ClientError::Setup("no CA URL".into())))
    }

    /// POSTs JSON, optionally with a bearer token, and parses the JSON answer. Sent to the next
    /// replica only when the current one could not be reached or answered 503, never after
    /// the request may have arrived: `/v1/join` spends its token on arrival, and a retry
    /// would be refused and hide the credential the first attempt issued.
    pub async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        bearer: Option<&str>,
    ) -> Result<R, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Setup(e.to_string()))?;
        self.failover(Resend::Unsent, |base| {
            let mut req = self
                .http
                .post(format!("{base}{path}"))
                .timeout(REQUEST_TIMEOUT)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            async move { exchange(&base, req).await?.json() }
        })
        .await
    }

    /// DELETEs; any 2xx is success. Sent to the next replica like a GET: a DELETE is
    /// idempotent, so one that may have arrived can be sent again.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.failover(Resend::Always, |base| {
            let req = self
                .http
                .delete(format!("{base}{path}"))
                .timeout(REQUEST_TIMEOUT);
            async move {
                let x = exchange(&base, req).await?;
                if !x.status.is_success() {
                    return Err(AttemptError::Answered(x.problem()));
                }
                Ok(())
            }
        })
        .await
    }

    /// GETs JSON.
    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        self.failover(Resend::Always, |base| {
            let req = self
                .http
                .get(format!("{base}{path}"))
                .timeout(REQUEST_TIMEOUT);
            async move { exchange(&base, req).await?.json() }
        })
        .await
    }

    /// Fetches the trust bundle; with `known` and `wait`, long-polls. Returns `None` on 304,
    /// otherwise the sequence and the body (PEM, or SPIFFE JSON when `json`).
    pub async fn trust_bundle(
        &self,
        known: Option<u64>,
        wait: u64,
        json: bool,
    ) -> Result<Option<(u64, String)>, ClientError> {
        self.failover(Resend::Always, |base| {
            let mut url = format!("{base}/v1/trust-bundle");
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
            async move {
                let x = exchange(&base, req).await?;
                if x.status == reqwest::StatusCode::NOT_MODIFIED {
                    return Ok(None);
                }
                if !x.status.is_success() {
                    return Err(AttemptError::Answered(x.problem()));
                }
                let seq = x.etag.ok_or_else(|| {
                    AttemptError::Answered(ClientError::Decode(
                        "trust bundle without an ETag".into(),
                    ))
                })?;
                let text = String::from_utf8(x.body).map_err(|_| {
                    AttemptError::Answered(ClientError::Decode(
                        "trust bundle that is not UTF-8".into(),
                    ))
                })?;
                Ok(Some((seq, text)))
            }
        })
        .await
    }
}

/// Checks that every URL is `https://host[:port]` and keeps them without a trailing `/`.
fn check_urls<S: AsRef<str>>(servers: &[S]) -> Result<Vec<String>, ClientError> {
    if servers.is_empty() {
        return Err(ClientError::Setup("no CA URL given".into()));
    }
    servers
        .iter()
        .map(|s| {
            let base = s.as_ref();
            let url = reqwest::Url::parse(base)
                .map_err(|e| ClientError::Setup(format!("server URL `{base}`: {e}")))?;
            if url.scheme() != "https" || url.host_str().is_none() {
                return Err(ClientError::Setup(format!(
                    "server URL `{base}` must be https://host[:port]"
                )));
            }
            Ok(base.trim_end_matches('/').to_string())
        })
        .collect()
}

fn http_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        // Also how long a replica that is down without refusing (a lost host) holds a
        // request before the next one is tried: reqwest counts the TLS handshake in it.
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ClientError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    //! Failover order against tiny local TLS servers with canned answers, and closed ports.

    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What a tiny server does with each connection.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Reads the request and answers this status (problem+json; 200 with an ETag).
        Status(u16),
        /// Reads the request, then closes without answering: the request arrived, was lost.
        Hangup,
        /// Closes the TCP connection before the TLS handshake.
        NoTls,
    }

    struct Tiny {
        url: String,
        hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Tiny {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A root, and a server certificate under it that the client's verifier accepts.
    struct TestPki {
        bundle_pem: String,
        chain: Vec<CertificateDer<'static>>,
        key_der: Vec<u8>,
    }

    fn pki() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.subject_alt_names.push(SanType::URI(
            format!(
                "spiffe://test.internal/component/{}",
                crate::api::SERVER_NAME
            )
            .try_into()
            .unwrap(),
        ));
        let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
        TestPki {
            bundle_pem: ca.pem(),
            chain: vec![leaf.der().clone()],
            key_der: key.serialize_der(),
        }
    }

    /// Reads one HTTP/1.1 request (headers, then a Content-Length body).
    async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return Some(text);
                }
            }
        }
    }

    async fn tiny(pki: &TestPki, behaviour: Behaviour) -> Tiny {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let config = rustls::ServerConfig::builder_with_provider(crate::tls_provider::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                pki.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                if let Behaviour::NoTls = behaviour {
                    counter.fetch_add(1, Ordering::SeqCst);
                    drop(tcp);
                    continue;
                }
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if read_request(&mut tls).await.is_none() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let Behaviour::Status(status) = behaviour else {
                        // Hangup: the request arrived and no answer ever will.
                        return;
                    };
                    let body = if status == 200 {
                        "{}".to_string()
                    } else {
                        format!(
                            r#"{{"type":"about:blank","title":"canned","status":{status},"detail":"tiny server"}}"#
                        )
                    };
                    let answer = format!(
                        "HTTP/1.1 {status} Canned\r\ncontent-type: application/json\r\n\
                         etag: \"7\"\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Tiny {
            url: format!("https://127.0.0.1:{}", addr.port()),
            hits,
            task,
        }
    }

    /// A URL nothing listens on: a port the kernel gave out, then released.
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("https://127.0.0.1:{port}")
    }

    fn client(pki: &TestPki, urls: &[&str]) -> ApiClient {
        ApiClient::new_failover(urls, tls_config(pki.bundle_pem.as_bytes(), None).unwrap()).unwrap()
    }

    fn hits(t: &Tiny) -> usize {
        t.hits.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn skips_a_refused_url_and_a_503_and_stops_at_a_409() {
        let pki = pki();
        let (unavailable, conflict, ok) = (
            tiny(&pki, Behaviour::Status(503)).await,
            tiny(&pki, Behaviour::Status(409)).await,
            tiny(&pki, Behaviour::Status(200)).await,
        );
        let dead = closed_port();
        let c = client(&pki, &[&dead, &unavailable.url, &conflict.url, &ok.url]);
        let r: Result<serde_json::Value, _> = c.post("/v1/x", &serde_json::json!({}), None).await;
        match r {
            Err(ClientError::Api(p)) => assert_eq!(p.status, 409),
            other => panic!("expected the 409, got {other:?}"),
        }
        assert_eq!(
            (hits(&unavailable), hits(&conflict), hits(&ok)),
            (1, 1, 0),
            "a 409 is the answer: the next replica is not asked"
        );
        // The replica that answered (with a 409) is where the next request starts.
        assert_eq!(c.current_server(), conflict.url);
    }

    #[tokio::test]
    async fn sticks_to_the_url_that_answered() {
        let pki = pki();
        let (unavailable, ok) = (
            tiny(&pki, Behaviour::Status(503)).await,
            tiny(&pki, Behaviour::Status(200)).await,
        );
        let c = client(&pki, &[&unavailable.url, &ok.url]);
        let _: serde_json::Value = c.get("/v1/x").await.unwrap();
        assert_eq!((hits(&unavailable), hits(&ok)), (1, 1));
        assert_eq!(c.current_server(), ok.url);
        // Further requests, also from a clone or a client with a new TLS config, start at
        // the replica that worked.
        let _: serde_json::Value = c.clone().get("/v1/x").await.unwrap();
        let rebuilt = c
            .with_tls(tls_config(pki.bundle_pem.as_bytes(), None).unwrap())
            .unwrap();
        let _: serde_json::Value = rebuilt
            .post("/v1/x", &serde_json::json!({}), None)
            .await
            .unwrap();
        assert_eq!((hits(&unavailable), hits(&ok)), (1, 3));
    }

    #[tokio::test]
    async fn the_long_poll_skips_a_refused_url_a_failed_handshake_and_a_503() {
        let pki = pki();
        let (no_tls, unavailable, ok) = (
            tiny(&pki, Behaviour::NoTls).await,
            tiny(&pki, Behaviour::Status(503)).await,
            tiny(&pki, Behaviour::Status(200)).await,
        );
        let dead = closed_port();
        let c = client(&pki, &[&dead, &no_tls.url, &unavailable.url, &ok.url]);
        let got = c.trust_bundle(Some(6), 1, false).await.unwrap();
        assert_eq!(got.map(|(seq, _)| seq), Some(7));
        assert_eq!((hits(&no_tls), hits(&unavailable), hits(&ok)), (1, 1, 1));
    }

    #[tokio::test]
    async fn one_pass_then_the_last_error() {
        let pki = pki();
        let unavailable = tiny(&pki, Behaviour::Status(503)).await;
        let dead = closed_port();
        let c = client(&pki, &[&unavailable.url, &dead]);
        let r: Result<serde_json::Value, _> = c.get("/v1/x").await;
        assert!(
            matches!(r, Err(ClientError::Transport { ref url, .. }) if *url == dead),
            "{r:?}"
        );
        assert_eq!(hits(&unavailable), 1, "each replica once per request");
        // Nothing answered, so nothing moved: the next request starts at the first URL again.
        assert_eq!(c.current_server(), unavailable.url);
        let c = client(&pki, &[&dead, &unavailable.url]);
        let r: Result<serde_json::Value, _> = c.get("/v1/x").await;
        assert!(
            matches!(r, Err(ClientError::Api(ref p)) if p.status == 503),
            "{r:?}"
        );
        assert_eq!(hits(&unavailable), 2);
    }

    #[tokio::test]
    async fn a_post_that_arrived_is_not_sent_again_but_a_get_is() {
        let pki = pki();
        let (lost, ok) = (
            tiny(&pki, Behaviour::Hangup).await,
            tiny(&pki, Behaviour::Status(200)).await,
        );
        let c = client(&pki, &[&lost.url, &ok.url]);
        // A join token would be spent by the first attempt: no second one elsewhere.
        let r: Result<serde_json::Value, _> = c
            .post("/v1/join", &serde_json::json!({}), Some("token"))
            .await;
        assert!(matches!(r, Err(ClientError::Transport { .. })), "{r:?}");
        assert_eq!((hits(&lost), hits(&ok)), (1, 0));
        // Reading changes nothing, so a GET moves on.
        let _: serde_json::Value = c.get("/v1/x").await.unwrap();
        assert_eq!((hits(&lost), hits(&ok)), (2, 1));
    }

    #[test]
    fn every_url_must_be_https() {
        let tls = || tls_config(pki().bundle_pem.as_bytes(), None).unwrap();
        assert!(ApiClient::new_failover(&["https://a:1", "http://b:1"], tls()).is_err());
        assert!(ApiClient::new_failover::<&str>(&[], tls()).is_err());
        let c = ApiClient::new_failover(&["https://a:1/", "https://b:1"], tls()).unwrap();
        assert_eq!(c.servers(), ["https://a:1", "https://b:1"]);
        assert_eq!(c.current_server(), "https://a:1");
    }
}
