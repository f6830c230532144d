//! Server-sent events for streamed generations: OpenAI's chunks (`data: {chunk}\n\n` per chunk,
//! then `data: [DONE]\n\n`) or named events (`event: …\ndata: {…}\n\n`, the Responses and
//! Messages APIs), written by each endpoint's [`ChunkWriter`]. The body owns the [`TextStream`], so when hyper drops the body of a client
//! that went away, the sequence is cancelled.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tritium_backend_api::llm::FinishReason;

use crate::BridgeError;
use crate::pipeline::{StreamMeta, TextEvent, TextStream, TokenInfo, Usage};
use crate::protocol::ErrorBody;

/// How one generation ended, for [`ChunkWriter::end`].
#[derive(Debug, Clone, PartialEq)]
pub(super) struct End {
    pub reason: FinishReason,
    pub usage: Usage,
    pub stop_string: Option<String>,
    pub meta: StreamMeta,
}

/// Turns text events into the frames of one endpoint.
pub(super) trait ChunkWriter: Send + 'static {
    /// Frames sent before any text (chat's `role` chunk, the Responses API's `response.created`).
    fn start(&mut self) -> Vec<Bytes> {
        Vec::new()
    }
    /// A piece of text and its tokens; `finish` is set on the last piece.
    fn delta(&mut self, text: String, tokens: &[TokenInfo], finish: Option<FinishReason>, out: &mut VecDeque<Bytes>);
    /// The frames after the last piece.
    fn end(&mut self, end: End, out: &mut VecDeque<Bytes>);
    /// The frames of a failure after the stream began.
    fn error(&mut self, error: &BridgeError, out: &mut VecDeque<Bytes>) {
        let (_, body) = ErrorBody::from_error(error);
        out.push_back(frame(&body));
        out.push_back(done());
    }
}

/// OpenAI's last frame of a chunk stream.
pub(super) fn done() -> Bytes {
    Bytes::from_static(DONE)
}

/// One `event:` and `data:` frame (the Responses and Messages APIs name their events).
pub(super) fn named_frame<T: Serialize>(event: &str, data: &T) -> Bytes {
    let json = serde_json::to_vec(data).unwrap_or_else(|error| format!(r#"{{"type":"error","message":"{error}"}}"#).into_bytes());
    let mut out = Vec::with_capacity(json.len() + event.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
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
pub(super) fn respond<W: ChunkWriter>(mut writer: W, stream: TextStream) -> Response {
    let frames = writer.start().into();
    let state = SseState { stream: Some(stream), writer, frames, peeked: None, done: false };
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
    frames: VecDeque<Bytes>,
    /// An event read ahead while looking for a `Finished` to fold into the last delta.
    peeked: Option<Option<Result<TextEvent, BridgeError>>>,
    done: bool,
}

impl<W: ChunkWriter> SseState<W> {
    fn finish(&mut self, end: End) {
        self.writer.end(end, &mut self.frames);
        self.end();
    }

    fn end(&mut self) {
        self.done = true;
        self.stream = None;
    }

    fn meta(&self) -> StreamMeta {
        self.stream.as_ref().map(TextStream::meta).unwrap_or_default()
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
                    Some(Some(Ok(TextEvent::Finished { reason, usage, stop_string }))) => {
                        state.writer.delta(text, &tokens, Some(reason), &mut state.frames);
                        let meta = state.meta();
                        state.finish(End { reason, usage, stop_string, meta });
                    }
                    other => {
                        state.writer.delta(text, &tokens, None, &mut state.frames);
                        state.peeked = other;
                    }
                }
            }
            Some(Ok(TextEvent::Finished { reason, usage, stop_string })) => {
                state.writer.delta(String::new(), &[], Some(reason), &mut state.frames);
                let meta = state.meta();
                state.finish(End { reason, usage, stop_string, meta });
            }
            Some(Err(error)) => {
                state.writer.error(&error, &mut state.frames);
                state.end();
            }
            // The pipeline always ends with `Finished` or an error; this is a guard.
            None => {
                let error = BridgeError::Internal("the text stream ended without finishing".into());
                state.writer.error(&error, &mut state.frames);
                state.end();
            }
        }
    }
}
