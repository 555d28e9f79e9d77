//! Join tokens: an operator creates one for a cell name, and the cell spends it once for its
//! first credential. Only the SHA-256 of a token is stored.

use std::time::{Duration, SystemTime};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

use super::issuance::{display_int, NamedCredential};
use super::{Ca, CaError};
use crate::api;
use crate::audit::AuditEvent;
use crate::authority::Issued;
use crate::ids::{Name, Role};
use crate::store::{CertificateKind, JoinTokenRecord};
use crate::timefmt::rfc3339;

impl Ca {
    /// `POST /v1/join-tokens`: returns the secret once; only its hash is stored.
    pub(crate) fn create_join_token(
        &self,
        caller: &Role,
        r: &api::JoinTokenRequest,
    ) -> Result<api::JoinTokenResponse, CaError> {
        if r.role != "cell" {
            return Err(CaError::invalid(
                "role",
                format!("`{}` is not a joinable role (only \"cell\")", r.role),
            ));
        }
        let name: Name = r.name.parse().map_err(|e| CaError::invalid("name", e))?;
        let ttl = r.ttl_seconds.map(|t| t.0).unwrap_or(900);
        if !(1..=86400).contains(&ttl) {
            return Err(CaError::invalid(
                "ttl_seconds",
                format!("{} is out of range (1 to 86400)", display_int(ttl)),
            ));
        }
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut secret[..])
            .map_err(|_| CaError::Internal("random generator failed".into()))?;
        let token = format!(
            "lyt_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret[..])
        );
        let now = SystemTime::now();
        let expires_at = now + Duration::from_secs(ttl as u64);
        let hash = token_hash(&token);
        let audit = AuditEvent::new(
            caller.spiffe_id(self.td()),
            "join_token.created",
            token_subject(&hash),
            serde_json::json!({
                "role": "cell",
                "name": name.to_string(),
                "expires_at": rfc3339(expires_at),
            }),
        );
        self.store.insert_join_token(
            &hash,
            &JoinTokenRecord {
                name,
                created_by: caller.spiffe_id(self.td()),
                created_at: now,
                expires_at,
            },
            &[audit],
        )?;
        self.metrics.join_token_created();
        Ok(api::JoinTokenResponse {
            token,
            expires_at: rfc3339(expires_at),
        })
    }

    /// Removes join tokens that expired unspent, and returns how many; run periodically so
    /// the store does not grow with tokens nobody used.
    pub(crate) fn purge_expired_join_tokens(&self) -> Result<u64, CaError> {
        Ok(self.store.purge_expired_join_tokens(SystemTime::now())?)
    }

    /// Whether `token` is a live join token (without spending it).
    pub(crate) fn check_join_token(&self, token: &str) -> Result<(), CaError> {
        live_token(self.store.get_join_token(&token_hash(token))?).map(|_| ())
    }

    /// `POST /v1/join`: spends the token, issues the cell credential.
    pub(crate) fn join(&self, token: &str, r: &api::CsrRequest) -> Result<Issued, CaError> {
        let key = self.public_key(&r.csr)?;
        let hash = token_hash(token);
        let audit = AuditEvent::new(
            "join token holder",
            "join_token.used",
            token_subject(&hash),
            serde_json::json!({}),
        );
        let rec = live_token(self.store.take_join_token(&hash, &[audit])?)?;
        let spec = NamedCredential {
            kind: CertificateKind::Cell,
            role: Role::Cell(rec.name.clone()),
            dns: vec![],
            ips: vec![],
            ttl: self.config.issuance.default_ttl.0,
            requested_by: format!("join-token created by {}", rec.created_by),
            name: rec.name,
        };
        let mut leaf = self.named_leaf(spec, key);
        leaf.action = "cell.joined";
        self.issue_one(leaf)
    }
}

/// How the audit log names a join token: `join-token/` and the first 8 bytes of its SHA-256
/// in hex. Never the token: the name says which token was created and which was used, and
/// nothing about its secret.
fn token_subject(hash: &[u8]) -> String {
    format!("join-token/{}", hex::encode(&hash[..hash.len().min(8)]))
}

/// SHA-256 of a join token: the store key.
fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// A stored token that exists and has not expired; anything else is one 401 whose detail
/// says which (an unknown and a spent token look the same on purpose).
fn live_token(rec: Option<JoinTokenRecord>) -> Result<JoinTokenRecord, CaError> {
    let rec = rec.ok_or_else(|| {
        CaError::Unauthenticated("the join token is unknown or already used".into())
    })?;
    if SystemTime::now() >= rec.expires_at {
        return Err(CaError::Unauthenticated(format!(
            "the join token expired at {}",
            rfc3339(rec.expires_at)
        )));
    }
    Ok(rec)
}
