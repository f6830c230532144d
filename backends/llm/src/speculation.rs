//! Speculative decoding by prompt lookup (n-gram): a decoding sequence whose last tokens appeared
//! earlier in it (prompt or output) proposes the tokens that followed them there, feeds its last
//! token and the proposal in one step, and keeps every proposed token the model itself would have
//! drawn.
//!
//! Verification samples each row exactly as plain decoding would, in order, with the sequence's
//! own sampler (penalties, bias, grammar, seed), and stops at the first drawn token that differs
//! from the proposal: the emitted tokens are those plain decoding emits, for greedy and seeded
//! sampling alike (a proposal of one certain token accepted with the probability the model gives
//! it is rejection sampling with that proposal). The logits of a row do not depend on how many
//! rows the step carried (the kernels are batch-invariant), so nothing about the answer depends on
//! whether speculation is on. Rejected positions are rolled back by leaving them past `fed`:
//! their keys and values are overwritten before anything reads them.

use super::engine_state::{Counters, SpeculativeOptions};
use super::sequence::{Running, Sampled, sample_next};
use tritium_backend_api::llm::ModelCard;

/// The tokens that followed the latest earlier occurrence of `tokens`' longest suffix between
/// `lookup_min` and `lookup_max` tokens long, at most `limit` of them (empty: nothing to propose).
pub(crate) fn propose(tokens: &[u32], options: &SpeculativeOptions, limit: usize) -> Vec<u32> {
    let len = tokens.len();
    if limit == 0 {
        return Vec::new();
    }
    for n in (options.lookup_min..=options.lookup_max.min(len.saturating_sub(1))).rev() {
        let suffix = &tokens[len - n..];
        // The latest start before the suffix itself whose n tokens match it.
        let found = (0..len - n).rev().find(|&start| &tokens[start..start + n] == suffix);
        if let Some(start) = found {
            let from = start + n;
            return tokens[from..(from + limit).min(len)].to_vec();
        }
    }
    Vec::new()
}

/// Samples the rows of a speculative step in order (row `j` follows the sequence's last token
/// and the proposal's first `j` tokens) and stops at the first token that is not the proposal's.
/// Returns how sampling left the sequence and how many proposed tokens were kept (their positions
/// are now computed; the last token drawn is fed in the next step, as in plain decoding).
pub(crate) fn verify(
    sequence: &mut Running,
    rows: &[Vec<f32>],
    proposal: &[u32],
    card: &ModelCard,
    context_length: usize,
    counters: &Counters,
) -> (Sampled, usize) {
    let mut kept = 0;
    for (j, row) in rows.iter().enumerate() {
        let outcome = sample_next(sequence, row, card, context_length, counters);
        if outcome != Sampled::GoOn {
            return (outcome, kept);
        }
        match proposal.get(j) {
            Some(&proposed) if sequence.tokens.last() == Some(&proposed) => kept += 1,
            _ => break,
        }
    }
    (Sampled::GoOn, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(min: usize, max: usize) -> SpeculativeOptions {
        SpeculativeOptions { num_tokens: 3, lookup_min: min, lookup_max: max, disable_by_batch_size: 4 }
    }

    #[test]
    fn the_longest_suffix_found_earlier_proposes_what_followed_its_latest_occurrence() {
        //                 0  1  2  3  4  5  6  7  8  9 10
        let tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2];
        // "1 2" occurs at 0 and 4: the latest (4) is followed by 3 7 8.
        assert_eq!(propose(&tokens, &options(2, 3), 3), [3, 7, 8]);
        assert_eq!(propose(&tokens, &options(2, 3), 2), [3, 7]);
        // The proposal stops at the end of what is known.
        let tokens = [5, 6, 5];
        assert_eq!(propose(&tokens, &options(1, 2), 3), [6, 5]);
        // Longer suffixes win: "2 3" after "0 2 3 4" beats "3" alone.
        let tokens = [0, 2, 3, 4, 3, 5, 2, 3];
        assert_eq!(propose(&tokens, &options(1, 2), 1), [4]);
        assert_eq!(propose(&tokens, &options(1, 1), 1), [5], "the latest occurrence of 3 is followed by 5");
    }

    #[test]
    fn nothing_is_proposed_without_an_earlier_match_or_room() {
        assert!(propose(&[1, 2, 3, 4], &options(1, 3), 3).is_empty());
        assert!(propose(&[1, 2, 1, 2], &options(2, 2), 0).is_empty());
        assert!(propose(&[7], &options(1, 4), 3).is_empty());
        assert!(propose(&[], &options(1, 4), 3).is_empty());
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(SpeculativeOptions::default().validate(), Ok(()));
        let zero = SpeculativeOptions { num_tokens: 0, ..Default::default() };
        assert!(zero.validate().unwrap_err().contains("--num-speculative-tokens"));
        let inverted = SpeculativeOptions { lookup_min: 5, lookup_max: 2, ..Default::default() };
        assert!(inverted.validate().unwrap_err().contains("--prompt-lookup-min"));
    }
}
