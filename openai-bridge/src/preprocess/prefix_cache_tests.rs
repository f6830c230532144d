//! The tokenizer prefix cache gives the ids tokenizing from scratch gives, for every tokenizer the
//! project ships (SmolLM2's byte-level BPE through Tritium's encoder and `fastokens`, the mock engine's,
//! the MiniLM WordPiece embedder's) and the SentencePiece shapes a GGUF `llama` tokenizer or a Hugging
//! Face folder brings (a `Prepend` normalizer, a `Metaspace` pre-tokenizer prepending to the first
//! piece only), over random conversations rendered turn by turn, so the later turns hit.

use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::json;

use super::*;

/// SmolLM2's card: `scripts/fetch-models.sh` installs the model.
fn smollm2_card() -> Arc<ModelCard> {
    static CARD: OnceLock<Arc<ModelCard>> = OnceLock::new();
    let card = CARD.get_or_init(|| {
        let path = tritium_llm::test_models::installed_model(tritium_llm::test_models::SMOLLM2_GGUF);
        Arc::new(tritium_llm::card_from_gguf_file(&path).unwrap())
    });
    Arc::clone(card)
}

fn minilm_card() -> Arc<ModelCard> {
    let path = tritium_llm::test_models::installed_model(tritium_llm::test_models::MINILM_DIR);
    Arc::new(tritium_llm::card_from_hf_dir(&path, ModelKind::Embed).unwrap())
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                      {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A SentencePiece-style tokenizer with byte fallback: `▁`, letters and a few merges, the chat
/// markers as special tokens. `metaspace_first`: a `Metaspace` pre-tokenizer that prepends `▁` to
/// the text's first piece only; else Llama 2's `Prepend` + `Replace` normalizer.
fn sentencepiece_card(metaspace_first: bool) -> Arc<ModelCard> {
    let mut vocab = serde_json::Map::new();
    for (id, piece) in ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"].into_iter().enumerate() {
        vocab.insert(piece.into(), json!(id));
    }
    for byte in 0..=255u8 {
        vocab.insert(format!("<0x{byte:02X}>"), json!(vocab.len()));
    }
    let letters = "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?";
    for c in letters.chars() {
        vocab.insert(c.to_string(), json!(vocab.len()));
    }
    let merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("i", "n"), ("e", "r"), ("▁", "s")];
    for (a, b) in merges {
        vocab.insert(format!("{a}{b}"), json!(vocab.len()));
    }
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let (normalizer, pre_tokenizer) = match metaspace_first {
        true => (json!(null), json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false})),
        false => (
            json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}),
            json!(null),
        ),
    };
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>"), special(3, "<|im_start|>"),
                         special(4, "<|im_end|>")],
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": null,
        "decoder": {"type": "ByteFallback"},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()},
    });
    let mut card = tritium_llm::mock::mock_card(4096);
    card.tokenizer_json = tokenizer.to_string();
    card.chat_template = Some(CHATML.into());
    Arc::new(card)
}

/// The card with ChatML when it has no template of its own.
fn with_chatml(card: Arc<ModelCard>) -> Arc<ModelCard> {
    match card.chat_template {
        Some(_) => card,
        None => Arc::new(ModelCard { chat_template: Some(CHATML.into()), ..(*card).clone() }),
    }
}

/// Every shipped tokenizer: a name, a preprocessor without the cache, one with it.
fn tokenizers() -> &'static [(&'static str, Preprocessor, Preprocessor)] {
    static ALL: OnceLock<Vec<(&'static str, Preprocessor, Preprocessor)>> = OnceLock::new();
    ALL.get_or_init(|| {
        let cards: [(&str, Arc<ModelCard>, bool); 6] = [
            ("smollm2", smollm2_card(), false),
            ("smollm2 (fastokens)", smollm2_card(), true),
            ("mock", Arc::new(tritium_llm::mock::mock_card(4096)), false),
            ("minilm", with_chatml(minilm_card()), false),
            ("sentencepiece (Prepend)", sentencepiece_card(false), false),
            ("sentencepiece (Metaspace first)", sentencepiece_card(true), false),
        ];
        cards
            .into_iter()
            .map(|(name, card, fast)| {
                let build = || {
                    let pre = Preprocessor::new(Arc::clone(&card)).unwrap();
                    if fast { pre.with_fast_tokenizer(false).unwrap() } else { pre }
                };
                let cached = build().with_prefix_cache(PrefixCacheLimits::default(), PrefixCacheCounters::default());
                assert!(cached.prefix_cache().is_some(), "{name} gets a cache");
                // The reference: Hugging Face's tokenizers, whichever encoder the cached one uses.
                (name, build().with_tokenizers_encoder(), cached)
            })
            .collect()
    })
}

/// Message text: words, spaces, newlines, accents, CJK, emoji, and now and then a chat marker or
/// another special token written by the client.
fn content() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        6 => "[a-zA-Z0-9 .,!?'\"-]{1,40}",
        2 => "[ \t\n]{1,4}",
        1 => "[éüß中文🙂]{1,6}",
        1 => prop::sample::select(vec!["<|im_start|>", "<|im_end|>", "<s>", "</s>", "[SEP]", "[CLS]", "<|endoftext|>"])
            .prop_map(String::from),
    ];
    prop::collection::vec(fragment, 0..24).prop_map(|parts| parts.concat())
}

