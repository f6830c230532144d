//! The mock model's card: a byte-level tokenizer built in code (one token per UTF-8 byte, so any
//! text round-trips and token counts are predictable) and a ChatML chat template.

use serde_json::{Value as Json, json};

use tritium_backend_api::llm::{ModelCard, ModelKind};

/// `<|endoftext|>`: the end-of-sequence token, right after the 256 byte tokens.
pub const ENDOFTEXT_ID: u32 = 256;
pub const IM_START_ID: u32 = 257;
pub const IM_END_ID: u32 = 258;
/// Every id the mock tokenizer knows: 256 bytes and three special tokens.
pub const MOCK_VOCAB_SIZE: u32 = 259;

const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The card of the mock model: byte-level tokenizer, ChatML, EOS `<|endoftext|>` and `<|im_end|>`.
pub fn mock_card(context_length: usize) -> ModelCard {
    ModelCard {
        kind: ModelKind::Generate,
        tokenizer_json: tokenizer_json().to_string(),
        chat_template: Some(CHATML_TEMPLATE.to_string()),
        bos_token: None,
        eos_token: Some("<|endoftext|>".to_string()),
        eos_token_ids: vec![ENDOFTEXT_ID, IM_END_ID],
        add_bos_token: false,
        context_length,
        max_input_tokens: None,
        source: "mock".to_string(),
        default_completion_tokens: Some(tritium_backend_api::llm::OPENAI_COMPLETION_TOKENS),
        parsers: Default::default(),
    }
}

/// A Hugging Face `tokenizer.json`: byte-level BPE with no merges, so every byte is one token and
/// byte `b` has id `b`.
fn tokenizer_json() -> Json {
    let vocab: serde_json::Map<String, Json> =
        (0..=255u8).map(|byte| (byte_to_unicode(byte).to_string(), json!(u32::from(byte)))).collect();
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            special(ENDOFTEXT_ID, "<|endoftext|>"),
            special(IM_START_ID, "<|im_start|>"),
            special(IM_END_ID, "<|im_end|>"),
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": [],
        },
    })
}

/// GPT-2's printable stand-in for a byte: printable Latin-1 bytes stand for themselves, the
/// others are shifted past U+00FF in order.
fn byte_to_unicode(byte: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(byte) {
        return char::from(byte);
    }
    let shifted = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
}
