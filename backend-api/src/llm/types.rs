//! What the frontend sends a language model and what comes back: token ids, never text. The
//! frontend tokenizes and detokenizes (the OpenAI bridge), so a later KV-aware router can see the
//! tokens and remote workers need no tokenizer.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tritium_proto::ErrorCode;

use super::constraint::Constraint;

/// How the next token is drawn from the logits, as OpenAI defines the options.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `top_p`; 1 is off.
    pub top_p: f32,
    /// Only the `top_k` most likely tokens; 0 is off.
    pub top_k: usize,
    /// Makes sampling repeatable; `None` seeds from the clock.
    pub seed: Option<u64>,
    /// OpenAI's presence penalty: subtracted once from every token already generated.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty: subtracted once per earlier occurrence of a generated token.
    pub frequency_penalty: f32,
    /// The CTRL/HF repetition penalty over prompt and output tokens; 1 is off.
    pub repetition_penalty: f32,
    /// vLLM's min-p: a drawn token's probability (after temperature) is at least `min_p` times
    /// the most likely token's; 0 is off.
    pub min_p: f32,
    /// OpenAI's `logit_bias`: added to these tokens' logits before anything else is computed from
    /// them; -100 bans a token, 100 all but forces it. Token ids are distinct and in the
    /// vocabulary (the frontend checks).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingOptions {
    fn default() -> SamplingOptions {
        SamplingOptions {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            min_p: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

/// When generation ends, as far as the engine can tell from token ids. Stop *strings* are the
/// frontend's: it sees text, and cancels the sequence when one appears.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StopOptions {
    /// At most this many new tokens; `None` means up to the context length.
    pub max_tokens: Option<u32>,
    /// Generating one of these ends the sequence (with `FinishReason::Stop`); it is not emitted.
    pub stop_token_ids: Vec<u32>,
    /// Keep going past the model's end-of-sequence tokens.
    pub ignore_eos: bool,
    /// End-of-sequence tokens are ignored until this many tokens have been generated.
    pub min_tokens: u32,
}

/// One generation request: the prompt already tokenized.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerateRequest {
    /// The model version to run (`None`: the latest ready one).
    pub model_version: Option<i64>,
    pub prompt: Vec<u32>,
    pub sampling: SamplingOptions,
    pub stop: StopOptions,
    /// `Some(n)`: report each token's log-probability and the `n` most likely alternatives.
    pub logprobs: Option<u32>,
    /// A grammar the output must follow (structured output).
    pub constraint: Option<Constraint>,
    /// `Some(n)`: also score the prompt, each position after the first with its log-probability
    /// and the `n` most likely alternatives ([`GenerateEvent::PromptLogprobs`], before the first
    /// token). The whole prompt is computed then, not taken from the prefix cache.
    pub prompt_logprobs: Option<u32>,
    /// Its place in the engine's queue under priority scheduling (ignored under FCFS).
    pub priority: Priority,
    /// The LoRA adapter (by name) whose deltas apply on top of the base weights, if any.
    pub adapter: Option<String>,
    /// Keep the prompt's first tokens in the prefix cache for a while (explicit prompt caching).
    pub pin: Option<PrefixPin>,
}

/// Explicit prompt caching (Anthropic's `cache_control`): the KV blocks of the prompt's first
/// `tokens` positions are kept in the engine's prefix cache, safe from eviction, for `ttl` after
/// this request (a later request pinning the same prefix extends it), within the engine's bound
/// on pinned blocks (past it the oldest pins lapse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixPin {
    pub tokens: u32,
    pub ttl: std::time::Duration,
}

/// A LoRA adapter an engine holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    pub name: String,
    /// Where it was read from.
    pub path: String,
    pub rank: usize,
    /// The seed its sequences' KV block hashes chain from (see `kv::block_hashes_from`), the same
    /// on every worker that loads the same adapter: a router hashes its prompts with it.
    pub kv_seed: u64,
}

