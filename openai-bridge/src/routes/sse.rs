//! Server-sent events for streaming completions: `data: {chunk}\n\n` per chunk, then
//! `data: [DONE]\n\n`. The body owns the [`TextStream`], so when hyper drops the body of a client
//! that went away, the sequence is cancelled.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tritium_worker::llm::FinishReason;

use crate::BridgeError;
use crate::pipeline::{TextEvent, TextStream, TokenInfo, Usage};
use crate::protocol::ErrorBody;

/// Turns text events into the chunks of one endpoint.
pub(super) trait ChunkWriter: Send + 'static {
    /// Chunks sent before any text (chat's `role` chunk).
    fn start(&mut self) -> Vec<Bytes> {
        Vec::new()
    }
    /// A chunk of text; `finish` is set on the last one.
    fn delta(&mut self, text: String, tokens: &[TokenInfo], finish: Option<FinishReason>) -> Bytes;
    /// The usage chunk after the last one, when the client asked for it.
    fn usage(&mut self, usage: Usage) -> Bytes;
}

/// One `data:` frame.
pub(super) fn frame<T: Serialize>(chunk: &T) -> Bytes {
    let json = serde_json::to_vec(chunk)
        .unwrap_or_else(|error| format!(r#"{{"error":{{"message":"{error}","type":"server_error"}}}}"#).into_bytes());
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// The SSE response of a stream.
pub(super) fn respond<W: ChunkWriter>(mut writer: W, stream: TextStream, include_usage: bool) -> Response {
    let frames = writer.start().into();
    let state = SseState { stream: Some(stream), writer, include_usage, frames, peeked: None, done: false };
    let body = Body::from_stream(futures::stream::unfold(state, next_frame));
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
        // Proxies such as nginx would otherwise hold the deltas back.
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    (StatusCode::OK, headers, body).into_response()
}

struct SseState<W> {
    /// Dropped as soon as the stream ends, so its observer records the end at once.
    stream: Option<TextStream>,
    writer: W,
    include_usage: bool,
    frames: VecDeque<Bytes>,
    /// An event read ahead while looking for a `Finished` to fold into the last delta.
    peeked: Option<Option<Result<TextEvent, BridgeError>>>,
    done: bool,
}

impl<W: ChunkWriter> SseState<W> {
    fn finish(&mut self, usage: Usage) {
        if self.include_usage {
            self.frames.push_back(self.writer.usage(usage));
        }
        self.end();
    }

    fn end(&mut self) {
        self.frames.push_back(Bytes::from_static(DONE));
        self.done = true;
        self.stream = None;
    }
}

async fn next_frame<W: ChunkWriter>(mut state: SseState<W>) -> Option<(Result<Bytes, Infallible>, SseState<W>)> {
    loop {
        if let Some(frame) = state.frames.pop_front() {
            return Some((Ok(frame), state));
        }
        if state.done {
            return None;
        }
        let event = match state.peeked.take() {
            Some(event) => event,
            None => match state.stream.as_mut() {
                Some(stream) => stream.next().await,
                None => None,
            },
        };
        match event {
            Some(Ok(TextEvent::Delta { text, tokens })) => {
                // The end usually follows the last delta at once (same decode step, or a stop
                // string): then the delta carries the finish reason, as OpenAI's last chunk does.
                let ahead = state.stream.as_mut().and_then(|stream| stream.next().now_or_never());
                match ahead {
                    Some(Some(Ok(TextEvent::Finished { reason, usage }))) => {
                        let chunk = state.writer.delta(text, &tokens, Some(reason));
                        state.frames.push_back(chunk);
                        state.finish(usage);
                    }
                    other => {
                        let chunk = state.writer.delta(text, &tokens, None);
                        state.frames.push_back(chunk);
                        state.peeked = other;
                    }
                }
            }
            Some(Ok(TextEvent::Finished { reason, usage })) => {
                let chunk = state.writer.delta(String::new(), &[], Some(reason));
                state.frames.push_back(chunk);
                state.finish(usage);
            }
            Some(Err(error)) => {
                let (_, body) = ErrorBody::from_error(&error);
                state.frames.push_back(frame(&body));
                state.end();
            }
            // The pipeline always ends with `Finished` or an error; this is a guard.
            None => state.end(),
        }
    }
}
