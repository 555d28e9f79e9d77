//! Identifiers parsed at the edge: GUIDs, names, serials, authority ids, roles.
//!
//! Every value that arrives from the network or the command line is turned into one of these
//! newtypes before it reaches the CA, so the inner layers never re-check a string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an identifier did not parse; the message names the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub String);

/// A Cloud Foundry style GUID: one DNS label of lowercase hex digits and `-`, 1 to 63
/// characters, starting and ending with a hex digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Guid(String);

impl Guid {
    /// The GUID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Guid {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 63 {
            return Err(IdError(format!(
                "must be 1 to 63 characters, got {}",
                s.len()
            )));
        }
        let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if !s.chars().all(|c| is_hex(c) || c == '-') {
            return Err(IdError(
                "may contain only lowercase hex digits and '-'".to_string(),
            ));
        }
        let first = s.chars().next().unwrap_or('-');
        let last = s.chars().last().unwrap_or('-');
        if !is_hex(first) || !is_hex(last) {
            return Err(IdError("must start and end with a hex digit".to_string()));
        }
        Ok(Guid(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a cell, an operator, a system component or a route: a DNS name of lowercase
/// letters, digits and `-`, in dot-separated labels (`gorouter.service.cf.internal`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 253 {
            return Err(IdError(format!(
                "must be 1 to 253 characters, got {}",
                s.len()
            )));
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(IdError(
                    "each dot-separated label must be 1 to 63 characters".to_string(),
                ));
            }
            let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
            if !label.chars().all(|c| ok(c) || c == '-') {
                return Err(IdError(
                    "may contain only lowercase letters, digits, '-' and '.'".to_string(),
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(IdError(
                    "labels must start and end with a letter or digit".to_string(),
                ));
            }
        }
        Ok(Name(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A certificate serial number: 16 bytes from the CSPRNG, positive, shown as lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial([u8; 16]);

impl Serial {
    /// Draws a fresh serial from the operating system's CSPRNG.
    ///
    /// The top bit is cleared so the INTEGER is positive, and the next bit is set so the DER
    /// encoding is always exactly 16 bytes (no leading zero byte to strip).
    pub fn random() -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 16];
        ring::rand::SystemRandom::new().fill(&mut b)?;
        b[0] = (b[0] & 0x7f) | 0x40;
        Ok(Serial(b))
    }

    /// The raw big-endian bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Builds a serial from bytes read out of a certificate. Serials of other lengths are not
    /// ours.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(b).ok().map(Serial)
    }
}

impl FromStr for Serial {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix("0x").unwrap_or(s).replace(':', "");
        let bytes = hex::decode(s.to_ascii_lowercase())
            .map_err(|_| IdError("must be hexadecimal".to_string()))?;
        Serial::from_bytes(&bytes).ok_or_else(|| IdError("must be 16 bytes (32 hex digits)".into()))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Serial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The number of an authority generation: 1 for the first root, then 2, 3, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthorityId(pub u32);

impl FromStr for AuthorityId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .map(AuthorityId)
            .ok_or_else(|| IdError("must be a positive generation number".to_string()))
    }
}

impl fmt::Display for AuthorityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for AuthorityId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for AuthorityId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a client certificate entitles its holder to, from its SPIFFE URI SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// `spiffe://<td>/lanyard/cell/<name>`: a cell agent.
    Cell(Name),
    /// `spiffe://<td>/lanyard/operator/<name>`: an operator.
    Operator(Name),
    /// `spiffe://<td>/component/<name>`: a system component such as the router.
    Component(Name),
    /// `spiffe://<td>/org/<org>/space/<space>/app/<app>`: an app instance.
    Workload {
        /// Organization GUID.
        org: Guid,
        /// Space GUID.
        space: Guid,
        /// App GUID.
        app: Guid,
    },
}