fn conversation() -> impl Strategy<Value = Vec<serde_json::Value>> {
    let role = prop::sample::select(vec!["system", "user", "assistant", "tool"]);
    prop::collection::vec((role, content()), 1..8)
        .prop_map(|messages| messages.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn cached_ids_are_the_ids_of_tokenizing_from_scratch(system in content(), conversations in prop::collection::vec(conversation(), 1..4)) {
        for (name, plain, cached) in tokenizers() {
            for turns in &conversations {
                let mut messages = vec![json!({"role": "system", "content": system.repeat(3)})];
                for message in turns {
                    messages.push(message.clone());
                    let text = plain.render_chat(&messages, true, None).unwrap();
                    let expected = plain.encode(&text, false).unwrap();
                    prop_assert_eq!(cached.encode(&text, false).unwrap(), expected, "{} on {:?}", name, text);
                    // With special tokens (a completion's prompt): cached where the post-processor adds none.
                    prop_assert_eq!(cached.encode(&text, true).unwrap(), plain.encode(&text, true).unwrap(), "{} on {:?}", name, text);
                }
            }
        }
    }
}

#[test]
fn a_shared_system_prompt_is_tokenized_once_and_a_conversation_turn_by_turn() {
    let counters = PrefixCacheCounters::default();
    let pre = Preprocessor::new(smollm2_card()).unwrap().with_prefix_cache(PrefixCacheLimits::default(), counters.clone());
    let system = json!({"role": "system", "content": "You are a careful assistant who answers briefly. ".repeat(40)});
    let first = [system.clone(), json!({"role": "user", "content": "What is the capital of France?"})];
    let text = pre.render_chat(&first, true, None).unwrap();
    let ids = pre.encode(&text, false).unwrap();
    assert_eq!((counters.hits.get(), counters.misses.get()), (0, 1));

    // Another conversation with the same system prompt: its ids come from the cache.
    let second = [system.clone(), json!({"role": "user", "content": "And of Italy?"})];
    let text = pre.render_chat(&second, true, None).unwrap();
    assert_eq!(pre.encode(&text, false).unwrap(), pre.tokenize_uncached(&text, false).unwrap());
    assert_eq!(counters.hits.get(), 1);
    let system_tokens = counters.cached_tokens.get();
    assert!(system_tokens >= 300, "{system_tokens}");

    // The first conversation's next turn: everything up to its last turn is reused.
    let mut next = first.to_vec();
    next.push(json!({"role": "assistant", "content": "Paris."}));
    next.push(json!({"role": "user", "content": "Thanks! And what is its population, roughly, in the city proper?"}));
    let text = pre.render_chat(&next, true, None).unwrap();
    let before = counters.cached_tokens.get();
    assert_eq!(pre.encode(&text, false).unwrap(), pre.tokenize_uncached(&text, false).unwrap());
    let reused = counters.cached_tokens.get() - before;
    // All of the first request but its generation prompt (`<|im_start|>assistant\n`).
    assert!(reused as usize >= ids.len() - 4, "reused {reused} of {}", ids.len());
    assert!(counters.bytes.get() > 0 && counters.entries.get() >= 2);
}

#[test]
fn the_cache_holds_to_its_bytes_and_its_entries_and_a_broken_chain_is_not_reused() {
    let limits = PrefixCacheLimits { bytes: 16 << 10, entries: 8, extend: true };
    let pre = Preprocessor::new(smollm2_card()).unwrap().with_prefix_cache(limits, PrefixCacheCounters::default());
    let cache = pre.prefix_cache().unwrap();
    for n in 0..200 {
        let messages: Vec<_> = (0..6)
            .map(|turn| json!({"role": "user", "content": format!("conversation {n} turn {turn}: {}", "words ".repeat(20))}))
            .collect();
        let text = pre.render_chat(&messages, true, None).unwrap();
        assert_eq!(pre.encode(&text, false).unwrap(), pre.tokenize_uncached(&text, false).unwrap());
        assert!(cache.bytes() <= limits.bytes, "{} bytes", cache.bytes());
        assert!(cache.entries() as u64 <= limits.entries, "{} entries", cache.entries());
    }
}

#[test]
fn add_special_tokens_and_tokenizers_that_cannot_be_split_bypass_the_cache() {
    let counters = PrefixCacheCounters::default();
    let pre = Preprocessor::new(minilm_card()).unwrap().with_prefix_cache(PrefixCacheLimits::default(), counters.clone());
    let text = format!("{}[SEP]{}", "first sentence ".repeat(10), "second one ".repeat(10));
    // BERT's post-processor wraps the whole text once: not cached, and the same ids as before.
    assert_eq!(pre.encode(&text, true).unwrap(), pre.tokenize_uncached(&text, true).unwrap());
    assert_eq!(counters.hits.get() + counters.misses.get(), 0);

    let mut json: serde_json::Value = serde_json::from_str(&smollm2_card().tokenizer_json).unwrap();
    json["truncation"] = json!({"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0});
    let card = ModelCard { tokenizer_json: json.to_string(), ..(*smollm2_card()).clone() };
    let pre = Preprocessor::new(Arc::new(card)).unwrap().with_prefix_cache(PrefixCacheLimits::default(), counters);
    assert!(pre.prefix_cache().is_none());
    let off = Preprocessor::new(smollm2_card())
        .unwrap()
        .with_prefix_cache(PrefixCacheLimits { bytes: 0, entries: 1, extend: true }, Default::default());
    assert!(off.prefix_cache().is_none());
}

#[test]
fn without_extending_a_prompt_that_reused_a_prefix_caches_nothing_more() {
    let limits = PrefixCacheLimits { extend: false, ..PrefixCacheLimits::default() };
    let pre = Preprocessor::new(smollm2_card()).unwrap().with_prefix_cache(limits, PrefixCacheCounters::default());
    let cache = pre.prefix_cache().unwrap();
    let system = json!({"role": "system", "content": "Answer in French, briefly and politely. ".repeat(20)});
    let turns = |n: usize| -> Vec<serde_json::Value> {
        std::iter::once(system.clone())
            .chain((0..n).map(|i| json!({"role": "user", "content": format!("question number {i}: {}", "why? ".repeat(20))})))
            .collect()
    };
    let first = pre.render_chat(&turns(1), true, None).unwrap();
    assert_eq!(pre.encode(&first, false).unwrap(), pre.tokenize_uncached(&first, false).unwrap());
    let entries = cache.entries();
    assert!(entries >= 1);
    let longer = pre.render_chat(&turns(4), true, None).unwrap();
    assert_eq!(pre.encode(&longer, false).unwrap(), pre.tokenize_uncached(&longer, false).unwrap());
    assert_eq!(cache.entries(), entries, "a partial hit added pieces");
}

#[tokio::test]
async fn the_budget_is_charged_for_what_is_left_to_tokenize() {
    let system = json!({"role": "system", "content": "You review pull requests for a large codebase. ".repeat(400)});
    let pre = Preprocessor::new(smollm2_card())
        .unwrap()
        .with_prefix_cache(PrefixCacheLimits::default(), PrefixCacheCounters::default());
    let first = pre.render_chat(&[system.clone(), json!({"role": "user", "content": "Review #1"})], true, None).unwrap();
    // Room for the system prompt once, not twice at once.
    let budget = PreprocessBudget::new(PreprocessLimits {
        max_bytes: (first.len() + 1024) * TOKENIZE_BYTES_PER_INPUT_BYTE,
        max_concurrent: 4,
    });
    let pre = Arc::new(pre.with_budget(Arc::new(budget)));
    let ids = pre.encode_off_runtime(first.clone(), false).await.unwrap();
    assert_eq!(ids, pre.tokenize_uncached(&first, false).unwrap());
    // Holding most of the budget elsewhere, a prompt that shares the prefix still goes: only its
    // last turn is charged.
    let _held = pre.budget().admit("prompt", first.len() - 4096, TOKENIZE_BYTES_PER_INPUT_BYTE).await.unwrap();
    let second = pre.render_chat(&[system, json!({"role": "user", "content": "Review #2"})], true, None).unwrap();
    let ids = tokio::time::timeout(std::time::Duration::from_secs(10), pre.encode_off_runtime(second.clone(), false)).await;
    assert_eq!(ids.expect("admitted at once").unwrap(), pre.tokenize_uncached(&second, false).unwrap());
}

#[test]
fn completion_prompts_with_special_tokens_use_the_cache_when_the_post_processor_adds_none() {
    let counters = PrefixCacheCounters::default();
    let pre = Preprocessor::new(smollm2_card()).unwrap().with_prefix_cache(PrefixCacheLimits::default(), counters.clone());
    assert!(pre.post_processor_adds_nothing);
    let shared = format!("<|im_start|>system\n{}<|im_end|>\n", "Few-shot examples follow. ".repeat(50));
    for question in ["Q: 2+2?", "Q: 3+3?"] {
        let text = format!("{shared}<|im_start|>user\n{question}<|im_end|>\n");
        assert_eq!(pre.encode(&text, true).unwrap(), pre.tokenize_uncached(&text, true).unwrap());
    }
    assert_eq!((counters.misses.get(), counters.hits.get()), (1, 1));
    // BERT's post-processor wraps the text: not cached (see the test above).
    assert!(!Preprocessor::new(minilm_card()).unwrap().post_processor_adds_nothing);
}
