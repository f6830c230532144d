//! Text-input Dynamo workers (`model_input: Text`): they take the OpenAI request as the client
//! sent it and answer with OpenAI chunk objects (`chat.completion.chunk` or `text_completion`),
//! one per item of the response stream, as Dynamo 1.6.1's frontend sends and reads them. The
//! chunks are relayed as they come; a client that goes away sends the worker Dynamo's `stop`.

use serde_json::Value as Json;
use tokio::sync::mpsc;
use tritium_backend_api::llm::GenerateError;

use super::call_home::ResponseConnection;
use super::items::{ItemError, Items};
use super::protocol::PayloadCodec;

/// One forwarded request's response stream.
pub struct TextStream {
    pub worker: String,
    pub model: String,
    pub max_frame: usize,
    pub codec: PayloadCodec,
}

type Chunks = mpsc::Sender<Result<Json, GenerateError>>;

impl TextStream {
    fn error(&self, error: ItemError) -> GenerateError {
        match error {
            ItemError::Lost(message) => {
                GenerateError::WorkerLost { model: self.model.clone(), worker: self.worker.clone(), message }
            }
            ItemError::Engine(message) => GenerateError::Engine { model: self.model.clone(), message },
        }
    }

    /// Relays the worker's chunks to `chunks` until the stream completes, fails, or the reader
    /// goes away.
    pub async fn relay(self, connection: Option<ResponseConnection>, chunks: Chunks) {
        let mut items = match Items::open(connection, self.max_frame, self.codec).await {
            Ok(items) => items,
            Err(error) => {
                let _ = chunks.send(Err(self.error(error))).await;
                return;
            }
        };
        loop {
            let next = tokio::select! {
                next = items.next::<Json>() => next,
                () = chunks.closed() => {
                    items.stop().await;
                    return;
                }
            };
            let chunk = match next {
                // An object (chunks, embedding and classification lists), or a rerank's bare list.
                Ok(Some((chunk, _))) if chunk.is_object() || chunk.is_array() => Ok(chunk),
                Ok(Some(_)) => Err(GenerateError::Engine {
                    model: self.model.clone(),
                    message: "the worker sent a chunk that is not an OpenAI object".into(),
                }),
                Ok(None) => return,
                Err(error) => Err(self.error(error)),
            };
            let failed = chunk.is_err();
            if chunks.send(chunk).await.is_err() {
                items.stop().await;
                return;
            }
            if failed {
                return;
            }
        }
    }
}
