//! `n` and `best_of`: several choices of one prompt. The first choice starts alone; once the
//! engine has computed its prompt (its first event), the others start and find the prompt's
//! blocks in the prefix cache, so the prompt is computed once. With a `seed`, choice `i` samples
//! with `seed + i`: the choices differ, and the same request gives the same choices again.

use std::sync::Arc;

use crate::BridgeError;
use crate::hub::LlmHub;
use crate::metrics::RequestObserver;
use crate::pipeline::{Generated, ModelRef, TextStream, generate_text};
use crate::preprocess::Preprocessor;
use crate::sampling::CompletionOptions;

/// Starts one generation per observer (the first carries the request's trace).
pub async fn generate_choices(
    hub: &dyn LlmHub,
    pre: &Arc<Preprocessor>,
    model: ModelRef<'_>,
    options: &CompletionOptions,
    prompt: Vec<u32>,
    default_max_tokens: Option<u32>,
    observers: Vec<RequestObserver>,
) -> Result<Vec<TextStream>, BridgeError> {
    let count = observers.len();
    let mut streams = Vec::with_capacity(count);
    let mut prompt = Some(prompt);
    for (index, observer) in observers.into_iter().enumerate() {
        let choice = choice_options(options, index);
        // The last choice takes the prompt itself (a long prompt's ids are not copied for one).
        let ids = if index + 1 == count { prompt.take() } else { prompt.clone() }.unwrap_or_default();
        let mut stream = generate_text(hub, pre, model, &choice, ids, default_max_tokens, observer).await?;
        if index == 0 && count > 1 {
            stream.prefilled().await;
        }
        streams.push(stream);
    }
    Ok(streams)
}

/// Choice `index`'s options: the request's, its seed moved by `index`.
fn choice_options(options: &CompletionOptions, index: usize) -> CompletionOptions {
    let mut choice = options.clone();
    choice.seed = options.seed.map(|seed| seed.wrapping_add(index as u64));
    choice
}

/// `best_of`: the indexes of the `n` generations with the highest log-probability (the sum over
/// their tokens), best first; ties keep the earlier one.
pub fn best(generated: &[Generated], n: usize) -> Vec<usize> {
    let score = |g: &Generated| g.tokens.iter().map(|t| f64::from(t.logprob.unwrap_or(0.0))).sum::<f64>();
    let mut order: Vec<usize> = (0..generated.len()).collect();
    order.sort_by(|&a, &b| score(&generated[b]).total_cmp(&score(&generated[a])).then(a.cmp(&b)));
    order.truncate(n);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_sample_with_seeds_one_apart() {
        let options = CompletionOptions { seed: Some(u64::MAX), ..Default::default() };
        assert_eq!(choice_options(&options, 0).seed, Some(u64::MAX));
        assert_eq!(choice_options(&options, 2).seed, Some(1));
        assert_eq!(choice_options(&CompletionOptions::default(), 3).seed, None);
    }
}
