//! Request bodies a response leaves unread, and bodies that stop arriving.
//!
//! An HTTP/1.1 connection carries its next request only once the rest of the current body has
//! been read off it. A handler that answers early (an unknown model or route, a restricted API,
//! a 413 on the declared length) drops the body unread; hyper then closes the connection after
//! the response, and a client that was not told (`Connection: close`) sends its next request
//! into a closing socket: a broken pipe. So every request body is watched: once the response is
//! ready, a body the handler dropped before its end is read and discarded in the background when
//! at most [`DRAIN_BYTES`] of its declared length are left (the connection stays open), and
//! otherwise the response says `Connection: close` (the rest is still read for a moment, up to
//! [`LINGER_BYTES`], so a client still sending is not reset before it reads the answer). A body
//! read to its end costs two small allocations, an atomic store and a load (about 0.1 µs).
//!
//! A body that stops arriving ends with [`BodyStalled`] after the idle deadline
//! (`--http-idle-timeout`): a request waiting on its body counts as running, which keeps its
//! connection from the idle deadline, so without this a client could hold a connection and a
//! request forever by never finishing a body.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};

/// A declared remainder up to this is read and discarded, and the connection kept.
const DRAIN_BYTES: u64 = 64 << 10;
/// How long that remainder has to arrive before the connection is closed after all.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// With `Connection: close`, the bytes read and discarded before closing, at most.
const LINGER_BYTES: u64 = 1 << 20;
/// With `Connection: close`, how long they are read, at most.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// What a request body ends with when no byte of it arrived for the idle deadline.
#[derive(Debug, thiserror::Error)]
#[error("no byte of the request body arrived for {} ms (--http-idle-timeout)", .0.as_millis())]
pub struct BodyStalled(Duration);

/// What the watched body and the request's [`Settle`] share.
#[derive(Default)]
struct Shared {
    /// The body was read to its end.
    ended: AtomicBool,
    /// The rest of a body the handler dropped before its end.
    left: Mutex<Option<Left>>,
}

struct Left {
    body: Body,
    /// Its declared length less what the handler read (`None` when chunked).
    remaining: Option<u64>,
    /// It ended with an error (the connection cannot carry another request).
    failed: bool,
}

/// Wraps the body of `request` (when it has one) for [`Settle::settle`], ending it with
/// [`BodyStalled`] when nothing of it arrives for `idle`.
pub fn watch(request: Request<Body>, idle: Option<Duration>) -> (Request<Body>, Option<Settle>) {
    if http_body::Body::is_end_stream(request.body()) {
        return (request, None);
    }
    let shared = Arc::new(Shared::default());
    let settle = Settle { shared: Arc::clone(&shared), http1: request.version() <= Version::HTTP_11 };
    let request = request
        .map(|inner| Body::new(Watched { inner: Some(inner), shared, failed: false, idle, stalled: None, arrived: false }));
    (request, Some(settle))
}

/// What to do, once the response is ready, about the request body it may have left unread.
pub struct Settle {
    shared: Arc<Shared>,
    http1: bool,
}

impl Settle {
    /// Drains a small declared remainder in the background, or marks `response` `Connection:
    /// close` and lingers; nothing when the body was read to its end, when the handler still
    /// holds it (it may read on while the response streams), or on HTTP/2 (dropping a body
    /// resets only its stream).
    pub fn settle(self, response: &mut Response<Body>) {
        if self.shared.ended.load(Ordering::Acquire) || !self.http1 {
            return;
        }
        let Some(left) = self.shared.left.lock().take() else { return };
        if !left.failed && left.remaining.is_some_and(|n| n <= DRAIN_BYTES) {
            tokio::spawn(discard(left.body, DRAIN_BYTES, DRAIN_TIME));
            return;
        }
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        if !left.failed {
            tokio::spawn(discard(left.body, LINGER_BYTES, LINGER_TIME));
        }
    }
}

/// Reads `body` to its end and throws it away, stopping after `most` bytes or `within`.
async fn discard(mut body: Body, most: u64, within: Duration) {
    let read_all = async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |data| data.len() as u64);
            if read > most {
                return false;
            }
        }
        true
    };
    if !tokio::time::timeout(within, read_all).await.unwrap_or(false) {
        tracing::debug!("closing an HTTP connection whose unread request body did not end within {most} bytes or {within:?}");
    }
}

/// A request body that records reaching its end and, dropped before it, hands its rest back.
struct Watched {
    /// `None` only once dropped.
    inner: Option<Body>,
    shared: Arc<Shared>,
    failed: bool,
    idle: Option<Duration>,
    /// The idle deadline, armed the first time the body has to wait for the client.
    stalled: Option<Pin<Box<Sleep>>>,
    /// A frame arrived since the deadline was last set.
    arrived: bool,
}

