//! A Hugging Face `tokenizer.json` rebuilt from the tokenizer a GGUF file carries in its metadata
//! (`tokenizer.ggml.*`), so that one implementation (the `tokenizers` crate, in the frontend)
//! serves GGUF and Hugging Face models alike.
//!
//! - `gpt2` (byte-level BPE): vocab and merges verbatim; the pre-tokenizer is the one llama.cpp
//!   picks for `tokenizer.ggml.pre`, written as the `Split`/`Digits`/`ByteLevel` steps HF uses.
//! - `llama` (SentencePiece BPE with scores): BPE with byte fallback. SentencePiece merges the
//!   adjacent pair whose *result* scores highest; GGUF has no merges list, so the merges are
//!   rebuilt from the scores the way HF's `SentencePieceExtractor` does (every split of every
//!   piece into two pieces, ranked by the piece's score). Spaces become `▁`, with one in front
//!   of each text fragment when `add_space_prefix` is on, as llama.cpp does.
//!
//! Control, user-defined and unknown tokens become `added_tokens` (control and unknown ones
//! `special`, so decoding skips them), matched in raw text before the model runs.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde_json::{Map, Value as Json, json};

const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

// Splits llama.cpp applies before BPE (GPT-2's own is built into `ByteLevel` with `use_regex`).
const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer of a GGUF file, as `tokenizer.json` text plus what the card needs besides.
#[derive(Debug)]
pub(super) struct GgufTokenizer {
    pub json: String,
    /// Token texts by id, as the GGUF stores them (byte-level or `▁` form for normal tokens).
    pub tokens: Vec<String>,
    /// Whether llama.cpp adds BOS when `tokenizer.ggml.add_bos_token` is absent.
    pub default_add_bos: bool,
}

pub(super) fn build(md: &HashMap<String, Value>) -> Result<GgufTokenizer, String> {
    let model = meta_str(md, "tokenizer.ggml.model")?.ok_or("the GGUF has no tokenizer (tokenizer.ggml.model is missing)")?;
    let tokens = string_array(md, "tokenizer.ggml.tokens")?.ok_or("the GGUF has no tokenizer.ggml.tokens")?;
    let types = match md.get("tokenizer.ggml.token_type") {
        Some(value) => int_array(value, "tokenizer.ggml.token_type")?,
        None => vec![TYPE_NORMAL; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(format!(
            "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
            types.len(),
            tokens.len()
        ));
    }
    let added = added_tokens(&tokens, &types);
    let (tokenizer, default_add_bos) = match model {
        "gpt2" => byte_level_bpe(md, &tokens, added)?,
        "llama" => (sentencepiece_bpe(md, &tokens, &types, added)?, true),
        other => {
            return Err(format!("tokenizer model '{other}' in GGUF is not supported yet (supported: gpt2, llama)"));
        }
    };
    let json = serde_json::to_string(&tokenizer).map_err(|e| format!("cannot write tokenizer.json: {e}"))?;
    Ok(GgufTokenizer { json, tokens, default_add_bos })
}

fn byte_level_bpe(md: &HashMap<String, Value>, tokens: &[String], added: Vec<Json>) -> Result<(Json, bool), String> {
    let pre = meta_str(md, "tokenizer.ggml.pre")?.unwrap_or("default");
    let (pre_tokenizer, ignore_merges, default_add_bos) = byte_level_pre_tokenizer(pre)?;
    let merges = string_array(md, "tokenizer.ggml.merges")?.ok_or("the GGUF has no tokenizer.ggml.merges")?;
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab(tokens), "merges": merges,
        },
    });
    Ok((tokenizer, default_add_bos))
}

/// The pre-tokenizer for a llama.cpp `tokenizer.ggml.pre` name, whether BPE looks a whole word up
/// in the vocab before merging (`ignore_merges`), and llama.cpp's default for adding BOS.
fn byte_level_pre_tokenizer(pre: &str) -> Result<(Json, bool, bool), String> {
    let byte_level =
        |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "exaone4" | "mellum" | "trillion"
        | "granite-docling" => (byte_level(true), false, false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => {
            (split(LLAMA3_SPLIT), true, true)
        }
        "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => (split(LLAMA3_SPLIT), false, false),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan" => (split(QWEN2_SPLIT), false, false),
        "qwen35" => (split(QWEN35_SPLIT), false, false),
        other => return Err(format!("tokenizer.ggml.pre '{other}' in GGUF is not supported yet")),
    })
}