impl Role {
    /// The SPIFFE ID that names this role in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        match self {
            Role::Cell(n) => format!("spiffe://{trust_domain}/lanyard/cell/{n}"),
            Role::Operator(n) => format!("spiffe://{trust_domain}/lanyard/operator/{n}"),
            Role::Component(n) => format!("spiffe://{trust_domain}/component/{n}"),
            Role::Workload { org, space, app } => {
                format!("spiffe://{trust_domain}/org/{org}/space/{space}/app/{app}")
            }
        }
    }

    /// Parses a SPIFFE ID, accepting it only in `trust_domain`.
    pub fn from_spiffe_id(uri: &str, trust_domain: &str) -> Option<Role> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        if td != trust_domain {
            return None;
        }
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["lanyard", "cell", n] => n.parse().ok().map(Role::Cell),
            ["lanyard", "operator", n] => n.parse().ok().map(Role::Operator),
            ["component", n] => n.parse().ok().map(Role::Component),
            ["org", o, "space", s, "app", a] => Some(Role::Workload {
                org: o.parse().ok()?,
                space: s.parse().ok()?,
                app: a.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// A short word for messages: `cell`, `operator`, `component` or `workload`.
    pub fn kind(&self) -> &'static str {
        match self {
            Role::Cell(_) => "cell",
            Role::Operator(_) => "operator",
            Role::Component(_) => "component",
            Role::Workload { .. } => "workload",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guid_of_lowercase_hex_and_dashes_parses() {
        assert!("9a1c2f3e-5b6d-4e7f-8a9b-0c1d".parse::<Guid>().is_ok());
        assert!("6f1e0c9a-2b3d-4c5e-8f7a-1b2c3d4e5f60"
            .parse::<Guid>()
            .is_ok());
        assert!("a".parse::<Guid>().is_ok());
        assert!("a".repeat(63).parse::<Guid>().is_ok());
    }

    #[test]
    fn a_guid_that_breaks_a_rule_is_refused_with_the_rule() {
        assert!("".parse::<Guid>().unwrap_err().0.contains("1 to 63"));
        assert!("a".repeat(64).parse::<Guid>().is_err());
        assert!("ABCDEF"
            .parse::<Guid>()
            .unwrap_err()
            .0
            .contains("lowercase"));
        assert!("-abc"
            .parse::<Guid>()
            .unwrap_err()
            .0
            .contains("start and end"));
        assert!("abc-".parse::<Guid>().is_err());
        assert!("xyz".parse::<Guid>().is_err());
        assert!("ab.cd".parse::<Guid>().is_err());
        assert!("ab/cd".parse::<Guid>().is_err());
    }

    #[test]
    fn serials_are_positive_sixteen_bytes_and_round_trip_as_hex() {
        let s = Serial::random().unwrap();
        assert!(s.as_bytes()[0] & 0x80 == 0);
        assert!(s.as_bytes()[0] != 0);
        let text = s.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<Serial>().unwrap(), s);
        assert!("zz".parse::<Serial>().is_err());
        assert!("abcd".parse::<Serial>().is_err());
    }

    #[test]
    fn random_serials_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(Serial::random().unwrap()));
        }
    }

    #[test]
    fn roles_round_trip_through_spiffe_ids_in_their_trust_domain_only() {
        let td = "lanyard.internal";
        let roles = [
            Role::Cell("cell-1".parse().unwrap()),
            Role::Operator("admin".parse().unwrap()),
            Role::Component("gorouter".parse().unwrap()),
            Role::Workload {
                org: "a1".parse().unwrap(),
                space: "b2".parse().unwrap(),
                app: "c3".parse().unwrap(),
            },
        ];
        for r in roles {
            let id = r.spiffe_id(td);
            assert_eq!(Role::from_spiffe_id(&id, td), Some(r.clone()));
            assert_eq!(Role::from_spiffe_id(&id, "other.domain"), None);
        }
        assert_eq!(
            Role::from_spiffe_id("spiffe://lanyard.internal/lanyard/root/x", td),
            None
        );
    }

    #[test]
    fn names_follow_dns_label_rules() {
        assert!("gorouter".parse::<Name>().is_ok());
        assert!("gorouter.service.cf.internal".parse::<Name>().is_ok());
        assert!("Cell".parse::<Name>().is_err());
        assert!("a..b".parse::<Name>().is_err());
        assert!("-a".parse::<Name>().is_err());
        assert!("a/b".parse::<Name>().is_err());
    }
}
