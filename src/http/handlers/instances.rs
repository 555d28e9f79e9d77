//! `POST /v1/instance-certificates` and its batch form (cells only).

use axum::extract::State;
use axum::response::Response;
use axum::Json;

use super::{blocking, created, CellCaller, S};
use crate::api;
use crate::ca::CaError;
use crate::http::problem::{problem_of, ApiError, ApiJson};
use crate::http::views::issued_view;

pub(super) async fn instance_certificate(
    State(st): State<S>,
    CellCaller(role): CellCaller,
    ApiJson(req): ApiJson<api::InstanceCertificateRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let issued = blocking(move || ca.issue_instance(&role, &req)).await?;
    Ok(created(&issued))
}

pub(super) async fn instance_batch(
    State(st): State<S>,
    CellCaller(role): CellCaller,
    ApiJson(req): ApiJson<api::BatchRequest<serde_json::Value>>,
) -> Result<Json<api::BatchResponse>, ApiError> {
    if req.requests.len() > api::MAX_BATCH {
        return Err(CaError::TooLarge(format!(
            "{} requests in one batch; the limit is {}",
            req.requests.len(),
            api::MAX_BATCH
        ))
        .into());
    }
    // Each item is parsed alone, so one that does not fit the schema fails only itself.
    let items: Vec<Result<api::InstanceCertificateRequest, CaError>> = req
        .requests
        .into_iter()
        .map(|v| {
            serde_json::from_value(v).map_err(|e| {
                CaError::BadRequest(format!("the request does not fit the schema: {e}"))
            })
        })
        .collect();
    let ca = st.ca.clone();
    let results = blocking(move || ca.issue_instance_batch(&role, items)).await?;
    Ok(Json(api::BatchResponse {
        results: results
            .into_iter()
            .map(|r| match r {
                Ok(i) => api::BatchResult {
                    status: 201,
                    certificate: Some(issued_view(&i)),
                    problem: None,
                },
                Err(e) => {
                    let p = problem_of(&e);
                    api::BatchResult {
                        status: p.status,
                        certificate: None,
                        problem: Some(p),
                    }
                }
            })
            .collect(),
    }))
}
