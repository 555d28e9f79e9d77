//! `GET /v1/audit` (operators): the hash-chained audit log, page by page.

use axum::extract::{RawQuery, State};
use axum::Json;

use super::openapi::{CallerProblems, ServerFailure};
use super::{blocking, paths, query_map, OperatorCaller, S};
use crate::api;
use crate::ca::{CaError, MAX_AUDIT_PAGE};
use crate::http::problem::ApiError;

#[utoipa::path(
    get,
    path = paths::AUDIT,
    tag = "audit",
    summary = "Audit log entries in order, after a seq",
    description = "Each entry is hash-chained to the one before (see `lanyard audit verify`). \
        Page through the whole log by passing each answer's `next` as the next `after` until \
        no entries come back.",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    params(
        ("after" = Option<u64>, Query, nullable = false, minimum = 0, description = "Only entries with a greater seq (default 0: from the first)"),
        ("limit" = Option<u32>, Query, nullable = false, minimum = 1, maximum = 1000, description = "At most this many entries (default 100)"),
    ),
    responses(
        (status = 200, description = "The entries",
            body = api::AuditResponse, content_type = "application/json"),
        (status = 400, description = "An unknown query parameter, or one given twice",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`after` or `limit` is not a number in range; `detail` names it",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds",
            body = api::Problem, content_type = "application/problem+json"),
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn audit(
    State(st): State<S>,
    _op: OperatorCaller,
    RawQuery(q): RawQuery,
) -> Result<Json<api::AuditResponse>, ApiError> {
    let m = query_map(q.as_deref())?;
    for k in m.keys() {
        if !["after", "limit"].contains(&k.as_str()) {
            return Err(CaError::BadRequest(format!("unknown query parameter `{k}`")).into());
        }
    }
    let after = match m.get("after") {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= i64::MAX as u64)
            .ok_or_else(|| {
                CaError::invalid(
                    "after",
                    format!("`{v}` is not a seq (a whole number from 0)"),
                )
            })?,
    };
    let limit = match m.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_AUDIT_PAGE).contains(n))
            .ok_or_else(|| {
                CaError::invalid(
                    "limit",
                    format!("`{v}` is not a number from 1 to {MAX_AUDIT_PAGE}"),
                )
            })?,
    };
    let ca = st.ca.clone();
    let page = blocking(&st, move || ca.audit_entries(after, limit)).await?;
    Ok(Json(api::AuditResponse {
        entries: page.entries,
        next: page.next,
        last: page.last,
    }))
}
