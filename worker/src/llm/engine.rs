//! The engine: one thread per model runs decode steps over a batch of sequences. Between steps
//! it drops sequences whose client went away, finishes those that stopped, and admits waiting
//! ones while the batch has room and their KV reservation fits the budget (continuous
//! batching). A new sequence's prompt is fed in chunks inside the same steps, so a long prompt
//! does not stall the others' decoding.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::LanguageModel;
use super::card::ModelCard;
use super::constraint::{Constrained, Constraint, Grammars};
use super::model::{DecoderModel, SequenceCache, SequenceInput};
use super::sampler::Sampler;
use super::types::{EngineStats, FinishReason, GenerateError, GenerateEvent, GenerateRequest, TokenStream};

/// Bounds on what one engine holds at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Sequences in the running batch.
    pub max_sequences: usize,
    /// KV-cache positions all running sequences may reserve together (prompt plus `max_tokens`
    /// each). A sequence is admitted only when its reservation fits, so none is evicted later.
    pub max_kv_tokens: usize,
    /// Requests that may wait for a place; beyond it requests are refused (RESOURCE_EXHAUSTED,
    /// HTTP 429).
    pub max_queue: usize,
    /// Prompt tokens fed per step, over all sequences being prefilled.
    pub prefill_chunk: usize,
    /// Bytes of one request's grammar (JSON schema, regex, choices, Lark), at most: compiling
    /// one costs CPU and memory in proportion.
    pub max_constraint_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            max_sequences: 8,
            max_kv_tokens: 16_384,
            max_queue: 64,
            prefill_chunk: 256,
            max_constraint_bytes: 64 << 10,
        }
    }
}

type EventSender = mpsc::UnboundedSender<Result<GenerateEvent, GenerateError>>;

/// A request waiting for a place in the batch.
struct Waiting {
    request: GenerateRequest,
    /// The compiled grammar, when the request has one.
    constraint: Option<Constrained>,
    sender: EventSender,
    submitted: Instant,
    /// Tokens this sequence may generate, and the KV positions it reserves.
    max_new: usize,
}

/// A sequence in the running batch.
struct Running {
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    fed: usize,
    /// The last generated token, fed in the next step.
    last: u32,
    generated: usize,
    max_new: usize,
    reservation: usize,
    cache: SequenceCache,
    sampler: Sampler,
    constraint: Option<Constrained>,
    stop_token_ids: Vec<u32>,
    ignore_eos: bool,
    min_tokens: usize,
    queued_for: Duration,
    sender: EventSender,
}

impl Running {
    fn prefilling(&self) -> bool {
        self.fed < self.prompt.len()
    }
}

#[derive(Default)]
struct Counters {
    running: AtomicUsize,
    waiting: AtomicUsize,
    kv_used: AtomicUsize,
    tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
    steps: AtomicU64,
    rows: AtomicU64,
}

struct Queue {
    waiting: VecDeque<Waiting>,
    shutdown: bool,
}

struct Shared {
    name: String,
    options: EngineOptions,
    queue: Mutex<Queue>,
    wake: Condvar,
    counters: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn engine_error(&self, message: impl Into<String>) -> GenerateError {
        GenerateError::Engine { model: self.name.clone(), message: message.into() }
    }
}

/// A language model with its scheduler thread.
pub struct LlmEngine {
    card: Arc<ModelCard>,
    shared: Arc<Shared>,
    vocab_size: usize,
    /// Built at the first constrained request (a trie over the whole vocabulary).
    grammars: OnceLock<Result<Grammars, String>>,
    /// Held while a grammar compiles: one compile at a time per model, so constrained requests
    /// can take at most one core from everything else.
    compiling: Mutex<()>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LlmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmEngine").field("model", &self.shared.name).field("options", &self.shared.options).finish()
    }
}

impl LlmEngine {
    pub(crate) fn start(name: &str, model: DecoderModel, card: ModelCard, options: EngineOptions) -> Result<LlmEngine, String> {
        if options.max_sequences == 0 || options.max_kv_tokens == 0 || options.prefill_chunk == 0 {
            return Err("max_sequences, max_kv_tokens and prefill_chunk must be at least 1".to_string());
        }
        let shared = Arc::new(Shared {
            name: name.to_string(),
            options,
            queue: Mutex::new(Queue { waiting: VecDeque::new(), shutdown: false }),
            wake: Condvar::new(),
            counters: Counters::default(),
        });
        let card = Arc::new(card);
        let vocab_size = model.config().vocab_size;
        let thread = std::thread::Builder::new()
            .name(format!("llm-{name}"))
            .spawn({
                let shared = Arc::clone(&shared);
                let card = Arc::clone(&card);
                move || Scheduler { model, card, shared, running: Vec::new(), kv_used: 0 }.run()
            })
            .map_err(|e| format!("starting the engine thread: {e}"))?;
        Ok(LlmEngine { card, shared, vocab_size, grammars: OnceLock::new(), compiling: Mutex::new(()), thread: Some(thread) })
    }
}