fn sentencepiece_bpe(md: &HashMap<String, Value>, tokens: &[String], types: &[i32], added: Vec<Json>) -> Result<Json, String> {
    let scores = match md.get("tokenizer.ggml.scores") {
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                other => Err(format!("tokenizer.ggml.scores holds a {:?}, not a float", other.value_type())),
            })
            .collect::<Result<Vec<f32>, String>>()?,
        Some(_) => return Err("tokenizer.ggml.scores is not an array".into()),
        None => return Err("the GGUF's SentencePiece tokenizer has no tokenizer.ggml.scores".into()),
    };
    if scores.len() != tokens.len() {
        return Err(format!("tokenizer.ggml.scores has {} entries but there are {} tokens", scores.len(), tokens.len()));
    }
    let add_space_prefix = meta_bool(md, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let unk_token = match meta_u64(md, "tokenizer.ggml.unknown_token_id")? {
        Some(id) => Some(token_at(tokens, id, "tokenizer.ggml.unknown_token_id")?),
        None => None,
    };
    let replace_spaces = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace_spaces]})
    } else {
        replace_spaces
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk_token, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab(tokens), "merges": sentencepiece_merges(tokens, types, &scores),
        },
    }))
}

/// Every way to write a normal piece as two vocab pieces, best-scoring pieces first (ties by id);
/// the splits of one piece ordered by the ids of their halves.
fn sentencepiece_merges(tokens: &[String], types: &[i32], scores: &[f32]) -> Vec<[String; 2]> {
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        ids.entry(token.as_str()).or_insert(id);
    }
    let mut pieces: Vec<usize> =
        (0..tokens.len()).filter(|&id| types[id] == TYPE_NORMAL && tokens[id].chars().nth(1).is_some()).collect();
    pieces.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut merges = Vec::new();
    let mut local = Vec::new();
    for id in pieces {
        let piece = tokens[id].as_str();
        local.clear();
        for (at, _) in piece.char_indices().skip(1) {
            if let (Some(&left), Some(&right)) = (ids.get(&piece[..at]), ids.get(&piece[at..])) {
                local.push((left, right));
            }
        }
        local.sort_unstable();
        merges.extend(local.iter().map(|&(l, r)| [tokens[l].clone(), tokens[r].clone()]));
    }
    merges
}

/// `token -> id`; when a text occurs twice the first id wins (GGUF vocabs have such duplicates).
fn vocab(tokens: &[String]) -> Map<String, Json> {
    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        if !vocab.contains_key(token) {
            vocab.insert(token.clone(), Json::from(id));
        }
    }
    vocab
}

fn added_tokens(tokens: &[String], types: &[i32]) -> Vec<Json> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (token, ty))| !token.is_empty() && matches!(**ty, TYPE_UNKNOWN | TYPE_CONTROL | TYPE_USER_DEFINED))
        .map(|(id, (token, &ty))| {
            json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty != TYPE_USER_DEFINED,
            })
        })
        .collect()
}

pub(super) fn token_at(tokens: &[String], id: u64, key: &str) -> Result<String, String> {
    usize::try_from(id)
        .ok()
        .and_then(|i| tokens.get(i))
        .cloned()
        .ok_or_else(|| format!("{key} is {id}, but there are only {} tokens", tokens.len()))
}

pub(super) fn meta_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{key} is a {:?}, not a string", other.value_type())),
    }
}

/// Any unsigned or non-negative integer type: writers disagree on which one ids and lengths use.
pub(super) fn meta_u64(md: &HashMap<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match md.get(key) {
        None => Ok(None),
        Some(value) => value_i64(value)
            .and_then(|v| u64::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| format!("{key} is {value:?}, not a non-negative integer")),
    }
}

pub(super) fn meta_bool(md: &HashMap<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(value) => match value_i64(value) {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(format!("{key} is {value:?}, not a boolean")),
        },
    }
}

fn value_i64(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

fn string_array(md: &HashMap<String, Value>, key: &str) -> Result<Option<Vec<String>>, String> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("{key} holds a {:?}, not a string", other.value_type())),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(format!("{key} is a {:?}, not an array", other.value_type())),
    }
}

