//! The agent's local API: plain HTTP on a Unix socket (or loopback port), problem+json errors
//! exactly like the CA's.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};

use super::config::Listen;
use super::{files, Agent, AgentError, InstanceSpec, PutError};
use crate::ids::Guid;
use crate::problem::{ApiJson, ApiPath, Problem};
use crate::timefmt::rfc3339;

/// Failures of a local API request; each variant is one status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LocalApiError {
    /// 400: the CA found the request malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 404: no such instance or endpoint.
    #[error("{0}")]
    NotFound(String),
    /// 405: the endpoint exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the instance changed under the request.
    #[error("{0}")]
    Conflict(String),
    /// 422: a well-formed but invalid value; names the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// 503: the CA did not issue, so the agent cannot serve this now.
    #[error("{0}")]
    NotReady(String),
    /// 500: the agent's own fault (disk, shutdown); logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl LocalApiError {
    /// A 422 for `field`.
    pub(crate) fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        LocalApiError::Invalid {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// The status of each error.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            LocalApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            LocalApiError::NotFound(_) => StatusCode::NOT_FOUND,
            LocalApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            LocalApiError::Conflict(_) => StatusCode::CONFLICT,
            LocalApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            LocalApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            LocalApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<LocalApiError> for Problem {
    fn from(e: LocalApiError) -> Self {
        match e {
            LocalApiError::Internal(cause) => Problem::internal(cause),
            other => Problem::new(other.status(), other.to_string()),
        }
    }
}

impl IntoResponse for LocalApiError {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

impl From<PutError> for LocalApiError {
    fn from(e: PutError) -> Self {
        match e {
            // A refusal by the CA keeps its meaning; anything else (unreachable, 5xx, our
            // own credential refused) means the agent cannot serve this now.
            PutError::Ca(r) => match r.status {
                Some(422) => LocalApiError::invalid("instance", r.message),
                Some(400) => LocalApiError::BadRequest(r.message),
                _ => LocalApiError::NotReady(format!("the CA did not issue a certificate: {r}")),
            },
            PutError::Local(m) => LocalApiError::Internal(m),
            PutError::Gone => LocalApiError::Conflict(
                "the instance was deleted while its certificate was issued".into(),
            ),
        }
    }
}

/// The local API router.
pub(crate) fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(metrics))
        .route("/v1/instances", get(list))
        .route(
            "/v1/instances/{guid}",
            put(put_instance).delete(delete_instance),
        )
        .fallback(|| async { LocalApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            LocalApiError::MethodNotAllowed("this endpoint does not take that method".into())
        })
        .with_state(agent)
}

fn parse_guid(s: &str) -> Result<Guid, LocalApiError> {
    s.parse()
        .map_err(|e| LocalApiError::invalid("instance_guid", e))
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Result<Response, LocalApiError> {
    let text = agent
        .render_metrics()
        .map_err(|e| LocalApiError::Internal(format!("encoding metrics: {e}")))?;
    let mut r = text.into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        ),
    );
    Ok(r)
}

async fn list(State(agent): State<Arc<Agent>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "instances": agent.statuses() }))
}

