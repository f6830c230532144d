//! The HTTP/2 server under the gRPC services: hyper's HTTP/2 connection driven directly, and a
//! router that matches the service name in the path.
//!
//! tonic's `transport::Server` wraps every call in layers this server does not use: a boxed clone
//! of its service stack, an axum router, the peer's address put in the request's extensions, a
//! boxed request body and an error-recovery layer. A ModelInfer through them cost about 7,000
//! more instructions than through this module (bench/README.md, "Transport").
//! What tonic's server does that matters here is kept: the HTTP/2 settings, TCP_NODELAY and TCP
//! keepalive, the client's `grpc-timeout`, a maximum connection age, UNIMPLEMENTED for unknown
//! services, and a shutdown that sends GOAWAY and lets calls in flight finish.
//!
//! What a client can make the server hold is bounded here, each bound from a flag
//! ([`TransportConfig`]): connections open at once (the listener is not read past the limit),
//! streams per connection, the server-wide budget of request bytes being received
//! ([`super::budget`]), a handshake deadline (a connection that has sent no call by then is
//! closed) and an idle deadline (one that moved no byte for that long, with no unary call running,
//! is closed). Calls of
//! a restricted protocol group without their header are refused before they reach a handler.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;
use tower::util::BoxCloneSyncService;

use super::budget::{BudgetedBody, ByteBudget, Encoding};
use super::keepalive::Policed;
use crate::api_keys::ApiKeys;
use crate::restricted::RestrictedProtocols;
use crate::config::TransportConfig;
use crate::connection::{Counted, Watch, accept, configure};

type Boxed = BoxCloneSyncService<Request<BudgetedBody>, Response<Body>, Infallible>;
type BoxedFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The gRPC routes, guarded as on the gRPC port, called from another port's connections.
pub type SharedRoutes = Arc<dyn Fn(Request<Incoming>) -> BoxedFuture + Send + Sync>;

/// A gRPC service as tonic's codegen makes one: infallible, named, cheap to clone, its future boxed.
pub trait GrpcService:
    Service<Request<BudgetedBody>, Response = Response<Body>, Error = Infallible, Future: Send + Unpin + 'static>
    + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> GrpcService for T where
    T: Service<Request<BudgetedBody>, Response = Response<Body>, Error = Infallible, Future: Send + Unpin + 'static>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// gRPC services by name. The first one is called directly, with no boxing: it is the one every
