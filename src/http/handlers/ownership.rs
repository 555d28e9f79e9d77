//! `DELETE /v1/instances/{instance_guid}` (the owning cell, or an operator) and
//! `POST /v1/instances/{instance_guid}/release` (operators): ending an instance's binding.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::auth::Authenticated;
use super::openapi::{CallerProblems, ServerFailure};
use super::{blocking, paths, OperatorCaller, S};
use crate::api;
use crate::http::problem::{ApiError, ApiPath};
use crate::http::views::binding_view;

#[utoipa::path(
    delete,
    path = paths::INSTANCE,
    tag = "instances",
    summary = "Release the caller's binding to an instance (the owning cell), or anyone's (an operator)",
    description = "Idempotent: an instance that is not bound (never bound, already released, \
        or its last certificate expired) is answered 204 as well, so a retry is harmless. \
        Releasing does not revoke the instance's certificates.",
    security(("cell_certificate" = []), ("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("cell-or-operator"))),
    params(("instance_guid" = String, Path, pattern = "^[0-9a-f]([0-9a-f-]{0,61}[0-9a-f])?$", description = "The instance GUID")),
    responses(
        (status = 204, description = "Released, or not bound"),
        (status = 409, description = "The caller is a cell and the instance is bound elsewhere (the other owner is never named)",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`instance_guid` is not a GUID",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds",
            body = api::Problem, content_type = "application/problem+json"),
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn release(
    State(st): State<S>,
    Authenticated(role): Authenticated,
    ApiPath(guid): ApiPath,
) -> Result<StatusCode, ApiError> {
    let ca = st.ca.clone();
    blocking(&st, move || ca.release_instance(&role, &guid)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = paths::INSTANCE_RELEASE,
    tag = "instances",
    summary = "Release any instance's binding (operators)",
    description = "Releasing does not revoke the instance's certificates.",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    params(("instance_guid" = String, Path, pattern = "^[0-9a-f]([0-9a-f-]{0,61}[0-9a-f])?$", description = "The instance GUID")),
    responses(
        (status = 200, description = "The binding that was released",
            body = api::InstanceBindingView, content_type = "application/json"),
        (status = 404, description = "The instance is not bound (never bound, already released, or its last certificate expired)",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`instance_guid` is not a GUID",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds",
            body = api::Problem, content_type = "application/problem+json"),
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn release_by_operator(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    ApiPath(guid): ApiPath,
) -> Result<Json<api::InstanceBindingView>, ApiError> {
    let ca = st.ca.clone();
    let b = blocking(&st, move || ca.release_instance_by_operator(&role, &guid)).await?;
    Ok(Json(binding_view(&b)))
}
