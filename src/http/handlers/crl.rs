//! `GET /v1/crl/{id}`: a generation's CRL, public.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::authorities::parse_authority;
use super::openapi::ServerFailure;
use super::{blocking, paths, S};
use crate::api;
use crate::http::problem::{ApiError, ApiPath};

/// How long a CRL is valid: short, since relying parties refetch often and the CA caches the
/// signed CRL.
const CRL_VALIDITY: Duration = Duration::from_secs(3600);

#[utoipa::path(
    get,
    path = paths::CRL,
    tag = "authorities",
    summary = "A generation's CRL (DER), signed by its newest intermediate",
    extensions(("x-lanyard-role" = json!("public"))),
    params(("authority_id" = String, Path, description = "Generation id")),
    responses(
        (status = 200, description = "The DER CRL",
            body = api::DerCrl, content_type = "application/pkix-crl",
            headers(("Cache-Control" = String, description = "`max-age=300`"))),
        (status = 400, description = "The body is not JSON or does not fit the schema (missing or unknown field, wrong type)",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such generation",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds (here or on another replica)",
            body = api::Problem, content_type = "application/problem+json"),
        ServerFailure,
    ),
)]
pub(super) async fn crl(State(st): State<S>, ApiPath(id): ApiPath) -> Result<Response, ApiError> {
    let id = parse_authority(&id)?;
    let ca = st.ca.clone();
    let der = blocking(&st, move || ca.crl(id, CRL_VALIDITY)).await?;
    let mut r = der.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-crl"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    Ok(r)
}
