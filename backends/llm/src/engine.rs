//! The engine: one thread per model runs decode steps over a batch of sequences
//! ([`engine_loop`](super::engine_loop)), with the KV cache in blocks and a prefix cache over
//! them. Between steps it drops sequences whose client went away, finishes those that stopped,
//! and admits waiting ones while the batch has a place and the block pool has room (continuous
//! batching). This module is the engine's front: start, validation, admission to the queue; what
//! it shares with the loop is in `engine_state`.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::{broadcast, mpsc};

use super::block_pool::BlockPool;
use super::constraint::{Constrained, Grammars};
use super::engine_loop::EngineLoop;
use super::lora::LoraAdapter;
use super::model::DecoderModel;
use super::model::config::DecoderConfig;
use super::offload::{OffloadCounters, OffloadTier};
use super::pins::Pins;
use super::step_model::{CandleStep, ModelShape, StepModel};
use crate::engine_state::{Counters, EngineOptions, Queue, Shared, Waiting};
use crate::export::ExportSink;
use tritium_backend_api::kv::{KvEvent, block_hashes_from};
use tritium_backend_api::llm::AdapterInfo;
use tritium_backend_api::llm::Constraint;
use tritium_backend_api::llm::LanguageModel;
use tritium_backend_api::llm::ModelCard;
use tritium_backend_api::llm::{EngineStats, GenerateError, GenerateRequest, TokenStream};
use tritium_backend_api::llm::{ImportedBlocks, KvExport, TransferLayout};

/// A language model with its scheduler thread.
pub struct LlmEngine {
    card: Arc<ModelCard>,
    shared: Arc<Shared>,
    vocab_size: usize,
    /// Positions the block pool holds.
    kv_capacity: usize,
    kv_events: broadcast::Sender<KvEvent>,
    transfer_layout: TransferLayout,
    offload_counters: Option<Arc<OffloadCounters>>,
    /// Built at the first constrained request (a trie over the whole vocabulary).
    grammars: OnceLock<Result<Grammars, String>>,
    /// Held while a grammar compiles: one compile at a time per model, so constrained requests
    /// can take at most one core from everything else.
    compiling: Mutex<()>,
    /// The base's shape, which adapters must fit (`None`: this engine's model takes none).
    lora_base: Option<DecoderConfig>,
    adapters: RwLock<HashMap<String, Arc<LoraAdapter>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LlmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmEngine").field("model", &self.shared.name).field("options", &self.shared.options).finish()
    }
}

impl LlmEngine {
    pub(crate) fn start(name: &str, model: DecoderModel, card: ModelCard, options: EngineOptions) -> Result<LlmEngine, String> {
        let shape = CandleStep::shape(&model);
        let config = model.config().clone();
        let loras = options.loras.clone();
        let draft = match &options.draft_model_path {
            Some(path) => Some(load_draft(path, &card, shape.vocab_size)?),
            None => None,
        };
        let mut engine = LlmEngine::start_with(name, shape, card, options, |blocks, block_size| {
            let kv = model.new_kv_store(blocks, block_size)?;
            let draft = match draft {
                // Its own store, with the same blocks: a sequence's draft positions live at its block ids.
                Some(draft) => {
                    let kv = draft.new_kv_store(blocks, block_size)?;
                    Some(Box::new(CandleStep { model: draft, kv }) as Box<dyn StepModel>)
                }
                None => None,
            };
            Ok((Box::new(CandleStep { model, kv }) as Box<dyn StepModel>, draft))
        })?;
        engine.lora_base = Some(config);
        for (adapter, path) in loras {
            engine.load_adapter(&adapter, &path).map_err(|e| format!("--lora {adapter}={}: {e}", path.display()))?;
        }
        Ok(engine)
    }

