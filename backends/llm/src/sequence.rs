//! One sequence in the engine's batch: its tokens, the KV blocks under them, and how its next
//! token is drawn and when it ends.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::block_pool::{BlockId, BlockPool};
use super::constraint::Constrained;
use super::engine_state::{Counters, EventSender, Waiting};
use super::prompt_scores::PromptScorer;
use super::sampler::Sampler;
use super::step_model::StepModel;
use crate::export::ExportSink;
use tritium_backend_api::kv::{BlockHash, chain_hash};
use tritium_backend_api::llm::ExportedBlock;
use tritium_backend_api::llm::ModelCard;
use tritium_backend_api::llm::{FinishReason, GenerateError, GenerateEvent, PrefixPin, Priority};

/// A sequence in the running batch (or preempted, waiting to resume).
pub(super) struct Running {
    /// The prompt, then every generated token; the last one is fed in the next step.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Positions whose keys and values are in `blocks`.
    pub fed: usize,
    /// Positions the draft model's store holds for it (speculative decoding with a draft).
    pub draft_fed: usize,
    pub blocks: Vec<BlockId>,
    /// Chained hashes of the leading full blocks already offered to the prefix cache.
    hashes: Vec<BlockHash>,
    /// Prompt tokens found in the cache when the sequence was first admitted.
    pub cached_tokens: usize,
    pub max_new: usize,
    pub sampler: Sampler,
    /// The prompt's scores, while they are being computed (when the request asked for them).
    pub scorer: Option<PromptScorer>,
    pub constraint: Option<Constrained>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub min_tokens: usize,
    pub queued_for: Duration,
    pub sender: EventSender,
    /// When it (last) joined the batch: the newest is preempted first.
    pub admitted: u64,
    /// Its place in the queue: the least urgent is preempted first.
    pub rank: Priority,
    /// The adapter its rows go through, if any; its seed starts the chain of block hashes.
    pub lora: Option<std::sync::Arc<crate::lora::LoraAdapter>>,
    /// Where its prompt's blocks go, when another engine asked for them.
    export: Option<ExportSink>,
    /// The prefix its request asked to pin, until its prompt is in (then it is pinned once).
    pub pin: Option<PrefixPin>,
    /// The prompt tokens the pin newly wrote, reported with the first token.
    pub pinned_tokens: Option<u32>,
}

impl Running {
    pub(super) fn new(waiting: Waiting) -> Running {
        let Waiting { request, constraint, sender, submitted, max_new, export, rank, lora, .. } = waiting;
        Running {
            sampler: Sampler::new(&request.sampling, request.logprobs, &request.prompt),
            scorer: request.prompt_logprobs.map(PromptScorer::new),
            constraint,
            fed: 0,
            draft_fed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            cached_tokens: 0,
            max_new,
            stop_token_ids: request.stop.stop_token_ids,
            ignore_eos: request.stop.ignore_eos,
            min_tokens: request.stop.min_tokens as usize,
            queued_for: submitted.elapsed(),
            prompt_len: request.prompt.len(),
            tokens: request.prompt,
            sender,
            admitted: 0,
            rank,
            lora,
            export,
            pin: request.pin,
            pinned_tokens: None,
        }
    }

    /// Sends the blocks asked for that are now written in full; an export whose receiver has
    /// gone is dropped (the sequence itself ends when its own client goes).
    pub(super) fn export_written(&mut self, model: &dyn StepModel, block_size: usize) -> Result<(), String> {
        let Some(export) = self.export.as_mut() else { return Ok(()) };
        let written = (self.fed / block_size).min(export.until);
        while export.next < written {
            let data = match model.read_block(self.blocks[export.next]) {
                Ok(data) => data,
                Err(e) => {
                    self.export = None;
                    return Err(e);
                }
            };
            if export.sender.send(ExportedBlock { index: export.next, data }).is_err() {
                self.export = None;
                return Ok(());
            }
            export.next += 1;
        }
        Ok(())
    }

    /// How many leading blocks it may take from the cache: all of them, unless its prompt is
    /// being scored, which needs the logits of every row not scored yet.
    pub(super) fn reusable_blocks(&self, block_size: usize) -> usize {
        self.scorer.as_ref().map_or(usize::MAX, |scorer| scorer.next_row() / block_size)
    }

