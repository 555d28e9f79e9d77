//! The audit log's hash chain: entries, their canonical JSON and SHA-256, appending events
//! after a chain head, and checking a chain in order.
//!
//! Pure (no I/O, no clock): the store appends with it inside the write of the change an
//! entry records, and `lanyard audit verify` checks what the API hands out with the same
//! code. An entry's `hash` is the lowercase hex SHA-256 of the entry's canonical JSON
//! without `hash` (object keys sorted by their UTF-8 bytes, no whitespace, serde_json's
//! escaping and number forms); `prev_hash` is the previous entry's `hash`, [`GENESIS_HASH`]
//! for the first (`seq` 1). Editing, deleting or reordering an entry breaks the chain at
//! that entry; rewriting every entry after it does not (see SECURITY.md).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `prev_hash` of the first entry: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry of the audit log, as stored and as the API answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log: 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// When it was appended, RFC 3339.
    #[schema(format = DateTime)]
    pub time: String,
    /// Who made the change: a caller's SPIFFE ID, `schedule`, `lanyard init`, a replica
    /// name, ...
    pub actor: String,
    /// What happened, `noun.verb` (`certificate.issued`, `authority.activated`, ...).
    pub action: String,
    /// What it happened to (`certificate/<serial>`, `authority/<id>`, `instance/<guid>`, ...).
    pub subject: String,
    /// Facts of the change (never a secret, key or token).
    #[schema(value_type = Object)]
    pub details: Value,
    /// The previous entry's hash ([`GENESIS_HASH`] for the first).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub prev_hash: String,
    /// SHA-256 of this entry's canonical JSON without `hash`, lowercase hex.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub hash: String,
}

/// A change as it describes itself; the chain gives it its `seq`, `time` and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// See [`AuditEntry::actor`].
    pub actor: String,
    /// See [`AuditEntry::action`].
    pub action: String,
    /// See [`AuditEntry::subject`].
    pub subject: String,
    /// See [`AuditEntry::details`].
    pub details: Value,
}

impl AuditEvent {
    /// An event.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
        details: Value,
    ) -> Self {
        AuditEvent {
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            details,
        }
    }
}

/// The last entry of a chain: what the next append links to. `seq` 0 and [`GENESIS_HASH`]
/// for an empty log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// The last entry's seq.
    pub seq: u64,
    /// The last entry's hash.
    pub hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS_HASH.into(),
        }
    }
}

/// Canonical JSON: object keys sorted, no whitespace.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(item) = m.get(k) {
                    write_canonical(item, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        // Scalars print the same whatever the map order: serde_json's own compact form.
        other => out.push_str(&other.to_string()),
    }
}

/// The hash an entry must carry: SHA-256 over its canonical JSON without `hash`.
pub fn entry_hash(e: &AuditEntry) -> String {
    let v = serde_json::json!({
        "seq": e.seq,
        "time": e.time,
        "actor": e.actor,
        "action": e.action,
        "subject": e.subject,
        "details": e.details,
        "prev_hash": e.prev_hash,
    });
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical_json(&v).as_bytes());
    hex::encode(digest.as_ref())
}

/// Chains `events` after `head` at `time` (RFC 3339) and moves `head` to the last of them.
pub fn append(head: &mut ChainHead, events: &[AuditEvent], time: &str) -> Vec<AuditEntry> {
    events
        .iter()
        .map(|ev| {
            let mut e = AuditEntry {
                seq: head.seq + 1,
                time: time.to_string(),
                actor: ev.actor.clone(),
                action: ev.action.clone(),
                subject: ev.subject.clone(),
                details: ev.details.clone(),
                prev_hash: head.hash.clone(),
                hash: String::new(),
            };
            e.hash = entry_hash(&e);
            head.seq = e.seq;
            head.hash = e.hash.clone();
            e
        })
        .collect()
}

/// Where and why a chain stops verifying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the audit chain breaks at seq {seq}: {reason}")]
pub struct ChainBreak {
    /// The first seq that does not verify (the position where the entry was expected).
    pub seq: u64,
    /// What is wrong there.
    pub reason: String,
}

/// Checks a chain entry by entry, from the first, in order.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    head: ChainHead,
}

impl Verifier {
    /// A verifier expecting seq 1 first.
    pub fn new() -> Self {
        Verifier::default()
    }

    /// How many entries verified so far (the last good seq).
    pub fn verified(&self) -> u64 {
        self.head.seq
    }

    /// The last verified entry's hash ([`GENESIS_HASH`] before the first).
    pub fn head_hash(&self) -> &str {
        &self.head.hash
    }

