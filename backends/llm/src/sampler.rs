//! Turns the logits of one position into the next token: penalties, log-probabilities, then
//! greedy or seeded random sampling with temperature, top-k and top-p.
//!
//! The order follows Hugging Face and OpenAI: the repetition penalty (over prompt and output),
//! the presence and frequency penalties (over the output), log-probabilities of the penalised
//! logits (before temperature, as OpenAI reports them), then temperature, top-k, top-p and a draw.
//! Vocabularies run to 150k tokens, so nothing here sorts the whole vocabulary unless top-p needs
//! it, and the vocabulary-sized buffers are kept from one call to the next.

use std::cmp::Ordering;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use toktrie::SimpleVob;

use tritium_backend_api::llm::{GeneratedToken, SamplingOptions};

/// How many candidates top-p looks at first; it grows this until the nucleus fits.
const NUCLEUS_START: usize = 256;
/// Up to this many, the best candidates are found with a heap rather than a selection.
const HEAP_LIMIT: usize = 1024;

/// Samples the tokens of one sequence, remembering what it has seen for the penalties.
pub(crate) struct Sampler {
    temperature: f32,
    top_p: f32,
    top_k: usize,
    presence_penalty: f32,
    frequency_penalty: f32,
    repetition_penalty: f32,
    min_p: f32,
    logit_bias: Vec<(u32, f32)>,
    logprobs: Option<u32>,
    rng: StdRng,
    /// Distinct tokens of prompt and output: the repetition penalty's scope.
    seen: HashSet<u32>,
    /// Output tokens and how often each came: the presence and frequency penalties' scope.
    output_counts: HashMap<u32, u32>,
    /// The penalised logits of the current call.
    logits: Vec<f32>,
    /// Unnormalised probabilities of the candidates being drawn from.
    weights: Vec<f32>,
    /// (token, logit) pairs, the best first once `select_top` has run.
    candidates: Vec<(u32, f32)>,
    /// The `select_top` heap, worst kept candidate on top.
    heap: BinaryHeap<Candidate>,
}

impl Sampler {
    /// `prompt`: the prompt ids (the repetition penalty covers prompt and output, as in HF).
    pub(crate) fn new(options: &SamplingOptions, logprobs: Option<u32>, prompt: &[u32]) -> Sampler {
        let seed = options.seed.unwrap_or_else(entropy_seed);
        let seen = if options.repetition_penalty != 1.0 { prompt.iter().copied().collect() } else { HashSet::new() };
        Sampler {
            temperature: options.temperature,
            top_p: options.top_p,
            top_k: options.top_k,
            presence_penalty: options.presence_penalty,
            frequency_penalty: options.frequency_penalty,
            repetition_penalty: options.repetition_penalty,
            min_p: options.min_p,
            logit_bias: options.logit_bias.clone(),
            logprobs,
            rng: StdRng::seed_from_u64(seed),
            seen,
            output_counts: HashMap::new(),
            logits: Vec::new(),
            weights: Vec::new(),
            candidates: Vec::new(),
            heap: BinaryHeap::new(),
        }
    }

    /// Picks the next token from the logits of the last position (vocabulary-sized) and
    /// records it for the penalties. NaN logits count as -inf. Empty logits give token 0.
    pub(crate) fn sample(&mut self, logits: &[f32]) -> GeneratedToken {
        self.sample_masked(logits, None)
    }

    /// [`Sampler::sample`] among the `allowed` tokens only (a grammar's next tokens); the
    /// log-probabilities are those of the distribution over them.
    pub(crate) fn sample_among(&mut self, logits: &[f32], allowed: &SimpleVob) -> GeneratedToken {
        self.sample_masked(logits, Some(allowed))
    }

