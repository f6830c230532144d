//! The frontend's response-stream server: Dynamo workers answer each request by opening a TCP
//! connection to it and naming the request's subject in a handshake frame. Each connection is
//! handed to the request waiting for that subject; one naming no waiting request, or sending no
//! handshake within [`HANDSHAKE_TIMEOUT`], is closed. Under `DYN_TCP_TLS_*` the server speaks
//! TLS (as Dynamo's own frontend's does), and the frontend dials workers over TLS: both sides of
//! this process's Dynamo planes are kept here, in [`DynamoTls`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::BufReader;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::codec::TwoPart;
use super::protocol::Handshake;
use super::tls::{DynamoTls, PlaneStream};

/// As Dynamo's own server waits.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A handshake is a small JSON header.
const MAX_HANDSHAKE_BODY: usize = 0;
/// What one read of a response stream takes in at most: a worker writes each token's frame
/// apart, a few hundred bytes, and read unbuffered each cost three system calls (prefix, header,
/// body). A frame over it is read past the buffer.
const RESPONSE_READ_BUFFER: usize = 8 * 1024;

/// A response stream as its request reads it: buffered, and writable (a `stop` goes back on it).
pub type ResponseConnection = BufReader<PlaneStream>;

#[derive(Debug)]
pub struct CallHome {
    address: SocketAddr,
    /// The largest frame this frontend's Dynamo plane reads or sends.
    max_message: usize,
    pending: Mutex<HashMap<String, oneshot::Sender<ResponseConnection>>>,
    tls: DynamoTls,
}

impl CallHome {
    /// Binds on `host` (Dynamo's `DYN_TCP_RESPONSE_STREAM_HOST`) and an ephemeral port and
    /// accepts until `stop`; frames to and from Dynamo workers are bounded by `max_message`; `tls`
    /// is how this process's Dynamo planes accept and dial.
    pub async fn bind(
        host: IpAddr,
        max_message: usize,
        tls: DynamoTls,
        stop: CancellationToken,
    ) -> std::io::Result<Arc<CallHome>> {
        let listener = TcpListener::bind(SocketAddr::new(host, 0)).await?;
        if let Some(warning) = tls.lopsided() {
            tracing::warn!("{warning}");
        }
        let home = Arc::new(CallHome { address: listener.local_addr()?, max_message, pending: Mutex::default(), tls });
        let accepting = Arc::clone(&home);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let home = Arc::clone(&accepting);
                        tokio::spawn(async move { home.hand_over(stream, peer).await });
                    }
                    Err(e) => {
                        tracing::warn!("accepting a Dynamo response stream failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(home)
    }

    /// The largest Dynamo frame this frontend reads or sends.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// How this process's Dynamo planes accept and dial.
    pub fn tls(&self) -> &DynamoTls {
        &self.tls
    }

    /// Where workers call home, as request control messages name it.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Waits for the connection naming `subject`; dropping the guard forgets the subject.
    pub fn expect(self: &Arc<CallHome>, subject: String) -> Expected {
        let (sender, receiver) = oneshot::channel();
        self.pending.lock().insert(subject.clone(), sender);
        Expected { home: Arc::clone(self), subject, receiver: Some(receiver) }
    }

    async fn hand_over(&self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let Some(stream) = self.tls.accept(stream, peer, "Dynamo response streams").await else { return };
        let mut stream = BufReader::with_capacity(RESPONSE_READ_BUFFER, stream);
        let handshake = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TwoPart::read(&mut stream, MAX_HANDSHAKE_BODY)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => {
                tracing::warn!(%peer, "a Dynamo response stream sent no handshake: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "a Dynamo response stream sent no handshake within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        let subject = match serde_json::from_slice::<Handshake>(&handshake.header) {
            Ok(handshake) => handshake.subject,
            Err(e) => {
                tracing::warn!(%peer, "a Dynamo response stream's handshake is not one: {e}");
                return;
            }
        };
        let waiting = self.pending.lock().remove(&subject);
        match waiting {
            Some(sender) => {
                let _ = sender.send(stream);
            }
            None => tracing::debug!(%peer, subject, "a Dynamo response stream for no waiting request was closed"),
        }
    }
}

/// A request's claim on its response connection.
pub struct Expected {
    home: Arc<CallHome>,
    subject: String,
    receiver: Option<oneshot::Receiver<ResponseConnection>>,
}

impl Expected {
    /// The connection, or `None` when none came within `timeout`.
    pub async fn connection(&mut self, timeout: Duration) -> Option<ResponseConnection> {
        let receiver = self.receiver.as_mut()?;
        tokio::time::timeout(timeout, receiver).await.ok()?.ok()
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.home.pending.lock().remove(&self.subject);
    }
}
