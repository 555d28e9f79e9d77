//! Wire types of the HTTP API, shared by the server, the CLI, the agent and tests.
//!
//! Requests keep identifiers as strings: a request that parses as JSON but carries a bad
//! GUID is a 422 naming the field, not a 400, so parsing into newtypes happens in the CA
//! service. Answers are plain data too, never storage records: the server converts its
//! records into these, so the wire format changes only when this file does.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// Types below that are never built only describe a string's intended form in the OpenAPI
// document; the wire keeps the string, so a bad value is a 422 naming the field.

/// A GUID: one DNS label (1 to 63 characters) of lowercase hex digits and `-`, starting and
/// ending with a hex digit.
#[derive(ToSchema)]
#[schema(pattern = "^[0-9a-f]([0-9a-f-]{0,61}[0-9a-f])?$")]
#[allow(dead_code)]
struct Guid(String);

/// A name (of a cell, operator or component): a lowercase DNS name of 1 to 253 characters,
/// dot-separated labels of 1 to 63 letters, digits and `-` that start and end with a letter or
/// digit.
struct DnsName;

impl utoipa::PartialSchema for DnsName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(
                "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
            ))
            .min_length(Some(1))
            .max_length(Some(253))
            .description(Some("A lowercase DNS name."))
            .into()
    }
}

impl ToSchema for DnsName {}

/// A whole number of seconds, 0 or more, of any size (a query parameter: larger values than
/// the operation uses count as its maximum).
pub struct WholeSeconds;

impl utoipa::PartialSchema for WholeSeconds {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        // No `format`: int64 would bound it, and the server takes any whole number.
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .into()
    }
}

impl ToSchema for WholeSeconds {}

/// An internal route: a lowercase DNS name, as [`DnsName`].
struct RouteName;

impl utoipa::PartialSchema for RouteName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        DnsName::schema()
    }
}

impl ToSchema for RouteName {}

/// An IPv4 or IPv6 address.
struct IpAddress;

impl utoipa::PartialSchema for IpAddress {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        let ip = |f| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(f)))
        };
        OneOfBuilder::new()
            .item(ip(KnownFormat::Ipv4))
            .item(ip(KnownFormat::Ipv6))
            .description(Some("An IPv4 or IPv6 address."))
            .into()
    }
}

impl ToSchema for IpAddress {}

/// A DER CRL (the body of `GET /v1/crl/{authority_id}`).
pub struct DerCrl;

impl utoipa::PartialSchema for DerCrl {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/pkix-crl")
            .description(Some("A DER CRL."))
            .into()
    }
}

impl ToSchema for DerCrl {}

/// The state of an authority generation.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum AuthorityState {
    Prepared,
    Active,
    Retiring,
    Retired,
}

/// The revocation reasons of RFC 5280 a CRL entry can carry, by their RFC names. A reason
/// given as one of them (see [`revocation_reason`]) goes into the CRL entry as its reason
/// code. `removeFromCRL` is not among them: it only means something in a delta CRL, and
/// Lanyard publishes full CRLs.
pub const REVOCATION_REASONS: &[&str] = &[
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
    "aACompromise",
];

/// The longest revocation reason kept, in characters.
pub const MAX_REVOCATION_REASON_CHARS: usize = 256;

/// The RFC 5280 name `given` spells, in any letter case and with or without spaces, `-` or
/// `_` between its words (`key compromise`, `KEY_COMPROMISE` are `keyCompromise`).
pub fn rfc_revocation_reason(given: &str) -> Option<&'static str> {
    let folded: String = given
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_'))
        .collect();
    REVOCATION_REASONS
        .iter()
        .find(|name| name.eq_ignore_ascii_case(&folded))
        .copied()
}

