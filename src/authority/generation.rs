//! Creating CA certificates: a new generation (root and first intermediate) and a renewed
//! intermediate under an existing root. Keys are sealed under the KEK before they are stored.

use std::time::SystemTime;

use ring::signature::KeyPair;
use x509_cert::name::Name;

use super::keys::{new_key, purpose_intermediate, purpose_root, LoadedCa};
use super::{AuthorityError, AuthorityOptions};
use crate::ids::{AuthorityId, Serial};
use crate::keys::{Kek, KeyError};
use crate::store::{AuthorityRecord, CaKeyRecord, GenerationState};
use crate::x509::build::{self, Attr, CertSpec, Profile, Signer};
use crate::x509::X509Error;

fn ca_subject(opts: &AuthorityOptions, cn: &str) -> Result<Name, X509Error> {
    build::subject(&[Attr::O(&opts.trust_domain), Attr::Cn(cn)])
}

pub(super) fn new_generation(
    kek: &Kek,
    opts: &AuthorityOptions,
    id: AuthorityId,
    now: SystemTime,
) -> Result<AuthorityRecord, AuthorityError> {
    let (pkcs8, pair) = new_key()?;
    let spki = build::p256_spki(pair.public_key().as_ref())?;
    let key_id = build::key_identifier(&spki);
    let name = ca_subject(opts, &format!("Lanyard Root CA {id}"))?;
    let not_after = now + opts.root_ttl;
    let spec = CertSpec {
        serial: Serial::random().map_err(|_| KeyError::Random)?,
        subject: name.clone(),
        public_key: spki,
        not_before: now - opts.backdate,
        not_after,
        profile: Profile::Ca { path_len: None },
    };
    let cert = build::sign(
        spec,
        &Signer {
            name: &name,
            key_id: &key_id,
            key: &pair,
        },
    )?;
    let root = LoadedCa {
        cert_pem: build::pem_chain([cert.as_slice()]),
        name,
        key_id,
        key: pair,
        not_after,
    };
    let intermediate = new_intermediate(kek, opts, id, 1, &root, now)?;
    Ok(AuthorityRecord {
        id,
        state: GenerationState::Prepared,
        created_at: now,
        published_at: Some(now),
        activated_at: None,
        retiring_at: None,
        retired_at: None,
        root: CaKeyRecord {
            certificate: cert,
            sealed_key: kek.seal(&purpose_root(id), &pkcs8)?,
            not_after,
            issued_at: Some(now),
        },
        intermediates: vec![intermediate],
    })
}

pub(super) fn new_intermediate(
    kek: &Kek,
    opts: &AuthorityOptions,
    id: AuthorityId,
    n: usize,
    root: &LoadedCa,
    now: SystemTime,
) -> Result<CaKeyRecord, AuthorityError> {
    let (pkcs8, pair) = new_key()?;
    let spki = build::p256_spki(pair.public_key().as_ref())?;
    let not_after = (now + opts.intermediate_ttl).min(root.not_after);
    let spec = CertSpec {
        serial: Serial::random().map_err(|_| KeyError::Random)?,
        subject: ca_subject(opts, &format!("Lanyard Intermediate CA {id}.{n}"))?,
        public_key: spki,
        not_before: now - opts.backdate,
        not_after,
        profile: Profile::Ca { path_len: Some(0) },
    };
    let cert = build::sign(
        spec,
        &Signer {
            name: &root.name,
            key_id: &root.key_id,
            key: &root.key,
        },
    )?;
    Ok(CaKeyRecord {
        certificate: cert,
        sealed_key: kek.seal(&purpose_intermediate(id, n), &pkcs8)?,
        not_after,
        issued_at: Some(now),
    })
}
