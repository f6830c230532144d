//! The generate path shared by gRPC and HTTP: a worker's [`TokenStream`] turned into text deltas.
//!
//! Tokens are detokenized incrementally and run through the [`StopMatcher`]. When a stop string
//! appears, the text before it is emitted, then `Finished { reason: Stop }`, and the token stream
//! is dropped at once, which cancels the sequence in the engine. Dropping the [`TextStream`]
//! drops the token stream too, so a client that goes away stops the work.
//!
//! Every step feeds the request's [`RequestObserver`] (first token, inter-token gaps, queue time,
//! finish or error; a stream dropped before `Finished` counts as cancelled).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Future, Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tritium_backend_api::llm::{FinishReason, GenerateEvent, GenerateRequest, GeneratedToken, PromptLogprob, TokenStream};

use crate::BridgeError;
use crate::detokenize::Detokenizer;
use crate::hub::LlmHub;
use crate::metrics::RequestObserver;
use crate::preprocess::Preprocessor;
use crate::sampling::CompletionOptions;
use crate::stop::StopMatcher;

/// One generated token, with its text for logprobs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub id: u32,
    /// The token's own text (not the delta it contributed to).
    pub text: String,
    /// The token's bytes, for OpenAI's `bytes` field (a token may hold part of a character).
    pub bytes: Vec<u8>,
    pub logprob: Option<f32>,
    /// The most likely alternatives: text, bytes, log-probability; most likely first.
    pub top: Vec<(String, Vec<u8>, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens the engine found in its prefix cache.
    pub cached_tokens: u32,
    /// Prompt tokens the request's explicit cache breakpoint newly wrote into (pinned in) the
    /// engine's prefix cache (Anthropic's `cache_creation_input_tokens`).
    pub pinned_tokens: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TextEvent {
    /// New text and the tokens that made it. `text` may be empty at the end when held-back
    /// tokens decode to nothing.
    Delta { text: String, tokens: Vec<TokenInfo> },
    /// Always the last event of a stream that did not fail. `stop_string`: the stop string
    /// that ended it, if one did.
    Finished { reason: FinishReason, usage: Usage, stop_string: Option<String> },
}

/// Text deltas of one generation; see the module docs.
pub struct TextStream {
    /// `None` once the sequence ended or was stopped: dropping it is what cancels the sequence.
    tokens: Option<TokenStream>,
    /// The worker the router chose.
    worker: Option<String>,
    /// The worker that prefilled the prompt, when another one did.
    prefill_worker: Option<String>,
    started: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    queued_for: Duration,
    pre: Arc<Preprocessor>,
    detokenizer: Detokenizer,
    stop: StopMatcher,
    observer: RequestObserver,
    /// Tokens whose text is still held back by the detokenizer or the stop matcher.
    held_tokens: Vec<TokenInfo>,
    /// Whether each token's text and bytes are looked up (only logprobs show them).
    token_texts: bool,
    completion_tokens: u32,
    /// Prompt tokens the engine found cached, from its first token (for a stop string's usage).
    cached_tokens: u32,
    /// Prompt tokens its pin newly wrote, from its first token.
    pinned_tokens: u32,
    /// The prompt's scores, when the request asked for them (the latest worker's, after a
    /// migration).
    prompt_scores: Option<Vec<PromptLogprob>>,
    /// The token that ended the sequence, when the engine sent it for its logprobs (no text).
    stop_token: Option<TokenInfo>,
    /// Events decided but not yet yielded (a last delta before `Finished`).
    ready: std::collections::VecDeque<Result<TextEvent, BridgeError>>,
    /// The server's hard stop (see [`TextStream::until`]): a token of this stream's own, a child
    /// of the server's, so that polling it takes no lock every stream shares.
    hard_stop: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl std::fmt::Debug for TextStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextStream")
            .field("running", &self.tokens.is_some())
            .field("completion_tokens", &self.completion_tokens)
            .finish_non_exhaustive()
    }
}

