//! Problem details (RFC 9457) for every HTTP surface of the crate: the CA's API and the
//! agent's local API answer failures the same way.
//!
//! A [`Problem`] is a status and a detail; the type URI and title follow from the status, so
//! one status always reads the same to clients. The body extractors here turn bad input into
//! a [`Rejection`] (400 or 413) instead of axum's plain-text rejections; each server maps
//! its own errors to a [`Problem`] in one place.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// The media type of every problem body.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// How long a client has to send its whole body.
pub(crate) const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest accepted request body.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// Largest oversized body still read (and dropped) before answering 413.
pub(crate) const DRAIN_LIMIT: usize = 4 * MAX_BODY;

/// What internal failures say to clients; the real cause goes to the log only.
const INTERNAL_DETAIL: &str = "the server failed; the details are in its log";

/// A failure on its way to becoming a problem+json response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The HTTP status; it also decides the type URI and the title.
    pub status: StatusCode,
    /// Which field or rule failed.
    pub detail: String,
}

impl Problem {
    /// A problem with `status` and `detail`.
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            detail: detail.into(),
        }
    }

    /// A 500 whose cause is logged here and never returned.
    pub(crate) fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_DETAIL)
    }

    /// The wire document.
    pub(crate) fn document(&self) -> crate::api::Problem {
        let (slug, title) = kind(self.status);
        crate::api::Problem {
            type_: format!("https://lanyard.dev/problems/{slug}"),
            title: title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
        }
    }
}

/// The type slug and title of each status the API uses.
pub(crate) fn kind(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::BAD_REQUEST => ("bad-request", "Malformed request"),
        StatusCode::UNAUTHORIZED => ("unauthenticated", "Authentication required"),
        StatusCode::FORBIDDEN => ("forbidden", "Not allowed for this role"),
        StatusCode::NOT_FOUND => ("not-found", "Not found"),
        StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "Method not allowed"),
        StatusCode::MISDIRECTED_REQUEST => ("misdirected-request", "Not this server's address"),
        StatusCode::CONFLICT => ("conflict", "State conflict"),
        StatusCode::PAYLOAD_TOO_LARGE => ("too-large", "Request too large"),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid-value", "Invalid value"),
        StatusCode::TOO_MANY_REQUESTS => ("rate-limited", "Too many requests"),
        StatusCode::SERVICE_UNAVAILABLE => ("not-ready", "Not ready"),
        StatusCode::BAD_GATEWAY => ("bad-gateway", "The CA could not be asked"),
        _ => ("internal", "Internal error"),
    }
}

/// A problem+json response for a wire document.
pub(crate) fn problem_response(p: &crate::api::Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(p).unwrap_or_default();
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    r
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        problem_response(&self.document())
    }
}

/// Why a request's body or path was refused before any handler ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejection {
    /// 400: unreadable, not JSON, or not the expected shape.
    #[error("{0}")]
    BadRequest(String),
    /// 413: over [`MAX_BODY`].
    #[error("{0}")]
    TooLarge(String),
}

impl From<Rejection> for Problem {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::BadRequest(m) => Problem::new(StatusCode::BAD_REQUEST, m),
            Rejection::TooLarge(m) => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, m),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

/// Reads and drops a body frame by frame (nothing is buffered), up to [`DRAIN_LIMIT`].
pub(crate) async fn drain(mut body: axum::body::Body) {
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
pub(crate) async fn read_body(req: Request) -> Result<Bytes, Rejection> {
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
            return Err(Rejection::TooLarge(format!(
                "the body is {len} bytes; the limit is {MAX_BODY}"
            )));
        }
    }
    // A client that trickles its body must not hold a worker forever.
    let read = tokio::time::timeout(
        BODY_TIMEOUT,
        axum::body::to_bytes(req.into_body(), MAX_BODY),
    )
    .await
    .map_err(|_| {
        Rejection::BadRequest(format!(
            "the body did not arrive within {}s",
            BODY_TIMEOUT.as_secs()
        ))
    })?;
    read.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            Rejection::TooLarge(format!("the body is over the limit of {MAX_BODY} bytes"))
        } else {
            Rejection::BadRequest(format!("could not read the body: {e}"))
        }
    })
}

/// Parses JSON into `T`, every failure a 400 that says what did not fit.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Rejection> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::BadRequest(
            "the body is empty; a JSON object is required".into(),
        ));
    }
    // Every body the API takes is a JSON object. serde would also read a struct from an
    // array of its fields in order (`[]` for `{}`, `[true]` for `{"force": true}`), which the
    // schema does not allow, so anything else is refused before it gets the chance.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Rejection::BadRequest(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => "the body does not fit the schema: it must be a JSON object".into(),
                Err(e) => format!("the body is not valid JSON: {e}"),
            },
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "the body is not valid JSON"
        } else {
            "the body does not fit the schema"
        };
        Rejection::BadRequest(format!("{what}: {e}"))
    })
}

/// A JSON body extractor whose rejections are problem+json (400 or 413).
pub(crate) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Rejection;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req).await?;
        Ok(ApiJson(parse_json(&bytes)?))
    }
}

/// A path parameter whose rejection (bad percent-encoding, say) is problem+json too.
pub(crate) struct ApiPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = Rejection;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(p)) => Ok(ApiPath(p)),
            Err(e) => Err(Rejection::BadRequest(format!("the path is not valid: {e}"))),
        }
    }
}

/// A JSON body that may be absent (activate/retire accept an empty body).
pub(crate) struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = Rejection;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        Ok(OptionalJson(parse_json(&bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_an_object_is_refused_even_when_its_values_would_fill_the_fields() {
        #[derive(serde::Deserialize, Debug)]
        struct Force {
            #[serde(default)]
            force: bool,
        }
        for body in ["[]", "[true]", " [true] ", "1", "\"x\"", "null"] {
            assert!(
                matches!(parse_json::<Force>(body.as_bytes()),
                    Err(Rejection::BadRequest(m)) if m.contains("must be a JSON object")),
                "{body}"
            );
        }
        assert!(matches!(parse_json::<Force>(b"[tru"),
            Err(Rejection::BadRequest(m)) if m.contains("not valid JSON")));
        assert!(parse_json::<Force>(b" {\"force\": true}").unwrap().force);
    }

    #[test]
    fn the_status_decides_type_and_title() {
        let d = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "app_guid: bad").document();
        assert_eq!(d.type_, "https://lanyard.dev/problems/invalid-value");
        assert_eq!(d.title, "Invalid value");
        assert_eq!(d.status, 422);
        assert_eq!(d.detail, "app_guid: bad");
    }

    #[test]
    fn internal_causes_stay_in_the_log() {
        let p = Problem::internal("disk on fire");
        assert_eq!(p.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!p.detail.contains("disk"));
        assert_eq!(p.document().type_, "https://lanyard.dev/problems/internal");
    }

    #[test]
    fn the_response_is_problem_json() {
        let r = Rejection::TooLarge("big".into()).into_response();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn empty_and_malformed_bodies_are_400s_that_say_why() {
        let e = parse_json::<serde_json::Value>(b"  ").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = parse_json::<crate::api::CsrRequest>(b"{").unwrap_err();
        assert!(
            e.to_string().starts_with("the body is not valid JSON"),
            "{e}"
        );
        let e = parse_json::<crate::api::CsrRequest>(b"{\"x\":1}").unwrap_err();
        assert!(e.to_string().starts_with("the body does not fit"), "{e}");
    }
}
