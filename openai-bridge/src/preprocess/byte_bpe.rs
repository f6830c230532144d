//! A byte-level BPE encoder for GPT-2-shaped tokenizers (SmolLM2, GPT-2, StarCoder and the other
//! `tokenizer.json`s whose pre-tokenizer is GPT-2's regex, alone or after `Digits`): the ids
//! `tokenizers` gives, with a fraction of its work. `tokenizers` builds an `Encoding` (a `String`
//! per token, offsets, masks) and splits each pre-token into `String`s and chars; this encoder
//! scans the text once ([`pretokenize`]), merges each pre-token's bytes with the same merge order
//! (lowest rank first, then leftmost, stale pairs skipped the way `tokenizers` skips them), and
//! writes ids only.
//!
//! A tokenizer of any other shape (a normalizer, another pre-tokenizer, dropout, byte fallback, an
//! added token with `lstrip`/`rstrip`/`single_word`, a vocabulary missing a byte) gets none and
//! is encoded by `tokenizers`. Before it is used, an encoder's ids are compared with the
//! tokenizer's on a probe text; the property tests compare them on random texts.

mod pretokenize;
mod word_cache;

pub use word_cache::WordCache;

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use aho_corasick::{AhoCorasick, MatchKind};
use foldhash::{HashMap, HashMapExt};
use serde_json::Value as Json;
use tokenizers::Tokenizer;

/// A text with letters, digits, contractions, runs of spaces, newlines and tabs, punctuation,
/// accents, CJK and an emoji: an encoder that disagrees with the tokenizer on it is not used.
const PROBE: &str = "Hello, world! It's 2026; we'll  test\tTABS\n\n  and   spaces.\r\nnaïve café 東京 😀 ½ x²\
                     'quoted' O'Brien don't  \u{a0}end  ";

/// The id of a byte the vocabulary lacks.
const MISSING: u32 = u32::MAX;
/// `--tokenizer-word-cache-entries`' default: words whose ids a model's encoder keeps.
pub const DEFAULT_WORD_CACHE_ENTRIES: usize = 1 << 16;

pub struct ByteLevelBpe {
    /// Added tokens split out as-is, then (the tokenizer has no normalizer) the normalized ones.
    added: Option<AddedTokens>,
    normalized_added: Option<AddedTokens>,
    /// `Digits { individual_digits: true }` runs before GPT-2's regex.
    digits: bool,
    /// A pre-token that is a whole vocabulary entry is that entry (`tokenizers`' `ignore_merges`).
    ignore_merges: bool,
    /// Each byte's id, or [`MISSING`].
    byte_ids: [u32; 256],
    /// The vocabulary by bytes (only read with `ignore_merges`).
    vocab: HashMap<Box<[u8]>, u32>,
    /// `(left << 32) | right` → (rank, merged id).
    merges: HashMap<u64, (u32, u32)>,
}

impl std::fmt::Debug for ByteLevelBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteLevelBpe").field("merges", &self.merges.len()).field("digits", &self.digits).finish()
    }
}

struct AddedTokens {
    finder: AhoCorasick,
    ids: Vec<u32>,
}

impl AddedTokens {
    fn new(tokens: &[(String, u32)]) -> Result<Option<AddedTokens>, String> {
        if tokens.is_empty() {
            return Ok(None);
        }
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|(content, _)| content.as_str()))
            .map_err(|e| format!("cannot index the added tokens: {e}"))?;
        Ok(Some(AddedTokens { finder, ids: tokens.iter().map(|&(_, id)| id).collect() }))
    }
}