/// Where a request stands under priority scheduling: a higher `tier` always goes first (Dynamo's
/// `strict_priority`); within a tier, a lower `level` first (vLLM's `priority`). The default,
/// tier 0 and level 0, is every request's that names no priority.
///
/// Ordered by urgency: the request served first is the smaller.
///
/// ```
/// use tritium_backend_api::llm::Priority;
///
/// let urgent = Priority { tier: 0, level: -5 };
/// assert!(urgent < Priority::default());
/// assert!(Priority { tier: 1, level: 100 } < urgent);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Priority {
    pub tier: u32,
    pub level: i32,
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.tier.cmp(&self.tier).then(self.level.cmp(&other.level))
    }
}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Why a sequence ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token, or (said by the frontend) a stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
    /// The client went away or asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    pub id: u32,
    /// Natural log of the token's probability under the penalised distribution, before
    /// temperature, top-k and top-p (when asked for).
    pub logprob: Option<f32>,
    /// The most likely alternatives at this position, most likely first (when asked for).
    pub top_logprobs: Vec<(u32, f32)>,
    /// On a sequence's first token only: the prompt tokens found in the prefix cache, so that a
    /// frontend that stops the sequence early (a stop string) can still report them.
    pub prompt_cached: Option<u32>,
    /// On a sequence's first token only, when its request pinned a prefix: the prompt tokens the
    /// pin newly wrote into the cache (0 when the pin was there already, or could not be kept).
    pub prompt_pinned: Option<u32>,
    /// The token that ended the sequence (end of sequence, or one of the request's stop token
    /// ids), sent only to a request that asked for `logprobs`, for its log-probability: it is no
    /// text, and `Finished` follows. Evaluators read it as the completion's one token.
    pub stop: bool,
}

/// One prompt position scored under the model given the positions before it: the raw
/// distribution, with no penalty or temperature.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLogprob {
    pub logprob: f32,
    /// 1 for the most likely token; one more for each token more likely than this one.
    pub rank: u32,
    /// The most likely tokens at this position, most likely first.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// What a generation stream yields: tokens as they are made, then exactly one `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateEvent {
    /// When the request asked for them, once, before the first token: the prompt's positions
    /// `1..` scored in order (the first position has nothing before it).
    PromptLogprobs(Vec<PromptLogprob>),
    Token(GeneratedToken),
    Finished {
        reason: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
        /// Prompt tokens whose keys and values came from the prefix cache, not computed.
        cached_tokens: u32,
        /// How long the sequence waited for a place in the running batch.
        queued_for: std::time::Duration,
    },
}

/// A language model engine's counters, for metrics and load reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Sequences in the running batch.
    pub running: usize,
    /// Sequences waiting for a place in it.
    pub waiting: usize,
    /// KV-cache positions in blocks held by running sequences, and the pool's size.
    pub kv_tokens_used: usize,
    pub kv_tokens_capacity: usize,
    /// Prompt tokens one step prefills at most (vLLM's and Dynamo's `max_num_batched_tokens`);
    /// 0 when unknown.
    pub max_batched_tokens: usize,
    /// Tokens generated since start (cancelled sequences included, up to where they stopped).
    pub tokens_generated: u64,
    /// Prompt tokens prefilled since start.
    pub prompt_tokens: u64,
    /// Prompt tokens found in the KV cache and not recomputed.
    pub prompt_tokens_cached: u64,
    pub sequences_finished: u64,
    /// Sequences stopped because their client went away.
    pub sequences_cancelled: u64,
    /// Requests refused because the queue was full.
    pub sequences_rejected: u64,
    /// Sequences that gave their KV blocks up to older ones and waited to resume.
    pub sequences_preempted: u64,
    /// KV blocks held by the prefix cache (in use or idle).
    pub kv_blocks_cached: usize,
    /// KV blocks written to the offload tier, and read back from it, since start.
    pub kv_blocks_offloaded: u64,
    pub kv_blocks_restored: u64,
    /// Decode steps run, and the sequences they carried in total (their ratio is the mean batch).
    pub decode_steps: u64,
    pub decode_rows: u64,
    /// Speculative decoding: proposals verified, tokens they proposed, and tokens kept.
    pub spec_decode_drafts: u64,
    pub spec_decode_draft_tokens: u64,
    pub spec_decode_accepted_tokens: u64,
}

