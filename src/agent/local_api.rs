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
use crate::ca::CaError;
use crate::http::problem::{ApiError, ApiJson, ApiPath};
use crate::ids::Guid;
use crate::timefmt::rfc3339;

/// The local API router.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/v1/instances", get(list))
        .route(
            "/v1/instances/{guid}",
            put(put_instance).delete(delete_instance),
        )
        .fallback(|| async { ApiError(CaError::NotFound("no such endpoint".into())) })
        .method_not_allowed_fallback(|| async {
            ApiError(CaError::MethodNotAllowed(
                "this endpoint does not take that method".into(),
            ))
        })
        .with_state(agent)
}

fn parse_guid(s: &str) -> Result<Guid, ApiError> {
    s.parse()
        .map_err(|e| ApiError(CaError::invalid("instance_guid", e)))
}

async fn list(State(agent): State<Arc<Agent>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "instances": agent.statuses() }))
}

async fn put_instance(
    State(agent): State<Arc<Agent>>,
    ApiPath(guid): ApiPath,
    ApiJson(spec): ApiJson<InstanceSpec>,
) -> Result<Response, ApiError> {
    let guid = parse_guid(&guid)?;
    for (field, v) in [
        ("app_guid", &spec.app_guid),
        ("space_guid", &spec.space_guid),
        ("organization_guid", &spec.organization_guid),
    ] {
        v.parse::<Guid>()
            .map_err(|e| ApiError(CaError::invalid(field, e)))?;
    }
    if let Some(ip) = &spec.container_ip {
        ip.parse::<std::net::IpAddr>().map_err(|_| {
            ApiError(CaError::invalid(
                "container_ip",
                format!("`{ip}` is not an IPv4 or IPv6 address"),
            ))
        })?;
    }
    for (i, r) in spec.internal_routes.iter().flatten().enumerate() {
        r.parse::<crate::ids::Name>()
            .map_err(|e| ApiError(CaError::invalid(format!("internal_routes[{i}]"), e)))?;
    }
    let not_after = agent
        .put_instance(guid.clone(), spec)
        .await
        .map_err(|e| match e {
            // A refusal by the CA keeps its meaning; anything else (unreachable, 5xx, our
            // own credential refused) means the agent cannot serve this now.
            PutError::Ca(r) => match r.status {
                Some(422) => CaError::invalid("instance", r.message),
                Some(400) => CaError::BadRequest(r.message),
                _ => CaError::NotReady(format!("the CA did not issue a certificate: {r}")),
            },
            PutError::Local(m) => CaError::Internal(m),
            PutError::Gone => CaError::Conflict(
                "the instance was deleted while its certificate was issued".into(),
            ),
        })?;
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
        },
    }))
    .into_response())
}

async fn delete_instance(
    State(agent): State<Arc<Agent>>,
    ApiPath(guid): ApiPath,
) -> Result<Response, ApiError> {
    let guid = parse_guid(&guid)?;
    match agent.delete_instance(&guid).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiError(CaError::NotFound(format!("no instance {guid}")))),
        Err(e) => Err(ApiError(CaError::Internal(e))),
    }
}

/// Serves the local API until `shutdown` completes.
pub async fn serve(
    agent: Arc<Agent>,
    listen: Listen,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let app = router(agent);
    match listen {
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| AgentError::Runtime(format!("cannot listen on {addr}: {e}")))?;
            tracing::info!(address = %addr, "agent local API listening");
            axum::serve(l, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|e| AgentError::Runtime(e.to_string()))
        }
        Listen::Unix(path) => {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            // A socket left by a previous run would make bind fail.
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path).map_err(|e| {
                AgentError::Runtime(format!("cannot listen on {}: {e}", path.display()))
            })?;
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660));
            }
            tracing::info!(socket = %path.display(), "agent local API listening");
            let r = axum::serve(l, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|e| AgentError::Runtime(e.to_string()));
            let _ = std::fs::remove_file(&path);
            r
        }
    }
}
