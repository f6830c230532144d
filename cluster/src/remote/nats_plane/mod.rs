//! The NATS request plane (`--request-plane nats`, Dynamo's option): frontends reach a worker
//! through subjects on a NATS server instead of the worker's TCP port; the worker binds none.
//!
//! The worker plane's gRPC service runs unchanged over it, so calls, streams, cancellation,
//! errors and the worker token behave exactly as on TCP. A worker subscribes to
//! `tritium.{namespace}.workers.{id}.{nonce}.connect` and advertises `nats:` and that subject's
//! stem in discovery. A client opens a connection by requesting on the connect subject with the
//! inbox it listens on; the worker answers `ok {tunnel subject}` (or `refused: why`), and from
//! then on each side publishes its bytes to the other's subject (see [`tunnel`]). No responder
//! means no worker: the call fails at once as unreachable, and the router retries elsewhere.
//! HTTP/2 keep-alive pings notice a peer that died without a word.

#[cfg(test)]
mod tests;
mod tunnel;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Subscriber};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::io::DuplexStream;
use tonic::transport::{Channel, Endpoint, Uri};

use tunnel::TunnelCount;

/// What advertised addresses on this plane start with.
pub const SCHEME: &str = "nats:";
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times, and how far apart, a dial that finds no listener asks again.
const NO_RESPONDERS_ATTEMPTS: u32 = 4;
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(50);
/// Keep-alive pings on a tunnel: a peer that died is noticed within about their sum.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// The most bytes in one frame (less when the server's own payload limit is lower).
const MAX_CHUNK: usize = 64 << 10;
/// The longest subject a client may ask to be answered on.
const MAX_SUBJECT: usize = 256;

/// A connection to the NATS server the request plane runs over.
pub struct NatsPlane {
    client: Client,
    /// Bytes per frame.
    chunk: usize,
    /// Tunnels this process opened as a client.
    dialed: TunnelCount,
}

impl std::fmt::Debug for NatsPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPlane").field("chunk", &self.chunk).finish_non_exhaustive()
    }
}

impl NatsPlane {
    /// Connects to the NATS server at `url`; `name` is the client name the server shows.
    pub async fn connect(url: &str, name: &str) -> Result<Arc<NatsPlane>, String> {
        Self::connect_reporting(url, name, &crate::health::PlaneHealth::default()).await
    }

    /// [`NatsPlane::connect`], telling `health` when the server refuses the process's
    /// credentials while running, and when it takes them back.
    pub async fn connect_reporting(
        url: &str,
        name: &str,
        health: &crate::health::PlaneHealth,
    ) -> Result<Arc<NatsPlane>, String> {
        let options = ConnectOptions::new()
            .name(format!("tritium-request-plane/{name}"))
            .event_callback(health.nats_events("NATS (request plane)"));
        let (options, used) =
            crate::credentials::nats_options_from_env(options).map_err(|e| format!("--request-plane nats: {e}"))?;
        let client = options
            .connect(url)
            .await
            .map_err(|e| format!("--request-plane nats: connecting to {url} failed: {e}{}", used.hint()))?;
        // Frames fit the server's payload limit, with room for the sequence number.
        let limit = client.server_info().max_payload.saturating_sub(64);
        let chunk = MAX_CHUNK.min(limit).max(1024);
        tracing::info!(%url, "request plane connected to NATS");
        Ok(Arc::new(NatsPlane { client, chunk, dialed: TunnelCount::default() }))
    }

    /// Starts listening as worker `id` of `namespace`, taking at most `max_connections` open
    /// connections at once (more are refused until one closes).
    /// The connection, for Dynamo workers' NATS requests.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn listen(&self, namespace: &str, id: &str, max_connections: usize) -> Result<NatsListener, String> {
        use crate::events::nats::token;
        let stem = format!("tritium.{}.workers.{}.{:016x}", token(namespace), token(id), rand::random::<u64>());
        let connects = self
            .client
            .subscribe(format!("{stem}.connect"))
            .await
            .map_err(|e| format!("--request-plane nats: subscribing failed: {e}"))?;
        // Subscribed on the server before discovery tells anyone where to call.
        self.client.flush().await.map_err(|e| format!("--request-plane nats: {e}"))?;
        Ok(NatsListener {
            client: self.client.clone(),
            chunk: self.chunk,
            stem,
            connects,
            max_connections: max_connections.max(1),
            open: TunnelCount::default(),
            next: AtomicU64::new(0),
        })
    }

    /// Opens a connection to the worker whose subject stem is `stem`.
    async fn dial(&self, stem: &str) -> io::Result<DuplexStream> {
        let inbox = self.client.new_inbox();
        let inbound = self.client.subscribe(inbox.clone()).await.map_err(io::Error::other)?;
        let connect = format!("{stem}.connect");
        // A subscription reaches every server of a NATS cluster a moment after the worker made it
        // (and one server a moment after its flush, under load): "no responders" is asked again a
        // few times before it is believed.
        let mut attempts = 0;
        let reply = loop {
            attempts += 1;
            let asked = tokio::time::timeout(CONNECT_TIMEOUT, self.client.request(connect.clone(), inbox.clone().into()))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no answer on {connect} within {CONNECT_TIMEOUT:?}")))?;
            match asked {
                Ok(reply) => break reply,
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders && attempts < NO_RESPONDERS_ATTEMPTS => {
                    tokio::time::sleep(NO_RESPONDERS_PAUSE).await;
                }
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    return Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("no worker listens on {connect}")));
                }
                Err(e) => return Err(io::Error::other(format!("requesting on {connect}: {e}"))),
            }
        };
        let answer = String::from_utf8_lossy(&reply.payload);
        match answer.strip_prefix("ok ") {
            Some(tunnel) => {
                Ok(tunnel::open(self.client.clone(), tunnel.to_string(), inbound, self.chunk, &self.dialed, tunnel.to_string()))
            }
            None => Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("{connect}: {answer}"))),
        }
    }
}

