//! `POST /v1/instance-certificates` and its batch form (cells only). The first cell to
//! obtain an instance's certificate owns the instance; see `ownership.rs` for its release.

use axum::extract::State;
use axum::response::Response;
use axum::Json;

use super::openapi::{BodyProblems, CallerProblems, ServerFailure};
use super::{blocking, created, paths, CellCaller, S};
use crate::api;
use crate::ca::CaError;
use crate::http::problem::{problem_of, ApiError, ApiJson};
use crate::http::views::issued_view;

#[utoipa::path(
    post,
    path = paths::INSTANCE_CERTIFICATES,
    tag = "certificates",
    summary = "Issue one instance certificate from a CSR",
    security(("cell_certificate" = [])),
    extensions(("x-lanyard-role" = json!("cell"))),
    request_body(content = api::InstanceCertificateRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Issued",
            body = api::IssuedCertificate, content_type = "application/json"),
        (status = 409, description = "The instance is bound elsewhere: another cell owns it, or the caller owns it with another app, space or organization (the owner is never named); it is freed when the owner or an operator releases it, or when its last certificate expires",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A well-formed but invalid value: GUID, IP, route name, CSR or its signature, key type, TTL; `detail` names the field",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No active authority generation, its intermediate is about to expire, or the database is unreachable; retry after `Retry-After` seconds",
            body = api::Problem, content_type = "application/problem+json"),
        BodyProblems,
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn instance_certificate(
    State(st): State<S>,
    CellCaller(role): CellCaller,
    ApiJson(req): ApiJson<api::InstanceCertificateRequest>,
) -> Result<Response, ApiError> {
    // Validation and the CSR check are short CPU work, done here; the signing and the
    // durable write go to the issuing thread, waited for without holding a thread.
    let issued = st.ca.issue_instance_async(&role, &req).await?;
    Ok(created(&issued))
}

#[utoipa::path(
    post,
    path = paths::INSTANCE_BATCH,
    tag = "certificates",
    summary = "Issue up to 1000 instance certificates, answered in order",
    security(("cell_certificate" = [])),
    extensions(("x-lanyard-role" = json!("cell"))),
    request_body(content = api::BatchRequest<api::InstanceCertificateRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "One result per request, in order: a certificate (201) or a problem (an instance bound elsewhere is a 409 for its own item only)",
            body = api::BatchResponse, content_type = "application/json"),
        (status = 400, description = "The body is not JSON or does not fit the schema (missing or unknown field, wrong type)",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 1 MiB, or carries more than 1000 requests",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No active authority generation, its intermediate is about to expire, or the database is unreachable; retry after `Retry-After` seconds",
            body = api::Problem, content_type = "application/problem+json"),
        CallerProblems,
        ServerFailure,
    ),
)]
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
            // Only an object: serde would also read the struct from an array of its fields.
            if !v.is_object() {
                return Err(CaError::BadRequest(
                    "the request does not fit the schema: it must be a JSON object".into(),
                ));
            }
            serde_json::from_value(v).map_err(|e| {
                CaError::BadRequest(format!("the request does not fit the schema: {e}"))
            })
        })
        .collect();
    // Up to 1000 CSR checks: on the bounded pool; then one group write, waited for without
    // holding a thread.
    let ca = st.ca.clone();
    let leaves = blocking(&st, move || Ok(ca.instance_batch_leaves(&role, items))).await?;
    let results = st.ca.issue_instance_batch_async(leaves).await?;
    let metrics = st.ca.metrics();
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
                    metrics.issuance_refused("instance", p.status, 1);
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
