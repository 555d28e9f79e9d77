//! Anonymous clients cannot starve the CA: with the anonymous connection budget taken by
//! held long polls, operators and cells are still served, a further anonymous connection is
//! refused with a 503, and anonymous service comes back once the polls end.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{raw, TestCa};
use lanyard::api;

/// The anonymous connection budget of the server under test.
const ANONYMOUS_CAP: usize = 20;
/// Long polls opened beyond it.
const EXTRA: usize = 5;

/// Waits until `cond` holds, checking every few milliseconds, for at most `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_anonymous_long_polls_do_not_keep_cells_and_operators_out() {
    let ca = TestCa::start_with(&[(
        "listen",
        &format!("max_anonymous_connections = {ANONYMOUS_CAP}"),
    )]);
    // Joining is anonymous at the TLS layer, so the cell joins before the flood.
    let cell = ca.join_cell("cell-1").await;
    let operator = ca.operator();
    let (seq, _) = ca
        .anonymous()
        .trust_bundle(None, 0, false)
        .await
        .unwrap()
        .unwrap();

    // More held long polls than the budget, each on its own connection.
    let refused = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let polls: Vec<_> = (0..ANONYMOUS_CAP + EXTRA)
        .map(|_| {
            let client = ca.anonymous();
            let (refused, finished) = (refused.clone(), finished.clone());
            tokio::spawn(async move {
                let r = client.trust_bundle(Some(seq), 300, false).await;
                if matches!(&r, Err(e) if e.to_string().contains("503")) {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
                finished.fetch_add(1, Ordering::SeqCst);
                r.map(|_| ()).map_err(|e| e.to_string())
            })
        })
        .collect();
    wait_until(
        "the polls beyond the budget are refused",
        Duration::from_secs(60),
        || {
            let n = refused.load(Ordering::SeqCst);
            async move { n == EXTRA }
        },
    )
    .await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        EXTRA,
        "only the polls beyond the budget ended; the others are held"
    );

    // Authenticated callers are served on their own budget.
    let t = Instant::now();
    let authorities: api::AuthoritiesResponse = operator.get("/v1/authorities").await.unwrap();
    println!(
        "operator request with the anonymous budget taken: {:?}",
        t.elapsed()
    );
    assert!(!authorities.authorities.is_empty());
    let t = Instant::now();
    let issued = cell.issue_instance(1).await.unwrap();
    println!(
        "cell issuance with the anonymous budget taken: {:?}",
        t.elapsed()
    );
    assert!(!issued.certificate_chain.is_empty());
    // An agent's long poll (it presents its cell credential) is held and answered too.
    let held = cell.client.trust_bundle(Some(seq), 1, false).await.unwrap();
    assert!(held.is_none(), "no bundle change, so 304");

    // A further anonymous connection is refused with a 503 that says when to retry.
    let (status, ct, _, headers) = raw(&ca, None, "GET", "/v1/trust-bundle", None, &[]).await;
    assert_eq!(status, 503);
    assert_eq!(ct, "application/problem+json");
    assert_eq!(headers["retry-after"], "1");

    // Once the polls end (their connections close), anonymous clients are served again.
    for p in &polls {
        p.abort();
    }
    for p in polls {
        let _ = p.await;
    }
    wait_until(
        "anonymous requests are served again",
        Duration::from_secs(60),
        || {
            let ca = &ca;
            async move {
                let (status, ..) = raw(ca, None, "GET", "/v1/trust-bundle", None, &[]).await;
                status == 200
            }
        },
    )
    .await;
}
