//! One generation's response stream from a Dynamo worker read into Tritium's token events: the
//! prologue, `LLMEngineOutput` items (new token ids, log-probabilities, the finish reason and
//! usage), `complete_final` and the sentinel. A stream that ends before completing is a lost
//! worker (the router migrates it); a reader that goes away sends the worker Dynamo's `stop`.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tritium_backend_api::llm::{FinishReason, GenerateError, GenerateEvent, GeneratedToken};

use super::call_home::ResponseConnection;
use super::codec::{FrameError, TwoPart};
use super::protocol::{Control, Finish, PayloadCodec, Prologue, StreamItem, decode_item, finish_of};

/// One generation's response stream, read into Tritium's events.
pub(super) struct ResponseStream {
    pub worker: String,
    pub model: String,
    pub prompt_tokens: u32,
    pub max_frame: usize,
    /// The worker answers in the codec it was asked in.
    pub codec: PayloadCodec,
}

type Events = mpsc::UnboundedSender<Result<GenerateEvent, GenerateError>>;

impl ResponseStream {
    fn lost(&self, message: impl Into<String>) -> GenerateError {
        GenerateError::WorkerLost { model: self.model.clone(), worker: self.worker.clone(), message: message.into() }
    }

    pub async fn run(self, connection: Option<ResponseConnection>, events: Events) {
        let Some(mut connection) = connection else {
            let _ = events.send(Err(self.lost("the worker never opened the response stream")));
            return;
        };
        let outcome = tokio::select! {
            outcome = self.read(&mut connection, &events) => outcome,
            // The client went away: tell the worker to stop, as Dynamo's frontend does.
            _ = events.closed() => {
                let stop = TwoPart::header_only(serde_json::to_vec(&Control::Stop).unwrap_or_default()).to_bytes();
                let _ = connection.write_all(&stop).await;
                let _ = connection.shutdown().await;
                return;
            }
        };
        if let Err(error) = outcome {
            let _ = events.send(Err(error));
        }
    }

    async fn read(&self, connection: &mut ResponseConnection, events: &Events) -> Result<(), GenerateError> {
        let prologue = TwoPart::read(connection, self.max_frame).await.map_err(|e| self.lost(e.to_string()))?;
        let prologue: Prologue = serde_json::from_slice(&prologue.header)
            .map_err(|e| self.lost(format!("the worker's prologue is not one Dynamo sends: {e}")))?;
        if let Some(error) = prologue.error {
            return Err(GenerateError::Engine { model: self.model.clone(), message: error });
        }
        let mut generated = 0u32;
        // `complete_final` seen, and the finish reported.
        let (mut finished, mut reported) = (false, false);
        let end = |reported: bool, generated: u32| {
            // A worker that completes without a finish reason stopped of its own accord.
            if !reported {
                let _ = events.send(Ok(GenerateEvent::Finished {
                    reason: FinishReason::Stop,
                    prompt_tokens: self.prompt_tokens,
                    completion_tokens: generated,
                    cached_tokens: 0,
                    queued_for: Duration::ZERO,
                }));
            }
            Ok(())
        };
        loop {
            let frame = match TwoPart::read(connection, self.max_frame).await {
                Ok(frame) => frame,
                Err(FrameError::Closed) if finished || reported => return end(reported, generated),
                Err(e) => return Err(self.lost(format!("the response stream ended before the generation completed: {e}"))),
            };
            if frame.body.is_empty() {
                // A control frame: the sentinel closes a completed stream.
                match serde_json::from_slice::<Control>(&frame.header) {
                    Ok(Control::Sentinel) if finished => return end(reported, generated),
                    _ => continue,
                }
            }
            let item: StreamItem = decode_item(&frame.body, self.codec)
                .map_err(|e| self.lost(format!("a response frame is not one Dynamo sends: {e}")))?;
            if item.complete_final {
                finished = true;
                continue;
            }
            let Some(annotated) = item.data else { continue };
            if let Some(error) = annotated.error_text() {
                return Err(GenerateError::Engine { model: self.model.clone(), message: error });
            }
            let Some(output) = annotated.data else { continue };
            let logprobs = output.log_probs.unwrap_or_default();
            let mut alternatives = output.top_logprobs.unwrap_or_default().into_iter();
            for (i, id) in output.token_ids.iter().enumerate() {
                generated += 1;
                // Most likely first, as Tritium's engines list them.
                let mut top: Vec<(u32, f32)> =
                    alternatives.next().unwrap_or_default().iter().map(|t| (t.token_id, t.logprob as f32)).collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1));
                let token = GeneratedToken {
                    id: *id,
                    logprob: logprobs.get(i).map(|&p| p as f32),
                    top_logprobs: top,
                    prompt_cached: None,
                    prompt_pinned: None,
                    stop: false,
                };
                if events.send(Ok(GenerateEvent::Token(token))).is_err() {
                    return Ok(());
                }
            }
            if let Some(reason) = &output.finish_reason {
                let reason = match finish_of(reason) {
                    Finish::Done(reason) => reason,
                    Finish::Error(message) => return Err(GenerateError::Engine { model: self.model.clone(), message }),
                };
                let usage = output.completion_usage.unwrap_or_default();
                let cached = usage.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
                let _ = events.send(Ok(GenerateEvent::Finished {
                    reason,
                    prompt_tokens: usage.prompt_tokens.unwrap_or(self.prompt_tokens),
                    completion_tokens: usage.completion_tokens.unwrap_or(generated),
                    cached_tokens: cached,
                    queued_for: Duration::ZERO,
                }));
                reported = true;
                if reason == FinishReason::Cancelled {
                    return Ok(());
                }
            }
        }
    }
}
