//! The engine thread: decode steps over the running batch, with the KV cache in blocks.
//!
//! Each step, every decoding sequence feeds its last token, and sequences still reading their
//! prompt feed chunks out of a shared budget (chunked prefill: a long prompt never stalls the
//! others' decoding). A sequence takes blocks as it grows, not its whole reservation up front;
//! when the pool runs dry the newest sequence is preempted: its blocks go back (its full ones stay
//! in the prefix cache) and it resumes later by recomputing what was lost, usually from the cache.
//! Waiting requests are admitted in arrival order while the batch has a place and the pool has
//! the blocks to finish their prompts, after the blocks already promised to running prompts.
//! Under priority scheduling the most urgent go first (in the queue, in the prefill budget, in
//! growing), the least urgent give way when the pool runs dry, and a waiting request that does
//! not fit preempts running sequences less urgent than itself.
//! A new sequence starts from the longest cached prefix of its prompt: blocks in the pool, then
//! blocks read back from the offload tier, which also receives what the pool evicts, then blocks
//! another engine computed for it (disaggregated prefill); a sequence prefilling for another
//! engine hands each block out as soon as it is written. With speculative decoding a decoding
//! sequence may feed a proposal after its last token and keep what verification accepts
//! (`speculation`). Admission and preemption are `engine_admit`'s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::block_pool::{BlockId, BlockPool};
use super::engine_state::{Counters, Shared};
use super::model::SequenceInput;
use super::offload::OffloadTier;
use super::pins::Pins;
use super::prompt_scores;
use super::sequence::{Running, Sampled, sample_next};
use super::speculation;
use super::step_model::StepModel;
use tritium_backend_api::kv::BlockHash;
use tritium_backend_api::llm::ImportedBlocks;
use tritium_backend_api::llm::ModelCard;
use tritium_backend_api::llm::Priority;
use tritium_backend_api::llm::{GenerateError, GenerateEvent};

/// The engine thread's state.
pub(super) struct EngineLoop {
    pub model: Box<dyn StepModel>,
    /// Speculative decoding's draft model, over its own store with the same blocks.
    pub draft: Option<Box<dyn StepModel>>,
    pub pool: BlockPool,
    pub offload: Option<OffloadTier>,
    pub card: Arc<ModelCard>,
    pub shared: Arc<Shared>,
    pub running: Vec<Running>,
    /// Sequences preempted for room, to resume before new requests are admitted.
    pub preempted: VecDeque<Running>,
    /// Admission order, so preemption takes the newest.
    pub admitted: u64,
    /// Prompt prefixes pinned in the prefix cache by their requests (explicit prompt caching).
    pub pins: Pins,
}

impl EngineLoop {
    pub(super) fn run(mut self) {
        loop {
            if !self.pins.is_empty() {
                self.pins.expire(&mut self.pool, Instant::now());
            }
            if !self.admit() {
                break;
            }
            self.drop_cancelled();
            if !self.running.is_empty() {
                self.step();
            }
            self.pool.flush_events();
            self.publish_gauges();
        }
        let error = GenerateError::ShuttingDown(self.shared.name.clone());
        for sequence in self.running.drain(..).chain(self.preempted.drain(..)) {
            let _ = sequence.sender.send(Err(error.clone()));
        }
        for waiting in self.shared.queue.lock().waiting.drain(..) {
            let _ = waiting.sender.send(Err(error.clone()));
        }
    }

    pub(super) fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    /// Blocks the running sequences still need to finish their prompts.
    fn promised(&self) -> usize {
        let size = self.block_size();
        self.running.iter().map(|s| s.tokens.len().div_ceil(size).saturating_sub(s.blocks.len())).sum()
    }

