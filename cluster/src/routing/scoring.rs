//! The kv policy's choice among workers: each one's cached-prefix overlap weighed against its
//! load, either as the workers report it (their KV-cache use and queues) or, when the router tracks
//! load itself (Dynamo's `--router-track-active-blocks` / `--router-track-prefill-tokens`), as
//! Dynamo prices it: the prefill a worker would still have to do plus the blocks it would hold.

use rand::Rng;

/// How [`choose`] weighs cache overlap against load.
#[derive(Debug, Clone)]
pub struct KvScoring {
    pub overlap_weight: f64,
    pub load_weight: f64,
    /// 0 picks the best score (ties at random); above 0 samples, softer as it grows.
    pub temperature: f64,
    /// Price workers by the load the router tracks (see [`choose`]) instead of what they report.
    pub tracked: bool,
    /// In tracked pricing, the weight of prefill work against decode blocks.
    pub prefill_load_scale: f64,
    /// Tokens per KV block, to turn pending prefill tokens into blocks.
    pub block_size: usize,
}

impl Default for KvScoring {
    fn default() -> Self {
        KvScoring {
            overlap_weight: 1.0,
            load_weight: 1.0,
            temperature: 0.0,
            tracked: false,
            prefill_load_scale: 1.0,
            block_size: 16,
        }
    }
}

/// One worker that could take a request, as [`choose`] sees it.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    /// Leading blocks of the request the worker holds (see [`KvIndex::overlaps`]).
    pub overlap_blocks: usize,
    pub active: u64,
    pub queued: u64,
    /// KV-cache use and capacity, in tokens; capacity 0 means unknown.
    pub kv_used: u64,
    pub kv_capacity: u64,
    /// Tracked pricing: blocks the worker would hold with this request, and prompt tokens it has
    /// still to prefill (see [`super::active::ActiveLoad::candidate`]).
    pub potential_blocks: u64,
    pub pending_prefill_tokens: u64,
}

/// The index of the candidate to send a request of `request_blocks` blocks to; `None` when there
/// are none.
///
/// Each candidate `i` gets the logit
///
/// ```text
/// logit_i = overlap_weight * min(overlap_blocks_i / max(request_blocks, 1), 1)
///         - load_weight * load_i
/// load_i  = min(kv_used_i / kv_capacity_i, 1)            when the worker reports its KV cache,
///           active_i / (1 + sum_j active_j)               else (its share of the running work)
///         + queued_i / (1 + active_i + queued_i)          (a worker with a queue is full)
/// ```
///
/// so both the overlap term and each part of the load lie in [0, 1]. The load is absolute where
/// it can be (KV usage): one running sequence on an engine with room for hundreds is no reason
/// to recompute a long prefix elsewhere, and a relative measure (load over the busiest worker's)
/// would make it one.
///
/// When the router tracks load itself (`tracked`), the price is Dynamo's, in blocks:
///
/// ```text
/// cost_i  = prefill_load_scale * (max(request_blocks - overlap_weight * overlap_blocks_i, 0)
///                                 + pending_prefill_tokens_i / block_size)
///         + potential_blocks_i
/// logit_i = -cost_i / max(max_j cost_j, 1)
/// ```
///
/// the prefill the worker would still have to do for the request and for those it has not yet
/// prefilled, plus the blocks it would hold. With `temperature` 0 (or
/// not a positive finite number) the highest logit wins, ties broken uniformly at random; above
/// 0 the candidate is drawn from `softmax(logit / temperature)`.
pub fn choose(candidates: &[Candidate], request_blocks: usize, scoring: &KvScoring, rng: &mut impl Rng) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let logits = logits(candidates, request_blocks, scoring);
    if scoring.temperature > 0.0 && scoring.temperature.is_finite() {
        Some(sample(&logits, scoring.temperature, rng))
    } else {
        Some(argmax(&logits, rng))
    }
}