impl ByteLevelBpe {
    /// The encoder for `tokenizer` (whose `tokenizer.json` is `json`), or why it can have none.
    pub fn new(tokenizer: &Tokenizer, json: &str) -> Result<ByteLevelBpe, String> {
        if tokenizer.get_truncation().is_some() || tokenizer.get_padding().is_some() {
            return Err("the tokenizer truncates or pads".into());
        }
        if tokenizer.get_encode_special_tokens() {
            return Err("the tokenizer encodes special tokens as text".into());
        }
        let json: Json = serde_json::from_str(json).map_err(|e| format!("unreadable tokenizer.json: {e}"))?;
        if !json["normalizer"].is_null() {
            return Err("the tokenizer normalizes".into());
        }
        let digits = gpt2_pre_tokenizer(&json["pre_tokenizer"])?;
        let model = &json["model"];
        if model["type"] != "BPE" {
            return Err("the model is not BPE".into());
        }
        let unset = |key: &str| model[key].is_null() || model[key] == "" || model[key] == false;
        if !unset("dropout") || !unset("continuing_subword_prefix") || !unset("end_of_word_suffix") || !unset("byte_fallback") {
            return Err("the BPE model has dropout, a subword prefix or suffix, or byte fallback".into());
        }
        let ignore_merges = model["ignore_merges"].as_bool().unwrap_or(false);
        let (by_text, vocab, byte_ids) = vocabulary(&model["vocab"])?;
        if byte_ids.contains(&MISSING) && !model["unk_token"].is_null() {
            return Err("the vocabulary lacks a byte and has an unknown token".into());
        }
        let merges = merges(&model["merges"], &by_text)?;

        let mut plain = Vec::new();
        let mut normalized = Vec::new();
        for (id, token) in tokenizer.get_added_tokens_decoder() {
            if token.single_word || token.lstrip || token.rstrip {
                return Err("an added token strips or matches only as a single word".into());
            }
            if !token.content.is_empty() {
                let into = if token.normalized { &mut normalized } else { &mut plain };
                into.push((token.content, id));
            }
        }
        // The order `tokenizers` indexes them in decides nothing: leftmost-longest has one answer.
        plain.sort();
        normalized.sort();
        let encoder = ByteLevelBpe {
            added: AddedTokens::new(&plain)?,
            normalized_added: AddedTokens::new(&normalized)?,
            digits,
            ignore_merges,
            byte_ids,
            vocab,
            merges,
        };
        let expected = tokenizer.encode_fast(PROBE, false).map_err(|e| format!("the tokenizer fails on the probe: {e}"))?;
        if encoder.encode(PROBE, None) != expected.get_ids() {
            return Err("its ids differ from the tokenizer's on the probe text".into());
        }
        Ok(encoder)
    }

