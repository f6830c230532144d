//! The response side of the OpenAI API: completions, chat completions and their streaming
//! chunks, logprobs in both of OpenAI's shapes, embeddings, models, and the error body.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::ser::SerializeMap;

use crate::BridgeError;
use crate::pipeline::{TokenInfo, Usage};

/// A response id: `prefix` and a unique, unguessable suffix (`cmpl-…`, `chatcmpl-…`). Stored
/// responses are fetched, continued and deleted by id alone, so one client must not be able to
/// work out another's from its own: the suffix is 128 bits of a keyed hash (SipHash under two
/// keys the process draws from the OS at start) of a process-wide counter.
pub fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static KEYS: OnceLock<[RandomState; 2]> = OnceLock::new();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let keys = KEYS.get_or_init(|| [RandomState::new(), RandomState::new()]);
    let [high, low] = keys.each_ref().map(|key| key.hash_one(n));
    format!("{prefix}-{high:016x}{low:016x}")
}

/// An item id in the Responses and Messages APIs' style: `prefix`, `_` and a unique suffix
/// (`resp_…`, `msg_…`, `fc_…`).
pub fn new_item_id(prefix: &str) -> String {
    let id = new_id(prefix);
    id.replacen('-', "_", 1)
}

/// Seconds since the Unix epoch, for `created`.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// JSON has no -inf: OpenAI reports impossible tokens as -9999.
fn finite(logprob: f32) -> f32 {
    if logprob.is_finite() { logprob } else { -9999.0 }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageBody {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's breakdown of the prompt: how much of it came from the prefix cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl From<Usage> for UsageBody {
    fn from(usage: Usage) -> UsageBody {
        UsageBody {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
            prompt_tokens_details: PromptTokensDetails { cached_tokens: usage.cached_tokens },
        }
    }
}

/// A `/v1/completions` response, and (with `object` the same) each streaming chunk.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    /// Absent from chunks unless usage was asked for; then `null` until the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageBody>>,
    /// What `nvext.extra_fields` asked for (on the last chunk of a stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvext: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
    /// vLLM's: `null` for the first prompt token, then `{id: {logprob, rank, decoded_token}}`
    /// per prompt token (the token itself and the most likely ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub prompt_logprobs: Option<Vec<Option<serde_json::Value>>>,
}

/// `/v1/completions` logprobs: parallel lists, one entry per token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    /// One object per token: alternative text to log-probability (`null` for an echoed
    /// prompt's first token, which nothing comes before).
    #[schema(value_type = Vec<Object>)]
    pub top_logprobs: Vec<Option<TopLogprobMap>>,
    /// Character offset of each token in the text (the echoed prompt's, then the completion's).
    pub text_offset: Vec<u32>,
}

impl CompletionLogprobs {
    /// Logprobs of `tokens`; `offset` is the completion's length so far, in characters, and
    /// advances past these tokens.
    pub fn from_tokens(tokens: &[TokenInfo], offset: &mut u32) -> CompletionLogprobs {
        let mut logprobs = CompletionLogprobs::default();
        for token in tokens {
            logprobs.tokens.push(token.text.clone());
            logprobs.token_logprobs.push(token.logprob.map(finite));
            let top = TopLogprobMap(token.top.iter().map(|(text, _, lp)| (text.clone(), finite(*lp))).collect());
            logprobs.top_logprobs.push(token.logprob.is_some().then_some(top));
            logprobs.text_offset.push(*offset);
            *offset = offset.saturating_add(u32::try_from(token.text.chars().count()).unwrap_or(u32::MAX));
        }
        logprobs
    }

    /// Logprobs of an echoed prompt, before any completion token: `tokens` are the prompt's
    /// texts, `scores` its positions `1..` (none for the first, which nothing comes before), each
    /// with its alternatives' texts.
    pub fn from_prompt(tokens: &[String], scores: &[(f32, Vec<(String, f32)>)], offset: &mut u32) -> CompletionLogprobs {
        let mut logprobs = CompletionLogprobs::default();
        for (position, token) in tokens.iter().enumerate() {
            let score = position.checked_sub(1).and_then(|before| scores.get(before));
            logprobs.tokens.push(token.clone());
            logprobs.token_logprobs.push(score.map(|(logprob, _)| finite(*logprob)));
            logprobs.top_logprobs.push(
                score.map(|(_, top)| TopLogprobMap(top.iter().map(|(text, logprob)| (text.clone(), finite(*logprob))).collect())),
            );
            logprobs.text_offset.push(*offset);
            *offset = offset.saturating_add(u32::try_from(token.chars().count()).unwrap_or(u32::MAX));
        }
        logprobs
    }