/// Reads a revocation reason as the API takes it. An RFC 5280 name (see
/// [`rfc_revocation_reason`]) comes back as the RFC spells it, so the CRL can carry its code.
/// Other text is kept as given (the record shows it; the CRL entry has no reason code), since
/// the API has always taken free text. Empty text, control characters and more than
/// [`MAX_REVOCATION_REASON_CHARS`] characters are refused, with the reason why.
pub fn revocation_reason(given: &str) -> Result<String, String> {
    let given = given.trim();
    if given.is_empty() {
        return Err("is empty (leave it out, or give e.g. keyCompromise or superseded)".into());
    }
    if given.chars().count() > MAX_REVOCATION_REASON_CHARS {
        return Err(format!(
            "is longer than {MAX_REVOCATION_REASON_CHARS} characters"
        ));
    }
    if given.chars().any(char::is_control) {
        return Err("holds a control character".into());
    }
    Ok(rfc_revocation_reason(given).map_or_else(|| given.to_string(), str::to_string))
}

/// A revocation reason as [`revocation_reason`] takes it, as a pattern: after trimming
/// whitespace, 1 to 256 characters, none of them a control character.
struct RevocationReasonText;

impl utoipa::PartialSchema for RevocationReasonText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        // Whitespace as Rust's `trim` sees it, and characters that are neither whitespace
        // nor control characters: the text between the trimmed ends may hold spaces but no
        // control character, and the trimmed text is at most 256 characters.
        const WS: &str = "[\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
        const SOLID: &str =
            "[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
        const INNER: &str = "[^\\x00-\\x1f\\x7f-\\x9f]";
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(format!(
                "^{WS}*{SOLID}({INNER}{{0,{}}}{SOLID})?{WS}*$",
                MAX_REVOCATION_REASON_CHARS - 2
            )))
            .into()
    }
}

impl ToSchema for RevocationReasonText {}

/// What an issued certificate is for.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum CertificateKind {
    Instance,
    Cell,
    Operator,
    Component,
    Server,
}

/// What a join token joins as.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum JoinRole {
    Cell,
}

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
                // serde_json reads integers beyond 64 bits, and numbers written with a
                // fraction or exponent (`1.0`, `1e3`), as floats; whole ones are still integers
                // (JSON Schema counts `1.0` as the integer 1). `as` saturates beyond i128,
                // which is out of every range anyway.
                if v.is_finite() && v.fract() == 0.0 {
                    Ok(JsonInt(v as i128))
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceCertificateRequest {
    /// PEM CSR; only its public key is used, after its signature verifies.
    #[schema(content_media_type = "application/pkcs10")]
    pub csr: String,
    /// Instance GUID (CN and DNS SAN).
    #[schema(value_type = Guid)]
    pub instance_guid: String,
    /// App GUID.
    #[schema(value_type = Guid)]
    pub app_guid: String,
    /// Space GUID.
    #[schema(value_type = Guid)]
    pub space_guid: String,
    /// Organization GUID.
    #[schema(value_type = Guid)]
    pub organization_guid: String,
    /// Container IP (IPv4 or IPv6), written as an IP SAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<IpAddress>)]
    pub container_ip: Option<String>,
    /// Internal routes (DNS names, at most 100), written as DNS SANs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<RouteName>>, max_items = 100)]
    pub internal_routes: Option<Vec<String>>,
    /// Requested lifetime in seconds, within the CA's configured minimum and maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub ttl_seconds: Option<JsonInt>,
}

/// `POST /v1/instance-certificates/batch` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest<T> {
    /// Up to 1000 requests, answered in order (more is a 413); each one that does not fit the
    /// schema fails alone, with a 400 in its result.
    #[schema(max_items = 1000)]
    pub requests: Vec<T>,
}

/// One result of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// 201 or the problem's status.
    #[schema(minimum = 100, maximum = 599)]
    pub status: u16,
    /// Present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub certificate: Option<IssuedCertificate>,
    /// Present on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub problem: Option<Problem>,
}

/// `POST /v1/instance-certificates/batch` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    /// One per request, in order.
    pub results: Vec<BatchResult>,
}

