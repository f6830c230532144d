//! Prompt scoring (OpenAI's `echo` with `logprobs`, vLLM's `prompt_logprobs`): each prompt
//! position's log-probability under the model given the positions before it, and the most likely
//! alternatives there.
//!
//! The engine hands each prompt row's logits over as the forward pass makes them, a few rows at
//! a time; only the chosen token's log-probability and the top `n` are kept, never a
//! vocabulary-sized row per position. Scores are of the raw distribution (no penalties, no
//! temperature), as the evaluators that ask for them expect.

use tritium_backend_api::llm::PromptLogprob;

/// The scores of one sequence's prompt so far.
#[derive(Debug)]
pub(crate) struct PromptScorer {
    top: usize,
    /// Positions `1..=scores.len()`.
    scores: Vec<PromptLogprob>,
}

impl PromptScorer {
    pub(crate) fn new(top: u32) -> PromptScorer {
        PromptScorer { top: top as usize, scores: Vec::new() }
    }

    /// The row whose logits score the next position: rows `0..row` are scored already. A
    /// sequence that must recompute its prompt (preempted) starts no later than this.
    pub(crate) fn next_row(&self) -> usize {
        self.scores.len()
    }

    /// How many alternatives each position keeps.
    pub(crate) fn top(&self) -> usize {
        self.top
    }

    /// Keeps `score`, row `row`'s score of position `row + 1`; rows already scored (recomputed
    /// after preemption) and rows out of order are ignored.
    pub(crate) fn record(&mut self, row: usize, score: PromptLogprob) {
        if row == self.scores.len() {
            self.scores.push(score);
        }
    }

    pub(crate) fn into_scores(self) -> Vec<PromptLogprob> {
        self.scores
    }
}

/// Token `next`'s log-probability under `logits` and the `top` most likely tokens (higher
/// first, the lower id on ties). NaN counts as impossible.
pub(crate) fn score_row(logits: &[f32], next: u32, top: usize) -> PromptLogprob {
    let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let lse = if logits.iter().any(|x| x.is_nan()) {
        crate::sampler::log_sum_exp(&logits.iter().map(|&x| clean(x)).collect::<Vec<_>>())
    } else {
        crate::sampler::log_sum_exp(logits)
    };
    if lse == f32::NEG_INFINITY {
        return PromptLogprob { logprob: f32::NEG_INFINITY, rank: 1, top_logprobs: Vec::new() };
    }
    let chosen = logits.get(next as usize).map_or(f32::NEG_INFINITY, |&x| clean(x));
    let logprob = chosen - lse;
    let mut rank = 1u32;
    // `top` is at most OpenAI's 20: a sorted insertion into a short list beats a heap.
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (id, &x) in logits.iter().enumerate() {
            let x = clean(x);
            rank += u32::from(x > chosen || (x == chosen && (id as u32) < next));
            if best.len() == top && best.last().is_some_and(|&(_, worst)| x <= worst) {
                continue;
            }
            let at = best.partition_point(|&(_, y)| y >= x);
            // Token ids fit in u32: the vocabulary is indexed by them.
            best.insert(at, (id as u32, x));
            best.truncate(top);
        }
    }
    if top == 0 {
        rank +=
            logits.iter().enumerate().filter(|&(id, &x)| clean(x) > chosen || (clean(x) == chosen && (id as u32) < next)).count()
                as u32;
    }
    PromptLogprob { logprob, rank, top_logprobs: best.into_iter().map(|(id, x)| (id, x - lse)).collect() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_a_distribution_with_a_sorted_top_list() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.1).collect();
        let all = score_row(&logits, 5, logits.len());
        let total: f64 = all.top_logprobs.iter().map(|&(_, lp)| f64::from(lp).exp()).sum();
        assert!((total - 1.0).abs() < 1e-3, "{total}");
        let chosen = all.top_logprobs.iter().find(|&&(id, _)| id == 5).unwrap().1;
        assert!((chosen - all.logprob).abs() < 1e-6);
        let three = score_row(&logits, 5, 3);
        assert_eq!(three.top_logprobs[..], all.top_logprobs[..3]);
        assert!(three.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
        let position = all.top_logprobs.iter().position(|&(id, _)| id == 5).unwrap();
        assert_eq!((three.rank, score_row(&logits, 5, 0).rank), (position as u32 + 1, position as u32 + 1));
        // Ties: the lower id first.
        let tied = score_row(&[1.0, 2.0, 2.0, 0.0], 0, 2);
        assert_eq!(tied.top_logprobs.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(score_row(&[1.0, 2.0], 0, 0).top_logprobs.is_empty());
        assert_eq!(score_row(&[1.0, 2.0], 9, 0).logprob, f32::NEG_INFINITY);
    }

    #[test]
    fn rows_are_kept_once_in_order() {
        let mut scorer = PromptScorer::new(1);
        let mut score = |row, logits: &[f32], next| scorer.record(row, score_row(logits, next, 1));
        score(1, &[0.0, 1.0], 1);
        score(0, &[0.0, 1.0], 1);
        score(0, &[5.0, 1.0], 0);
        score(1, &[1.0, 0.0], 0);
        let scores = scorer.into_scores();
        assert_eq!(scores.len(), 2);
        assert_eq!(scores[0].top_logprobs[0].0, 1);
        assert!((scores[0].logprob - scores[1].logprob).abs() < 1e-6);
    }
}
