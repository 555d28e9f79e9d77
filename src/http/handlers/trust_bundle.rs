//! `GET /v1/trust-bundle`: the published roots as PEM or a SPIFFE bundle, with the bundle
//! sequence as ETag and an optional long poll (`?wait=`) for the next sequence.
//!
//! Anonymous callers hold at most `listen.max_anonymous_long_polls` polls at once; beyond
//! that their poll is answered at once (as if `wait` were 0), so held polls never take every
//! anonymous connection from joining cells. Callers with a verified client certificate
//! (agents) are not counted: their connections have their own budget.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::openapi::ServerFailure;
use super::{paths, query_map, S};
use crate::api;
use crate::ca::CaError;
use crate::http::problem::ApiError;
use crate::http::tls::{Caller, PeerIdentity};
use crate::http::views::spiffe_bundle;

/// Longest a bundle long poll is held.
pub(crate) const MAX_WAIT: u64 = 300;

#[utoipa::path(
    get,
    path = paths::TRUST_BUNDLE,
    tag = "trust",
    summary = "The trust bundle: PEM roots, or a SPIFFE bundle with `Accept: application/json`; a long poll with `If-None-Match` and `wait`",
    extensions(("x-lanyard-role" = json!("public"))),
    params(
        ("wait" = Option<api::WholeSeconds>, Query, nullable = false, description = "With `If-None-Match`: hold the request up to this many seconds (above 300 counts as 300) until the sequence passes the known one"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "The known sequence, quoted (`\"N\"`)"),
    ),
    responses(
        (status = 200, description = "The roots of every generation that is prepared, active or retiring (the active one first)",
            content(
                (String = "application/x-pem-file"),
                (api::SpiffeBundle = "application/json"),
            ),
            headers(
                ("ETag" = String, description = "The bundle sequence, quoted: `\"N\"`"),
                ("Cache-Control" = String, description = "`no-cache`"),
            )),
        (status = 304, description = "The sequence did not pass the one in `If-None-Match` (within `wait`)",
            headers(("ETag" = String, description = "The current sequence, quoted"))),
        (status = 400, description = "A query parameter given twice",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A well-formed but invalid value: `wait` is not a whole number of seconds; `detail` names the field",
            body = api::Problem, content_type = "application/problem+json"),
        ServerFailure,
    ),
)]
pub(super) async fn trust_bundle(
    State(st): State<S>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let authenticated = caller
        .as_ref()
        .is_some_and(|c| matches!(c.identity, PeerIdentity::Verified { .. }));
    let m = query_map(q.as_deref())?;
    let wait = match m.get("wait") {
        None => 0,
        // Any whole number counts, however large: above 300 it means 300.
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse::<u64>().unwrap_or(MAX_WAIT).min(MAX_WAIT)
        }
        Some(v) => {
            return Err(
                CaError::invalid("wait", format!("`{v}` is not a whole number of seconds")).into(),
            )
        }
    };
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .parse::<u64>()
                .ok()
        });
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    // The header values share the connection's read buffer: dropped before a poll is held,
    // so the buffer is reused for the connection's next read instead of a new one being
    // allocated beside it (8 KB per held poll).
    drop(headers);
    let mut rx = st.ca.subscribe_bundle();
    let mut bundle = rx.borrow_and_update().clone();
    if let Some(n) = known {
        if bundle.sequence <= n {
            // Held while the poll is held; an anonymous caller without one is answered now.
            let turn = if authenticated {
                None
            } else {
                st.anonymous_polls.clone().try_acquire_owned().ok()
            };
            if wait == 0 || (!authenticated && turn.is_none()) {
                return Ok(not_modified(bundle.sequence));
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
            let _watching = st.ca.metrics().bundle_watcher();
            let mut stopping = st.stopping.subscribe();
            loop {
                if *stopping.borrow_and_update() {
                    return Ok(not_modified(bundle.sequence));
                }
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, rx.changed()) => match r {
                        Ok(Ok(())) => {
                            bundle = rx.borrow_and_update().clone();
                            if bundle.sequence > n {
                                break;
                            }
                        }
                        _ => return Ok(not_modified(bundle.sequence)),
                    },
                    _ = stopping.changed() => return Ok(not_modified(bundle.sequence)),
                }
            }
        }
    }
    let refresh = (st.ca.config().rotation.propagation_delay.0.as_secs() / 3).clamp(1, 300);
    let mut resp = if json {
        Json(spiffe_bundle(&bundle, refresh)?).into_response()
    } else {
        let mut r = bundle.pem().into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-pem-file"),
        );
        r
    };
    set_etag(resp.headers_mut(), bundle.sequence);
    Ok(resp)
}

fn set_etag(h: &mut HeaderMap, seq: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{seq}\"")) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

fn not_modified(seq: u64) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    set_etag(r.headers_mut(), seq);
    r
}