/// The answer of every endpoint that issues a certificate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedCertificate {
    /// PEM: leaf, then intermediate.
    #[schema(content_media_type = "application/x-pem-file")]
    pub certificate_chain: String,
    /// Lowercase hex serial.
    #[schema(pattern = "^[0-9a-f]+$")]
    pub serial: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub not_before: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub not_after: String,
    /// The certificate's URI SAN.
    #[schema(pattern = "^spiffe://")]
    pub spiffe_id: String,
    /// Signing generation.
    pub authority_id: String,
    /// Trust bundle sequence when it was signed.
    pub trust_bundle_sequence: u64,
}

/// `POST /v1/component-certificates` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ComponentCertificateRequest {
    /// PEM CSR.
    #[schema(content_media_type = "application/pkcs10")]
    pub csr: String,
    /// Component name (CN, DNS SAN, SPIFFE path): one DNS name.
    #[schema(value_type = DnsName)]
    pub name: String,
    /// Requested lifetime in seconds, within the CA's configured minimum and maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub ttl_seconds: Option<JsonInt>,
}

/// `POST /v1/component-credentials` body: a component renewing its own certificate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ComponentCredentialRequest {
    /// PEM CSR for the new key.
    #[schema(content_media_type = "application/pkcs10")]
    pub csr: String,
    /// Requested lifetime in seconds, within the CA's configured minimum and maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub ttl_seconds: Option<JsonInt>,
}

/// Body of `/v1/join`, `/v1/cell-credentials` and `/v1/operator-credentials`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    /// PEM CSR.
    #[schema(content_media_type = "application/pkcs10")]
    pub csr: String,
}

/// `POST /v1/join-tokens` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// Only `cell`.
    #[schema(value_type = JoinRole)]
    pub role: String,
    /// The cell's name: one DNS name.
    #[schema(value_type = DnsName)]
    pub name: String,
    /// 1 to 86400, default 900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 86400)]
    pub ttl_seconds: Option<JsonInt>,
}

/// `POST /v1/join-tokens` answer. Its `Debug` hides the token.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenResponse {
    /// The secret, shown once.
    pub token: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {}

/// Body of activate and retire.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForceRequest {
    /// Override the safety rule.
    #[serde(default)]
    #[schema(default = false)]
    pub force: bool,
}

/// Body of revoke.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why, kept with the record (at most 256 characters, no control characters). An RFC 5280
    /// reason name (`keyCompromise`, `superseded`, ...; any letter case, words may be split by
    /// spaces, `-` or `_`) is kept as the RFC spells it and written into the CRL entry as its
    /// reason code; other text is kept as given, and its CRL entry has no reason code.
    #[serde(default)]
    #[schema(value_type = Option<RevocationReasonText>, example = "keyCompromise")]
    pub reason: Option<String>,
}

/// An authority generation as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuthorityView {
    /// Generation id.
    pub id: String,
    /// `prepared`, `active`, `retiring`, `retired`.
    #[schema(value_type = AuthorityState)]
    pub state: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339 or null.
    #[schema(format = DateTime, required = true)]
    pub published_at: Option<String>,
    /// RFC 3339 or null.
    #[schema(format = DateTime, required = true)]
    pub activated_at: Option<String>,
    /// RFC 3339 or null.
    #[schema(format = DateTime, required = true)]
    pub retiring_at: Option<String>,
    /// RFC 3339 or null.
    #[schema(format = DateTime, required = true)]
    pub retired_at: Option<String>,
    /// RFC 3339: the root certificate's notBefore (backdated like every certificate).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub root_not_before: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub root_not_after: String,
    /// RFC 3339: the newest intermediate's notBefore.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub intermediate_not_before: String,
    /// RFC 3339 (the newest intermediate).
    #[schema(format = DateTime)]
    pub intermediate_not_after: String,
    /// RFC 3339 or null: the latest notAfter this generation signed.
    #[schema(format = DateTime, required = true)]
    pub last_leaf_not_after: Option<String>,
    /// PEM root certificate.
    #[schema(content_media_type = "application/x-pem-file")]
    pub root_certificate: String,
    /// RFC 3339 or null: for a prepared generation, when it will have been published for the
    /// propagation delay, so an activation without `force` is accepted; null otherwise.
    #[serde(default)]
    #[schema(format = DateTime, required = true)]
    pub activatable_at: Option<String>,
}