/// How a process reaches workers: their TCP listeners (over TLS when it has a client side of the
/// worker plane's TLS), and the NATS request plane when it is on it.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    nats: Option<Arc<NatsPlane>>,
    tls: Option<Arc<super::tls::ClientTls>>,
}

impl Dialer {
    /// Workers on their TCP listeners and on the NATS request plane `plane`.
    pub fn nats(plane: Arc<NatsPlane>) -> Dialer {
        Dialer { nats: Some(plane), tls: None }
    }

    /// The same, dialing TCP listeners over TLS with `tls` (plaintext when `None`).
    pub fn with_tls(self, tls: Option<Arc<super::tls::ClientTls>>) -> Dialer {
        Dialer { tls, ..self }
    }

    pub fn nats_plane(&self) -> Option<&Arc<NatsPlane>> {
        self.nats.as_ref()
    }

    pub fn tls(&self) -> Option<&Arc<super::tls::ClientTls>> {
        self.tls.as_ref()
    }

    /// A lazy channel to the worker advertised at `address` on this plane, or `None` when it
    /// is no NATS address (the caller dials TCP).
    pub(crate) fn nats_channel(&self, address: &str) -> Option<Result<Channel, String>> {
        let stem = address.strip_prefix(SCHEME)?;
        Some(match &self.nats {
            None => Err(format!(
                "it serves on the NATS request plane ({address}): start this process with --request-plane nats \
                 and --nats-url"
            )),
            Some(plane) => {
                let connector = Connector { plane: Arc::clone(plane), stem: Arc::from(stem) };
                Ok(Endpoint::from_static("http://worker.nats.invalid")
                    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    .keep_alive_while_idle(true)
                    .connect_with_connector_lazy(connector))
            }
        })
    }
}

/// Opens tunnels for tonic's channel (which reconnects through it after a tunnel breaks).
#[derive(Clone)]
struct Connector {
    plane: Arc<NatsPlane>,
    stem: Arc<str>,
}

impl tower::Service<Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<DuplexStream>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (plane, stem) = (Arc::clone(&self.plane), Arc::clone(&self.stem));
        Box::pin(async move { plane.dial(&stem).await.map(hyper_util::rt::TokioIo::new) })
    }
}

/// A worker's end of the plane: connections arriving on its connect subject.
pub struct NatsListener {
    client: Client,
    chunk: usize,
    stem: String,
    connects: Subscriber,
    max_connections: usize,
    open: TunnelCount,
    next: AtomicU64,
}

impl std::fmt::Debug for NatsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsListener").field("stem", &self.stem).finish_non_exhaustive()
    }
}

impl NatsListener {
    /// What discovery advertises: `nats:` and the subject stem.
    pub fn address(&self) -> String {
        format!("{SCHEME}{}", self.stem)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// The next connection, answering (and skipping) requests it refuses; `None` once the
    /// subscription ends.
    pub async fn accept(&mut self) -> Option<DuplexStream> {
        loop {
            let request = self.connects.next().await?;
            let Some(reply) = request.reply else { continue };
            let answer = match self.admit(&request.payload).await {
                Ok((stream, tunnel)) => Ok((stream, format!("ok {tunnel}"))),
                Err(why) => Err(format!("refused: {why}")),
            };
            let text = match &answer {
                Ok((_, text)) | Err(text) => text.clone(),
            };
            if let Err(e) = self.client.publish(reply, text.into()).await {
                tracing::warn!("answering a request-plane connection failed: {e}");
            }
            match answer {
                Ok((stream, _)) => return Some(stream),
                Err(why) => tracing::warn!(listener = %self.stem, "a request-plane connection was {why}"),
            }
        }
    }

    /// A tunnel to the client that asked to be answered on `payload`, and its subject here.
    async fn admit(&self, payload: &[u8]) -> Result<(DuplexStream, String), String> {
        let send_to = std::str::from_utf8(payload).ok().filter(|s| valid_subject(s)).ok_or_else(|| {
            format!("the reply subject must be a NATS subject of at most {MAX_SUBJECT} bytes without wildcards")
        })?;
        if self.open.get() >= self.max_connections {
            return Err(format!(
                "the worker has {} request-plane connections open (--request-plane-max-connections)",
                self.max_connections
            ));
        }
        let tunnel = format!("{}.tunnel.{}", self.stem, self.next.fetch_add(1, Ordering::Relaxed));
        let inbound = self.client.subscribe(tunnel.clone()).await.map_err(|e| format!("subscribing failed: {e}"))?;
        // The client sends only after the answer, which leaves after the subscription.
        let stream = tunnel::open(self.client.clone(), send_to.to_string(), inbound, self.chunk, &self.open, tunnel.clone());
        Ok((stream, tunnel))
    }

    /// The connections as tonic's server takes them.
    pub fn incoming(self) -> impl futures::Stream<Item = io::Result<DuplexStream>> + Send {
        futures::stream::unfold(self, |mut listener| async move {
            let stream = listener.accept().await?;
            Some((Ok(stream), listener))
        })
    }
}

/// A subject a frame may be published to: tokens without whitespace or wildcards.
fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= MAX_SUBJECT
        && subject
            .split('.')
            .all(|token| !token.is_empty() && !token.chars().any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>'))
}
