//! X.509 encoding that owns no key: parsing and verifying CSRs, building certificates and
//! CRLs (with `x509-cert`) and signing them with a key the caller passes in (`ring`), and
//! reading identities out of certificates.

#[cfg(feature = "full")]
pub(crate) mod build;
#[cfg(feature = "full")]
pub(crate) mod csr;
pub mod inspect;
#[cfg(feature = "full")]
pub(crate) mod pem;

/// Errors of the X.509 layer. Those caused by a client's input map to 422.
#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    /// The CSR is not PEM, not DER, or not a PKCS#10 request.
    #[error("csr: {0}")]
    MalformedCsr(String),
    /// The CSR's signature does not verify with its own public key.
    #[error("csr: the signature does not verify with the request's public key")]
    BadCsrSignature,
    /// The CSR's key type or size is not accepted.
    #[error("csr: {0}")]
    UnsupportedKey(String),
    /// A certificate could not be parsed.
    #[error("certificate: {0}")]
    MalformedCertificate(String),
    /// Encoding or signing failed on our side.
    #[error("internal encoding error: {0}")]
    Encoding(String),
}

impl From<der::Error> for X509Error {
    fn from(e: der::Error) -> Self {
        X509Error::Encoding(e.to_string())
    }
}
