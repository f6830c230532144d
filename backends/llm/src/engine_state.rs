//! What the engine's front (its caller's threads: admission, validation) and its loop (the decode
//! thread) share: the options, the queue of waiting requests, and the counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use tokio::sync::mpsc;
use tritium_backend_api::kv::{BlockHash, DEFAULT_KV_BLOCK_SIZE};
use tritium_backend_api::llm::{GenerateError, GenerateEvent, GenerateRequest, ImportedBlocks, Priority};

use crate::constraint::Constrained;
use crate::export::ExportSink;
use crate::offload::OffloadOptions;

/// `--max-pinned-kv-fraction`'s default: half the pool may be pinned.
pub const DEFAULT_MAX_PINNED_KV_PERMILLE: u16 = 500;

/// Bounds on what one engine holds at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Sequences in the running batch.
    pub max_sequences: usize,
    /// KV-cache positions in the model's block pool, shared by running sequences and the prefix
    /// cache. A sequence takes blocks as it grows; when none is left the newest is preempted.
    pub max_kv_tokens: usize,
    /// Positions per KV block: the unit of allocation, of prefix reuse and of KV events (the
    /// router hashes prompts with the same size).
    pub kv_block_size: usize,
    /// Keep full blocks of finished sequences and reuse them for prompts that start the same.
    pub prefix_caching: bool,
    /// A second tier on disk for blocks evicted from the pool (needs `prefix_caching`).
    pub offload: Option<OffloadOptions>,
    /// Requests that may wait for a place; beyond it requests are refused (RESOURCE_EXHAUSTED,
    /// HTTP 429).
    pub max_queue: usize,
    /// Prompt tokens fed per step, over all sequences being prefilled.
    pub prefill_chunk: usize,
    /// Bytes of one request's grammar (JSON schema, regex, choices, Lark), at most: compiling
    /// one costs CPU and memory in proportion.
    pub max_constraint_bytes: usize,
    /// Whether requests' priorities order the queue and choose whom to preempt.
    pub scheduling_policy: SchedulingPolicy,
    /// Speculative decoding, when set: by prompt lookup, or with `draft_model_path`'s proposals.
    pub speculative: Option<SpeculativeOptions>,
    /// A smaller model with the same tokenizer whose greedy tokens are the proposals.
    pub draft_model_path: Option<std::path::PathBuf>,
    /// LoRA adapters loaded at start: name and path (a GGUF adapter or a PEFT folder).
    pub loras: Vec<(String, std::path::PathBuf)>,
    /// Adapters held at once (`--max-loras`), and the largest rank accepted (`--max-lora-rank`).
    pub max_loras: usize,
    pub max_lora_rank: usize,
    /// The share of the block pool that explicit prompt-caching pins may hold, in thousandths
    /// (`--max-pinned-kv-fraction` 0.5 is 500); past it the oldest pins lapse.
    pub max_pinned_kv_permille: u16,
}

/// How waiting requests are ordered, and which running sequence gives way when the batch is full
/// or the block pool runs dry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulingPolicy {
    /// Arrival order; the newest running sequence gives way. Priorities are carried, not used.
    #[default]
    Fcfs,
    /// The most urgent [`Priority`] first, arrival order within one; a waiting request that
    /// cannot be admitted preempts the least urgent running sequence less urgent than itself,
    /// and when the pool runs dry the least urgent (then newest) running sequence gives way.
    Priority,
}

impl SchedulingPolicy {
    pub const NAMES: [&'static str; 2] = ["fcfs", "priority"];

    /// The rank a request takes in the queue: its own priority, or under FCFS everyone's the same.
    pub(crate) fn rank(self, priority: Priority) -> Priority {
        match self {
            SchedulingPolicy::Fcfs => Priority::default(),
            SchedulingPolicy::Priority => priority,
        }
    }
}

impl std::str::FromStr for SchedulingPolicy {
    type Err = String;

    fn from_str(name: &str) -> Result<SchedulingPolicy, String> {
        match name {
            "fcfs" => Ok(SchedulingPolicy::Fcfs),
            "priority" => Ok(SchedulingPolicy::Priority),
            other => Err(format!("unknown scheduling policy '{other}': expected one of {}", SchedulingPolicy::NAMES.join(", "))),
        }
    }
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            max_sequences: 32,
            max_kv_tokens: 16_384,
            kv_block_size: DEFAULT_KV_BLOCK_SIZE,
            prefix_caching: true,
            offload: None,
            max_queue: 64,
            prefill_chunk: 256,
            max_constraint_bytes: 64 << 10,
            scheduling_policy: SchedulingPolicy::Fcfs,
            speculative: None,
            draft_model_path: None,
            loras: Vec::new(),
            max_loras: 8,
            max_lora_rank: 16,
            max_pinned_kv_permille: DEFAULT_MAX_PINNED_KV_PERMILLE,
        }
    }
}