    /// Where a sequence over `tokens` can start: the cached blocks in the pool, then the blocks
    /// after them in the offload tier (never its whole prompt: the last position is always
    /// computed, for its logits); and the blocks it needs beyond those in the pool.
    /// `reusable` caps the blocks taken from anywhere (a prompt being scored needs its rows).
    pub(super) fn plan(&self, tokens: &[u32], hashes: &[BlockHash], imported: Option<&ImportedBlocks>, reusable: usize) -> Plan {
        let limit = ((tokens.len() - 1) / self.block_size()).min(reusable);
        let mut reused = self.pool.longest_prefix(tokens, hashes);
        reused.truncate(limit);
        let (restore, strongs) = match &self.offload {
            Some(tier) if reused.len() < limit => {
                let strongs = self.pool.strong_hashes(&tokens[..limit * self.block_size()]);
                (tier.matching(&hashes[reused.len()..limit], &strongs[reused.len()..]), strongs)
            }
            _ => (0, Vec::new()),
        };
        let import = imported.map_or(0, |blocks| blocks.usable_from(reused.len() + restore, limit));
        let needed = tokens.len().div_ceil(self.block_size()) - reused.len();
        Plan { reused, restore, import, strongs, needed }
    }

    /// Whether a plan's blocks fit beside what is promised.
    pub(super) fn fits(&self, plan: &Plan) -> bool {
        let idle_taken = plan.reused.iter().filter(|&&id| self.pool.refs(id) == 0).count();
        let available = self.pool.available() - idle_taken;
        self.running.is_empty() || plan.needed + self.promised() <= available
    }

    /// Puts a sequence in the batch on top of its cached prefix, reading back what the plan found
    /// in the offload tier (up to the first block that does not check out), then writing what
    /// another engine computed. `imported` is given at its first admission (empty when nothing
    /// came from elsewhere). Returns the prompt tokens it found cached.
    pub(super) fn start(
        &mut self,
        mut sequence: Running,
        plan: Plan,
        hashes: &[BlockHash],
        imported: Option<ImportedBlocks>,
    ) -> usize {
        let size = self.block_size();
        self.pool.share(&plan.reused);
        let mut blocks = plan.reused;
        let cached_end = blocks.len() + plan.restore;
        for i in blocks.len()..cached_end {
            let restored = self.offload.as_mut().and_then(|tier| tier.read(hashes[i], plan.strongs[i]));
            if !self.place(&mut blocks, restored.as_deref(), hashes[i], &sequence.tokens[i * size..(i + 1) * size]) {
                break;
            }
        }
        let cached = blocks.len();
        if cached == cached_end
            && plan.import > 0
            && let Some(imported) = &imported
        {
            let started = std::time::Instant::now();
            for i in cached..cached + plan.import {
                let data = imported.blocks.get(i - imported.first).map(Vec::as_slice);
                if !self.place(&mut blocks, data, hashes[i], &sequence.tokens[i * size..(i + 1) * size]) {
                    tracing::warn!(model = %self.shared.name, block = i, "a KV block from another worker does not fit this store; computing it");
                    break;
                }
            }
            tracing::debug!(model = %self.shared.name, blocks = blocks.len() - cached, elapsed = ?started.elapsed(), "KV blocks from another worker written");
        }
        sequence.resume_from(&blocks, &hashes[..blocks.len()], size);
        if imported.is_some() {
            sequence.cached_tokens = cached * size;
        }
        self.admitted += 1;
        sequence.admitted = self.admitted;
        self.running.push(sequence);
        cached * size
    }

    /// Writes `data` into a fresh block and commits it as the block after `blocks`, under `hash`
    /// over `tokens`. False when there is no data, no block, or the data does not fit.
    fn place(&mut self, blocks: &mut Vec<BlockId>, data: Option<&[f32]>, hash: BlockHash, tokens: &[u32]) -> bool {
        let Some(data) = data else { return false };
        let Some(id) = self.pool.allocate() else { return false };
        // The block may have been evicted just now: its data goes to disk before it is overwritten.
        self.spill_evicted();
        if self.model.write_block(id, data).is_err() {
            self.pool.release(&[id]);
            return false;
        }
        self.pool.commit(id, blocks.last().copied(), hash, tokens);
        blocks.push(id);
        true
    }

