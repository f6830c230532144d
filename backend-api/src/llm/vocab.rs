//! The bytes each token of a vocabulary stands for, whatever alphabet the tokenizer writes its
//! vocabulary in (GPT-2 byte-level, SentencePiece with byte fallback, WordPiece). The frontend
//! reports them in logprobs; constrained decoding matches grammars against them.

use std::collections::{HashMap, HashSet};

use serde_json::Value as Json;
use tokenizers::Tokenizer;

/// How the tokenizer writes a token's bytes in its vocab, for [`Preprocessor::token_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenForm {
    /// GPT-2 byte-level BPE: every byte is one printable char (`Ġ` is the space).
    ByteLevel,
    /// SentencePiece: `▁` is the space and `<0xAB>` a raw byte.
    SentencePiece,
    /// WordPiece: `##` marks a word's continuation.
    WordPiece,
    /// Anything else: the decoder is asked, one token at a time.
    Other,
}

/// How one tokenizer's ids map back to bytes.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    form: TokenForm,
    /// Byte-level BPE's alphabet, char to byte.
    byte_level: HashMap<char, u8>,
    /// Added tokens are raw text, in no alphabet.
    added: HashSet<u32>,
}

impl Vocabulary {
    pub fn new(tokenizer: &Tokenizer) -> Vocabulary {
        Vocabulary { form: token_form(tokenizer), byte_level: byte_level_inverse(), added: tokenizer_added_ids(tokenizer) }
    }

    /// GPT-2's byte-level alphabet (whose decoder keeps every space as it is).
    pub fn is_byte_level(&self) -> bool {
        self.form == TokenForm::ByteLevel
    }

    /// An added token (special or not): its text is its content.
    pub fn is_added(&self, id: u32) -> bool {
        self.added.contains(&id)
    }

    /// The bytes token `id` of `tokenizer` (the one this was built from) stands for: byte-level and SentencePiece byte tokens are mapped back
    /// to their raw bytes. Unknown ids give no bytes.
    pub fn token_bytes(&self, tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
        let Some(token) = tokenizer.id_to_token(id) else {
            return Vec::new();
        };
        if self.added.contains(&id) {
            return token.into_bytes();
        }
        match self.form {
            TokenForm::ByteLevel => {
                let mut bytes = Vec::with_capacity(token.len());
                for c in token.chars() {
                    match self.byte_level.get(&c) {
                        Some(&b) => bytes.push(b),
                        None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                bytes
            }
            TokenForm::SentencePiece => match sentencepiece_byte(&token) {
                Some(b) => vec![b],
                None => token.replace('\u{2581}', " ").into_bytes(),
            },
            TokenForm::WordPiece => token.strip_prefix("##").unwrap_or(&token).as_bytes().to_vec(),
            TokenForm::Other => tokenizer.decode(&[id], false).unwrap_or(token).into_bytes(),
        }
    }
}

fn tokenizer_added_ids(tokenizer: &Tokenizer) -> HashSet<u32> {
    tokenizer.get_added_tokens_decoder().keys().copied().collect()
}

fn token_form(tokenizer: &Tokenizer) -> TokenForm {
    let Some(decoder) = tokenizer.get_decoder().and_then(|d| serde_json::to_value(d).ok()) else {
        return TokenForm::Other;
    };
    let types: Vec<String> = match decoder.get("decoders").and_then(Json::as_array) {
        Some(list) => list.iter().filter_map(|d| d.get("type")?.as_str().map(str::to_owned)).collect(),
        None => decoder.get("type").and_then(Json::as_str).map(str::to_owned).into_iter().collect(),
    };
    let has = |name: &str| types.iter().any(|t| t == name);
    let replaces_metaspace = decoder
        .get("decoders")
        .and_then(Json::as_array)
        .is_some_and(|list| list.iter().any(|d| d.pointer("/pattern/String").and_then(Json::as_str) == Some("\u{2581}")));
    if has("ByteLevel") {
        TokenForm::ByteLevel
    } else if has("Metaspace") || has("ByteFallback") || replaces_metaspace {
        TokenForm::SentencePiece
    } else if has("WordPiece") {
        TokenForm::WordPiece
    } else {
        TokenForm::Other
    }
}

fn sentencepiece_byte(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() == 2 { u8::from_str_radix(hex, 16).ok() } else { None }
}

/// GPT-2's `bytes_to_unicode`, inverted: printable bytes stand for themselves, the rest are
/// shifted to U+0100 and up in byte order.
pub fn byte_level_inverse() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0u32;
    let mut map = HashMap::with_capacity(256);
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(c, b);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_bytes() {
        assert_eq!(sentencepiece_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(sentencepiece_byte("<0xZZ>"), None);
        assert_eq!(sentencepiece_byte("<0x0AB>"), None);
        assert_eq!(byte_level_inverse().get(&'\u{120}'), Some(&b' '));
        assert_eq!(byte_level_inverse().len(), 256);
    }
}
