//! A response stream read item by item, for the calls whose items are not token deltas
//! (embeddings, tensors): the prologue, then `Annotated<T>` frames until `complete_final` and the
//! sentinel (or the worker closing after `complete_final`). Every frame is bounded.

use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use super::call_home::ResponseConnection;
use super::codec::{FrameError, TwoPart};
use super::protocol::{Control, PayloadCodec, Prologue, StreamItem, decode_item};

/// Why reading stopped short.
#[derive(Debug, PartialEq)]
pub enum ItemError {
    /// The stream broke or carried what Dynamo does not send: the worker may be gone.
    Lost(String),
    /// The worker's engine reported an error.
    Engine(String),
}

/// The items of one response stream.
pub struct Items {
    connection: ResponseConnection,
    max_frame: usize,
    codec: PayloadCodec,
    finished: bool,
}

impl Items {
    /// Reads the prologue of the stream the worker opened (`None`: it never did).
    pub async fn open(connection: Option<ResponseConnection>, max_frame: usize, codec: PayloadCodec) -> Result<Items, ItemError> {
        let mut connection = connection.ok_or_else(|| ItemError::Lost("the worker never opened the response stream".into()))?;
        let prologue = TwoPart::read(&mut connection, max_frame).await.map_err(|e| ItemError::Lost(e.to_string()))?;
        let prologue: Prologue = serde_json::from_slice(&prologue.header)
            .map_err(|e| ItemError::Lost(format!("the worker's prologue is not one Dynamo sends: {e}")))?;
        if let Some(error) = prologue.error {
            return Err(ItemError::Engine(error));
        }
        Ok(Items { connection, max_frame, codec, finished: false })
    }

    /// Tells the worker to stop (its reader went away), as Dynamo's frontend does, and closes.
    pub async fn stop(&mut self) {
        let stop = TwoPart::header_only(serde_json::to_vec(&Control::Stop).unwrap_or_default()).to_bytes();
        let _ = self.connection.write_all(&stop).await;
        let _ = self.connection.shutdown().await;
    }

    /// The next item's data and the frame's size in bytes; `None` once the stream completed.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<(T, usize)>, ItemError> {
        loop {
            let frame = match TwoPart::read(&mut self.connection, self.max_frame).await {
                Ok(frame) => frame,
                Err(FrameError::Closed) if self.finished => return Ok(None),
                Err(e) => return Err(ItemError::Lost(format!("the response stream ended before it completed: {e}"))),
            };
            if frame.body.is_empty() {
                match serde_json::from_slice::<Control>(&frame.header) {
                    Ok(Control::Sentinel) if self.finished => return Ok(None),
                    _ => continue,
                }
            }
            let size = frame.header.len() + frame.body.len();
            let item: StreamItem<T> = decode_item(&frame.body, self.codec)
                .map_err(|e| ItemError::Lost(format!("a response frame is not one Dynamo sends: {e}")))?;
            if item.complete_final {
                self.finished = true;
                continue;
            }
            let Some(annotated) = item.data else { continue };
            if let Some(error) = annotated.error_text() {
                return Err(ItemError::Engine(error));
            }
            if let Some(data) = annotated.data {
                return Ok(Some((data, size)));
            }
        }
    }
}
