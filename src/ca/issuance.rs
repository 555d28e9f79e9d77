//! Certificate requests: validation of instance, component and own-credential requests into
//! leaves, and issuance (signing and the durable record) through the authority.

use std::net::IpAddr;
use std::time::Duration;

use x509_cert::spki::SubjectPublicKeyInfoOwned;

use super::{Ca, CaError};
use crate::api;
use crate::api::SERVER_NAME;
use crate::authority::{InstanceIds, Issued, LeafOutcome, LeafRefused, LeafRequest, SubjectAttr};
use crate::ids::{Guid, Name, Role};
use crate::metrics::CsrReject;
use crate::store::CertificateKind;
use crate::x509::csr::verify_csr;
use crate::x509::X509Error;

/// A batch's items after validation: per item, its leaf's index in `leaves` or its error.
#[derive(Debug)]
pub(crate) struct BatchLeaves {
    slots: Vec<Result<usize, CaError>>,
    leaves: Vec<LeafRequest>,
}

/// A credential named after its holder (cell, operator, component, server): CN = name.
#[derive(Debug, Clone)]
pub(super) struct NamedCredential {
    /// Record kind.
    pub(super) kind: CertificateKind,
    /// The role, which gives the SPIFFE ID.
    pub(super) role: Role,
    /// The name (CN).
    pub(super) name: Name,
    /// DNS SANs.
    pub(super) dns: Vec<String>,
    /// IP SANs.
    pub(super) ips: Vec<IpAddr>,
    /// Lifetime.
    pub(super) ttl: Duration,
    /// Who asked, for the record.
    pub(super) requested_by: String,
}

/// Names ending in this are reserved like `localhost` itself.
pub(crate) const RESERVED_SUFFIX: &str = ".localhost";

impl Ca {
    pub(super) fn ttl(&self, requested: Option<api::JsonInt>) -> Result<Duration, CaError> {
        let i = &self.config.issuance;
        let Some(api::JsonInt(secs)) = requested else {
            return Ok(i.default_ttl.0);
        };
        let (min, max) = (i.min_ttl.0.as_secs(), i.max_ttl.0.as_secs());
        match u64::try_from(secs) {
            Ok(s) if (min..=max).contains(&s) => Ok(Duration::from_secs(s)),
            _ => Err(CaError::invalid(
                "ttl_seconds",
                format!("{} is out of range ({min} to {max})", display_int(secs)),
            )),
        }
    }

    /// The CSR's public key (and whether it is RSA) once its signature verifies; a refusal
    /// is counted by reason.
    pub(super) fn public_key(
        &self,
        csr: &str,
    ) -> Result<(SubjectPublicKeyInfoOwned, bool), CaError> {
        let v = verify_csr(csr.as_bytes()).inspect_err(|e| {
            let why = match e {
                X509Error::BadCsrSignature => CsrReject::BadSignature,
                X509Error::UnsupportedKey(_) => CsrReject::UnsupportedKey,
                _ => CsrReject::Malformed,
            };
            self.metrics.csr_rejected(why);
        })?;
        Ok((v.public_key, v.key_kind.is_rsa()))
    }

    pub(super) fn named_leaf(
        &self,
        c: NamedCredential,
        key: (SubjectPublicKeyInfoOwned, bool),
    ) -> LeafRequest {
        let name = c.name.clone();
        LeafRequest {
            kind: c.kind,
            public_key: key.0,
            key_encipherment: key.1,
            subject: vec![(SubjectAttr::Cn, name.to_string())],
            dns: c.dns,
            ips: c.ips,
            uri: c.role.spiffe_id(self.td()),
            ttl: c.ttl,
            instance: None,
            name: Some(name),
            requested_by: c.requested_by,
            action: "certificate.issued",
        }
    }

    /// Issues every request in one durable write (a group write shared with concurrent
    /// callers), blocking this thread until it is durable: one outcome per request, in order
    /// (an instance bound elsewhere is a 409 for its own request only).
    pub(super) fn issue_many(
        &self,
        reqs: Vec<LeafRequest>,
    ) -> Result<Vec<Result<Issued, CaError>>, CaError> {
        let outcomes = self.issuer.issue_blocking(reqs)?;
        Ok(self.outcomes(outcomes))
    }

    /// [`Ca::issue_many`] waiting without a thread (for async callers).
    pub(crate) async fn issue_many_async(
        &self,
        reqs: Vec<LeafRequest>,
    ) -> Result<Vec<Result<Issued, CaError>>, CaError> {
        let outcomes = self.issuer.issue(reqs).await?;
        Ok(self.outcomes(outcomes))
    }

    /// Counts the issued leaves and turns refusals into their API errors.
    fn outcomes(&self, outcomes: Vec<LeafOutcome>) -> Vec<Result<Issued, CaError>> {
        let records: Vec<_> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .map(|i| &i.record)
            .collect();
        self.metrics.issued(&records);
        outcomes
            .into_iter()
            .map(|o| {
                o.map_err(|r| match r {
                    LeafRefused::Bound(guid) => bound_elsewhere(&guid),
                    LeafRefused::Unbuildable(e) => CaError::from(e),
                })
            })
            .collect()
    }

