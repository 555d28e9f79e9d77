//! Endpoints for operations and tooling: `/healthz`, `/readyz`, `/metrics`, and the OpenAPI
//! document.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::openapi::{CallerProblems, ServerFailure};
use super::{paths, OperatorCaller, S};
use crate::api;
use crate::ca::CaError;
use crate::http::problem::ApiError;

#[utoipa::path(
    get,
    path = paths::METRICS,
    tag = "operations",
    summary = "Prometheus metrics",
    extensions(("x-lanyard-role" = json!("public"))),
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4, read from memory (a scrape never reads the store)",
            body = String, content_type = "text/plain"),
        ServerFailure,
    ),
)]
pub(super) async fn metrics(State(st): State<S>) -> Result<Response, ApiError> {
    // Memory only and quick: on the async thread, so a full blocking pool never makes a
    // scrape fail when it matters most.
    let text = st.ca.render_metrics()?;
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    Ok(r)
}

#[utoipa::path(
    get,
    path = paths::ACTIVITY,
    tag = "operations",
    summary = "What this replica saw lately: issuances per minute over the last hour, cells with their last request, certificates expiring soon (memory only, per replica)",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    responses(
        (status = 200, description = "The answering replica's recent activity",
            body = api::ActivityResponse, content_type = "application/json"),
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn activity(
    State(st): State<S>,
    _op: OperatorCaller,
) -> Json<api::ActivityResponse> {
    Json(crate::http::views::activity_view(
        st.ca.metrics().activity(),
        std::time::SystemTime::now(),
    ))
}

#[utoipa::path(
    get,
    path = paths::OPENAPI,
    tag = "operations",
    summary = "This document (OpenAPI 3.1)",
    extensions(("x-lanyard-role" = json!("public"))),
    responses(
        (status = 200, description = "The OpenAPI document",
            body = Object, content_type = "application/json"),
    ),
)]
pub(super) async fn openapi(State(st): State<S>) -> Response {
    let mut r = st.openapi.clone().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[utoipa::path(
    get,
    path = paths::HEALTHZ,
    tag = "operations",
    summary = "Liveness",
    extensions(("x-lanyard-role" = json!("public"))),
    responses(
        (status = 200, description = "The process serves requests",
            body = api::Health, content_type = "application/json"),
    ),
)]
pub(super) async fn healthz() -> Json<api::Health> {
    Json(api::Health {
        status: "ok".into(),
    })
}

#[utoipa::path(
    get,
    path = paths::READYZ,
    tag = "operations",
    summary = "Readiness: an authority generation is active and the store answers",
    extensions(("x-lanyard-role" = json!("public"))),
    responses(
        (status = 200, description = "Ready to issue",
            body = api::Readiness, content_type = "application/json"),
        (status = 503, description = "No active authority generation, or the database is unreachable",
            body = api::Problem, content_type = "application/problem+json"),
    ),
)]
pub(super) async fn readyz(State(st): State<S>) -> Result<Json<api::Readiness>, ApiError> {
    if let Some(why) = st.store_unreachable().await {
        return Err(CaError::NotReady(format!("the store is unreachable: {why}")).into());
    }
    match st.ca.active_authority() {
        Some(id) => Ok(Json(api::Readiness {
            status: "ready".into(),
            active_authority: id.to_string(),
        })),
        None => Err(CaError::NotReady("no active authority generation".into()).into()),
    }
}

/// How long one store check answers `/readyz`: probes (one per second per replica) cannot
/// load the database, however often they come.
const READINESS_CACHE: Duration = Duration::from_secs(1);

impl super::AppState {
    /// Why the store is unreachable (`None` when it answers), checked at most once per
    /// [`READINESS_CACHE`]; concurrent probes wait for the one check under way.
    async fn store_unreachable(&self) -> Option<String> {
        let mut last = self.readiness.lock().await;
        if let Some((at, why)) = &*last {
            if at.elapsed() < READINESS_CACHE {
                return why.clone();
            }
        }
        let ca = self.ca.clone();
        let why = match tokio::task::spawn_blocking(move || ca.check_store()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("worker failed: {e}")),
        };
        *last = Some((Instant::now(), why.clone()));
        why
    }
}