    /// The ids of `text`, as `tokenizers`' `encode_fast(text, false)` gives them, with the ids of
    /// words merged before from `cache`.
    pub fn encode(&self, text: &str, cache: Option<&WordCache>) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        let mut scratch = Scratch { cache, ..Scratch::default() };
        self.split_added(&self.added, text, &mut ids, &mut |bpe, segment, ids| {
            bpe.split_added(&bpe.normalized_added, segment, ids, &mut |bpe, segment, ids| {
                bpe.encode_segment(segment, ids, &mut scratch);
            });
        });
        ids
    }

    /// Writes the ids of `added`'s tokens in `text` and hands the text between them to `rest`.
    fn split_added(
        &self,
        added: &Option<AddedTokens>,
        text: &str,
        ids: &mut Vec<u32>,
        rest: &mut dyn FnMut(&ByteLevelBpe, &str, &mut Vec<u32>),
    ) {
        let Some(added) = added else { return rest(self, text, ids) };
        let mut last = 0;
        for found in added.finder.find_iter(text) {
            if last < found.start() {
                rest(self, &text[last..found.start()], ids);
            }
            ids.push(added.ids[found.pattern().as_usize()]);
            last = found.end();
        }
        if last < text.len() {
            rest(self, &text[last..], ids);
        }
    }

    /// The ids of `segment` (text without added tokens), its pre-tokens looked up in the word
    /// cache a batch at a time: each batch's slots are read before any of its words is looked up.
    fn encode_segment(&self, segment: &str, ids: &mut Vec<u32>, scratch: &mut Scratch) {
        const BATCH: usize = 16;
        // Without merges a word's ids are its bytes' ids: nothing to save.
        let cache = scratch.cache.filter(|_| !self.merges.is_empty());
        let mut batch: [(&str, Option<usize>); BATCH] = [("", None); BATCH];
        let mut len = 0;
        pretokenize::split(segment, self.digits, |piece| {
            // A one-byte piece is its byte's id: no lookup.
            let slot = cache.filter(|_| piece.len() > 1).and_then(|cache| cache.slot_of(piece.as_bytes()));
            batch[len] = (piece, slot);
            len += 1;
            if len == BATCH {
                self.encode_batch(&batch, cache, ids, scratch);
                len = 0;
            }
        });
        self.encode_batch(&batch[..len], cache, ids, scratch);
    }

    fn encode_batch(&self, batch: &[(&str, Option<usize>)], cache: Option<&WordCache>, ids: &mut Vec<u32>, scratch: &mut Scratch) {
        if let Some(cache) = cache {
            cache.prefetch(batch.iter().filter_map(|&(_, slot)| slot));
        }
        for &(piece, slot) in batch {
            self.encode_piece(piece.as_bytes(), slot.zip(cache), ids, scratch);
        }
    }

    /// One pre-token's ids; `cached`: where the word cache would keep it.
    fn encode_piece(&self, bytes: &[u8], cached: Option<(usize, &WordCache)>, ids: &mut Vec<u32>, scratch: &mut Scratch) {
        if let [byte] = bytes {
            let id = self.byte_ids[usize::from(*byte)];
            if id != MISSING {
                ids.push(id);
            }
            return;
        }
        if self.ignore_merges
            && let Some(&id) = self.vocab.get(bytes)
        {
            return ids.push(id);
        }
        if let Some(hit) = cached.and_then(|(slot, cache)| cache.get(slot, bytes)) {
            return ids.extend_from_slice(hit.as_slice());
        }
        scratch.merge(self, bytes);
        let start = ids.len();
        ids.extend(scratch.symbols.iter().filter(|s| s.live).map(|s| s.id));
        if let Some((slot, cache)) = cached {
            cache.insert(slot, bytes, &ids[start..]);
        }
    }

    fn merge_of(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.merges.get(&(u64::from(left) << 32 | u64::from(right))).copied()
    }
}

/// The pre-tokenizer's shape: GPT-2's regex through `ByteLevel`, alone (`false`) or after
/// `Digits { individual_digits: true }` (`true`).
fn gpt2_pre_tokenizer(pre: &Json) -> Result<bool, String> {
    let gpt2 = |step: &Json| step["type"] == "ByteLevel" && step["use_regex"] != false && step["add_prefix_space"] == false;
    if gpt2(pre) {
        return Ok(false);
    }
    if pre["type"] == "Sequence"
        && let Some([first, second]) = pre["pretokenizers"].as_array().map(Vec::as_slice)
        && first["type"] == "Digits"
        && first["individual_digits"] == true
        && gpt2(second)
    {
        return Ok(true);
    }
    Err("the pre-tokenizer is not GPT-2's byte-level regex".into())
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the rest are shifted to
/// U+0100 and up in byte order.
fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0u32;
    std::array::from_fn(|index| {
        let b = index as u8;
        if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        }
    })
}

type Vocabulary = (std::collections::HashMap<String, u32>, HashMap<Box<[u8]>, u32>, [u32; 256]);

/// The vocabulary by text and by bytes, and each byte's id.
fn vocabulary(vocab: &Json) -> Result<Vocabulary, String> {
    let entries = vocab.as_object().ok_or("the BPE model has no vocabulary")?;
    let chars = byte_chars();
    let byte_of: std::collections::HashMap<char, u8> = chars.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
    let mut by_text = std::collections::HashMap::with_capacity(entries.len());
    let mut by_bytes = HashMap::with_capacity(entries.len());
    for (text, id) in entries {
        let id = id.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or("a vocabulary id is not a u32")?;
        by_text.insert(text.clone(), id);
        // An entry with a character no byte maps to can never be a pre-token: it is not indexed.
        if let Some(bytes) = text.chars().map(|c| byte_of.get(&c).copied()).collect::<Option<Vec<u8>>>() {
            by_bytes.insert(bytes.into_boxed_slice(), id);
        }
    }
    // A byte the vocabulary lacks is dropped from its word, as `tokenizers` drops it without an
    // unknown token (SmolLM2 lacks a few control characters).
    let byte_ids = std::array::from_fn(|b| by_text.get(&chars[b].to_string()).copied().unwrap_or(MISSING));
    Ok((by_text, by_bytes, byte_ids))
}