fn int_array(value: &Value, key: &str) -> Result<Vec<i32>, String> {
    let Value::Array(values) = value else {
        return Err(format!("{key} is a {:?}, not an array", value.value_type()));
    };
    values
        .iter()
        .map(|v| value_i64(v).and_then(|x| i32::try_from(x).ok()).ok_or_else(|| format!("{key} holds {v:?}, not an integer")))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String((*s).to_string())).collect())
    }

    /// A toy SentencePiece vocab: `▁`, letters, a few merged pieces and byte tokens for `\n`/`é`.
    fn toy_spm(add_space_prefix: bool) -> HashMap<String, Value> {
        let tokens = [
            "<unk>",
            "<s>",
            "</s>",
            "<0x0A>",
            "<0xC3>",
            "<0xA9>",
            "\u{2581}",
            "h",
            "e",
            "l",
            "o",
            "w",
            "r",
            "d",
            "he",
            "ll",
            "hell",
            "hello",
            "\u{2581}hello",
            "\u{2581}w",
            "or",
            "\u{2581}wor",
            "ld",
            "\u{2581}world",
        ];
        let types: Vec<i32> = (0..tokens.len())
            .map(|i| match i {
                0 => 2,
                1 | 2 => 3,
                3..=5 => 6,
                _ => 1,
            })
            .collect();
        let scores: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
        let mut md = HashMap::new();
        md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        md.insert("tokenizer.ggml.tokens".into(), strings(&tokens));
        md.insert("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect()));
        md.insert("tokenizer.ggml.scores".into(), Value::Array(scores.into_iter().map(Value::F32).collect()));
        md.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
        md.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(add_space_prefix));
        md
    }

    #[test]
    fn sentencepiece_vocab_becomes_bpe_with_byte_fallback() {
        let built = build(&toy_spm(true)).unwrap();
        assert!(built.default_add_bos);
        let tokenizer: tokenizers::Tokenizer = built.json.parse().unwrap();
        let ids = tokenizer.encode("hello world\né</s>", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![18, 23, 3, 4, 5, 2]);
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), "hello world\né");
        // A fragment after a special token gets its own `▁`, as in llama.cpp.
        let ids = tokenizer.encode("<s>hello", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![1, 18]);
    }

    #[test]
    fn sentencepiece_without_space_prefix() {
        let tokenizer: tokenizers::Tokenizer = build(&toy_spm(false)).unwrap().json.parse().unwrap();
        let ids = tokenizer.encode("hello world", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![17, 23]);
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), "hello world");
    }

    #[test]
    fn unsupported_tokenizers_are_named() {
        let mut md = toy_spm(true);
        md.insert("tokenizer.ggml.model".into(), Value::String("t5".into()));
        let err = build(&md).unwrap_err();
        assert!(err.contains("tokenizer model 't5' in GGUF is not supported yet"), "{err}");
        md.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
        md.insert("tokenizer.ggml.pre".into(), Value::String("tekken".into()));
        let err = build(&md).unwrap_err();
        assert!(err.contains("tokenizer.ggml.pre 'tekken'"), "{err}");
        md.remove("tokenizer.ggml.model");
        assert!(build(&md).unwrap_err().contains("has no tokenizer"));
    }

    /// llama.cpp's golden tokenizations (`models/ggml-vocab-NAME.gguf` with `.inp`/`.out`, made
    /// by HF `tokenizers`; they ship in llama.cpp and the llama-cpp-python sdist), for every
    /// tokenizer kind this module claims to support.
    #[test]
    #[ignore = "needs llama.cpp's vocab GGUFs: set TRITIUM_LLAMA_VOCAB_DIR to llama.cpp/models"]
    fn llama_cpp_golden_tokenizations() {
        let dir = std::env::var_os("TRITIUM_LLAMA_VOCAB_DIR")
            .map(std::path::PathBuf::from)
            .expect("set TRITIUM_LLAMA_VOCAB_DIR to llama.cpp's models/ folder (with ggml-vocab-*.gguf)");
        let names = ["gpt-2", "llama-bpe", "llama-spm", "phi-3", "qwen2", "qwen35", "starcoder", "refact", "command-r", "mpt"];
        let mut failures = Vec::new();
        for name in names {
            let path = dir.join(format!("ggml-vocab-{name}.gguf"));
            let mut file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
            let tokenizer: tokenizers::Tokenizer = build(&content.metadata).unwrap().json.parse().unwrap();
            let inputs = std::fs::read_to_string(path.with_extension("gguf.inp")).unwrap();
            let outputs = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
            let inputs: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
            assert!(outputs.lines().count() > 30 && inputs.len() > outputs.lines().count(), "{name}: no cases");
            for (input, expected) in inputs.iter().zip(outputs.lines()) {
                let expected: Vec<u32> = expected.split_whitespace().map(|id| id.parse().unwrap()).collect();
                let ids = tokenizer.encode(*input, false).unwrap().get_ids().to_vec();
                if ids != expected {
                    failures.push(format!("{name}: {input:?}\n  expected {expected:?}\n  got      {ids:?}"));
                }
            }
        }
        assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    }
}