async fn put_instance(
    State(agent): State<Arc<Agent>>,
    ApiPath(guid): ApiPath,
    ApiJson(spec): ApiJson<InstanceSpec>,
) -> Result<Response, LocalApiError> {
    let guid = parse_guid(&guid)?;
    for (field, v) in [
        ("app_guid", &spec.app_guid),
        ("space_guid", &spec.space_guid),
        ("organization_guid", &spec.organization_guid),
    ] {
        v.parse::<Guid>()
            .map_err(|e| LocalApiError::invalid(field, e))?;
    }
    if let Some(ip) = &spec.container_ip {
        ip.parse::<std::net::IpAddr>().map_err(|_| {
            LocalApiError::invalid(
                "container_ip",
                format!("`{ip}` is not an IPv4 or IPv6 address"),
            )
        })?;
    }
    for (i, r) in spec.internal_routes.iter().flatten().enumerate() {
        r.parse::<crate::ids::Name>()
            .map_err(|e| LocalApiError::invalid(format!("internal_routes[{i}]"), e))?;
    }
    let not_after = agent.put_instance(guid.clone(), spec).await?;
    let dir = agent.instance_dir(&guid);
    let path = |n: &str| dir.join(n).display().to_string();
    Ok(Json(serde_json::json!({
        "instance_guid": guid.to_string(),
        "not_after": rfc3339(not_after),
        "paths": {
            "certificate": path(files::CERT_FILE),
            "private_key": path(files::KEY_FILE),
            "trust_bundle": path(files::BUNDLE_FILE),
        },
        "environment": {
            "CF_INSTANCE_CERT": path(files::CERT_FILE),
            "CF_INSTANCE_KEY": path(files::KEY_FILE),
            "CF_SYSTEM_CERT_PATH": dir.join(files::SYSTEM_CERTS_DIR).display().to_string(),
            "SPIFFE_ENDPOINT_SOCKET": format!("unix://{}", super::workload_api::socket_path(&dir).display()),
        },
    }))
    .into_response())
}

async fn delete_instance(
    State(agent): State<Arc<Agent>>,
    ApiPath(guid): ApiPath,
) -> Result<Response, LocalApiError> {
    let guid = parse_guid(&guid)?;
    match agent.delete_instance(&guid).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(LocalApiError::NotFound(format!("no instance {guid}"))),
        Err(e) => Err(LocalApiError::Internal(e)),
    }
}

/// Serves the local API until `shutdown` completes.
pub(crate) async fn serve(
    agent: Arc<Agent>,
    listen: Listen,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let app = router(agent);
    match listen {
        Listen::Tcp(addr) => {
            let l = crate::runtime::listen_tcp(addr)
                .map_err(|e| AgentError::Runtime(format!("cannot listen on {addr}: {e}")))?;
            let local = l
                .local_addr()
                .map_err(|e| AgentError::Runtime(format!("cannot listen on {addr}: {e}")))?;
            tracing::info!(address = %local, "agent local API listening");
            crate::runtime::announce_listening(&format!("http://{local}"));
            axum::serve(l, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|e| AgentError::Runtime(e.to_string()))
        }
        Listen::Unix(path) => {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            // `run` checked that no agent answers here and removed a stale socket: a bind
            // that still fails (another agent got there meanwhile) is an error, never a
            // takeover.
            let l = tokio::net::UnixListener::bind(&path).map_err(|e| {
                AgentError::Runtime(format!("cannot listen on {}: {e}", path.display()))
            })?;
            let bound = super::exclusive::socket_identity(&path);
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660));
            }
            tracing::info!(socket = %path.display(), "agent local API listening");
            crate::runtime::announce_listening(&format!("unix:{}", path.display()));
            let r = axum::serve(l, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|e| AgentError::Runtime(e.to_string()));
            super::exclusive::release_socket(&path, bound);
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_like_the_cas() {
        let d = Problem::from(LocalApiError::invalid("instance_guid", "not a GUID")).document();
        assert_eq!(d.status, 422);
        assert_eq!(d.type_, "https://lanyard.dev/problems/invalid-value");
        assert_eq!(d.detail, "instance_guid: not a GUID");
        let d = Problem::from(LocalApiError::NotFound("no such endpoint".into())).document();
        assert_eq!((d.status, d.title.as_str()), (404, "Not found"));
        let d = Problem::from(LocalApiError::Internal("disk /x full".into())).document();
        assert_eq!(d.status, 500);
        assert!(!d.detail.contains("disk"), "{}", d.detail);
    }

    #[test]
    fn a_ca_refusal_keeps_its_meaning_and_anything_else_is_503() {
        let refusal = |status| {
            PutError::Ca(crate::agent::CaRefusal {
                status,
                message: "app_guid: bad".into(),
            })
        };
        assert_eq!(
            LocalApiError::from(refusal(Some(422))).status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            LocalApiError::from(refusal(Some(400))).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            LocalApiError::from(refusal(None)).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            LocalApiError::from(PutError::Gone).status(),
            StatusCode::CONFLICT
        );
    }
}