    /// These logprobs, then `more`'s.
    pub fn extend(&mut self, more: CompletionLogprobs) {
        self.tokens.extend(more.tokens);
        self.token_logprobs.extend(more.token_logprobs);
        self.top_logprobs.extend(more.top_logprobs);
        self.text_offset.extend(more.text_offset);
    }
}

/// OpenAI's `{token: logprob}` object, in the order given (most likely first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobMap(pub Vec<(String, f32)>);

impl Serialize for TopLogprobMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

/// A `/v1/chat/completions` response.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageBody,
    /// What `nvext.extra_fields` asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvext: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatMessage {
    pub role: &'static str,
    /// `null` when the model only called tools.
    pub content: Option<String>,
    /// The model's reasoning, when a reasoning parser split it off (vLLM's and Dynamo's field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ChatToolCall>,
}

/// A tool call in a chat message, or (with `index`) in a streamed delta, where it always comes
/// whole.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatToolCall {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: ChatFunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatFunctionCall {
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

impl ChatToolCall {
    pub fn new(call: crate::parsers::ToolCall, index: Option<u32>) -> ChatToolCall {
        ChatToolCall {
            index,
            id: call.id,
            kind: "function",
            function: ChatFunctionCall { name: call.name, arguments: call.arguments },
        }
    }
}

/// A `chat.completion.chunk`, borrowing what every chunk of a stream repeats (made per token).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: &'a [ChatChunkChoice],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageBody>>,
    /// What `nvext.extra_fields` asked for (on the last chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvext: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ChatToolCallDelta>,
}

/// A piece of a tool call in a streamed chunk, in OpenAI's shape: a call's first piece has its
/// `id`, `type` and name, the later ones only more of its arguments (to be concatenated).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatToolCallDelta {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: ChatFunctionDelta,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatFunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

impl ChatToolCallDelta {
    /// The chunk entries of `pieces`; `calls` counts the calls started so far (the next one's
    /// `index`). A start and the arguments after it in one chunk become one entry.
    pub fn from_pieces(pieces: Vec<crate::parsers::CallPiece>, calls: &mut u32) -> Vec<ChatToolCallDelta> {
        use crate::parsers::CallPiece;
        let mut out: Vec<ChatToolCallDelta> = Vec::new();
        for piece in pieces {
            match piece {
                CallPiece::Start { id, name } => {
                    *calls += 1;
                    out.push(ChatToolCallDelta {
                        index: *calls - 1,
                        id: Some(id),
                        kind: Some("function"),
                        function: ChatFunctionDelta { name: Some(name), arguments: String::new() },
                    });
                }
                CallPiece::Arguments(text) => match out.last_mut() {
                    Some(last) if last.index + 1 == *calls => last.function.arguments.push_str(&text),
                    _ => out.push(ChatToolCallDelta {
                        index: calls.saturating_sub(1),
                        id: None,
                        kind: None,
                        function: ChatFunctionDelta { name: None, arguments: text },
                    }),
                },
            }
        }
        out
    }
}

/// Chat logprobs: one entry per token, with its bytes (a token may hold part of a character).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl ChatLogprobs {
    pub fn from_tokens(tokens: &[TokenInfo]) -> ChatLogprobs {
        let content = tokens
            .iter()
            .map(|token| ChatTokenLogprob {
                token: token.text.clone(),
                logprob: finite(token.logprob.unwrap_or(f32::NEG_INFINITY)),
                bytes: token.bytes.clone(),
                top_logprobs: token
                    .top
                    .iter()
                    .map(|(text, bytes, lp)| TopLogprob { token: text.clone(), logprob: finite(*lp), bytes: bytes.clone() })
                    .collect(),
            })
            .collect();
        ChatLogprobs { content }
    }
}

/// `/v1/embeddings` response.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EmbeddingResponse {
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EmbeddingData {
    pub object: &'static str,
    pub index: u32,
    /// Floats, or base64 of little-endian f32s.
    #[schema(value_type = serde_json::Value)]
    pub embedding: EmbeddingVector,
}

/// Floats, or (`encoding_format: "base64"`) their little-endian f32 bytes in base64.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

impl EmbeddingVector {
    pub fn base64(values: &[f32]) -> EmbeddingVector {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        EmbeddingVector::Base64(base64_encode(&bytes))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

/// Standard base64 with padding (RFC 4648), as OpenAI's clients decode it.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            match i <= chunk.len() {
                true => out.push(char::from(ALPHABET[((n >> shift) & 63) as usize])),
                false => out.push('='),
            }
        }
    }
    out
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