/// inference goes to; the others (health, reflection) are boxed.
pub struct Routes<S> {
    main: S,
    others: Arc<[(&'static str, Boxed)]>,
    guard: Arc<Guard>,
    /// Calls this connection has made; a fresh one per connection.
    calls: Arc<AtomicU64>,
    /// Calls whose response has not been produced yet (a running unary call), per connection.
    open: Arc<AtomicU64>,
}

/// What every call is checked against, shared by all connections.
#[derive(Debug)]
struct Guard {
    budget: Arc<ByteBudget>,
    max_message: usize,
    restricted: RestrictedProtocols,
    /// `--api-key`: every call but the health checks must name a key.
    api_keys: Option<Arc<ApiKeys>>,
}

impl<S: Clone> Clone for Routes<S> {
    fn clone(&self) -> Self {
        Routes {
            main: self.main.clone(),
            others: Arc::clone(&self.others),
            guard: Arc::clone(&self.guard),
            calls: Arc::clone(&self.calls),
            open: Arc::clone(&self.open),
        }
    }
}

impl<S: GrpcService> Routes<S> {
    pub fn new(main: S) -> Routes<S> {
        let guard = Guard {
            budget: Arc::new(ByteBudget::new(u64::MAX)),
            max_message: i32::MAX as usize,
            restricted: RestrictedProtocols::default(),
            api_keys: None,
        };
        Routes { main, others: Arc::from([]), guard: Arc::new(guard), calls: Arc::default(), open: Arc::default() }
    }

    /// Adds a service; a name already routed keeps its first service.
    pub fn with<T: GrpcService>(self, service: T) -> Routes<S> {
        let mut others = self.others.to_vec();
        others.push((T::NAME, BoxCloneSyncService::new(service)));
        Routes { others: others.into(), ..self }
    }

    /// Charges request bytes to `budget` and refuses restricted calls without their header.
    pub fn guarded(self, budget: Arc<ByteBudget>, max_message: usize, restricted: RestrictedProtocols) -> Routes<S> {
        Routes { guard: Arc::new(Guard { budget, max_message, restricted, api_keys: None }), ..self }
    }

    /// Asks every call but the health checks for one of `keys` (`authorization: Bearer KEY`).
    pub fn keyed(self, keys: Option<Arc<ApiKeys>>) -> Routes<S> {
        let guard = Guard {
            budget: Arc::clone(&self.guard.budget),
            max_message: self.guard.max_message,
            restricted: self.guard.restricted.clone(),
            api_keys: keys,
        };
        Routes { guard: Arc::new(guard), ..self }
    }

    /// The routes as one shareable function of a request, for the HTTP port, which serves gRPC
    /// calls beside its own (its connections keep their own counts).
    pub fn shared(self) -> SharedRoutes {
        Arc::new(move |request| Box::pin(hyper::service::Service::call(&self, request)))
    }

    /// A copy for one new connection, with its own call counts (made, and running).
    fn for_connection(&self) -> (Routes<S>, Arc<AtomicU64>, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        (Routes { calls: Arc::clone(&calls), open: Arc::clone(&open), ..self.clone() }, calls, open)
    }
}

/// The calls a Kubernetes probe makes, open without a key: gRPC's health service, and KServe's
/// server liveness and readiness.
fn open_without_key(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || matches!(path, "/inference.GRPCInferenceService/ServerLive" | "/inference.GRPCInferenceService/ServerReady")
}

/// Whether a gRPC path, `/package.Service/Method`, names `service`. Compared in place: splitting
/// the path first cost a memchr on every call.
fn routes_to(path: &str, service: &str) -> bool {
    let path = path.as_bytes();
    path.len() > service.len() + 1
        && path[0] == b'/'
        && path[service.len() + 1] == b'/'
        && &path[1..=service.len()] == service.as_bytes()
}

/// The client's deadline (`grpc-timeout`, at most 8 digits and a unit), as gRPC over HTTP/2
/// defines it; a header that does not parse is ignored, as tonic and gRPC's C core do.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match value.as_bytes().last()? {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

impl<S: GrpcService> hyper::service::Service<Request<Incoming>> for Routes<S> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Call<S::Future>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let deadline = grpc_timeout(request.headers()).map(|after| Box::pin(tokio::time::sleep(after)));
        let guard = &self.guard;
        if let Some(keys) = &guard.api_keys
            && !open_without_key(request.uri().path())
        {
            let refused = match keys.admit_headers(request.headers()) {
                crate::api_keys::Access::Granted(scope) => {
                    tracing::debug!(key = %scope.name, path = request.uri().path(), "gRPC call with an API key");
                    // The handlers check the models the call names against it, and traces name the key.
                    request.extensions_mut().insert(tritium_backend_api::trace::ApiKeyName(scope.name.as_str().into()));
                    request.extensions_mut().insert(scope);
                    None
                }
                crate::api_keys::Access::Refused => Some(Status::unauthenticated(crate::api_keys::REFUSAL)),
                limited => Some(Status::resource_exhausted(limited.message())),
            };
            if let Some(refused) = refused {
                return Call { inner: Inner::Done(Some(refused.into_http())), deadline: None, open: None };
            }
        }
        if !guard.restricted.is_empty() {
            let method = request.uri().path().rsplit('/').next().unwrap_or_default();
            if let Err(message) = guard.restricted.check(method, request.headers()) {
                return Call { inner: Inner::Done(Some(Status::unavailable(message).into_http())), deadline: None, open: None };
            }
        }
        let (mut parts, body) = request.into_parts();
        let encoding = Encoding::take_from(&mut parts.headers);
        let body = BudgetedBody::new(body, Arc::clone(&guard.budget), encoding, guard.max_message);
        let request = Request::from_parts(parts, body);
        let path = request.uri().path();
        let inner = if routes_to(path, S::NAME) {
            Inner::Main(self.main.clone().call(request))
        } else if let Some((_, service)) = self.others.iter().find(|(name, _)| routes_to(path, name)) {
            Inner::Other(service.clone().call(request))
        } else {
            Inner::Done(Some(Status::unimplemented("").into_http()))
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        Call { inner, deadline, open: Some(Arc::clone(&self.open)) }
    }
}

enum Inner<F> {
    Main(F),
    Other(BoxedFuture),
    Done(Option<Response<Body>>),
}

/// A call's response, or DEADLINE_EXCEEDED once the client's `grpc-timeout` has passed (the call
/// is then dropped, which cancels it). A streaming call's deadline covers its response headers.
pub struct Call<F> {
    inner: Inner<F>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The connection's running-call count, given back when the call is answered or dropped.
    open: Option<Arc<AtomicU64>>,
}

impl<F> Drop for Call<F> {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<F> Future for Call<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let ready = match &mut this.inner {
            Inner::Main(future) => Pin::new(future).poll(cx),
            Inner::Other(future) => future.as_mut().poll(cx),
            Inner::Done(response) => Poll::Ready(Ok(response.take().unwrap_or_default())),
        };
        if ready.is_ready() {
            return ready;
        }
        match this.deadline.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                this.inner = Inner::Done(None);
                Poll::Ready(Ok(Status::deadline_exceeded("Deadline Exceeded").into_http()))
            }
            _ => Poll::Pending,
        }
    }
}

fn http2_builder(settings: &TransportConfig) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // gRPC clients do not read a Date header; formatting one costs every response a copy.
        .auto_date_header(false)
        .initial_connection_window_size(settings.initial_connection_window_size)
        .initial_stream_window_size(settings.initial_stream_window_size)
        .adaptive_window(settings.adaptive_window)
        .max_frame_size(settings.max_frame_size)
        // hyper's own default is 200; gRPC's servers have none. A bound keeps one connection from
        // holding unbounded state, and the default is far above what one channel multiplexes.
        // Pings are handled under hyper (super::keepalive), as gRPC's servers handle them.
        .max_concurrent_streams(settings.max_concurrent_streams);
    builder
}