    pub(super) fn issue_one(&self, req: LeafRequest) -> Result<Issued, CaError> {
        let mut v = self.issue_many(vec![req])?;
        v.pop()
            .ok_or_else(|| CaError::Internal("issuance returned nothing".into()))?
    }

    /// [`Ca::issue_one`] waiting without a thread (for async callers).
    pub(crate) async fn issue_one_async(&self, req: LeafRequest) -> Result<Issued, CaError> {
        let mut v = self.issue_many_async(vec![req]).await?;
        v.pop()
            .ok_or_else(|| CaError::Internal("issuance returned nothing".into()))?
    }

    /// Validates an instance request into a [`LeafRequest`] (verifying the CSR last, as it
    /// is the most expensive check).
    fn instance_leaf(
        &self,
        caller: &Role,
        r: &api::InstanceCertificateRequest,
    ) -> Result<LeafRequest, CaError> {
        let guid = |field: &str, v: &str| -> Result<Guid, CaError> {
            v.parse::<Guid>().map_err(|e| CaError::invalid(field, e))
        };
        let ids = InstanceIds {
            instance: guid("instance_guid", &r.instance_guid)?,
            app: guid("app_guid", &r.app_guid)?,
            space: guid("space_guid", &r.space_guid)?,
            organization: guid("organization_guid", &r.organization_guid)?,
        };
        let mut ips = Vec::new();
        if let Some(ip) = &r.container_ip {
            let addr = ip.parse::<IpAddr>().map_err(|_| {
                CaError::invalid(
                    "container_ip",
                    format!("`{ip}` is not an IPv4 or IPv6 address"),
                )
            })?;
            // A container never owns these; a certificate naming them could pass for a
            // local service (the CA's own API listens on loopback).
            let loopback = addr.is_loopback() && !self.config.issuance.allow_loopback_ips;
            if loopback || addr.is_unspecified() || addr.is_multicast() {
                return Err(CaError::invalid(
                    "container_ip",
                    format!("`{ip}` is a loopback, unspecified or multicast address"),
                ));
            }
            ips.push(addr);
        }
        let mut dns = vec![ids.instance.to_string()];
        let routes = r.internal_routes.as_deref().unwrap_or(&[]);
        if routes.len() > 100 {
            return Err(CaError::invalid("internal_routes", "at most 100 routes"));
        }
        for (i, route) in routes.iter().enumerate() {
            let n: Name = route.parse().map_err(|e| {
                CaError::invalid(
                    format!("internal_routes[{i}]"),
                    format!("`{route}` is not a DNS name: {e}"),
                )
            })?;
            if self.is_reserved_name(n.as_str()) {
                return Err(CaError::invalid(
                    format!("internal_routes[{i}]"),
                    format!("`{route}` is reserved for the CA and cannot be an app route"),
                ));
            }
            if !dns.contains(&n.to_string()) {
                dns.push(n.to_string());
            }
        }
        let ttl = self.ttl(r.ttl_seconds)?;
        let (public_key, rsa) = self.public_key(&r.csr)?;
        let role = Role::Workload {
            org: ids.organization.clone(),
            space: ids.space.clone(),
            app: ids.app.clone(),
        };
        Ok(LeafRequest {
            kind: CertificateKind::Instance,
            public_key,
            key_encipherment: rsa,
            subject: vec![
                (
                    SubjectAttr::Ou,
                    format!("organization:{}", ids.organization),
                ),
                (SubjectAttr::Ou, format!("space:{}", ids.space)),
                (SubjectAttr::Ou, format!("app:{}", ids.app)),
                (SubjectAttr::Cn, ids.instance.to_string()),
            ],
            dns,
            ips,
            uri: role.spiffe_id(self.td()),
            ttl,
            instance: Some(ids),
            name: None,
            requested_by: caller.spiffe_id(self.td()),
            action: "certificate.issued",
        })
    }

    /// Names only the CA itself may carry: `localhost`, its `listen.server_names`, the trust
    /// domain, and the server's component name.
    pub(super) fn is_reserved_name(&self, n: &str) -> bool {
        // Compared in place (no list built): this runs for every route of every request.
        n.ends_with(RESERVED_SUFFIX)
            || n == "localhost"
            || n == self.config.trust_domain
            || n == SERVER_NAME
            || self.config.listen.server_names.iter().any(|r| r == n)
    }

    /// The names no component or app route may take, besides those ending in
    /// [`RESERVED_SUFFIX`]: `localhost`, the trust domain, the server certificate's name and
    /// every `listen.server_names` entry (the CA's own). The same set as
    /// [`Ca::is_reserved_name`] checks, listed for the OpenAPI document.
    pub(crate) fn reserved_names(&self) -> Vec<String> {
        let mut names = vec![
            "localhost".to_string(),
            self.config.trust_domain.clone(),
            SERVER_NAME.to_string(),
        ];
        names.extend(self.config.listen.server_names.iter().cloned());
        names
    }

