//! The preprocessor's tests, on the real SmolLM2 tokenizer and template.

use std::sync::OnceLock;

use serde_json::json;

use super::*;

/// The SmolLM2 preprocessor, built once: its model comes from `scripts/fetch-models.sh`.
fn smollm2() -> &'static Preprocessor {
    static PRE: OnceLock<Preprocessor> = OnceLock::new();
    PRE.get_or_init(|| {
        let path = tritium_llm::test_models::installed_model(tritium_llm::test_models::SMOLLM2_GGUF);
        Preprocessor::new(Arc::new(tritium_llm::card_from_gguf_file(&path).unwrap())).unwrap()
    })
}

fn with_template(template: &str) -> Preprocessor {
    let mut card = (**smollm2().card()).clone();
    card.chat_template = Some(template.to_owned());
    Preprocessor::new(Arc::new(card)).unwrap()
}

#[test]
fn a_prompt_too_long_for_any_context_is_refused_before_tokenizing() {
    let pre = smollm2();
    let limit = pre.max_prompt_bytes.expect("a generating model has a bound");
    assert!(limit >= pre.card.context_length, "{limit}");
    let error = pre.encode(&"a".repeat(limit + 1), true).expect_err("too long");
    assert!(error.to_string().starts_with("prompt: the prompt is"), "{error}");
    // Within the bound the tokenizer runs (and the engine checks the real token count).
    assert!(pre.encode("Hello", true).is_ok());
}

#[tokio::test]
async fn count_tokens_counts_what_the_context_cannot_hold_and_the_budget_bounds_both() {
    let card = ModelCard { context_length: 16, ..(**smollm2().card()).clone() };
    let pre = Arc::new(Preprocessor::new(Arc::new(card)).unwrap());
    let limit = pre.max_prompt_bytes.expect("a generating model has a bound");
    let text = "1".repeat((limit + 1).max(INLINE_BYTES + 1));
    // Past the inline size: tokenized on the blocking pool, within the budget.
    let error = pre.encode_off_runtime(text.clone(), false).await.unwrap_err();
    assert!(error.to_string().starts_with("prompt: the prompt is"), "{error}");
    assert_eq!(pre.count_tokens(text.clone(), false).await.unwrap(), text.len());
    assert_eq!(pre.budget().available_bytes(), DEFAULT_MAX_TOKENIZING_BYTES);

    // A budget too small for the text refuses it before tokenizing; a short text still goes.
    let small =
        PreprocessBudget::new(PreprocessLimits { max_bytes: text.len() * TOKENIZE_BYTES_PER_INPUT_BYTE - 1, max_concurrent: 1 });
    let pre = Arc::new(Preprocessor::new(Arc::clone(smollm2().card())).unwrap().with_budget(Arc::new(small)));
    let error = pre.count_tokens(text, false).await.unwrap_err();
    assert!(matches!(&error, BridgeError::TooLarge(message) if message.starts_with("the prompt is")), "{error}");
    assert_eq!(pre.encode_off_runtime("Hello".into(), false).await.unwrap(), vec![19556]);
    let messages = [json!({"role": "user", "content": "2".repeat(INLINE_BYTES * 128)})];
    let error = pre.render_chat_bounded(&messages, true, None).await.unwrap_err();
    assert!(matches!(&error, BridgeError::TooLarge(message) if message.starts_with("the chat is")), "{error}");
}

