//! The worker's response stream home to the frontend that sent a request: the handshake naming
//! the request's subject, the prologue (whether the engine took it), `Annotated` items, then
//! `complete_final` and the sentinel. The frontend's `stop` or `kill` on it, or its closing,
//! cancels the request.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::io::{AsyncWriteExt, BufWriter, WriteHalf};
use tokio_util::sync::CancellationToken;

use crate::dynamo::codec::TwoPart;
use crate::dynamo::protocol::Control;
use crate::dynamo::tls::{DynamoTls, PlaneStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the frontend waits for a request's response stream.
#[derive(Debug, Deserialize)]
pub(super) struct CallHomeInfo {
    address: String,
    subject: String,
    /// How this worker dials home (set by the listener, never read off the wire).
    #[serde(skip)]
    pub(super) tls: DynamoTls,
}

/// The response stream home, opened: the handshake and the prologue (`refused`: the engine did
/// not take the request) sent. `None` when the frontend cannot be reached or the request was
/// refused; otherwise the writer for the items, and a token the frontend's `stop` or `kill`, or
/// its closing the connection, cancels.
pub(super) async fn call_home(home: &CallHomeInfo, refused: Option<String>) -> Option<(Home, CancellationToken)> {
    let stream = match home.tls.dial(&home.address, CONNECT_TIMEOUT).await {
        Ok(stream) => stream,
        Err(why) => {
            tracing::warn!(address = %home.address, "a Dynamo frontend's response stream could not be reached: {why}");
            return None;
        }
    };
    let (mut reader, writer) = tokio::io::split(stream);
    let mut writer = BufWriter::new(writer);
    let handshake = json!({"subject": home.subject, "stream_type": "response"});
    let prologue = json!({ "error": refused });
    let mut head = TwoPart::header_only(handshake.to_string()).to_bytes().to_vec();
    head.extend_from_slice(&TwoPart::header_only(prologue.to_string()).to_bytes());
    if writer.write_all(&head).await.is_err() || writer.flush().await.is_err() || refused.is_some() {
        return None;
    }
    let cancelled = CancellationToken::new();
    let watching = cancelled.clone();
    tokio::spawn(async move {
        loop {
            match TwoPart::read(&mut reader, 0).await {
                Ok(frame) => {
                    if matches!(serde_json::from_slice::<Control>(&frame.header), Ok(Control::Stop | Control::Kill)) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        watching.cancel();
    });
    Some((Home(writer), cancelled))
}

/// The writing half of a response stream home.
pub(super) struct Home(BufWriter<WriteHalf<PlaneStream>>);

impl Home {
    /// Sends one item (`Annotated`'s JSON); false once the frontend is gone.
    pub(super) async fn item(&mut self, annotated: Json) -> bool {
        let frame =
            TwoPart { header: Bytes::new(), body: Bytes::from(json!({"data": annotated, "complete_final": false}).to_string()) };
        self.0.write_all(&frame.to_bytes()).await.is_ok() && self.0.flush().await.is_ok()
    }

    /// `complete_final`, the sentinel, and the connection closed.
    pub(super) async fn finish(mut self) {
        let mut tail =
            TwoPart { header: Bytes::new(), body: Bytes::from(json!({"complete_final": true}).to_string()) }.to_bytes().to_vec();
        tail.extend_from_slice(&TwoPart::header_only(serde_json::to_vec(&Control::Sentinel).unwrap_or_default()).to_bytes());
        let _ = self.0.write_all(&tail).await;
        let _ = self.0.flush().await;
        let _ = self.0.shutdown().await;
    }
}
