//! The records the store keeps. They are serialized as JSON so a human can read a dump.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::ids::{AuthorityId, Guid, Name, Serial};

/// The life cycle of an authority generation: prepared, active, retiring, retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum GenerationState {
    /// Published in the bundle, signs nothing.
    Prepared,
    /// Signs every new certificate. Exactly one generation is active.
    Active,
    /// Still published, signs nothing, waits for its certificates to expire.
    Retiring,
    /// No longer published.
    Retired,
}

impl GenerationState {
    /// Lowercase name as in the API.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GenerationState::Prepared => "prepared",
            GenerationState::Active => "active",
            GenerationState::Retiring => "retiring",
            GenerationState::Retired => "retired",
        }
    }
}

/// A CA certificate and its private key sealed under the KEK.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct CaKeyRecord {
    /// DER certificate.
    #[serde(with = "b64")]
    pub certificate: Vec<u8>,
    /// `nonce || AES-256-GCM(PKCS#8)`; see [`crate::keys::Kek::seal`].
    #[serde(with = "b64")]
    pub sealed_key: Vec<u8>,
    /// The certificate's notAfter.
    #[serde(with = "crate::timefmt::rfc3339_system")]
    pub not_after: SystemTime,
    /// When it was issued (its notBefore is backdated, so this is the start of its life for
    /// the rotation schedule).
    #[serde(default, with = "crate::timefmt::rfc3339_option")]
    pub issued_at: Option<SystemTime>,
}

impl std::fmt::Debug for CaKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKeyRecord")
            .field("not_after", &crate::timefmt::rfc3339(self.not_after))
            .field("sealed_key", &"...")
            .finish()
    }
}

/// One authority generation: a root and the intermediates it signed (newest last).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AuthorityRecord {
    /// Generation number.
    pub id: AuthorityId,
    /// Current state.
    pub state: GenerationState,
    /// When it was created.
    #[serde(with = "crate::timefmt::rfc3339_system")]
    pub created_at: SystemTime,
    /// When its root entered the bundle.
    #[serde(with = "crate::timefmt::rfc3339_option")]
    pub published_at: Option<SystemTime>,
    /// When it became active.
    #[serde(with = "crate::timefmt::rfc3339_option")]
    pub activated_at: Option<SystemTime>,
    /// When it stopped signing.
    #[serde(with = "crate::timefmt::rfc3339_option")]
    pub retiring_at: Option<SystemTime>,
    /// When it left the bundle.
    #[serde(with = "crate::timefmt::rfc3339_option")]
    pub retired_at: Option<SystemTime>,
    /// The root.
    pub root: CaKeyRecord,
    /// Intermediates under this root, newest last; the newest signs.
    pub intermediates: Vec<CaKeyRecord>,
}

/// What a certificate was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CertificateKind {
    /// An app instance.
    Instance,
    /// A cell agent's credential.
    Cell,
    /// An operator credential.
    Operator,
    /// A system component.
    Component,
    /// The CA's own API server certificate.
    Server,
}

impl CertificateKind {
    /// The lowercase name, as serde writes it: in the API, the metrics and the SQL column.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CertificateKind::Instance => "instance",
            CertificateKind::Cell => "cell",
            CertificateKind::Operator => "operator",
            CertificateKind::Component => "component",
            CertificateKind::Server => "server",
        }
    }
}

/// The durable record of one issued certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CertificateRecord {
    /// Serial.
    pub serial: Serial,
    /// Kind.
    pub kind: CertificateKind,
    /// Instance GUID (instances).
    pub instance_guid: Option<Guid>,
    /// App GUID (instances).
    pub app_guid: Option<Guid>,
    /// Space GUID (instances).
    pub space_guid: Option<Guid>,
    /// Organization GUID (instances).
    pub organization_guid: Option<Guid>,
    /// Name (cells, operators, components, server).
    pub name: Option<Name>,
    /// Who asked: the caller's SPIFFE ID, `join-token created by <operator>`, `lanyard init`
    /// or `lanyard server`.
    pub requested_by: String,
    /// Signing generation.
    pub authority_id: AuthorityId,
    /// Start of validity.
    #[serde(with = "crate::timefmt::rfc3339_system")]
    pub not_before: SystemTime,
    /// End of validity.
    #[serde(with = "crate::timefmt::rfc3339_system")]
    pub not_after: SystemTime,
    /// When it was revoked.
    #[serde(with = "crate::timefmt::rfc3339_option")]
    pub revoked_at: Option<SystemTime>,
    /// Why, as given by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
}

