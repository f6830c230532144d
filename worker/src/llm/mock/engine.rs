//! The mock engine: the real engine's scheduling (a queue, continuous batching, one thread
//! running decode steps) over the real engine's block pool ([`BlockPool`]: allocation, prefix
//! cache, LRU eviction, KV events), with sleeps in place of arithmetic. A sequence is admitted when
//! the batch has a place and the pool has room for its prompt's blocks (every full block of the
//! prompt found in the cache is reused: the mock needs no logits of the last prompt token);
//! its prefill costs `prefill_us_per_token` for each prompt token *not* found in the cache;
//! every step costs `decode_ms_per_step` and gives each running sequence one token.
//!
//! Generated tokens are the bytes of a fixed English text, cycled from an offset taken from
//! `sampling.seed` (0 without one), so output is printable and repeatable. Log-probabilities,
//! when asked for, are synthetic: 0 for the chosen token, which heads the top list, and -1, -2,
//! ... for other printable bytes after it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};

use super::card::mock_card;
use super::options::{MockError, MockOptions};
use crate::kv::{BlockHash, KvEvent, block_hashes, chain_hash};
use crate::llm::block_pool::{BlockId, BlockPool};
use crate::llm::{
    EngineStats, FinishReason, GenerateError, GenerateEvent, GenerateRequest, GeneratedToken, LanguageModel, ModelCard,
    TokenStream,
};

/// What the mock model "writes", byte by byte.
const TEXT: &[u8] = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt \
ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut \
aliquip ex ea commodo consequat. ";

/// Printable ASCII, where synthetic alternatives are drawn from.
const PRINTABLE_FIRST: u32 = 0x20;
const PRINTABLE_COUNT: u32 = 95;

type EventSender = mpsc::UnboundedSender<Result<GenerateEvent, GenerateError>>;

struct Waiting {
    request: GenerateRequest,
    /// The prompt's full blocks, hashed on the caller's thread.
    hashes: Vec<BlockHash>,
    sender: EventSender,
    submitted: Instant,
    max_new: usize,
}

struct Running {
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Prompt tokens found in the cache at admission.
    cached_tokens: usize,
    /// The blocks under its tokens, in order.
    blocks: Vec<BlockId>,
    /// Chained hashes of the leading full blocks, committed to the prefix cache.
    hashes: Vec<BlockHash>,
    /// Cleared when a generated token found no block: the mock does not preempt, it stops
    /// holding (and caching) the rest.
    caching: bool,
    generated: usize,
    max_new: usize,
    text_offset: usize,
    stop_token_ids: Vec<u32>,
    ignore_eos: bool,
    min_tokens: usize,
    logprobs: Option<u32>,
    queued_for: Duration,
    sender: EventSender,
}

#[derive(Default)]
struct Counters {
    running: AtomicUsize,
    waiting: AtomicUsize,
    kv_blocks_used: AtomicUsize,
    kv_blocks_cached: AtomicUsize,
    tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    prompt_tokens_cached: AtomicU64,
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
    options: MockOptions,
    queue: Mutex<Queue>,
    wake: Condvar,
    counters: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A simulated language model with its scheduler thread; dropping it stops the thread.
pub struct MockEngine {
    card: Arc<ModelCard>,
    shared: Arc<Shared>,
    kv_events: broadcast::Sender<KvEvent>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockEngine").field("model", &self.shared.name).field("options", &self.shared.options).finish()
    }
}

impl MockEngine {
    /// Starts an engine; needs no async runtime.
    ///
    /// # Panics
    /// When the options are invalid (see [`MockOptions::validate`]) or the thread cannot start;
    /// [`try_new`](Self::try_new) returns those as errors.
    pub fn new(name: &str, options: MockOptions) -> Arc<MockEngine> {
        MockEngine::try_new(name, options).unwrap_or_else(|e| panic!("mock engine '{name}': {e}"))
    }

    pub fn try_new(name: &str, options: MockOptions) -> Result<Arc<MockEngine>, MockError> {
        options.validate()?;
        let cache = BlockPool::new(options.kv_blocks, options.block_size, true);
        let kv_events = cache.event_sender();
        let card = Arc::new(mock_card(options.context_length));
        let shared = Arc::new(Shared {
            name: name.to_string(),
            options,
            queue: Mutex::new(Queue { waiting: VecDeque::new(), shutdown: false }),
            wake: Condvar::new(),
            counters: Counters::default(),
        });
        let thread = std::thread::Builder::new()
            .name(format!("mock-{name}"))
            .spawn({
                let shared = Arc::clone(&shared);
                let eos_token_ids = card.eos_token_ids.clone();
                move || Scheduler { shared, eos_token_ids, cache, running: Vec::new() }.run()
            })
            .map_err(|e| MockError::Spawn(e.to_string()))?;
        Ok(Arc::new(MockEngine { card, shared, kv_events, thread: Some(thread) }))
    }

