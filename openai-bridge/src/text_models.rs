//! Tensor models the OpenAI door serves as text scorers or classifiers: a cross-encoder answers
//! `/v1/score` and `/v1/rerank` with its own score of each (query, document) pair, a sequence
//! classifier answers `/classify`. The server runs the model's tensors; this module holds its
//! tokenizer and turns texts into token rows and the model's outputs into answers.

use std::str::FromStr;

use tokenizers::{EncodeInput, Tokenizer, TruncationParams, TruncationStrategy};

/// The longest a row may be when the model's config names no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextTaskKind {
    /// Pairs of texts in, one score per pair out.
    Score,
    /// Texts in, a logit per class out.
    Classify,
}

/// One such model, as the routes see it.
#[derive(Debug)]
pub struct TextModel {
    pub kind: TextTaskKind,
    tokenizer: Tokenizer,
    /// Class names by index (its output's `label_filename`); `LABEL_i` past their end.
    labels: Vec<String>,
}

/// Token rows for the model: ids and segment (type) ids, one row per input.
pub type TokenRows = Vec<(Vec<u32>, Vec<u32>)>;

impl TextModel {
    /// From a `tokenizer.json` text; rows longer than `max_tokens` are cut (the longer text of a
    /// pair first), as cross-encoders are used.
    pub fn new(kind: TextTaskKind, tokenizer_json: &str, labels: Vec<String>, max_tokens: usize) -> Result<TextModel, String> {
        let mut tokenizer = Tokenizer::from_str(tokenizer_json).map_err(|e| format!("the tokenizer does not load: {e}"))?;
        tokenizer.with_padding(None);
        let truncation =
            TruncationParams { max_length: max_tokens.max(1), strategy: TruncationStrategy::LongestFirst, ..Default::default() };
        tokenizer.with_truncation(Some(truncation)).map_err(|e| format!("the tokenizer takes no truncation: {e}"))?;
        Ok(TextModel { kind, tokenizer, labels })
    }

    /// The rows of `texts` (each one text, or a pair).
    pub fn encode(&self, texts: Vec<(String, Option<String>)>) -> Result<TokenRows, String> {
        let inputs: Vec<EncodeInput> = texts
            .into_iter()
            .map(|(first, second)| match second {
                Some(second) => EncodeInput::from((first, second)),
                None => EncodeInput::from(first),
            })
            .collect();
        let encodings = self.tokenizer.encode_batch(inputs, true).map_err(|e| format!("cannot be tokenized: {e}"))?;
        Ok(encodings.into_iter().map(|e| (e.get_ids().to_vec(), e.get_type_ids().to_vec())).collect())
    }

    /// The name of class `index`.
    pub fn label(&self, index: usize) -> String {
        self.labels.get(index).cloned().unwrap_or_else(|| format!("LABEL_{index}"))
    }
}

/// A single-logit model's score: its logistic, as cross-encoders are read; with several
/// classes, the last class's probability (the "relevant" class of two-class rerankers).
pub fn pair_score(logits: &[f32]) -> f32 {
    match logits {
        [only] => 1.0 / (1.0 + (-only).exp()),
        many => softmax(many).last().copied().unwrap_or(0.0),
    }
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|x| (x - top).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| if sum > 0.0 { e / sum } else { 0.0 }).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scores_and_probabilities() {
        assert!((pair_score(&[0.0]) - 0.5).abs() < 1e-6);
        assert!(pair_score(&[4.0]) > 0.98);
        let probs = softmax(&[1.0, 1.0, 1.0, 1.0]);
        assert!(probs.iter().all(|p| (p - 0.25).abs() < 1e-6));
        assert!((pair_score(&[0.0, 0.0]) - 0.5).abs() < 1e-6);
    }
}