/// Turns a token stream into text events. Call `observer.prompt_tokens(n)` first when usage
/// must be right for a request a stop string ends (the engine's own count is lost then).
pub fn text_stream(
    pre: Arc<Preprocessor>,
    tokens: TokenStream,
    stop_strings: Vec<String>,
    observer: RequestObserver,
) -> TextStream {
    TextStream {
        worker: tokens.worker().map(str::to_owned),
        prefill_worker: tokens.prefill_worker().map(str::to_owned),
        started: Instant::now(),
        first_token: None,
        last_token: None,
        queued_for: Duration::ZERO,
        tokens: Some(tokens),
        detokenizer: pre.detokenizer(),
        pre,
        stop: StopMatcher::new(stop_strings),
        observer,
        held_tokens: Vec::new(),
        token_texts: true,
        cached_tokens: 0,
        pinned_tokens: 0,
        completion_tokens: 0,
        prompt_scores: None,
        stop_token: None,
        ready: std::collections::VecDeque::new(),
        hard_stop: None,
    }
}

impl TextStream {
    /// Waits for the stream's first event (the engine has computed the prompt, whose blocks are
    /// in the prefix cache then) and keeps it for the reader.
    pub async fn prefilled(&mut self) {
        if let Some(event) = self.next().await {
            self.ready.push_front(event);
        }
    }

    /// The prompt's length in tokens, once known.
    pub fn prompt_tokens(&self) -> Option<u32> {
        self.observer.known_prompt_tokens()
    }

    /// Ends the stream with [`BridgeError::ShuttingDown`] (and cancels the sequence) when `stop`
    /// is cancelled before the stream finished; a stream that finished ends as it would have.
    pub fn until(mut self, stop: &CancellationToken) -> TextStream {
        self.hard_stop = Some(Box::pin(stop.child_token().cancelled_owned()));
        self
    }

    /// Leaves each token's text and bytes empty when `texts` is false: nothing reads them unless
    /// logprobs were asked for, and looking them up cost a tenth of a short chat's frontend CPU.
    pub fn with_token_texts(mut self, texts: bool) -> TextStream {
        self.token_texts = texts;
        self
    }

    /// Shows these special tokens in the text (the markers of the response's output parser).
    pub fn show_special(mut self, ids: Vec<u32>) -> TextStream {
        if !ids.is_empty() {
            self.detokenizer.show_special(ids);
        }
        self
    }

    fn token_info(&self, token: GeneratedToken) -> TokenInfo {
        if !self.token_texts {
            return TokenInfo { id: token.id, text: String::new(), bytes: Vec::new(), logprob: token.logprob, top: Vec::new() };
        }
        TokenInfo {
            id: token.id,
            text: self.pre.token_text(token.id),
            bytes: self.pre.token_bytes(token.id),
            logprob: token.logprob,
            top: token
                .top_logprobs
                .into_iter()
                .map(|(id, logprob)| (self.pre.token_text(id), self.pre.token_bytes(id), logprob))
                .collect(),
        }
    }

    /// Where and how fast the generation ran, so far.
    pub fn meta(&self) -> StreamMeta {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let gaps = self.completion_tokens.saturating_sub(1);
        let itl = match (self.first_token, self.last_token) {
            (Some(first), Some(last)) if gaps > 0 => Some(ms(last - first) / f64::from(gaps)),
            _ => None,
        };
        StreamMeta {
            worker: self.worker.clone(),
            prefill_worker: self.prefill_worker.clone(),
            timing: Timing {
                ttft_ms: self.first_token.map(|first| ms(first - self.started)),
                itl_ms: itl,
                queue_ms: ms(self.queued_for),
                total_ms: ms(self.last_token.unwrap_or_else(Instant::now) - self.started),
            },
        }
    }

