//! Route handlers. Each one checks the caller's role first, then parses the body, then hands
//! the work to [`crate::ca::Ca`] on a blocking thread (signing and fsync block).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use der::Decode;

use super::problem::{problem_of, ApiError, ApiJson, ApiPath, OptionalJson};
use super::tls::{Caller, PeerIdentity, ServerCert};
use crate::api;
use crate::authority::TrustBundle;
use crate::ca::{issued_view, Ca, CaError};
use crate::ids::{AuthorityId, Role, Serial};
use crate::store::CertificateQuery;

/// Shared state of the API.
pub struct AppState {
    /// The CA.
    pub ca: Arc<Ca>,
    /// The server's own certificate.
    pub server_cert: Arc<ServerCert>,
    /// Failed join attempts per client address.
    pub join_failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Serializes refreshes of the server's own credentials.
    pub refresh_lock: Mutex<()>,
    /// Flips to `true` when the server stops, so held long polls answer at once.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// New state around a CA and its server certificate.
    pub fn new(ca: Arc<Ca>, server_cert: Arc<ServerCert>) -> Self {
        AppState {
            ca,
            server_cert,
            join_failures: Mutex::new(HashMap::new()),
            refresh_lock: Mutex::new(()),
            stopping: tokio::sync::watch::channel(false).0,
        }
    }

    /// Tells held long polls that the server is stopping.
    pub fn shutdown(&self) {
        self.stopping.send_replace(true);
    }
}

type S = Arc<AppState>;

/// The API router, served by [`super::server::serve`].
pub fn router(state: S) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/trust-bundle", get(trust_bundle))
        .route("/v1/instance-certificates", post(instance_certificate))
        .route("/v1/instance-certificates/batch", post(instance_batch))
        .route("/v1/component-certificates", post(component_certificate))
        .route("/v1/join-tokens", post(join_token))
        .route("/v1/join", post(join))
        .route("/v1/cell-credentials", post(own_credential))
        .route("/v1/operator-credentials", post(own_credential))
        .route("/v1/authorities", get(authorities))
        .route("/v1/authorities/prepare", post(prepare))
        .route("/v1/authorities/{id}/activate", post(activate))
        .route("/v1/authorities/{id}/retire", post(retire))
        .route("/v1/certificates", get(certificates))
        .route("/v1/certificates/{serial}/revoke", post(revoke))
        .route("/v1/crl/{id}", get(crl))
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

/// The verified role of the caller, checked again for this request, or 401.
pub struct Authenticated(pub Role);

impl FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self, Self::Rejection> {
        let Some(caller) = parts.extensions.get::<Caller>().cloned() else {
            return Err(CaError::Unauthenticated(
                "this endpoint requires a client certificate issued by this CA".into(),
            )
            .into());
        };
        // The usual case (same bundle as at the handshake) is a revocation lookup, cheap
        // enough for the request path; a changed bundle re-verifies the chain off it.
        let identity = if caller.needs_chain_check(&st.ca) {
            let ca = st.ca.clone();
            tokio::task::spawn_blocking(move || caller.current_identity(&ca))
                .await
                .map_err(|e| CaError::Internal(format!("worker failed: {e}")))?
        } else {
            caller.current_identity(&st.ca)
        };
        match identity {
            PeerIdentity::Verified { role, .. } => Ok(Authenticated(role)),
            PeerIdentity::Untrusted(why) => Err(CaError::Unauthenticated(why).into()),
            PeerIdentity::Anonymous => Err(CaError::Unauthenticated(
                "this endpoint requires a client certificate issued by this CA".into(),
            )
            .into()),
        }
    }
}

macro_rules! role_extractor {
    ($name:ident, $variant:ident, $what:literal) => {
        #[doc = concat!("A caller with the ", $what, " role, or 401/403.")]
        pub struct $name(pub Role);

        impl FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                st: &S,
            ) -> Result<Self, Self::Rejection> {
                let Authenticated(role) = Authenticated::from_request_parts(parts, st).await?;
                match role {
                    Role::$variant(_) => Ok($name(role)),
                    other => Err(CaError::Forbidden(format!(
                        "this endpoint requires the {} role; the caller is a {}",
                        $what,
                        other.kind()
                    ))
                    .into()),
                }
            }
        }
    };
}

role_extractor!(CellCaller, Cell, "cell");
role_extractor!(OperatorCaller, Operator, "operator");

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CaError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CaError::Internal(format!("worker failed: {e}")))?
        .map_err(ApiError)
}

fn created(i: &crate::authority::Issued) -> Response {
    (StatusCode::CREATED, Json(issued_view(i))).into_response()
}

