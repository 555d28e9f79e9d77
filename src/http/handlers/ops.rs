//! Endpoints for operations and tooling: `/healthz`, `/readyz`, `/metrics`, and the OpenAPI
//! document.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{blocking, S};
use crate::ca::CaError;
use crate::http::problem::ApiError;

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

pub(super) async fn metrics(State(st): State<S>) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let text = blocking(move || ca.render_metrics()).await?;
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

pub(super) async fn openapi() -> Response {
    let mut r = OPENAPI.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub(super) async fn readyz(State(st): State<S>) -> Result<Json<serde_json::Value>, ApiError> {
    match st.ca.active_authority() {
        Some(id) => Ok(Json(
            serde_json::json!({"status": "ready", "active_authority": id.to_string()}),
        )),
        None => Err(CaError::NotReady("no active authority generation".into()).into()),
    }
}