    pub fn options(&self) -> &MockOptions {
        &self.shared.options
    }
}

impl LanguageModel for MockEngine {
    fn card(&self) -> &Arc<ModelCard> {
        &self.card
    }

    /// Takes any token ids: the mock has no embedding table to index.
    fn generate(&self, request: GenerateRequest) -> Result<TokenStream, GenerateError> {
        let options = &self.shared.options;
        let prompt_len = request.prompt.len();
        if prompt_len == 0 {
            return Err(GenerateError::InvalidRequest("the prompt is empty".to_string()));
        }
        if request.constraint.is_some() {
            // Its tokens are simulated: no grammar could hold them.
            return Err(GenerateError::InvalidRequest("the mock engine does not support structured output".to_string()));
        }
        let context = options.context_length;
        if prompt_len >= context {
            return Err(GenerateError::InvalidRequest(format!(
                "the prompt has {prompt_len} tokens, which leaves no room to generate within the context length of {context}"
            )));
        }
        let blocks = prompt_len.div_ceil(options.block_size);
        if blocks > options.kv_blocks {
            return Err(GenerateError::InvalidRequest(format!(
                "the prompt has {prompt_len} tokens, {blocks} blocks of {}: more than the whole KV cache of {} blocks",
                options.block_size, options.kv_blocks
            )));
        }
        let room = context - prompt_len;
        let max_new = request.stop.max_tokens.map_or(room, |m| (m as usize).min(room));
        if max_new == 0 {
            return Err(GenerateError::InvalidRequest("max_tokens must be at least 1".to_string()));
        }
        let hashes = block_hashes(&request.prompt, options.block_size);
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut queue = self.shared.lock();
        if queue.shutdown {
            return Err(GenerateError::ShuttingDown(self.shared.name.clone()));
        }
        if queue.waiting.len() >= options.max_queue {
            self.shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(GenerateError::Overloaded {
                model: self.shared.name.clone(),
                running: self.shared.counters.running.load(Ordering::Relaxed),
                waiting: queue.waiting.len(),
                limit: options.max_queue,
            });
        }
        queue.waiting.push_back(Waiting { request, hashes, sender, submitted: Instant::now(), max_new });
        self.shared.counters.waiting.store(queue.waiting.len(), Ordering::Relaxed);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(TokenStream::new(receiver))
    }

    fn stats(&self) -> EngineStats {
        let c = &self.shared.counters;
        let block_size = self.shared.options.block_size;
        EngineStats {
            running: c.running.load(Ordering::Relaxed),
            waiting: c.waiting.load(Ordering::Relaxed),
            kv_tokens_used: c.kv_blocks_used.load(Ordering::Relaxed) * block_size,
            kv_tokens_capacity: self.shared.options.kv_blocks * block_size,
            tokens_generated: c.tokens.load(Ordering::Relaxed),
            prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
            prompt_tokens_cached: c.prompt_tokens_cached.load(Ordering::Relaxed),
            sequences_finished: c.finished.load(Ordering::Relaxed),
            sequences_cancelled: c.cancelled.load(Ordering::Relaxed),
            sequences_rejected: c.rejected.load(Ordering::Relaxed),
            decode_steps: c.steps.load(Ordering::Relaxed),
            decode_rows: c.rows.load(Ordering::Relaxed),
            // The mock admits only what fits and never preempts.
            sequences_preempted: 0,
            kv_blocks_cached: c.kv_blocks_cached.load(Ordering::Relaxed),
            // Nor does it offload.
            kv_blocks_offloaded: 0,
            kv_blocks_restored: 0,
        }
    }

    fn kv_events(&self) -> Option<broadcast::Receiver<KvEvent>> {
        Some(self.kv_events.subscribe())
    }
}

impl Drop for MockEngine {
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
    shared: Arc<Shared>,
    eos_token_ids: Vec<u32>,
    cache: BlockPool,
    running: Vec<Running>,
}

