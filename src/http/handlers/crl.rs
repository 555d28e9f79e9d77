//! `GET /v1/crl/{id}[?intermediate=KEYID]`: the CRL of one of a generation's intermediates,
//! public.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::authorities::parse_authority;
use super::openapi::ServerFailure;
use super::{blocking, paths, query_map, S};
use crate::api;
use crate::ca::CaError;
use crate::http::problem::{ApiError, ApiPath};

/// How long a CRL is valid: short, since relying parties refetch often and the CA caches the
/// signed CRL.
const CRL_VALIDITY: Duration = Duration::from_secs(3600);

#[utoipa::path(
    get,
    path = paths::CRL,
    tag = "authorities",
    summary = "A generation's CRL (DER), signed by its newest intermediate or the one named",
    extensions(("x-lanyard-role" = json!("public"))),
    params(
        ("authority_id" = String, Path, description = "Generation id"),
        ("intermediate" = Option<String>, Query, nullable = false, pattern = "^([0-9a-fA-F]{2}){1,64}$",
            description = "The key identifier (hex) of an older intermediate of the generation; without it, the newest one's CRL"),
    ),
    responses(
        (status = 200, description = "The DER CRL",
            body = api::DerCrl, content_type = "application/pkix-crl",
            headers(("Cache-Control" = String, description = "`max-age=300`"))),
        (status = 400, description = "An unknown query parameter, or one given twice",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such generation, or no intermediate of it with that key identifier",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A well-formed but invalid value: `intermediate` is not a key identifier in hex; `detail` names the parameter",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds (here or on another replica)",
            body = api::Problem, content_type = "application/problem+json"),
        ServerFailure,
    ),
)]
pub(super) async fn crl(
    State(st): State<S>,
    ApiPath(id): ApiPath,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let id = parse_authority(&id)?;
    let m = query_map(q.as_deref())?;
    if let Some(k) = m.keys().find(|k| k.as_str() != "intermediate") {
        return Err(CaError::BadRequest(format!("unknown query parameter `{k}`")).into());
    }
    let key_id = m.get("intermediate").map(|v| key_id(v)).transpose()?;
    let ca = st.ca.clone();
    let der = blocking(&st, move || ca.crl(id, key_id.as_deref(), CRL_VALIDITY)).await?;
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

/// A key identifier in hex (either case), 1 to 64 bytes, or a 422 naming `intermediate`.
fn key_id(v: &str) -> Result<Vec<u8>, CaError> {
    hex::decode(v)
        .ok()
        .filter(|k| (1..=64).contains(&k.len()))
        .ok_or_else(|| {
            CaError::invalid(
                "intermediate",
                format!("`{v}` is not a key identifier (1 to 64 bytes in hex)"),
            )
        })
}
