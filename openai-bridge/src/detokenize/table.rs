//! Decoding without the tokenizer, for a tokenizer whose decoder is GPT-2's byte-level alone
//! (SmolLM2's, Llama 3's, Qwen's): each id's bytes are looked up once, when the model loads, and a
//! window of ids decodes to their bytes joined, read as UTF-8 with U+FFFD for what is not. That is
//! what `Tokenizer::decode` does for such a tokenizer, less a `String` per token and the decoder's
//! own copies (the tokenizer's decode was most of a streamed token's cost in the frontend).

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;
use tritium_backend_api::llm::byte_level_inverse;

/// Every id's bytes as the byte-level decoder writes them, and which ids are special.
#[derive(Debug)]
pub struct DecodeTable {
    /// Id `i`'s bytes are `bytes[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u32>,
    bytes: Vec<u8>,
    /// Ids whose text is a special added token's (left out when special tokens are skipped).
    special: Vec<bool>,
    /// Ids the tokenizer does not know: they decode to nothing.
    known: Vec<bool>,
}

impl DecodeTable {
    /// The table of `tokenizer`, when its decoder is the byte-level one and nothing else.
    pub fn new(tokenizer: &Tokenizer) -> Option<DecodeTable> {
        if !matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return None;
        }
        let alphabet = byte_level_inverse();
        let added = tokenizer.get_added_tokens_decoder();
        let special_texts: std::collections::HashSet<&str> =
            added.values().filter(|token| token.special).map(|token| token.content.as_str()).collect();
        let ids = added.keys().map(|id| *id as usize + 1).max().unwrap_or(0).max(tokenizer.get_vocab_size(false));
        let mut table = DecodeTable {
            offsets: Vec::with_capacity(ids + 1),
            bytes: Vec::new(),
            special: vec![false; ids],
            known: vec![false; ids],
        };
        table.offsets.push(0);
        for id in 0..ids {
            if let Some(token) = u32::try_from(id).ok().and_then(|id| tokenizer.id_to_token(id)) {
                table.known[id] = true;
                table.special[id] = special_texts.contains(token.as_str());
                // As the decoder does: a token wholly in the byte alphabet is mapped back to its
                // bytes, any other (an added token with a space, say) is its own UTF-8.
                let mapped: Option<Vec<u8>> = token.chars().map(|c| alphabet.get(&c).copied()).collect();
                table.bytes.extend_from_slice(mapped.as_deref().unwrap_or(token.as_bytes()));
            }
            let end = u32::try_from(table.bytes.len()).ok()?;
            table.offsets.push(end);
        }
        table.bytes.shrink_to_fit();
        Some(table)
    }

    /// What `Tokenizer::decode(ids, skip_special_tokens)` gives; ids it does not know add nothing.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 8);
        self.append_bytes(ids, skip_special_tokens, &mut bytes);
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// The bytes `ids` decode to, before their UTF-8 is checked, added to `out`: `decode` is
    /// these bytes read lossily.
    pub(super) fn append_bytes(&self, ids: &[u32], skip_special_tokens: bool, out: &mut Vec<u8>) {
        for &id in ids {
            out.extend_from_slice(self.bytes_of(id, |_| !skip_special_tokens));
        }
    }

    /// Id `id`'s bytes: none when it is unknown, or special and not `shown`.
    fn bytes_of(&self, id: u32, shown: impl FnOnce(u32) -> bool) -> &[u8] {
        let i = id as usize;
        if !self.known.get(i).copied().unwrap_or(false) || (self.special[i] && !shown(id)) {
            return &[];
        }
        &self.bytes[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn smollm2() -> &'static Tokenizer {
        static TOKENIZER: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
        TOKENIZER.get_or_init(|| {
            let path = tritium_llm::test_models::installed_model(tritium_llm::test_models::SMOLLM2_GGUF);
            tritium_llm::card_from_gguf_file(&path).unwrap().tokenizer_json.parse().unwrap()
        })
    }

    /// A byte-level tokenizer whose added tokens test the decoder's corners: a special one, one
    /// with a space (outside the byte alphabet: kept as its UTF-8), one wholly in the alphabet
    /// whose bytes are not UTF-8 (`ü!` maps to 0xFC 0x21), and an unknown id (261).
    fn corners() -> Tokenizer {
        let alphabet = byte_level_inverse();
        let mut chars: Vec<(char, u8)> = alphabet.into_iter().collect();
        chars.sort_by_key(|(_, byte)| *byte);
        let mut vocab = serde_json::Map::new();
        for (c, byte) in chars {
            vocab.insert(c.to_string(), json!(byte));
        }
        vocab.insert("Ġhe".into(), json!(256));
        vocab.insert("he".into(), json!(260));
        let added = |id: u32, content: &str, special: bool| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special})
        };
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        json!({
            "version": "1.0",
            "added_tokens": [added(257, "<|im_end|>", true), added(258, "hello world", false), added(259, "ü!", false),
                             added(262, "<tool_call>", true)],
            "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": [["h", "e"], ["Ġ", "he"]]},
        })
        .to_string()
        .parse()
        .unwrap()
    }

    fn same_as_the_tokenizer(tokenizer: &Tokenizer, table: &DecodeTable, ids: &[u32]) -> Result<(), TestCaseError> {
        for skip in [true, false] {
            prop_assert_eq!(
                table.decode(ids, skip),
                tokenizer.decode(ids, skip).unwrap_or_default(),
                "ids {:?}, skip {}",
                ids,
                skip
            );
        }
        Ok(())
    }

    /// Each push's text and the finish's, streaming `ids` with `shown` markers shown.
    fn streamed(tokenizer: &Arc<Tokenizer>, table: Option<Arc<DecodeTable>>, shown: &[u32], ids: &[u32]) -> Vec<String> {
        let mut detokenizer = crate::detokenize::Detokenizer::new(Arc::clone(tokenizer), table, Vec::new());
        detokenizer.show_special(shown.to_vec());
        let mut pieces: Vec<String> = ids.iter().map(|id| detokenizer.push(*id)).collect();
        pieces.push(detokenizer.finish());
        pieces
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Streaming through the table gives each token the text the tokenizer's window gives it:
        /// split and invalid UTF-8 (lone lead and continuation bytes), skipped and shown special
        /// tokens, unknown ids.
        #[test]
        fn streams_as_the_tokenizers_window(
            smollm2_ids in prop::collection::vec(prop_oneof![0u32..20, 0u32..49_152, 49_152u32..50_000], 0..24),
            corner_ids in prop::collection::vec(prop_oneof![0u32..264, 0x80u32..0x100, 0xC0u32..0x100], 0..24),
            show in any::<bool>(),
        ) {
            static SMOLLM2: std::sync::OnceLock<(Arc<Tokenizer>, Arc<DecodeTable>)> = std::sync::OnceLock::new();
            let (tokenizer, table) = SMOLLM2.get_or_init(|| (Arc::new(smollm2().clone()), Arc::new(DecodeTable::new(smollm2()).unwrap())));
            let shown: &[u32] = if show { &[2] } else { &[] };
            prop_assert_eq!(streamed(tokenizer, Some(Arc::clone(table)), shown, &smollm2_ids), streamed(tokenizer, None, shown, &smollm2_ids));
            let corners = Arc::new(corners());
            let table = DecodeTable::new(&corners).map(Arc::new);
            let shown: &[u32] = if show { &[257, 262] } else { &[] };
            prop_assert_eq!(streamed(&corners, table, shown, &corner_ids), streamed(&corners, None, shown, &corner_ids));
        }

        /// SmolLM2's whole vocabulary (its special tokens first), and ids past it.
        #[test]
        fn decodes_as_smollm2s_tokenizer(ids in prop::collection::vec(prop_oneof![0u32..20, 0u32..49_152, 49_152u32..50_000], 0..12)) {
            static TABLE: std::sync::OnceLock<DecodeTable> = std::sync::OnceLock::new();
            same_as_the_tokenizer(smollm2(), TABLE.get_or_init(|| DecodeTable::new(smollm2()).unwrap()), &ids)?;
        }

        #[test]
        fn decodes_added_tokens_as_the_tokenizer(ids in prop::collection::vec(prop_oneof![0u32..264, 0xC0u32..0x100], 0..10)) {
            let tokenizer = corners();
            same_as_the_tokenizer(&tokenizer, &DecodeTable::new(&tokenizer).unwrap(), &ids)?;
        }
    }

    #[test]
    fn a_streamed_answer_is_the_same_with_and_without_the_table() {
        let tokenizer = Arc::new(smollm2().clone());
        let text = "Voilà: naïve café, 東京 and 🦀! <|im_end|> done";
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        let stream = |table: Option<Arc<DecodeTable>>| streamed(&tokenizer, table, &[2], &ids);
        let with_table = stream(DecodeTable::new(&tokenizer).map(Arc::new));
        assert_eq!(with_table, stream(None));
        assert!(with_table.concat().contains("東京 and 🦀"), "{with_table:?}");
    }

    #[test]
    fn only_a_byte_level_decoder_is_looked_up() {
        let mut tokenizer = corners();
        assert!(DecodeTable::new(&tokenizer).is_some());
        tokenizer.with_decoder(Some(tokenizers::decoders::fuse::Fuse::new()));
        assert!(DecodeTable::new(&tokenizer).is_none());
    }
}
