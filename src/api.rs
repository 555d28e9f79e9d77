//! Wire types of the HTTP API, shared by the server, the CLI, the agent and tests.
//!
//! Requests keep identifiers as strings: a request that parses as JSON but carries a bad
//! GUID is a 422 naming the field, not a 400, so parsing into newtypes happens in the CA
//! service. Answers are plain data too, never storage records: the server converts its
//! records into these, so the wire format changes only when this file does.

use serde::{Deserialize, Serialize};

/// A JSON integer of any size: a value outside the allowed range is a 422 naming the field,
/// not a 400, while `1.5` or `"10"` still do not fit the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JsonInt(pub i128);

impl<'de> Deserialize<'de> for JsonInt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = JsonInt;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E>(self, v: i64) -> Result<JsonInt, E> {
                Ok(JsonInt(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<JsonInt, E> {
                Ok(JsonInt(v.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<JsonInt, E> {
                // serde_json reads integers beyond 64 bits as floats; they are still integers.
                if v.is_finite() && v.fract() == 0.0 {
                    Ok(JsonInt(if v >= 0.0 { i128::MAX } else { i128::MIN }))
                } else {
                    Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl From<i64> for JsonInt {
    fn from(v: i64) -> Self {
        JsonInt(v.into())
    }
}

/// `POST /v1/instance-certificates` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceCertificateRequest {
    /// PEM CSR; only its public key is used.
    pub csr: String,
    /// Instance GUID (CN and DNS SAN).
    pub instance_guid: String,
    /// App GUID.
    pub app_guid: String,
    /// Space GUID.
    pub space_guid: String,
    /// Organization GUID.
    pub organization_guid: String,
    /// Container IP (IPv4 or IPv6), written as an IP SAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_ip: Option<String>,
    /// Internal routes, written as DNS SANs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_routes: Option<Vec<String>>,
    /// Requested lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<JsonInt>,
}

/// `POST /v1/instance-certificates/batch` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest<T> {
    /// Up to 1000 requests, answered in order.
    pub requests: Vec<T>,
}

/// One result of a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResult {
    /// 201 or the problem's status.
    pub status: u16,
    /// Present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<IssuedCertificate>,
    /// Present on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// `POST /v1/instance-certificates/batch` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResponse {
    /// One per request, in order.
    pub results: Vec<BatchResult>,
}

/// The answer of every endpoint that issues a certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// PEM: leaf, then intermediate.
    pub certificate_chain: String,
    /// Lowercase hex serial.
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// The certificate's URI SAN.
    pub spiffe_id: String,
    /// Signing generation.
    pub authority_id: String,
    /// Trust bundle sequence when it was signed.
    pub trust_bundle_sequence: u64,
}

/// `POST /v1/component-certificates` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentCertificateRequest {
    /// PEM CSR.
    pub csr: String,
    /// Component name (CN, DNS SAN, SPIFFE path).
    pub name: String,
    /// Requested lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<JsonInt>,
}

/// Body of `/v1/join`, `/v1/cell-credentials` and `/v1/operator-credentials`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    /// PEM CSR.
    pub csr: String,
}

/// `POST /v1/join-tokens` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// Only `cell`.
    pub role: String,
    /// The cell's name.
    pub name: String,
    /// 1 to 86400, default 900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<JsonInt>,
}

/// `POST /v1/join-tokens` answer. Its `Debug` hides the token.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinTokenResponse {
    /// The secret, shown once.
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
}

impl std::fmt::Debug for JoinTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokenResponse")
            .field("token", &"...")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Body of prepare: empty, or `{}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {}

/// Body of activate and retire.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceRequest {
    /// Override the safety rule.
    #[serde(default)]
    pub force: bool,
}

/// Body of revoke.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Free text.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An authority generation as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorityView {
    /// Generation id.
    pub id: String,
    /// `prepared`, `active`, `retiring`, `retired`.
    pub state: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339 or null.
    pub published_at: Option<String>,
    /// RFC 3339 or null.
    pub activated_at: Option<String>,
    /// RFC 3339 or null.
    pub retiring_at: Option<String>,
    /// RFC 3339 or null.
    pub retired_at: Option<String>,
    /// RFC 3339.
    pub root_not_after: String,
    /// RFC 3339 (the newest intermediate).
    pub intermediate_not_after: String,
    /// RFC 3339 or null: the latest notAfter this generation signed.
    pub last_leaf_not_after: Option<String>,
    /// PEM root certificate.
    pub root_certificate: String,
}

/// `GET /v1/authorities` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthoritiesResponse {
    /// Every generation, oldest first.
    pub authorities: Vec<AuthorityView>,
    /// Current bundle sequence.
    pub trust_bundle_sequence: u64,
}

/// `GET /v1/certificates` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificatesResponse {
    /// Records, newest first.
    pub certificates: Vec<CertificateView>,
}

/// An issued certificate's record as the API shows it (`GET /v1/certificates`, and the
/// answer of revoke).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateView {
    /// Lowercase hex serial.
    pub serial: String,
    /// `instance`, `cell`, `operator`, `component` or `server`.
    pub kind: String,
    /// Instance GUID (instances), or null.
    pub instance_guid: Option<String>,
    /// App GUID (instances), or null.
    pub app_guid: Option<String>,
    /// Space GUID (instances), or null.
    pub space_guid: Option<String>,
    /// Organization GUID (instances), or null.
    pub organization_guid: Option<String>,
    /// Name (cells, operators, components, server), or null.
    pub name: Option<String>,
    /// Who asked: a SPIFFE ID, `join-token created by <operator>`, `lanyard init` or
    /// `lanyard server`.
    pub requested_by: String,
    /// Signing generation.
    pub authority_id: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339 or null.
    pub revoked_at: Option<String>,
    /// The operator's reason; absent unless revoked with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
}

/// RFC 9457 problem details.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary of the type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// Which field or rule failed.
    pub detail: String,
}

/// SPIFFE bundle (JWKS) answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpiffeBundle {
    /// One key per root.
    pub keys: Vec<SpiffeKey>,
    /// The bundle sequence.
    pub spiffe_sequence: u64,
    /// Seconds between refreshes.
    pub spiffe_refresh_hint: u64,
}

/// One JWK of a SPIFFE bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpiffeKey {
    /// Always `x509-svid`.
    #[serde(rename = "use")]
    pub use_: String,
    /// `EC`.
    pub kty: String,
    /// `P-256`.
    pub crv: String,
    /// base64url X coordinate.
    pub x: String,
    /// base64url Y coordinate.
    pub y: String,
    /// The root certificate, base64 DER.
    pub x5c: Vec<String>,
}

/// Most requests one `POST /v1/instance-certificates/batch` may carry.
pub const MAX_BATCH: usize = 1000;

/// The component name in the API server's certificate (`spiffe://<td>/component/lanyard-server`);
/// clients of the API require it, and nobody else can get a certificate with it.
pub const SERVER_NAME: &str = "lanyard-server";
