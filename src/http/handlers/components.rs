//! `POST /v1/component-certificates` (operators only).

use axum::extract::State;
use axum::response::Response;

use super::{blocking, created, OperatorCaller, S};
use crate::api;
use crate::http::problem::{ApiError, ApiJson};

pub(super) async fn component_certificate(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    ApiJson(req): ApiJson<api::ComponentCertificateRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let issued = blocking(move || ca.issue_component(&role, &req)).await?;
    Ok(created(&issued))
}