    fn sample_masked(&mut self, logits: &[f32], allowed: Option<&SimpleVob>) -> GeneratedToken {
        if logits.is_empty() {
            return GeneratedToken {
                id: 0,
                logprob: None,
                top_logprobs: Vec::new(),
                prompt_cached: None,
                prompt_pinned: None,
                stop: false,
            };
        }
        self.load_penalised(logits);
        if let Some(allowed) = allowed {
            for (id, logit) in self.logits.iter_mut().enumerate() {
                if !u32::try_from(id).is_ok_and(|id| allowed.is_allowed(id)) {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        let random = self.temperature.is_finite() && self.temperature > 0.0 && self.top_k != 1;
        let id = if random { self.draw() } else { argmax(&self.logits) };
        let (logprob, top_logprobs) = match self.logprobs {
            Some(n) => {
                let lse = log_sum_exp(&self.logits);
                let top = self.top_logprobs(n as usize, lse);
                (Some(self.logits[id] - lse), top)
            }
            None => (None, Vec::new()),
        };
        // id < logits.len(), which came from a vocabulary indexed by u32.
        let id = id as u32;
        self.record(id);
        GeneratedToken { id, logprob, top_logprobs, prompt_cached: None, prompt_pinned: None, stop: false }
    }

    fn record(&mut self, id: u32) {
        if self.repetition_penalty != 1.0 {
            self.seen.insert(id);
        }
        if self.presence_penalty != 0.0 || self.frequency_penalty != 0.0 {
            *self.output_counts.entry(id).or_insert(0) += 1;
        }
    }

    /// Copies the logits into `self.logits` with NaN as -inf and applies the penalties.
    fn load_penalised(&mut self, logits: &[f32]) {
        self.logits.clear();
        self.logits.extend(logits.iter().map(|&x| sanitise(x)));
        if self.logits.iter().all(|&x| x == f32::NEG_INFINITY) {
            // Nothing to go on: a uniform choice rather than NaN probabilities.
            self.logits.fill(0.0);
        }
        let vocab = self.logits.len();
        let penalty = self.repetition_penalty;
        if penalty != 1.0 {
            for &token in &self.seen {
                if let Some(x) = self.logits.get_mut(token as usize) {
                    *x = if *x < 0.0 { *x * penalty } else { *x / penalty };
                }
            }
        }
        if self.presence_penalty != 0.0 || self.frequency_penalty != 0.0 {
            for (&token, &count) in &self.output_counts {
                if (token as usize) < vocab {
                    self.logits[token as usize] -= self.presence_penalty + self.frequency_penalty * count as f32;
                }
            }
        }
        for &(token, bias) in &self.logit_bias {
            if let Some(x) = self.logits.get_mut(token as usize) {
                *x = if bias <= -100.0 { f32::NEG_INFINITY } else { *x + bias };
            }
        }
        if self.logits.iter().all(|&x| x == f32::NEG_INFINITY) {
            // Every token banned: the bias is ignored rather than a token drawn from nothing.
            self.logits.clear();
            self.logits.extend(logits.iter().map(|&x| sanitise(x)));
        }
    }

    /// Draws a token after temperature, top-k and top-p.
    fn draw(&mut self) -> usize {
        let vocab = self.logits.len();
        let inv_t = 1.0 / self.temperature;
        let max = self.logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let top_k = if self.top_k > 0 && self.top_k < vocab { Some(self.top_k) } else { None };
        let top_p = self.top_p < 1.0;
        // min-p: p / p_max >= min_p, that is x >= max + T ln(min_p).
        let floor = if self.min_p > 0.0 { max + self.temperature * self.min_p.ln() } else { f32::NEG_INFINITY };

        if top_k.is_none() && !top_p {
            // The whole vocabulary, in token order: no sorting needed.
            self.weights.clear();
            self.weights.extend(self.logits.iter().map(|&x| if x < floor { 0.0 } else { ((x - max) * inv_t).exp() }));
            return match pick(&self.weights, &mut self.rng) {
                Some(i) => i,
                None => argmax(&self.logits),
            };
        }

        let kept = match top_k {
            Some(k) => {
                self.select_top(k);
                self.fill_candidate_weights(max, inv_t);
                if top_p {
                    let total: f32 = self.weights.iter().sum();
                    nucleus_len(&self.weights, self.top_p * total)
                } else {
                    k
                }
            }
            None => {
                // Top-p alone: probabilities are over the whole vocabulary, but the nucleus is
                // usually a few hundred tokens, so sort a growing head instead of everything.
                let total: f32 = self.logits.iter().map(|&x| ((x - max) * inv_t).exp()).sum();
                let target = self.top_p * total;
                let mut m = NUCLEUS_START.min(vocab);
                loop {
                    self.select_top(m);
                    self.fill_candidate_weights(max, inv_t);
                    let len = nucleus_len(&self.weights, target);
                    if len < m || m == vocab {
                        break len;
                    }
                    m = (m * 8).min(vocab);
                }
            }
        };
        // Candidates are best first: min-p cuts the tail (the best one always stays).
        let above = self.candidates.iter().take(kept).take_while(|c| c.1 >= floor).count();
        self.weights.truncate(above.max(1));
        let index = pick(&self.weights, &mut self.rng).unwrap_or(0);
        self.candidates[index].0 as usize
    }

    fn fill_candidate_weights(&mut self, max: f32, inv_t: f32) {
        self.weights.clear();
        self.weights.extend(self.candidates.iter().map(|&(_, x)| ((x - max) * inv_t).exp()));
    }

    /// Leaves the `n` best (token, logit) pairs in `self.candidates`, best first; ties go to
    /// the lower id. A few hundred come from one pass with a bounded heap (most logits lose a
    /// single comparison with the worst kept); more from a linear-time selection.
    fn select_top(&mut self, n: usize) {
        self.candidates.clear();
        let n = n.min(self.logits.len());
        if n == 0 {
            return;
        }
        if n <= HEAP_LIMIT {
            self.heap.clear();
            let mut worst = f32::NEG_INFINITY;
            for (i, &x) in self.logits.iter().enumerate() {
                // Token ids fit in u32: the vocabulary is indexed by them.
                let candidate = Candidate(i as u32, x);
                if self.heap.len() < n {
                    self.heap.push(candidate);
                    if self.heap.len() == n {
                        worst = self.heap.peek().map_or(f32::NEG_INFINITY, |c| c.1);
                    }
                } else if x > worst {
                    if let Some(mut root) = self.heap.peek_mut() {
                        *root = candidate;
                    }
                    worst = self.heap.peek().map_or(f32::NEG_INFINITY, |c| c.1);
                }
            }
            self.candidates.extend(self.heap.drain().map(|c| (c.0, c.1)));
        } else {
            self.candidates.extend(self.logits.iter().enumerate().map(|(i, &x)| (i as u32, x)));
            if n < self.candidates.len() {
                self.candidates.select_nth_unstable_by(n - 1, better);
                self.candidates.truncate(n);
            }
        }
        self.candidates.sort_unstable_by(better);
    }

    fn top_logprobs(&mut self, n: usize, lse: f32) -> Vec<(u32, f32)> {
        if n == 0 {
            return Vec::new();
        }
        self.select_top(n);
        self.candidates.iter().map(|&(id, x)| (id, x - lse)).collect()
    }
}

/// Orders (token, logit) pairs best first: higher logit, then lower id.
fn better(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// A (token, logit) pair ordered by [`better`], so a max-heap keeps the worst on top.
#[derive(Debug, Clone, Copy)]
struct Candidate(u32, f32);

impl Ord for Candidate {
    fn cmp(&self, other: &Candidate) -> Ordering {
        better(&(self.0, self.1), &(other.0, other.1))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Candidate) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Candidate) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// NaN counts as impossible; +inf as the largest finite value, so differences stay finite.
fn sanitise(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else if x == f32::INFINITY {
        f32::MAX
    } else {
        x
    }
}

/// The index of the largest value, the first one on ties.
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in values.iter().enumerate() {
        if x > values[best] {
            best = i;
        }
    }
    best
}

/// `ln(sum(exp(values)))`, summed in f64: an f32 sum over a 50k vocabulary drifts by about 1e-4,
/// and a generated token's log-probability must equal the same position's prompt score
/// ([`crate::prompt_scores`]), which uses this too.
pub(crate) fn log_sum_exp(values: &[f32]) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let sum: f64 = values.iter().map(|&x| f64::from(x - max).exp()).sum();
    max + sum.ln() as f32
}

/// How many of the leading weights it takes to reach `target` (at least one).
fn nucleus_len(weights: &[f32], target: f32) -> usize {
    let mut cumulative = 0.0f32;
    for (i, &w) in weights.iter().enumerate() {
        cumulative += w;
        if cumulative >= target {
            return i + 1;
        }
    }
    weights.len()
}

/// Draws an index with probability proportional to its weight; `None` when all are zero.
fn pick(weights: &[f32], rng: &mut StdRng) -> Option<usize> {
    let total: f32 = weights.iter().sum();
    let usable = total.is_finite() && total > 0.0;
    if !usable {
        return None;
    }
    let target = rng.random::<f32>() * total;
    let mut cumulative = 0.0f32;
    let mut last_positive = None;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            cumulative += w;
            last_positive = Some(i);
            if cumulative > target {
                return Some(i);
            }
        }
    }
    // Rounding can leave `target` at the very top; the last possible token takes it.
    last_positive
}