async fn count_response(State(st): State<S>, r: Response) -> Response {
    st.ca.metrics.response(r.status().as_u16());
    r
}

async fn metrics(State(st): State<S>) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let text = blocking(move || {
        let (gens, seq) = ca.authority.generations()?;
        let mut gauges = vec![("lanyard_trust_bundle_sequence".to_string(), seq as f64)];
        for state in ["prepared", "active", "retiring", "retired"] {
            let n = gens
                .iter()
                .filter(|(g, _)| g.state.as_str() == state)
                .count();
            gauges.push((
                format!("lanyard_authority_generations{{state=\"{state}\"}}"),
                n as f64,
            ));
        }
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        if let Some((g, _)) = gens.iter().find(|(g, _)| g.state.as_str() == "active") {
            gauges.push((
                "lanyard_active_root_not_after_seconds".into(),
                unix(g.root.not_after),
            ));
            if let Some(im) = g.intermediates.last() {
                gauges.push((
                    "lanyard_active_intermediate_not_after_seconds".into(),
                    unix(im.not_after),
                ));
            }
        }
        Ok(ca.metrics.render(&gauges))
    })
    .await?;
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    let mut r = OPENAPI.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(st): State<S>) -> Result<Json<serde_json::Value>, ApiError> {
    match st.ca.authority.active() {
        Some((id, _)) => Ok(Json(
            serde_json::json!({"status": "ready", "active_authority": id.to_string()}),
        )),
        None => Err(CaError::NotReady("no active authority generation".into()).into()),
    }
}

async fn instance_certificate(
    State(st): State<S>,
    CellCaller(role): CellCaller,
    ApiJson(req): ApiJson<api::InstanceCertificateRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let issued = blocking(move || ca.issue_instance(&role, &req)).await?;
    Ok(created(&issued))
}

/// Most requests one batch may carry.
pub const MAX_BATCH: usize = 1000;

async fn instance_batch(
    State(st): State<S>,
    CellCaller(role): CellCaller,
    ApiJson(req): ApiJson<api::BatchRequest<serde_json::Value>>,
) -> Result<Json<api::BatchResponse>, ApiError> {
    if req.requests.len() > MAX_BATCH {
        return Err(CaError::TooLarge(format!(
            "{} requests in one batch; the limit is {MAX_BATCH}",
            req.requests.len()
        ))
        .into());
    }
    let items: Vec<Result<api::InstanceCertificateRequest, CaError>> = req
        .requests
        .into_iter()
        .map(|v| {
            serde_json::from_value(v).map_err(|e| {
                CaError::BadRequest(format!("the request does not fit the schema: {e}"))
            })
        })
        .collect();
    let ca = st.ca.clone();
    let results = blocking(move || ca.issue_instance_batch(&role, items)).await?;
    Ok(Json(api::BatchResponse {
        results: results
            .into_iter()
            .map(|r| match r {
                Ok(i) => api::BatchResult {
                    status: 201,
                    certificate: Some(issued_view(&i)),
                    problem: None,
                },
                Err(e) => {
                    let p = problem_of(&e);
                    api::BatchResult {
                        status: p.status,
                        certificate: None,
                        problem: Some(p),
                    }
                }
            })
            .collect(),
    }))
}

async fn component_certificate(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    ApiJson(req): ApiJson<api::ComponentCertificateRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let issued = blocking(move || ca.issue_component(&role, &req)).await?;
    Ok(created(&issued))
}

