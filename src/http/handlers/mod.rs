//! Route handlers, one file per resource. Each handler checks the caller's role first, then
//! parses the body, then hands the work to [`crate::ca::Ca`] on a blocking thread (signing and
//! fsync block), and builds the answer from [`super::views`].
//!
//! The router needs no TLS listener: a request without a [`super::tls::Caller`] extension is
//! anonymous, so the router can be driven in-process (`tower::ServiceExt::oneshot`).

mod auth;
mod authorities;
mod certificates;
mod components;
mod credentials;
mod crl;
mod instances;
mod join;
mod ops;
mod trust_bundle;

#[cfg(test)]
mod tests;

pub use auth::{Authenticated, CellCaller, OperatorCaller};
pub use ops::OPENAPI;
pub use trust_bundle::MAX_WAIT;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::problem::ApiError;
use super::tls::ServerCert;
use super::views::issued_view;
use crate::ca::{Ca, CaError, Issued};

/// Shared state of the API.
pub struct AppState {
    /// The CA.
    pub(super) ca: Arc<Ca>,
    /// The server's own certificate, when there is a TLS listener to serve it.
    pub(super) server_cert: Option<Arc<ServerCert>>,
    /// Failed join attempts per client address.
    join_failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Serializes refreshes of the server's own credentials.
    pub(super) refresh_lock: Mutex<()>,
    /// Flips to `true` when the server stops, so held long polls answer at once.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("ca", &self.ca).finish()
    }
}

impl AppState {
    /// State for a server that serves `server_cert` on its TLS listener.
    pub fn new(ca: Arc<Ca>, server_cert: Arc<ServerCert>) -> Self {
        Self::build(ca, Some(server_cert))
    }

    /// State without a TLS listener, for driving the router in-process: every request is
    /// anonymous unless it carries a [`super::tls::Caller`] extension, and credential
    /// refreshes leave the server certificate alone.
    pub fn in_process(ca: Arc<Ca>) -> Self {
        Self::build(ca, None)
    }

    fn build(ca: Arc<Ca>, server_cert: Option<Arc<ServerCert>>) -> Self {
        AppState {
            ca,
            server_cert,
            join_failures: Mutex::new(HashMap::new()),
            refresh_lock: Mutex::new(()),
            stopping: tokio::sync::watch::channel(false).0,
        }
    }

    /// The CA behind the API.
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// Tells held long polls that the server is stopping.
    pub fn shutdown(&self) {
        self.stopping.send_replace(true);
    }
}

type S = Arc<AppState>;

/// The API router, served by [`super::server::serve`] or driven in-process.
pub fn router(state: S) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(ops::openapi))
        .route("/v1/trust-bundle", get(trust_bundle::trust_bundle))
        .route(
            "/v1/instance-certificates",
            post(instances::instance_certificate),
        )
        .route(
            "/v1/instance-certificates/batch",
            post(instances::instance_batch),
        )
        .route(
            "/v1/component-certificates",
            post(components::component_certificate),
        )
        .route("/v1/join-tokens", post(join::join_token))
        .route("/v1/join", post(join::join))
        .route("/v1/cell-credentials", post(credentials::own_credential))
        .route(
            "/v1/operator-credentials",
            post(credentials::own_credential),
        )
        .route("/v1/authorities", get(authorities::authorities))
        .route("/v1/authorities/prepare", post(authorities::prepare))
        .route("/v1/authorities/{id}/activate", post(authorities::activate))
        .route("/v1/authorities/{id}/retire", post(authorities::retire))
        .route("/v1/certificates", get(certificates::certificates))
        .route(
            "/v1/certificates/{serial}/revoke",
            post(certificates::revoke),
        )
        .route("/v1/crl/{id}", get(crl::crl))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            count_response,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    CaError::NotFound("no such endpoint".into()).into()
}

async fn method_not_allowed() -> ApiError {
    CaError::MethodNotAllowed("this endpoint does not take that method".into()).into()
}

async fn count_response(State(st): State<S>, r: Response) -> Response {
    st.ca.metrics().response(r.status().as_u16());
    r
}

/// Runs CA work on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CaError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CaError::Internal(format!("worker failed: {e}")))?
        .map_err(ApiError)
}

/// `201 Created` with the issued certificate.
fn created(i: &Issued) -> Response {
    (StatusCode::CREATED, Json(issued_view(i))).into_response()
}

/// Query parameters; one given twice is a 400.
fn query_map(q: Option<&str>) -> Result<HashMap<String, String>, CaError> {
    let mut m = HashMap::new();
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        if m.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(CaError::BadRequest(format!(
                "query parameter `{k}` is given twice"
            )));
        }
    }
    Ok(m)
}
