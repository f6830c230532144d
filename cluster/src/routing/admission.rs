//! The router's admission control (Dynamo's busy thresholds, see [`super::busy`]): which of a
//! model's workers may take a request now, and the refusal when none may.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tritium_backend_api::llm::GenerateError;
use tritium_worker::{ModelRepository, WorkerError};

use super::busy::{self, BusyThresholds};
use super::{Member, Router};

impl Router {
    /// The thresholds that make workers busy, shared with the HTTP admin routes.
    pub fn busy_thresholds(&self) -> &Arc<BusyThresholds> {
        &self.busy
    }

    /// `candidates` without the busy ones; an error when all are busy (a migrating stream is
    /// let through: it was admitted already). Busy: a KV cache fuller than the model's threshold,
    /// or more prompt tokens of this router's requests still to prefill than the prefill
    /// thresholds allow.
    pub(super) fn not_busy<'m>(
        &self,
        model: &str,
        candidates: Vec<&'m Member>,
        migrating: bool,
    ) -> Result<Vec<&'m Member>, WorkerError> {
        self.free_of(model, candidates, migrating).map_err(|why| self.refuse_busy(model, &why))
    }

    /// [`Self::not_busy`], with why all are busy as the error, refusing (and counting) nothing.
    pub(super) fn free_of<'m>(
        &self,
        model: &str,
        candidates: Vec<&'m Member>,
        migrating: bool,
    ) -> Result<Vec<&'m Member>, String> {
        let decode = self.busy.get(model);
        let (tokens, frac) = (self.options.prefill_tokens_threshold, self.options.prefill_tokens_threshold_frac);
        if migrating || (decode.is_none() && tokens.is_none() && frac.is_none()) {
            return Ok(candidates);
        }
        let loads = self.loads.lock();
        let report = |member: &Member| loads.get(&(member.id.to_string(), model.to_string()));
        let kv = |member: &Member| match member.local {
            true => local_kv(&self.repository, model),
            false => report(member).map_or((0, 0), |r| (r.kv_used, r.kv_capacity)),
        };
        let prefill_over = |member: &Member| {
            if tokens.is_none() && frac.is_none() {
                return false;
            }
            let pending = self.active.prefill_tokens_on(&member.id);
            let capacity = report(member).map_or(0, |r| r.max_batched_tokens);
            tokens.is_some_and(|limit| pending > limit)
                || frac.is_some_and(|frac| capacity > 0 && pending as f64 > frac * capacity as f64)
        };
        let mut reason = None;
        let free: Vec<&Member> = candidates
            .iter()
            .copied()
            .filter(|m| {
                if decode.is_some_and(|threshold| busy::over_pair(kv(m), threshold)) {
                    reason.get_or_insert_with(|| format!("KV cache over {:.0} %", decode.unwrap_or(1.0) * 100.0));
                    return false;
                }
                if prefill_over(m) {
                    reason.get_or_insert_with(|| "too many prompt tokens waiting to be prefilled".to_string());
                    return false;
                }
                true
            })
            .collect();
        drop(loads);
        match free.is_empty() {
            true => Err(reason.unwrap_or_default()),
            false => Ok(free),
        }
    }

    /// The in-process worker, answering alone: refused when over its threshold.
    pub(crate) fn admit_local(&self, model: &str) -> Result<(), WorkerError> {
        match self.busy.get(model) {
            Some(threshold) if busy::over_pair(local_kv(&self.repository, model), threshold) => {
                Err(self.refuse_busy(model, &format!("KV cache over {:.0} %", threshold * 100.0)))
            }
            _ => Ok(()),
        }
    }

    fn refuse_busy(&self, model: &str, why: &str) -> WorkerError {
        self.counters.rejected_busy.fetch_add(1, Ordering::Relaxed);
        let message = format!("every worker serving it is busy ({why}); retry later");
        WorkerError::Generate {
            model: model.to_string(),
            source: GenerateError::Unavailable { model: model.to_string(), message },
        }
    }
}

/// KV use and capacity of the in-process engine of `model` (0 and 0 without one).
fn local_kv(repository: &ModelRepository, model: &str) -> (u64, u64) {
    let stats = repository.resolve(model, None).ok().and_then(|version| version.language_model()).map(|engine| engine.stats());
    stats.map_or((0, 0), |s| (s.kv_tokens_used as u64, s.kv_tokens_capacity as u64))
}
