//! Which peers an app serves.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::ids::{Guid, IdError, Name};

use super::identity::PeerIdentity;

/// An allow-list of peers: app instances by app, space or organization GUID, and system
/// components by name. A peer is served when any entry matches it; the empty policy serves
/// no one (deny by default, so a typo in a flag does not open the app).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    apps: BTreeSet<Guid>,
    spaces: BTreeSet<Guid>,
    organizations: BTreeSet<Guid>,
    components: BTreeSet<Name>,
}

/// One entry of a [`Policy`], parsed from `app:<guid>`, `space:<guid>`,
/// `organization:<guid>` (or `org:<guid>`) or `component:<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyRule {
    /// Every instance of this app.
    App(Guid),
    /// Every instance of every app in this space.
    Space(Guid),
    /// Every instance of every app in this organization.
    Organization(Guid),
    /// This system component.
    Component(Name),
}

impl FromStr for PolicyRule {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, value) = s.split_once(':').ok_or_else(|| {
            IdError(format!(
                "{s:?}: expected app:<guid>, space:<guid>, organization:<guid> or component:<name>"
            ))
        })?;
        let guid = |v: &str| {
            v.parse::<Guid>()
                .map_err(|e| IdError(format!("{s:?}: the GUID {e}")))
        };
        match kind {
            "app" => guid(value).map(PolicyRule::App),
            "space" => guid(value).map(PolicyRule::Space),
            "organization" | "org" => guid(value).map(PolicyRule::Organization),
            "component" => value
                .parse::<Name>()
                .map(PolicyRule::Component)
                .map_err(|e| IdError(format!("{s:?}: the name {e}"))),
            other => Err(IdError(format!(
                "{s:?}: unknown kind {other:?}; expected app, space, organization or component"
            ))),
        }
    }
}

impl Policy {
    /// A policy that allows no one yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also allows every instance of `app`.
    pub fn allow_app(mut self, app: Guid) -> Self {
        self.apps.insert(app);
        self
    }

    /// Also allows every instance of every app in `space`.
    pub fn allow_space(mut self, space: Guid) -> Self {
        self.spaces.insert(space);
        self
    }

    /// Also allows every instance of every app in `organization`.
    pub fn allow_organization(mut self, organization: Guid) -> Self {
        self.organizations.insert(organization);
        self
    }

    /// Also allows the system component `name` (such as `gorouter`).
    pub fn allow_component(mut self, name: Name) -> Self {
        self.components.insert(name);
        self
    }

    /// Also allows what `rule` names.
    pub fn allow(self, rule: PolicyRule) -> Self {
        match rule {
            PolicyRule::App(g) => self.allow_app(g),
            PolicyRule::Space(g) => self.allow_space(g),
            PolicyRule::Organization(g) => self.allow_organization(g),
            PolicyRule::Component(n) => self.allow_component(n),
        }
    }

    /// True when the policy allows no one.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
            && self.spaces.is_empty()
            && self.organizations.is_empty()
            && self.components.is_empty()
    }

    /// Serves `peer`, or says why not.
    pub fn check(&self, peer: &PeerIdentity) -> Result<(), Refusal> {
        let allowed =
            |set: &BTreeSet<Guid>, g: &Option<Guid>| g.as_ref().is_some_and(|g| set.contains(g));
        let ok = if peer.instance_guid.is_some() {
            allowed(&self.apps, &peer.app_guid)
                || allowed(&self.spaces, &peer.space_guid)
                || allowed(&self.organizations, &peer.organization_guid)
        } else if let Some(name) = &peer.component {
            self.components.contains(name)
        } else {
            false
        };
        if ok {
            return Ok(());
        }
        let peer_text = match (&peer.app_guid, &peer.space_guid, &peer.organization_guid) {
            (Some(app), Some(space), Some(org)) if peer.instance_guid.is_some() => {
                format!("app {app} (space {space}, organization {org})")
            }
            _ => match &peer.component {
                Some(name) => format!("component {name}"),
                None => format!("{} {}", peer.kind(), peer.spiffe_id),
            },
        };
        Err(Refusal {
            peer: peer_text,
            allowed: self.clone(),
        })
    }
}