    /// Handles one token; returns the delta to yield now, if any.
    fn on_token(&mut self, token: GeneratedToken) -> Option<TextEvent> {
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        self.observer.token();
        self.completion_tokens += 1;
        if let Some(cached) = token.prompt_cached {
            self.cached_tokens = cached;
        }
        if let Some(pinned) = token.prompt_pinned {
            self.pinned_tokens = pinned;
        }
        let id = token.id;
        let info = self.token_info(token);
        self.held_tokens.push(info);
        let text = self.detokenizer.push(id);
        let outcome = self.stop.push(text);
        if outcome.stopped {
            let prompt_tokens = self.observer.known_prompt_tokens().unwrap_or(0);
            let usage = Usage {
                prompt_tokens,
                completion_tokens: self.completion_tokens,
                cached_tokens: self.cached_tokens.min(prompt_tokens),
                pinned_tokens: self.pinned_tokens,
            };
            self.finish(outcome.emit, FinishReason::Stop, usage, outcome.matched);
            return None;
        }
        if outcome.emit.is_empty() {
            // Half a character, or text that may start a stop string: its tokens ride with the
            // next delta.
            return None;
        }
        Some(TextEvent::Delta { text: outcome.emit, tokens: std::mem::take(&mut self.held_tokens) })
    }

    /// Handles the engine's end of sequence: flushes what was held back, then `Finished`.
    fn on_finished(&mut self, reason: FinishReason, usage: Usage, queued_for: Duration) {
        self.queued_for = queued_for;
        self.observer.queued(queued_for);
        self.observer.prompt_tokens(usage.prompt_tokens);
        self.observer.cached_tokens(usage.cached_tokens);
        let tail = self.detokenizer.finish();
        let outcome = self.stop.push(tail);
        let (text, reason) = match outcome.stopped {
            true => (outcome.emit, FinishReason::Stop),
            false => (outcome.emit + &self.stop.finish(), reason),
        };
        self.finish(text, reason, usage, outcome.matched);
    }

    /// Queues the last delta (when there is one) and `Finished`, and ends the sequence.
    fn finish(&mut self, text: String, reason: FinishReason, usage: Usage, stop_string: Option<String>) {
        self.tokens = None;
        if !text.is_empty() || !self.held_tokens.is_empty() {
            self.ready.push_back(Ok(TextEvent::Delta { text, tokens: std::mem::take(&mut self.held_tokens) }));
        }
        self.ready.push_back(Ok(TextEvent::Finished { reason, usage, stop_string }));
        self.observer.finished(reason);
    }

    fn fail(&mut self, error: BridgeError) -> Result<TextEvent, BridgeError> {
        self.tokens = None;
        self.observer.failed(&error);
        Err(error)
    }
}

impl Stream for TextStream {
    type Item = Result<TextEvent, BridgeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.ready.pop_front() {
                return Poll::Ready(Some(event));
            }
            if this.tokens.is_none() {
                return Poll::Ready(None);
            }
            if let Some(stop) = this.hard_stop.as_mut()
                && stop.as_mut().poll(cx).is_ready()
            {
                this.hard_stop = None;
                return Poll::Ready(Some(this.fail(BridgeError::ShuttingDown)));
            }
            let Some(tokens) = this.tokens.as_mut() else {
                return Poll::Ready(None);
            };
            let event = match tokens.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(event) => event,
            };
            match event {
                Some(Ok(GenerateEvent::PromptLogprobs(scores))) => this.prompt_scores = Some(scores),
                Some(Ok(GenerateEvent::Token(token))) if token.stop => this.stop_token = Some(this.token_info(token)),
                Some(Ok(GenerateEvent::Token(token))) => {
                    if let Some(delta) = this.on_token(token) {
                        return Poll::Ready(Some(Ok(delta)));
                    }
                }
                Some(Ok(GenerateEvent::Finished { reason, prompt_tokens, completion_tokens, cached_tokens, queued_for })) => {
                    let usage = Usage { prompt_tokens, completion_tokens, cached_tokens, pinned_tokens: this.pinned_tokens };
                    this.on_finished(reason, usage, queued_for);
                }
                Some(Err(error)) => return Poll::Ready(Some(this.fail(BridgeError::Generate(error)))),
                None => {
                    let error = BridgeError::Internal("the engine ended the sequence without finishing it".into());
                    return Poll::Ready(Some(this.fail(error)));
                }
            }
        }
    }
}

