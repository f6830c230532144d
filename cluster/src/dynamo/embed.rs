//! Embeddings from Dynamo workers whose card has the `Embedding` type and takes tokens: the
//! frontend tokenizes, the worker gets Dynamo's `PreprocessedEmbeddingRequest` (one token list
//! per input) and answers on its response stream with `Annotated<EmbeddingsEngineOutput>` items
//! (`{"embeddings": […], "prompt_tokens", "total_tokens"}`), then `complete_final`. Dynamo
//! 1.6.1's workers (vLLM's handler) send each vector as base64 of little-endian `f32`s, which is
//! what its frontend reads; a plain array of numbers is read too.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tritium_backend_api::llm::GenerateError;

use super::call_home::ResponseConnection;
use super::items::{ItemError, Items};
use super::protocol::PayloadCodec;

/// Dynamo's `PreprocessedEmbeddingRequest` (`annotations` has no default there: it is sent).
pub fn embedding_request(model: &str, inputs: &[Vec<u32>]) -> Json {
    json!({"token_ids": inputs, "model": model, "encoding_format": null, "dimensions": null, "annotations": []})
}

/// Dynamo's `EmbeddingsEngineOutput`.
#[derive(Debug, Default, Deserialize)]
pub struct EmbeddingsOutput {
    #[serde(default)]
    pub embeddings: Vec<Vector>,
}

/// One vector as a worker sends it.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Vector {
    /// Base64 of little-endian `f32`s (OpenAI's `encoding_format: base64`).
    Base64(String),
    Numbers(Vec<f64>),
}

impl Vector {
    fn floats(self) -> Result<Vec<f32>, String> {
        match self {
            Vector::Numbers(numbers) => Ok(numbers.into_iter().map(|x| x as f32).collect()),
            Vector::Base64(text) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| format!("an embedding is not base64: {e}"))?;
                if bytes.len() % 4 != 0 {
                    return Err(format!("an embedding of {} bytes is not a whole number of f32s", bytes.len()));
                }
                Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
        }
    }
}

/// One embedding call's response stream.
pub struct EmbeddingStream<'a> {
    pub worker: &'a str,
    pub model: &'a str,
    /// Inputs sent: the worker must answer with as many vectors.
    pub count: usize,
    /// Bound on the bytes of the whole stream (each frame is bounded by it too).
    pub max_bytes: usize,
    pub codec: PayloadCodec,
}

impl EmbeddingStream<'_> {
    fn lost(&self, message: impl Into<String>) -> GenerateError {
        GenerateError::WorkerLost { model: self.model.to_string(), worker: self.worker.to_string(), message: message.into() }
    }

    fn engine(&self, message: impl Into<String>) -> GenerateError {
        GenerateError::Engine { model: self.model.to_string(), message: message.into() }
    }

    /// The vectors, one per input, in order.
    pub async fn read(&self, connection: Option<ResponseConnection>) -> Result<Vec<Vec<f32>>, GenerateError> {
        let error = |e: ItemError| match e {
            ItemError::Lost(message) => self.lost(message),
            ItemError::Engine(message) => self.engine(message),
        };
        let mut items = Items::open(connection, self.max_bytes, self.codec).await.map_err(error)?;
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(self.count);
        let mut received = 0usize;
        while let Some((output, size)) = items.next::<EmbeddingsOutput>().await.map_err(error)? {
            received = received.saturating_add(size);
            if received > self.max_bytes {
                return Err(self.engine(format!("the worker's answer is over the {} bytes a message may have", self.max_bytes)));
            }
            if vectors.len() + output.embeddings.len() > self.count {
                return Err(self.engine(format!("the worker answered more than the {} embeddings asked for", self.count)));
            }
            for vector in output.embeddings {
                vectors.push(vector.floats().map_err(|e| self.engine(e))?);
            }
        }
        if vectors.len() != self.count {
            return Err(self.engine(format!("the worker answered {} embeddings for {} inputs", vectors.len(), self.count)));
        }
        Ok(vectors)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dynamo::protocol::StreamItem;

    #[test]
    fn the_request_carries_one_token_list_per_input_and_the_fields_dynamo_requires() {
        let request = embedding_request("e5", &[vec![1, 2], vec![3]]);
        assert_eq!(request["token_ids"], json!([[1, 2], [3]]));
        assert_eq!(request["model"], "e5");
        assert_eq!(request["annotations"], json!([]));
    }

    #[test]
    fn an_item_of_embeddings_reads_as_dynamo_writes_it() {
        let body = br#"{"data":{"data":{"embeddings":[[0.5,-1.0],[2.0,0.0]],"prompt_tokens":3,"total_tokens":3}},"complete_final":false}"#;
        let item: StreamItem<EmbeddingsOutput> = serde_json::from_slice(body).unwrap();
        let output = item.data.unwrap().data.unwrap();
        let floats: Vec<Vec<f32>> = output.embeddings.into_iter().map(|v| v.floats().unwrap()).collect();
        assert_eq!(floats, vec![vec![0.5, -1.0], vec![2.0, 0.0]]);
    }

    #[test]
    fn base64_vectors_read_as_vllms_handler_writes_them() {
        // struct.pack("<2f", 0.5, -1.0), base64-encoded.
        let body = br#"{"data":{"data":{"embeddings":["AAAAPwAAgL8="],"prompt_tokens":2,"total_tokens":2}}}"#;
        let item: StreamItem<EmbeddingsOutput> = serde_json::from_slice(body).unwrap();
        let vector = item.data.unwrap().data.unwrap().embeddings.pop().unwrap();
        assert_eq!(vector.floats().unwrap(), vec![0.5, -1.0]);
        assert!(Vector::Base64("AAAA/w=".into()).floats().is_err());
        assert!(Vector::Base64("AAA=".into()).floats().is_err(), "two bytes are no f32");
    }
}