/// One model, as `GET /v1/models/{model}` answers.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// A LoRA adapter's: where it was read from, and the model it adapts (vLLM's fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl ModelObject {
    pub fn new(id: impl Into<String>, created: u64) -> ModelObject {
        ModelObject { id: id.into(), object: "model", created, owned_by: "tritium", root: None, parent: None }
    }

    /// The object of a model the hub lists.
    pub fn of(model: crate::hub::HubModel) -> ModelObject {
        let (parent, root) = model.adapter_of.map_or((None, None), |(parent, root)| (Some(parent), Some(root)));
        ModelObject { parent, root, ..ModelObject::new(model.name, model.created) }
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ErrorBody {
    /// The body and HTTP status of an error.
    pub fn from_error(error: &BridgeError) -> (u16, ErrorBody) {
        let status = error.http_status();
        let kind = match status {
            429 => "rate_limit_error",
            500.. => "server_error",
            _ => "invalid_request_error",
        };
        let code = match error {
            BridgeError::ModelNotFound(_) => Some("model_not_found"),
            _ if status == 429 => Some("rate_limit_exceeded"),
            _ => None,
        };
        let param = match error {
            BridgeError::InvalidField { field, .. } => Some(field.clone()),
            _ => None,
        };
        (status, ErrorBody { error: ErrorDetail { message: error.to_string(), kind, param, code } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        let cases: [(&[u8], &str); 5] = [(b"", ""), (b"f", "Zg=="), (b"fo", "Zm8="), (b"foo", "Zm9v"), (b"foobar", "Zm9vYmFy")];
        for (input, expected) in cases {
            assert_eq!(base64_encode(input), expected);
        }
        assert_eq!(EmbeddingVector::base64(&[1.0]), EmbeddingVector::Base64("AACAPw==".into()));
    }

    #[test]
    fn ids_are_unique_and_prefixed() {
        let (a, b) = (new_id("cmpl"), new_id("cmpl"));
        assert!(a.starts_with("cmpl-") && a != b);
    }

    #[test]
    fn error_bodies() {
        let (status, body) = ErrorBody::from_error(&BridgeError::ModelNotFound("x".into()));
        assert_eq!(status, 404);
        assert_eq!(
            serde_json::to_value(&body).ok(),
            Some(serde_json::json!({"error": {"message": "the model 'x' does not exist", "type": "invalid_request_error",
                "param": null, "code": "model_not_found"}}))
        );
        let (status, body) = ErrorBody::from_error(&BridgeError::field("n", "only n=1 is supported"));
        assert_eq!((status, body.error.param.as_deref()), (400, Some("n")));
    }

    #[test]
    fn completion_logprobs_track_offsets() {
        let token = |text: &str, lp: f32| TokenInfo {
            id: 0,
            text: text.into(),
            bytes: text.as_bytes().to_vec(),
            logprob: Some(lp),
            top: vec![(text.into(), text.as_bytes().to_vec(), lp), ("z".into(), b"z".to_vec(), f32::NEG_INFINITY)],
        };
        let mut offset = 0;
        let first = CompletionLogprobs::from_tokens(&[token("hé", -0.5), token("llo", -0.25)], &mut offset);
        let second = CompletionLogprobs::from_tokens(&[token("!", -1.0)], &mut offset);
        assert_eq!(first.text_offset, vec![0, 2]);
        assert_eq!(second.text_offset, vec![5]);
        assert_eq!(
            serde_json::to_value(&second).ok(),
            Some(serde_json::json!({"tokens": ["!"], "token_logprobs": [-1.0], "top_logprobs": [{"!": -1.0, "z": -9999.0}],
                "text_offset": [5]}))
        );
    }

    #[test]
    fn ids_are_unique_and_neighbours_share_no_visible_sequence() {
        let ids: Vec<String> = (0..1000).map(|_| new_item_id("resp")).collect();
        assert!(ids.iter().all(|id| id.len() == "resp_".len() + 32 && id.starts_with("resp_")), "{}", ids[0]);
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        // A counter or a clock would leave a long common prefix between neighbours.
        let shared = |a: &str, b: &str| a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
        let longest = ids.windows(2).map(|pair| shared(&pair[0], &pair[1])).max().unwrap_or(0);
        assert!(longest < "resp_".len() + 8, "neighbouring ids share {longest} characters");
    }
}
