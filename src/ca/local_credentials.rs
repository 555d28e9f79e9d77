//! The CA's own credentials, issued with keys generated here: the API server's certificate
//! (its key sealed under the KEK in the store) and the local operator credential directory.
//! Both are re-issued when past two thirds of their life or signed by a generation that is no
//! longer active.

use std::net::IpAddr;
use std::time::SystemTime;

use der::Decode;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use super::issuance::NamedCredential;
use super::{Ca, CaError};
use crate::api::SERVER_NAME;
use crate::credential_dir::write_credential_dir;
use crate::ids::{IdError, Name, Role, Serial};
use crate::store::{CertificateKind, CertificateRecord};
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// Where a state created before per-replica server certificates kept the one server
/// credential of the CA; read once, on a sled store, and moved under the replica's key.
const META_SERVER_TLS_LEGACY: &str = "server_tls";

/// The meta key of one replica's server credential: each replica has its own certificate
/// and key, so replicas on one database never overwrite (or load) each other's.
fn server_tls_key(replica: &str) -> String {
    format!("server_tls/{replica}")
}

/// The sealing purpose of one replica's server key: bound to the replica, so a record copied
/// under another replica's key does not open.
fn server_tls_purpose(replica: &str) -> String {
    format!("server-tls/{replica}")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredServerCert {
    chain_pem: String,
    #[serde(with = "serde_bytes_b64")]
    sealed_key: Vec<u8>,
    serial: Serial,
}

mod serde_bytes_b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        base64::engine::general_purpose::STANDARD
            .decode(String::deserialize(d)?)
            .map_err(serde::de::Error::custom)
    }
}

/// A signed leaf with a locally generated key (server certificate, operator credential).
pub(crate) struct LocalCredential {
    /// PEM chain (leaf, intermediate).
    pub chain_pem: String,
    /// PKCS#8 PEM private key.
    pub key_pem: zeroize::Zeroizing<String>,
    /// The record.
    pub record: CertificateRecord,
}

impl std::fmt::Debug for LocalCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCredential")
            .field("serial", &self.record.serial)
            .field("key_pem", &"...")
            .finish()
    }
}

impl Ca {
    /// Issues a credential with a key generated here (server certificate, operator
    /// credential). The key never leaves this process except into the caller's files.
    fn issue_local(&self, spec: NamedCredential) -> Result<LocalCredential, CaError> {
        self.issue_local_with_key(spec, None)
    }

    /// Like [`Ca::issue_local`], keeping `existing_key` (PKCS#8 PEM) when it parses.
    fn issue_local_with_key(
        &self,
        spec: NamedCredential,
        existing_key: Option<&str>,
    ) -> Result<LocalCredential, CaError> {
        let kp = match existing_key.and_then(|k| rcgen::KeyPair::from_pem(k).ok()) {
            Some(kp) => kp,
            None => rcgen::KeyPair::generate()
                .map_err(|e| CaError::Internal(format!("key generation: {e}")))?,
        };
        let spki = SubjectPublicKeyInfoOwned::from_der(&kp.public_key_der())
            .map_err(|e| CaError::Internal(e.to_string()))?;
        let leaf = self.named_leaf(spec, (spki, false));
        let issued = self.issue_one(leaf)?;
        Ok(LocalCredential {
            chain_pem: issued.chain_pem,
            key_pem: zeroize::Zeroizing::new(kp.serialize_pem()),
            record: issued.record,
        })
    }

