//! Route handlers, one file per resource. Each handler checks the caller's role first, then
//! parses the body, then hands the work to [`crate::ca::Ca`] on a blocking thread (signing and
//! fsync block), and builds the answer from [`super::views`].
//!
//! The router needs no TLS listener: a request without a [`super::tls::Caller`] extension is
//! anonymous, so the router can be driven in-process (`tower::ServiceExt::oneshot`).

mod audit;
mod auth;
mod authorities;
mod certificates;
mod components;
mod credentials;
mod crl;
mod instances;
mod join;
mod observe;
mod openapi;
mod ops;
mod ownership;
mod pool;
mod trust_bundle;
mod unread_body;

#[cfg(test)]
mod tests;

pub(crate) use auth::{CellCaller, ComponentCaller, OperatorCaller};
pub use openapi::ApiDoc;
pub(crate) use pool::BlockingPool;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::handler::Handler;
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};

use super::maintenance::ScheduleLease;
use super::problem::ApiError;
use super::tls::ServerCert;
use super::views::issued_view;
use crate::ca::{Ca, CaError, Issued};

/// Shared state of the API.
pub(crate) struct AppState {
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
    /// Where every request's blocking work runs (see [`blocking`]).
    pub(super) pool: BlockingPool,
    /// Turns for anonymous trust-bundle long polls; without one a poll answers at once.
    pub(super) anonymous_polls: Arc<tokio::sync::Semaphore>,
    /// Whether this replica runs the rotation schedule now.
    pub(in crate::http) lease: ScheduleLease,
    /// The last store check of `/readyz`: when, and the failure if it failed.
    readiness: tokio::sync::Mutex<Option<(Instant, Option<String>)>>,
    /// The OpenAPI document as served (with this configuration's limits), made once.
    openapi: String,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("ca", &self.ca).finish()
    }
}

impl AppState {
    /// State for a server that serves `server_cert` on its TLS listener, as the replica
    /// named `replica`.
    pub(crate) fn new(ca: Arc<Ca>, server_cert: Arc<ServerCert>, replica: String) -> Self {
        Self::build(ca, Some(server_cert), replica)
    }

    /// State without a TLS listener, for driving the router in-process: every request is
    /// anonymous unless it carries a [`super::tls::Caller`] extension, and credential
    /// refreshes leave the server certificate alone. Tests and `lanyard bench --mode
    /// in-process` use it.
    pub(crate) fn in_process(ca: Arc<Ca>) -> Self {
        let st = Self::build(ca, None, "in-process".into());
        // No lease loop runs in-process: this state acts as the holder, as the only
        // process of its store.
        st.lease
            .hold_for(std::time::Duration::from_secs(365 * 86400));
        st
    }

    /// State without a TLS listener whose blocking work runs on `pool`.
    #[cfg(test)]
    pub(crate) fn in_process_with_pool(ca: Arc<Ca>, pool: BlockingPool) -> Self {
        let st = AppState {
            pool,
            ..Self::build(ca, None, "in-process".into())
        };
        st.lease
            .hold_for(std::time::Duration::from_secs(365 * 86400));
        st
    }

