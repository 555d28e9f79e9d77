//! The one mapping from [`CaError`] to HTTP statuses. The problem+json body and the body
//! extractors are shared with the agent and live in [`crate::problem`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::ca::CaError;
use crate::problem::{Problem, Rejection};

pub(crate) use crate::problem::{parse_json, read_body, ApiJson, ApiPath, OptionalJson};

/// An error on its way to becoming a problem+json response.
#[derive(Debug)]
pub(crate) struct ApiError(pub CaError);

impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        ApiError(e)
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError(match r {
            Rejection::BadRequest(m) => CaError::BadRequest(m),
            Rejection::TooLarge(m) => CaError::TooLarge(m),
        })
    }
}

/// The status of each error.
pub(crate) fn status_of(e: &CaError) -> StatusCode {
    match e {
        CaError::BadRequest(_) => StatusCode::BAD_REQUEST,
        CaError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        CaError::Forbidden(_) => StatusCode::FORBIDDEN,
        CaError::NotFound(_) => StatusCode::NOT_FOUND,
        CaError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        CaError::Conflict(_) => StatusCode::CONFLICT,
        CaError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        CaError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        CaError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        CaError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        CaError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<&CaError> for Problem {
    fn from(e: &CaError) -> Self {
        match e {
            CaError::Internal(msg) => Problem::internal(msg),
            other => Problem::new(status_of(other), other.to_string()),
        }
    }
}

/// The problem document for an error. Internal details are logged, never returned.
pub(crate) fn problem_of(e: &CaError) -> crate::api::Problem {
    Problem::from(e).document()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = Problem::from(&self.0).into_response();
        match self.0 {
            // The join limiter counts failures per minute.
            CaError::RateLimited(_) => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            }
            // Not ready (the database unreachable, no active generation): worth another try
            // soon, here or on another replica.
            CaError::NotReady(_) => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_keeps_its_status_type_and_detail() {
        let p = problem_of(&CaError::invalid("app_guid", "not a GUID"));
        assert_eq!(
            (
                p.status,
                p.type_.as_str(),
                p.title.as_str(),
                p.detail.as_str()
            ),
            (
                422,
                "https://lanyard.dev/problems/invalid-value",
                "Invalid value",
                "app_guid: not a GUID"
            )
        );
        let p = problem_of(&CaError::RateLimited("slow".into()));
        assert_eq!((p.status, p.title.as_str()), (429, "Too many requests"));
        let p = problem_of(&CaError::Internal("secret path".into()));
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("secret"));
    }
}
