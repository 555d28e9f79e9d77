//! The crypto floor: what issuing one certificate costs at the least, measured in this
//! process on one thread. That is one ring ECDSA P-256 verification of a CSR's signature
//! plus one ECDSA P-256 SHA-256 signature over a leaf-sized "to be signed" structure; no
//! parsing, encoding, storage or networking. Server CPU per certificate is compared with it.

use der::{Decode, Encode};
use ring::rand::SystemRandom;
use ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
use ring::signature::{EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use x509_cert::request::CertReq;

use super::procstat::thread_cpu_nanos;
use crate::client::{new_key_and_csr, ClientError};

/// About the size of the TBS of an instance certificate Lanyard signs (with its three OUs,
/// SANs and key identifiers).
const TBS_LEN: usize = 620;

/// Operations before the measured ones.
const WARM_UP: usize = 50;

/// The inputs of one floor operation, prepared once.
pub(crate) struct FloorInput {
    /// The CSR's `CertificationRequestInfo`, as signed.
    signed: Vec<u8>,
    /// The CSR's signature.
    signature: Vec<u8>,
    /// The CSR's public key (uncompressed point).
    public_key: Vec<u8>,
    /// The CA's key.
    key: EcdsaKeyPair,
    /// What the CA signs.
    tbs: Vec<u8>,
    rng: SystemRandom,
}

impl FloorInput {
    /// A fresh P-256 CSR and CA key.
    pub(crate) fn new() -> Result<FloorInput, ClientError> {
        let setup = |e: String| ClientError::Setup(format!("floor setup: {e}"));
        let (_k, csr) = new_key_and_csr()?;
        let der = pem::parse(csr.as_bytes())
            .map_err(|e| setup(e.to_string()))?
            .into_contents();
        let req = CertReq::from_der(&der).map_err(|e| setup(e.to_string()))?;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|e| setup(e.to_string()))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| setup(e.to_string()))?;
        Ok(FloorInput {
            signed: req.info.to_der().map_err(|e| setup(e.to_string()))?,
            signature: req
                .signature
                .as_bytes()
                .ok_or_else(|| setup("odd signature bits".into()))?
                .to_vec(),
            public_key: req.info.public_key.subject_public_key.raw_bytes().to_vec(),
            key,
            tbs: (0..TBS_LEN).map(|i| i as u8).collect(),
            rng,
        })
    }

    /// One CSR verification plus one signature; false if either failed.
    #[inline(never)]
    pub(crate) fn once(&self) -> bool {
        let verified = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.public_key)
            .verify(&self.signed, &self.signature)
            .is_ok();
        let signed = self.key.sign(&self.rng, &self.tbs).is_ok();
        verified && signed
    }
}

/// Runs `n` floor operations and answers the CPU time per operation.
pub(super) fn run(n: usize) -> Result<serde_json::Value, ClientError> {
    let input = FloorInput::new()?;
    // Warm up ring's tables and the CPU's caches; always as many, so that instruction
    // counts of runs with different `n` differ by the measured loop only.
    for _ in 0..WARM_UP {
        input.once();
    }
    let (cpu0, wall0) = (thread_cpu_nanos(), std::time::Instant::now());
    let mut ok = 0usize;
    for _ in 0..n {
        ok += usize::from(input.once());
    }
    let wall = wall0.elapsed();
    let cpu = thread_cpu_nanos()
        .zip(cpu0)
        .map(|(a, b)| a.saturating_sub(b));
    if ok != n {
        return Err(ClientError::Setup(format!(
            "floor: {} of {n} operations failed",
            n - ok
        )));
    }
    let per = |ns: f64| ns / 1000.0 / n.max(1) as f64;
    Ok(serde_json::json!({
        "mode": "floor",
        "iterations": n,
        "floor_cpu_us": cpu.map(|c| per(c as f64)),
        "floor_wall_us": per(wall.as_nanos() as f64),
    }))
}
