//! Component credentials renewed by the component itself: a proxy such as the router keeps
//! its certificate fresh with the certificate it holds, so no operator key has to live on
//! its host after the first issuance.

use super::issuance::NamedCredential;
use super::{Ca, CaError, Issued};
use crate::api;
use crate::ids::Role;
use crate::store::CertificateKind;

impl Ca {
    /// `POST /v1/component-credentials`: a new certificate for the calling component's own
    /// name (CN, DNS SAN and SPIFFE ID unchanged), for the key in the CSR, under the active
    /// generation. Only a component may ask, and never for a name reserved for the CA: the
    /// server's own certificate is renewed inside the server, never over the API.
    pub(crate) fn renew_component(
        &self,
        caller: &Role,
        r: &api::ComponentCredentialRequest,
    ) -> Result<Issued, CaError> {
        let Role::Component(name) = caller else {
            return Err(CaError::Forbidden(format!(
                "this endpoint requires the component role; the caller is a {}",
                caller.kind()
            )));
        };
        if self.is_reserved_name(name.as_str()) {
            return Err(CaError::Forbidden(format!(
                "`{name}` is the CA's own certificate; it is renewed by the server, not over the API"
            )));
        }
        let ttl = self.ttl(r.ttl_seconds)?;
        let key = self.public_key(&r.csr)?;
        let spec = NamedCredential {
            kind: CertificateKind::Component,
            role: caller.clone(),
            dns: vec![name.to_string()],
            ips: vec![],
            ttl,
            requested_by: caller.spiffe_id(self.td()),
            name: name.clone(),
        };
        let leaf = self.named_leaf(spec, key);
        self.issue_one(leaf)
    }
}