/// Serves `routes` on `listener` until `shutdown` completes; then stops accepting, asks every
/// connection to go away, and returns once the calls in flight have finished.
/// With `tls`, each connection's TLS handshake runs in its own task, within the header deadline.
pub async fn serve<S>(
    listener: TcpListener,
    routes: Routes<S>,
    settings: &TransportConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) where
    S: GrpcService,
{
    let builder = http2_builder(settings);
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let mut shutdown = pin!(shutdown);
    loop {
        // At the connection limit the listener is not read: new clients wait in its queue.
        let Some((stream, slot)) = accept(&listener, &slots, &mut shutdown, "gRPC").await else { break };
        configure(&stream, settings.tcp_keepalive);
        let moved = Arc::new(AtomicU64::new(0));
        let (routes, calls, open) = routes.for_connection();
        let watch = Watch {
            calls,
            open,
            activity: Arc::clone(&moved),
            header_timeout: settings.header_timeout,
            idle_timeout: settings.idle_timeout,
            flags: ("--grpc-header-timeout", "--grpc-idle-timeout"),
        };
        let limits = (settings.max_connection_age, settings.max_connection_age_grace);
        let keepalive = settings.keepalive;
        let stopping = stopping.clone();
        let (builder, tls) = (builder.clone(), tls.clone());
        connections.spawn(async move {
            if let Some(socket) = crate::tls::handshake(stream, tls.as_ref(), watch.header_timeout, "gRPC").await {
                let socket = Policed::new(Counted::new(socket, moved), keepalive);
                let connection = builder.serve_connection(TokioIo::new(socket), routes);
                drive(connection, stopping, limits.0, limits.1, watch).await;
            }
            drop(slot);
        });
    }
    // New clients are refused from here on, not left waiting on a listener nobody reads.
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// Runs one connection to its end: GOAWAY at shutdown or at the maximum age, and a forced close
/// once an age's grace period is over.
async fn drive<S>(
    connection: http2::Connection<TokioIo<Policed<Counted>>, Routes<S>, TokioExecutor>,
    stopping: CancellationToken,
    max_age: Option<Duration>,
    grace: Option<Duration>,
    watch: Watch,
) where
    S: GrpcService,
{
    let mut connection = pin!(connection);
    let aged = async {
        match max_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        finished = connection.as_mut() => Ended::Finished(finished),
        () = stopping.cancelled() => Ended::Stopping,
        () = aged => Ended::Aged,
        why = watch.silent() => {
            tracing::debug!("closed a gRPC connection: {why}");
            return;
        }
    };
    let finished = match ended {
        Ended::Finished(finished) => finished,
        Ended::Stopping => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        Ended::Aged => {
            connection.as_mut().graceful_shutdown();
            match grace {
                None => connection.await,
                Some(grace) => match tokio::time::timeout(grace, connection).await {
                    Ok(finished) => finished,
                    Err(_) => {
                        tracing::debug!("closed a gRPC connection past its maximum age and grace");
                        return;
                    }
                },
            }
        }
    };
    if let Err(e) = finished {
        tracing::debug!("gRPC connection: {e}");
    }
}

enum Ended {
    Finished(hyper::Result<()>),
    Stopping,
    Aged,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_str(timeout).expect("a header value"));
        headers
    }

    #[test]
    fn grpc_timeout_reads_every_unit() {
        assert_eq!(grpc_timeout(&headers("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(&headers("3M")), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout(&headers("4S")), Some(Duration::from_secs(4)));
        assert_eq!(grpc_timeout(&headers("250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&headers("99999999u")), Some(Duration::from_micros(99_999_999)));
        assert_eq!(grpc_timeout(&headers("7n")), Some(Duration::from_nanos(7)));
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_timeout_ignores_what_does_not_parse() {
        for bad in ["", "S", "5", "5s", "123456789S", "-5S", "+5S", "5 S", "1.5S", "ééS"] {
            let mut map = HeaderMap::new();
            if let Ok(value) = http::HeaderValue::from_bytes(bad.as_bytes()) {
                map.insert("grpc-timeout", value);
            }
            assert_eq!(grpc_timeout(&map), None, "{bad:?}");
        }
    }

    #[test]
    fn a_path_routes_to_the_service_it_names() {
        let inference = "inference.GRPCInferenceService";
        assert!(routes_to("/inference.GRPCInferenceService/ModelInfer", inference));
        assert!(routes_to("/inference.GRPCInferenceService/", inference));
        for other in [
            "/inference.GRPCInferenceService",
            "/inference.GRPCInferenceServiceX/ModelInfer",
            "/inference.GRPCInference/ModelInfer",
            "inference.GRPCInferenceService/ModelInfer",
            "/grpc.health.v1.Health/Check",
            "/",
            "",
        ] {
            assert!(!routes_to(other, inference), "{other}");
        }
        assert!(routes_to("/grpc.health.v1.Health/Check", "grpc.health.v1.Health"));
    }
}