    /// Starts the engine thread over the model `build` makes for a pool of `blocks` blocks of
    /// `block_size` positions.
    pub(crate) fn start_with(
        name: &str,
        shape: ModelShape,
        card: ModelCard,
        options: EngineOptions,
        build: impl FnOnce(usize, usize) -> candle_core::Result<(Box<dyn StepModel>, Option<Box<dyn StepModel>>)>,
    ) -> Result<LlmEngine, String> {
        if options.max_sequences == 0 || options.max_kv_tokens == 0 || options.prefill_chunk == 0 || options.kv_block_size == 0 {
            return Err("max_sequences, max_kv_tokens, prefill_chunk and kv_block_size must be at least 1".to_string());
        }
        if let Some(speculative) = &options.speculative {
            speculative.validate()?;
        }
        let block_size = options.kv_block_size;
        if block_size > MAX_KV_BLOCK_SIZE || block_size > options.max_kv_tokens {
            return Err(format!(
                "a KV block of {block_size} positions is more than {} (the largest block) or than the pool of {}",
                MAX_KV_BLOCK_SIZE, options.max_kv_tokens
            ));
        }
        let blocks = options.max_kv_tokens.div_ceil(block_size);
        let bytes = (blocks * block_size).saturating_mul(shape.kv_bytes_per_token);
        if let Some(memory) = physical_memory_bytes()
            && bytes > memory
        {
            return Err(format!(
                "a KV cache of {} positions takes {} MiB, more than this machine's {} MiB: lower --llm-max-kv-tokens",
                blocks * block_size,
                bytes >> 20,
                memory >> 20
            ));
        }
        let (model, draft) =
            build(blocks, block_size).map_err(|e| format!("a KV store of {blocks} blocks of {block_size} positions: {e}"))?;
        let mut pool = BlockPool::new(blocks, block_size, options.prefix_caching);
        let kv_events = pool.event_sender();
        let word = |n: usize| u32::try_from(n).map_err(|_| format!("a KV layout dimension of {n}"));
        let transfer_layout = TransferLayout {
            model: name.to_string(),
            block_size: word(block_size)?,
            dtype: shape.kv_dtype.clone(),
            layers: word(shape.layers)?,
            kv_heads: word(shape.kv_heads)?,
            head_dim: word(shape.head_dim)?,
        };
        let offload = match &options.offload {
            Some(_) if !options.prefix_caching => {
                return Err("the KV offload tier needs the prefix cache (drop --llm-no-prefix-cache)".to_string());
            }
            Some(offload) => {
                pool.record_evictions();
                Some(OffloadTier::open(offload, name, crate::export::block_layout(&transfer_layout), kv_events.clone())?)
            }
            None => None,
        };
        let offload_counters = offload.as_ref().map(|tier| Arc::clone(&tier.counters));
        tracing::info!(model = name, blocks, block_size, mib = bytes >> 20, prefix_caching = options.prefix_caching, "KV cache");
        let pinned_blocks = blocks * usize::from(options.max_pinned_kv_permille.min(1000)) / 1000;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            options,
            queue: Mutex::new(Queue { waiting: VecDeque::new(), shutdown: false }),
            wake: Condvar::new(),
            counters: Counters::default(),
        });
        let card = Arc::new(card);
        let thread = std::thread::Builder::new()
            .name(format!("llm-{name}"))
            .spawn({
                let shared = Arc::clone(&shared);
                let card = Arc::clone(&card);
                move || {
                    let preempted = VecDeque::new();
                    let pins = Pins::new(pinned_blocks);
                    EngineLoop { model, draft, pool, offload, card, shared, running: Vec::new(), preempted, admitted: 0, pins }
                        .run()
                }
            })
            .map_err(|e| format!("starting the engine thread: {e}"))?;
        Ok(LlmEngine {
            card,
            shared,
            vocab_size: shape.vocab_size,
            kv_capacity: blocks * block_size,
            kv_events,
            transfer_layout,
            offload_counters,
            grammars: OnceLock::new(),
            compiling: Mutex::new(()),
            lora_base: None,
            adapters: RwLock::new(HashMap::new()),
            thread: Some(thread),
        })
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
            let _one_at_a_time = self.compiling.lock();
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

/// The draft model of speculative decoding at `path`, which must share the target's tokenizer.
fn load_draft(path: &std::path::Path, card: &ModelCard, vocab_size: usize) -> Result<DecoderModel, String> {
    let (draft, draft_card) = super::model::load(path, &super::model::default_device())
        .map_err(|e| format!("--draft-model-path {}: {e}", path.display()))?;
    if draft.config().vocab_size != vocab_size || draft_card.tokenizer_json != card.tokenizer_json {
        return Err(format!("--draft-model-path {}: the draft model's tokenizer is not the model's", path.display()));
    }
    Ok(draft)
}

