//! `GET /v1/authorities` and the operator's rotation steps: prepare, activate, retire.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::openapi::{BodyProblems, CallerProblems, ServerFailure};
use super::{blocking, paths, OperatorCaller, S};
use crate::api;
use crate::ca::CaError;
use crate::http::problem::{ApiError, ApiPath, OptionalJson};
use crate::http::views::{authorities_view, authority_view};
use crate::ids::AuthorityId;
use crate::ids::Role;

#[utoipa::path(
    get,
    path = paths::AUTHORITIES,
    tag = "authorities",
    summary = "List authority generations, retired ones included",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    responses(
        (status = 200, description = "Every generation, oldest first",
            body = api::AuthoritiesResponse, content_type = "application/json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds (here or on another replica)",
            body = api::Problem, content_type = "application/problem+json"),
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn authorities(
    State(st): State<S>,
    _op: OperatorCaller,
) -> Result<Json<api::AuthoritiesResponse>, ApiError> {
    let ca = st.ca.clone();
    let (gens, seq, lease) = blocking(&st, move || {
        let (gens, seq) = ca.generations()?;
        Ok((gens, seq, ca.schedule_lease()?))
    })
    .await?;
    let next = st.ca.next_automatic_step(&gens);
    Ok(Json(authorities_view(
        &gens,
        seq,
        lease.as_ref(),
        |g| st.ca.activatable_at(g),
        next.as_ref(),
    )))
}

#[utoipa::path(
    post,
    path = paths::AUTHORITY_PREPARE,
    tag = "authorities",
    summary = "Prepare a new generation (state `prepared`)",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    request_body(content = Option<api::PrepareRequest>, content_type = "application/json", description = "Empty, or `{}`"),
    responses(
        (status = 201, description = "Prepared",
            body = api::AuthorityView, content_type = "application/json"),
        (status = 409, description = "A generation is already prepared, or the rotation is in another step",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds (here or on another replica)",
            body = api::Problem, content_type = "application/problem+json"),
        BodyProblems,
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn prepare(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    OptionalJson(_body): OptionalJson<api::PrepareRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let (g, last_leaf) = blocking(&st, move || ca.prepare(&role)).await?;
    tracing::info!(authority = %g.id, "authority prepared by operator");
    Ok((
        StatusCode::CREATED,
        Json(authority_view(&g, last_leaf, st.ca.activatable_at(&g))),
    )
        .into_response())
}

/// A generation id from the path; one that cannot exist is a 404 like one that does not.
pub(super) fn parse_authority(id: &str) -> Result<AuthorityId, CaError> {
    id.parse()
        .map_err(|_| CaError::NotFound(format!("authority {id} does not exist")))
}

/// A rotation step on one generation, as the operator asked for it.
#[derive(Debug, Clone, Copy)]
enum StepKind {
    Activate,
    Retire,
}

async fn rotation_step(
    st: S,
    role: Role,
    id: String,
    force: bool,
    step: StepKind,
) -> Result<Json<api::AuthorityView>, ApiError> {
    let id = parse_authority(&id)?;
    let ca = st.ca.clone();
    let (g, last_leaf) = blocking(&st, move || match step {
        StepKind::Activate => ca.activate(&role, id, force),
        StepKind::Retire => ca.retire(&role, id, force),
    })
    .await?;
    tracing::info!(authority = %id, force, step = ?step, "rotation step by operator");
    if matches!(step, StepKind::Activate) {
        // Move the server's own certificate and the local operator credential right away.
        st.refresh_local_credentials().await;
    }
    Ok(Json(authority_view(
        &g,
        last_leaf,
        st.ca.activatable_at(&g),
    )))
}

#[utoipa::path(
    post,
    path = paths::AUTHORITY_ACTIVATE,
    tag = "authorities",
    summary = "Activate a prepared generation",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    params(("id" = String, Path, description = "Generation id")),
    request_body(content = Option<api::ForceRequest>, content_type = "application/json", description = "Empty, `{}`, or `{\"force\": true}`"),
    responses(
        (status = 200, description = "The generation after the step",
            body = api::AuthorityView, content_type = "application/json"),
        (status = 404, description = "No such generation",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The generation is not prepared, or activating now would break the safety rule (`force` overrides it)",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds (here or on another replica)",
            body = api::Problem, content_type = "application/problem+json"),
        BodyProblems,
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn activate(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    ApiPath(id): ApiPath,
    OptionalJson(body): OptionalJson<api::ForceRequest>,
) -> Result<Json<api::AuthorityView>, ApiError> {
    rotation_step(st, role, id, body.force, StepKind::Activate).await
}

#[utoipa::path(
    post,
    path = paths::AUTHORITY_RETIRE,
    tag = "authorities",
    summary = "Retire a retiring generation",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    params(("id" = String, Path, description = "Generation id")),
    request_body(content = Option<api::ForceRequest>, content_type = "application/json", description = "Empty, `{}`, or `{\"force\": true}`"),
    responses(
        (status = 200, description = "The generation after the step",
            body = api::AuthorityView, content_type = "application/json"),
        (status = 404, description = "No such generation",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The generation cannot be retired now (`force` overrides the safety rule)",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds (here or on another replica)",
            body = api::Problem, content_type = "application/problem+json"),
        BodyProblems,
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn retire(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    ApiPath(id): ApiPath,
    OptionalJson(body): OptionalJson<api::ForceRequest>,
) -> Result<Json<api::AuthorityView>, ApiError> {
    rotation_step(st, role, id, body.force, StepKind::Retire).await
}
