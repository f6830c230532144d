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
    /// A piece of choice `index`'s text and its tokens; `finish` is set on its last piece.
    fn delta(&mut self, index: u32, text: String, tokens: &[TokenInfo], finish: Option<FinishReason>, out: &mut VecDeque<Bytes>);
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
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    write_json(&mut out, data, |error| format!(r#"{{"type":"error","message":"{error}"}}"#));
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// One `data:` frame.
pub(super) fn frame<T: Serialize>(chunk: &T) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    write_json(&mut out, chunk, |error| format!(r#"{{"error":{{"message":"{error}","type":"server_error"}}}}"#));
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `value`'s JSON written after what `out` holds (one buffer per frame, not one for the JSON and
/// one for the frame); what failed to serialize is cut off and replaced by `error`'s text.
fn write_json<T: Serialize>(out: &mut Vec<u8>, value: &T, error: impl FnOnce(serde_json::Error) -> String) {
    let start = out.len();
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        out.truncate(start);
        out.extend_from_slice(error(e).as_bytes());
    }
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// The SSE response of a stream.
pub(super) async fn respond<W: ChunkWriter>(writer: W, stream: TextStream) -> Response {
    respond_many(writer, vec![stream]).await
}

/// The SSE response of `n` choices generated at once (`n` > 1): their chunks interleave as their
/// tokens come, each with its choice's index; the end frames follow the last choice's end.
///
/// It is answered once the first event has come: the headers then go out in the same write as
/// the first frames (with the rest of the answer, when it is ready too), not alone before them,
/// which cost a system call on each side and a wakeup of the client per request.
pub(super) async fn respond_many<W: ChunkWriter>(mut writer: W, streams: Vec<TextStream>) -> Response {
    let frames = writer.start().into();
    let open = streams.len();
    let mut merged = streams.into_iter().enumerate().map(|(index, stream)| Indexed { index: index as u32, stream: Some(stream) });
    let choices = match open {
        1 => merged.next().map(Choices::One),
        _ => Some(Choices::Many(futures::stream::select_all(merged))),
    };
    let mut state =
        SseState { streams: choices, open, usage: Usage::default(), first: None, writer, frames, peeked: None, done: false };
    if let Some(streams) = state.streams.as_mut() {
        state.peeked = Some(streams.next().await);
    }
    event_stream(Body::from_stream(futures::stream::unfold(state, next_frame)))
}

/// A 200 carrying `body` as server-sent events.
pub(super) fn event_stream(body: Body) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
        // Proxies such as nginx would otherwise hold the deltas back.
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    (StatusCode::OK, headers, body).into_response()
}

/// One choice's events, with its index; its stream's meta comes with its last event, and the
/// stream is dropped then, so its observer records the end at once.
struct Indexed {
    index: u32,
    stream: Option<TextStream>,
}

type ChoiceEvent = (u32, Result<TextEvent, BridgeError>, Option<StreamMeta>);

impl futures::Stream for Indexed {
    type Item = ChoiceEvent;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<ChoiceEvent>> {
        let index = self.index;
        let Some(stream) = self.stream.as_mut() else { return std::task::Poll::Ready(None) };
        match stream.poll_next_unpin(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(None) => {
                self.stream = None;
                std::task::Poll::Ready(None)
            }
            std::task::Poll::Ready(Some(event)) => {
                let last = matches!(event, Ok(TextEvent::Finished { .. }) | Err(_));
                let meta = last.then(|| stream.meta());
                if last {
                    self.stream = None;
                }
                std::task::Poll::Ready(Some((index, event, meta)))
            }
        }
    }
}

/// The choices' events: one choice's straight from it (`SelectAll` re-queues its stream as a new
/// task after every item, an allocation per token), several merged as they come.
enum Choices {
    One(Indexed),
    Many(futures::stream::SelectAll<Indexed>),
}

impl futures::Stream for Choices {
    type Item = ChoiceEvent;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<ChoiceEvent>> {
        match self.get_mut() {
            Choices::One(choice) => choice.poll_next_unpin(cx),
            Choices::Many(choices) => choices.poll_next_unpin(cx),
        }
    }
}

struct SseState<W> {
    /// `None` once every choice ended (or one failed): dropping them cancels what still runs.
    streams: Option<Choices>,
    /// Choices still generating.
    open: usize,
    /// Completion tokens of every choice; the prompt's counts once, from the first choice.
    usage: Usage,
    /// The first choice's ending: its reason, stop string and meta.
    first: Option<(FinishReason, Option<String>, StreamMeta)>,
    writer: W,
    frames: VecDeque<Bytes>,
    /// An event read ahead: the first (before answering), or one read while looking for a
    /// `Finished` to fold into the last delta.
    peeked: Option<Option<ChoiceEvent>>,
    done: bool,
}

impl<W: ChunkWriter> SseState<W> {
    /// Choice `index` ended; after the last one, the end frames.
    fn finished(
        &mut self,
        index: u32,
        reason: FinishReason,
        usage: Usage,
        stop_string: Option<String>,
        meta: Option<StreamMeta>,
    ) {
        self.open = self.open.saturating_sub(1);
        self.usage.completion_tokens = self.usage.completion_tokens.saturating_add(usage.completion_tokens);
        if index == 0 {
            self.usage.prompt_tokens = usage.prompt_tokens;
            self.usage.cached_tokens = usage.cached_tokens;
            self.first = Some((reason, stop_string, meta.unwrap_or_default()));
        }
        if self.open == 0 {
            let (reason, stop_string, meta) = self.first.take().unwrap_or((reason, None, StreamMeta::default()));
            self.writer.end(End { reason, usage: self.usage, stop_string, meta }, &mut self.frames);
            self.end();
        }
    }

    fn end(&mut self) {
        self.done = true;
        self.streams = None;
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
            None => match state.streams.as_mut() {
                Some(streams) => streams.next().await,
                None => None,
            },
        };
        match event {
            Some((index, Ok(TextEvent::Delta { text, tokens }), _)) => {
                // The end usually follows the last delta at once (same decode step, or a stop
                // string): then the delta carries the finish reason, as OpenAI's last chunk does.
                let ahead = state.streams.as_mut().and_then(|streams| streams.next().now_or_never());
                match ahead {
                    Some(Some((next, Ok(TextEvent::Finished { reason, usage, stop_string }), meta))) if next == index => {
                        state.writer.delta(index, text, &tokens, Some(reason), &mut state.frames);
                        state.finished(index, reason, usage, stop_string, meta);
                    }
                    other => {
                        state.writer.delta(index, text, &tokens, None, &mut state.frames);
                        state.peeked = other;
                    }
                }
            }
            Some((index, Ok(TextEvent::Finished { reason, usage, stop_string }), meta)) => {
                state.writer.delta(index, String::new(), &[], Some(reason), &mut state.frames);
                state.finished(index, reason, usage, stop_string, meta);
            }
            Some((_, Err(error), _)) => {
                state.writer.error(&error, &mut state.frames);
                state.end();
            }
            // Every choice ends with `Finished` or an error; this is a guard.
            None => {
                let error = BridgeError::Internal("the text stream ended without finishing".into());
                state.writer.error(&error, &mut state.frames);
                state.end();
            }
        }
    }
}