/// Where a decode worker takes a prompt's KV blocks from (disaggregated prefill and decode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefillSource {
    /// The prefill worker's id and the URI of its worker plane.
    pub worker_id: String,
    pub uri: String,
    /// Blocks before this one are in the decode worker's cache already.
    pub first_block: u32,
}

/// Why a generation could not start or went wrong.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum GenerateError {
    /// The queue is full: the caller should back off (RESOURCE_EXHAUSTED, HTTP 429).
    #[error("the model '{model}' is overloaded: {running} sequences running and {waiting} waiting (queue limit {limit})")]
    Overloaded { model: String, running: usize, waiting: usize, limit: usize },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the model '{model}' failed: {message}")]
    Engine { model: String, message: String },
    #[error("the model '{0}' is shutting down")]
    ShuttingDown(String),
    /// No worker could carry the sequence on (its worker went away and migration was not possible).
    #[error("the model '{model}' is unavailable: {message}")]
    Unavailable { model: String, message: String },
    /// The worker running the sequence went away or its connection broke mid-stream: the router
    /// continues the sequence on another worker when it can.
    #[error("the model '{model}' failed: worker unreachable: worker '{worker}': {message}")]
    WorkerLost { model: String, worker: String, message: String },
}

impl GenerateError {
    pub fn code(&self) -> ErrorCode {
        match self {
            GenerateError::Overloaded { .. } => ErrorCode::ResourceExhausted,
            GenerateError::InvalidRequest(_) => ErrorCode::InvalidArg,
            GenerateError::Engine { .. } | GenerateError::WorkerLost { .. } => ErrorCode::Internal,
            GenerateError::ShuttingDown(_) | GenerateError::Unavailable { .. } => ErrorCode::Unavailable,
        }
    }
}

/// The events of one generation. Dropping it cancels the sequence: the engine notices before its
/// next decode step and frees the sequence's KV cache.
#[derive(Debug)]
pub struct TokenStream {
    receiver: mpsc::UnboundedReceiver<Result<GenerateEvent, GenerateError>>,
    /// The worker the router sent the sequence to (the first one, when it migrated).
    worker: Option<std::sync::Arc<str>>,
    /// The worker that computed its prompt's KV blocks, when another one did (disaggregated).
    prefill_worker: Option<std::sync::Arc<str>>,
    /// What the stream keeps alive until it is dropped: a loaded model's in-use hold, so the model
    /// is not unloaded under a generation still running.
    held: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl TokenStream {
    pub fn new(receiver: mpsc::UnboundedReceiver<Result<GenerateEvent, GenerateError>>) -> TokenStream {
        TokenStream { receiver, worker: None, prefill_worker: None, held: Vec::new() }
    }

    /// The same stream, its prompt prefilled by `worker`.
    pub fn prefilled_by(self, worker: Option<std::sync::Arc<str>>) -> TokenStream {
        TokenStream { prefill_worker: worker, ..self }
    }

    /// The worker that prefilled the prompt when it was not the one generating.
    pub fn prefill_worker(&self) -> Option<&str> {
        self.prefill_worker.as_deref()
    }

    /// The same stream, keeping `hold` alive until it is dropped.
    pub fn holding(mut self, hold: impl std::any::Any + Send + Sync) -> TokenStream {
        self.held.push(Box::new(hold));
        self
    }

    /// The same stream, marked as served by `worker`.
    pub fn served_by(self, worker: std::sync::Arc<str>) -> TokenStream {
        TokenStream { worker: Some(worker), ..self }
    }

    pub fn worker(&self) -> Option<&str> {
        self.worker.as_deref()
    }

    /// A stream of events given up front; for tests and for engines that answer at once.
    pub fn from_events(events: Vec<Result<GenerateEvent, GenerateError>>) -> TokenStream {
        let (sender, receiver) = mpsc::unbounded_channel();
        for event in events {
            let _ = sender.send(event);
        }
        TokenStream::new(receiver)
    }
}

impl Stream for TokenStream {
    type Item = Result<GenerateEvent, GenerateError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}
