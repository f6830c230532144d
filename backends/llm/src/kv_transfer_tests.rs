//! Blocks computed by one engine and used by another (disaggregated prefill and decode), with the
//! real SmolLM2: the decode engine's tokens and logits are those it computes alone.

#![allow(clippy::unwrap_used)]

use super::engine_cache_tests::{SYSTEM, assert_same_logits, engine, request, run};
use super::engine_state::EngineOptions;
use tritium_backend_api::llm::LanguageModel;
use tritium_backend_api::llm::{ExportedBlock, ImportedBlocks, KvExport};

async fn collect(mut export: KvExport) -> Vec<ExportedBlock> {
    let mut blocks = Vec::new();
    while let Some(block) = export.next().await {
        blocks.push(block.unwrap());
    }
    blocks
}

fn prompt_tokens_computed(engine: &impl LanguageModel) -> u64 {
    engine.stats().prompt_tokens
}

#[tokio::test]
async fn a_prompt_prefilled_elsewhere_decodes_as_if_computed_here() {
    let (prefill, tokenizer) = engine(EngineOptions::default());
    let (decode, _) = engine(EngineOptions::default());
    let (alone, _) = engine(EngineOptions::default());
    let question = request(&tokenizer, &format!("{SYSTEM}Question: when does the library close on Saturday? Answer:"), 12);
    let prompt_len = question.prompt.len();
    let full = (prompt_len - 1) / 16;
    assert!(full >= 4, "a prompt of several blocks: {prompt_len} tokens");

    let export = prefill.export_prefix(question.prompt.clone(), 0).unwrap();
    assert_eq!(export.range(), 0..full);
    assert_eq!(export.layout(), &decode.kv_layout().unwrap());
    let blocks = collect(export).await;
    assert_eq!(blocks.iter().map(|b| b.index).collect::<Vec<_>>(), (0..full).collect::<Vec<_>>());
    assert!(blocks.iter().all(|b| b.data.len() == decode.kv_layout().unwrap().block_values()));

    let imported = ImportedBlocks { first: 0, blocks: blocks.into_iter().map(|b| b.data).collect() };
    let (tokens, cached, _) = run(decode.generate_with_prefix(question.clone(), imported).unwrap()).await;
    let (reference, _, _) = run(alone.generate(question.clone()).unwrap()).await;
    assert_same_logits(&tokens, &reference);
    assert_eq!(cached, 0, "blocks from another engine are not this engine's cache hits");
    assert_eq!(prompt_tokens_computed(&decode) as usize, prompt_len - full * 16, "only the last block was computed here");

    // The imported blocks joined the decode engine's prefix cache.
    let (_, cached_again, _) = run(decode.generate(question).unwrap()).await;
    assert_eq!(cached_again as usize, full * 16);
}

#[tokio::test]
async fn a_partial_or_damaged_transfer_is_completed_here_with_the_same_output() {
    let (prefill, tokenizer) = engine(EngineOptions::default());
    let (alone, _) = engine(EngineOptions::default());
    let question = request(&tokenizer, &format!("{SYSTEM}Question: may I renew a book twice? Answer:"), 8);
    let prompt_len = question.prompt.len();
    let (reference, _, _) = run(alone.generate(question.clone()).unwrap()).await;

    // Only blocks 1 and 2 asked for (the decode engine holds block 0 already, say).
    let export = prefill.export_prefix(question.prompt.clone(), 1).unwrap();
    let blocks = collect(export).await;
    assert_eq!(blocks.first().map(|b| b.index), Some(1));

    // Blocks from 1 while this engine lacks block 0: a gap, so nothing is used.
    let (decode, _) = engine(EngineOptions::default());
    let gap = ImportedBlocks { first: 1, blocks: blocks.iter().map(|b| b.data.clone()).collect() };
    let (tokens, _, _) = run(decode.generate_with_prefix(question.clone(), gap).unwrap()).await;
    assert_same_logits(&tokens, &reference);
    assert_eq!(prompt_tokens_computed(&decode) as usize, prompt_len);

    // The first two blocks, the second one cut short: the first is used, the rest computed.
    let (decode, _) = engine(EngineOptions::default());
    let whole = collect(prefill.export_prefix(question.prompt.clone(), 0).unwrap()).await;
    let mut damaged: Vec<Vec<f32>> = whole.into_iter().take(2).map(|b| b.data).collect();
    damaged[1].truncate(10);
    let imported = ImportedBlocks { first: 0, blocks: damaged };
    let (tokens, _, _) = run(decode.generate_with_prefix(question, imported).unwrap()).await;
    assert_same_logits(&tokens, &reference);
    assert_eq!(prompt_tokens_computed(&decode) as usize, prompt_len - 16);
}

#[tokio::test]
async fn an_export_of_nothing_ends_at_once_and_a_dropped_export_frees_its_blocks() {
    let (prefill, tokenizer) = engine(EngineOptions::default());
    let short = request(&tokenizer, "The capital of France is", 4);
    let export = prefill.export_prefix(short.prompt.clone(), 0).unwrap();
    assert!(export.range().is_empty(), "a prompt shorter than two blocks has none to send");
    assert!(collect(export).await.is_empty());

    let long = request(&tokenizer, &format!("{SYSTEM}{SYSTEM}"), 4);
    let mut export = prefill.export_prefix(long.prompt.clone(), 0).unwrap();
    export.next().await.unwrap().unwrap();
    drop(export);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while prefill.stats().running > 0 || prefill.stats().kv_tokens_used > 0 {
        assert!(std::time::Instant::now() < deadline, "still running: {:?}", prefill.stats());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[test]
fn layouts_that_differ_say_how() {
    let ours = tritium_backend_api::llm::TransferLayout {
        model: "smollm2".into(),
        block_size: 16,
        dtype: "f32".into(),
        layers: 30,
        kv_heads: 3,
        head_dim: 64,
    };
    assert_eq!(ours.mismatch(&ours.clone()), None);
    let theirs = tritium_backend_api::llm::TransferLayout { block_size: 32, model: "other".into(), ..ours.clone() };
    assert_eq!(
        ours.mismatch(&theirs).unwrap(),
        "model \"other\" where this engine has \"smollm2\", block size \"32\" where this engine has \"16\""
    );
    assert_eq!(ours.block_values(), 2 * 30 * 3 * 16 * 64);
}
