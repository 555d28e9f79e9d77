//! rustls callbacks that consult the current credential set on every handshake.
//!
//! They see the credential only through [`MaterialSource`], so this module depends on the
//! files layer alone and `credentials` (which owns the swapping) depends on it, not the
//! other way round.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::files::Material;

/// Where the callbacks get the credential set in use; implemented by the live credential.
pub(crate) trait MaterialSource: Send + Sync {
    /// The set in use now. Called once per handshake step, so it must be cheap.
    fn material(&self) -> Arc<Material>;
}

/// The shared handle the callbacks keep. Holding it (not a copy of the set) is what lets a
/// configuration follow the files, and keeps the credential's watcher alive.
type Source = Arc<dyn MaterialSource>;

/// Presents the current certificate, as a server and as a client.
pub(crate) struct CurrentCertificate(Source);

impl CurrentCertificate {
    /// Wraps the shared credential state.
    pub(crate) fn new(shared: Source) -> Self {
        CurrentCertificate(shared)
    }
}

impl std::fmt::Debug for CurrentCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentCertificate(...)")
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material().certified.clone())
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // The instance has exactly one identity; it is sent whatever the server hints.
        Some(self.0.material().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Requires a client certificate and verifies it with a WebPKI verifier built from the
/// current trust bundle.
pub(crate) struct CurrentClientVerifier {
    shared: Source,
    provider: Arc<CryptoProvider>,
}

impl CurrentClientVerifier {
    /// Wraps the shared credential state; `provider` checks handshake signatures.
    pub(crate) fn new(shared: Source, provider: Arc<CryptoProvider>) -> Self {
        CurrentClientVerifier { shared, provider }
    }
}

impl std::fmt::Debug for CurrentClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentClientVerifier(...)")
    }
}

impl ClientCertVerifier for CurrentClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the bundle changes under us, and an empty list tells clients to send the
        // one certificate they have (RFC 8446 4.2.4), which is what every instance does.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.shared
            .material()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
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

/// Verifies a server's chain and name with a WebPKI verifier built from the current bundle.
pub(crate) struct CurrentServerVerifier(Source);

impl CurrentServerVerifier {
    /// Wraps the shared credential state.
    pub(crate) fn new(shared: Source) -> Self {
        CurrentServerVerifier(shared)
    }
}

impl std::fmt::Debug for CurrentServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentServerVerifier(...)")
    }
}

impl ServerCertVerifier for CurrentServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.material().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .server_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.material().server_verifier.supported_verify_schemes()
    }
}