async fn join_token(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    ApiJson(req): ApiJson<api::JoinTokenRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let t = blocking(move || ca.create_join_token(&role, &req)).await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

/// Failed join attempts one address may make per minute before getting 429.
const JOIN_FAILURES_PER_MINUTE: u32 = 20;

fn join_allowed(st: &AppState, ip: IpAddr) -> bool {
    let mut m = st.join_failures.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    m.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
    m.get(&ip)
        .is_none_or(|(_, n)| *n < JOIN_FAILURES_PER_MINUTE)
}

fn join_failed(st: &AppState, ip: IpAddr) {
    st.ca.metrics.join_failed();
    // (The count lives for a minute from the first failure.)
    let mut m = st.join_failures.lock().unwrap_or_else(|p| p.into_inner());
    let e = m.entry(ip).or_insert((Instant::now(), 0));
    e.1 += 1;
}

async fn join(
    State(st): State<S>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let ip = caller
        .map(|c| c.addr.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    // Authentication comes first: a bad or missing token is a 401 whatever the body says.
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let token_ok = match &token {
        Some(t) => {
            let (ca, t) = (st.ca.clone(), t.clone());
            blocking(move || ca.check_join_token(&t)).await
        }
        None => Err(ApiError(CaError::Unauthenticated(
            "a join token is required: `Authorization: Bearer <token>`".into(),
        ))),
    };
    if let Err(e) = token_ok {
        // Only failures count, so a valid token is never slowed down by someone's guessing.
        if !join_allowed(&st, ip) {
            return Err(CaError::RateLimited(
                "too many failed join attempts from this address; wait a minute".into(),
            )
            .into());
        }
        join_failed(&st, ip);
        return Err(e);
    }
    let token = token.unwrap_or_default();
    let bytes = super::problem::read_body(request).await?;
    let req: api::CsrRequest = super::problem::parse_json(&bytes)?;
    let ca = st.ca.clone();
    match blocking(move || ca.join(&token, &req)).await {
        Ok(i) => Ok(created(&i)),
        Err(e) => {
            if matches!(e.0, CaError::Unauthenticated(_)) {
                join_failed(&st, ip);
            }
            Err(e)
        }
    }
}

async fn own_credential(
    State(st): State<S>,
    Authenticated(role): Authenticated,
    uri: axum::http::Uri,
    ApiJson(req): ApiJson<api::CsrRequest>,
) -> Result<Response, ApiError> {
    let wanted = if uri.path().ends_with("cell-credentials") {
        "cell"
    } else {
        "operator"
    };
    if role.kind() != wanted {
        return Err(CaError::Forbidden(format!(
            "this endpoint requires the {wanted} role; the caller is a {}",
            role.kind()
        ))
        .into());
    }
    let ca = st.ca.clone();
    let issued = blocking(move || ca.renew_own_credential(&role, &req)).await?;
    Ok(created(&issued))
}

async fn authorities(
    State(st): State<S>,
    _op: OperatorCaller,
) -> Result<Json<api::AuthoritiesResponse>, ApiError> {
    let ca = st.ca.clone();
    Ok(Json(blocking(move || ca.authorities_view()).await?))
}

async fn prepare(
    State(st): State<S>,
    _op: OperatorCaller,
    OptionalJson(_body): OptionalJson<api::PrepareRequest>,
) -> Result<Response, ApiError> {
    let ca = st.ca.clone();
    let view = blocking(move || {
        let rec = ca.authority.prepare()?;
        tracing::info!(authority = %rec.id, "authority prepared by operator");
        ca.authority_view_of(rec.id)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

fn parse_authority(id: &str) -> Result<AuthorityId, CaError> {
    id.parse()
        .map_err(|_| CaError::NotFound(format!("authority {id} does not exist")))
}

/// A rotation step on one generation, as the operator asked for it.
#[derive(Debug, Clone, Copy)]
enum StepKind {
    Activate,
    Retire,
}

async fn rotation_step(
    st: S,
    id: String,
    force: bool,
    step: StepKind,
) -> Result<Json<api::AuthorityView>, ApiError> {
    let id = parse_authority(&id)?;
    let ca = st.ca.clone();
    let view = blocking(move || {
        match step {
            StepKind::Activate => ca.authority.activate(id, force)?,
            StepKind::Retire => ca.authority.retire(id, force)?,
        };
        tracing::info!(authority = %id, force, step = ?step, "rotation step by operator");
        ca.authority_view_of(id)
    })
    .await?;
    if matches!(step, StepKind::Activate) {
        // Move the server's own certificate and the local operator credential right away.
        super::server::refresh_local_credentials(&st).await;
    }
    Ok(Json(view))
}

async fn activate(
    State(st): State<S>,
    _op: OperatorCaller,
    ApiPath(id): ApiPath,
    OptionalJson(body): OptionalJson<api::ForceRequest>,
) -> Result<Json<api::AuthorityView>, ApiError> {
    rotation_step(st, id, body.force, StepKind::Activate).await
}

async fn retire(
    State(st): State<S>,
    _op: OperatorCaller,
    ApiPath(id): ApiPath,
    OptionalJson(body): OptionalJson<api::ForceRequest>,
) -> Result<Json<api::AuthorityView>, ApiError> {
    rotation_step(st, id, body.force, StepKind::Retire).await
}

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

async fn certificates(
    State(st): State<S>,
    _op: OperatorCaller,
    RawQuery(q): RawQuery,
) -> Result<Json<api::CertificatesResponse>, ApiError> {
    let m = query_map(q.as_deref())?;
    for k in m.keys() {
        if !["instance_guid", "app_guid", "limit"].contains(&k.as_str()) {
            return Err(CaError::BadRequest(format!("unknown query parameter `{k}`")).into());
        }
    }
    let guid = |k: &str| -> Result<Option<crate::ids::Guid>, CaError> {
        m.get(k)
            .map(|v| v.parse().map_err(|e| CaError::invalid(k, e)))
            .transpose()
    };
    let limit = match m.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                CaError::invalid("limit", format!("`{v}` is not a number from 1 to 1000"))
            })?,
    };
    let query = CertificateQuery {
        instance_guid: guid("instance_guid")?,
        app_guid: guid("app_guid")?,
        limit,
    };
    let ca = st.ca.clone();
    let certificates = blocking(move || ca.list_certificates(&query)).await?;
    Ok(Json(api::CertificatesResponse { certificates }))
}

async fn revoke(
    State(st): State<S>,
    _op: OperatorCaller,
    ApiPath(serial): ApiPath,
    OptionalJson(body): OptionalJson<api::RevokeRequest>,
) -> Result<Json<crate::store::CertificateRecord>, ApiError> {
    let serial: Serial = serial.parse().map_err(|e| CaError::invalid("serial", e))?;
    let ca = st.ca.clone();
    let rec = blocking(move || ca.revoke(&serial, body.reason)).await?;
    tracing::info!(serial = %rec.serial, "certificate revoked");
    Ok(Json(rec))
}

async fn crl(State(st): State<S>, ApiPath(id): ApiPath) -> Result<Response, ApiError> {
    let id = parse_authority(&id)?;
    let ca = st.ca.clone();
    // Short-lived CRLs: relying parties refetch often; the authority caches the signed CRL.
    let der = blocking(move || Ok(ca.authority.crl(id, Duration::from_secs(3600))?)).await?;
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

/// Longest a bundle long poll is held.
pub const MAX_WAIT: u64 = 300;

async fn trust_bundle(
    State(st): State<S>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let m = query_map(q.as_deref())?;
    let wait = match m.get("wait") {
        None => 0,
        // Any whole number counts, however large: above 300 it means 300.
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse::<u64>().unwrap_or(MAX_WAIT).min(MAX_WAIT)
        }
        Some(v) => {
            return Err(
                CaError::invalid("wait", format!("`{v}` is not a whole number of seconds")).into(),
            )
        }
    };
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .parse::<u64>()
                .ok()
        });
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let mut rx = st.ca.authority.subscribe();
    let mut bundle = rx.borrow_and_update().clone();
    if let Some(n) = known {
        if bundle.sequence <= n {
            if wait == 0 {
                return Ok(not_modified(bundle.sequence));
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
            let mut stopping = st.stopping.subscribe();
            loop {
                if *stopping.borrow_and_update() {
                    return Ok(not_modified(bundle.sequence));
                }
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, rx.changed()) => match r {
                        Ok(Ok(())) => {
                            bundle = rx.borrow_and_update().clone();
                            if bundle.sequence > n {
                                break;
                            }
                        }
                        _ => return Ok(not_modified(bundle.sequence)),
                    },
                    _ = stopping.changed() => return Ok(not_modified(bundle.sequence)),
                }
            }
        }
    }
    let refresh = (st.ca.config.rotation.propagation_delay.0.as_secs() / 3).clamp(1, 300);
    let mut resp = if json {
        Json(spiffe_bundle(&bundle, refresh)?).into_response()
    } else {
        let mut r = bundle.pem().into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-pem-file"),
        );
        r
    };
    set_etag(resp.headers_mut(), bundle.sequence);
    Ok(resp)
}

fn set_etag(h: &mut HeaderMap, seq: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{seq}\"")) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

fn not_modified(seq: u64) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    set_etag(r.headers_mut(), seq);
    r
}

fn spiffe_bundle(b: &TrustBundle, refresh: u64) -> Result<api::SpiffeBundle, CaError> {
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut keys = Vec::with_capacity(b.roots.len());
    for root in &b.roots {
        let cert = x509_cert::Certificate::from_der(root)
            .map_err(|e| CaError::Internal(format!("root does not parse: {e}")))?;
        let point = cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        if point.len() != 65 || point[0] != 4 {
            return Err(CaError::Internal(
                "root key is not an uncompressed P-256 point".into(),
            ));
        }
        keys.push(api::SpiffeKey {
            use_: "x509-svid".into(),
            kty: "EC".into(),
            crv: "P-256".into(),
            x: b64url.encode(&point[1..33]),
            y: b64url.encode(&point[33..65]),
            x5c: vec![b64.encode(root)],
        });
    }
    Ok(api::SpiffeBundle {
        keys,
        spiffe_sequence: b.sequence,
        spiffe_refresh_hint: refresh,
    })
}