/// The largest `kv_block_size` accepted.
const MAX_KV_BLOCK_SIZE: usize = 1024;

/// The machine's memory, where the system says (Linux: `/proc/meminfo`'s `MemTotal`).
fn physical_memory_bytes() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Runs `work`, which may hold its thread for long, without stalling other tasks: on a
/// multi-thread tokio runtime the thread hands its queued tasks to another first.
fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

impl LlmEngine {
    /// Validates and queues a sequence, with blocks from another engine or for one.
    fn submit(
        &self,
        request: GenerateRequest,
        imported: Option<ImportedBlocks>,
        export: Option<ExportSink>,
    ) -> Result<TokenStream, GenerateError> {
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
        let positions = context.min(self.kv_capacity);
        let room = positions.saturating_sub(prompt_len);
        if room == 0 {
            return Err(GenerateError::InvalidRequest(format!(
                "the prompt has {prompt_len} tokens, which leaves no room to generate within {positions} positions"
            )));
        }
        let max_new = request.stop.max_tokens.map_or(room, |m| (m as usize).min(room));
        if max_new == 0 {
            return Err(GenerateError::InvalidRequest("max_tokens must be at least 1".to_string()));
        }
        let constraint = match &request.constraint {
            Some(constraint) => {
                // A request that would be refused anyway costs no compile.
                if let Some(refused) = self.refusal(&self.shared.queue.lock()) {
                    return Err(refused);
                }
                Some(Constrained::new(self.compile(constraint)?))
            }
            None => None,
        };
        let lora = match &request.adapter {
            Some(name) => Some(self.adapter(name).ok_or_else(|| {
                GenerateError::InvalidRequest(format!("the model '{}' has no LoRA adapter '{name}'", self.shared.name))
            })?),
            None => None,
        };
        let hashes = block_hashes_from(lora.as_ref().map_or(0, |l| l.seed), &request.prompt, options.kv_block_size);
        // Blocks another engine computed are the base model's: an adapted sequence computes its own.
        let imported = if lora.is_some() { None } else { imported };
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut queue = self.shared.queue.lock();
        if let Some(refused) = self.refusal(&queue) {
            return Err(refused);
        }
        let rank = options.scheduling_policy.rank(request.priority);
        queue.push(Waiting {
            rank,
            lora,
            request,
            hashes,
            constraint,
            sender,
            submitted: Instant::now(),
            max_new,
            imported,
            export,
        });
        self.shared.counters.waiting.store(queue.waiting.len(), Ordering::Relaxed);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(TokenStream::new(receiver))
    }
}

impl LlmEngine {
    fn adapter(&self, name: &str) -> Option<Arc<LoraAdapter>> {
        self.adapters.read().get(name).cloned()
    }
}

fn adapter_info(adapter: &LoraAdapter) -> AdapterInfo {
    AdapterInfo { name: adapter.name.clone(), path: adapter.path.clone(), rank: adapter.rank, kv_seed: adapter.seed }
}

impl LanguageModel for LlmEngine {
    fn card(&self) -> &Arc<ModelCard> {
        &self.card
    }

    fn generate(&self, request: GenerateRequest) -> Result<TokenStream, GenerateError> {
        self.submit(request, None, None)
    }

    fn kv_layout(&self) -> Option<TransferLayout> {
        Some(self.transfer_layout.clone())
    }

    fn generate_with_prefix(&self, request: GenerateRequest, prefix: ImportedBlocks) -> Result<TokenStream, GenerateError> {
        self.submit(request, Some(prefix), None)
    }