    /// `POST /v1/instance-certificates`: validated (and its CSR verified) on the caller's
    /// thread, then signed and recorded in the issuing thread's next group write.
    pub(crate) async fn issue_instance_async(
        &self,
        caller: &Role,
        r: &api::InstanceCertificateRequest,
    ) -> Result<Issued, CaError> {
        let leaf = self.instance_leaf(caller, r)?;
        self.issue_one_async(leaf).await
    }

    /// The first half of `POST /v1/instance-certificates/batch`: each item validated alone
    /// (CPU work: every CSR is verified), for [`Ca::issue_instance_batch_async`].
    pub(crate) fn instance_batch_leaves(
        &self,
        caller: &Role,
        items: Vec<Result<api::InstanceCertificateRequest, CaError>>,
    ) -> BatchLeaves {
        let mut leaves = Vec::new();
        let mut slots: Vec<Result<usize, CaError>> = Vec::with_capacity(items.len());
        for item in items {
            match item.and_then(|r| self.instance_leaf(caller, &r)) {
                Ok(l) => {
                    slots.push(Ok(leaves.len()));
                    leaves.push(l);
                }
                Err(e) => slots.push(Err(e)),
            }
        }
        BatchLeaves { slots, leaves }
    }

    /// The second half of `POST /v1/instance-certificates/batch`: the valid items signed and
    /// recorded together (one durable write), answered in the order of the items.
    pub(crate) async fn issue_instance_batch_async(
        &self,
        batch: BatchLeaves,
    ) -> Result<Vec<Result<Issued, CaError>>, CaError> {
        let BatchLeaves { slots, leaves } = batch;
        let mut issued: Vec<Option<Result<Issued, CaError>>> = if leaves.is_empty() {
            vec![]
        } else {
            self.issue_many_async(leaves)
                .await?
                .into_iter()
                .map(Some)
                .collect()
        };
        Ok(slots
            .into_iter()
            .map(|s| {
                s.and_then(|i| {
                    issued
                        .get_mut(i)
                        .and_then(Option::take)
                        .unwrap_or_else(|| Err(CaError::Internal("batch slot missing".into())))
                })
            })
            .collect())
    }

    /// `POST /v1/component-certificates`.
    pub(crate) fn issue_component(
        &self,
        caller: &Role,
        r: &api::ComponentCertificateRequest,
    ) -> Result<Issued, CaError> {
        let name: Name = r.name.parse().map_err(|e| CaError::invalid("name", e))?;
        if self.is_reserved_name(name.as_str()) {
            return Err(CaError::invalid(
                "name",
                format!("`{name}` is reserved for the CA's own server certificate"),
            ));
        }
        let ttl = self.ttl(r.ttl_seconds)?;
        let key = self.public_key(&r.csr)?;
        let spec = NamedCredential {
            kind: CertificateKind::Component,
            role: Role::Component(name.clone()),
            dns: vec![name.to_string()],
            ips: vec![],
            ttl,
            requested_by: caller.spiffe_id(self.td()),
            name,
        };
        let leaf = self.named_leaf(spec, key);
        self.issue_one(leaf)
    }

    /// `POST /v1/cell-credentials` and `/v1/operator-credentials`: renew the caller's own
    /// credential under the active generation, same name.
    pub(crate) fn renew_own_credential(
        &self,
        caller: &Role,
        r: &api::CsrRequest,
    ) -> Result<Issued, CaError> {
        let key = self.public_key(&r.csr)?;
        let (kind, name, ttl) = match caller {
            Role::Cell(n) => (CertificateKind::Cell, n, self.config.issuance.default_ttl.0),
            Role::Operator(n) => (CertificateKind::Operator, n, self.config.issuance.max_ttl.0),
            _ => {
                return Err(CaError::Forbidden(
                    "only cells and operators renew credentials".into(),
                ))
            }
        };
        let spec = NamedCredential {
            kind,
            role: caller.clone(),
            name: name.clone(),
            dns: vec![],
            ips: vec![],
            ttl,
            requested_by: caller.spiffe_id(self.td()),
        };
        let mut leaf = self.named_leaf(spec, key);
        leaf.action = "credential.renewed";
        self.issue_one(leaf)
    }
}

/// The 409 for an instance bound elsewhere. It never says to whom: a cell must not learn
/// which other cell runs an instance.
pub(super) fn bound_elsewhere(guid: &Guid) -> CaError {
    CaError::Conflict(format!(
        "instance {guid} is bound elsewhere: another cell owns it, or it is bound to another app, space or organization; it is freed when its owner releases it, an operator releases it, or its last certificate expires"
    ))
}

/// An integer for a message; the saturated extremes of [`api::JsonInt`] read as "huge".
pub(super) fn display_int(v: i128) -> String {
    match v {
        i128::MAX => "a huge number".into(),
        i128::MIN => "a huge negative number".into(),
        v => v.to_string(),
    }
}