    /// Where the chain of its blocks' hashes starts: 0 for the base model, the adapter's seed.
    pub(super) fn hash_seed(&self) -> u64 {
        self.lora.as_ref().map_or(0, |lora| lora.seed)
    }

    /// Which gives way first: the larger.
    pub(super) fn yield_order(&self) -> (Priority, u64) {
        (self.rank, self.admitted)
    }

    pub(super) fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Past its prompt: one token to feed per step.
    pub(super) fn decoding(&self) -> bool {
        self.tokens.len() - self.fed == 1
    }

    /// Starts (again) on top of `reused`, the cached blocks holding its first positions, whose
    /// hashes are `hashes`.
    pub(super) fn resume_from(&mut self, reused: &[BlockId], hashes: &[BlockHash], block_size: usize) {
        self.blocks = reused.to_vec();
        self.hashes = hashes.to_vec();
        self.fed = reused.len() * block_size;
        self.draft_fed = 0;
    }

    /// Lost its blocks to a newer sequence's need; everything is recomputed (or found in the
    /// cache) when it resumes.
    pub(super) fn preempted(&mut self) {
        self.blocks.clear();
        self.hashes.clear();
        self.fed = 0;
        self.draft_fed = 0;
    }

    /// Offers the blocks that became full to the prefix cache.
    pub(super) fn commit_full_blocks(&mut self, pool: &mut BlockPool) {
        let size = pool.block_size();
        while self.hashes.len() < self.fed / size {
            let i = self.hashes.len();
            let block = &self.tokens[i * size..(i + 1) * size];
            let hash = chain_hash(self.hashes.last().copied().unwrap_or(self.hash_seed()), block);
            pool.commit(self.blocks[i], i.checked_sub(1).map(|p| self.blocks[p]), hash, block);
            self.hashes.push(hash);
        }
    }
}

/// What sampling did to a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sampled {
    GoOn,
    Finished(FinishReason),
    /// Its client has gone, or its grammar failed and the client was told.
    Ended,
}

/// Samples a sequence's next token from its logits and sends it.
pub(super) fn sample_next(
    sequence: &mut Running,
    logits: &[f32],
    card: &ModelCard,
    context_length: usize,
    counters: &Counters,
) -> Sampled {
    let mut token = match &mut sequence.constraint {
        Some(constraint) => match constraint.mask() {
            Ok(allowed) => sequence.sampler.sample_among(logits, &allowed),
            Err(message) => return constraint_failed(sequence, message),
        },
        None => sequence.sampler.sample(logits),
    };
    let generated = sequence.generated() + 1;
    if generated == 1 {
        token.prompt_cached = Some(sequence.cached_tokens as u32);
        token.prompt_pinned = sequence.pinned_tokens;
    }
    counters.tokens.fetch_add(1, Ordering::Relaxed);
    let id = token.id;
    let eos = card.eos_token_ids.contains(&id)
        && (sequence.constraint.as_mut().is_some_and(Constrained::accepting)
            || (!sequence.ignore_eos && generated > sequence.min_tokens));
    if eos || sequence.stop_token_ids.contains(&id) {
        // Counted as generated (as in OpenAI's usage); sent, as no text, only for its logprobs.
        if token.logprob.is_some() {
            token.stop = true;
            let _ = sequence.sender.send(Ok(GenerateEvent::Token(token)));
        }
        sequence.tokens.push(id);
        return Sampled::Finished(FinishReason::Stop);
    }
    let complete = match sequence.constraint.as_mut().map(|constraint| constraint.advance(id)) {
        Some(Err(message)) => return constraint_failed(sequence, message),
        Some(Ok(complete)) => complete,
        None => false,
    };
    if sequence.sender.send(Ok(GenerateEvent::Token(token))).is_err() {
        return Sampled::Ended;
    }
    sequence.tokens.push(id);
    if complete {
        return Sampled::Finished(FinishReason::Stop);
    }
    if generated >= sequence.max_new || sequence.tokens.len() > context_length {
        return Sampled::Finished(FinishReason::Length);
    }
    Sampled::GoOn
}

/// Ends a sequence whose grammar failed: the client gets the error, the batch goes on.
fn constraint_failed(sequence: &Running, message: String) -> Sampled {
    let _ = sequence.sender.send(Err(GenerateError::InvalidRequest(message)));
    Sampled::Ended
}
