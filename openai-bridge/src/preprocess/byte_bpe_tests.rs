//! The byte-level BPE encoder gives `tokenizers`' ids on any text, for SmolLM2's tokenizer (GPT-2's
//! regex after `Digits`), the same without `Digits` and with `ignore_merges` (Llama 3's way of
//! looking a whole word up first), and the mock engine's; other shapes get no encoder.

use std::sync::OnceLock;

use proptest::prelude::*;
use tritium_backend_api::llm::{ModelCard, ModelKind};

use super::*;

fn smollm2_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let path = tritium_llm::test_models::installed_model(tritium_llm::test_models::SMOLLM2_GGUF);
        tritium_llm::card_from_gguf_file(&path).unwrap().tokenizer_json
    })
}

/// SmolLM2's tokenizer with GPT-2's plain pre-tokenizer and `ignore_merges`.
fn plain_ignoring_merges_json() -> String {
    let mut json: Json = serde_json::from_str(smollm2_json()).unwrap();
    json["pre_tokenizer"] =
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json["model"]["ignore_merges"] = Json::Bool(true);
    json.to_string()
}

/// Every shape the encoder takes: a name, the tokenizer, the encoder, a small word cache of its own
/// (so words are evicted and merged again as the tests go on).
fn encoders() -> &'static [(&'static str, Tokenizer, ByteLevelBpe, WordCache)] {
    static ALL: OnceLock<Vec<(&'static str, Tokenizer, ByteLevelBpe, WordCache)>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mock = tritium_llm::mock::mock_card(4096).tokenizer_json;
        [("smollm2", smollm2_json().to_owned()), ("gpt-2 regex, ignore_merges", plain_ignoring_merges_json()), ("mock", mock)]
            .into_iter()
            .map(|(name, json)| {
                let tokenizer: Tokenizer = json.parse().unwrap();
                let encoder = ByteLevelBpe::new(&tokenizer, &json).unwrap_or_else(|e| panic!("{name}: {e}"));
                (name, tokenizer, encoder, WordCache::new(512).unwrap())
            })
            .collect()
    })
}

fn assert_same_ids(text: &str) {
    for (name, tokenizer, encoder, cache) in encoders() {
        let expected = tokenizer.encode_fast(text, false).unwrap();
        assert_eq!(encoder.encode(text, None), expected.get_ids(), "{name}: {text:?}");
        assert_eq!(encoder.encode(text, Some(cache)), expected.get_ids(), "{name} (word cache): {text:?}");
    }
}

#[test]
fn encodes_as_tokenizers_does() {
    for text in [
        "",
        " ",
        "Hello, world!",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|><|im_end|><|endoftext|><|im_",
        "they'RE here, we'll see; it's 'quoted' and ''s",
        "x = 12345.678 + ٣٤ − ½ × 10²",
        "   leading, trailing   \n\n\n\t\t  \r\n \u{a0}\u{3000} ",
        "kalodor, tervan: pexul. quatblezen fogri",
        "e\u{301}te\u{301} Ελληνικά русский 中文字符 🙂🙃 👩‍👩‍👧",
    ] {
        assert_same_ids(text);
    }
}

#[test]
fn long_words_and_repeats_merge_as_tokenizers_does() {
    // Repeated characters queue the same pair at many places, and stale pairs are skipped.
    for text in ["a".repeat(5000), "ab".repeat(2000), " ".repeat(3000) + "x", "=".repeat(777), "ééé".repeat(400)] {
        assert_same_ids(&text);
    }
}