#[test]
fn renders_the_smollm2_chatml_template() {
    let pre = smollm2();
    let messages = [
        json!({"role": "system", "content": "Be brief."}),
        json!({"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}),
    ];
    let prompt = pre.render_chat(&messages, true, None).unwrap();
    assert_eq!(prompt, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi\nthere<|im_end|>\n<|im_start|>assistant\n");
    // The template is compiled with its `+` chains split (template/concat.rs).
    let compiled = pre.env.get_template(TEMPLATE).unwrap();
    assert!(compiled.source().contains("message['content'] if message['content'] is string else"), "{}", compiled.source());
    // Without a system message the template adds its own.
    let prompt = pre.render_chat(&messages[1..], false, None).unwrap();
    assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{prompt}");
    assert!(prompt.ends_with("<|im_end|>\n"), "{prompt}");

    let ids = pre.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!((ids[0], ids[ids.len() - 1]), (1, 2));
}

#[test]
fn a_template_without_tool_calls_sees_an_earlier_call_as_text() {
    let call =
        json!({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}});
    let messages = [
        json!({"role": "user", "content": "Weather in Paris?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [call]}),
        json!({"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}),
    ];
    let pre = smollm2();
    let prompt = pre.render_chat(&messages, true, None).expect("a null content with calls renders");
    let turn = "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call><|im_end|>";
    assert!(prompt.contains(turn), "{prompt}");
    assert!(prompt.contains("<|im_start|>tool\nSunny<|im_end|>"), "{prompt}");

    // In the configured format; text the assistant wrote stays in front of its calls.
    let mistral = OutputFormats { tool_calls: Some(ToolCallFormat::Mistral), reasoning: None };
    let pre = Preprocessor::new(Arc::clone(smollm2().card())).expect("preprocessor").with_output_formats(mistral);
    let mut messages = messages;
    messages[1]["content"] = json!("Let me look.");
    let prompt = pre.render_chat(&messages, true, None).expect("renders");
    let turn = "<|im_start|>assistant\nLet me look.\n[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}]<|im_end|>";
    assert!(prompt.contains(turn), "{prompt}");
}

#[test]
fn rejects_non_text_parts_and_models_without_templates() {
    let pre = smollm2();
    let messages = [json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]})];
    let err = pre.render_chat(&messages, true, None).unwrap_err();
    assert!(
        matches!(&err, BridgeError::InvalidField { field, reason } if field == "messages[0].content" && reason.contains("image_url")),
        "{err:?}"
    );
    assert!(matches!(pre.render_chat(&[json!("hi")], true, None), Err(BridgeError::InvalidField { .. })));

    let mut card = (**pre.card()).clone();
    card.chat_template = None;
    let err = Preprocessor::new(Arc::new(card)).unwrap().render_chat(&[], true, None).unwrap_err();
    assert!(matches!(&err, BridgeError::Unsupported { what, .. } if what == "chat (it has no chat template)"), "{err:?}");
}

#[test]
fn templates_get_python_methods_raise_exception_extras_and_tojson() {
    let pre = with_template(
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with the user') }}{% endif %}\
         {% for m in messages %}[{{ m.content.strip().upper() }}]{% endfor %}\
         {% if tools %}{{ tools | tojson }}{% endif %}{{ bos_token }}|{{ eos_token }}",
    );
    let messages = [json!({"role": "user", "content": "  hi <b> \n"})];
    let extra: Map<String, Json> =
        [("tools".to_string(), json!([{"description": "a < b & c'd é", "name": "f"}]))].into_iter().collect();
    let out = pre.render_chat(&messages, true, Some(&extra)).unwrap();
    assert_eq!(out, r#"[HI <B>][{"description": "a < b & c'd é", "name": "f"}]<|im_start|>|<|im_end|>"#);

    let err = pre.render_chat(&[json!({"role": "assistant", "content": "x"})], true, None).unwrap_err();
    assert_eq!(err, BridgeError::Template("Conversation must start with the user".into()));

    let sorted = [json!({"content": "  hi <b> \n", "role": "user"})];
    let indented = with_template("{{ messages[0] | tojson(indent=2) }}").render_chat(&sorted, true, None).unwrap();
    assert_eq!(indented, "{\n  \"content\": \"  hi <b> \\n\",\n  \"role\": \"user\"\n}");
    let err =
        Preprocessor::new(Arc::new(ModelCard { chat_template: Some("{% if %}".into()), ..(**pre.card()).clone() })).unwrap_err();
    assert!(matches!(err, BridgeError::Template(_)), "{err:?}");
}

#[test]
fn trims_blocks_like_hugging_face() {
    let pre = with_template("{% for m in messages %}\n  {% if true %}\n{{ m.role }}\n  {% endif %}\n{% endfor %}");
    let out = pre.render_chat(&[json!({"role": "user", "content": ""}), json!({"role": "a", "content": ""})], true, None);
    assert_eq!(out.unwrap(), "user\na\n");
}

#[test]
fn encodes_with_bos_only_when_the_card_says_so() {
    let pre = smollm2();
    assert_eq!(pre.encode("Hello world! 12345", true).unwrap(), vec![19556, 905, 17, 216, 33, 34, 35, 36, 37]);
    let mut card = (**pre.card()).clone();
    card.add_bos_token = true;
    let with_bos = Preprocessor::new(Arc::new(card)).unwrap();
    assert_eq!(with_bos.encode("Hello", true).unwrap(), vec![1, 19556]);
    assert_eq!(with_bos.encode("<|im_start|>Hello", true).unwrap(), vec![1, 19556]);
    assert_eq!(with_bos.encode("Hello", false).unwrap(), vec![19556]);
}

#[test]
fn token_bytes_undo_the_byte_level_alphabet() {
    let pre = smollm2();
    assert!(pre.vocabulary.is_byte_level());
    let ids = pre.encode(" world é🙂", false).unwrap();
    let bytes: Vec<u8> = ids.iter().flat_map(|&id| pre.token_bytes(id)).collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), " world é🙂");
    assert_eq!(pre.token_text(905), " world");
    assert_eq!(pre.token_text(2), "<|im_end|>");
    assert_eq!(pre.decode(&[19556, 2, 905]).unwrap(), "Hello world");
    assert!(pre.token_bytes(u32::MAX).is_empty());
    // A lone byte of a multi-byte character shows as U+FFFD.
    let partial = ids.iter().find(|&&id| std::str::from_utf8(&pre.token_bytes(id)).is_err());
    assert!(partial.is_some_and(|&id| pre.token_text(id).contains('\u{FFFD}')));
}

/// A toy SentencePiece tokenizer as Hugging Face writes Llama 2's: `▁` for spaces, byte
/// fallback, and a decoder that drops the string's first space.
fn sentencepiece() -> Preprocessor {
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        ],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        ]},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": {"<unk>": 0, "<s>": 1, "<0xC3>": 2, "<0xA9>": 3, "\u{2581}": 4, "h": 5, "i": 6,
                      "\u{2581}h": 7, "\u{2581}hi": 8, "a": 9},
            "merges": [["\u{2581}", "h"], ["\u{2581}h", "i"]]},
    });
    let card = ModelCard {
        tokenizer_json: tokenizer.to_string(),
        chat_template: None,
        bos_token: Some("<s>".into()),
        eos_token: None,
        eos_token_ids: Vec::new(),
        add_bos_token: true,
        ..(**smollm2().card()).clone()
    };
    Preprocessor::new(Arc::new(card)).unwrap()
}

