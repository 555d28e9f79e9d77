//! TLS for the API: the server's hot-swappable certificate, and client certificates that are
//! accepted at the handshake and judged afterwards, so an untrusted one gets a 401 problem
//! instead of a bare TLS alert.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use super::ServeError;
use crate::ca::{Ca, CaError, CertificateRecord, LocalCredential};
use crate::ids::{Role, Serial};
use crate::tls_provider::provider;
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// Builds a rustls `CertifiedKey` from a PEM chain and a PKCS#8 PEM key.
pub(crate) fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, ServeError> {
    let chain: Vec<CertificateDer<'static>> = parse_pem_certs(chain_pem.as_bytes())
        .map_err(|e| ServeError::Credential(e.to_string()))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key_block = pem::parse(key_pem)
        .map_err(|e| ServeError::Credential(format!("private key is not PEM: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_block.into_contents()));
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| ServeError::Credential(format!("private key does not load: {e}")))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// The server certificate in use; replaced in place when renewed or re-issued.
#[derive(Debug)]
pub(crate) struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
    record: RwLock<CertificateRecord>,
}

impl ServerCert {
    /// Wraps a freshly issued credential.
    pub(crate) fn new(cred: &LocalCredential) -> Result<Self, ServeError> {
        Ok(ServerCert {
            current: RwLock::new(Arc::new(certified_key(&cred.chain_pem, &cred.key_pem)?)),
            record: RwLock::new(cred.record.clone()),
        })
    }

    /// Swaps in a new credential; new handshakes use it at once.
    pub(crate) fn replace(&self, cred: &LocalCredential) -> Result<(), ServeError> {
        let ck = Arc::new(certified_key(&cred.chain_pem, &cred.key_pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = ck;
        *self.record.write().unwrap_or_else(|p| p.into_inner()) = cred.record.clone();
        Ok(())
    }

    /// The record of the certificate in use.
    pub(crate) fn record(&self) -> CertificateRecord {
        self.record
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Asks for a client certificate, checks that the client holds its key (the handshake
/// signature), and leaves the chain decision to [`identify`]. Client certificates are
/// optional at the TLS layer and required per endpoint.
#[derive(Debug)]
struct DeferredClientVerifier {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deliberately deferred: `identify` verifies the chain against the current bundle
        // for every connection, and nothing is granted without that.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The API's TLS configuration (TLS 1.2 and 1.3, HTTP/1.1).
pub(crate) fn server_config(cert: Arc<ServerCert>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = provider();
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(DeferredClientVerifier { provider }))
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub(crate) enum PeerIdentity {
    /// No client certificate.
    Anonymous,
    /// A client certificate that does not chain to this CA's bundle, is revoked, or names no
    /// role; the reason is returned in the 401.
    Untrusted(String),
    /// Its revocation status could not be read (the store is unreachable) at that moment:
    /// a 503. A request on the connection checks again unless the failure is fresh (under a
    /// second old), so the handshake's failed lookup and the first request's do not add up.
    Unavailable(String, std::time::Instant),
    /// A verified client certificate.
    Verified {
        /// The role from its SPIFFE ID.
        role: Role,
        /// Its serial.
        serial: Option<Serial>,
        /// When it expires.
        not_after: std::time::SystemTime,
        /// The bundle sequence it was verified against.
        bundle_sequence: u64,
    },
}

/// The peer of a request: address, identity at the handshake, and the chain it presented.
/// Inserted into every request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// Remote address.
    pub addr: SocketAddr,
    /// Identity as verified at the handshake.
    pub identity: PeerIdentity,
    /// The presented chain, for re-verification on a long-lived connection.
    pub certs: Arc<Vec<CertificateDer<'static>>>,
}

impl Caller {
    /// The caller's identity *now*: a connection may outlive its certificate, its root (a
    /// retirement) or its revocation, so every request re-checks expiry and revocation, and
    /// re-verifies the chain when the bundle changed since the handshake.
    pub(crate) fn current_identity(&self, ca: &Ca) -> PeerIdentity {
        if let Some(known) = self.identity_in_memory(ca) {
            return known;
        }
        match &self.identity {
            // Memory could not answer (expiry was checked there): the bundle changed since the
            // handshake, so the chain is verified again, or the revoked set must be re-read.
            PeerIdentity::Verified {
                serial,
                bundle_sequence,
                ..
            } => {
                if *bundle_sequence != ca.bundle().sequence {
                    return identify(ca, &self.certs);
                }
                if let Some(s) = serial {
                    match ca.is_revoked(s) {
                        Ok(false) => {}
                        Ok(true) => {
                            return PeerIdentity::Untrusted(format!(
                                "client certificate {s} is revoked"
                            ))
                        }
                        Err(e) => return revocation_unknown(e),
                    }
                }
                self.identity.clone()
            }
            // The handshake could not finish the check: try again, unless it just failed.
            PeerIdentity::Unavailable(_, at) if at.elapsed() >= UNAVAILABLE_FRESH => {
                identify(ca, &self.certs)
            }
            other => other.clone(),
        }
    }
}

impl Caller {
    /// [`Caller::current_identity`] when memory alone answers it (the usual case: the bundle
    /// did not change since the handshake and the revoked set in memory is current), so a
    /// request needs no hand-off to a blocking thread; `None` when the answer needs a store
    /// read or a chain verification.
    pub(crate) fn identity_in_memory(&self, ca: &Ca) -> Option<PeerIdentity> {
        match &self.identity {
            PeerIdentity::Verified {
                serial,
                not_after,
                bundle_sequence,
                ..
            } => {
                if std::time::SystemTime::now() >= *not_after {
                    return Some(PeerIdentity::Untrusted(
                        "client certificate has expired".into(),
                    ));
                }
                if *bundle_sequence != ca.bundle().sequence {
                    return None;
                }
                if let Some(s) = serial {
                    if ca.is_revoked_in_memory(s)? {
                        return Some(PeerIdentity::Untrusted(format!(
                            "client certificate {s} is revoked"
                        )));
                    }
                }
                Some(self.identity.clone())
            }
            PeerIdentity::Unavailable(..) => None,
            other => Some(other.clone()),
        }
    }
}

/// How long a failed revocation lookup stands for the connection before it is tried again.
const UNAVAILABLE_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// A failed revocation lookup: unavailable (503) when the store cannot be reached, so a
/// client retries instead of taking its credential for refused; refused otherwise.
fn revocation_unknown(e: CaError) -> PeerIdentity {
    match e {
        CaError::NotReady(m) => PeerIdentity::Unavailable(
            format!("revocation status unavailable: {m}"),
            std::time::Instant::now(),
        ),
        _ => PeerIdentity::Untrusted("revocation status unavailable".into()),
    }
}

/// Verifies a client chain against the current trust bundle and reads its role.
pub(crate) fn identify(ca: &Ca, certs: &[CertificateDer<'static>]) -> PeerIdentity {
    let Some((leaf, intermediates)) = certs.split_first() else {
        return PeerIdentity::Anonymous;
    };
    let bundle = ca.bundle();
    let anchors: Vec<_> = bundle
        .roots
        .iter()
        .filter_map(|r| {
            let der = CertificateDer::from(r.as_slice());
            webpki::anchor_from_trusted_cert(&der)
                .ok()
                .map(|a| a.to_owned())
        })
        .collect();
    let ee = match webpki::EndEntityCert::try_from(leaf) {
        Ok(ee) => ee,
        Err(e) => {
            return PeerIdentity::Untrusted(format!("client certificate does not parse: {e:?}"))
        }
    };
    let algs = provider().signature_verification_algorithms.all;
    if let Err(e) = ee.verify_for_usage(
        algs,
        &anchors,
        intermediates,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    ) {
        return PeerIdentity::Untrusted(format!(
            "client certificate does not chain to this CA's trust bundle: {e:?}"
        ));
    }
    let info = match CertInfo::from_der(leaf) {
        Ok(i) => i,
        Err(e) => return PeerIdentity::Untrusted(e.to_string()),
    };
    if info.uris.len() != 1 {
        return PeerIdentity::Untrusted("client certificate must carry exactly one URI SAN".into());
    }
    let Some(role) = Role::from_spiffe_id(&info.uris[0], &ca.config().trust_domain) else {
        return PeerIdentity::Untrusted(format!(
            "client certificate's SPIFFE ID {} names no role in {}",
            info.uris[0],
            ca.config().trust_domain
        ));
    };
    let serial: Option<Serial> = info.serial.parse().ok();
    if let Some(s) = &serial {
        match ca.is_revoked(s) {
            Ok(false) => {}
            Ok(true) => {
                return PeerIdentity::Untrusted(format!("client certificate {s} is revoked"))
            }
            Err(e) => return revocation_unknown(e),
        }
    }
    PeerIdentity::Verified {
        role,
        serial,
        not_after: info.not_after,
        bundle_sequence: bundle.sequence,
    }
}