impl LlmEngine {
    /// A matcher for `constraint` (the model's grammars are built on first use). Compiling can
    /// take a while, so on a tokio runtime the calling thread first hands its other tasks off.
    fn compile(&self, constraint: &Constraint) -> Result<llguidance::Matcher, GenerateError> {
        let limit = self.shared.options.max_constraint_bytes;
        if constraint.byte_len() > limit {
            return Err(GenerateError::InvalidRequest(format!(
                "the output constraint is {} bytes; at most {limit} are accepted",
                constraint.byte_len()
            )));
        }
        off_runtime(|| {
            let _one_at_a_time = self.compiling.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let grammars = self.grammars.get_or_init(|| Grammars::new(&self.card, self.vocab_size));
            let grammars = grammars.as_ref().map_err(|message| self.shared.engine_error(message.clone()))?;
            grammars.matcher(constraint).map_err(GenerateError::InvalidRequest)
        })
    }

    /// The refusal a request gets now, before any work is spent on it: the engine stopping, or
    /// its queue full.
    fn refusal(&self, queue: &Queue) -> Option<GenerateError> {
        if queue.shutdown {
            return Some(GenerateError::ShuttingDown(self.shared.name.clone()));
        }
        let limit = self.shared.options.max_queue;
        if queue.waiting.len() >= limit {
            self.shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Some(GenerateError::Overloaded {
                model: self.shared.name.clone(),
                running: self.shared.counters.running.load(Ordering::Relaxed),
                waiting: queue.waiting.len(),
                limit,
            });
        }
        None
    }
}

/// Runs `work`, which may hold its thread for long, without stalling other tasks: on a
/// multi-thread tokio runtime the thread hands its queued tasks to another first.
fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

impl LanguageModel for LlmEngine {
    fn card(&self) -> &Arc<ModelCard> {
        &self.card
    }