/// `--speculative ngram` and its knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeculativeOptions {
    /// Tokens proposed per step at most (`--num-speculative-tokens`).
    pub num_tokens: usize,
    /// The shortest and longest suffix looked up (`--prompt-lookup-min`, `--prompt-lookup-max`).
    pub lookup_min: usize,
    pub lookup_max: usize,
    /// With more sequences decoding than this, no one speculates: a wide batch already keeps the
    /// machine busy, and verifying proposals would cost more than it saves
    /// (`--speculative-disable-by-batch-size`).
    pub disable_by_batch_size: usize,
}

impl Default for SpeculativeOptions {
    fn default() -> SpeculativeOptions {
        SpeculativeOptions { num_tokens: 5, lookup_min: 2, lookup_max: 4, disable_by_batch_size: 4 }
    }
}

/// The most tokens proposed at once: each is a row of logits held for the step.
pub const MAX_SPECULATIVE_TOKENS: usize = 16;

impl SpeculativeOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.num_tokens == 0 || self.num_tokens > MAX_SPECULATIVE_TOKENS {
            return Err(format!(
                "--num-speculative-tokens must be between 1 and {MAX_SPECULATIVE_TOKENS}, got {}",
                self.num_tokens
            ));
        }
        if self.lookup_min == 0 || self.lookup_min > self.lookup_max {
            return Err(format!(
                "--prompt-lookup-min ({}) must be at least 1 and at most --prompt-lookup-max ({})",
                self.lookup_min, self.lookup_max
            ));
        }
        Ok(())
    }
}

pub(crate) type EventSender = mpsc::UnboundedSender<Result<GenerateEvent, GenerateError>>;

/// A request waiting for a place in the batch.
pub(crate) struct Waiting {
    pub request: GenerateRequest,
    /// The chained hashes of the prompt's full blocks, worked out on the caller's thread.
    pub hashes: Vec<BlockHash>,
    /// The compiled grammar, when the request has one.
    pub constraint: Option<Constrained>,
    pub sender: EventSender,
    pub submitted: Instant,
    /// Tokens this sequence may generate.
    pub max_new: usize,
    /// Blocks of its prompt computed by another engine.
    pub imported: Option<ImportedBlocks>,
    /// Where its prompt's blocks go as they are written, for another engine.
    pub export: Option<ExportSink>,
    /// Its place in the queue (see [`SchedulingPolicy::rank`]).
    pub rank: Priority,
    /// The adapter its rows go through, if any.
    pub lora: Option<std::sync::Arc<crate::lora::LoraAdapter>>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_used: AtomicUsize,
    pub kv_cached_blocks: AtomicUsize,
    pub tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub prompt_tokens_cached: AtomicU64,
    pub finished: AtomicU64,
    pub cancelled: AtomicU64,
    pub rejected: AtomicU64,
    pub preempted: AtomicU64,
    pub steps: AtomicU64,
    pub rows: AtomicU64,
    /// Speculative decoding: proposals made, tokens proposed, and tokens kept.
    pub spec_drafts: AtomicU64,
    pub spec_draft_tokens: AtomicU64,
    pub spec_accepted_tokens: AtomicU64,
}

pub(crate) struct Queue {
    /// Most urgent first, in arrival order within one rank.
    pub waiting: VecDeque<Waiting>,
    pub shutdown: bool,
}

impl Queue {
    /// Queues `waiting` behind every request at least as urgent.
    pub(crate) fn push(&mut self, waiting: Waiting) {
        let at = self.waiting.partition_point(|queued| queued.rank <= waiting.rank);
        self.waiting.insert(at, waiting);
    }
}

pub(crate) struct Shared {
    pub name: String,
    pub options: EngineOptions,
    pub queue: Mutex<Queue>,
    pub wake: Condvar,
    pub counters: Counters,
}

impl Shared {
    pub(crate) fn engine_error(&self, message: impl Into<String>) -> GenerateError {
        GenerateError::Engine { model: self.name.clone(), message: message.into() }
    }
}