    fn export_prefix(&self, prompt: Vec<u32>, first_block: usize) -> Result<KvExport, GenerateError> {
        let size = self.shared.options.kv_block_size;
        // The blocks a decode engine can take: every full one before the prompt's last token.
        let until = prompt.len().saturating_sub(1) / size;
        let (sender, receiver) = mpsc::unbounded_channel();
        if first_block >= until {
            return Ok(KvExport::new(self.transfer_layout.clone(), first_block, first_block, receiver, None));
        }
        let request = GenerateRequest {
            prompt: prompt[..until * size].to_vec(),
            sampling: tritium_backend_api::llm::SamplingOptions { temperature: 0.0, ..Default::default() },
            stop: tritium_backend_api::llm::StopOptions { max_tokens: Some(1), ignore_eos: true, ..Default::default() },
            ..GenerateRequest::default()
        };
        let sink = ExportSink { sender, next: first_block, until };
        let sequence = self.submit(request, None, Some(sink))?;
        Ok(KvExport::new(self.transfer_layout.clone(), first_block, until, receiver, Some(sequence)))
    }
    fn stats(&self) -> EngineStats {
        let c = &self.shared.counters;
        EngineStats {
            running: c.running.load(Ordering::Relaxed),
            waiting: c.waiting.load(Ordering::Relaxed),
            kv_tokens_used: c.kv_used.load(Ordering::Relaxed),
            kv_tokens_capacity: self.kv_capacity,
            max_batched_tokens: self.shared.options.prefill_chunk,
            tokens_generated: c.tokens.load(Ordering::Relaxed),
            prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
            prompt_tokens_cached: c.prompt_tokens_cached.load(Ordering::Relaxed),
            sequences_finished: c.finished.load(Ordering::Relaxed),
            sequences_cancelled: c.cancelled.load(Ordering::Relaxed),
            sequences_rejected: c.rejected.load(Ordering::Relaxed),
            sequences_preempted: c.preempted.load(Ordering::Relaxed),
            kv_blocks_cached: c.kv_cached_blocks.load(Ordering::Relaxed),
            kv_blocks_offloaded: self.offload_counters.as_ref().map_or(0, |o| o.written.load(Ordering::Relaxed)),
            kv_blocks_restored: self.offload_counters.as_ref().map_or(0, |o| o.restored.load(Ordering::Relaxed)),
            decode_steps: c.steps.load(Ordering::Relaxed),
            decode_rows: c.rows.load(Ordering::Relaxed),
            spec_decode_drafts: c.spec_drafts.load(Ordering::Relaxed),
            spec_decode_draft_tokens: c.spec_draft_tokens.load(Ordering::Relaxed),
            spec_decode_accepted_tokens: c.spec_accepted_tokens.load(Ordering::Relaxed),
        }
    }

    fn kv_events(&self) -> Option<broadcast::Receiver<KvEvent>> {
        Some(self.kv_events.subscribe())
    }

    fn adapters(&self) -> Vec<AdapterInfo> {
        let adapters = self.adapters.read();
        let mut list: Vec<AdapterInfo> = adapters.values().map(|a| adapter_info(a)).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    fn load_adapter(&self, name: &str, path: &std::path::Path) -> Result<AdapterInfo, GenerateError> {
        let refuse = |message: String| GenerateError::InvalidRequest(message);
        let Some(base) = &self.lora_base else {
            return Err(refuse(format!("the model '{}' cannot take LoRA adapters", self.shared.name)));
        };
        if name.is_empty() || name == self.shared.name {
            return Err(refuse(format!("'{name}' cannot name an adapter of the model '{}'", self.shared.name)));
        }
        let max = self.shared.options.max_loras;
        let full = || refuse(format!("the model '{}' holds its limit of {max} LoRA adapters (--max-loras)", self.shared.name));
        let loaded = || refuse(format!("The lora adapter '{name}' has already been loaded."));
        {
            let adapters = self.adapters.read();
            if adapters.contains_key(name) {
                return Err(loaded());
            }
            if adapters.len() >= max {
                return Err(full());
            }
        }
        // Read outside the lock: an adapter takes a moment to load.
        let adapter = off_runtime(|| LoraAdapter::load(name, path, base, self.shared.options.max_lora_rank)).map_err(refuse)?;
        let info = adapter_info(&adapter);
        let mut adapters = self.adapters.write();
        if adapters.contains_key(name) {
            return Err(loaded());
        }
        if adapters.len() >= max {
            return Err(full());
        }
        adapters.insert(name.to_string(), Arc::new(adapter));
        tracing::info!(model = %self.shared.name, adapter = name, rank = info.rank, "LoRA adapter loaded");
        Ok(info)
    }

    fn unload_adapter(&self, name: &str) -> Result<bool, GenerateError> {
        let removed = self.adapters.write().remove(name).is_some();
        if removed {
            tracing::info!(model = %self.shared.name, adapter = name, "LoRA adapter unloaded");
        }
        Ok(removed)
    }
}

impl Drop for LlmEngine {
    fn drop(&mut self) {
        self.shared.queue.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