#[test]
fn other_shapes_get_no_encoder() {
    let minilm = tritium_llm::test_models::installed_model(tritium_llm::test_models::MINILM_DIR);
    let card: ModelCard = tritium_llm::card_from_hf_dir(&minilm, ModelKind::Embed).unwrap();
    let tokenizer: Tokenizer = card.tokenizer_json.parse().unwrap();
    assert!(ByteLevelBpe::new(&tokenizer, &card.tokenizer_json).unwrap_err().contains("normalizes"));

    let mut json: Json = serde_json::from_str(smollm2_json()).unwrap();
    json["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = Json::Bool(true);
    let changed = json.to_string();
    let tokenizer: Tokenizer = changed.parse().unwrap();
    assert!(ByteLevelBpe::new(&tokenizer, &changed).unwrap_err().contains("pre-tokenizer"));

    let mut json: Json = serde_json::from_str(smollm2_json()).unwrap();
    json["model"]["dropout"] = serde_json::json!(0.1);
    let changed = json.to_string();
    let tokenizer: Tokenizer = changed.parse().unwrap();
    assert!(ByteLevelBpe::new(&tokenizer, &changed).unwrap_err().contains("dropout"));
}

#[test]
fn the_word_cache_holds_its_bound() {
    let (_, _, encoder, _) = &encoders()[0];
    let cache = WordCache::new(64).unwrap();
    // 2,000 different words of letters (digits would each be a word of their own).
    let word = |mut i: u32| std::iter::from_fn(|| (i > 0).then(|| (char::from(b'a' + (i % 26) as u8), i /= 26).0)).collect::<String>();
    let text: String = (1..=2000).map(|i| format!(" q{}", word(i))).collect();
    encoder.encode(&text, Some(&cache));
    assert!(cache.len() <= 64 && !cache.is_empty(), "{}", cache.len());
    assert!(WordCache::new(0).is_none());
}

/// Text of every class the pre-tokenizer tells apart, contractions, added tokens whole and cut.
fn text() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        6 => "[a-zA-Z]{1,12}",
        3 => "[ ]{0,2}[a-zA-Z0-9]{1,8}",
        3 => "[ \t\n\r]{1,5}",
        2 => "[!-/:-@\\[-`{-~]{1,4}",
        2 => prop::sample::select(vec!["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'Re", "'x", "''"]).prop_map(String::from),
        1 => "[0-9٣½²Ⅻ]{1,6}",
        1 => "[éüßΩЖ中文字\u{301}\u{a0}\u{3000}\u{85}🙂👩\u{200d}]{1,6}",
        1 => prop::sample::select(vec!["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_", "|>", "<repo_name>"]).prop_map(String::from),
    ];
    prop::collection::vec(fragment, 0..40).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ids_equal_tokenizers_ids_on_any_text(text in text()) {
        for (name, tokenizer, encoder, cache) in encoders() {
            let expected = tokenizer.encode_fast(text.as_str(), false).unwrap();
            prop_assert_eq!(encoder.encode(&text, None), expected.get_ids(), "{}: {:?}", name, text);
            prop_assert_eq!(encoder.encode(&text, Some(cache)), expected.get_ids(), "{} (word cache): {:?}", name, text);
        }
    }

    #[test]
    fn ids_equal_tokenizers_ids_on_any_unicode(text in "\\PC{0,64}") {
        assert_same_ids(&text);
    }
}

/// How long each encoder takes on an agent's tool result (`bench/agent_frontend.py`'s words), in
/// a release build: `cargo test --release -p tritium-openai-bridge --lib encoding_speed -- --ignored
/// --nocapture`. Prints, asserts nothing.
#[test]
#[ignore = "a measurement, not a test"]
fn encoding_speed() {
    let words = crate::preprocess::tests::made_up_words(58, 1000);
    let text = format!("<|im_start|>user\nTool result:\n{words}<|im_end|>\n<|im_start|>assistant\n");
    for (name, tokenizer, encoder, _) in encoders() {
        let n = tokenizer.encode_fast(text.as_str(), false).unwrap().get_ids().len();
        let t = std::time::Instant::now();
        for _ in 0..50 {
            std::hint::black_box(tokenizer.encode_fast(text.as_str(), false).unwrap());
        }
        let hf = t.elapsed() / 50;
        let t = std::time::Instant::now();
        for _ in 0..50 {
            std::hint::black_box(encoder.encode(&text, None));
        }
        let ours = t.elapsed() / 50;
        let cache = WordCache::new(DEFAULT_WORD_CACHE_ENTRIES).unwrap();
        encoder.encode(&text, Some(&cache));
        let t = std::time::Instant::now();
        for _ in 0..50 {
            std::hint::black_box(encoder.encode(&text, Some(&cache)));
        }
        let cached = t.elapsed() / 50;
        eprintln!("{name}: {n} tokens, tokenizers {hf:?}, byte-level BPE {ours:?}, with its word cache warm {cached:?}");
    }
}
