//! Reading what a handler left of a request body before its answer goes out.
//!
//! A handler may answer before it reads the body: a 401 or 403 comes from the caller's
//! certificate or token alone. If the server then closed the connection while the client was
//! still writing a large body, the client would see a broken pipe ("send failure") instead of
//! the problem document. So the body is wrapped on the way in, and whatever the handler left
//! unread is read and dropped (frame by frame, nothing buffered, within the body timeout) up
//! to the drain limit, as the 413 path does for a body declared too large.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::problem::{drain, BODY_TIMEOUT, DRAIN_LIMIT};

/// The request body, shared between the handler (which reads it through this) and the
/// middleware (which reads what is left).
struct Shared {
    body: Arc<Mutex<Option<Body>>>,
    /// Whether the handler asked for any of it: an unpolled body of a request that said
    /// `Expect: 100-continue` was never invited, and reading it now would invite it.
    polled: Arc<AtomicBool>,
}

impl HttpBody for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.polled.store(true, Ordering::Relaxed);
        let mut slot = self.body.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.body.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let slot = self.body.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

/// Middleware: runs the handler, then reads and drops what it left of the body (see the
/// module docs) before answering. A body declared larger than the drain limit is left alone:
/// the connection is cut after the answer either way.
pub(super) async fn drain_unread_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let slot = Arc::new(Mutex::new(Some(body)));
    let polled = Arc::new(AtomicBool::new(false));
    let shared = Shared {
        body: slot.clone(),
        polled: polled.clone(),
    };
    let response = next
        .run(Request::from_parts(parts, Body::new(shared)))
        .await;
    let left = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    let invited = polled.load(Ordering::Relaxed) || !expects_continue;
    let drainable = declared.is_none_or(|n| n <= DRAIN_LIMIT as u64);
    if let Some(body) = left {
        if invited && drainable && !body.is_end_stream() {
            let _ = tokio::time::timeout(BODY_TIMEOUT, drain(body)).await;
        }
    }
    response
}