impl Scheduler {
    fn run(mut self) {
        while let Some(prefill_tokens) = self.admit() {
            self.drop_cancelled();
            if self.running.is_empty() {
                continue;
            }
            let options = &self.shared.options;
            let cost = Duration::from_millis(options.decode_ms_per_step)
                + Duration::from_micros(options.prefill_us_per_token.saturating_mul(prefill_tokens as u64));
            if !self.pause(cost) {
                break;
            }
            self.step();
            self.publish_gauges();
        }
        let error = GenerateError::ShuttingDown(self.shared.name.clone());
        for sequence in std::mem::take(&mut self.running) {
            self.cache.release(&sequence.blocks);
            let _ = sequence.sender.send(Err(error.clone()));
        }
        for waiting in self.shared.lock().waiting.drain(..) {
            let _ = waiting.sender.send(Err(error.clone()));
        }
        self.publish_gauges();
    }

    /// Moves waiting requests into the batch, in arrival order, while the batch has a place and
    /// the cache room for the prompt; blocks while there is nothing to run. Returns the prompt
    /// tokens the admitted sequences must compute, or `None` at shutdown.
    fn admit(&mut self) -> Option<usize> {
        let mut prefill_tokens = 0;
        let block_size = self.shared.options.block_size;
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        let mut queue = shared.lock();
        loop {
            if queue.shutdown {
                return None;
            }
            while self.running.len() < shared.options.max_sequences {
                let Some(front) = queue.waiting.front() else { break };
                if front.sender.is_closed() {
                    queue.waiting.pop_front();
                    counters.cancelled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let reused = self.cache.longest_prefix(&front.request.prompt, &front.hashes);
                let needed = front.request.prompt.len().div_ceil(block_size) - reused.len();
                let idle_taken = reused.iter().filter(|&&id| self.cache.refs(id) == 0).count();
                if needed > self.cache.available() - idle_taken {
                    if !self.running.is_empty() {
                        // Running sequences will free blocks as they finish.
                        break;
                    }
                    // Unreachable: an empty batch leaves the whole pool, and longer prompts are refused.
                    if let Some(waiting) = queue.waiting.pop_front() {
                        let message = format!("the KV cache is stuck: {needed} blocks needed, {} free", self.cache.available());
                        let _ = waiting.sender.send(Err(GenerateError::Engine { model: shared.name.clone(), message }));
                    }
                    continue;
                }
                let Some(waiting) = queue.waiting.pop_front() else { break };
                let prompt_len = waiting.request.prompt.len();
                let cached = reused.len() * block_size;
                prefill_tokens += prompt_len - cached;
                counters.prompt_tokens.fetch_add(prompt_len as u64, Ordering::Relaxed);
                counters.prompt_tokens_cached.fetch_add(cached as u64, Ordering::Relaxed);
                self.cache.share(&reused);
                let mut sequence = begin(waiting, cached);
                sequence.hashes.truncate(reused.len());
                sequence.blocks = reused;
                hold_blocks(&mut self.cache, &mut sequence, block_size);
                self.running.push(sequence);
            }
            counters.waiting.store(queue.waiting.len(), Ordering::Relaxed);
            self.cache.flush_events();
            if !self.running.is_empty() {
                return Some(prefill_tokens);
            }
            self.publish_gauges();
            queue = shared.wake.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Stops sequences whose client went away and frees their blocks.
    fn drop_cancelled(&mut self) {
        let (gone, kept): (Vec<Running>, Vec<Running>) =
            std::mem::take(&mut self.running).into_iter().partition(|s| s.sender.is_closed());
        self.running = kept;
        for sequence in gone {
            self.cache.release(&sequence.blocks);
            self.shared.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sleeps for the simulated cost of a step; false when the engine is shutting down.
    fn pause(&self, cost: Duration) -> bool {
        let queue = self.shared.lock();
        let (queue, _) =
            self.shared.wake.wait_timeout_while(queue, cost, |q| !q.shutdown).unwrap_or_else(|poisoned| poisoned.into_inner());
        !queue.shutdown
    }

    /// One token for every running sequence, then the finished ones leave the batch.
    fn step(&mut self) {
        let counters = &self.shared.counters;
        counters.steps.fetch_add(1, Ordering::Relaxed);
        counters.rows.fetch_add(self.running.len() as u64, Ordering::Relaxed);
        let block_size = self.shared.options.block_size;
        let mut done = Vec::new();
        for (index, sequence) in self.running.iter_mut().enumerate() {
            if let Some(reason) = next_token(sequence, &self.eos_token_ids, counters) {
                done.push((index, reason));
            } else {
                hold_blocks(&mut self.cache, sequence, block_size);
            }
        }
        // Announced before any client hears its sequence finished.
        self.cache.flush_events();
        for &(index, reason) in done.iter().rev() {
            let sequence = self.running.remove(index);
            self.cache.release(&sequence.blocks);
            let Some(reason) = reason else {
                counters.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            counters.finished.fetch_add(1, Ordering::Relaxed);
            let _ = sequence.sender.send(Ok(GenerateEvent::Finished {
                reason,
                prompt_tokens: u32::try_from(sequence.prompt_len).unwrap_or(u32::MAX),
                completion_tokens: u32::try_from(sequence.generated).unwrap_or(u32::MAX),
                cached_tokens: u32::try_from(sequence.cached_tokens).unwrap_or(u32::MAX),
                queued_for: sequence.queued_for,
            }));
        }
    }

    fn publish_gauges(&self) {
        let counters = &self.shared.counters;
        counters.running.store(self.running.len(), Ordering::Relaxed);
        counters.kv_blocks_used.store(self.cache.in_use(), Ordering::Relaxed);
        counters.kv_blocks_cached.store(self.cache.cached(), Ordering::Relaxed);
    }
}

fn begin(waiting: Waiting, cached_tokens: usize) -> Running {
    let Waiting { request, hashes, sender, submitted, max_new } = waiting;
    let text_offset = request.sampling.seed.map_or(0, |seed| (seed % TEXT.len() as u64) as usize);
    let mut tokens = request.prompt;
    tokens.reserve(max_new);
    Running {
        prompt_len: tokens.len(),
        cached_tokens,
        tokens,
        blocks: Vec::new(),
        hashes,
        caching: true,
        generated: 0,
        max_new,
        text_offset,
        stop_token_ids: request.stop.stop_token_ids,
        ignore_eos: request.stop.ignore_eos,
        min_tokens: request.stop.min_tokens as usize,
        logprobs: request.logprobs,
        queued_for: submitted.elapsed(),
        sender,
    }
}

/// Makes and sends a sequence's next token. Returns `Some(Some(reason))` when the sequence is
/// finished, `Some(None)` when its client has gone, `None` to go on.
fn next_token(sequence: &mut Running, eos_token_ids: &[u32], counters: &Counters) -> Option<Option<FinishReason>> {
    let id = u32::from(TEXT[(sequence.text_offset + sequence.generated) % TEXT.len()]);
    sequence.generated += 1;
    counters.tokens.fetch_add(1, Ordering::Relaxed);
    // The mock never writes an end-of-sequence token, but honours them as the real engine does.
    let eos = !sequence.ignore_eos && sequence.generated > sequence.min_tokens && eos_token_ids.contains(&id);
    if eos || sequence.stop_token_ids.contains(&id) {
        return Some(Some(FinishReason::Stop));
    }
    let token = GeneratedToken {
        id,
        logprob: sequence.logprobs.map(|_| 0.0),
        top_logprobs: sequence.logprobs.map_or_else(Vec::new, |n| synthetic_top_logprobs(id, n)),
        prompt_cached: (sequence.generated == 1).then(|| u32::try_from(sequence.cached_tokens).unwrap_or(u32::MAX)),
    };
    if sequence.sender.send(Ok(GenerateEvent::Token(token))).is_err() {
        return Some(None);
    }
    sequence.tokens.push(id);
    if sequence.generated >= sequence.max_new {
        return Some(Some(FinishReason::Length));
    }
    None
}

/// `id` first at 0, then the printable bytes after it at -1, -2, ...; at most 95 entries.
fn synthetic_top_logprobs(id: u32, n: u32) -> Vec<(u32, f32)> {
    let start = id.saturating_sub(PRINTABLE_FIRST);
    (0..n.min(PRINTABLE_COUNT)).map(|k| (PRINTABLE_FIRST + (start + k) % PRINTABLE_COUNT, -(k as f32))).collect()
}

/// Gives a sequence the blocks its tokens need and commits the full ones to the prefix cache
/// (chained on the blocks before), so a later prompt carrying this sequence's output, such as the
/// next turn of a chat, finds them. With no block left the sequence stops holding more.
fn hold_blocks(cache: &mut BlockPool, sequence: &mut Running, block_size: usize) {
    if !sequence.caching {
        return;
    }
    while sequence.blocks.len() * block_size < sequence.tokens.len() {
        match cache.allocate() {
            Some(id) => sequence.blocks.push(id),
            None => {
                sequence.caching = false;
                return;
            }
        }
    }
    while sequence.hashes.len() < sequence.tokens.len() / block_size {
        let i = sequence.hashes.len();
        let block = &sequence.tokens[i * block_size..(i + 1) * block_size];
        let hash = chain_hash(sequence.hashes.last().copied().unwrap_or(0), block);
        cache.commit(sequence.blocks[i], i.checked_sub(1).map(|p| sequence.blocks[p]), hash, block);
        sequence.hashes.push(hash);
    }
}