    fn build(ca: Arc<Ca>, server_cert: Option<Arc<ServerCert>>, replica: String) -> Self {
        let listen = &ca.config().listen;
        let pool = BlockingPool::new(listen.blocking_threads, listen.blocking_queue_depth);
        let anonymous_polls = Arc::new(tokio::sync::Semaphore::new(
            listen
                .max_anonymous_long_polls
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        let lease = ScheduleLease::new(replica, ca.config().rotation.lease.0);
        let openapi = openapi::served_document(&ca.config().issuance, &ca.reserved_names());
        AppState {
            openapi,
            pool,
            anonymous_polls,
            lease,
            readiness: tokio::sync::Mutex::new(None),
            ca,
            server_cert,
            join_failures: Mutex::new(HashMap::new()),
            refresh_lock: Mutex::new(()),
            stopping: tokio::sync::watch::channel(false).0,
        }
    }

    /// The CA behind the API.
    pub(crate) fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// Tells held long polls that the server is stopping.
    pub(crate) fn shutdown(&self) {
        self.stopping.send_replace(true);
    }
}

type S = Arc<AppState>;

/// The API's paths, in axum's syntax (which is OpenAPI's): the router and the OpenAPI
/// document both take them from here.
pub(crate) mod paths {
    /// Liveness.
    pub(crate) const HEALTHZ: &str = "/healthz";
    /// Readiness.
    pub(crate) const READYZ: &str = "/readyz";
    /// Prometheus metrics.
    pub(crate) const METRICS: &str = "/metrics";
    /// The OpenAPI document.
    pub(crate) const OPENAPI: &str = "/v1/openapi.json";
    /// The trust bundle.
    pub(crate) const TRUST_BUNDLE: &str = "/v1/trust-bundle";
    /// Instance certificates.
    pub(crate) const INSTANCE_CERTIFICATES: &str = "/v1/instance-certificates";
    /// Instance certificates, many at once.
    pub(crate) const INSTANCE_BATCH: &str = "/v1/instance-certificates/batch";
    /// Component certificates.
    pub(crate) const COMPONENT_CERTIFICATES: &str = "/v1/component-certificates";
    /// A component renewing its own certificate.
    pub(crate) const COMPONENT_CREDENTIALS: &str = "/v1/component-credentials";
    /// Join tokens.
    pub(crate) const JOIN_TOKENS: &str = "/v1/join-tokens";
    /// Spending a join token.
    pub(crate) const JOIN: &str = "/v1/join";
    /// A cell renewing its own credential.
    pub(crate) const CELL_CREDENTIALS: &str = "/v1/cell-credentials";
    /// An operator renewing its own credential.
    pub(crate) const OPERATOR_CREDENTIALS: &str = "/v1/operator-credentials";
    /// Authority generations.
    pub(crate) const AUTHORITIES: &str = "/v1/authorities";
    /// Preparing a generation.
    pub(crate) const AUTHORITY_PREPARE: &str = "/v1/authorities/prepare";
    /// Activating a generation.
    pub(crate) const AUTHORITY_ACTIVATE: &str = "/v1/authorities/{id}/activate";
    /// Retiring a generation.
    pub(crate) const AUTHORITY_RETIRE: &str = "/v1/authorities/{id}/retire";
    /// Issued certificate records.
    pub(crate) const CERTIFICATES: &str = "/v1/certificates";
    /// Revoking a certificate.
    pub(crate) const REVOKE: &str = "/v1/certificates/{serial}/revoke";
    /// The replica's recent activity, for the console.
    pub(crate) const ACTIVITY: &str = "/v1/activity";
    /// A generation's CRL.
    pub(crate) const CRL: &str = "/v1/crl/{authority_id}";
    /// An instance's binding (DELETE releases it).
    pub(crate) const INSTANCE: &str = "/v1/instances/{instance_guid}";
    /// The audit log.
    pub(crate) const AUDIT: &str = "/v1/audit";
    /// An operator releasing an instance's binding.
    pub(crate) const INSTANCE_RELEASE: &str = "/v1/instances/{instance_guid}/release";
}

/// One route of the API: the router serves these, and a unit test holds the OpenAPI
/// document to the same list.
pub(crate) struct Route {
    /// The method. Only the unit test that holds the OpenAPI document to this list reads it;
    /// the router takes the method from `handler`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub method: Method,
    /// The path, from [`paths`].
    pub path: &'static str,
    handler: MethodRouter<S>,
}

impl Route {
    fn get<H: Handler<T, S>, T: 'static>(path: &'static str, handler: H) -> Self {
        Route {
            method: Method::GET,
            path,
            handler: get(handler),
        }
    }

    fn post<H: Handler<T, S>, T: 'static>(path: &'static str, handler: H) -> Self {
        Route {
            method: Method::POST,
            path,
            handler: post(handler),
        }
    }

    fn delete<H: Handler<T, S>, T: 'static>(path: &'static str, handler: H) -> Self {
        Route {
            method: Method::DELETE,
            path,
            handler: delete(handler),
        }
    }
}

/// Every route of the API, one method per path.
pub(crate) fn routes() -> Vec<Route> {
    use paths::*;
    vec![
        Route::get(HEALTHZ, ops::healthz),
        Route::get(READYZ, ops::readyz),
        Route::get(METRICS, ops::metrics),
        Route::get(OPENAPI, ops::openapi),
        Route::get(TRUST_BUNDLE, trust_bundle::trust_bundle),
        Route::post(INSTANCE_CERTIFICATES, instances::instance_certificate),
        Route::post(INSTANCE_BATCH, instances::instance_batch),
        Route::post(COMPONENT_CERTIFICATES, components::component_certificate),
        Route::post(COMPONENT_CREDENTIALS, components::component_credential),
        Route::post(JOIN_TOKENS, join::join_token),
        Route::post(JOIN, join::join),
        Route::post(CELL_CREDENTIALS, credentials::cell_credential),
        Route::post(OPERATOR_CREDENTIALS, credentials::operator_credential),
        Route::get(AUTHORITIES, authorities::authorities),
        Route::post(AUTHORITY_PREPARE, authorities::prepare),
        Route::post(AUTHORITY_ACTIVATE, authorities::activate),
        Route::post(AUTHORITY_RETIRE, authorities::retire),
        Route::get(CERTIFICATES, certificates::certificates),
        Route::post(REVOKE, certificates::revoke),
        Route::get(CRL, crl::crl),
        Route::delete(INSTANCE, ownership::release),
        Route::post(INSTANCE_RELEASE, ownership::release_by_operator),
        Route::get(AUDIT, audit::audit),
        Route::get(ACTIVITY, ops::activity),
    ]
}

/// The API router, served by [`super::server::serve`] or driven in-process.
pub(crate) fn router(state: S) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |r, route| r.route(route.path, route.handler))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // A refusal answered before the body was read still reads it, so the client gets
        // the answer rather than a broken pipe.
        .layer(axum::middleware::from_fn(unread_body::drain_unread_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    CaError::NotFound("no such endpoint".into()).into()
}

async fn method_not_allowed() -> ApiError {
    CaError::MethodNotAllowed("this endpoint does not take that method".into()).into()
}

/// Runs CA work on the state's bounded pool; a full queue is a 503 with `Retry-After: 1`.
/// Every handler's blocking work goes through here.
async fn blocking<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce() -> Result<T, CaError> + Send + 'static,
) -> Result<T, ApiError> {
    st.pool.run(f).await?.map_err(ApiError)
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
