//! `GET /v1/authorities` and the operator's rotation steps: prepare, activate, retire.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{blocking, OperatorCaller, S};
use crate::api;
use crate::ca::CaError;
use crate::http::problem::{ApiError, ApiPath, OptionalJson};
use crate::http::views::{authorities_view, authority_view};
use crate::ids::AuthorityId;

pub(super) async fn authorities(
    State(st): State<S>,
    _op: OperatorCaller,
) -> Result<Json<api::AuthoritiesResponse>, ApiError> {
    let ca = st.ca.clone();
    let (gens, seq) = blocking(move || ca.generations()).await?;
    Ok(Json(authorities_view(&gens, seq)))
}

pub(super) async fn prepare(
    State(st): State<S>,
    _op: OperatorCaller,
    OptionalJson(_body): OptionalJson<api::PrepareRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let (g, last_leaf) = blocking(move || ca.prepare()).await?;
    tracing::info!(authority = %g.id, "authority prepared by operator");
    Ok((StatusCode::CREATED, Json(authority_view(&g, last_leaf))).into_response())
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
    id: String,
    force: bool,
    step: StepKind,
) -> Result<Json<api::AuthorityView>, ApiError> {
    let id = parse_authority(&id)?;
    let ca = st.ca.clone();
    let (g, last_leaf) = blocking(move || match step {
        StepKind::Activate => ca.activate(id, force),
        StepKind::Retire => ca.retire(id, force),
    })
    .await?;
    tracing::info!(authority = %id, force, step = ?step, "rotation step by operator");
    if matches!(step, StepKind::Activate) {
        // Move the server's own certificate and the local operator credential right away.
        st.refresh_local_credentials().await;
    }
    Ok(Json(authority_view(&g, last_leaf)))
}

pub(super) async fn activate(
    State(st): State<S>,
    _op: OperatorCaller,
    ApiPath(id): ApiPath,
    OptionalJson(body): OptionalJson<api::ForceRequest>,
) -> Result<Json<api::AuthorityView>, ApiError> {
    rotation_step(st, id, body.force, StepKind::Activate).await
}

pub(super) async fn retire(
    State(st): State<S>,
    _op: OperatorCaller,
    ApiPath(id): ApiPath,
    OptionalJson(body): OptionalJson<api::ForceRequest>,
) -> Result<Json<api::AuthorityView>, ApiError> {
    rotation_step(st, id, body.force, StepKind::Retire).await
}
