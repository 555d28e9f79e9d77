//! The console's HTTP surface: the page's assets, the console's own facts, and the allow-list
//! of CA reads it forwards. Every answer carries the security headers; every request must
//! name the console in its `Host` header; only GET (and HEAD) exist.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::assets::ASSETS;
use super::listen::HostCheck;
use super::upstream::{Identity, Upstream};
use crate::api;
use crate::client::ClientError;
use crate::problem::{problem_response, Problem};

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct Console {
    /// The CA, with the operator credential.
    pub upstream: Upstream,
    /// The `Host` values answered.
    pub hosts: HostCheck,
    /// Whether the CA answered the last forwarded request, so that the log says when it
    /// goes away and comes back, once each, not at every refresh of every open page.
    pub reachable: AtomicBool,
}

type S = Arc<Console>;

/// The Content-Security-Policy of every answer: the page's own files only, no inline script
/// or style, no plugins, no framing, no form posts, no `<base>` games.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The CA reads the console forwards: path and the query parameters it passes on. Nothing
/// else of the CA is reachable through the console.
pub(crate) const ALLOWED: [(&str, &[&str]); 4] = [
    ("/v1/authorities", &[]),
    ("/v1/activity", &[]),
    ("/v1/audit", &["after", "limit"]),
    ("/v1/certificates", &["instance_guid", "app_guid", "limit"]),
];

/// The router; see the module docs.
pub(crate) fn router(state: S) -> Router {
    let mut r = Router::new()
        .route("/console.json", read_only(get(info)))
        .route(ALLOWED[0].0, read_only(get(authorities)))
        .route(ALLOWED[1].0, read_only(get(activity)))
        .route(ALLOWED[2].0, read_only(get(audit)))
        .route(ALLOWED[3].0, read_only(get(certificates)));
    for asset in ASSETS {
        let (content_type, body) = (asset.content_type, asset.body);
        r = r.route(
            asset.path,
            read_only(get(move || async move {
                ([(header::CONTENT_TYPE, content_type)], body).into_response()
            })),
        );
    }
    r.fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_request,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// GET (and the HEAD axum derives from it); any other method is a 405 problem.
fn read_only(m: MethodRouter<S>) -> MethodRouter<S> {
    m.fallback(|| async {
        let mut r = Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "the console is read-only: only GET and HEAD",
        )
        .into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    })
}

async fn not_found() -> Response {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no such page; the console forwards only GET /v1/authorities, /v1/activity, \
         /v1/audit and /v1/certificates",
    )
    .into_response()
}

/// Refuses a request whose `Host` is not the console's (DNS rebinding), and a cross-site
/// request for data (another site's page may link to the console, not read through it).
async fn check_request(State(st): State<S>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if !st.hosts.accepts(host) {
        return Problem::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host `{}` is not this console's address; open it as http://{} (or start it \
                 with --accept-host for another name)",
                host.unwrap_or("")
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(100)
                    .collect::<String>(),
                st.hosts.describe().split(", ").next().unwrap_or("")
            ),
        )
        .into_response();
    }
    let site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok());
    let navigation = req.uri().path() == "/" && req.method() == Method::GET;
    if !navigation && !matches!(site, None | Some("same-origin") | Some("none")) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "a cross-site request: only the console's own page reads through it",
        )
        .into_response();
    }
    next.run(req).await
}

/// The headers of every answer: no caching (each answer is a moment of the CA's state, and
/// nothing of it should outlive the tab in a disk cache), the CSP, no framing, no sniffing,
/// no referrer, no sharing with other origins.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, "no-store");
    set(
        h,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    set(
        h,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    r
}

/// `GET /console.json`: what the page says about its own connection.
#[derive(Debug, Serialize)]
struct Info {
    version: &'static str,
    servers: Vec<String>,
    answered_by: String,
    credential: Identity,
    refresh_seconds: u64,
}

/// How often the page refreshes.
pub(crate) const REFRESH_SECONDS: u64 = 5;

async fn info(State(st): State<S>) -> Json<Info> {
    Json(Info {
        version: crate::cli::VERSION,
        servers: st.upstream.servers(),
        answered_by: st.upstream.current_server(),
        credential: st.upstream.identity(),
        refresh_seconds: REFRESH_SECONDS,
    })
}

/// The query passed on to the CA: only `allowed` keys, each once, re-encoded.
fn forwarded_query(q: Option<&str>, allowed: &[&str]) -> Result<String, Problem> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "query parameter `{}` is not passed on to the CA",
                    k.chars().take(64).collect::<String>()
                ),
            ));
        }
        if seen.iter().any(|s| *s == k) {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("query parameter `{k}` is given twice"),
            ));
        }
        seen.push(k.to_string());
        out.append_pair(&k, &v);
    }
    Ok(out.finish())
}

/// Forwards one allowed GET and answers with the CA's document as this version knows it
/// (parsed into its wire type, so only known fields pass), or the CA's problem, or a 502
/// that says why the CA could not be asked.
async fn forward<R: DeserializeOwned + Serialize>(
    st: &Console,
    index: usize,
    q: Option<String>,
) -> Response {
    let (path, allowed) = ALLOWED[index];
    let query = match forwarded_query(q.as_deref(), allowed) {
        Ok(q) => q,
        Err(p) => return p.into_response(),
    };
    let target = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let answer = st.upstream.get::<R>(&target).await;
    let reached = !matches!(
        answer,
        Err(ClientError::Transport { .. } | ClientError::Decode(_) | ClientError::Setup(_))
    );
    match (
        st.reachable.swap(reached, Ordering::Relaxed),
        reached,
        &answer,
    ) {
        (true, false, Err(e)) => tracing::warn!(error = %e, "the CA does not answer the console"),
        (false, true, _) => tracing::info!("the CA answers the console again"),
        _ => {}
    }
    match answer {
        Ok(doc) => Json(doc).into_response(),
        Err(ClientError::Api(p)) => problem_response(&p),
        Err(e) => {
            tracing::debug!(path = %target, error = %e, "the CA could not be asked");
            Problem::new(StatusCode::BAD_GATEWAY, e.to_string()).into_response()
        }
    }
}

async fn authorities(State(st): State<S>, RawQuery(q): RawQuery) -> Response {
    forward::<api::AuthoritiesResponse>(&st, 0, q).await
}

async fn activity(State(st): State<S>, RawQuery(q): RawQuery) -> Response {
    forward::<api::ActivityResponse>(&st, 1, q).await
}

async fn audit(State(st): State<S>, RawQuery(q): RawQuery) -> Response {
    forward::<api::AuditResponse>(&st, 2, q).await
}

async fn certificates(State(st): State<S>, RawQuery(q): RawQuery) -> Response {
    forward::<api::CertificatesResponse>(&st, 3, q).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_query_parameters_are_passed_on_re_encoded() {
        assert_eq!(
            forwarded_query(Some("after=3&limit=20"), &["after", "limit"]).unwrap(),
            "after=3&limit=20"
        );
        assert_eq!(
            forwarded_query(Some("limit=1%262"), &["limit"]).unwrap(),
            "limit=1%262"
        );
        assert_eq!(forwarded_query(None, &[]).unwrap(), "");
        let p = forwarded_query(Some("wait=30"), &["limit"]).unwrap_err();
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        let p = forwarded_query(Some("limit=1&limit=2"), &["limit"]).unwrap_err();
        assert!(p.detail.contains("twice"), "{}", p.detail);
    }
}