#[test]
fn sentencepiece_tokens_and_continuations() {
    let pre = sentencepiece();
    assert!(!pre.vocabulary.is_byte_level());
    let ids = pre.encode("hi hi é", true).unwrap();
    assert_eq!(ids, vec![1, 8, 8, 4, 2, 3]);
    assert_eq!(pre.decode(&ids).unwrap(), "hi hi é");
    assert_eq!(pre.token_text(8), " hi");
    assert_eq!(pre.token_bytes(2), vec![0xC3]);
    assert_eq!(pre.token_text(2), "\u{FFFD}");
    // Generated text continues a prompt, so its first token keeps its space.
    let mut detok = pre.detokenizer();
    let pieces: Vec<String> = ids[1..].iter().map(|&id| detok.push(id)).collect();
    assert_eq!(pieces, [" hi", " hi", " ", "", "é"]);
    assert_eq!(detok.finish(), "");
}

/// SmolLM2's preprocessor encoding with fastokens.
fn smollm2_fastokens() -> &'static Preprocessor {
    static PRE: OnceLock<Preprocessor> = OnceLock::new();
    PRE.get_or_init(|| Preprocessor::new(Arc::clone(smollm2().card())).unwrap().with_fast_tokenizer(false).unwrap())
}

#[test]
fn the_word_cache_keeps_what_its_bound_allows_and_none_when_off() {
    let text = "kalodor, tervan: pexul. quatblezen fogri dorvan ulri sonquat";
    let build = || Preprocessor::new(Arc::clone(smollm2().card())).unwrap();
    let (plain, off, small) = (build(), build().with_word_cache_entries(0), build().with_word_cache_entries(3));
    let expected = smollm2_tokenizers().encode(text, false).unwrap();
    for pre in [&plain, &off, &small] {
        assert_eq!(pre.encode(text, false).unwrap(), expected);
    }
    assert!(plain.cached_words() > 3, "{}", plain.cached_words());
    assert_eq!(off.cached_words(), 0);
    assert!((1..=3).contains(&small.cached_words()), "{}", small.cached_words());
}

/// SmolLM2's preprocessor encoding with `tokenizers` alone: the reference.
fn smollm2_tokenizers() -> &'static Preprocessor {
    static PRE: OnceLock<Preprocessor> = OnceLock::new();
    PRE.get_or_init(|| Preprocessor::new(Arc::clone(smollm2().card())).unwrap().with_tokenizers_encoder())
}

