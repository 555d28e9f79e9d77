//! `POST /v1/cell-credentials` and `/v1/operator-credentials`: a cell or operator renews its
//! own credential.

use axum::extract::State;
use axum::response::Response;

use super::openapi::{BodyProblems, CallerProblems, ServerFailure};
use super::{blocking, created, paths, CellCaller, OperatorCaller, S};
use crate::api;
use crate::http::problem::{ApiError, ApiJson};
use crate::ids::Role;

/// Renews the caller's own credential. The role was checked by the extractor, before the
/// body was read, so a caller with the wrong role gets its 403 whatever the body says.
async fn own_credential(st: S, role: Role, req: api::CsrRequest) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let issued = blocking(&st, move || ca.renew_own_credential(&role, &req)).await?;
    Ok(created(&issued))
}

#[utoipa::path(
    post,
    path = paths::CELL_CREDENTIALS,
    tag = "cells and operators",
    summary = "Renew the caller's own cell credential",
    security(("cell_certificate" = [])),
    extensions(("x-lanyard-role" = json!("cell"))),
    request_body(content = api::CsrRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Issued",
            body = api::IssuedCertificate, content_type = "application/json"),
        (status = 422, description = "A well-formed but invalid value: CSR or its signature, key type; `detail` names the field",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No active authority generation, its intermediate is about to expire, or the database is unreachable; retry after `Retry-After` seconds",
            body = api::Problem, content_type = "application/problem+json"),
        BodyProblems,
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn cell_credential(
    State(st): State<S>,
    CellCaller(role): CellCaller,
    ApiJson(req): ApiJson<api::CsrRequest>,
) -> Result<Response, ApiError> {
    own_credential(st, role, req).await
}

#[utoipa::path(
    post,
    path = paths::OPERATOR_CREDENTIALS,
    tag = "cells and operators",
    summary = "Renew the caller's own operator credential",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    request_body(content = api::CsrRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Issued",
            body = api::IssuedCertificate, content_type = "application/json"),
        (status = 422, description = "A well-formed but invalid value: CSR or its signature, key type; `detail` names the field",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No active authority generation, its intermediate is about to expire, or the database is unreachable; retry after `Retry-After` seconds",
            body = api::Problem, content_type = "application/problem+json"),
        BodyProblems,
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn operator_credential(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    ApiJson(req): ApiJson<api::CsrRequest>,
) -> Result<Response, ApiError> {
    own_credential(st, role, req).await
}