    /// Checks the next entry: its seq follows, it links to the previous entry's hash, and
    /// its own hash matches its content.
    pub fn check(&mut self, e: &AuditEntry) -> Result<(), ChainBreak> {
        let expected = self.head.seq + 1;
        let broken = |reason: String| ChainBreak {
            seq: expected,
            reason,
        };
        if e.seq != expected {
            return Err(broken(if e.seq > expected {
                format!(
                    "found seq {} instead: an entry was deleted, or entries were reordered",
                    e.seq
                )
            } else {
                format!("found seq {} instead: entries were reordered", e.seq)
            }));
        }
        if e.prev_hash != self.head.hash {
            return Err(broken(
                "its prev_hash is not the previous entry's hash (an entry before it was replaced, or it was moved)".into(),
            ));
        }
        if e.hash != entry_hash(e) {
            return Err(broken(
                "its hash does not match its content (it was edited)".into(),
            ));
        }
        self.head = ChainHead {
            seq: e.seq,
            hash: e.hash.clone(),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: usize) -> Vec<AuditEntry> {
        let mut head = ChainHead::default();
        let events: Vec<AuditEvent> = (0..n)
            .map(|i| {
                AuditEvent::new(
                    "spiffe://lanyard.internal/lanyard/operator/admin",
                    "certificate.revoked",
                    format!("certificate/{i:032x}"),
                    json!({"reason": "test", "n": i}),
                )
            })
            .collect();
        append(&mut head, &events, "2026-12-04T18:00:00Z")
    }

    fn verify(entries: &[AuditEntry]) -> Result<u64, ChainBreak> {
        let mut v = Verifier::new();
        for e in entries {
            v.check(e)?;
        }
        Ok(v.verified())
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth_and_has_no_whitespace() {
        let v = json!({"b": 1, "a": {"z": [true, null, "x y"], "c": "é\"\n"}, "A": -2.5});
        assert_eq!(
            canonical_json(&v),
            r#"{"A":-2.5,"a":{"c":"é\"\n","z":[true,null,"x y"]},"b":1}"#
        );
    }

    #[test]
    fn the_hash_of_a_fixed_entry_is_the_known_vector() {
        let e = AuditEntry {
            seq: 1,
            time: "2026-12-04T18:00:00Z".into(),
            actor: "lanyard server".into(),
            action: "server.started".into(),
            subject: "replica/ca-1".into(),
            details: json!({"version": "0.1.0"}),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        let canonical = r#"{"action":"server.started","actor":"lanyard server","details":{"version":"0.1.0"},"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","seq":1,"subject":"replica/ca-1","time":"2026-12-04T18:00:00Z"}"#;
        let expected =
            hex::encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref());
        assert_eq!(entry_hash(&e), expected);
        // Pinned, so a change of the canonical form cannot go unnoticed.
        assert_eq!(
            entry_hash(&e),
            "8119533f714694b2b37a9b2bf18046cde4b453013e129bad5efbfbe3f19ad86b"
        );
    }

    #[test]
    fn an_appended_chain_links_and_verifies() {
        let entries = chain(5);
        assert_eq!(entries[0].prev_hash, GENESIS_HASH);
        assert_eq!(entries[4].seq, 5);
        assert_eq!(entries[3].prev_hash, entries[2].hash);
        assert_eq!(verify(&entries), Ok(5));
        let mut head = ChainHead::default();
        let first = append(&mut head, &[], "t");
        assert!(first.is_empty() && head == ChainHead::default());
    }

    #[test]
    fn an_edited_entry_is_named_by_its_seq() {
        let mut entries = chain(5);
        entries[2].details = json!({"reason": "forged", "n": 2});
        assert_eq!(verify(&entries).unwrap_err().seq, 3);
    }

    #[test]
    fn a_deleted_entry_is_named_by_its_seq() {
        let mut entries = chain(5);
        entries.remove(1);
        let e = verify(&entries).unwrap_err();
        assert_eq!(e.seq, 2, "{e}");
        assert!(e.reason.contains("deleted"), "{e}");
    }

    #[test]
    fn reordered_entries_are_named_by_the_first_seq_out_of_place() {
        let mut entries = chain(5);
        entries.swap(3, 4);
        assert_eq!(verify(&entries).unwrap_err().seq, 4);
    }

    #[test]
    fn a_rehashed_edit_is_still_caught_by_the_next_link() {
        let mut entries = chain(5);
        entries[1].subject = "certificate/forged".into();
        entries[1].hash = entry_hash(&entries[1]);
        let e = verify(&entries).unwrap_err();
        assert_eq!(e.seq, 3, "{e}");
    }
}