/// Which cell owns an instance GUID, and the identity it owns it with. The first cell that
/// obtains a certificate for an instance binds it; the binding lasts until the latest
/// certificate issued for the instance expires (`not_after`), or until it is released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstanceBinding {
    /// The instance.
    pub instance_guid: Guid,
    /// The owning cell's SPIFFE ID (the `requested_by` of the instance's records).
    pub owner: String,
    /// App GUID it is bound with.
    pub app_guid: Guid,
    /// Space GUID it is bound with.
    pub space_guid: Guid,
    /// Organization GUID it is bound with.
    pub organization_guid: Guid,
    /// The latest notAfter of the certificates issued under this binding.
    #[serde(with = "crate::timefmt::rfc3339_system")]
    pub not_after: SystemTime,
}

impl InstanceBinding {
    /// The binding an instance record asks for; `None` for other kinds.
    pub(crate) fn of(r: &CertificateRecord) -> Option<InstanceBinding> {
        if r.kind != CertificateKind::Instance {
            return None;
        }
        Some(InstanceBinding {
            instance_guid: r.instance_guid.clone()?,
            owner: r.requested_by.clone(),
            app_guid: r.app_guid.clone()?,
            space_guid: r.space_guid.clone()?,
            organization_guid: r.organization_guid.clone()?,
            not_after: r.not_after,
        })
    }

    /// Whether every certificate issued under it has expired at `now`.
    pub(crate) fn expired(&self, now: SystemTime) -> bool {
        self.not_after <= now
    }

    /// Whether `wanted` is the same owner with the same app, space and organization.
    pub(crate) fn same_holder(&self, wanted: &InstanceBinding) -> bool {
        self.owner == wanted.owner
            && self.app_guid == wanted.app_guid
            && self.space_guid == wanted.space_guid
            && self.organization_guid == wanted.organization_guid
    }

    /// What a store keeps after `wanted` is issued while `current` is stored (at `now`):
    /// `None` when `current` is someone else's live binding (the issuance is refused).
    pub(crate) fn merged(
        current: Option<&InstanceBinding>,
        wanted: &InstanceBinding,
        now: SystemTime,
    ) -> Option<InstanceBinding> {
        match current {
            None => Some(wanted.clone()),
            Some(c) if c.expired(now) => Some(wanted.clone()),
            Some(c) if c.same_holder(wanted) => {
                let mut b = c.clone();
                b.not_after = b.not_after.max(wanted.not_after);
                Some(b)
            }
            Some(_) => None,
        }
    }
}

/// What [`super::Store::release_binding`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReleaseOutcome {
    /// The binding was removed; as it was.
    Released(InstanceBinding),
    /// There was no live binding (never bound, released before, or expired).
    NotBound,
    /// A live binding of another owner: nothing was changed.
    OwnedElsewhere,
}

/// Filter for [`super::Store::query_certificates`].
#[derive(Debug, Clone, Default)]
pub(crate) struct CertificateQuery {
    /// Only this instance.
    pub instance_guid: Option<Guid>,
    /// Only this app.
    pub app_guid: Option<Guid>,
    /// Only this serial (at most one record).
    pub serial: Option<Serial>,
    /// Only records after this position of the newest-first order (the next page).
    pub after: Option<CertificateCursor>,
    /// At most this many (newest first).
    pub limit: usize,
}

impl CertificateQuery {
    /// Whether `r` passes every filter (the backends answer from indexes; this says what
    /// the indexes must agree with).
    pub(crate) fn admits(&self, r: &CertificateRecord) -> bool {
        self.instance_guid
            .as_ref()
            .is_none_or(|g| r.instance_guid.as_ref() == Some(g))
            && self
                .app_guid
                .as_ref()
                .is_none_or(|g| r.app_guid.as_ref() == Some(g))
            && self.serial.is_none_or(|s| r.serial == s)
            && self.after.is_none_or(|c| c.precedes(r))
    }
}

/// A position in the order certificate records are listed in: newest (latest notBefore)
/// first, and of equal notBefore the higher serial first. A page ends at its last record's
/// position, and the next page starts after it, so paging visits every record once even
/// while new ones are issued (they come before the first page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CertificateCursor {
    /// The notBefore of the record at this position.
    pub not_before: SystemTime,
    /// Its serial.
    pub serial: Serial,
}