/// `GET /v1/authorities` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuthoritiesResponse {
    /// Every generation, oldest first.
    pub authorities: Vec<AuthorityView>,
    /// Current bundle sequence.
    pub trust_bundle_sequence: u64,
    /// Which replica runs the automatic rotation schedule and intermediate renewal now:
    /// `null` on the embedded store (one process) or when no replica holds the lease.
    pub schedule_lease: Option<ScheduleLease>,
    /// The next step the server takes by itself, and when: rotation steps when
    /// `rotation.automatic` is on, intermediate renewal always; null when none is ahead.
    #[serde(default)]
    #[schema(required = true)]
    pub next_automatic_step: Option<ScheduledStep>,
}

/// A step the server will take by itself.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduledStep {
    /// `prepare`, `activate`, `retire` or `renew-intermediate`.
    #[schema(value_type = ScheduledAction)]
    pub action: String,
    /// The generation it applies to (for `prepare`: the active one, whose age triggers it).
    pub authority_id: String,
    /// RFC 3339: when it is due (a time in the past means at the next check).
    #[schema(format = DateTime)]
    pub due_at: String,
    /// Why it happens then.
    pub reason: String,
}

/// What an automatic step does.
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
#[allow(dead_code)]
enum ScheduledAction {
    Prepare,
    Activate,
    Retire,
    RenewIntermediate,
}

/// The schedule lease: one replica at a time runs the rotation schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleLease {
    /// The holder's replica name (`replica_name`, default `<hostname>:<listen port>`).
    pub holder: String,
    /// When the lease lapses unless its holder renews it (RFC 3339).
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// `GET /v1/certificates` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CertificatesResponse {
    /// Records, newest first.
    pub certificates: Vec<CertificateView>,
    /// Present when more records match: the `after` of the next page (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, pattern = "^[0-9a-f]{56}$")]
    pub next: Option<String>,
}

pub use crate::audit::AuditEntry;

/// `GET /v1/audit`: entries in order, and where the next page starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditResponse {
    /// Up to `limit` entries with `seq` above `after`, in order.
    pub entries: Vec<AuditEntry>,
    /// The `after` of the next page: the last entry's `seq` (the request's `after` when no
    /// entry came back).
    pub next: u64,
    /// The `seq` of the log's last entry now (0 for an empty log), so a reader can start
    /// near the end (`lanyard audit tail`).
    pub last: u64,
}

/// An instance's ownership binding (`POST /v1/instances/{instance_guid}/release`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceBindingView {
    /// The instance.
    #[schema(value_type = Guid)]
    pub instance_guid: String,
    /// The owning cell's SPIFFE ID.
    pub owner: String,
    /// App GUID it was bound with.
    #[schema(value_type = Guid)]
    pub app_guid: String,
    /// Space GUID it was bound with.
    #[schema(value_type = Guid)]
    pub space_guid: String,
    /// Organization GUID it was bound with.
    #[schema(value_type = Guid)]
    pub organization_guid: String,
    /// RFC 3339: when the binding would have ended by itself (the latest notAfter issued
    /// under it).
    #[schema(format = DateTime)]
    pub not_after: String,
}

