//! `lanyard audit tail` and `lanyard audit verify`: reading the CA's audit log over the API.

use std::time::Duration;

use super::args::AuditCommand;
use super::output::{outln, print_json};
use super::Failure;
use crate::api::{AuditEntry, AuditResponse};
use crate::audit::Verifier;
use crate::ca::MAX_AUDIT_PAGE;
use crate::client::ApiClient;

/// How often `tail --follow` asks for new entries.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Runs `lanyard audit ...`.
pub(super) async fn audit(client: &ApiClient, cmd: &AuditCommand) -> Result<(), Failure> {
    match cmd {
        AuditCommand::Tail {
            lines,
            json,
            follow,
        } => tail(client, *lines, *json, *follow).await,
        AuditCommand::Verify => verify(client).await,
    }
}

async fn page(client: &ApiClient, after: u64, limit: usize) -> Result<AuditResponse, Failure> {
    Ok(client
        .get(&format!("/v1/audit?after={after}&limit={limit}"))
        .await?)
}

async fn tail(client: &ApiClient, lines: u64, json: bool, follow: bool) -> Result<(), Failure> {
    let last = page(client, 0, 1).await?.last;
    let mut after = last.saturating_sub(lines);
    loop {
        let p = page(client, after, MAX_AUDIT_PAGE).await?;
        for e in &p.entries {
            if json {
                outln!(
                    "{}",
                    serde_json::to_string(e).map_err(|e| Failure::runtime(e.to_string()))?
                );
            } else {
                outln!("{}", readable(e));
            }
        }
        let more = p.entries.len() == MAX_AUDIT_PAGE;
        after = p.next;
        if more {
            continue;
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

/// One line for people: seq, time, actor, action, subject, then the details as `k=v`.
fn readable(e: &AuditEntry) -> String {
    let mut line = format!(
        "{:>6}  {}  {}  {}  {}",
        e.seq, e.time, e.actor, e.action, e.subject
    );
    if let Some(map) = e.details.as_object() {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for k in keys {
            let v = &map[k];
            let text = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            line.push_str(&format!("  {k}={text}"));
        }
    }
    line
}

async fn verify(client: &ApiClient) -> Result<(), Failure> {
    let mut v = Verifier::new();
    let mut after = 0;
    loop {
        let p = page(client, after, MAX_AUDIT_PAGE).await?;
        if p.entries.is_empty() {
            break;
        }
        for e in &p.entries {
            if let Err(b) = v.check(e) {
                return Err(Failure::runtime(format!(
                    "audit log does NOT verify: {b} ({} entries before it verify)",
                    v.verified()
                )));
            }
        }
        if p.next <= after {
            // A log whose positions do not move forward cannot be paged; it is damaged.
            return Err(Failure::runtime(format!(
                "audit log does NOT verify: the chain breaks at seq {}: the log does not advance past position {after}",
                v.verified() + 1
            )));
        }
        after = p.next;
    }
    let summary = serde_json::json!({
        "verified": true,
        "entries": v.verified(),
        "head_hash": v.head_hash(),
    });
    eprintln!(
        "lanyard: audit log verifies: {} entries, head hash {}",
        v.verified(),
        v.head_hash()
    );
    print_json(&summary)
}
