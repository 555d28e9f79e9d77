//! `POST /v1/component-certificates` (operators) and `POST /v1/component-credentials` (a
//! component renewing its own certificate).

use axum::extract::State;
use axum::response::Response;

use super::openapi::{BodyProblems, CallerProblems, ServerFailure};
use super::{blocking, created, paths, ComponentCaller, OperatorCaller, S};
use crate::api;
use crate::http::problem::{ApiError, ApiJson};

#[utoipa::path(
    post,
    path = paths::COMPONENT_CERTIFICATES,
    tag = "certificates",
    summary = "Issue a system component certificate",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    request_body(content = api::ComponentCertificateRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Issued",
            body = api::IssuedCertificate, content_type = "application/json"),
        (status = 422, description = "A well-formed but invalid value: name (invalid or reserved), CSR or its signature, key type, TTL; `detail` names the field",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No active authority generation, its intermediate is about to expire, or the database is unreachable; retry after `Retry-After` seconds",
            body = api::Problem, content_type = "application/problem+json"),
        BodyProblems,
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn component_certificate(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    ApiJson(req): ApiJson<api::ComponentCertificateRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let issued = blocking(&st, move || ca.issue_component(&role, &req)).await?;
    Ok(created(&issued))
}

#[utoipa::path(
    post,
    path = paths::COMPONENT_CREDENTIALS,
    tag = "certificates",
    summary = "Renew the calling component's own certificate",
    description = "The caller presents its valid component certificate \
        (`spiffe://<trust_domain>/component/<name>`) and receives a new one for the same name, \
        for the key in the CSR, under the active generation.",
    security(("component_certificate" = [])),
    extensions(("x-lanyard-role" = json!("component"))),
    request_body(content = api::ComponentCredentialRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Issued",
            body = api::IssuedCertificate, content_type = "application/json"),
        (status = 422, description = "A well-formed but invalid value: CSR or its signature, key type, TTL; `detail` names the field",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No active authority generation, its intermediate is about to expire, or the database is unreachable; retry after `Retry-After` seconds",
            body = api::Problem, content_type = "application/problem+json"),
        BodyProblems,
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn component_credential(
    State(st): State<S>,
    // The role is checked before the body is read: a caller that is not a component learns
    // nothing about the body this endpoint expects.
    ComponentCaller(role): ComponentCaller,
    ApiJson(req): ApiJson<api::ComponentCredentialRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let issued = blocking(&st, move || ca.renew_component(&role, &req)).await?;
    Ok(created(&issued))
}