impl fmt::Display for Policy {
    /// `allowed apps: a, b; allowed components: gorouter`, naming only what is allowed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("this app allows no peers");
        }
        let mut first = true;
        let mut part = |f: &mut fmt::Formatter<'_>, what: &str, items: Vec<&str>| {
            if items.is_empty() {
                return Ok(());
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "allowed {what}: {}", items.join(", "))
        };
        part(f, "apps", self.apps.iter().map(Guid::as_str).collect())?;
        part(f, "spaces", self.spaces.iter().map(Guid::as_str).collect())?;
        part(
            f,
            "organizations",
            self.organizations.iter().map(Guid::as_str).collect(),
        )?;
        part(
            f,
            "components",
            self.components.iter().map(Name::as_str).collect(),
        )
    }
}

/// Why a [`Policy`] refused a peer: who it was and what is allowed, e.g.
/// `app 6f1e... (space ..., organization ...) is not allowed; allowed apps: 0a1b...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{peer} is not allowed; {allowed}")]
pub struct Refusal {
    /// The refused peer, in words.
    pub peer: String,
    /// The policy that refused it.
    pub allowed: Policy,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Role;

    fn instance(app: &str, space: &str, org: &str) -> PeerIdentity {
        let (app, space, org): (Guid, Guid, Guid) = (
            app.parse().unwrap(),
            space.parse().unwrap(),
            org.parse().unwrap(),
        );
        PeerIdentity {
            instance_guid: Some("1".parse().unwrap()),
            app_guid: Some(app.clone()),
            space_guid: Some(space.clone()),
            organization_guid: Some(org.clone()),
            component: None,
            spiffe_id: format!("spiffe://td/org/{org}/space/{space}/app/{app}"),
            trust_domain: "td".into(),
            role: Role::Workload { org, space, app },
            serial: "01".into(),
            not_after: std::time::SystemTime::now(),
        }
    }

    fn component(name: &str) -> PeerIdentity {
        let name: Name = name.parse().unwrap();
        PeerIdentity {
            instance_guid: None,
            app_guid: None,
            space_guid: None,
            organization_guid: None,
            component: Some(name.clone()),
            spiffe_id: format!("spiffe://td/component/{name}"),
            trust_domain: "td".into(),
            role: Role::Component(name),
            serial: "02".into(),
            not_after: std::time::SystemTime::now(),
        }
    }

    #[test]
    fn an_instance_is_allowed_by_its_app_space_or_organization() {
        let peer = instance("a1", "b2", "c3");
        assert!(Policy::new()
            .allow_app("a1".parse().unwrap())
            .check(&peer)
            .is_ok());
        assert!(Policy::new()
            .allow_space("b2".parse().unwrap())
            .check(&peer)
            .is_ok());
        assert!(Policy::new()
            .allow_organization("c3".parse().unwrap())
            .check(&peer)
            .is_ok());
        assert!(Policy::new()
            .allow_component("a1".parse().unwrap())
            .check(&peer)
            .is_err());
    }

    #[test]
    fn a_refusal_names_the_peer_and_what_is_allowed() {
        let p = Policy::new()
            .allow_app("a1".parse().unwrap())
            .allow_component("gorouter".parse().unwrap());
        let e = p
            .check(&instance("ff", "b2", "c3"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "app ff (space b2, organization c3) is not allowed; allowed apps: a1; allowed components: gorouter"
        );
        let e = Policy::new()
            .allow_app("a1".parse().unwrap())
            .check(&component("gorouter"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "component gorouter is not allowed; allowed apps: a1");
    }

    #[test]
    fn the_empty_policy_allows_no_one_and_says_so() {
        let e = Policy::new().check(&component("gorouter")).unwrap_err();
        assert!(e.to_string().ends_with("this app allows no peers"), "{e}");
    }

    #[test]
    fn rules_parse_from_kind_and_value() {
        assert_eq!(
            "app:a1".parse::<PolicyRule>().unwrap(),
            PolicyRule::App("a1".parse().unwrap())
        );
        assert_eq!(
            "org:c3".parse::<PolicyRule>().unwrap(),
            PolicyRule::Organization("c3".parse().unwrap())
        );
        assert!("component:gorouter".parse::<PolicyRule>().is_ok());
        assert!("app:NOT-HEX"
            .parse::<PolicyRule>()
            .unwrap_err()
            .0
            .contains("lowercase"));
        assert!("gorouter".parse::<PolicyRule>().is_err());
        assert!("user:x"
            .parse::<PolicyRule>()
            .unwrap_err()
            .0
            .contains("unknown kind"));
    }
}
