//! `GET /v1/crl/{id}`: a generation's CRL, public.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::authorities::parse_authority;
use super::{blocking, S};
use crate::http::problem::{ApiError, ApiPath};

/// How long a CRL is valid: short, since relying parties refetch often and the CA caches the
/// signed CRL.
const CRL_VALIDITY: Duration = Duration::from_secs(3600);

pub(super) async fn crl(State(st): State<S>, ApiPath(id): ApiPath) -> Result<Response, ApiError> {
    let id = parse_authority(&id)?;
    let ca = st.ca.clone();
    let der = blocking(move || ca.crl(id, CRL_VALIDITY)).await?;
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