#[test]
fn fastokens_and_byte_level_bpe_encode_as_tokenizers_does() {
    let fast = smollm2_fastokens();
    assert!(fast.encodes_with_fastokens() && !smollm2().encodes_with_fastokens());
    assert!(smollm2().encodes_with_byte_level_bpe() && !fast.encodes_with_byte_level_bpe());
    let reference = smollm2_tokenizers();
    assert!(!reference.encodes_with_byte_level_bpe() && !reference.encodes_with_fastokens());
    let texts = [
        "",
        "Hello, world!",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n1234567890 + 0.5e-3?<|im_end|>\n",
        "   leading and trailing spaces   \n\n\t tabs",
        "naïve café – “quotes” 日本語 😀 🇫🇷 ﬁ",
        "def f(x):\n    return x ** 2  # comment\n",
        "a.a.a.a.a.a 1 22 333 4444 55555",
    ];
    for text in texts {
        for special in [false, true] {
            let expected = reference.encode(text, special).unwrap();
            assert_eq!(fast.encode(text, special).unwrap(), expected, "fastokens: {text:?} {special}");
            assert_eq!(smollm2().encode(text, special).unwrap(), expected, "byte-level BPE: {text:?} {special}");
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    #[test]
    fn fastokens_and_byte_level_bpe_ids_equal_tokenizers_ids_on_any_text(
        pieces in proptest::collection::vec(
            proptest::prop_oneof![
                "[ -~]{0,12}",
                "[0-9 .,]{1,8}",
                "[\\n\\t ]{1,3}",
                "\\PC{0,4}",
                proptest::strategy::Just("<|im_start|>".to_string()),
                proptest::strategy::Just("<|endoftext|>".to_string()),
            ],
            0..12,
        ),
        special in proptest::bool::ANY,
    ) {
        let text = pieces.concat();
        let expected = smollm2_tokenizers().encode(&text, special).unwrap();
        proptest::prop_assert_eq!(&smollm2_fastokens().encode(&text, special).unwrap(), &expected, "fastokens: {:?}", text);
        proptest::prop_assert_eq!(&smollm2().encode(&text, special).unwrap(), &expected, "byte-level BPE: {:?}", text);
    }
}

// The detokenizer a preprocessor makes (`detokenize.rs`), streaming SmolLM2's byte-level tokens.

fn stream(detok: &mut Detokenizer, ids: &[u32]) -> (String, Vec<String>) {
    let mut pieces: Vec<String> = ids.iter().map(|&id| detok.push(id)).collect();
    pieces.push(detok.finish());
    (pieces.concat(), pieces)
}

#[test]
fn multi_byte_characters_split_over_tokens() {
    let pre = smollm2();
    let text = "Grüße aus Köln 🙂 日本語 naïve";
    let ids = pre.encode(text, false).unwrap();
    // The emoji and the CJK characters take several byte-level tokens each.
    assert!(ids.iter().any(|&id| std::str::from_utf8(&pre.token_bytes(id)).is_err()));
    let (out, pieces) = stream(&mut pre.detokenizer(), &ids);
    assert_eq!(out, text);
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces.last().map(String::as_str), Some(""));
}

#[test]
fn matches_whole_sequence_decoding() {
    let pre = smollm2();
    for text in [
        "Hello world! 12345",
        " leading space and trailing space ",
        "line one\n\n  indented\tline\r\n",
        "The capital of France is Paris.",
        "emoji🙂🙂 mixed 中文 and العربية text, ½ ≠ ∞",
        "code: fn main() { println!(\"{}\", 1 + 2); }",
    ] {
        let ids = pre.encode(text, false).unwrap();
        let (out, _) = stream(&mut pre.detokenizer(), &ids);
        assert_eq!(out, pre.decode(&ids).unwrap(), "{text:?}");
        assert_eq!(out, text);
    }
}

#[test]
fn special_tokens_are_not_text() {
    let pre = smollm2();
    let ids = pre.encode("<|im_start|>assistant\nHi there!<|im_end|>", false).unwrap();
    let (out, pieces) = stream(&mut pre.detokenizer(), &ids);
    assert_eq!(out, "assistant\nHi there!");
    assert_eq!(pieces[0], "");
}

#[test]
fn finish_releases_an_incomplete_character_lossily() {
    let pre = smollm2();
    let ids = pre.encode("ok 日本語", false).unwrap();
    // Stop right after a token that leaves a character incomplete.
    let mut bytes = Vec::new();
    let cut = ids
        .iter()
        .position(|&id| {
            bytes.extend(pre.token_bytes(id));
            std::str::from_utf8(&bytes).is_err()
        })
        .unwrap();
    let mut detok = pre.detokenizer();
    let mut out: String = ids[..=cut].iter().map(|&id| detok.push(id)).collect();
    assert!(!out.contains('\u{FFFD}'), "{out:?}");
    out.push_str(&detok.finish());
    assert!(out.starts_with("ok ") && out.ends_with('\u{FFFD}'), "{out:?}");
    assert_eq!(detok.finish(), "");
}

/// What a turn of an agent conversation costs the preprocessor, stage by stage (a 16K-token system
/// prompt and five 1.5K-token tool results; the prefix cache holds the turn before; a turn's new
/// text alone, then on two threads sharing the word cache), in a release
/// build: `cargo test --release -p tritium-openai-bridge --lib agent_turn_speed -- --ignored
/// --nocapture`. Prints, asserts nothing.
#[test]
#[ignore = "a measurement, not a test"]
fn agent_turn_speed() {
    let mut messages =
        vec![json!({"role": "system", "content": made_up_words(1, 11000)}), json!({"role": "user", "content": "Begin."})];
    for turn in 0..5 {
        messages.push(json!({"role": "assistant", "content": made_up_words(10 + turn, 20)}));
        messages.push(json!({"role": "tool", "content": made_up_words(20 + turn, 1000), "tool_call_id": "call_1"}));
    }
    let pre = Preprocessor::new(Arc::clone(smollm2().card()))
        .unwrap()
        .with_prefix_cache(PrefixCacheLimits::default(), PrefixCacheCounters::default());
    let rounds = 50;
    let time = |name: &str, f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            f();
        }
        eprintln!("{name}: {:?}", t.elapsed() / rounds);
    };
    let before = pre.render_chat(&messages[..messages.len() - 2], true, None).unwrap();
    pre.encode(&before, false).unwrap();
    let prompt = pre.render_chat(&messages, true, None).unwrap();
    let ids = pre.encode(&prompt, false).unwrap();
    eprintln!("{} messages, {} bytes, {} tokens", messages.len(), prompt.len(), ids.len());
    time("normalize_messages", &mut || {
        std::hint::black_box(template::normalize_messages(&messages, None).unwrap());
    });
    time("render_chat", &mut || {
        std::hint::black_box(pre.render_chat(&messages, true, None).unwrap());
    });
    time("encode (prefix cached)", &mut || {
        std::hint::black_box(pre.encode(&prompt, false).unwrap());
    });
    let new_text = made_up_words(24, 1000);
    time("encode a turn's new text (word cache warm)", &mut || {
        std::hint::black_box(pre.encode(&new_text, false).unwrap());
    });
    // Two threads at once, as the runtime's are: their lookups share the word cache.
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..rounds {
                    std::hint::black_box(pre.encode(&new_text, false).unwrap());
                }
            });
        }
    });
    eprintln!("the same on two threads at once: {:?} of wall time per encode", started.elapsed() / rounds / 2);
    let body = json!({"messages": messages, "model": "agent", "stream": true, "max_tokens": 8});
    let bytes = serde_json::to_vec(&body).unwrap();
    time("parse the request", &mut || {
        std::hint::black_box(serde_json::from_slice::<crate::protocol::ChatCompletionRequest>(&bytes).unwrap());
    });
}

/// `count` words of `bench/agent_frontend.py`'s made-up vocabulary (one to four syllables, some
/// with punctuation after), the same ones for the same `seed`: text the BPE tokenizer splits as it
/// would logs and code comments.
pub(super) fn made_up_words(seed: u64, count: usize) -> String {
    let syllables = ["ka", "ter", "lo", "mi", "van", "dor", "pex", "ul", "ri", "son", "quat", "ble", "zen", "fo", "gri", "tam"];
    let mut seed = seed;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) % n) as usize
    };
    let mut words = Vec::with_capacity(count);
    for _ in 0..count {
        let mut word: String = (0..=next(3)).map(|_| syllables[next(16)]).collect();
        word.push_str(["", "", "", ",", ".", ":"][next(6)]);
        words.push(word);
    }
    words.join(" ")
}
