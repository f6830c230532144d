//! Calls a grammar wrote (`tool_choice` required or named): the whole output is their JSON, so
//! it streams from its first character: a named tool's arguments as they arrive, an array of
//! calls each as its name and then its arguments.

use serde_json::Value;

use super::arguments::{Minifier, ToolSchemas, json_arguments};
use super::streaming::BlockStream;
use super::{CallPiece, ForcedCalls, ParsedDelta, StreamedCall, ToolCall, ToolCallFormat, blocks, new_call_id};

#[derive(Debug)]
pub(super) struct ForcedStream {
    calls: ForcedCalls,
    text: String,
    /// A named tool's call once its arguments began, and the bytes of the output given out.
    named: Option<(StreamedCall, usize)>,
    minifier: Minifier,
    /// An array of calls, read as Nemotron's JSON block is.
    stream: BlockStream,
}

impl ForcedStream {
    pub(super) fn new(calls: ForcedCalls) -> ForcedStream {
        ForcedStream { calls, text: String::new(), named: None, minifier: Minifier::default(), stream: BlockStream::default() }
    }

    pub(super) fn push(&mut self, content: &str) -> ParsedDelta {
        self.text.push_str(content);
        let mut out = ParsedDelta::default();
        match &self.calls {
            ForcedCalls::Named(name) => {
                if self.named.is_none() {
                    let rest = self.text.trim_start();
                    // Arguments that are not an object (the output cut short, say) come at the end.
                    if !rest.starts_with('{') {
                        return out;
                    }
                    let id = new_call_id();
                    out.call_pieces.push(CallPiece::Start { id: id.clone(), name: name.clone() });
                    self.named = Some((StreamedCall { id, sent: 0 }, self.text.len() - rest.len()));
                }
                if let Some((call, scanned)) = &mut self.named {
                    let mut piece = String::new();
                    self.minifier.push(&self.text[*scanned..], &mut piece);
                    *scanned = self.text.len();
                    if !piece.is_empty() {
                        call.sent += piece.len();
                        out.call_pieces.push(CallPiece::Arguments(piece));
                    }
                }
            }
            ForcedCalls::Any => {
                self.stream.advance(ToolCallFormat::NemotronDeci, "", &self.text, &ToolSchemas::default(), &mut out)
            }
        }
        out
    }

    /// The calls in the whole output; text that is not them stays text.
    pub(super) fn finish(mut self) -> ParsedDelta {
        let text = std::mem::take(&mut self.text);
        let parsed = serde_json::from_str::<Value>(text.trim()).ok();
        let calls = match (&self.calls, parsed) {
            (ForcedCalls::Named(name), Some(Value::Object(_))) => {
                json_arguments(text.trim()).map(|arguments| vec![ToolCall::with_arguments(name.clone(), arguments)])
            }
            (ForcedCalls::Any, Some(_)) => blocks::json_calls(text.trim()),
            _ => None,
        };
        let mut out = ParsedDelta::default();
        let Some(calls) = calls else {
            if self.named.is_some() || self.stream.started() {
                tracing::warn!("forced tool-call output that had begun to stream does not read as calls; given as text");
            }
            out.content = text;
            return out;
        };
        match self.named.take() {
            Some((streamed, _)) => {
                let mut streamed = Some(streamed);
                for mut call in calls {
                    if let Some(streamed) = &streamed {
                        call.id = streamed.id.clone();
                    }
                    out.complete(call, &mut streamed);
                }
            }
            None => self.stream.finish(calls, &mut out),
        }
        out
    }
}
