//! `logit_bias` and `min_p` in the sampler.

use tritium_backend_api::llm::SamplingOptions;

use crate::sampler::Sampler;

fn draws(options: &SamplingOptions, logits: &[f32], n: usize) -> Vec<u32> {
    let mut sampler = Sampler::new(options, Some(1), &[]);
    (0..n).map(|_| sampler.sample(logits).id).collect()
}

#[test]
fn a_bias_of_100_forces_a_token_and_minus_100_bans_it() {
    let logits = [2.0, 1.0, 0.5, 3.0];
    let sampled = SamplingOptions { temperature: 1.0, seed: Some(3), ..SamplingOptions::default() };
    let forced = SamplingOptions { logit_bias: vec![(2, 100.0)], ..sampled.clone() };
    assert!(draws(&forced, &logits, 200).iter().all(|&id| id == 2));
    let greedy = SamplingOptions { temperature: 0.0, logit_bias: vec![(3, -100.0)], ..SamplingOptions::default() };
    assert!(draws(&greedy, &logits, 5).iter().all(|&id| id == 0), "the argmax banned, the next best wins");
    let banned = SamplingOptions { logit_bias: vec![(3, -100.0), (0, -100.0)], ..sampled };
    let drawn = draws(&banned, &logits, 500);
    assert!(drawn.iter().all(|&id| id == 1 || id == 2) && drawn.contains(&1) && drawn.contains(&2));
}

#[test]
fn a_bias_moves_the_logprobs_and_ids_outside_the_vocabulary_change_nothing() {
    let logits = [0.0f32, 0.0, 0.0, 0.0];
    let options = SamplingOptions { temperature: 0.0, logit_bias: vec![(1, 2.0), (99, 50.0)], ..SamplingOptions::default() };
    let token = Sampler::new(&options, Some(1), &[]).sample(&logits);
    assert_eq!(token.id, 1);
    let expected = 2.0 - (2f32.exp() + 3.0).ln();
    assert!((token.logprob.expect("asked for") - expected).abs() < 1e-6);
}

#[test]
fn banning_every_token_falls_back_to_the_logits_as_they_were() {
    let options = SamplingOptions { temperature: 0.0, logit_bias: vec![(0, -100.0), (1, -100.0)], ..SamplingOptions::default() };
    assert_eq!(draws(&options, &[1.0, 2.0], 3), [1, 1, 1]);
}

#[test]
fn min_p_leaves_out_tokens_less_likely_than_its_share_of_the_best() {
    // Probabilities at temperature 1: e^3, e^2.5, e^0 over their sum; token 2 is under 0.1 of the best.
    let logits = [3.0f32, 2.5, 0.0];
    let plain = SamplingOptions { temperature: 1.0, seed: Some(11), ..SamplingOptions::default() };
    assert!(draws(&plain, &logits, 2000).contains(&2), "without min_p the tail is drawn");
    for top_k in [0, 3] {
        let cut = SamplingOptions { min_p: 0.1, top_k, ..plain.clone() };
        let drawn = draws(&cut, &logits, 2000);
        assert!(!drawn.contains(&2) && drawn.contains(&0) && drawn.contains(&1), "top_k {top_k}");
    }
    let only_the_best = SamplingOptions { min_p: 1.0, ..plain };
    assert!(draws(&only_the_best, &logits, 200).iter().all(|&id| id == 0));
}