/// A seed for requests that gave none: the process's random hash keys mixed with the clock.
fn entropy_seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn options(temperature: f32) -> SamplingOptions {
        SamplingOptions { temperature, seed: Some(7), ..SamplingOptions::default() }
    }

    fn sample_n(options: &SamplingOptions, logits: &[f32], n: usize) -> Vec<u32> {
        let mut sampler = Sampler::new(options, None, &[]);
        (0..n).map(|_| sampler.sample(logits).id).collect()
    }

    /// Logits 0..vocab with a little noise, so there is one clear argmax and a long tail.
    fn ramp(vocab: usize) -> Vec<f32> {
        (0..vocab).map(|i| (i % 97) as f32 * 0.05 + (i as f32 * 0.618).fract()).collect()
    }

    #[test]
    fn greedy_picks_the_argmax_and_the_lowest_id_on_ties() {
        let mut sampler = Sampler::new(&options(0.0), None, &[]);
        assert_eq!(sampler.sample(&[0.1, 3.0, -1.0, 2.9]).id, 1);
        assert_eq!(sampler.sample(&[0.1, 3.0, 3.0, 3.0]).id, 1);
        let logits = ramp(50_000);
        assert_eq!(sampler.sample(&logits).id as usize, argmax(&logits));
    }

    #[test]
    fn the_same_seed_repeats_and_different_seeds_differ() {
        let logits = vec![0.0f32; 1000];
        let a = sample_n(&SamplingOptions { seed: Some(1), ..options(1.0) }, &logits, 64);
        let b = sample_n(&SamplingOptions { seed: Some(1), ..options(1.0) }, &logits, 64);
        let c = sample_n(&SamplingOptions { seed: Some(2), ..options(1.0) }, &logits, 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let unseeded = SamplingOptions { seed: None, ..options(1.0) };
        assert_ne!(sample_n(&unseeded, &logits, 64), sample_n(&unseeded, &logits, 64));
    }

    #[test]
    fn top_k_one_and_a_tiny_top_p_are_greedy() {
        let logits = ramp(50_000);
        let best = argmax(&logits) as u32;
        let top_k = SamplingOptions { top_k: 1, ..options(1.5) };
        assert!(sample_n(&top_k, &logits, 50).iter().all(|&id| id == best));
        let top_p = SamplingOptions { top_p: 1e-6, ..options(1.5) };
        assert!(sample_n(&top_p, &logits, 50).iter().all(|&id| id == best));
        let ties = [1.0, 5.0, 5.0, 0.0];
        assert!(sample_n(&SamplingOptions { top_p: 1e-6, ..options(1.0) }, &ties, 20).iter().all(|&id| id == 1));
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_head() {
        let logits = ramp(50_000);
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| better(&(a, logits[a as usize]), &(b, logits[b as usize])));
        let top10: HashSet<u32> = order[..10].iter().copied().collect();
        let drawn = sample_n(&SamplingOptions { top_k: 10, ..options(1.0) }, &logits, 500);
        assert!(drawn.iter().all(|id| top10.contains(id)));
        assert!(drawn.iter().collect::<HashSet<_>>().len() > 5, "top-k 10 should spread over the ten");

        // Two tokens hold almost all the mass: top-p 0.9 keeps exactly them.
        let mut peaked = vec![0.0f32; 2000];
        peaked[3] = 20.0;
        peaked[1500] = 19.5;
        let drawn = sample_n(&SamplingOptions { top_p: 0.9, ..options(1.0) }, &peaked, 300);
        assert!(drawn.iter().all(|&id| id == 3 || id == 1500));
        assert!(drawn.contains(&3) && drawn.contains(&1500));
        let drawn = sample_n(&SamplingOptions { top_p: 0.9, top_k: 50, ..options(1.0) }, &peaked, 300);
        assert!(drawn.iter().all(|&id| id == 3 || id == 1500));
    }

    #[test]
    fn select_top_agrees_with_a_full_sort_ties_included() {
        let logits: Vec<f32> = (0..5000).map(|i| ((i * 7) % 13) as f32).collect();
        let mut sorted: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
        sorted.sort_by(better);
        let mut sampler = Sampler::new(&options(1.0), None, &[]);
        sampler.logits = logits;
        for n in [1, 7, 400, HEAP_LIMIT, HEAP_LIMIT + 1, 5000, 6000] {
            sampler.select_top(n);
            assert_eq!(sampler.candidates, sorted[..n.min(5000)], "n = {n}");
        }
    }

    #[test]
    fn draws_follow_the_softmax_and_temperature_sharpens_it() {
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let draws = 20_000;
        let frequencies = |temperature: f32| {
            let mut counts = [0usize; 4];
            for id in sample_n(&options(temperature), &logits, draws) {
                counts[id as usize] += 1;
            }
            counts.map(|c| c as f64 / draws as f64)
        };
        let at_one = frequencies(1.0);
        let z: f64 = logits.iter().map(|&x| f64::from(x).exp()).sum();
        for (i, &x) in logits.iter().enumerate() {
            let expected = f64::from(x).exp() / z;
            assert!((at_one[i] - expected).abs() < 0.015, "token {i}: {} vs {expected}", at_one[i]);
        }
        let cold = frequencies(0.3);
        let hot = frequencies(3.0);
        assert!(cold[0] > at_one[0] + 0.2 && at_one[0] > hot[0] + 0.2, "{cold:?} {at_one:?} {hot:?}");
        assert!(hot[3] > at_one[3] && at_one[3] > cold[3]);
    }

    #[test]
    fn the_repetition_penalty_covers_the_prompt_and_both_signs() {
        let penalty = SamplingOptions { repetition_penalty: 1.5, ..options(0.0) };
        // 1.0 / 1.5 < 0.9
        assert_eq!(Sampler::new(&penalty, None, &[0]).sample(&[1.0, 0.9, 0.0]).id, 1);
        // -1.0 * 1.5 < -1.2
        assert_eq!(Sampler::new(&penalty, None, &[0]).sample(&[-1.0, -1.2, -5.0]).id, 1);
        assert_eq!(Sampler::new(&options(0.0), None, &[0]).sample(&[1.0, 0.9, 0.0]).id, 0);
        // Output tokens count too; out-of-vocabulary prompt ids are ignored.
        let mut sampler = Sampler::new(&penalty, None, &[99_999]);
        assert_eq!(sampler.sample(&[1.0, 0.9, 0.0]).id, 0);
        assert_eq!(sampler.sample(&[1.0, 0.9, 0.0]).id, 1);
    }

    #[test]
    fn presence_and_frequency_penalties_cover_the_output_only() {
        let logits = [1.0f32, 0.8, 0.0];
        let presence = SamplingOptions { presence_penalty: 0.5, ..options(0.0) };
        let mut sampler = Sampler::new(&presence, None, &[0, 0, 0]);
        assert_eq!(sampler.sample(&logits).id, 0, "the prompt is not penalised");
        assert_eq!(sampler.sample(&logits).id, 1);
        assert_eq!(sampler.sample(&logits).id, 0, "presence is paid once, not per occurrence");

        let frequency = SamplingOptions { frequency_penalty: 0.15, ..options(0.0) };
        let mut sampler = Sampler::new(&frequency, None, &[]);
        let ids: Vec<u32> = (0..4).map(|_| sampler.sample(&logits).id).collect();
        // 1.0, then 0.85 > 0.8, then 0.7 < 0.8, then 0.7 > 0.65.
        assert_eq!(ids, vec![0, 0, 1, 0]);
    }

    #[test]
    fn logprobs_are_a_distribution_with_a_sorted_top_list() {
        let logits = ramp(5000);
        let mut sampler = Sampler::new(&SamplingOptions { top_k: 40, ..options(0.7) }, Some(5), &[]);
        let token = sampler.sample(&logits);
        let logprob = token.logprob.unwrap();
        assert!(logprob <= 0.0);
        assert_eq!(token.top_logprobs.len(), 5);
        assert!(token.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(token.top_logprobs.iter().all(|&(_, lp)| lp <= 0.0));
        assert_eq!(token.top_logprobs[0].0 as usize, argmax(&logits));

        // Every token's logprob, through a top list as long as the vocabulary.
        let mut sampler = Sampler::new(&options(1.0), Some(5000), &[]);
        let token = sampler.sample(&logits);
        let total: f64 = token.top_logprobs.iter().map(|&(_, lp)| f64::from(lp).exp()).sum();
        assert!((total - 1.0).abs() < 1e-3, "{total}");
        let chosen = token.top_logprobs.iter().find(|&&(id, _)| id == token.id).unwrap().1;
        assert!((chosen - token.logprob.unwrap()).abs() < 1e-6);

        let mut sampler = Sampler::new(&options(1.0), None, &[]);
        let token = sampler.sample(&logits);
        assert!(token.logprob.is_none() && token.top_logprobs.is_empty());
    }

    #[test]
    fn nan_and_infinite_logits_do_not_panic() {
        let nan = [f32::NAN, 1.0, f32::NAN, 0.5];
        for temperature in [0.0, 1.0] {
            for top_p in [1.0, 0.5] {
                let opts = SamplingOptions { top_p, ..options(temperature) };
                let mut sampler = Sampler::new(&opts, Some(2), &[]);
                let token = sampler.sample(&nan);
                assert!(token.id == 1 || token.id == 3, "{token:?}");
                assert!(token.logprob.unwrap() <= 0.0);
            }
        }
        let mut sampler = Sampler::new(&options(1.0), Some(2), &[]);
        assert!(sampler.sample(&[f32::NAN; 4]).id < 4);
        assert_eq!(sampler.sample(&[0.0, f32::INFINITY, 1.0]).id, 1);
        assert_eq!(sampler.sample(&[f32::NEG_INFINITY, f32::NEG_INFINITY, 1.0]).id, 2);
        assert_eq!(sampler.sample(&[]).id, 0);
    }
}