    /// Writes an operator credential directory (`cert.pem`, `key.pem` 0600,
    /// `trust-bundle.pem`) for `name`, replacing what is there.
    ///
    /// The key already in the directory is kept (as the agent keeps instance keys), so a
    /// CLI that reads `cert.pem` and `key.pem` during a refresh still gets a matching pair;
    /// `lanyard credential renew` is the way to a new key.
    pub(super) fn write_operator_credential(
        &self,
        dir: &std::path::Path,
        name: &Name,
        by: &str,
    ) -> Result<CertificateRecord, CaError> {
        let existing = std::fs::read_to_string(dir.join("key.pem"))
            .ok()
            .map(zeroize::Zeroizing::new);
        let spec = NamedCredential {
            kind: CertificateKind::Operator,
            role: Role::Operator(name.clone()),
            name: name.clone(),
            dns: vec![],
            ips: vec![],
            ttl: self.config.issuance.max_ttl.0,
            requested_by: by.to_string(),
        };
        let cred = self.issue_local_with_key(spec, existing.as_deref().map(String::as_str))?;
        write_credential_dir(
            dir,
            &cred.chain_pem,
            &cred.key_pem,
            &self.authority.bundle().pem(),
        )
        .map_err(|e| CaError::Internal(format!("writing {}: {e}", dir.display())))?;
        Ok(cred.record)
    }

