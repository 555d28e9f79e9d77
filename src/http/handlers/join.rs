//! `POST /v1/join-tokens` (operators) and `POST /v1/join` (a cell with a token), with the
//! per-address limit on failed joins.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{blocking, created, AppState, OperatorCaller, S};
use crate::api;
use crate::ca::CaError;
use crate::http::problem::{parse_json, read_body, ApiError, ApiJson};
use crate::http::tls::Caller;

pub(super) async fn join_token(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    ApiJson(req): ApiJson<api::JoinTokenRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let t = blocking(move || ca.create_join_token(&role, &req)).await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

/// Failed join attempts one address may make per minute before getting 429.
const JOIN_FAILURES_PER_MINUTE: u32 = 20;

fn join_allowed(st: &AppState, ip: IpAddr) -> bool {
    let mut m = st.join_failures.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    m.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
    m.get(&ip)
        .is_none_or(|(_, n)| *n < JOIN_FAILURES_PER_MINUTE)
}

fn join_failed(st: &AppState, ip: IpAddr) {
    st.ca.metrics().join_failed();
    // (The count lives for a minute from the first failure.)
    let mut m = st.join_failures.lock().unwrap_or_else(|p| p.into_inner());
    let e = m.entry(ip).or_insert((Instant::now(), 0));
    e.1 += 1;
}

pub(super) async fn join(
    State(st): State<S>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let ip = caller
        .map(|c| c.addr.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    // Authentication comes first: a bad or missing token is a 401 whatever the body says.
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let token_ok = match &token {
        Some(t) => {
            let (ca, t) = (st.ca.clone(), t.clone());
            blocking(move || ca.check_join_token(&t)).await
        }
        None => Err(ApiError(CaError::Unauthenticated(
            "a join token is required: `Authorization: Bearer <token>`".into(),
        ))),
    };
    if let Err(e) = token_ok {
        // Only failures count, so a valid token is never slowed down by someone's guessing.
        if !join_allowed(&st, ip) {
            return Err(CaError::RateLimited(
                "too many failed join attempts from this address; wait a minute".into(),
            )
            .into());
        }
        join_failed(&st, ip);
        return Err(e);
    }
    let token = token.unwrap_or_default();
    let bytes = read_body(request).await?;
    let req: api::CsrRequest = parse_json(&bytes)?;
    let ca = st.ca.clone();
    match blocking(move || ca.join(&token, &req)).await {
        Ok(i) => Ok(created(&i)),
        Err(e) => {
            if matches!(e.0, CaError::Unauthenticated(_)) {
                join_failed(&st, ip);
            }
            Err(e)
        }
    }
}