/// An issued certificate's record as the API shows it (`GET /v1/certificates`, and the
/// answer of revoke).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CertificateView {
    /// Lowercase hex serial.
    #[schema(pattern = "^[0-9a-f]+$")]
    pub serial: String,
    /// `instance`, `cell`, `operator`, `component` or `server`.
    #[schema(value_type = CertificateKind)]
    pub kind: String,
    /// Instance GUID (instances), or null.
    #[schema(value_type = Option<Guid>, required = true)]
    pub instance_guid: Option<String>,
    /// App GUID (instances), or null.
    #[schema(value_type = Option<Guid>, required = true)]
    pub app_guid: Option<String>,
    /// Space GUID (instances), or null.
    #[schema(value_type = Option<Guid>, required = true)]
    pub space_guid: Option<String>,
    /// Organization GUID (instances), or null.
    #[schema(value_type = Option<Guid>, required = true)]
    pub organization_guid: Option<String>,
    /// Name (cells, operators, components, server), or null.
    #[schema(required = true)]
    pub name: Option<String>,
    /// Who asked: a SPIFFE ID, `join-token created by <operator>`, `lanyard init` or
    /// `lanyard server`.
    pub requested_by: String,
    /// Signing generation.
    pub authority_id: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub not_before: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub not_after: String,
    /// RFC 3339 or null.
    #[schema(format = DateTime, required = true)]
    pub revoked_at: Option<String>,
    /// The operator's reason (an RFC 5280 reason name); absent unless revoked with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub revocation_reason: Option<String>,
}

/// RFC 9457 problem details.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`https://lanyard.dev/problems/<slug>`).
    #[serde(rename = "type")]
    #[schema(pattern = "^https://lanyard.dev/problems/[a-z-]+$")]
    pub type_: String,
    /// Short summary of the type.
    pub title: String,
    /// HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// Which field or rule failed.
    pub detail: String,
}

/// SPIFFE bundle (JWKS) answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SpiffeBundle {
    /// One key per root.
    pub keys: Vec<SpiffeKey>,
    /// The bundle sequence.
    pub spiffe_sequence: u64,
    /// Seconds between refreshes.
    pub spiffe_refresh_hint: u64,
}

/// One JWK of a SPIFFE bundle.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SpiffeKey {
    /// Always `x509-svid`.
    #[serde(rename = "use")]
    #[schema(pattern = "^x509-svid$")]
    pub use_: String,
    /// `EC`.
    #[schema(pattern = "^EC$")]
    pub kty: String,
    /// `P-256`.
    #[schema(pattern = "^P-256$")]
    pub crv: String,
    /// base64url X coordinate.
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    pub x: String,
    /// base64url Y coordinate.
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    pub y: String,
    /// The root certificate, base64 DER.
    #[schema(min_items = 1, max_items = 1)]
    pub x5c: Vec<String>,
}

/// `GET /healthz` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(pattern = "^ok$")]
    pub status: String,
}

/// `GET /readyz` answer when an authority generation is active.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// Always `ready`.
    #[schema(pattern = "^ready$")]
    pub status: String,
    /// The active generation's id.
    pub active_authority: String,
}

/// `GET /v1/activity` answer: what the answering replica saw lately (memory only, per
/// replica, empty after a restart).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActivityResponse {
    /// When this replica started counting (RFC 3339).
    #[schema(format = DateTime)]
    pub since: String,
    /// Issuances per minute over the last hour, oldest first (60 entries).
    pub issuance_per_minute: Vec<MinuteActivity>,
    /// Certificates issued in the last hour.
    pub issued_last_hour: u64,
    /// Issuance requests refused or failed in the last hour.
    pub refused_last_hour: u64,
    /// Cells with their last request, the most recent first.
    pub cells: Vec<CellActivityView>,
    /// The latest certificate of each subject that expires within the hour (or expired
    /// less than an hour ago), soonest first, at most 50.
    pub expiring_soon: Vec<ExpiringCertificate>,
}

/// Issuances in one minute.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MinuteActivity {
    /// The minute's start (RFC 3339).
    #[schema(format = DateTime)]
    pub minute: String,
    /// Certificates issued.
    pub issued: u64,
    /// Requests refused or failed.
    pub refused: u64,
}

