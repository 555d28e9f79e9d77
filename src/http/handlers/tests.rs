//! HTTP edge cases driven through the router in-process, without a TLS listener: a request
//! with no `Caller` extension is anonymous, and one with the operator's identity is what
//! the accept loop would attach after a handshake with the operator credential.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use rustls::pki_types::CertificateDer;
use tower::ServiceExt;

use super::{router, AppState};
use crate::ca::Ca;
use crate::config::Config;
use crate::http::tls::{identify, Caller, PeerIdentity};
use crate::x509::inspect::parse_pem_certs;

/// A freshly initialized CA in a temporary state directory (kept alive with it).
struct TestCa {
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

impl TestCa {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lanyard.toml");
        let state_dir = dir.path().join("state");
        // The dev configuration, with its state in the temporary directory and no schedule.
        let text = include_str!("../../../ca-config/lanyard.toml")
            .replace(
                "state_dir = \"./data\"",
                &format!("state_dir = {:?}", state_dir.display().to_string()),
            )
            .replace(
                "kek_file = \"./data/kek\"",
                &format!(
                    "kek_file = {:?}",
                    dir.path().join("kek").display().to_string()
                ),
            )
            .replace("automatic = true", "automatic = false");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let (ca, _) = Ca::init(&config).unwrap();
        TestCa {
            state: Arc::new(AppState::in_process(Arc::new(ca))),
            _dir: dir,
        }
    }

    /// The identity the accept loop would attach for the local operator credential.
    fn operator(&self) -> Caller {
        let ca = self.state.ca();
        let pem = std::fs::read(ca.config().operator_credential_dir().join("cert.pem")).unwrap();
        let certs: Vec<CertificateDer<'static>> = parse_pem_certs(&pem)
            .unwrap()
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let identity = identify(ca, &certs);
        assert!(
            matches!(identity, PeerIdentity::Verified { .. }),
            "{identity:?}"
        );
        Caller {
            addr: "127.0.0.1:40000".parse().unwrap(),
            identity,
            certs: Arc::new(certs),
        }
    }

    async fn send(&self, req: Request<Body>) -> Response {
        router(self.state.clone()).oneshot(req).await.unwrap()
    }
}

fn request(method: &str, uri: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn as_operator(mut req: Request<Body>, ca: &TestCa) -> Request<Body> {
    req.extensions_mut().insert(ca.operator());
    req
}

/// Asserts a problem+json answer with `status` and the type slug, and returns its detail.
async fn problem(r: Response, status: StatusCode, slug: &str) -> String {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = axum::body::to_bytes(r.into_body(), usize::MAX)
        .await
        .unwrap();
    let p: crate::api::Problem = serde_json::from_slice(&body).unwrap();
    assert_eq!(p.status, status.as_u16());
    assert_eq!(p.type_, format!("https://lanyard.dev/problems/{slug}"));
    p.detail
}

#[tokio::test]
async fn bad_json_and_unknown_fields_are_400_problems() {
    let ca = TestCa::new();
    let bad = as_operator(request("POST", "/v1/join-tokens", "{not json"), &ca);
    let detail = problem(ca.send(bad).await, StatusCode::BAD_REQUEST, "bad-request").await;
    assert!(detail.contains("not valid JSON"), "{detail}");

    let unknown = as_operator(
        request(
            "POST",
            "/v1/join-tokens",
            r#"{"role": "cell", "name": "c1", "colour": "blue"}"#,
        ),
        &ca,
    );
    let detail = problem(
        ca.send(unknown).await,
        StatusCode::BAD_REQUEST,
        "bad-request",
    )
    .await;
    assert!(detail.contains("colour"), "{detail}");

    // The same body without the stray field is accepted: the 400s above were about the body.
    let good = as_operator(
        request(
            "POST",
            "/v1/join-tokens",
            r#"{"role": "cell", "name": "c1"}"#,
        ),
        &ca,
    );
    assert_eq!(ca.send(good).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_problems() {
    let ca = TestCa::new();
    let r = ca.send(request("GET", "/v1/no-such-thing", "")).await;
    problem(r, StatusCode::NOT_FOUND, "not-found").await;
    let r = ca.send(request("GET", "/v1/join-tokens", "")).await;
    problem(r, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed").await;
}

#[tokio::test]
async fn a_cell_endpoint_without_a_client_certificate_is_401() {
    let ca = TestCa::new();
    let r = ca
        .send(request("POST", "/v1/instance-certificates", "{}"))
        .await;
    let detail = problem(r, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    assert!(detail.contains("client certificate"), "{detail}");
    // An operator is authenticated but has the wrong role.
    let r = ca
        .send(as_operator(
            request("POST", "/v1/instance-certificates", "{}"),
            &ca,
        ))
        .await;
    problem(r, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn the_trust_bundle_carries_its_sequence_as_etag_and_answers_304_when_unchanged() {
    let ca = TestCa::new();
    let r = ca.send(request("GET", "/v1/trust-bundle", "")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::ETAG], "\"1\"");
    assert_eq!(r.headers()[header::CONTENT_TYPE], "application/x-pem-file");
    let body = axum::body::to_bytes(r.into_body(), usize::MAX)
        .await
        .unwrap();
    assert!(body.starts_with(b"-----BEGIN CERTIFICATE-----"));

    let again = Request::builder()
        .uri("/v1/trust-bundle")
        .header(header::IF_NONE_MATCH, "\"1\"")
        .body(Body::empty())
        .unwrap();
    let r = ca.send(again).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()[header::ETAG], "\"1\"");

    // An older sequence gets the current bundle at once.
    let stale = Request::builder()
        .uri("/v1/trust-bundle")
        .header(header::IF_NONE_MATCH, "\"0\"")
        .body(Body::empty())
        .unwrap();
    assert_eq!(ca.send(stale).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_full_blocking_queue_answers_503_with_retry_after_and_work_resumes_after() {
    let ca = TestCa::new();
    // One thread, no queue: one job in flight fills the pool.
    let state = Arc::new(AppState::in_process_with_pool(
        ca.state.ca().clone(),
        super::BlockingPool::new(1, 0),
    ));
    let (release, held) = std::sync::mpsc::channel::<()>();
    let job = {
        let state = state.clone();
        tokio::spawn(async move {
            state
                .pool
                .run(move || {
                    let _ = held.recv();
                })
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while state.pool.free() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "job never admitted");
        tokio::task::yield_now().await;
    }
    // A CRL is signed on the pool (metrics are not: they are read from memory).
    let get = || Request::get("/v1/crl/1").body(Body::empty()).unwrap();
    let r = router(state.clone()).oneshot(get()).await.unwrap();
    assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    let detail = problem(r, StatusCode::SERVICE_UNAVAILABLE, "not-ready").await;
    assert!(detail.contains("retry"), "{detail}");

    release.send(()).unwrap();
    job.await.unwrap().unwrap();
    let r = router(state).oneshot(get()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