impl CertificateCursor {
    /// The position of `r`.
    pub(crate) fn of(r: &CertificateRecord) -> Self {
        CertificateCursor {
            not_before: r.not_before,
            serial: r.serial,
        }
    }

    /// Whether `r` is listed after this position.
    pub(crate) fn precedes(&self, r: &CertificateRecord) -> bool {
        (r.not_before, r.serial) < (self.not_before, self.serial)
    }

    /// The cursor as the API hands it out: opaque text (seconds and nanoseconds since the
    /// epoch, then the serial, all hex), which [`CertificateCursor::parse`] reads back.
    pub(crate) fn encode(&self) -> String {
        let d = self
            .not_before
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{:016x}{:08x}{}",
            d.as_secs(),
            d.subsec_nanos(),
            self.serial
        )
    }

    /// Reads a cursor in the form [`CertificateCursor::encode`] writes (56 lowercase hex
    /// digits); anything else is an error that says what a cursor is. Every text of that
    /// form names a position: a time past the year 9999 (later than any record) reads as
    /// the end of 9999, and nanoseconds past a second as the last nanosecond of it.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        /// 9999-12-31T23:59:59Z: every backend keeps times up to it.
        const LAST_SECOND: u64 = 253_402_300_799;
        let bad = || "is not a cursor from the `next` field of an earlier page".to_string();
        if text.len() != 56 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let secs = u64::from_str_radix(&text[..16], 16).map_err(|_| bad())?;
        let nanos = u32::from_str_radix(&text[16..24], 16).map_err(|_| bad())?;
        let serial: Serial = text[24..].parse().map_err(|_| bad())?;
        let (secs, nanos) = if secs > LAST_SECOND {
            (LAST_SECOND, 999_999_999)
        } else {
            (secs, nanos.min(999_999_999))
        };
        let not_before = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
        Ok(CertificateCursor { not_before, serial })
    }
}

/// A join token as stored: the secret itself is never stored, only its hash is the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JoinTokenRecord {
    /// The cell name the token admits.
    pub name: Name,
    /// The operator who created it.
    pub created_by: String,
    /// Creation time.
    #[serde(with = "crate::timefmt::rfc3339_system")]
    pub created_at: SystemTime,
    /// Expiry.
    #[serde(with = "crate::timefmt::rfc3339_system")]
    pub expires_at: SystemTime,
}

/// Who holds a lease, and until when (the database's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The holder's name (a replica name).
    pub holder: String,
    /// When it lapses unless renewed.
    pub expires_at: SystemTime,
}

/// The answer to [`super::Store::acquire_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseGrant {
    /// The store belongs to one process (it locks out every other), so whoever asks holds
    /// the lease: there is nobody to share it with.
    Unshared,
    /// Granted (taken or renewed) to the caller, as recorded.
    Held(Lease),
    /// Another holder has it and it has not lapsed.
    Refused(Lease),
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn cursor(secs: u64, nanos: u32) -> CertificateCursor {
        CertificateCursor {
            not_before: UNIX_EPOCH + Duration::new(secs, nanos),
            serial: "00112233445566778899aabbccddeeff".parse().unwrap(),
        }
    }

    #[test]
    fn a_cursor_reads_back_as_written() {
        for c in [cursor(0, 0), cursor(1_796_447_915, 123_456_789)] {
            let text = c.encode();
            assert_eq!(text.len(), 56, "{text}");
            assert_eq!(CertificateCursor::parse(&text).unwrap(), c);
        }
    }

    #[test]
    fn only_the_documented_form_is_a_cursor_and_every_text_of_it_names_a_position() {
        let good = cursor(1_796_447_915, 5).encode();
        for bad in [
            "",
            "abc",
            &good[1..],
            &format!("{good}0"),
            &good.to_uppercase(),
            &good.replace('0', "g"),
        ] {
            assert!(CertificateCursor::parse(bad).is_err(), "{bad}");
        }
        let far = format!("{:016x}{:08x}{}", u64::MAX, u32::MAX, "ff".repeat(16));
        let c = CertificateCursor::parse(&far).unwrap();
        assert!(c.not_before > UNIX_EPOCH + Duration::from_secs(253_402_300_000));
        let nanos = format!("{:016x}{:08x}{}", 10, u32::MAX, "00".repeat(16));
        let c = CertificateCursor::parse(&nanos).unwrap();
        assert_eq!(c.not_before, UNIX_EPOCH + Duration::new(10, 999_999_999));
    }
}