fn logits(candidates: &[Candidate], request_blocks: usize, scoring: &KvScoring) -> Vec<f64> {
    if scoring.tracked {
        return tracked_logits(candidates, request_blocks, scoring);
    }
    let running: u64 = candidates.iter().map(|c| c.active).fold(0, u64::saturating_add);
    let blocks = request_blocks.max(1) as f64;
    candidates
        .iter()
        .map(|c| {
            let overlap = (c.overlap_blocks as f64 / blocks).min(1.0);
            let usage = if c.kv_capacity > 0 {
                (c.kv_used as f64 / c.kv_capacity as f64).min(1.0)
            } else {
                c.active as f64 / (1 + running) as f64
            };
            let waiting = c.queued as f64 / (1 + c.active + c.queued) as f64;
            scoring.overlap_weight * overlap - scoring.load_weight * (usage + waiting)
        })
        .collect()
}

fn tracked_logits(candidates: &[Candidate], request_blocks: usize, scoring: &KvScoring) -> Vec<f64> {
    let block_size = scoring.block_size.max(1) as f64;
    let costs: Vec<f64> = candidates
        .iter()
        .map(|c| {
            let own = (request_blocks as f64 - scoring.overlap_weight * c.overlap_blocks as f64).max(0.0);
            let prefill = scoring.prefill_load_scale * (own + c.pending_prefill_tokens as f64 / block_size);
            prefill + c.potential_blocks as f64
        })
        .collect();
    let scale = costs.iter().copied().filter(|c| c.is_finite()).fold(1.0, f64::max);
    costs.iter().map(|cost| -cost / scale).collect()
}

/// The highest logit's index; NaNs never win unless all are NaN (then any index).
fn argmax(logits: &[f64], rng: &mut impl Rng) -> usize {
    let best = logits.iter().copied().filter(|l| !l.is_nan()).fold(f64::NEG_INFINITY, f64::max);
    let ties: Vec<usize> = (0..logits.len()).filter(|&i| logits[i] == best).collect();
    if ties.is_empty() {
        return rng.random_range(0..logits.len());
    }
    ties[rng.random_range(0..ties.len())]
}

