//! The one mapping from errors to HTTP statuses, and the JSON body extractor that turns bad
//! input into problem+json instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::api::Problem;
use crate::ca::CaError;

/// How long a client has to send its whole body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest oversized body still read (and dropped) before answering 413.
const DRAIN_LIMIT: usize = 4 * MAX_BODY;

/// Largest accepted request body.
pub const MAX_BODY: usize = 1024 * 1024;

/// An error on its way to becoming a problem+json response.
#[derive(Debug)]
pub struct ApiError(pub CaError);

impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        ApiError(e)
    }
}

/// Status, type slug and title for each error.
pub fn classify(e: &CaError) -> (StatusCode, &'static str, &'static str) {
    match e {
        CaError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Malformed request"),
        CaError::Unauthenticated(_) => (
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Authentication required",
        ),
        CaError::Forbidden(_) => (
            StatusCode::FORBIDDEN,
            "forbidden",
            "Not allowed for this role",
        ),
        CaError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
        CaError::MethodNotAllowed(_) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
        ),
        CaError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "State conflict"),
        CaError::TooLarge(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Request too large",
        ),
        CaError::Invalid { .. } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-value",
            "Invalid value",
        ),
        CaError::RateLimited(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
        ),
        CaError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready"),
        CaError::Internal(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        ),
    }
}

/// The problem document for an error. Internal details are logged, never returned.
pub fn problem_of(e: &CaError) -> Problem {
    let (status, slug, title) = classify(e);
    let detail = match e {
        CaError::Internal(msg) => {
            tracing::error!(error = %msg, "internal error");
            "the server failed; the details are in its log".to_string()
        }
        other => other.to_string(),
    };
    Problem {
        type_: format!("https://lanyard.dev/problems/{slug}"),
        title: title.to_string(),
        status: status.as_u16(),
        detail,
    }
}

/// A problem+json response.
pub fn problem_response(p: &Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(p).unwrap_or_default();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = problem_response(&problem_of(&self.0));
        if matches!(self.0, CaError::RateLimited(_)) {
            // The join limiter counts failures per minute.
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        r
    }
}

/// Reads and drops a body frame by frame (nothing is buffered), up to [`DRAIN_LIMIT`].
async fn drain(mut body: axum::body::Body) {
    use http_body_util::BodyExt;
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.len());
        if seen > DRAIN_LIMIT {
            break;
        }
    }
}

/// Reads a body of at most [`MAX_BODY`] bytes (413 beyond).
pub async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > MAX_BODY as u64 {
            // A client still writing its body when the answer comes back sees a broken pipe
            // instead of the 413. Bodies a few times the limit are read and dropped first, so
            // ordinary clients get the problem; anything larger is cut off at once.
            if len <= DRAIN_LIMIT as u64 {
                let _ = tokio::time::timeout(BODY_TIMEOUT, drain(req.into_body())).await;
            }
            return Err(CaError::TooLarge(format!(
                "the body is {len} bytes; the limit is {MAX_BODY}"
            ))
            .into());
        }
    }
    // A client that trickles its body must not hold a worker forever.
    let read = tokio::time::timeout(
        BODY_TIMEOUT,
        axum::body::to_bytes(req.into_body(), MAX_BODY),
    )
    .await
    .map_err(|_| {
        ApiError(CaError::BadRequest(format!(
            "the body did not arrive within {}s",
            BODY_TIMEOUT.as_secs()
        )))
    })?;
    read.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError(CaError::TooLarge(format!(
                "the body is over the limit of {MAX_BODY} bytes"
            )))
        } else {
            ApiError(CaError::BadRequest(format!("could not read the body: {e}")))
        }
    })
}

/// Parses JSON into `T`, every failure a 400 that says what did not fit.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CaError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(CaError::BadRequest(
            "the body is empty; a JSON object is required".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "the body is not valid JSON"
        } else {
            "the body does not fit the schema"
        };
        CaError::BadRequest(format!("{what}: {e}"))
    })
}

/// A JSON body extractor whose rejections are problem+json (400 or 413).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req).await?;
        Ok(ApiJson(parse_json(&bytes)?))
    }
}

/// A path parameter whose rejection (bad percent-encoding, say) is problem+json too.
pub struct ApiPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(p)) => Ok(ApiPath(p)),
            Err(e) => Err(ApiError(CaError::BadRequest(format!(
                "the path is not valid: {e}"
            )))),
        }
    }
}

/// A JSON body that may be absent (activate/retire accept an empty body).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        Ok(OptionalJson(parse_json(&bytes)?))
    }
}