/// A cell's last request as this replica saw it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CellActivityView {
    /// The cell's name: one DNS name.
    #[schema(value_type = DnsName)]
    pub name: String,
    /// When it was answered (RFC 3339).
    #[schema(format = DateTime)]
    pub last_request_at: String,
    /// Its method and path, e.g. `POST /v1/instance-certificates`.
    pub last_request: String,
    /// The status it got.
    pub last_status: u16,
    /// Requests from this cell since the replica started.
    pub requests: u64,
}

/// A subject's latest certificate, soon to expire.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExpiringCertificate {
    /// `instance`, `cell`, `operator`, `component` or `server`.
    pub kind: String,
    /// The instance GUID or the name.
    pub subject: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Signing generation.
    pub authority_id: String,
    /// End of validity (RFC 3339).
    #[schema(format = DateTime)]
    pub not_after: String,
}

/// Most requests one `POST /v1/instance-certificates/batch` may carry.
pub const MAX_BATCH: usize = 1000;

/// The component name in the API server's certificate (`spiffe://<td>/component/lanyard-server`);
/// clients of the API require it, and nobody else can get a certificate with it.
pub const SERVER_NAME: &str = "lanyard-server";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_number_written_as_a_float_is_that_integer() {
        let int = |s: &str| serde_json::from_str::<JsonInt>(s).map(|i| i.0);
        assert_eq!(int("1.0").unwrap(), 1);
        assert_eq!(int("1e3").unwrap(), 1000);
        assert_eq!(int("-2.0").unwrap(), -2);
        assert_eq!(int("86400").unwrap(), 86400);
        assert!(int("99999999999999999999999").unwrap() > i128::from(u64::MAX));
        assert!(int("1.5").is_err());
        assert!(int("\"10\"").is_err());
    }

    #[test]
    fn the_documented_reason_pattern_accepts_exactly_what_the_server_keeps() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(RevocationReasonText::schema()).unwrap();
        let v = jsonschema::validator_for(&schema).unwrap();
        let long = "x".repeat(MAX_REVOCATION_REASON_CHARS);
        let samples = [
            "".to_string(),
            " ".into(),
            "\t\n".into(),
            "a".into(),
            " a ".into(),
            "\ta\r\n".into(),
            "a b".into(),
            "a\tb".into(),
            "\u{1c}a".into(),
            "a\u{85}".into(),
            "\u{85}a".into(),
            "a\u{a0}b".into(),
            "\u{3000}key compromise\u{3000}".into(),
            "a\u{7f}".into(),
            "é".into(),
            long.clone(),
            format!("  {long}\n"),
            format!("{long}x"),
        ];
        for given in samples {
            assert_eq!(
                v.is_valid(&serde_json::Value::String(given.clone())),
                revocation_reason(&given).is_ok(),
                "{given:?}"
            );
        }
    }

    #[test]
    fn an_rfc_reason_in_any_spelling_comes_back_as_the_rfc_spells_it() {
        for given in [
            "superseded",
            "SUPERSEDED",
            "cessation of operation",
            "ca-compromise",
        ] {
            let got = revocation_reason(given).unwrap();
            assert!(
                REVOCATION_REASONS.contains(&got.as_str()),
                "{given} -> {got}"
            );
        }
        assert_eq!(
            revocation_reason(" key_compromise ").unwrap(),
            "keyCompromise"
        );
    }

    #[test]
    fn other_text_is_kept_and_empty_overlong_or_control_text_is_refused() {
        assert_eq!(revocation_reason("laptop lost").unwrap(), "laptop lost");
        assert!(revocation_reason("  ").is_err());
        assert!(revocation_reason("a\nb").is_err());
        assert!(revocation_reason(&"x".repeat(MAX_REVOCATION_REASON_CHARS + 1)).is_err());
        assert!(revocation_reason(&"x".repeat(MAX_REVOCATION_REASON_CHARS)).is_ok());
    }
}