    /// Writes the committed blocks the pool just evicted to the offload tier, while their data
    /// is still in the store.
    fn spill_evicted(&mut self) {
        let evicted = self.pool.take_evicted();
        let Some(tier) = self.offload.as_mut() else { return };
        for block in evicted {
            if tier.contains(block.hash) {
                continue;
            }
            match self.model.read_block(block.id) {
                Ok(data) => tier.spill(block.hash, block.strong, &data),
                Err(e) => tracing::warn!(model = %self.shared.name, "copying an evicted KV block out: {e}"),
            }
        }
    }

    /// Stops sequences whose client went away: within one step of the client leaving.
    fn drop_cancelled(&mut self) {
        let counters = &self.shared.counters;
        let pool = &mut self.pool;
        self.running.retain(|s| {
            let gone = s.sender.is_closed();
            if gone {
                pool.release(&s.blocks);
                counters.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
    }

    /// Gives every decoding sequence the block its next position needs, the most urgent (then the
    /// oldest) first, preempting those that give way first when the pool is dry.
    fn grow_decoders(&mut self) {
        let size = self.block_size();
        let mut order: Vec<(Priority, u64)> =
            self.running.iter().filter(|s| s.decoding() && s.fed == s.blocks.len() * size).map(Running::yield_order).collect();
        order.sort_unstable();
        for (_, admitted) in order {
            loop {
                let Some(index) = self.running.iter().position(|s| s.admitted == admitted) else { break };
                if let Some(id) = self.pool.allocate() {
                    self.running[index].blocks.push(id);
                    break;
                }
                if self.preempt_last() == Some(admitted) || self.running.is_empty() {
                    break;
                }
            }
        }
    }

    /// One forward pass over the batch, then a token for every sequence past its prompt.
    fn step(&mut self) {
        self.grow_decoders();
        let size = self.block_size();
        let mut prefill_budget = self.shared.options.prefill_chunk;
        // Which running sequences take part, and how many tokens each feeds.
        let mut feeds: Vec<(usize, usize)> = Vec::with_capacity(self.running.len());
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_unstable_by_key(|&i| self.running[i].yield_order());
        let mut proposals = self.proposals();
        for index in order {
            let sequence = &mut self.running[index];
            let pending = sequence.tokens.len() - sequence.fed;
            if sequence.decoding() {
                // Blocks for the proposal's positions too; a dry pool shortens it.
                let proposal = &mut proposals[index];
                while !proposal.is_empty() && sequence.blocks.len() * size < sequence.fed + 1 + proposal.len() {
                    match self.pool.allocate() {
                        Some(id) => sequence.blocks.push(id),
                        None => proposal.truncate((sequence.blocks.len() * size).saturating_sub(sequence.fed + 1)),
                    }
                }
                feeds.push((index, 1 + proposal.len()));
                continue;
            }
            let mut n = pending.min(prefill_budget);
            while n > 0 && sequence.blocks.len() * size < sequence.fed + n {
                match self.pool.allocate() {
                    Some(id) => sequence.blocks.push(id),
                    None => n = (sequence.blocks.len() * size).saturating_sub(sequence.fed),
                }
            }
            if n > 0 {
                prefill_budget -= n;
                feeds.push((index, n));
            }
        }
        if self.draft.is_some() {
            self.draft_proposals(&mut proposals);
            for (index, n) in feeds.iter_mut() {
                if self.running[*index].decoding() {
                    *n = 1 + proposals[*index].len();
                }
            }
        }
        feeds.sort_unstable();
        if feeds.is_empty() {
            // Every prompt is waiting for blocks the others hold: let the oldest go on.
            self.preempt_last();
            return;
        }
        self.spill_evicted();
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        let mut scores = Vec::new();
        // A speculating sequence feeds its last token and its proposal, and gets every row's logits.
        let speculating: Vec<Vec<u32>> = feeds
            .iter()
            .map(|&(index, _)| match proposals[index].is_empty() {
                true => Vec::new(),
                false => {
                    let s = &self.running[index];
                    [&s.tokens[s.fed..], &proposals[index]].concat()
                }
            })
            .collect();
        let mut speculated_rows: Vec<Vec<Vec<f32>>> = vec![Vec::new(); feeds.len()];
        let logits = {
            let inputs: Vec<SequenceInput<'_>> = feeds
                .iter()
                .zip(&speculating)
                .map(|(&(index, n), fed)| {
                    let s = &self.running[index];
                    let tokens = if fed.is_empty() { &s.tokens[s.fed..s.fed + n] } else { &fed[..] };
                    SequenceInput { tokens, cached: s.fed, blocks: &s.blocks, lora: s.lora.as_deref() }
                })
                .collect();
            let running = &self.running;
            // A scored row predicts a prompt token not scored yet.
            let scored = |index: usize, position: usize| {
                let s = &running[index];
                s.scorer.as_ref().is_some_and(|scorer| position >= scorer.next_row() && position + 1 < s.prompt_len)
            };
            let score: Vec<bool> = feeds
                .iter()
                .zip(&speculating)
                .map(|(&(index, n), fed)| {
                    let s = &running[index];
                    let first = s.scorer.as_ref().map_or(s.fed, |scorer| scorer.next_row().max(s.fed));
                    !fed.is_empty() || (first < s.fed + n && scored(index, first))
                })
                .collect();
            if score.contains(&true) {
                let mut on_row = |feed: usize, row: usize, logits: &[f32]| {
                    if !speculating[feed].is_empty() {
                        speculated_rows[feed].push(logits.to_vec());
                        return;
                    }
                    let index = feeds[feed].0;
                    let position = running[index].fed + row;
                    if let Some(scorer) = running[index].scorer.as_ref().filter(|_| scored(index, position)) {
                        let next = running[index].tokens[position + 1];
                        scores.push((index, position, prompt_scores::score_row(logits, next, scorer.top())));
                    }
                };
                self.model.forward_scoring(&inputs, &score, &mut on_row)
            } else {
                self.model.forward(&inputs)
            }
        };
        for (index, position, score) in scores {
            if let Some(scorer) = self.running[index].scorer.as_mut() {
                scorer.record(position, score);
            }
        }
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
        let context_length = self.card.context_length;
        let mut done = Vec::new();
        for (feed, (&(index, n), row)) in feeds.iter().zip(&logits).enumerate() {
            let sequence = &mut self.running[index];
            if !speculating[feed].is_empty() {
                let rows = std::mem::take(&mut speculated_rows[feed]);
                let (outcome, kept) = match rows.len() == n {
                    true => speculation::verify(sequence, &rows, &proposals[index], &self.card, context_length, counters),
                    false => {
                        let message = format!("the model gave {} rows of logits for {n} speculated positions", rows.len());
                        let _ = sequence.sender.send(Err(self.shared.engine_error(message)));
                        (Sampled::Ended, 0)
                    }
                };
                sequence.fed += 1 + kept;
                sequence.draft_fed = sequence.draft_fed.min(sequence.fed);
                sequence.commit_full_blocks(&mut self.pool);
                counters.spec_drafts.fetch_add(1, Ordering::Relaxed);
                counters.spec_draft_tokens.fetch_add((n - 1) as u64, Ordering::Relaxed);
                counters.spec_accepted_tokens.fetch_add(kept as u64, Ordering::Relaxed);
                if outcome != Sampled::GoOn {
                    done.push((index, outcome));
                }
                continue;
            }
            let prompt_fed = sequence.prompt_len.saturating_sub(sequence.fed).min(n);
            counters.prompt_tokens.fetch_add(prompt_fed as u64, Ordering::Relaxed);
            sequence.fed += n;
            sequence.commit_full_blocks(&mut self.pool);
            if let Err(e) = sequence.export_written(self.model.as_ref(), size) {
                tracing::warn!(model = %self.shared.name, "reading KV blocks out for another worker: {e}");
            }
            if sequence.fed < sequence.tokens.len() {
                continue;
            }
            if let Some(pin) = sequence.pin.take() {
                // The prompt's full blocks are committed now: the leading ones the pin covers (a
                // block left private, as with the prefix cache off, ends what a pin can hold).
                let covered = (pin.tokens as usize).min(sequence.prompt_len) / size;
                let pool = &self.pool;
                let covered = sequence.blocks[..covered].iter().take_while(|&&id| pool.is_committed(id)).count();
                let newly = self.pins.pin(&mut self.pool, &sequence.blocks[..covered], pin.ttl, Instant::now());
                let written = if newly { (covered * size).saturating_sub(sequence.cached_tokens) } else { 0 };
                sequence.pinned_tokens = Some(written as u32);
            }
            if let Some(scorer) = sequence.scorer.take() {
                // Before the first token; a client gone by now is noticed when it is sent.
                let _ = sequence.sender.send(Ok(GenerateEvent::PromptLogprobs(scorer.into_scores())));
            }
            match sample_next(sequence, row, &self.card, context_length, counters) {
                Sampled::GoOn => {}
                finished => done.push((index, finished)),
            }
        }
        // Announced before any client hears its sequence finished.
        self.pool.flush_events();
        done.sort_unstable_by_key(|&(index, _)| index);
        let finished: Vec<usize> = done.iter().map(|&(i, _)| i).collect();
        for (sequence, (_, outcome)) in self.remove_many(&finished).into_iter().zip(done) {
            match outcome {
                Sampled::Finished(reason) => {
                    counters.finished.fetch_add(1, Ordering::Relaxed);
                    let _ = sequence.sender.send(Ok(GenerateEvent::Finished {
                        reason,
                        prompt_tokens: sequence.prompt_len as u32,
                        completion_tokens: sequence.generated() as u32,
                        cached_tokens: sequence.cached_tokens as u32,
                        queued_for: sequence.queued_for,
                    }));
                }
                Sampled::Ended | Sampled::GoOn => {
                    counters.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Each running sequence's speculative proposal (empty: none), by its index: only decoding
    /// sequences propose, none when more than `disable_by_batch_size` decode, and no proposal runs
    /// past the sequence's `max_tokens` or the context.
    fn proposals(&self) -> Vec<Vec<u32>> {
        let none = || vec![Vec::new(); self.running.len()];
        let Some(options) = self.shared.options.speculative else { return none() };
        if self.running.iter().filter(|s| s.decoding()).count() > options.disable_by_batch_size {
            return none();
        }
        let context_length = self.card.context_length;
        let drafting = self.draft.is_some();
        let proposal = |s: &Running| {
            // The step samples one token past the proposal.
            let left = s.max_new.saturating_sub(s.generated() + 1);
            let room = context_length.saturating_sub(s.tokens.len() + 1);
            let limit = options.num_tokens.min(left).min(room);
            match drafting {
                // Places for the draft's tokens, which it writes once the blocks are found.
                true => vec![0; limit],
                false => speculation::propose(&s.tokens, &options, limit),
            }
        };
        self.running.iter().map(|s| if s.decoding() { proposal(s) } else { Vec::new() }).collect()
    }

    /// Takes the sequences at `indices` (ascending) out of the batch, in that order, and releases
    /// their blocks.
    fn remove_many(&mut self, indices: &[usize]) -> Vec<Running> {
        let mut removed = Vec::with_capacity(indices.len());
        for &index in indices.iter().rev() {
            let sequence = self.running.remove(index);
            self.pool.release(&sequence.blocks);
            removed.push(sequence);
        }
        removed.reverse();
        removed
    }

    pub(super) fn publish_gauges(&self) {
        let counters: &Counters = &self.shared.counters;
        counters.running.store(self.running.len(), Ordering::Relaxed);
        counters.kv_used.store(self.pool.in_use() * self.block_size(), Ordering::Relaxed);
        counters.kv_cached_blocks.store(self.pool.cached(), Ordering::Relaxed);
    }
}

/// Where a sequence starts: see [`EngineLoop::plan`].
pub(super) struct Plan {
    /// Cached blocks in the pool holding its first positions.
    reused: Vec<BlockId>,
    /// Blocks after those to read back from the offload tier.
    restore: usize,
    /// Blocks after those to take from another engine's computation.
    import: usize,
    /// The strong hashes of its full blocks (when the offload tier was asked).
    strongs: Vec<u128>,
    /// Blocks it needs from the pool beyond `reused`.
    needed: usize,
}