/// A model to generate with: its name and version (`None`: the latest ready one, as the OpenAI
/// routes always ask; a KServe request may name one).
#[derive(Debug, Clone, Copy)]
pub struct ModelRef<'a> {
    pub name: &'a str,
    pub version: Option<i64>,
    /// The worker to run on (`None`: the router picks one).
    pub worker: Option<&'a str>,
    /// The agent session the request belongs to, which the router may keep on one worker (a
    /// named worker wins over it).
    pub session: Option<&'a str>,
}

impl<'a> ModelRef<'a> {
    pub fn latest(name: &'a str) -> ModelRef<'a> {
        ModelRef { name, version: None, worker: None, session: None }
    }
}

/// Builds the engine request from `options`, starts generation on `model` through `hub` and
/// wraps the tokens in a text stream: the one way gRPC and HTTP start a generation. Failures are
/// recorded on `observer`.
pub async fn generate_text(
    hub: &dyn LlmHub,
    pre: &Arc<Preprocessor>,
    model: ModelRef<'_>,
    options: &CompletionOptions,
    prompt: Vec<u32>,
    default_max_tokens: Option<u32>,
    mut observer: RequestObserver,
) -> Result<TextStream, BridgeError> {
    let prompt_tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
    let request = options
        .check_vocabulary(pre.vocab_size())
        .and_then(|()| options.to_generate_request(prompt, pre.card(), default_max_tokens, pre.limits()));
    let started = match request {
        Ok(request) => {
            let request = GenerateRequest { model_version: model.version, ..request };
            observer.prompt_tokens(prompt_tokens);
            observer.request(&request);
            let generation = async {
                match (model.worker, model.session) {
                    (Some(worker), _) => hub.generate_on(model.name, worker, request).await,
                    (None, Some(session)) => hub.generate_in_session(model.name, session, request).await,
                    (None, None) => hub.generate(model.name, request).await,
                }
            };
            tritium_backend_api::trace::scoped(observer.trace().cloned(), generation).await
        }
        Err(error) => Err(error),
    };
    match started {
        Ok(tokens) => {
            let stream =
                text_stream(Arc::clone(pre), tokens, options.stop.clone(), observer).with_token_texts(options.logprobs.is_some());
            Ok(match hub.hard_stop() {
                Some(stop) => stream.until(stop),
                None => stream,
            })
        }
        Err(error) => {
            observer.failed(&error);
            Err(error)
        }
    }
}

/// A whole generation, for unary calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    pub tokens: Vec<TokenInfo>,
    pub reason: FinishReason,
    pub usage: Usage,
    /// The stop string that ended it, if one did.
    pub stop_string: Option<String>,
    pub meta: StreamMeta,
    /// The prompt's positions `1..` scored, when the request asked for it.
    pub prompt_scores: Option<Vec<PromptLogprob>>,
    /// The token that ended the sequence (end of sequence or a stop token id), with its
    /// logprobs, when they were asked for: it is in no text.
    pub stop_token: Option<TokenInfo>,
}

/// Where a generation ran and how fast (Dynamo's `nvext` response fields).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamMeta {
    pub worker: Option<String>,
    /// Set when another worker than `worker` prefilled the prompt.
    pub prefill_worker: Option<String>,
    pub timing: Timing,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Timing {
    /// Time to the first token, from when the request reached the engine's router.
    pub ttft_ms: Option<f64>,
    /// Mean gap between tokens.
    pub itl_ms: Option<f64>,
    /// Time waiting for a place in the engine's batch.
    pub queue_ms: f64,
    /// Start to the last token.
    pub total_ms: f64,
}

/// Folds a stream into the whole text, its tokens, the finish reason and usage, for unary calls.
pub async fn collect(mut stream: TextStream) -> Result<Generated, BridgeError> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    while let Some(event) = stream.next().await {
        match event? {
            TextEvent::Delta { text: delta, tokens: more } => {
                text.push_str(&delta);
                tokens.extend(more);
            }
            TextEvent::Finished { reason, usage, stop_string } => {
                let (prompt_scores, stop_token) = (stream.prompt_scores.take(), stream.stop_token.take());
                let meta = stream.meta();
                return Ok(Generated { text, tokens, reason, usage, stop_string, meta, prompt_scores, stop_token });
            }
        }
    }
    Err(BridgeError::Internal("the text stream ended without finishing".into()))
}