impl Watched {
    /// Whether the client has sent nothing of the body for the idle deadline (checked only when
    /// the body waits, so a body that arrives whole never arms a timer).
    fn stalled(&mut self, cx: &mut Context<'_>) -> Option<Duration> {
        let idle = self.idle?;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if std::mem::take(&mut self.arrived) {
            timer.as_mut().reset(Instant::now() + idle);
        }
        timer.as_mut().poll(cx).is_ready().then_some(idle)
    }
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.arrived = true;
                if inner.is_end_stream() {
                    this.shared.ended.store(true, Ordering::Release);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.shared.ended.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Pending => match this.stalled(cx) {
                Some(idle) => {
                    this.failed = true;
                    Poll::Ready(Some(Err(axum::Error::new(BodyStalled(idle)))))
                }
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(http_body::Body::size_hint).unwrap_or_default()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.shared.ended.load(Ordering::Relaxed) {
            return;
        }
        let Some(body) = self.inner.take() else { return };
        // hyper's body counts down its declared length as it is read.
        let remaining = http_body::Body::size_hint(&body).exact();
        *self.shared.left.lock() = Some(Left { body, remaining, failed: self.failed });
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn post(body: Body) -> Request<Body> {
        Request::post("/").body(body).expect("request")
    }

    /// A body of `chunks` that then waits forever (a client that stops sending).
    fn unfinished(chunks: Vec<&'static [u8]>) -> Body {
        let frames = chunks.into_iter().map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(c))));
        Body::new(StreamBody::new(futures::stream::iter(frames).chain(futures::stream::pending())))
    }

    /// A body of one frame with its exact length (as hyper counts a declared length down), telling
    /// `done` once read to its end.
    struct Declared {
        data: Option<Bytes>,
        done: Arc<tokio::sync::Notify>,
    }

    impl http_body::Body for Declared {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.data.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => {
                    self.done.notify_one();
                    Poll::Ready(None)
                }
            }
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.data.as_ref().map_or(0, |data| data.len() as u64))
        }
    }

    fn connection(response: &Response<Body>) -> Option<&str> {
        response.headers().get(header::CONNECTION).map(|v| v.to_str().expect("ascii"))
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_changes_nothing() {
        let (request, settle) = watch(post(Body::from("hello")), None);
        let bytes = request.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"hello");
        let mut response = Response::new(Body::empty());
        settle.expect("a body").settle(&mut response);
        assert_eq!(connection(&response), None);
    }

    #[tokio::test]
    async fn no_body_is_not_watched() {
        let (_, settle) = watch(post(Body::empty()), None);
        assert!(settle.is_none());
    }

    #[tokio::test]
    async fn a_small_unread_rest_is_drained_and_the_connection_kept() {
        let drained = Arc::new(tokio::sync::Notify::new());
        let body = Declared { data: Some(Bytes::from(vec![7u8; 1000])), done: Arc::clone(&drained) };
        let (request, settle) = watch(post(Body::new(body)), None);
        drop(request);
        let mut response = Response::new(Body::empty());
        settle.expect("a body").settle(&mut response);
        assert_eq!(connection(&response), None);
        tokio::time::timeout(Duration::from_secs(10), drained.notified()).await.expect("read to its end");
    }

    #[tokio::test]
    async fn a_large_or_unsized_unread_rest_closes_the_connection() {
        let declared = DRAIN_BYTES as usize + 1;
        let (request, settle) = watch(post(Body::from(vec![7u8; declared])), None);
        drop(request);
        let mut response = Response::new(Body::empty());
        settle.expect("a body").settle(&mut response);
        assert_eq!(connection(&response), Some("close"));

        let (request, settle) = watch(post(unfinished(vec![b"abc"])), None);
        drop(request);
        let mut response = Response::new(Body::empty());
        settle.expect("a body").settle(&mut response);
        assert_eq!(connection(&response), Some("close"));
    }

    #[tokio::test]
    async fn a_body_still_held_by_the_handler_is_left_alone() {
        let (request, settle) = watch(post(unfinished(vec![b"abc"])), None);
        let mut response = Response::new(Body::empty());
        settle.expect("a body").settle(&mut response);
        assert_eq!(connection(&response), None);
        drop(request);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_fails_after_the_idle_deadline() {
        let idle = Duration::from_secs(5);
        let (request, settle) = watch(post(unfinished(vec![b"ab", b"cd"])), Some(idle));
        let mut body = request.into_body();
        for _ in 0..2 {
            assert!(body.frame().await.expect("a frame").is_ok());
        }
        let started = Instant::now();
        let error = body.frame().await.expect("an error").expect_err("stalled");
        assert!(started.elapsed() >= idle);
        assert!(error.to_string().contains("--http-idle-timeout"), "{error}");
        drop(body);
        // A failed body is not drained: the connection closes, and says so.
        let mut response = Response::new(Body::empty());
        settle.expect("a body").settle(&mut response);
        assert_eq!(connection(&response), Some("close"));
    }
}
