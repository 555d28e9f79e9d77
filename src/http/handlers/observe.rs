//! What happens around every request: a request id, a tracing span, and the counts.
//!
//! The id is the caller's `x-request-id` when it sent a usable one (so a proxy's id carries
//! through), else a new random one; it is returned as `x-request-id` and carried by the
//! `request` span that every log line of the request is written in (blocking work included:
//! the pool runs jobs in the caller's span). The response is counted by status class; an
//! issuing request also by latency and, when refused, by outcome; a cell's request is
//! remembered for the console.

use std::time::{Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::{paths, S};
use crate::http::tls::{Caller, PeerIdentity};
use crate::ids::Role;

/// The header that carries the request id, both ways.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// The issuing endpoints: path, the kind of certificate it issues, and whether it is a batch
/// (answered 200 with one result per item, counted by the handler).
const ISSUING: [(&str, &str, bool); 7] = [
    (paths::INSTANCE_CERTIFICATES, "instance", false),
    (paths::INSTANCE_BATCH, "instance", true),
    (paths::COMPONENT_CERTIFICATES, "component", false),
    (paths::JOIN, "cell", false),
    (paths::CELL_CREDENTIALS, "cell", false),
    (paths::OPERATOR_CREDENTIALS, "operator", false),
    (paths::COMPONENT_CREDENTIALS, "component", false),
];

/// A caller's id if it is one we can log and echo safely (1 to 64 of `A-Za-z0-9._-`).
fn usable_id(h: &HeaderMap) -> Option<String> {
    let v = h.get(REQUEST_ID)?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then(|| v.to_string())
}

/// 16 hex digits from the CSPRNG; a counter stands in if the system has no randomness.
fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        b = FALLBACK.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    }
    hex::encode(b)
}

/// The middleware; see the module docs.
pub(super) async fn observe(State(st): State<S>, req: Request, next: Next) -> Response {
    let id = usable_id(req.headers()).unwrap_or_else(new_id);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let caller = req.extensions().get::<Caller>();
    let peer = caller.map(|c| c.addr.to_string()).unwrap_or_default();
    let cell = caller.and_then(|c| match &c.identity {
        PeerIdentity::Verified {
            role: Role::Cell(n),
            ..
        } => Some(n.to_string()),
        _ => None,
    });
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %path, peer = %peer);
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    let took = started.elapsed();
    let m = st.ca.metrics();
    m.response(status);
    if method == Method::POST {
        if let Some(&(endpoint, kind, batch)) = ISSUING.iter().find(|(p, _, _)| *p == path) {
            m.issuance_latency(endpoint, took);
            // A batch answered 200 counted its items itself; one refused whole counts once.
            let refused = if batch {
                status != 200
            } else {
                !(200..300).contains(&status)
            };
            if refused {
                m.issuance_refused(kind, status, 1);
            }
        }
    }
    if let Some(name) = cell {
        // The path is the caller's: bounded before it is kept.
        let shown: String = path.chars().take(200).collect();
        m.activity()
            .cell_request(&name, method.as_str(), &shown, status, SystemTime::now());
    }
    span.in_scope(|| tracing::debug!(status, took_ms = took.as_secs_f64() * 1000.0, "answered"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_request_id_is_kept_only_when_it_is_safe_to_log() {
        let mut h = HeaderMap::new();
        assert_eq!(usable_id(&h), None);
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123_x.y"));
        assert_eq!(usable_id(&h).as_deref(), Some("abc-123_x.y"));
        h.insert(REQUEST_ID, HeaderValue::from_static("a b"));
        assert_eq!(usable_id(&h), None);
        h.insert(REQUEST_ID, HeaderValue::from_str(&"a".repeat(65)).unwrap());
        assert_eq!(usable_id(&h), None);
        let id = new_id();
        assert_eq!(id.len(), 16);
        assert_ne!(id, new_id());
    }
}
