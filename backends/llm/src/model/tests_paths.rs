//! One position's logits, bit for bit, whichever way its prompt reached the model (issue 43's
//! first point), on the real SmolLM2: prefilled whole or in chunks of any size, its prefix read
//! back from the blocks of another store (what the offload tier and a prefill worker's transfer
//! hand over), and batched beside other sequences at any place.

#![allow(clippy::unwrap_used)]

use candle_core::Device;

use super::test_kv::{Sequence, TestKv};
use super::*;

fn bits(logits: &candle_core::Tensor, row: usize) -> Vec<u32> {
    logits.get(row).unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// A prompt of about 150 tokens: many blocks of four, several chunks.
fn prompt(card: &ModelCard) -> Vec<u32> {
    let text = (0..12).map(|i| format!("House rule {i}: the assistant answers politely and briefly. ")).collect::<String>();
    let tokenizer: tokenizers::Tokenizer = card.tokenizer_json.parse().unwrap();
    tokenizer.encode(format!("{text}What is rule 3?"), false).unwrap().get_ids().to_vec()
}

#[test]
fn logits_are_the_same_bits_however_the_prompt_was_computed() {
    let path = crate::test_models::installed_model(crate::test_models::SMOLLM2_GGUF);
    let (model, card) = load(&path, &Device::Cpu).unwrap();
    let tokens = prompt(&card);
    assert!(tokens.len() > 100, "{} tokens", tokens.len());

    let mut cold_kv = TestKv::new(&model);
    let mut cold = Sequence::default();
    let whole = bits(&cold_kv.feed(&model, &tokens, &mut cold), 0);

    for chunk in [1, 7, 16, 61] {
        let mut kv = TestKv::new(&model);
        let mut sequence = Sequence::default();
        let mut last = None;
        for piece in tokens.chunks(chunk) {
            last = Some(kv.feed(&model, piece, &mut sequence));
        }
        assert!(bits(&last.unwrap(), 0) == whole, "prefilled in chunks of {chunk}");
    }

    // The prefix's keys and values carried to another store (offload and read back, or a KV
    // transfer from a prefill worker), then the rest computed there.
    let prefix = 100;
    let mut source_kv = TestKv::new(&model);
    let mut source = Sequence::default();
    source_kv.feed(&model, &tokens[..prefix], &mut source);
    let blocks = source_kv.read_blocks(&source);
    let mut target_kv = TestKv::new(&model);
    // Skew the block ids so the table differs from the source's.
    target_kv.adopt(&blocks[..3], 12);
    let mut adopted = target_kv.adopt(&blocks, prefix);
    assert!(bits(&target_kv.feed(&model, &tokens[prefix..], &mut adopted), 0) == whole, "a carried prefix");

    // Among other sequences, first, in the middle or last, with their own prompt or decode rows.
    let others: [&[u32]; 3] = [&tokens[..9], &[42], &tokens[30..77]];
    for place in 0..=others.len() {
        let mut kv = TestKv::new(&model);
        let mut mine = Sequence::default();
        let mut theirs: Vec<Sequence> = others.iter().map(|_| Sequence::default()).collect();
        let mut batch: Vec<(&[u32], &mut Sequence)> = others.iter().copied().zip(theirs.iter_mut()).collect();
        batch.insert(place, (&tokens, &mut mine));
        let logits = kv.forward(&model, &mut batch);
        assert!(bits(&logits, place) == whole, "batched at place {place}");
    }
}