/// The merges as `tokenizers` keys them: later duplicates win, as its map's inserts do.
fn merges(merges: &Json, vocab: &std::collections::HashMap<String, u32>) -> Result<HashMap<u64, (u32, u32)>, String> {
    let list = merges.as_array().ok_or("the BPE model has no merges")?;
    let mut map = HashMap::with_capacity(list.len());
    for (rank, merge) in list.iter().enumerate() {
        let (left, right) = match merge {
            Json::String(line) => line.split_once(' ').filter(|(_, b)| !b.contains(' ')).ok_or("a merge is not two tokens")?,
            Json::Array(pair) => match pair.as_slice() {
                [Json::String(a), Json::String(b)] => (a.as_str(), b.as_str()),
                _ => return Err("a merge is not two tokens".into()),
            },
            _ => return Err("a merge is not two tokens".into()),
        };
        let id = |token: &str| vocab.get(token).copied().ok_or("a merge names a token outside the vocabulary");
        let merged = id(&format!("{left}{right}"))?;
        let rank = u32::try_from(rank).map_err(|_| "too many merges")?;
        map.insert(u64::from(id(left)?) << 32 | u64::from(id(right)?), (rank, merged));
    }
    Ok(map)
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: u32,
    live: bool,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A pair to merge: lowest rank first, then leftmost.
#[derive(Debug, PartialEq, Eq)]
struct Candidate {
    rank: u32,
    pos: usize,
    merged: u32,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank.cmp(&self.rank).then_with(|| other.pos.cmp(&self.pos))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What merging a pre-token holds, kept across the pre-tokens of one text.
#[derive(Default)]
struct Scratch<'a> {
    cache: Option<&'a WordCache>,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Candidate>,
}

impl Scratch<'_> {
    fn merge(&mut self, bpe: &ByteLevelBpe, bytes: &[u8]) {
        self.symbols.clear();
        let known = bytes.iter().map(|&b| bpe.byte_ids[usize::from(b)]).filter(|&id| id != MISSING);
        self.symbols.extend(known.map(|id| Symbol { id, live: true, prev: None, next: None }));
        let count = self.symbols.len();
        for (index, symbol) in self.symbols.iter_mut().enumerate() {
            symbol.prev = index.checked_sub(1);
            symbol.next = (index + 1 < count).then_some(index + 1);
        }
        self.queue.clear();
        for pos in 0..count.saturating_sub(1) {
            if let Some((rank, merged)) = bpe.merge_of(self.symbols[pos].id, self.symbols[pos + 1].id) {
                self.queue.push(Candidate { rank, pos, merged });
            }
        }
        while let Some(top) = self.queue.pop() {
            let left = self.symbols[top.pos];
            let Some(next) = left.next.filter(|_| left.live) else { continue };
            let right = self.symbols[next];
            // A stale candidate: its pair changed since it was queued.
            if bpe.merge_of(left.id, right.id).is_none_or(|(_, merged)| merged != top.merged) {
                continue;
            }
            self.symbols[top.pos].id = top.merged;
            self.symbols[top.pos].next = right.next;
            self.symbols[next].live = false;
            if let Some(after) = right.next {
                self.symbols[after].prev = Some(top.pos);
            }
            let current = self.symbols[top.pos];
            if let Some(prev) = current.prev
                && let Some((rank, merged)) = bpe.merge_of(self.symbols[prev].id, current.id)
            {
                self.queue.push(Candidate { rank, pos: prev, merged });
            }
            if let Some(after) = current.next
                && let Some((rank, merged)) = bpe.merge_of(current.id, self.symbols[after].id)
            {
                self.queue.push(Candidate { rank, pos: top.pos, merged });
            }
        }
    }
}

#[cfg(test)]
#[path = "byte_bpe_tests.rs"]
mod tests;
