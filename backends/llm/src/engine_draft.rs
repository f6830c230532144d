//! Speculative decoding with a draft model: a smaller model with the same tokenizer proposes each
//! decoding sequence's next tokens greedily, one batched step per token, over a store of its own
//! laid out on the sequence's blocks; the model verifies them as it verifies prompt lookup's
//! (`speculation::verify`), so the answer does not depend on the draft. The draft catches up on a
//! sequence's tokens from where its store stops (`draft_fed`), which is the whole sequence after
//! an admission or a preemption, and forgets the positions verification rejected.

use super::engine_loop::EngineLoop;
use super::model::SequenceInput;

impl EngineLoop {
    /// Replaces each placeholder proposal (its length is the room found for it) with the draft's
    /// greedy tokens; on a draft failure proposes nothing this step.
    pub(super) fn draft_proposals(&mut self, proposals: &mut [Vec<u32>]) {
        let EngineLoop { draft, running, shared, .. } = self;
        let Some(draft) = draft.as_mut() else { return };
        let limits: Vec<usize> = proposals.iter().map(Vec::len).collect();
        for proposal in proposals.iter_mut() {
            proposal.clear();
        }
        let candidates: Vec<usize> = (0..running.len()).filter(|&i| limits[i] > 0).collect();
        let mut active = candidates.clone();
        while !active.is_empty() {
            // The first round catches up on the sequence itself; later ones feed the last draft token.
            let fed: Vec<Vec<u32>> = active
                .iter()
                .map(|&i| match proposals[i].last() {
                    Some(&token) => vec![token],
                    None => running[i].tokens[running[i].draft_fed..].to_vec(),
                })
                .collect();
            let inputs: Vec<SequenceInput<'_>> = active
                .iter()
                .zip(&fed)
                .map(|(&i, tokens)| SequenceInput {
                    tokens,
                    cached: running[i].draft_fed,
                    blocks: &running[i].blocks,
                    lora: None,
                })
                .collect();
            let logits = match draft.forward(&inputs) {
                Ok(logits) => logits,
                Err(e) => {
                    tracing::warn!(model = %shared.name, "the draft model failed: {e}");
                    for &i in &candidates {
                        proposals[i].clear();
                        running[i].draft_fed = 0;
                    }
                    return;
                }
            };
            for ((&i, tokens), row) in active.iter().zip(&fed).zip(&logits) {
                running[i].draft_fed += tokens.len();
                proposals[i].push(argmax(row));
            }
            active.retain(|&i| proposals[i].len() < limits[i]);
        }
    }
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (index, &value) in row.iter().enumerate() {
        if value > row[best] {
            best = index;
        }
    }
    best as u32
}
