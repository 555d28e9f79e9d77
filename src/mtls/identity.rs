//! Who is on the other end of a verified connection.

use std::time::SystemTime;

use serde::Serialize;

use super::MtlsError;
use crate::ids::{Guid, Name, Role};
use crate::x509::inspect::CertInfo;

/// The identity in a peer's (or one's own) Lanyard certificate.
///
/// For an app instance the GUIDs come from the subject (`CN=<instance>`,
/// `OU=app:<app>`, `OU=space:<space>`, `OU=organization:<org>`) and must agree with the
/// SPIFFE ID `spiffe://<td>/org/<org>/space/<space>/app/<app>`; for a system component the
/// name comes from `spiffe://<td>/component/<name>`.
///
/// Reading an identity does not verify anything: take it only from a connection whose
/// handshake verified the chain, as the configurations of [`super::Credentials`] do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerIdentity {
    /// The instance GUID (the CN), for an app instance.
    pub instance_guid: Option<Guid>,
    /// The app GUID, for an app instance.
    pub app_guid: Option<Guid>,
    /// The space GUID, for an app instance.
    pub space_guid: Option<Guid>,
    /// The organization GUID, for an app instance.
    pub organization_guid: Option<Guid>,
    /// The component name (`gorouter`), for a system component.
    pub component: Option<Name>,
    /// The certificate's one SPIFFE ID.
    pub spiffe_id: String,
    /// The trust domain of the SPIFFE ID.
    pub trust_domain: String,
    /// What the SPIFFE ID makes the peer: an instance, a component, a cell or an operator.
    #[serde(skip)]
    pub role: Role,
    /// The certificate's serial, lowercase hex.
    pub serial: String,
    /// The certificate's end of validity.
    #[serde(with = "crate::timefmt::rfc3339_system")]
    pub not_after: SystemTime,
}

impl PeerIdentity {
    /// Reads the identity from the peer's leaf certificate of a connection (a rustls
    /// `ServerConnection` or `ClientConnection`, e.g. `tls_stream.get_ref().1`).
    pub fn from_connection(conn: &rustls::CommonState) -> Result<Self, MtlsError> {
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(MtlsError::NoPeerCertificate)?;
        Self::from_der(leaf)
    }

    /// Reads the identity from a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, MtlsError> {
        let info =
            CertInfo::from_der(der).map_err(|e| MtlsError::PeerCertificate(e.to_string()))?;
        Self::from_info(&info)
    }

    /// Reads the identity from a parsed certificate.
    pub fn from_info(info: &CertInfo) -> Result<Self, MtlsError> {
        let bad = |m: String| MtlsError::PeerCertificate(m);
        let [uri] = info.uris.as_slice() else {
            return Err(bad(format!(
                "expected exactly one URI SAN (the SPIFFE ID), found {}",
                info.uris.len()
            )));
        };
        let trust_domain = uri
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split_once('/'))
            .map(|(td, _)| td.to_string())
            .ok_or_else(|| bad(format!("{uri} is not a SPIFFE ID")))?;
        let role = Role::from_spiffe_id(uri, &trust_domain)
            .ok_or_else(|| bad(format!("{uri} names no Lanyard identity")))?;
        let mut id = PeerIdentity {
            instance_guid: None,
            app_guid: None,
            space_guid: None,
            organization_guid: None,
            component: None,
            spiffe_id: uri.clone(),
            trust_domain,
            role: role.clone(),
            serial: info.serial.clone(),
            not_after: info.not_after,
        };
        match role {
            Role::Workload { org, space, app } => {
                // The CA writes the GUIDs twice; a certificate where they disagree is not one
                // of ours, whatever signed it.
                for (prefix, expected) in [("organization", &org), ("space", &space), ("app", &app)]
                {
                    match info.ou_value(prefix) {
                        Some(v) if v == expected.as_str() => {}
                        other => {
                            return Err(bad(format!(
                                "subject OU={prefix}:{} disagrees with the SPIFFE ID {uri}",
                                other.unwrap_or("(missing)")
                            )))
                        }
                    }
                }
                let cn = info
                    .common_name
                    .as_deref()
                    .ok_or_else(|| bad("an instance certificate needs a CN".into()))?;
                id.instance_guid = Some(
                    cn.parse()
                        .map_err(|e| bad(format!("CN {cn:?} is not an instance GUID: {e}")))?,
                );
                id.app_guid = Some(app);
                id.space_guid = Some(space);
                id.organization_guid = Some(org);
            }
            Role::Component(name) => id.component = Some(name),
            Role::Cell(_) | Role::Operator(_) => {}
        }
        Ok(id)
    }

    /// `app instance`, `component`, `cell` or `operator`.
    pub fn kind(&self) -> &'static str {
        match self.role {
            Role::Workload { .. } => "app instance",
            Role::Component(_) => "component",
            Role::Cell(_) => "cell",
            Role::Operator(_) => "operator",
        }
    }

    /// One line for logs and messages: `instance 9a1c... of app 6f1e... (space ..., organization
    /// ...)`, `component gorouter`, or the SPIFFE ID.
    pub fn describe(&self) -> String {
        match (&self.role, &self.instance_guid) {
            (Role::Workload { org, space, app }, Some(instance)) => {
                format!("instance {instance} of app {app} (space {space}, organization {org})")
            }
            (Role::Component(name), _) => format!("component {name}"),
            _ => format!("{} {}", self.kind(), self.spiffe_id),
        }
    }
}