fn sample(logits: &[f64], temperature: f64, rng: &mut impl Rng) -> usize {
    let best = logits.iter().copied().filter(|l| !l.is_nan()).fold(f64::NEG_INFINITY, f64::max);
    // Shifting by the best logit keeps exp() from overflowing; NaNs get no weight.
    let weights: Vec<f64> = logits.iter().map(|&l| if l.is_nan() { 0.0 } else { ((l - best) / temperature).exp() }).collect();
    let total: f64 = weights.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return argmax(logits, rng);
    }
    let mut point = rng.random::<f64>() * total;
    for (i, &weight) in weights.iter().enumerate() {
        if point < weight {
            return i;
        }
        point -= weight;
    }
    // Rounding left the point past the end: the last candidate with any weight.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn candidate(overlap_blocks: usize, active: u64) -> Candidate {
        Candidate { overlap_blocks, active, ..Default::default() }
    }

    fn picks(candidates: &[Candidate], request_blocks: usize, scoring: &KvScoring, draws: usize) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut picks = vec![0; candidates.len()];
        for _ in 0..draws {
            let i = choose(candidates, request_blocks, scoring, &mut rng).expect("a candidate");
            picks[i] += 1;
        }
        picks
    }

    #[test]
    fn more_overlap_wins_at_equal_load() {
        let scoring = KvScoring::default();
        assert_eq!(picks(&[candidate(2, 3), candidate(8, 3)], 10, &scoring, 100), [0, 100]);
        assert_eq!(picks(&[candidate(8, 0), candidate(2, 0)], 10, &scoring, 100), [100, 0]);
    }

    #[test]
    fn less_load_wins_at_equal_overlap() {
        let scoring = KvScoring::default();
        assert_eq!(picks(&[candidate(5, 5), candidate(5, 1)], 10, &scoring, 100), [0, 100]);
        let queued = Candidate { queued: 4, ..candidate(5, 1) };
        assert_eq!(picks(&[queued, candidate(5, 3)], 10, &scoring, 100), [0, 100], "queued counts as load");
        let kv = |kv_used| Candidate { kv_used, kv_capacity: 1000, ..candidate(5, 2) };
        assert_eq!(picks(&[kv(900), kv(100)], 10, &scoring, 100), [0, 100], "so does a fuller KV cache");
    }

    #[test]
    fn the_weights_trade_overlap_against_load() {
        // Overlap 0.5 vs 0.0 of the request; load 4/5 vs 0 of the running work.
        let candidates = [candidate(5, 4), candidate(0, 0)];
        let scoring = |overlap_weight, load_weight| KvScoring { overlap_weight, load_weight, ..KvScoring::default() };
        assert_eq!(picks(&candidates, 10, &scoring(3.0, 1.0), 50), [50, 0]);
        assert_eq!(picks(&candidates, 10, &scoring(1.0, 1.0), 50), [0, 50]);
        assert_eq!(logits(&candidates, 10, &scoring(1.0, 1.0)), [0.5 - 4.0 / 5.0, 0.0]);
        let kv = Candidate { kv_used: 250, kv_capacity: 1000, ..candidate(20, 2) };
        assert_eq!(logits(&[kv, candidate(0, 4)], 10, &scoring(2.0, 1.0)), [2.0 - 0.25, -(4.0 / 7.0)]);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let tied = [candidate(4, 2), candidate(4, 2)];
        let two = picks(&tied, 10, &KvScoring::default(), 1000);
        assert!(two.iter().all(|&n| n > 400), "{two:?}");
        let idle = [candidate(0, 0), candidate(0, 0), candidate(0, 0)];
        let three = picks(&idle, 0, &KvScoring::default(), 900);
        assert!(three.iter().all(|&n| n > 200), "{three:?}");
    }

    #[test]
    fn a_temperature_mostly_picks_the_better_and_sometimes_the_worse() {
        // Logits 1.0 and 0.5 at temperature 0.5: the better is picked with e/(1+e), about 73%.
        let scoring = KvScoring { temperature: 0.5, ..KvScoring::default() };
        let picks = picks(&[candidate(5, 0), candidate(10, 0)], 10, &scoring, 4000);
        assert!(picks[0] > 800 && picks[0] < 1350, "{picks:?}");
        assert!(picks[1] > 2650, "{picks:?}");
    }

    #[test]
    fn no_candidates_no_choice() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(choose(&[], 10, &KvScoring::default(), &mut rng), None);
        let hot = KvScoring { temperature: 1.0, ..KvScoring::default() };
        assert_eq!(choose(&[], 10, &hot, &mut rng), None);
        assert_eq!(choose(&[candidate(0, 0)], 10, &hot, &mut rng), Some(0));
    }

    #[test]
    fn nan_weights_still_choose_someone() {
        let mut rng = StdRng::seed_from_u64(3);
        let broken = KvScoring { overlap_weight: f64::NAN, ..KvScoring::default() };
        let candidates = [candidate(1, 0), candidate(2, 0)];
        assert!(choose(&candidates, 4, &broken, &mut rng).is_some_and(|i| i < 2));
        let broken = KvScoring { temperature: 1.0, ..broken };
        assert!(choose(&candidates, 4, &broken, &mut rng).is_some_and(|i| i < 2));
    }

    #[test]
    fn tracked_pricing_weighs_prefill_still_to_do_against_blocks_held() {
        let tracked = KvScoring { tracked: true, ..KvScoring::default() };
        // 8 blocks asked; a holds them all but already 12 blocks of other work; b holds none and is idle.
        let a = Candidate { overlap_blocks: 8, potential_blocks: 12, ..Default::default() };
        let b = Candidate { potential_blocks: 8, ..Default::default() };
        // a: 0 + 12 = 12; b: 8 + 8 = 16.
        assert_eq!(picks(&[a.clone(), b.clone()], 8, &tracked, 20), vec![20, 0]);
        // 128 tokens (8 blocks) still to prefill on a tip it: 8 + 12 = 20 against b's 16.
        let busy = Candidate { pending_prefill_tokens: 128, ..a.clone() };
        assert_eq!(picks(&[busy.clone(), b.clone()], 8, &tracked, 20), vec![0, 20]);
        // With the overlap credit at 0 (load-aware) only load counts: b's 16 against a's 8 + 12 = 20.
        let load_only = KvScoring { overlap_weight: 0.0, ..tracked.clone() };
        assert_eq!(picks(&[a.clone(), b.clone()], 8, &load_only, 20), vec![0, 20]);
        // A heavier prefill scale favours the cached worker more: a 0 + 12 against b 16 + 8.
        let scaled = KvScoring { prefill_load_scale: 2.0, ..tracked.clone() };
        assert_eq!(picks(&[busy, b], 8, &scaled, 20), vec![0, 20], "a: 2*8 + 12 = 28 against b: 2*8 + 8 = 24");
    }
}
