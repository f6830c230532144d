//! Admission and preemption in the engine thread: which waiting request or preempted sequence
//! joins the batch next (the most urgent first; under FCFS preempted ones, then arrival order),
//! and which running sequence gives its blocks up (the least urgent, then the newest).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::engine_loop::EngineLoop;
use super::engine_state::Queue;
use super::sequence::Running;
use tritium_backend_api::kv::block_hashes_from;
use tritium_backend_api::llm::Priority;

impl EngineLoop {
    /// Resumes preempted sequences and moves waiting requests into the batch while they fit, the
    /// most urgent first (under FCFS: preempted ones, then arrival order); blocks while there is
    /// nothing to do. Returns false at shutdown.
    pub(super) fn admit(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        let mut queue = shared.queue.lock();
        loop {
            if queue.shutdown {
                return false;
            }
            loop {
                let from_waiting = match (self.preempted.front(), queue.waiting.front()) {
                    (None, None) => break,
                    (Some(_), None) => false,
                    (None, Some(_)) => true,
                    (Some(preempted), Some(waiting)) => waiting.rank < preempted.rank,
                };
                let progressed = if from_waiting { self.admit_waiting(&mut queue) } else { self.resume_preempted() };
                if !progressed {
                    break;
                }
            }
            shared.counters.waiting.store(queue.waiting.len() + self.preempted.len(), Ordering::Relaxed);
            if !self.running.is_empty() {
                return true;
            }
            self.pool.flush_events();
            self.publish_gauges();
            shared.wake.wait(&mut queue);
        }
    }

    /// Whether the batch has a place for one more sequence.
    fn has_place(&self) -> bool {
        self.running.len() < self.shared.options.max_sequences
    }

    /// Resumes the first preempted sequence if it fits (making room from less urgent ones), or
    /// drops it when its client has gone. False when nothing moved.
    fn resume_preempted(&mut self) -> bool {
        let size = self.block_size();
        loop {
            let Some(front) = self.preempted.front() else { return false };
            if front.sender.is_closed() {
                self.preempted.pop_front();
                self.shared.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            let hashes = block_hashes_from(front.hash_seed(), &front.tokens, size);
            let plan = self.plan(&front.tokens, &hashes, None, front.reusable_blocks(size));
            if self.has_place() && self.fits(&plan) {
                let Some(sequence) = self.preempted.pop_front() else { return false };
                self.start(sequence, plan, &hashes, None);
                return true;
            }
            let rank = front.rank;
            if !self.preempt_less_urgent_than(rank) {
                return false;
            }
        }
    }

    /// Admits the first waiting request if it fits (making room from less urgent sequences), or
    /// drops it when its client has gone. False when nothing moved.
    fn admit_waiting(&mut self, queue: &mut Queue) -> bool {
        loop {
            let Some(front) = queue.waiting.front() else { return false };
            if front.sender.is_closed() {
                queue.waiting.pop_front();
                self.shared.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            let reusable = if front.request.prompt_logprobs.is_some() { 0 } else { usize::MAX };
            let plan = self.plan(&front.request.prompt, &front.hashes, front.imported.as_ref(), reusable);
            if self.has_place() && self.fits(&plan) {
                let Some(mut waiting) = queue.waiting.pop_front() else { return false };
                let hashes = std::mem::take(&mut waiting.hashes);
                let imported = waiting.imported.take().unwrap_or_default();
                let cached = self.start(Running::new(waiting), plan, &hashes, Some(imported));
                self.shared.counters.prompt_tokens_cached.fetch_add(cached as u64, Ordering::Relaxed);
                return true;
            }
            let rank = front.rank;
            if !self.preempt_less_urgent_than(rank) {
                return false;
            }
        }
    }

    /// Takes the running sequence that gives way first (the least urgent, then the newest) out
    /// of the batch, frees its blocks and queues it to resume. Returns its admission number.
    pub(super) fn preempt_last(&mut self) -> Option<u64> {
        let index = self.running.iter().enumerate().max_by_key(|(_, s)| s.yield_order()).map(|(i, _)| i)?;
        Some(self.preempt(index))
    }

    /// Preempts the least urgent running sequence if it is less urgent than `rank`.
    fn preempt_less_urgent_than(&mut self, rank: Priority) -> bool {
        let last = self.running.iter().enumerate().filter(|(_, s)| s.rank > rank).max_by_key(|(_, s)| s.yield_order());
        match last.map(|(i, _)| i) {
            Some(index) => {
                self.preempt(index);
                true
            }
            None => false,
        }
    }

    fn preempt(&mut self, index: usize) -> u64 {
        let mut sequence = self.running.remove(index);
        self.pool.release(&sequence.blocks);
        sequence.preempted();
        self.shared.counters.preempted.fetch_add(1, Ordering::Relaxed);
        let admitted = sequence.admitted;
        // Ahead of the preempted ones as urgent, so the last to give way resumes first.
        let at = self.preempted.partition_point(|queued| queued.rank < sequence.rank);
        self.preempted.insert(at, sequence);
        admitted
    }
}