    fn generate(&self, request: GenerateRequest) -> Result<TokenStream, GenerateError> {
        let options = &self.shared.options;
        let context = self.card.context_length;
        let prompt_len = request.prompt.len();
        if prompt_len == 0 {
            return Err(GenerateError::InvalidRequest("the prompt is empty".to_string()));
        }
        if let Some(bad) = request.prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(GenerateError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.vocab_size
            )));
        }
        let room = context.min(options.max_kv_tokens).saturating_sub(prompt_len);
        if room == 0 {
            return Err(GenerateError::InvalidRequest(format!(
                "the prompt has {prompt_len} tokens, which leaves no room to generate within {} positions",
                context.min(options.max_kv_tokens)
            )));
        }
        let max_new = request.stop.max_tokens.map_or(room, |m| (m as usize).min(room));
        if max_new == 0 {
            return Err(GenerateError::InvalidRequest("max_tokens must be at least 1".to_string()));
        }
        let constraint = match &request.constraint {
            Some(constraint) => {
                // A request that would be refused anyway costs no compile.
                if let Some(refused) = self.refusal(&self.shared.lock()) {
                    return Err(refused);
                }
                Some(Constrained::new(self.compile(constraint)?))
            }
            None => None,
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut queue = self.shared.lock();
        if let Some(refused) = self.refusal(&queue) {
            return Err(refused);
        }
        queue.waiting.push_back(Waiting { request, constraint, sender, submitted: Instant::now(), max_new });
        self.shared.counters.waiting.store(queue.waiting.len(), Ordering::Relaxed);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(TokenStream::new(receiver))
    }

    fn stats(&self) -> EngineStats {
        let c = &self.shared.counters;
        EngineStats {
            running: c.running.load(Ordering::Relaxed),
            waiting: c.waiting.load(Ordering::Relaxed),
            kv_tokens_used: c.kv_used.load(Ordering::Relaxed),
            kv_tokens_capacity: self.shared.options.max_kv_tokens,
            tokens_generated: c.tokens.load(Ordering::Relaxed),
            prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
            // No prefix cache: every prompt token is computed.
            prompt_tokens_cached: 0,
            sequences_finished: c.finished.load(Ordering::Relaxed),
            sequences_cancelled: c.cancelled.load(Ordering::Relaxed),
            sequences_rejected: c.rejected.load(Ordering::Relaxed),
            decode_steps: c.steps.load(Ordering::Relaxed),
            decode_rows: c.rows.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LlmEngine {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The engine thread's state.
struct Scheduler {
    model: DecoderModel,
    card: Arc<ModelCard>,
    shared: Arc<Shared>,
    running: Vec<Running>,
    kv_used: usize,
}

impl Scheduler {
    fn run(mut self) {
        while self.admit() {
            self.drop_cancelled();
            if !self.running.is_empty() {
                self.step();
            }
            self.publish_gauges();
        }
        let error = GenerateError::ShuttingDown(self.shared.name.clone());
        for sequence in self.running.drain(..) {
            let _ = sequence.sender.send(Err(error.clone()));
        }
        for waiting in self.shared.lock().waiting.drain(..) {
            let _ = waiting.sender.send(Err(error.clone()));
        }
    }

    /// Moves waiting requests into the batch while they fit, in arrival order; blocks while
    /// there is nothing to do. Returns false at shutdown.
    fn admit(&mut self) -> bool {
        let options = self.shared.options.clone();
        let mut queue = self.shared.lock();
        loop {
            if queue.shutdown {
                return false;
            }
            while self.running.len() < options.max_sequences {
                let Some(front) = queue.waiting.front() else { break };
                let reservation = front.request.prompt.len() + front.max_new;
                if self.kv_used + reservation > options.max_kv_tokens && !self.running.is_empty() {
                    break;
                }
                let Some(waiting) = queue.waiting.pop_front() else { break };
                if waiting.sender.is_closed() {
                    self.shared.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.kv_used += reservation;
                self.running.push(self.begin(waiting, reservation));
            }
            self.shared.counters.waiting.store(queue.waiting.len(), Ordering::Relaxed);
            if !self.running.is_empty() {
                return true;
            }
            self.publish_gauges();
            queue = self.shared.wake.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn begin(&self, waiting: Waiting, reservation: usize) -> Running {
        let Waiting { request, constraint, sender, submitted, max_new } = waiting;
        Running {
            sampler: Sampler::new(&request.sampling, request.logprobs, &request.prompt),
            constraint,
            cache: self.model.new_cache(),
            fed: 0,
            last: 0,
            generated: 0,
            max_new,
            reservation,
            stop_token_ids: request.stop.stop_token_ids,
            ignore_eos: request.stop.ignore_eos,
            min_tokens: request.stop.min_tokens as usize,
            queued_for: submitted.elapsed(),
            prompt: request.prompt,
            sender,
        }
    }

    /// Stops sequences whose client went away: within one step of the client leaving.
    fn drop_cancelled(&mut self) {
        let mut freed = 0;
        let counters = &self.shared.counters;
        self.running.retain(|s| {
            let gone = s.sender.is_closed();
            if gone {
                freed += s.reservation;
                counters.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
        self.kv_used -= freed;
    }

    /// One forward pass over the batch, then a token for every sequence past its prompt.
    fn step(&mut self) {
        let mut prefill_budget = self.shared.options.prefill_chunk;
        // Which running sequences take part, and how many tokens each feeds.
        let mut feeds: Vec<(usize, usize)> = Vec::with_capacity(self.running.len());
        for (index, sequence) in self.running.iter().enumerate() {
            if sequence.prefilling() {
                let n = (sequence.prompt.len() - sequence.fed).min(prefill_budget);
                if n > 0 {
                    prefill_budget -= n;
                    feeds.push((index, n));
                }
            } else {
                feeds.push((index, 1));
            }
        }
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        let logits = {
            let mut feed_iter = feeds.iter().peekable();
            let mut inputs = Vec::with_capacity(feeds.len());
            for (index, sequence) in self.running.iter_mut().enumerate() {
                let Some(&&(wanted, n)) = feed_iter.peek() else { break };
                if wanted != index {
                    continue;
                }
                feed_iter.next();
                let Running { prompt, fed, last, cache, .. } = sequence;
                let tokens = if *fed < prompt.len() { &prompt[*fed..*fed + n] } else { std::slice::from_ref(&*last) };
                inputs.push(SequenceInput { tokens, cache });
            }
            self.model.forward(&mut inputs).and_then(|l| l.to_vec2::<f32>())
        };
        counters.steps.fetch_add(1, Ordering::Relaxed);
        counters.rows.fetch_add(feeds.len() as u64, Ordering::Relaxed);
        let logits = match logits {
            Ok(logits) => logits,
            Err(e) => {
                tracing::error!(model = %self.shared.name, "forward pass failed: {e}");
                let error = self.shared.engine_error(format!("forward pass failed: {e}"));
                let failed: Vec<usize> = feeds.iter().map(|&(i, _)| i).collect();
                for sequence in self.remove_many(&failed) {
                    let _ = sequence.sender.send(Err(error.clone()));
                }
                return;
            }
        };
        let mut done = Vec::new();
        for (&(index, n), row) in feeds.iter().zip(&logits) {
            let sequence = &mut self.running[index];
            if sequence.prefilling() {
                sequence.fed += n;
                counters.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
                if sequence.prefilling() {
                    continue;
                }
            }
            if let Some(finish) = next_token(sequence, row, &self.card, self.model.config().context_length, counters) {
                done.push((index, finish));
            }
        }
        let finished: Vec<usize> = done.iter().map(|&(i, _)| i).collect();
        for (sequence, (_, reason)) in self.remove_many(&finished).into_iter().zip(done) {
            match reason {
                Some(reason) => {
                    counters.finished.fetch_add(1, Ordering::Relaxed);
                    let _ = sequence.sender.send(Ok(GenerateEvent::Finished {
                        reason,
                        prompt_tokens: sequence.prompt.len() as u32,
                        completion_tokens: sequence.generated as u32,
                        queued_for: sequence.queued_for,
                    }));
                }
                None => {
                    counters.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Takes the sequences at `indices` (ascending) out of the batch, in that order, and frees
    /// their reservations.
    fn remove_many(&mut self, indices: &[usize]) -> Vec<Running> {
        let mut removed = Vec::with_capacity(indices.len());
        for &index in indices.iter().rev() {
            let sequence = self.running.remove(index);
            self.kv_used -= sequence.reservation;
            removed.push(sequence);
        }
        removed.reverse();
        removed
    }

    fn publish_gauges(&self) {
        let counters = &self.shared.counters;
        counters.running.store(self.running.len(), Ordering::Relaxed);
        counters.kv_used.store(self.kv_used, Ordering::Relaxed);
    }
}

/// Samples a sequence's next token from its logits and sends it. Returns `Some(Some(reason))`
/// when the sequence is finished, `Some(None)` when it ends otherwise (its client has gone, or its
/// grammar failed and the client was told), `None` to go on.
fn next_token(
    sequence: &mut Running,
    logits: &[f32],
    card: &ModelCard,
    context_length: usize,
    counters: &Counters,
) -> Option<Option<FinishReason>> {
    let token = match &mut sequence.constraint {
        Some(constraint) => match constraint.mask() {
            Ok(allowed) => sequence.sampler.sample_among(logits, &allowed),
            Err(message) => return Some(constraint_failed(sequence, message)),
        },
        None => sequence.sampler.sample(logits),
    };
    sequence.generated += 1;
    counters.tokens.fetch_add(1, Ordering::Relaxed);
    let id = token.id;
    let eos = card.eos_token_ids.contains(&id)
        && (sequence.constraint.as_mut().is_some_and(Constrained::accepting)
            || (!sequence.ignore_eos && sequence.generated > sequence.min_tokens));
    if eos || sequence.stop_token_ids.contains(&id) {
        return Some(Some(FinishReason::Stop));
    }
    let complete = match sequence.constraint.as_mut().map(|constraint| constraint.advance(id)) {
        Some(Err(message)) => return Some(constraint_failed(sequence, message)),
        Some(Ok(complete)) => complete,
        None => false,
    };
    if sequence.sender.send(Ok(GenerateEvent::Token(token))).is_err() {
        return Some(None);
    }
    if complete {
        return Some(Some(FinishReason::Stop));
    }
    sequence.last = id;
    let full = sequence.cache.len() + 1 > context_length;
    if sequence.generated >= sequence.max_new || full {
        return Some(Some(FinishReason::Length));
    }
    None
}

/// Ends a sequence whose grammar failed: the client gets the error, the batch goes on.
fn constraint_failed(sequence: &Running, message: String) -> Option<FinishReason> {
    let _ = sequence.sender.send(Err(GenerateError::InvalidRequest(message)));
    None
}
