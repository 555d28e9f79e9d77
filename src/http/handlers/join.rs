//! `POST /v1/join-tokens` (operators) and `POST /v1/join` (a cell with a token), with the
//! per-address limit on failed joins.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::bearer_token;
use super::openapi::{BodyProblems, CallerProblems, ServerFailure};
use super::{blocking, created, paths, AppState, OperatorCaller, S};
use crate::api;
use crate::ca::CaError;
use crate::http::problem::{parse_json, read_body, ApiError, ApiJson};
use crate::http::tls::Caller;

#[utoipa::path(
    post,
    path = paths::JOIN_TOKENS,
    tag = "cells and operators",
    summary = "Create a one-time join token for a cell",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    request_body(content = api::JoinTokenRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; the token is shown once",
            body = api::JoinTokenResponse, content_type = "application/json"),
        (status = 422, description = "A well-formed but invalid value: role, name or TTL (1 to 86400); `detail` names the field",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds (here or on another replica)",
            body = api::Problem, content_type = "application/problem+json"),
        BodyProblems,
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn join_token(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    ApiJson(req): ApiJson<api::JoinTokenRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let t = blocking(&st, move || ca.create_join_token(&role, &req)).await?;
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

#[utoipa::path(
    post,
    path = paths::JOIN,
    tag = "cells and operators",
    summary = "Spend a join token for a cell credential",
    security(("join_token" = [])),
    extensions(("x-lanyard-role" = json!("join-token"))),
    request_body(content = api::CsrRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The cell credential",
            body = api::IssuedCertificate, content_type = "application/json"),
        (status = 401, description = "No join token, or one that is unknown, used or expired",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A well-formed but invalid value: CSR or its signature, key type; `detail` names the field",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed join attempts from this address; `Retry-After` says when to try again",
            body = api::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "No active authority generation, its intermediate is about to expire, or the database is unreachable; retry after `Retry-After` seconds",
            body = api::Problem, content_type = "application/problem+json"),
        BodyProblems,
        ServerFailure,
    ),
)]
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
    let token = bearer_token(&headers);
    let token_ok = match &token {
        Some(t) => {
            let (ca, t) = (st.ca.clone(), t.clone());
            blocking(&st, move || ca.check_join_token(&t)).await
        }
        None => Err(ApiError(CaError::Unauthenticated(
            "a join token is required: `Authorization: Bearer <token>`".into(),
        ))),
    };
    if let Err(e) = token_ok {
        // A busy or unavailable server is no guess at a token.
        if !matches!(e.0, CaError::Unauthenticated(_)) {
            return Err(e);
        }
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
    match blocking(&st, move || ca.join(&token, &req)).await {
        Ok(i) => Ok(created(&i)),
        Err(e) => {
            if matches!(e.0, CaError::Unauthenticated(_)) {
                join_failed(&st, ip);
            }
            Err(e)
        }
    }
}

impl AppState {
    /// Removes expired join tokens on the blocking pool (the maintenance loop's turn);
    /// failures are logged and the next round retries.
    pub(crate) async fn purge_expired_join_tokens(&self) {
        let ca = self.ca.clone();
        match self.pool.run(move || ca.purge_expired_join_tokens()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(purged = n, "expired join tokens removed"),
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "purging expired join tokens failed; will retry")
            }
        }
    }
}
