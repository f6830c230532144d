//! The HTTP port's connections (HTTP/1.1 with keep-alive, and h2c), with the same bounds as the
//! gRPC port: connections open at once (the listener is not read past the limit), a handshake
//! deadline (no request by then: closed), an idle deadline (no byte either way and no request
//! running: closed), streams per HTTP/2 connection, and request bodies charged, as they arrive,
//! to the server-wide byte budget the gRPC port uses, next to the per-request body limit.
//! axum's own `serve` has none of these.
//!
//! With [`GrpcCalls`], HTTP/2 requests of content type `application/grpc` go to the gRPC routes
//! (guarded as on the gRPC port: its byte budget, message size and restricted groups), the way
//! Dynamo's frontend serves KServe gRPC on its HTTP port.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::unread;
use crate::config::{HttpLimits, TransportConfig};
use crate::grpc::transport::SharedRoutes;
use crate::connection::{Counted, Watch, accept, configure};
use crate::grpc::budget::ByteBudget;

/// Serves `router` on `listener` within `limits`, charging request bodies to `budget`, until
/// `shutdown` completes; then stops accepting and lets the requests in flight finish.
/// With `tls`, each connection's TLS handshake runs in its own task, within the header deadline.
pub async fn serve_limited(
    listener: TcpListener,
    router: axum::Router,
    grpc: Option<GrpcCalls>,
    limits: HttpLimits,
    budget: Arc<ByteBudget>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header deadline bounds each request's head, not only the first (the handshake deadline
    // below): hyper starts it whenever the connection waits for a request, so an idle keep-alive
    // connection is closed after it too. Left unset, hyper would apply its own 30 s.
    builder.http1().timer(TokioTimer::new()).keep_alive(true).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(limits.max_concurrent_streams);
    if let Some(GrpcCalls { transport, .. }) = &grpc {
        // Tensors cross as on the gRPC port: its windows and frame size (the Dynamo variables included).
        builder
            .http2()
            .initial_connection_window_size(transport.initial_connection_window_size)
            .initial_stream_window_size(transport.initial_stream_window_size)
            .adaptive_window(transport.adaptive_window)
            .max_frame_size(transport.max_frame_size);
    }
    let grpc = grpc.map(|calls| calls.routes);
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let mut shutdown = pin!(shutdown);
    loop {
        let Some((stream, slot)) = accept(&listener, &slots, &mut shutdown, "HTTP").await else { break };
        configure(&stream, None);
        let watch = Watch {
            calls: Arc::default(),
            open: Arc::default(),
            activity: Arc::default(),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            flags: ("--http-header-timeout", "--http-idle-timeout"),
        };
        let activity = Arc::clone(&watch.activity);
        let service = Requests {
            router: router.clone(),
            grpc: grpc.clone(),
            budget: Arc::clone(&budget),
            idle_timeout: limits.idle_timeout,
            calls: Arc::clone(&watch.calls),
            open: Arc::clone(&watch.open),
        };
        let (builder, stopping, tls) = (Arc::clone(&builder), stopping.clone(), tls.clone());
        connections.spawn(async move {
            let Some(socket) = crate::tls::handshake(stream, tls.as_ref(), watch.header_timeout, "HTTP").await else {
                drop(slot);
                return;
            };
            let io = TokioIo::new(Counted::new(socket, activity));
            let connection = builder.serve_connection(io, service);
            let mut connection = pin!(connection);
            tokio::select! {
                finished = connection.as_mut() => {
                    if let Err(e) = finished {
                        tracing::debug!("HTTP connection: {e}");
                    }
                }
                () = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
                why = watch.silent() => tracing::debug!("closed an HTTP connection: {why}"),
            }
            drop(slot);
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One connection's requests, into the axum router, with their bodies charged to the budget and
/// watched (`unread`): a body that stops arriving fails after the idle deadline, and one the
/// response leaves unread is drained or closes the connection cleanly.
#[derive(Clone)]
struct Requests {
    router: axum::Router,
    grpc: Option<SharedRoutes>,
    budget: Arc<ByteBudget>,
    idle_timeout: Option<std::time::Duration>,
    calls: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

impl hyper::service::Service<Request<Incoming>> for Requests {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        let running = Running(Arc::clone(&self.open));
        if let Some(grpc) = &self.grpc
            && is_grpc(&request)
        {
            let call = grpc(request);
            return Box::pin(async move {
                let response = call.await;
                drop(running);
                response.map(|response| response.map(Body::new))
            });
        }
        let request = request.map(|body| Body::new(ChargedBody { inner: body, budget: Arc::clone(&self.budget), charged: 0 }));
        let (request, settle) = unread::watch(request, self.idle_timeout);
        let router = self.router.clone();
        Box::pin(async move {
            let mut response = router.oneshot(request).await;
            if let (Some(settle), Ok(response)) = (settle, response.as_mut()) {
                settle.settle(response);
            }
            drop(running);
            response
        })
    }
}

/// gRPC calls served on the HTTP port: the gRPC routes, and the gRPC port's settings.
pub struct GrpcCalls {
    pub routes: SharedRoutes,
    pub transport: TransportConfig,
}

/// A gRPC call: HTTP/2 (gRPC has no HTTP/1.1 form) and a content type of `application/grpc` or
/// `application/grpc+…` (gRPC-Web, which this port does not speak, stays with the HTTP routes).
fn is_grpc<B>(request: &Request<B>) -> bool {
    let content_type = request.headers().get(http::header::CONTENT_TYPE).map(|v| v.as_bytes()).unwrap_or_default();
    request.version() == http::Version::HTTP_2
        && content_type.starts_with(b"application/grpc")
        && !content_type.starts_with(b"application/grpc-web")
}

/// Counts a request as running (for the idle deadline) until its response is produced.
struct Running(Arc<AtomicU64>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a request body over the server-wide budget ends with (the handler reading it answers
/// with a client error that carries this text).
#[derive(Debug, thiserror::Error)]
#[error("the server is holding too many request bytes (--max-buffered-request-bytes); try again later")]
pub struct BudgetExhausted;

/// A request body whose bytes are charged to the budget as they arrive and given back when the
/// body is dropped (once the handler has read it).
struct ChargedBody {
    inner: Incoming,
    budget: Arc<ByteBudget>,
    charged: u64,
}

impl http_body::Body for ChargedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let bytes = data.len() as u64;
                    if !this.budget.take(bytes) {
                        return Poll::Ready(Some(Err(Box::new(BudgetExhausted))));
                    }
                    this.charged += bytes;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ChargedBody {
    fn drop(&mut self) {
        self.budget.give_back(self.charged);
    }
}