    /// The API server's own certificate: names `localhost`, `127.0.0.1` and
    /// `listen.server_names`.
    fn issue_server_certificate(&self) -> Result<LocalCredential, CaError> {
        let mut dns = vec!["localhost".to_string()];
        let mut ips: Vec<IpAddr> = vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        for n in &self.config.listen.server_names {
            match n.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !dns.contains(n) => dns.push(n.clone()),
                Err(_) => {}
            }
        }
        let name: Name = SERVER_NAME
            .parse()
            .map_err(|e: IdError| CaError::Internal(e.0))?;
        self.issue_local(NamedCredential {
            kind: CertificateKind::Server,
            role: Role::Component(name.clone()),
            name,
            dns,
            ips,
            ttl: self.config.issuance.default_ttl.0,
            requested_by: "lanyard server".into(),
        })
    }

    /// The server certificate this replica stored on an earlier start, if it is still good:
    /// signed by the active generation and not past two thirds of its life. Otherwise a new
    /// one is issued and stored under this replica's name (key sealed under the KEK).
    pub(crate) fn load_or_issue_server_certificate(
        &self,
        replica: &str,
    ) -> Result<LocalCredential, CaError> {
        if let Some(c) = self.stored_server_certificate(replica)? {
            if self.credential_is_fresh(&c.record) {
                return Ok(c);
            }
        }
        let c = self.issue_server_certificate()?;
        self.store_server_certificate(replica, &c)?;
        Ok(c)
    }

    /// Whether a credential is signed by the active generation and before 2/3 of its life.
    fn credential_is_fresh(&self, r: &CertificateRecord) -> bool {
        let active = self.authority.active().map(|a| a.0);
        // notBefore is backdated; the life that counts starts when it was issued.
        let issued = r.not_before + self.config.issuance.backdate.0;
        let life = r.not_after.duration_since(issued).unwrap_or_default();
        let renew_at = issued + life * 2 / 3;
        active == Some(r.authority_id) && SystemTime::now() < renew_at
    }

    /// This replica's stored server credential; on a sled store without one, the CA-wide
    /// credential of a state created before per-replica records, moved to this replica.
    fn stored_server_certificate(&self, replica: &str) -> Result<Option<LocalCredential>, CaError> {
        if let Some(raw) = self.store.get_meta(&server_tls_key(replica))? {
            return self.decode_server_certificate(&raw, &server_tls_purpose(replica));
        }
        // Only sled: it is one process, so exactly one replica ever adopts the old record.
        // On a shared database two replicas could both take it and share a key.
        if super::uses_postgres(&self.config) {
            return Ok(None);
        }
        let Some(raw) = self.store.get_meta(META_SERVER_TLS_LEGACY)? else {
            return Ok(None);
        };
        if raw.is_empty() {
            // Already moved (the store cannot delete a meta value; empty means gone).
            return Ok(None);
        }
        let Some(c) = self.decode_server_certificate(&raw, "server-tls")? else {
            return Ok(None);
        };
        self.store_server_certificate(replica, &c)?;
        self.store.put_meta(META_SERVER_TLS_LEGACY, b"")?;
        tracing::info!(replica, serial = %c.record.serial, "server certificate moved to this replica's record");
        Ok(Some(c))
    }

    fn decode_server_certificate(
        &self,
        raw: &[u8],
        purpose: &str,
    ) -> Result<Option<LocalCredential>, CaError> {
        let stored: StoredServerCert = serde_json::from_slice(raw)
            .map_err(|e| CaError::Internal(format!("stored server certificate: {e}")))?;
        let key = self.authority.open_secret(purpose, &stored.sealed_key)?;
        let key_pem = String::from_utf8(key.to_vec())
            .map_err(|_| CaError::Internal("stored server key is not PEM".into()))?;
        let Some(record) = self.store.get_certificate(&stored.serial)? else {
            return Ok(None);
        };
        Ok(Some(LocalCredential {
            chain_pem: stored.chain_pem,
            key_pem: zeroize::Zeroizing::new(key_pem),
            record,
        }))
    }

    /// The serial of the certificate in the local operator credential directory, if there is
    /// one that parses.
    pub(super) fn local_operator_serial(&self) -> Option<Serial> {
        let pem_text =
            std::fs::read(self.config.operator_credential_dir().join("cert.pem")).ok()?;
        parse_pem_certs(&pem_text)
            .ok()?
            .into_iter()
            .next()
            .and_then(|d| CertInfo::from_der(&d).ok())
            .and_then(|i| i.serial.parse::<Serial>().ok())
    }

    /// Persists `replica`'s server credential, its key sealed under the KEK.
    fn store_server_certificate(&self, replica: &str, c: &LocalCredential) -> Result<(), CaError> {
        let stored = StoredServerCert {
            chain_pem: c.chain_pem.clone(),
            sealed_key: self
                .authority
                .seal_secret(&server_tls_purpose(replica), c.key_pem.as_bytes())?,
            serial: c.record.serial,
        };
        let raw = serde_json::to_vec(&stored).map_err(|e| CaError::Internal(e.to_string()))?;
        self.store.put_meta(&server_tls_key(replica), &raw)?;
        Ok(())
    }

    /// A new server certificate, issued and stored, when `current` (the one in use) is no
    /// longer fresh; `None` while it is. The caller swaps it in.
    pub(crate) fn refresh_server_certificate(
        &self,
        replica: &str,
        current: &CertificateRecord,
    ) -> Result<Option<LocalCredential>, CaError> {
        if self.credential_is_fresh(current) {
            return Ok(None);
        }
        let cred = self.issue_server_certificate()?;
        self.store_server_certificate(replica, &cred)?;
        tracing::info!(replica, serial = %cred.record.serial, authority = %cred.record.authority_id, "server certificate renewed");
        Ok(Some(cred))
    }

    /// Re-issues the local operator credential (same name, same key) when it is no longer
    /// fresh, and otherwise keeps its `trust-bundle.pem` equal to the published bundle. A
    /// directory without `cert.pem`, or with a certificate this CA has no record of, is left
    /// alone: it is not ours to manage.
    pub(crate) fn refresh_operator_credential(&self) -> Result<(), CaError> {
        let dir = self.config.operator_credential_dir();
        let Ok(pem_text) = std::fs::read(dir.join("cert.pem")) else {
            return Ok(());
        };
        let bundle_pem = self.authority.bundle().pem();
        let needs_new = match parse_pem_certs(&pem_text)
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|d| CertInfo::from_der(&d).ok())
            .and_then(|i| i.serial.parse::<Serial>().ok())
            .and_then(|s| self.store.get_certificate(&s).ok().flatten())
        {
            Some(rec) if !self.credential_is_fresh(&rec) => rec.name,
            _ => None,
        };
        if let Some(name) = needs_new {
            let rec = self.write_operator_credential(&dir, &name, "lanyard server")?;
            tracing::info!(serial = %rec.serial, authority = %rec.authority_id, dir = %dir.display(), "local operator credential renewed");
        } else if std::fs::read_to_string(dir.join("trust-bundle.pem"))
            .ok()
            .as_deref()
            != Some(bundle_pem.as_str())
        {
            let path = dir.join("trust-bundle.pem");
            crate::fsutil::write_atomic(&path, bundle_pem.as_bytes(), 0o644)
                .map_err(|e| CaError::Internal(format!("writing {}: {e}", path.display())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A freshly initialized CA on sled in a temporary directory (kept alive with it).
    fn test_ca() -> (Ca, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lanyard.toml");
        let text = include_str!("../../ca-config/lanyard.toml")
            .replace(
                "state_dir = \"./data\"",
                &format!(
                    "state_dir = {:?}",
                    dir.path().join("state").display().to_string()
                ),
            )
            .replace(
                "kek_file = \"./data/kek\"",
                &format!(
                    "kek_file = {:?}",
                    dir.path().join("kek").display().to_string()
                ),
            )
            .replace("automatic = true", "automatic = false");
        std::fs::write(&path, text).unwrap();
        let (ca, _) = Ca::init(&Config::load(&path).unwrap()).unwrap();
        (ca, dir)
    }

    fn key_der(c: &LocalCredential) -> Vec<u8> {
        rcgen::KeyPair::from_pem(&c.key_pem)
            .unwrap()
            .public_key_der()
    }

    #[test]
    fn each_replica_name_gets_and_reloads_its_own_server_credential() {
        let (ca, _dir) = test_ca();
        let a = ca.load_or_issue_server_certificate("host:1").unwrap();
        let b = ca.load_or_issue_server_certificate("host:2").unwrap();
        assert_ne!(a.record.serial, b.record.serial);
        assert_ne!(key_der(&a), key_der(&b), "each replica has its own key");
        assert!(ca.store.get_meta("server_tls/host:1").unwrap().is_some());
        assert!(ca.store.get_meta("server_tls/host:2").unwrap().is_some());
        // Each reloads its own, not the last one stored.
        let a2 = ca.load_or_issue_server_certificate("host:1").unwrap();
        let b2 = ca.load_or_issue_server_certificate("host:2").unwrap();
        assert_eq!(a2.record.serial, a.record.serial);
        assert_eq!(*a2.key_pem, *a.key_pem);
        assert_eq!(b2.record.serial, b.record.serial);
        assert_eq!(*b2.key_pem, *b.key_pem);
        // A record copied under another replica's key does not open: the seal names the
        // replica.
        let raw = ca.store.get_meta("server_tls/host:1").unwrap().unwrap();
        ca.store.put_meta("server_tls/host:3", &raw).unwrap();
        assert!(ca.load_or_issue_server_certificate("host:3").is_err());
    }

    #[test]
    fn a_state_with_the_old_ca_wide_record_moves_it_to_the_first_replica() {
        let (ca, _dir) = test_ca();
        // What `init` stored before per-replica records.
        let old = ca.issue_server_certificate().unwrap();
        let stored = StoredServerCert {
            chain_pem: old.chain_pem.clone(),
            sealed_key: ca
                .authority
                .seal_secret("server-tls", old.key_pem.as_bytes())
                .unwrap(),
            serial: old.record.serial,
        };
        ca.store
            .put_meta(
                META_SERVER_TLS_LEGACY,
                &serde_json::to_vec(&stored).unwrap(),
            )
            .unwrap();
        let moved = ca.load_or_issue_server_certificate("host:1").unwrap();
        assert_eq!(moved.record.serial, old.record.serial);
        assert_eq!(*moved.key_pem, *old.key_pem);
        // Taken once: the next replica name gets a new credential, the first keeps the old.
        let other = ca.load_or_issue_server_certificate("host:2").unwrap();
        assert_ne!(other.record.serial, old.record.serial);
        let again = ca.load_or_issue_server_certificate("host:1").unwrap();
        assert_eq!(again.record.serial, old.record.serial);
    }
}
